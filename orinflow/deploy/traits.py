"""What an ONNX model is, read from the model itself: the facts that decide TensorRT's build flags."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from ..errors import OrinflowError
from ..models.onnx_model import META_PROCESSING, read_metadata
from ..optimize.common.graph import QDQ_OPS
from ..optimize.common.sparse24 import sparsity_summary

_FLOAT8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ, onnx.TensorProto.FLOAT8E5M2,
           onnx.TensorProto.FLOAT8E5M2FNUZ}
_INT4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


@dataclass
class ModelTraits:
    input_name: str
    input_shape: list[int | str]  # a str is a symbolic (dynamic) dimension
    explicit_quantization: bool  # Q/DQ nodes in the graph
    quant_types: list[str]  # int8 / fp8 / int4, from the Q/DQ nodes' types
    fp16_weights: bool
    sparse_2to4_layers: int
    eligible_layers: int
    sparse_flop_share: float
    has_processing: bool  # orinflow's pre/post-processing metadata, which infer.py needs
    task: str | None = None  # the task that metadata names

    @property
    def dynamic_batch(self) -> bool:
        return not isinstance(self.input_shape[0], int) or self.input_shape[0] <= 0

    @property
    def sparse(self) -> bool:
        return self.sparse_2to4_layers > 0

    def chw(self) -> list[int]:
        dims = self.input_shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            raise OrinflowError(f"input {self.input_name} has dynamic spatial dimensions {dims}; "
                                "orinflow bundles need a fixed image size")
        return dims

    def to_dict(self) -> dict:
        return {**asdict(self), "dynamic_batch": self.dynamic_batch, "sparse": self.sparse}


def model_traits(path: str | Path) -> ModelTraits:
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise OrinflowError(f"{path} is not a readable ONNX model ({type(e).__name__})") from e
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OrinflowError(f"{path} has {len(inputs)} inputs; orinflow deploys single-image-input models")
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in inputs[0].type.tensor_type.shape.dim]
    summary = sparsity_summary(model)
    return ModelTraits(
        input_name=inputs[0].name, input_shape=dims,
        explicit_quantization=any(n.op_type in QDQ_OPS for n in graph.node),
        quant_types=_quant_types(model),
        fp16_weights=any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer),
        sparse_2to4_layers=summary["sparse_layers"], eligible_layers=summary["eligible_layers"],
        sparse_flop_share=summary["sparse_flop_share"],
        has_processing=META_PROCESSING in read_metadata(model), task=_task(read_metadata(model)))


def _task(metadata: dict) -> str | None:
    """The task orinflow's metadata names (None without it, or when it does not parse)."""
    import json

    try:
        return json.loads(metadata[META_PROCESSING]).get("task")
    except (KeyError, ValueError, AttributeError):
        return None


def infer_commands(traits: ModelTraits, where: str) -> str:
    """The README's two infer.py lines, in the words of the model's task."""
    from ..tasks import TASKS

    room = TASKS.get(traits.task)
    results = room.results_phrase if room else "detections (or classes)"
    figures = " / ".join(room.metric_keys) if room else "mAP50 / mAP50-95 (or top-1/top-5)"
    return (f"python3 infer.py images/   # {results} per image; --json out.json to save them\n"
            f"python3 infer.py --eval data.yaml   # {figures} {where}")


def _quant_types(model: onnx.ModelProto) -> list[str]:
    """Quantized types in the graph, from the zero points / outputs of its Q/DQ nodes."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    for node in model.graph.node:  # zero points may also come from Constant nodes
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None:
            types[node.output[0]] = value.data_type
    found = set()
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        zero_point = node.input[2] if len(node.input) > 2 else ""
        quantized = node.input[0] if node.op_type == "DequantizeLinear" else None
        dtype = types.get(zero_point) or (types.get(quantized) if quantized else None)
        dtype = dtype or _output_type(node)
        found.add("fp8" if dtype in _FLOAT8 else "int4" if dtype in _INT4 else "int8")
    return sorted(found)


def _output_type(node: onnx.NodeProto) -> int:
    """QuantizeLinear's output_dtype attribute (opset 21); INT8/UINT8 is the default."""
    for attribute in node.attribute:
        if attribute.name == "output_dtype" and attribute.i:
            return attribute.i
    return onnx.TensorProto.UINT8
