"""ONNX graph queries shared by quantization and its report: who feeds whom, and the detector decode."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

LEARNED_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
# Ops whose result in integers equals their result in float on the same integers (max, data movement)
EXACT_IN_INTEGERS = {"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Split", "Identity",
                     "Gather"}


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


def fold_weight_qdq(model: onnx.ModelProto) -> int:
    """Replace every weight's (Quantize)DequantizeLinear by the float weight it yields, in place; returns how many.

    The values are those the Q/DQ pair computes (round half to even, saturated to the integer type), so the
    graph is the same function; a runtime then sees float weights and cannot pick integer kernels for them
    (OpenVINO on a CPU without VNNI, runtime/openvino.py). Activation Q/DQ pairs stay.
    """
    import numpy as np
    from onnx import numpy_helper

    index = GraphIndex(model)
    values = constant_values(index)
    folded, dropped = [], set()
    for node in index.nodes:
        if node.op_type != "DequantizeLinear" or len(node.input) < 2 or node.input[1] not in values:
            continue
        quantize = index.producer.get(node.input[0])
        if _integer_type(node, values) is None:
            continue  # float8 and 4-bit types are left to the runtime
        if node.input[0] in values:
            integers = values[node.input[0]].astype(np.float64)
        elif (quantize is not None and quantize.op_type == "QuantizeLinear" and quantize.input[0] in values
              and all(name in values for name in quantize.input[1:])):
            integers = _quantized(values[quantize.input[0]], quantize, values)
            dropped.add(id(quantize))
        else:
            continue
        scale, zero = _scale_and_zero(node, values, integers.ndim)
        folded.append(numpy_helper.from_array(((integers - zero) * scale).astype(np.float32), node.output[0]))
        dropped.add(id(node))
    kept = [node for node in index.nodes if id(node) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(folded)
    drop_unused_initializers(model)
    return len(folded)


def unsigned_activations(model: onnx.ModelProto) -> int:
    """Re-express every signed 8-bit activation quantizer as unsigned with its zero point moved up by 128, in
    place; returns how many. QuantizeLinear rounds, adds the zero point and saturates, so int8 with zero point z
    and uint8 with z + 128 give the same integers shifted by 128, and DequantizeLinear subtracts the zero point
    again: the graph is the same function. OpenVINO's CPU plugin (2026.4) computes a signed activation quantizer
    that follows a Concat and feeds an integer convolution with a step of 1.0 instead of its scale; the unsigned
    form takes another path there (docs/runtimes.md). Weight quantizers stay signed."""
    import numpy as np
    from onnx import numpy_helper

    index = GraphIndex(model)
    values = constant_values(index)
    shifted = 0
    for node in index.nodes:
        if node.op_type != "QuantizeLinear" or node.input[0] in values or len(node.input) < 3:
            continue
        zero = values.get(node.input[2])
        consumers = index.consumers[node.output[0]]
        if zero is None or zero.dtype != np.int8 or not consumers or any(
                c.op_type != "DequantizeLinear" or len(c.input) < 3 or c.input[2] not in values
                or not np.array_equal(values[c.input[2]], zero) for c in consumers):
            continue
        name = f"{node.output[0]}_unsigned_zero_point"
        model.graph.initializer.append(numpy_helper.from_array((zero.astype(np.int16) + 128).astype(np.uint8), name))
        for user in (node, *consumers):
            user.input[2] = name
        shifted += 1
    drop_unused_initializers(model)
    return shifted


def ort_integer_units(model: onnx.ModelProto) -> int:
    """How many of the graph's nodes ONNX Runtime can run as integer kernels: a node whose float inputs all come
    from DequantizeLinear and whose output only feeds QuantizeLinear (its QDQ node unit, fused into QLinearConv,
    QLinearAdd, QLinearGlobalAveragePool and the like). Nodes that only move or select values (MaxPool,
    Reshape, ...) compute the same in integers and are not counted. Reads no tensor data."""
    index = GraphIndex(model)
    constants = constant_names(index)
    units = 0
    for node in index.nodes:
        if node.op_type in QDQ_OPS | EXACT_IN_INTEGERS | {"Constant"}:
            continue
        sources = [index.producer.get(name) for name in node.input if name and name not in constants]
        users = index.consumers[node.output[0]] if node.output else []
        if (sources and all(s is not None and s.op_type == "DequantizeLinear" for s in sources) and users
                and all(u.op_type == "QuantizeLinear" for u in users)):
            units += 1
    return units


def has_integer_qdq(model: onnx.ModelProto) -> bool:
    """Whether any Q/DQ node works in 8-bit integers (uint8 without a zero point): a model a runtime may run on
    integer kernels. Reads no tensor data."""
    index = GraphIndex(model)
    types = {name: t.data_type for name, t in index.initializers.items()}
    types.update({node.output[0]: a.t.data_type for node in index.nodes if node.op_type == "Constant"
                  for a in node.attribute if a.name == "value"})
    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    return any(node.op_type in QDQ_OPS and (len(node.input) < 3 or not node.input[2]
                                            or types.get(node.input[2]) in eight_bit) for node in index.nodes)


def constant_names(index: GraphIndex) -> set[str]:
    """Initializers and Constant nodes' outputs."""
    return set(index.initializers) | {node.output[0] for node in index.nodes if node.op_type == "Constant"}


def constant_values(index: GraphIndex) -> dict:
    """Every constant tensor of the graph by name, as a NumPy array: initializers and Constant nodes' values
    (ModelOpt's QAT export keeps scales and zero points in Constant nodes)."""
    from onnx import numpy_helper

    values = {name: numpy_helper.to_array(t) for name, t in index.initializers.items()}
    for node in index.nodes:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def _scale_and_zero(node: onnx.NodeProto, values: dict, rank: int):
    """A Q or DQ node's scale and zero point as float64 arrays broadcastable along its axis."""
    import numpy as np

    scale = values[node.input[1]].astype(np.float64)
    zero = values[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(())
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = [1] * rank
    shape[axis % rank] = -1
    return (scale.reshape(shape) if scale.ndim else scale), (zero.reshape(shape) if zero.ndim else zero)


def _quantized(weight, quantize: onnx.NodeProto, values: dict):
    """What QuantizeLinear makes of a float weight, as float64 integers."""
    import numpy as np

    scale, zero = _scale_and_zero(quantize, values, weight.ndim)
    limits = np.iinfo(_integer_type(quantize, values))
    return np.clip(np.round(weight.astype(np.float64) / scale) + zero, limits.min, limits.max)


def _integer_type(node: onnx.NodeProto, values: dict):
    """The integer type a Q/DQ node works in (uint8 without a zero point), or None for float8 and packed types."""
    import numpy as np

    dtype = values[node.input[2]].dtype if len(node.input) > 2 and node.input[2] else np.dtype(np.uint8)
    return dtype if dtype in (np.int8, np.uint8, np.int16, np.uint16, np.int32) else None


def onnx_scope(node_name: str) -> str:
    """'/module/model.0/conv/Conv' -> 'module.model.0.conv': the module path torch.onnx.export wrote.

    A level inside a Sequential repeats the Sequential's name ('/model.22/cv2.0/cv2.0.0/conv'): that
    repeated prefix is dropped, giving model.22.cv2.0.0.conv.
    """
    pieces, previous = [], ""
    for level in [p for p in node_name.split("/") if p][:-1]:
        pieces.append(level[len(previous) + 1:] if previous and level.startswith(previous + ".") else level)
        previous = level
    return ".".join(pieces)
