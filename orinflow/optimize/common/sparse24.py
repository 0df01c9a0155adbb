"""2:4 structured sparsity check of an ONNX graph, as TensorRT's sparse kernels need it.

TensorRT runs a Conv/GEMM on sparse tensor cores when, along the input-channel (reduction)
dimension, every group of four consecutive weights holds at most two non-zeros. Eligible
layers follow NVIDIA's ASP rule (what ModelOpt sparsifies): no grouping, input channels a
multiple of 16, output channels a multiple of 8.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ...models.onnx_model import true_output_channels
from .graph import LEARNED_COMPUTE, GraphIndex
from .qdq_report import ComputeNode, output_shapes


def weight_array(index: GraphIndex, node: onnx.NodeProto) -> np.ndarray | None:
    """The weight as stored, looking through Q/DQ (quantized weights are checked as integers)."""
    name = node.input[1] if len(node.input) > 1 else ""
    while name in index.producer and index.producer[name].op_type in ("DequantizeLinear", "QuantizeLinear"):
        name = index.producer[name].input[0]
    tensor = index.initializers.get(name)
    return numpy_helper.to_array(tensor) if tensor is not None else None


def as_reduction_last(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray | None:
    """Weights as (outputs, ..., reduction) so 2:4 groups run along the last axis."""
    if node.op_type == "Conv":
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        if groups != 1 or weight.ndim < 3:
            return None
        return np.moveaxis(weight, 1, -1)  # (Cout, kh, kw, Cin)
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return weight if trans_b else weight.T  # (N, K)
    if node.op_type == "MatMul" and weight.ndim == 2:
        return weight.T
    return None


def is_2to4(weights: np.ndarray) -> bool:
    """At most two non-zeros in every group of four along the last axis."""
    groups = weights.reshape(-1, weights.shape[-1] // 4, 4)
    return bool(((groups != 0).sum(-1) <= 2).all())


def sparsity_report(model: onnx.ModelProto) -> dict:
    """Per-layer 2:4 status; zero filters added for ONNX Runtime's kernels are left out, as TensorRT sees none."""
    index = GraphIndex(model)
    real_outputs = true_output_channels(model)
    compute = [n for n in index.nodes if n.op_type in LEARNED_COMPUTE]
    shapes = output_shapes(model, [n.output[0] for n in compute])
    layers, total, sparse_flops = [], 0, 0
    for node in compute:
        flops = ComputeNode(index, node).flops(shapes)
        total += flops
        weight = weight_array(index, node)
        if weight is not None and node.name in real_outputs:
            weight = weight[:real_outputs[node.name]]
        arranged = as_reduction_last(node, weight) if weight is not None else None
        eligible = arranged is not None and arranged.shape[-1] % 16 == 0 and arranged.shape[0] % 8 == 0
        sparse = eligible and is_2to4(arranged)
        sparse_flops += flops if sparse else 0
        layers.append({"node": node.name, "op": node.op_type, "eligible": eligible, "is_2to4": sparse,
                       "reduction_dim": int(arranged.shape[-1]) if arranged is not None else None,
                       "flops": flops})
    eligible = [layer for layer in layers if layer["eligible"]]
    return {
        "layers": layers,
        "eligible_layers": len(eligible),
        "sparse_layers": sum(layer["is_2to4"] for layer in layers),
        "eligible_sparse_share": (sum(layer["is_2to4"] for layer in eligible) / len(eligible)) if eligible else 0.0,
        "sparse_flop_share": sparse_flops / total if total else 0.0,
    }


def sparsity_summary(model: onnx.ModelProto) -> dict:
    """The report without its per-layer list (for run records and one-line prints)."""
    return {k: v for k, v in sparsity_report(model).items() if k != "layers"}


def describe(summary: dict) -> str:
    return (f"2:4 sparsity: {summary['sparse_layers']} of {summary['eligible_layers']} eligible conv/GEMM layers "
            f"satisfy 2:4 ({summary['eligible_sparse_share']:.0%}); {summary['sparse_flop_share']:.1%} of conv/GEMM "
            "FLOPs are 2:4 sparse")
