"""An exported ONNX file with the processing spec orinflow stored in its metadata."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from ..errors import OrinflowError
from .processing import Processing, UsesProcessing

META_PROCESSING = "orinflow.processing"
META_FAMILY = "orinflow.family"
META_SOURCE = "orinflow.source"
ALIGNED_METADATA = "orinflow.channel_aligned"  # the cpu target's padded convs: JSON {conv: {"output_channels", ...}}


def true_output_channels(model: onnx.ModelProto) -> dict[str, int]:
    """Convs the cpu target padded with zero filters (from the model's metadata), with their real filter count."""
    raw = next((p.value for p in model.metadata_props if p.key == ALIGNED_METADATA), "{}")
    return {name: info["output_channels"] for name, info in json.loads(raw).items()}


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


def read_processing(model: onnx.ModelProto) -> Processing | None:
    """The processing spec stored in the model's metadata, or None for an ONNX orinflow did not write or adopt."""
    text = read_metadata(model).get(META_PROCESSING)
    return Processing.from_json(text) if text else None


def load_onnx(path: Path) -> OnnxModel:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise OrinflowError(f"{path} is not a readable ONNX model ({type(e).__name__})") from e
    meta = read_metadata(model)
    if META_PROCESSING not in meta:
        raise OrinflowError(f"{path} carries no orinflow metadata (pre/post-processing unknown); give it that "
                            "with `orinflow adopt -m model.onnx`, or export the PyTorch model with `orinflow export`")
    try:
        processing = Processing.from_json(meta[META_PROCESSING])
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise OrinflowError(f"{path}: orinflow metadata is damaged ({e})") from e
    return OnnxModel(path, meta.get(META_FAMILY, "onnx"), processing, meta.get(META_SOURCE, str(path)))
