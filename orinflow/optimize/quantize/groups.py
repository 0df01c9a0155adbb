"""Quantization groups of a Q/DQ graph, and the surgery that returns a group to high precision.

A group is what TensorRT fuses or must scale together, found from the graph alone:
- a learned op (Conv, ConvTranspose, Gemm, MatMul) with its weight quantizer and the
  activation quantizers that feed it;
- quantizers that feed one node together (the inputs of a Concat share a scale, a residual
  Add fuses both of its inputs into the producing conv);
- one activation quantizer read by several ops ties those ops together.
Groups are the connected components of these ties (union-find), so taking a whole group
out of INT8 never leaves a conv with one quantized side or a concat with mixed scales.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from ..common.graph import LEARNED_COMPUTE, GraphIndex, drop_unused_initializers
from ..common.qdq_report import ComputeNode, output_shapes


@dataclass
class Quantizer:
    """One Q/DQ pair (or a lone DQ over a stored integer weight, as ONNX Runtime writes them)."""

    dq: str  # DequantizeLinear node name
    q: str | None  # QuantizeLinear node name, None for pre-quantized weights
    tensor: str  # the float tensor it quantizes (the Q's input), or the DQ's input when there is no Q
    is_weight: bool


@dataclass
class Group:
    name: str  # the first learned op's name (or the first quantized tensor's)
    compute: list[str] = field(default_factory=list)  # learned ops whose INT8 kernels this group decides
    quantizers: list[Quantizer] = field(default_factory=list)
    flops: int = 0

    def to_json(self) -> dict:
        return {"name": self.name, "compute": self.compute, "flops": self.flops,
                "quantized_tensors": [q.tensor for q in self.quantizers if not q.is_weight]}


class UnionFind:
    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, key: str) -> str:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def quantizers(index: GraphIndex) -> list[Quantizer]:
    found = []
    for node in index.nodes:
        if node.op_type != "DequantizeLinear":
            continue
        q = index.producer.get(node.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            tensor = q.input[0]
            found.append(Quantizer(node.name, q.name, tensor, tensor in index.initializers))
        elif node.input[0] in index.initializers:
            found.append(Quantizer(node.name, None, node.input[0], True))
    return found


def quantization_groups(model: onnx.ModelProto) -> list[Group]:
    """The groups of a Q/DQ model, in graph order, with the conv FLOPs each one decides."""
    index = GraphIndex(model)
    by_dq = {qz.dq: qz for qz in quantizers(index)}
    dq_nodes = {n.name: n for n in index.nodes if n.name in by_dq}
    ties = UnionFind()
    for name in by_dq:
        ties.find(name)
    for node in index.nodes:
        read = [p.name for t in node.input if (p := index.producer.get(t)) is not None and p.name in by_dq]
        for other in read[1:]:  # everything one node reads quantized is decided together
            ties.union(read[0], other)
    for dq_name, dq in dq_nodes.items():  # one quantizer read by several ops ties those ops
        readers = index.consumers[dq.output[0]]
        for reader in readers:
            ties.find(f"node:{reader.name}")
            ties.union(dq_name, f"node:{reader.name}")
    compute = {n.name: ComputeNode(index, n) for n in index.nodes if n.op_type in LEARNED_COMPUTE}
    shapes = output_shapes(model, [c.node.output[0] for c in compute.values()])
    groups: dict[str, Group] = {}
    for node in index.nodes:  # graph order: a group is named after its first member
        members = [f"node:{node.name}"] if f"node:{node.name}" in ties.parent else []
        members += [node.name] if node.name in by_dq else []
        for member in members:
            root = ties.find(member)
            group = groups.setdefault(root, Group(name=""))
            if member.startswith("node:") and node.name in compute and compute[node.name].quantized:
                group.compute.append(node.name)
                group.flops += compute[node.name].flops(shapes)
            elif member == node.name:
                group.quantizers.append(by_dq[node.name])
    result = []
    for group in groups.values():
        if not group.quantizers:
            continue
        group.name = group.compute[0] if group.compute else group.quantizers[0].tensor
        result.append(group)
    return result


def dequantize_groups(model: onnx.ModelProto, groups: list[Group]) -> onnx.ModelProto:
    """A copy of `model` with these groups' Q/DQ pairs removed: their ops read float tensors again.

    Activation pairs are bypassed (readers take the Q's float input). Weights behind a Q read
    the float initializer; a stored integer weight (no Q) is dequantized into a float initializer.
    """
    from onnx import numpy_helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    if not groups:
        return result
    index = GraphIndex(result)
    nodes = {n.name: n for n in index.nodes}
    drop: set[str] = set()
    rename: dict[str, str] = {}
    for group in groups:
        for qz in group.quantizers:
            dq = nodes[qz.dq]
            if qz.q is None:
                rename[dq.output[0]] = _float_weight(result, index, dq, numpy_helper)
            else:
                rename[dq.output[0]] = qz.tensor
                drop.add(qz.q)
            drop.add(qz.dq)
    kept = [n for n in result.graph.node if n.name not in drop]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for output in result.graph.output:
        if output.name in rename:  # a graph output read through a DQ: keep its name, copy the float value
            kept.append(onnx.helper.make_node("Identity", [rename[output.name]], [output.name],
                                              name=f"{output.name}_float"))
    del result.graph.node[:]
    result.graph.node.extend(kept)
    drop_unused_initializers(result)
    return result


def _float_weight(model: onnx.ModelProto, index: GraphIndex, dq: onnx.NodeProto, numpy_helper) -> str:
    import numpy as np

    stored = numpy_helper.to_array(index.initializers[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(index.initializers[dq.input[1]]).astype(np.float32)
    zero = (numpy_helper.to_array(index.initializers[dq.input[2]]).astype(np.float32)
            if len(dq.input) > 2 and dq.input[2] else np.zeros_like(scale))
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    shape = [1] * stored.ndim
    if scale.ndim == 1 and scale.size > 1:
        shape[axis] = scale.size
    value = (stored - zero.reshape(shape)) * scale.reshape(shape)
    name = f"{dq.input[0]}_float"
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name
