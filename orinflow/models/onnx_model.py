"""An exported ONNX file with the processing spec orinflow stored in its metadata."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import OrinflowError
from .processing import Processing, ProcessingError, UsesProcessing

META_PROCESSING = "orinflow.processing"
META_FAMILY = "orinflow.family"
META_SOURCE = "orinflow.source"
ALIGNED_METADATA = "orinflow.channel_aligned"  # the cpu target's padded convs: JSON {conv: {"output_channels", ...}}


def true_output_channels(model: onnx.ModelProto) -> dict[str, int]:
    """Convs the cpu target padded with zero filters (from the model's metadata), with their real filter count."""
    raw = next((p.value for p in model.metadata_props if p.key == ALIGNED_METADATA), "{}")
    try:
        padded = {name: info["output_channels"] for name, info in json.loads(raw).items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise OrinflowError(f"metadata {ALIGNED_METADATA} is damaged ({type(e).__name__}: {e})") from e
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in padded.values()):
        raise OrinflowError(f"metadata {ALIGNED_METADATA}: output_channels must be positive whole numbers")
    return padded


LEARNED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization"}


@dataclass
class OnnxModel(UsesProcessing):
    path: Path
    family: str
    processing: Processing
    source: str

    def num_params(self) -> int:
        """Weights and biases of the layers that learn (Conv, Gemm, MatMul, norms), not graph constants."""
        model = onnx.load(str(self.path), load_external_data=False)
        graph = model.graph
        qdq = {n.output[0]: n.input[0] for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}

        def stored(name: str) -> str:  # through Q/DQ to the weights as stored (float or quantized)
            while name in qdq:
                name = qdq[name]
            return name

        learned = {stored(name) for node in graph.node if node.op_type in LEARNED_OPS for name in node.input[1:]}
        dims = {t.name: list(t.dims) for t in graph.initializer}
        total = sum(_numel(d) for name, d in dims.items() if name in learned)
        padded = true_output_channels(model)  # zero filters the cpu target added are not parameters
        for node in (n for n in graph.node if n.name in padded):
            for name in node.input[1:3]:  # weight, bias
                shape = dims.get(stored(name), [padded[node.name]])
                total -= (shape[0] - padded[node.name]) * _numel(shape[1:])
        return total


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def read_metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def write_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    existing = {p.key: p for p in model.metadata_props}
    for key, value in values.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, value


def read_processing(model: onnx.ModelProto, path: Path | str | None = None) -> Processing | None:
    """The processing spec stored in the model's metadata, or None for an ONNX orinflow did not write or adopt.

    It follows the rules of the flags it stands for (Processing.validate) and must agree with the graph
    (check_against_graph); a broken field is one line naming the metadata key and the field."""
    text = read_metadata(model).get(META_PROCESSING)
    if not text:
        return None
    where = f"{path}: " if path else ""
    try:
        processing = Processing.from_json(text)
        check_against_graph(processing, model)
    except ProcessingError as e:
        raise OrinflowError(f"{where}metadata {META_PROCESSING}: {e}") from e
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as e:
        raise OrinflowError(f"{where}metadata {META_PROCESSING} is damaged ({type(e).__name__}: {e})") from e
    return processing


def load_onnx(path: Path) -> OnnxModel:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise OrinflowError(f"{path} is not a readable ONNX model ({type(e).__name__})") from e
    meta = read_metadata(model)
    if META_PROCESSING not in meta:
        raise OrinflowError(f"{path} carries no orinflow metadata (pre/post-processing unknown); give it that "
                            "with `orinflow adopt -m model.onnx`, or export the PyTorch model with `orinflow export`")
    processing = read_processing(model, path)
    return OnnxModel(path, meta.get(META_FAMILY, "onnx"), processing, meta.get(META_SOURCE, str(path)))


def graph_dims(value_info) -> list[int | str]:
    """A graph input's or output's dims: numbers where fixed, the symbol (or '?') where not."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value_info.type.tensor_type.shape.dim]


def check_against_graph(processing: Processing, model: onnx.ModelProto) -> None:
    """Stored processing that contradicts the graph: an input size other than the graph's fixed one, a head
    layout the first output does not have, more or fewer class names than the head predicts."""
    from .heads import HEADS, check_head

    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    dims = graph_dims(inputs[0]) if inputs else []
    if len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[2:]) and tuple(dims[2:]) != processing.imgsz:
        raise ProcessingError("imgsz", f"is {list(processing.imgsz)} but the graph's input is fixed at "
                              f"{dims[2]}x{dims[3]}")
    if processing.room.instances and processing.head is None:
        raise ProcessingError("head", "is missing: a detector's metadata must name its output layout")
    layout = {fmt: name for name, fmt in HEADS.items()}.get(processing.head)
    if layout is None or not model.graph.output:
        return
    shape = graph_dims(model.graph.output[0])
    if not all(isinstance(d, int) for d in shape[1:]):
        return  # a dynamic output: the layout shows only when the model runs
    try:
        count = check_head(layout, shape, processing.imgsz)
    except OrinflowError as e:
        raise ProcessingError("head", f"is {processing.head!r} ({layout}), which the first output {shape} "
                              "contradicts") from e
    count = processing.room.classes_in_head(processing, count, [graph_dims(o) for o in model.graph.output])
    if count and processing.names and len(processing.names) != count:
        raise ProcessingError("names", f"lists {len(processing.names)} classes but the {layout} head predicts {count}")
