"""The graph a bundle deploys, made from the user's model in a private folder (the model itself is never touched).

- A Q/DQ model whose non-quantized layers are FP32 (orinflow's CPU-evaluable default) gets them in FP16
  for TensorRT 10: `--stronglyTyped` builds every layer in the type the graph gives it, so FP32 there
  would run FP32 on the Jetson. ModelOpt's own converter (the one its quantizer uses for
  `high_precision_dtype="fp16"`) does it, network inputs and outputs kept FP32.
- An orinflow detector without NMS inside gets the NMS part (export/nms.py), so no NMS runs on the CPU.
A model that already has NMS inside has it detached before the FP16 conversion and attached after:
the NMS part stays FP32 and out of the conversion.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import onnx

from ..export.nms import NmsSpec, attach_nms, detach_nms
from ..models.onnx_model import read_processing
from ..models.processing import NMS_INSIDE
from ..optimize.common.graph import QDQ_OPS


def prepare_graph(path: Path, spec: NmsSpec | None, fp16_layers: bool, target: Path) -> tuple[Path, dict]:
    """(the path to deploy, what was done). `path` itself when nothing needs doing."""
    model = onnx.load(str(path))
    raw, inside = detach_nms(model)
    done: dict = {}
    if fp16_layers and needs_fp16_layers(raw):
        raw = to_fp16_layers(raw)
        done["high_precision"] = "fp16 (converted at deploy)"
    processing = read_processing(raw, path)
    nms = inside or (spec if processing is not None and processing.room.nms_in_engine
                     and processing.head not in NMS_INSIDE else None)
    if nms is not None and (done or inside is None):
        attached = NmsSpec(**{**asdict(nms), "raw_output": "", "raw_head": ""})
        raw, _ = attach_nms(raw, processing, attached)  # resolves the family's IoU where none was given
        done["nms"] = asdict(nms) | {"iou": attached.iou, "attached": inside is None}
    if not done:
        return path, done
    onnx.save(raw, str(target))
    return target, done


def needs_fp16_layers(model: onnx.ModelProto) -> bool:
    """A Q/DQ graph whose float weights (the non-quantized layers') are FP32."""
    if not any(n.op_type in QDQ_OPS for n in model.graph.node):
        return False
    floats = {t.data_type for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT,
                                                                              onnx.TensorProto.FLOAT16)}
    return onnx.TensorProto.FLOAT16 not in floats


def to_fp16_layers(model: onnx.ModelProto) -> onnx.ModelProto:
    from modelopt.onnx.autocast.convert import convert_to_f16

    from ..optimize.common import quietly

    metadata = list(model.metadata_props)
    with quietly():
        converted = convert_to_f16(model, keep_io_types=True)
    del converted.metadata_props[:]
    converted.metadata_props.extend(metadata)
    return converted
