"""End-to-end detectors: decode and NMS appended to an exported graph (`orinflow export --nms onnx|trt`).

The appended part is built from plain ONNX ops on the raw head output, so it is the same for every
family and for Q/DQ models: boxes to corners, scores (times objectness), the pre-NMS top-k by best
class score, then either
- `onnx`: the standard NonMaxSuppression (ONNX Runtime and TensorRT >= 8.5 run it), gathered into
  (batch, keep_topk, 6) rows of x1, y1, x2, y2, score, class (zero rows pad), or
- `trt`: TensorRT's EfficientNMS_TRT plugin, whose num_dets, boxes, scores and classes outputs are
  what DeepStream and most Jetson applications read.
Both flavours share every node up to the NMS node. Every node added is named `orinflow_nms/...`, and
the spec with the raw output's name is stored in the metadata, so `detach_nms` restores the raw model
exactly (quantization works on that, and the NMS part is attached again afterwards: it is never quantized).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import OrinflowError
from ..models.onnx_model import META_PROCESSING, write_metadata
from ..models.processing import (HEAD_ANCHOR_FREE, HEAD_EFFICIENT_NMS, HEAD_END2END, HEAD_GRID, HEAD_OBJECTNESS,
                                 Processing, grid_cells)

META_NMS = "orinflow.nms"
PREFIX = "orinflow_nms/"
FLAVOURS = ("onnx", "trt")
DETECTIONS = "detections"
TRT_OUTPUTS = ("num_dets", "det_boxes", "det_scores", "det_classes")


@dataclass
class NmsSpec:
    flavour: str = "onnx"
    pre_topk: int = 30000  # candidates (anchors, by best class score) that reach NMS; the evaluator's cap
    keep_topk: int = 300  # detections kept per image (the evaluator's --max-det)
    iou: float | None = None  # None: the family's NMS IoU
    conf: float = 0.25  # score threshold inside the graph (0.001 to measure mAP)
    raw_output: str = ""  # filled in by attach_nms: the head output the NMS reads
    raw_head: str = ""  # the raw output's layout (Processing.head before NMS)

    def validate(self) -> None:
        if self.flavour not in FLAVOURS:
            raise OrinflowError(f"--nms {self.flavour}: choose onnx or trt")
        if self.keep_topk < 1 or self.pre_topk < 1:
            raise OrinflowError("--pre-topk and --keep-topk must be >= 1")
        if self.pre_topk < self.keep_topk:
            raise OrinflowError(f"--pre-topk {self.pre_topk} is smaller than --keep-topk {self.keep_topk}: NMS cannot "
                                "keep more boxes than reach it")
        if not 0 < self.conf < 1 or (self.iou is not None and not 0 < self.iou < 1):
            raise OrinflowError("--conf and --iou must lie in (0, 1)")


def read_spec(model: onnx.ModelProto) -> NmsSpec | None:
    value = next((p.value for p in model.metadata_props if p.key == META_NMS), None)
    return NmsSpec(**json.loads(value)) if value else None


class _Builder:
    """Adds nodes and constants named orinflow_nms/..., in order."""

    def __init__(self, graph: onnx.GraphProto, opset: int):
        self.graph, self.opset, self.count = graph, opset, 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def const(self, value, dtype=np.int64) -> str:
        name = self.name("const")
        self.graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, domain: str = "", names=None, **attrs):
        node_name = self.name(op_type.lower())
        out = list(names) if names else [f"{node_name}_out{i}" for i in range(outputs)]
        self.graph.node.append(helper.make_node(op_type, inputs, out, name=node_name, domain=domain, **attrs))
        return out[0] if outputs == 1 else out

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        return self.op("Slice", [x, self.const([start]), self.const([end]), self.const([axis])])

    def unsqueeze(self, x: str, axis: int) -> str:
        return self.op("Unsqueeze", [x, self.const([axis])])

    def reduce_max(self, x: str, axis: int) -> str:
        if self.opset >= 18:
            return self.op("ReduceMax", [x, self.const([axis])], keepdims=0)
        return self.op("ReduceMax", [x], axes=[axis], keepdims=0)


def attach_nms(model: onnx.ModelProto, processing: Processing, spec: NmsSpec) -> tuple[onnx.ModelProto, Processing]:
    """`model` (raw head output first) with decode and NMS appended; its Processing reads the new outputs."""
    spec.validate()
    if not processing.room.nms_in_engine:
        raise OrinflowError(f"--nms is for detectors: a {processing.task} model keeps its NMS in post-processing")
    if processing.head in (HEAD_END2END, HEAD_EFFICIENT_NMS):
        raise OrinflowError("the model already has NMS inside its graph")
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    raw = graph.output[0]
    spec.raw_output, spec.raw_head = raw.name, processing.head
    spec.iou = processing.nms_iou if spec.iou is None else spec.iou
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    b = _Builder(graph, opset)
    boxes, scores = _boxes_and_scores(b, raw.name, processing)
    anchors = _dims(raw)[2 if processing.head == HEAD_ANCHOR_FREE else 1]
    if isinstance(anchors, int) and spec.pre_topk < anchors:
        boxes, scores = _pre_topk(b, boxes, scores, spec.pre_topk)
    batch = _dims(raw)[0]
    if all(v.name != raw.name for v in graph.value_info):
        graph.value_info.append(raw)  # its type and shape, for detach_nms
    del graph.output[:]
    if spec.flavour == "onnx":
        graph.output.append(helper.make_tensor_value_info(_onnx_nms(b, boxes, scores, spec), TensorProto.FLOAT,
                                                          [batch, spec.keep_topk, 6]))
        head = HEAD_END2END
    else:
        _trt_nms(b, boxes, scores, spec)
        model.opset_import.append(helper.make_opsetid("TRT", 1))
        for name, dtype, shape in zip(TRT_OUTPUTS, (TensorProto.INT32, TensorProto.FLOAT, TensorProto.FLOAT,
                                                    TensorProto.INT32),
                                      ([batch, 1], [batch, spec.keep_topk, 4], [batch, spec.keep_topk],
                                       [batch, spec.keep_topk])):
            graph.output.append(helper.make_tensor_value_info(name, dtype, shape))
        head = HEAD_EFFICIENT_NMS
    end_to_end = Processing(**{**asdict(processing), "head": head})
    write_metadata(model, {META_NMS: json.dumps(asdict(spec)), META_PROCESSING: end_to_end.to_json()})
    return model, end_to_end


def detach_nms(model: onnx.ModelProto) -> tuple[onnx.ModelProto, NmsSpec] | tuple[onnx.ModelProto, None]:
    """The raw model back (nodes, constants and metadata of the NMS part removed) and the spec, or (model, None)."""
    spec = read_spec(model)
    if spec is None:
        return model, None
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    keep = [n for n in graph.node if not n.name.startswith(PREFIX)]
    del graph.node[:]
    graph.node.extend(keep)
    keep = [t for t in graph.initializer if not t.name.startswith(PREFIX)]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    raw = next(v for v in graph.value_info if v.name == spec.raw_output)
    del graph.output[:]
    graph.output.append(raw)
    keep = [o for o in model.opset_import if o.domain != "TRT"]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    keep = [p for p in model.metadata_props if p.key != META_NMS]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    processing = {p.key: p.value for p in model.metadata_props}.get(META_PROCESSING)
    if processing is not None:
        write_metadata(model, {META_PROCESSING: Processing(**{**asdict(Processing.from_json(processing)),
                                                              "head": spec.raw_head}).to_json()})
    return model, spec


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "batch")
            for d in value_info.type.tensor_type.shape.dim]


def _boxes_and_scores(b: _Builder, raw: str, processing: Processing) -> tuple[str, str]:
    """(batch, N, 4) corner boxes and (batch, N, classes) scores from any raw layout."""
    if processing.head == HEAD_ANCHOR_FREE:  # (B, 4+nc, N)
        rows = b.op("Transpose", [raw], perm=[0, 2, 1])
        xywh, scores = b.slice(rows, 0, 4, 2), b.slice(rows, 4, 2**31 - 1, 2)
    elif processing.head in (HEAD_OBJECTNESS, HEAD_GRID):  # (B, N, 5+nc)
        rows = raw
        if processing.head == HEAD_GRID:
            cells, strides = (t.numpy() for t in grid_cells(processing.imgsz))
            xy = b.op("Mul", [b.op("Add", [b.slice(raw, 0, 2, 2), b.const(cells, np.float32)]),
                              b.const(strides, np.float32)])
            wh = b.op("Mul", [b.op("Exp", [b.slice(raw, 2, 4, 2)]), b.const(strides, np.float32)])
            rows = b.op("Concat", [xy, wh, b.slice(raw, 4, 2**31 - 1, 2)], axis=2)
        xywh = b.slice(rows, 0, 4, 2)
        scores = b.op("Mul", [b.slice(rows, 5, 2**31 - 1, 2), b.slice(rows, 4, 5, 2)])
    else:
        raise OrinflowError(f"--nms: no decode for head layout {processing.head}")
    centre, size = b.slice(xywh, 0, 2, 2), b.slice(xywh, 2, 4, 2)
    half = b.op("Mul", [size, b.const([0.5], np.float32)])
    boxes = b.op("Concat", [b.op("Sub", [centre, half]), b.op("Add", [centre, half])], axis=2)
    return boxes, scores


def _pre_topk(b: _Builder, boxes: str, scores: str, k: int) -> tuple[str, str]:
    """The k anchors with the best class score, in score order (the cut mmyolo's and TensorRT's NMS make)."""
    _, index = b.op("TopK", [b.reduce_max(scores, 2), b.const([k])], outputs=2, axis=1)
    index = b.unsqueeze(index, 2)
    return (b.op("GatherND", [boxes, index], batch_dims=1), b.op("GatherND", [scores, index], batch_dims=1))


def _onnx_nms(b: _Builder, boxes: str, scores: str, spec: NmsSpec) -> str:
    """NonMaxSuppression per class, then each image's best keep_topk as (B, keep_topk, 6) rows."""
    by_class = b.op("Transpose", [scores], perm=[0, 2, 1])  # (B, C, N)
    selected = b.op("NonMaxSuppression", [boxes, by_class, b.const([spec.keep_topk]),
                                          b.const([spec.iou], np.float32), b.const([spec.conf], np.float32)])
    image, cls, anchor = (b.slice(selected, i, i + 1, 1) for i in range(3))  # (M, 1) each
    picked_boxes = b.op("GatherND", [boxes, b.op("Concat", [image, anchor], axis=1)])  # (M, 4)
    picked_scores = b.op("GatherND", [by_class, selected])  # (M,)
    rows = b.op("Concat", [picked_boxes, b.unsqueeze(picked_scores, 1), b.op("Cast", [cls], to=TensorProto.FLOAT)],
                axis=1)  # (M, 6)
    batch = b.op("Gather", [b.op("Shape", [boxes]), b.const(0)], axis=0)
    images = b.op("Range", [b.const(0), batch, b.const(1)])  # (B,)
    mine = b.op("Equal", [b.unsqueeze(images, 1), b.op("Transpose", [image], perm=[1, 0])])  # (B, M)
    ranked = b.op("Where", [mine, b.unsqueeze(picked_scores, 0), b.const([-1.0], np.float32)])
    k = b.op("Min", [b.const([spec.keep_topk]), b.slice(b.op("Shape", [selected]), 0, 1, 0)])
    best, order = b.op("TopK", [ranked, k], outputs=2, axis=1)  # (B, k)
    gathered = b.op("Gather", [rows, order], axis=0)  # (B, k, 6)
    real = b.unsqueeze(b.op("Greater", [best, b.const([-0.5], np.float32)]), 2)
    gathered = b.op("Where", [real, gathered, b.const([0.0], np.float32)])
    pads = b.op("Concat", [b.const([0, 0, 0, 0]), b.op("Sub", [b.const([spec.keep_topk]), k]), b.const([0])], axis=0)
    return b.op("Pad", [gathered, pads, b.const(0.0, np.float32)], names=[DETECTIONS])


