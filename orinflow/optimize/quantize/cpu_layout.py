"""Shape an FP32 graph so ONNX Runtime's x86 integer convolution takes its fast path.

MLAS's symmetric ("indirect") INT8 convolution, the VNNI/AVX2 kernel that makes INT8 beat
FP32 on the CPU, only runs when a grouped-1 conv has input channels divisible by 4 and at
least 16 output channels divisible by 4. Anything else falls back to im2col + a generic
integer GEMM with an int32 scratch pass, slower than ORT's FP32 conv. Two layers of every
YOLO miss it: the stem (3 RGB channels) and each detect conv (3 x (5 + 80) = 255 outputs).

Both rewrites below leave every output value as it was:
- a strided stem (YOLOv5's 6x6/2, a 4x4/4 patchify) becomes SpaceToDepth + a stride-1 conv
  on s*s times the channels, which are then divisible by 4 and deep enough for the kernel
  (zero-padding 3 channels to 4 instead is slower than the fallback: measured);
- an output count that misses the alignment gets zero filters (zero bias), sliced off again.
"""
from __future__ import annotations


import numpy as np
import onnx
from onnx import helper, numpy_helper

CHANNEL_ALIGN = 4
MIN_OUTPUT_CHANNELS = 16


def _aligned(count: int, minimum: int = 1) -> int:
    return max(minimum, -(-count // CHANNEL_ALIGN) * CHANNEL_ALIGN)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def align_conv_channels(model: onnx.ModelProto, skip: set[str] = frozenset()) -> dict[str, dict]:
    """Re-lay every eligible 2-D Conv in place (except nodes named in `skip`).

    Returns {conv name: {"space_to_depth": block or 0, "output_channels": the true count}},
    which the quantized model carries as metadata: the 2:4 check trims the padding again.
    """
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    shapes = _static_shapes(model)
    changed: dict[str, dict] = {}
    for node in list(graph.node):
        weight = initializers.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if node.name in skip or weight is None or len(weight.dims) != 4 or _attr(node, "group", 1) != 1:
            continue
        w = numpy_helper.to_array(weight)
        input_hw = shapes.get(node.input[0], (0, 0))[-2:]
        block = _space_to_depth_block(node, w.shape, input_hw) if w.shape[1] % CHANNEL_ALIGN else 0
        if block:
            w = _space_to_depth_conv(graph, node, w, block)
        out_ch = w.shape[0]
        new_out = _aligned(out_ch, MIN_OUTPUT_CHANNELS)
        if new_out != out_ch:
            w = np.pad(w, ((0, new_out - out_ch), (0, 0), (0, 0), (0, 0)))
            _pad_output(graph, initializers, node, out_ch, new_out - out_ch)
        if not block and new_out == out_ch:
            continue
        _replace_initializer(graph, initializers, weight.name, w, f"{node.name}_aligned_W")
        node.input[1] = f"{node.name}_aligned_W"
        changed[node.name] = {"space_to_depth": block, "output_channels": out_ch}
    if changed:
        _toposort(graph)
    return changed


def _replace_initializer(graph, initializers, old: str, array: np.ndarray, new: str) -> None:
    """Add `array` as `new`; drop `old` when nothing else reads it."""
    graph.initializer.append(numpy_helper.from_array(array.astype(numpy_helper.to_array(initializers[old]).dtype), new))
    initializers[new] = graph.initializer[-1]
    readers = sum(old in n.input for n in graph.node)
    if readers <= 1:
        graph.initializer.remove(initializers.pop(old))


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Tensor name -> dims from shape inference, 0 where a dim is symbolic (a dynamic batch)."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    return {info.name: tuple(d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim)
            for info in list(graph.input) + list(graph.value_info)}


def _space_to_depth_block(node: onnx.NodeProto, shape: tuple[int, ...], input_hw: tuple[int, ...]) -> int:
    """The stride s when conv(k, stride s, pad p) equals SpaceToDepth(s) + conv(k/s, 1, p/s); else 0."""
    strides = list(_attr(node, "strides", [1, 1]))
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    block = strides[0]
    if (block < 2 or strides != [block, block] or _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
            or any(d != 1 for d in _attr(node, "dilations", [1, 1]))
            or any(k % block for k in shape[2:]) or any(p % block for p in pads)
            or len(input_hw) != 2 or any(d == 0 or d % block for d in input_hw)
            or (shape[1] * block * block) % CHANNEL_ALIGN):
        return 0
    return block


def _space_to_depth_conv(graph, node: onnx.NodeProto, w: np.ndarray, block: int) -> np.ndarray:
    """Rewrite `node` to read SpaceToDepth(input); return its weights for the new layout.

    ONNX SpaceToDepth puts input pixel (s*y + dy, s*x + dx) of channel c at
    channel (dy*s + dx)*C + c of pixel (y, x), so the new weight of that channel at tap (ky, kx)
    is the old weight at (s*ky + dy, s*kx + dx).
    """
    out_ch, in_ch, kh, kw = w.shape
    folded = w.reshape(out_ch, in_ch, kh // block, block, kw // block, block)  # o, c, ky, dy, kx, dx
    folded = folded.transpose(0, 3, 5, 1, 2, 4).reshape(out_ch, block * block * in_ch, kh // block, kw // block)
    moved = f"{node.input[0]}_space_to_depth_for_{node.name}"
    graph.node.append(helper.make_node("SpaceToDepth", [node.input[0]], [moved], name=f"{node.name}_space_to_depth",
                                       blocksize=block))
    node.input[0] = moved
    for name, value in (("strides", [1, 1]), ("pads", [p // block for p in _attr(node, "pads", [0, 0, 0, 0])]),
                        ("kernel_shape", [kh // block, kw // block])):
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        node.attribute.append(helper.make_attribute(name, value))
    return np.ascontiguousarray(folded)


def _pad_output(graph, initializers, node: onnx.NodeProto, keep: int, extra: int) -> None:
    """Extra zero filters (and zero bias), then a Slice back to the original channels."""
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(initializers[node.input[2]])
        _replace_initializer(graph, initializers, node.input[2], np.pad(bias, (0, extra)), f"{node.name}_aligned_B")
        node.input[2] = f"{node.name}_aligned_B"
    original = node.output[0]
    node.output[0] = f"{original}_aligned"
    consts = {"starts": [0], "ends": [keep], "axes": [1]}
    for key, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{node.name}_align_{key}"))
    graph.node.append(helper.make_node(
        "Slice", [node.output[0]] + [f"{node.name}_align_{k}" for k in consts], [original],
        name=f"{node.name}_align_slice"))


def _toposort(graph) -> None:
    """Re-order nodes so every input is produced before it is read (the new nodes went to the end)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        runnable = [all(i in ready for i in n.input) for n in pending]
        if not any(runnable):
            raise ValueError("graph has a cycle or a missing input")
        for node, now in zip(pending, runnable):
            if now:
                ordered.append(node)
                ready.update(node.output)
        pending = [n for n, now in zip(pending, runnable) if not now]
    del graph.node[:]
    graph.node.extend(ordered)


def quantize_before_space_to_depth(model: onnx.ModelProto) -> int:
    """Swap `SpaceToDepth -> QuantizeLinear` into `QuantizeLinear -> SpaceToDepth`; return the swaps.

    ONNX Runtime's quantizer leaves SpaceToDepth in float and quantizes its output. Moving
    pixels commutes with a per-tensor Q, so the swap is exact, and the move then runs on
    uint8, a quarter of the bytes.
    """
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    swapped = 0
    for node in list(graph.node):
        readers = consumers.get(node.output[0], []) if node.op_type == "SpaceToDepth" else []
        if len(readers) != 1 or readers[0].op_type != "QuantizeLinear" or node.output[0] in outputs:
            continue
        quant = readers[0]
        source, moved, quantized = node.input[0], node.output[0], quant.output[0]
        early = f"{source}_quantized_for_{node.name}"
        quant.input[0], quant.output[0] = source, early
        node.input[0], node.output[0] = early, quantized
        for info in [v for v in graph.value_info if v.name == moved]:  # a float tensor that no longer exists
            graph.value_info.remove(info)
        swapped += 1
    if swapped:
        _toposort(graph)
    return swapped
