"""Route 2 starts where route 1 ended: QAT initialised from a Q/DQ model (the best PTQ model).

The start model's graph is the answer route 1 found: which tensors are quantized, with which scales, and
which groups stay in float. QAT keeps all of it:
- each weighted layer (Conv, Gemm) is paired with the PyTorch module that made it, through the node's export
  scope ('/module/model.0/conv/Conv' -> module.model.0.conv), the pairing `orinflow compare` uses;
- the module's fake quantizers take the start's scales (weights per channel, the activation feeding it),
  or are switched off where the start keeps the layer in float;
- the trained weights are written back into a copy of the start graph, so the exported model has the start's
  Q/DQ nodes exactly (same count, same tensors, same activation scales) and, untrained, is the start model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from ...errors import OrinflowError
from ..common.graph import GraphIndex, constant_values, onnx_scope

INT8_MAX = 127.0
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm")  # ConvTranspose: a segmentation head's prototype upsampling
# ops through which a quantized tensor stays on the same grid (the scale of the Q/DQ before them still holds)
GRID_KEEPING_OPS = ("Concat", "MaxPool", "Resize", "Reshape", "Slice", "Split", "Identity", "Transpose",
                    "Flatten", "Squeeze", "Unsqueeze")


@dataclass
class StartLayer:
    """One weighted node of the start model: where its weights are and how it is quantized."""
    node: str
    op: str
    scope: str  # the module path the export wrote ('module.model.0.conv')
    weight: str  # the float weight's initializer
    shape: tuple
    bias: str | None
    weight_amax: np.ndarray | None  # per output channel; None: weights kept in float
    input_amax: float | None  # None: the input is kept in float
    axis: int = 0  # the weight's output-channel axis (1 for ConvTranspose)


@dataclass
class StartModel:
    path: Path
    model: onnx.ModelProto
    layers: list[StartLayer]
    quantized_inputs: dict[str, float]  # scope of any node -> amax of its quantized first input


@dataclass
class Pairing:
    pairs: list[tuple[StartLayer, str]] = field(default_factory=list)  # (start layer, module name)
    unpaired_layers: list[str] = field(default_factory=list)  # reasons, for the start's layers
    unpaired_modules: list[str] = field(default_factory=list)  # quantizable modules the start does not have

    def first_problem(self) -> str | None:
        return next(iter(self.unpaired_layers + self.unpaired_modules), None)


def read_start(path: Path) -> StartModel:
    """The weighted layers of an INT8 Q/DQ model in the TensorRT form (symmetric, zero point 0, float weights
    behind QuantizeLinear/DequantizeLinear); anything else is refused in one line."""
    try:
        model = onnx.load(str(path))
    except Exception as e:
        raise OrinflowError(f"--init-from {path}: not a readable ONNX model ({type(e).__name__})") from None
    index = GraphIndex(model)
    values = constant_values(index)
    if not any(n.op_type == "DequantizeLinear" for n in index.nodes):
        raise OrinflowError(f"--init-from {path}: no Q/DQ nodes; QAT starts from a quantized (INT8 Q/DQ) model")
    reader = _ScaleReader(index, values, path)
    layers = []
    for node in index.nodes:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
            continue  # not a Linear layer's export
        axis = 1 if node.op_type == "ConvTranspose" else 0
        weight, weight_amax = reader.weight(node.input[1], axis)
        if weight is None:
            continue  # computed weights (not a layer's parameters)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in index.initializers else None
        layers.append(StartLayer(node.name, node.op_type, onnx_scope(node.name), weight,
                                 tuple(index.initializers[weight].dims), bias, weight_amax,
                                 reader.activation(node.input[0]), axis))
    quantized_inputs = {}
    for node in index.nodes:
        if node.input and node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            amax = reader.activation(node.input[0])
            if amax is not None:
                quantized_inputs.setdefault(onnx_scope(node.name), amax)
    return StartModel(Path(path), model, layers, quantized_inputs)


class _ScaleReader:
    def __init__(self, index: GraphIndex, values: dict, path: Path):
        self.index, self.values, self.path = index, values, path

    def _scale(self, dq: onnx.NodeProto) -> np.ndarray:
        zero = self.values.get(dq.input[2]) if len(dq.input) > 2 else np.zeros((), np.int8)
        if zero is None or zero.dtype != np.int8 or np.any(zero != 0):
            kind = "uint8 (the cpu target's form)" if zero is not None and zero.dtype == np.uint8 else "not symmetric INT8"
            raise OrinflowError(f"--init-from {self.path}: {dq.input[0]} is {kind}; QAT starts from a tensorrt-target "
                                "INT8 model (orinflow quantize --target tensorrt --mode int8)")
        return np.asarray(self.values[dq.input[1]], np.float64)

    def weight(self, tensor: str, axis: int = 0) -> tuple[str | None, np.ndarray | None]:
        """(float weight initializer, per-channel amax or None when the weight is not quantized)."""
        if tensor in self.index.initializers:
            return tensor, None
        dq = self.index.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in self.values:
            return None, None
        q = self.index.producer.get(dq.input[0])
        if dq.input[0] in self.index.initializers or q is None or q.op_type != "QuantizeLinear":
            raise OrinflowError(f"--init-from {self.path}: {dq.input[0]} is stored as integers (the cpu target's "
                                "form); QAT starts from a tensorrt-target INT8 model")
        if q.input[0] not in self.index.initializers:
            return None, None
        channels = self.index.initializers[q.input[0]].dims[axis]
        return q.input[0], np.broadcast_to(self._scale(dq) * INT8_MAX, (channels,)).copy()

    def activation(self, tensor: str, depth: int = 0) -> float | None:
        """The amax of the Q/DQ that `tensor` comes out of, looking back through grid-keeping ops."""
        producer = self.index.producer.get(tensor)
        if producer is None or depth > 8:
            return None
        if producer.op_type == "DequantizeLinear":
            if producer.input[1] not in self.values or producer.input[0] in self.index.initializers:
                return None
            return float(np.max(self._scale(producer))) * INT8_MAX
        if producer.op_type not in GRID_KEEPING_OPS:
            return None
        inputs = producer.input if producer.op_type == "Concat" else producer.input[:1]
        found = [self.activation(name, depth + 1) for name in inputs]
        return max(found) if found and None not in found else None


def fold_batchnorms(module: torch.nn.Module, example: torch.Tensor) -> int:
    """Fold each BatchNorm that takes a convolution's output, as met running `example`, into that convolution
    (the BatchNorm becomes Identity), as the ONNX export folds it; returns how many. Frozen BatchNorm trains the
    same folded or not, and the folded convolution is what pairs with the start's node."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from ..common.layers import run_hooked

    named = dict(module.named_modules())
    made_by, pairs, hooks = {}, [], []
    for name, child in named.items():
        if isinstance(child, torch.nn.Conv2d):  # the output is kept, so its id is not reused during the run
            hooks.append(child.register_forward_hook(
                lambda m, i, out, n=name: made_by.__setitem__(id(out), (n, out))))
        elif isinstance(child, torch.nn.BatchNorm2d):
            hooks.append(child.register_forward_pre_hook(
                lambda m, i, n=name: pairs.append((made_by.get(id(i[0]), (None,))[0], n))))
    run_hooked(module, example, hooks)
    folded = [(conv, bn) for conv, bn in dict.fromkeys(pairs) if conv is not None]
    for conv, bn in folded:
        _replace(module, conv, fuse_conv_bn_eval(named[conv], named[bn]))
        _replace(module, bn, torch.nn.Identity())
    return len(folded)


