"""Q/DQ report: what runs quantized, what share of the compute that is, and a TensorRT-fusion lint."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .graph import LEARNED_COMPUTE, GraphIndex


def output_shapes(model: onnx.ModelProto, tensors: list[str]) -> dict[str, list[int]]:
    """Actual shapes of `tensors`: from static shape inference when it knows every dim, else from one
    ONNX Runtime pass on zeros.

    Static shape inference leaves dims unknown after Split/Slice in unsimplified exports
    (QAT), and fails on some FP8 graphs; running the graph once is exact for any of them, but
    building the session costs far more than inference where inference is complete.
    """
    inferred = _inferred_shapes(model, tensors)
    if inferred is not None:
        return inferred
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in known)
    options = ort.SessionOptions()  # shapes only: the graph as written, without the costly Q/DQ fusion passes
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception:  # unrunnable here: FLOPs then read 0
        return {}
    feeds = {}
    for graph_input in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in graph_input.shape]
        feeds[graph_input.name] = np.zeros(shape, np.float32)
    outputs = session.run(tensors, feeds)
    return {name: list(value.shape) for name, value in zip(tensors, outputs)}


def _inferred_shapes(model: onnx.ModelProto, tensors: list[str]) -> dict[str, list[int]] | None:
    """Every shape of `tensors` from static shape inference, or None when any dim is unknown or symbolic."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - some FP8 graphs; the ONNX Runtime pass answers instead
        return None
    graph = inferred.graph
    infos = {v.name: v for v in [*graph.value_info, *graph.output, *graph.input]}
    shapes = {}
    for name in tensors:
        info = infos.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        dims = info.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            return None
        shapes[name] = [d.dim_value for d in dims]
    return shapes


class ComputeNode:
    """A compute node seen through its Q/DQ wrappers."""

    def __init__(self, index: GraphIndex, node: onnx.NodeProto):
        self.node = node
        self.input_dq = index.producer.get(node.input[0])
        weight_name = node.input[1] if len(node.input) > 1 else ""
        self.weight_dq = index.producer.get(weight_name)
        if self.input_dq is not None and self.input_dq.op_type != "DequantizeLinear":
            self.input_dq = None
        if self.weight_dq is not None and self.weight_dq.op_type != "DequantizeLinear":
            self.weight_dq = None
        stored = self.weight_dq.input[0] if self.weight_dq is not None else weight_name
        tensor = index.initializers.get(stored)
        if tensor is None and stored in index.producer and index.producer[stored].op_type == "QuantizeLinear":
            tensor = index.initializers.get(index.producer[stored].input[0])  # Q of an fp32 weight
        self.weight_shape = list(tensor.dims) if tensor is not None else None

    @property
    def output_channels(self) -> int | None:
        """Output channels of the weight: axis 1 of a ConvTranspose (Cin, Cout/groups, ...), else axis 0."""
        if not self.weight_shape:
            return None
        if self.node.op_type == "ConvTranspose":
            return self.weight_shape[1] if len(self.weight_shape) > 1 else None
        return self.weight_shape[0]

    @property
    def quantized(self) -> bool:
        return self.input_dq is not None and self.weight_dq is not None

    def flops(self, shapes: dict[str, list[int]]) -> int:
        out = shapes.get(self.node.output[0])
        if not out or not self.weight_shape:
            return 0
        if self.node.op_type in ("Conv", "ConvTranspose"):
            per_output = int(np.prod(self.weight_shape[1:]))  # Cin/groups * kh * kw
            return 2 * int(np.prod(out)) * per_output
        return 2 * int(np.prod(out)) * int(self.weight_shape[0])  # Gemm/MatMul: rows x K x N


def qdq_report(model: onnx.ModelProto, target: str, mode: str, decode: set[str]) -> dict:
    index = GraphIndex(model)
    compute = [ComputeNode(index, n) for n in index.nodes if n.op_type in LEARNED_COMPUTE]
    shapes = output_shapes(model, [c.node.output[0] for c in compute])
    total = sum(c.flops(shapes) for c in compute) or 1
    quantized_flops = sum(c.flops(shapes) for c in compute if c.quantized)
    # Reshapes of a quantized head output are free; arithmetic on quantized values is the harm.
    decode_quantized = [n for n in decode if _reads_dq(index, n) and _op(index, n) not in DATA_MOVEMENT]
    report = {
        "target": target, "mode": mode,
        "qdq_pairs": sum(1 for n in index.nodes if n.op_type == "QuantizeLinear"),
        "compute_nodes": len(compute),
        "quantized_compute_nodes": sum(c.quantized for c in compute),
        "high_precision_compute_nodes": [c.node.name for c in compute if not c.quantized],
        "quantized_flop_share": quantized_flops / total,
        "compute_gflops": total / 1e9,
        "decode_nodes": len(decode),
        "decode_nodes_reading_quantized": decode_quantized,
    }
    report["lint"] = tensorrt_lint(index, compute) if target == "tensorrt" else []
    return report


DATA_MOVEMENT = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Slice"}


def _op(index: GraphIndex, name: str) -> str:
    return next((n.op_type for n in index.nodes if n.name == name), "")


def _reads_dq(index: GraphIndex, name: str) -> bool:
    node = next((n for n in index.nodes if n.name == name), None)
    return node is not None and any(
        (p := index.producer.get(i)) is not None and p.op_type == "DequantizeLinear" for i in node.input)


def _initializer_array(index: GraphIndex, name: str) -> np.ndarray | None:
    tensor = index.initializers.get(name)
    return numpy_helper.to_array(tensor) if tensor is not None else None


def tensorrt_lint(index: GraphIndex, compute: list[ComputeNode]) -> list[str]:
    """Violations of the Q/DQ layout TensorRT fuses into INT8 kernels, each naming its node."""
    problems = []
    for node in index.nodes:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero_point = _initializer_array(index, node.input[2])
            if zero_point is not None and np.any(zero_point != 0):
                problems.append(f"{node.name}: zero point is not 0")
    for c in compute:
        name = c.node.name
        if (c.input_dq is None) != (c.weight_dq is None):
            which = "input" if c.input_dq is None else "weight"
            problems.append(f"{name}: {which} has no Q/DQ pair while the other side is quantized")
        channels = c.output_channels
        if c.weight_dq is not None and channels and channels > 1:
            scale = _initializer_array(index, c.weight_dq.input[1])
            if scale is not None and scale.size != channels:
                problems.append(f"{name}: weight scale is per-tensor, not per output channel")
    for node in index.nodes:
        if node.op_type != "Concat":
            continue
        scales = []
        for tensor in node.input:
            dq = index.producer.get(tensor)
            if dq is not None and dq.op_type == "DequantizeLinear":
                value = _initializer_array(index, dq.input[1])
                scales.append(None if value is None else float(np.asarray(value).reshape(-1)[0]))
        known = [s for s in scales if s is not None]
        if len(known) > 1 and not np.allclose(known, known[0], rtol=1e-6):
            problems.append(f"{node.name}: concat inputs carry different scales {sorted(set(known))}")
    return problems
