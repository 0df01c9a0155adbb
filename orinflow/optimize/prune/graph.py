"""Route 5, the dependency graph: which channels must go together, and which layers must keep theirs.

The graph couples every layer whose channels must go together (residual adds, concats,
depthwise convs). orinflow decides from the traced graph, never from layer names, what must
not be pruned:
- the output layers: the first trainable Conv/Linear met walking back from every model output
  (a detector's box/class/objectness convs, a classifier's last layer);
- frozen layers (no gradient, such as YOLO's DFL projection), which are walked through;
- every group whose channels pass an op torch-pruning does not map channel by channel
  (matmul, transpose, pad, split, ...): torch-pruning treats unknown ops as element-wise,
  which would prune attention or padded shortcuts wrongly without an error.
Channel counts are rounded to `round_to` (TensorRT's INT8 kernels use 32-channel vectors;
docs/prune.md), and every layer keeps at least `min_share` of its channels.
The channel plan (plan.py) and the pruning steps (steps.py) read the groups found here.
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from ...errors import OrinflowError
from ..common.layers import PRUNABLE, layer_macs, out_width, channels
from ..common.tracing import flat_tensors, frozen_layers, output_layers, traceable
from .allocation import Group, LayerShape

OUTPUT_LAYER = "output layer"


# Ops that act on every channel alone, so a channel index means the same thing before and after
# them. Any other op inside a group (matmul, permute, pad, split, mean over channels, an op
# torch-pruning does not know) protects that group.
CHANNEL_WISE_OPS = {"Add", "Sub", "Mul", "Div", "Neg", "Sigmoid", "Silu", "Relu", "Relu6", "Hardswish",
                    "Hardsigmoid", "LeakyRelu", "Gelu", "Tanh", "Clamp", "Hardtanh", "Elu", "Mish", "Softplus",
                    "MaxPool2DWithIndices", "AvgPool2D", "AdaptiveAvgPool2D", "AdaptiveMaxPool2D",
                    "UpsampleNearest2D", "UpsampleBilinear2D", "Clone", "ToCopy", "Exp", "Pow", "Sqrt", "Abs",
                    "Threshold", "NativeBatchNorm", "CudnnBatchNorm", "NativeDropout"}


def summary(module: nn.Module, example: torch.Tensor) -> dict:
    macs = layer_macs(module, example)
    return {"params": sum(p.numel() for p in module.parameters()), "macs": sum(macs.values()), "layer_macs": macs,
            "channels": channels(module)}


@contextlib.contextmanager
def same_gradient_flags(module: nn.Module):
    """Each parameter's requires_grad as it was on entry, by name. torch-pruning gives a pruned layer new
    parameters that require gradients and the trainer turns every flag on, while frozen_layers reads the
    flags: a checkpoint that stores them all off would, once pruned, read every layer left whole as frozen."""
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    try:
        yield module
    finally:
        for name, p in module.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))


def _op_name(node) -> str | None:
    """The autograd name of a torch-pruning op node, or None for a module/parameter node."""
    from torch_pruning import ops

    op = node.module
    if isinstance(op, ops._ElementWiseOp):
        return str(op._grad_fn)
    if isinstance(op, (ops._SplitOp, ops._UnbindOp)):
        return type(op).__name__.strip("_")
    return None


def _channel_wise(name: str) -> bool:
    return name.removesuffix("0").removesuffix("1").removesuffix("Backward") in CHANNEL_WISE_OPS


def _node_channel_wise(node) -> bool:
    """Whether channel i before this graph node is channel i after it: module nodes are mapped by
    torch-pruning; an op that reads no activation (a Linear's weight.t()) moves no channel; a mean keeps
    channels when it does not reduce over dimension 1 (global average pooling)."""
    name = _op_name(node)
    if name is None or not node.inputs or _channel_wise(name):
        return True
    grad_fn = getattr(node, "grad_fn", None)
    if name.startswith("MeanBackward") and hasattr(grad_fn, "_saved_dim"):
        rank = len(getattr(grad_fn, "_saved_self_sym_sizes", ())) or 4
        return all(d % rank != 1 for d in grad_fn._saved_dim)
    return False


def protected_layers(module: nn.Module, example: torch.Tensor) -> dict[nn.Module, str]:
    """Every Conv/Linear whose output channels stay, with the reason (from the traced graph)."""
    outputs = output_layers(module, example)
    reasons = {m: OUTPUT_LAYER for m in outputs}
    reasons.update({m: "frozen" for m in frozen_layers(module)})
    graph = build_graph(module, example, outputs)
    for group in graph.get_all_groups(ignored_layers=list(reasons), root_module_types=PRUNABLE):
        odd = sorted({_op_name(node) for dep, _ in group for node in (dep.source, dep.target)
                      if not _node_channel_wise(node)})
        if odd:
            for dep, _ in group:
                target = dep.target.module
                if isinstance(target, PRUNABLE) and graph.is_out_channel_pruning_fn(dep.handler):
                    reasons.setdefault(target, f"coupled through {', '.join(odd)}")
    return reasons


def build_graph(module: nn.Module, example: torch.Tensor, stops: set[nn.Module]):
    import torch_pruning as tp

    with warnings.catch_warnings(), traceable(module, example) as traced:
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(traced, example, forward_fn=traced_forward(stops),
                                                     verbose=False)


def traced_forward(stops: set[nn.Module]):
    """A forward for tracing that returns the outputs of the output layers, not the model's: what a head
    does after them (reshapes, slices, decode) is no channel dependency, and torch-pruning's index
    mapping through it grows without bound on YOLO heads."""
    def forward(model: nn.Module, example: torch.Tensor) -> list[torch.Tensor]:
        captured: list[torch.Tensor] = []
        def capture(_layer, _inputs, output) -> None:
            captured.append(output)

        hooks = [m.register_forward_hook(capture) for m in stops]
        try:
            outputs = model(example)
        finally:
            for hook in hooks:
                hook.remove()
        return captured or flat_tensors(outputs)
    return forward


def graph_groups(module: nn.Module, example: torch.Tensor, protected: dict[nn.Module, str]) -> tuple:
    """The dependency graph and its groups: every set of coupled channels the pruner may cut."""
    graph = build_graph(module, example, {m for m, why in protected.items() if why == OUTPUT_LAYER})
    return graph, list(graph.get_all_groups(ignored_layers=list(protected), root_module_types=PRUNABLE))


def prunable_groups(module: nn.Module, example: torch.Tensor, protected: dict[nn.Module, str],
                    found: tuple | None = None) -> list[Group]:
    """Every group the pruner may cut, with the layers whose outputs and inputs it narrows (`found`: what
    graph_groups returned for this module)."""
    graph, coupled_groups = found or graph_groups(module, example, protected)
    names = {m: n for n, m in module.named_modules()}
    groups = []
    for coupled in coupled_groups:
        group = Group(out_width(coupled[0].dep.target.module))
        for dep, indices in coupled:  # the indices of all the root's channels, as each layer sees them
            layer = dep.target.module
            if not isinstance(layer, PRUNABLE):
                continue
            side = group.writers if graph.is_out_channel_pruning_fn(dep.handler) else group.readers
            side[names[layer]] = side.get(names[layer], 0.0) + len(indices) / group.channels
        groups.append(group)
    return groups


def layer_shapes(module: nn.Module, example: torch.Tensor) -> dict[str, LayerShape]:
    layers = dict(module.named_modules())
    shapes = {}
    for name, macs in layer_macs(module, example).items():
        layer = layers[name]
        conv = isinstance(layer, nn.Conv2d)
        shapes[name] = LayerShape(macs, out_width(layer), layer.in_channels if conv else layer.in_features,
                                  depthwise=conv and layer.groups > 1)
    return shapes


def check_prunable(module: nn.Module, protected: dict[nn.Module, str]) -> None:
    layers = [m for m in module.modules() if isinstance(m, PRUNABLE)]
    if layers and all(m in protected for m in layers):
        kinds = sorted(set(protected.values()))
        raise OrinflowError(f"nothing to prune: every one of the {len(layers)} conv/linear layers is protected "
                            f"({'; '.join(kinds)})")


def layer_table(before: dict, after: dict) -> list[dict]:
    """Per prunable layer: channels and MACs before and after."""
    rows = []
    for name, macs in before["layer_macs"].items():
        rows.append({"layer": name, "channels_before": before["channels"][name],
                     "channels_after": after["channels"].get(name), "macs_before": macs,
                     "macs_after": after["layer_macs"].get(name)})
    return rows