def _replace(module: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, new)


def pair_start(start: StartModel, student: torch.nn.Module) -> Pairing:
    """Each start layer with its module (same path, same weight shape); what pairs with nothing, named."""
    modules = dict(student.named_modules())
    pairing, paired = Pairing(), set()
    for layer in start.layers:
        module = modules.get(layer.scope)
        weight = getattr(module, "weight", None)
        if module is None or not hasattr(module, "weight_quantizer"):
            pairing.unpaired_layers.append(f"{layer.weight} (node {layer.node}) has no quantizable module "
                                           f"{layer.scope or '?'} in the model")
        elif tuple(weight.shape) != layer.shape:
            pairing.unpaired_layers.append(f"{layer.weight} is {list(layer.shape)} but {layer.scope}.weight is "
                                           f"{list(weight.shape)}")
        elif (layer.bias is None) != (getattr(module, "bias", None) is None):
            pairing.unpaired_layers.append(f"{layer.node}: bias {'missing' if layer.bias is None else 'extra'} "
                                           f"against {layer.scope}")
        else:
            pairing.pairs.append((layer, layer.scope))
            paired.add(layer.scope)
    pairing.unpaired_modules = [f"{name}.weight has no layer in the start model" for name, m in modules.items()
                                if hasattr(m, "weight_quantizer") and m.weight_quantizer.is_enabled and name
                                not in paired]
    return pairing


