"""ONNX graph queries shared by quantization and its report: who feeds whom, and the detector decode."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

LEARNED_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass
class GraphIndex:
    """Producers and consumers of every tensor of one graph."""

    model: onnx.ModelProto

    def __post_init__(self):
        graph = self.model.graph
        self.nodes = list(graph.node)
        self.producer = {out: node for node in self.nodes for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {t.name: t for t in graph.initializer}

    def upstream(self, tensor: str, skip: set[str] = QDQ_OPS) -> onnx.NodeProto | None:
        """The node producing `tensor`, looking through Q/DQ (and Cast/Identity) wrappers."""
        node = self.producer.get(tensor)
        while node is not None and (node.op_type in skip or node.op_type in ("Cast", "Identity")):
            node = self.producer.get(node.input[0])
        return node


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node or output reads (ONNX Runtime warns about each one)."""
    used = ({name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
            | {i.name for i in model.graph.input})  # an initializer listed as an input stays (old IR)
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def is_dfl_conv(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """The Distribution Focal Loss projection: a fixed 1x1 conv that reads a Softmax."""
    source = index.upstream(node.input[0], skip=QDQ_OPS | {"Reshape", "Transpose"})
    return node.op_type == "Conv" and source is not None and source.op_type == "Softmax"


def decode_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes of a detector's decode: everything after the head's last learned convolutions.

    Found by graph shape, not names: a node belongs to the decode when no learned compute
    (Conv/Gemm/MatMul, the DFL projection excepted) lies downstream of it. That covers DFL,
    sigmoid, anchor/grid arithmetic and the final concat of YOLOv5, YOLOv8/11 and YOLO26
    alike, while the head's convolutions themselves stay quantizable.
    """
    index = GraphIndex(model)
    learned = {n.name for n in index.nodes if n.op_type in LEARNED_COMPUTE and not is_dfl_conv(index, n)}
    feeds_learned: dict[str, bool] = {}

    def reaches_learned(node: onnx.NodeProto) -> bool:
        if node.name in feeds_learned:
            return feeds_learned[node.name]
        feeds_learned[node.name] = False  # guard against cycles (there are none in ONNX)
        result = any(c.name in learned or reaches_learned(c) for out in node.output for c in index.consumers[out])
        feeds_learned[node.name] = result
        return result

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(index.nodes) + 100))
    try:
        return [n.name for n in index.nodes if n.name not in learned and n.op_type not in QDQ_OPS | {"Constant"}
                and not reaches_learned(n)]
    finally:
        sys.setrecursionlimit(limit)