def _trt_nms(b: _Builder, boxes: str, scores: str, spec: NmsSpec) -> None:
    b.op("EfficientNMS_TRT", [boxes, scores], outputs=4, domain="TRT", names=TRT_OUTPUTS, background_class=-1,
         box_coding=0, iou_threshold=float(spec.iou), max_output_boxes=spec.keep_topk, plugin_version="1",
         score_activation=0, score_threshold=float(spec.conf), class_agnostic=0)


def with_nms_restored(source, output, quantize):
    """`quantize(raw_source, raw_output) -> record` on `source` without its NMS part; the same NMS is then attached
    to the result at `output`. Models without NMS inside go straight through. The NMS part is never quantized,
    and calibration and the accuracy budget see the raw head outputs, as for any model."""
    from pathlib import Path

    from ..io import atomic_path, private_folder, write_record
    from ..models.onnx_model import load_onnx

    model = onnx.load(str(source.path))
    raw, spec = detach_nms(model)
    if spec is None:
        return quantize(source, output)
    with private_folder() as folder:
        onnx.save(raw, str(folder / Path(source.path).name))
        record = quantize(load_onnx(folder / Path(source.path).name), folder / Path(output).name)
        quantized = onnx.load(str(folder / Path(output).name))
        end_to_end, _ = attach_nms(quantized, load_onnx(folder / Path(output).name).processing,
                                   NmsSpec(**{**asdict(spec), "raw_output": "", "raw_head": ""}))
        with atomic_path(output) as tmp:
            onnx.save(end_to_end, str(tmp))
    record = {**record, "model": str(output), "source": str(source.path), "nms": asdict(spec),
              "size_bytes": Path(output).stat().st_size}
    write_record(Path(output), record)
    return record