def apply_start(start: StartModel, pairing: Pairing, student: torch.nn.Module, load_weights: bool) -> None:
    """Set the paired modules' quantizers to the start's scales (off where it keeps float); with
    `load_weights`, their weights and biases become the start's too. Weightless quantized modules (pooling)
    take the scale of the start's node at their path, or are switched off."""
    from onnx import numpy_helper

    initializers = {t.name: t for t in start.model.graph.initializer}
    modules = dict(student.named_modules())
    paired = set()
    for layer, name in pairing.pairs:
        module = modules[name]
        paired.add(name)
        if load_weights:
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(numpy_helper.to_array(initializers[layer.weight]).copy()))
                if layer.bias is not None:
                    module.bias.copy_(torch.from_numpy(numpy_helper.to_array(initializers[layer.bias]).copy()))
        _set(module.weight_quantizer, layer.weight_amax, module.weight.dim(), layer.axis)
        _set(module.input_quantizer, layer.input_amax, 0)
    for name, module in modules.items():
        if name not in paired and not hasattr(module, "weight_quantizer") and hasattr(module, "input_quantizer"):
            _set(module.input_quantizer, start.quantized_inputs.get(name), 0)


def _set(quantizer, amax, rank: int, axis: int = 0) -> None:
    if amax is None:
        quantizer.disable()
        return
    quantizer.enable()
    value = torch.as_tensor(np.asarray(amax, np.float32))
    shape = [1] * rank
    if rank > 1:
        shape[axis] = -1
        if getattr(quantizer, "axis", axis) not in (axis, (axis,)):  # ModelOpt's ConvTranspose default is axis 0
            quantizer.reset_amax()
            quantizer.axis = axis
    value = value.reshape(shape) if rank > 1 else value
    current = getattr(quantizer, "amax", None)
    if current is not None and current.numel() == value.numel():  # a one-channel layer's amax may be a scalar
        value = value.reshape(current.shape)
    quantizer.amax = value


def write_trained(start: StartModel, pairing: Pairing, student: torch.nn.Module, output: Path,
                  metadata: dict) -> None:
    """The start graph with the paired layers' trained weights and biases (atomic)."""
    from onnx import numpy_helper

    from ...io import atomic_path
    from ...models.onnx_model import write_metadata

    model = onnx.ModelProto.FromString(start.model.SerializeToString())
    initializers = {t.name: t for t in model.graph.initializer}
    modules = dict(student.named_modules())
    for layer, name in pairing.pairs:
        module = modules[name]
        for tensor, parameter in ((layer.weight, module.weight), (layer.bias, module.bias)):
            if tensor is not None:
                array = parameter.detach().cpu().numpy().astype(np.float32)
                initializers[tensor].CopyFrom(numpy_helper.from_array(array, tensor))
    write_metadata(model, metadata)
    with atomic_path(output) as tmp:
        onnx.save(model, str(tmp))


# What a start model's stored preprocessing must share with the model QAT trains: the start's scales were
# calibrated on images prepared that way, and its graph takes that input.
MATCHING_PROCESSING = ("task", "imgsz", "mean", "std", "channels", "resize", "crop_fraction")


def check_start_processing(path: Path, processing) -> None:
    """Refuse, before any pairing, a start made for another input or other classes than the model's."""
    from ...models.onnx_model import read_processing

    stored = read_processing(onnx.load(str(path), load_external_data=False), path)
    if stored is None:
        return  # a start without orinflow's metadata: the pairing and the fidelity check judge it
    for field_name in MATCHING_PROCESSING:
        theirs, ours = getattr(stored, field_name), getattr(processing, field_name)
        if _differs(theirs, ours):
            raise OrinflowError(f"--init-from {path} was made for another input: its stored {field_name} is "
                                f"{_shown(theirs)}, the model's is {_shown(ours)}; quantize the model's own export "
                                "(or give the model its --imgsz/--mean/--std)")
    if stored.names and processing.names and len(stored.names) != len(processing.names):
        raise OrinflowError(f"--init-from {path} has {len(stored.names)} classes, the model {len(processing.names)}: "
                            "it was made from another model")


def _differs(a, b) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) != len(b) or any(abs(float(x) - float(y)) > 1e-6 for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is None or b is None or abs(float(a) - float(b)) > 1e-6
    return a != b


def _shown(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value) \
        else str(value)
