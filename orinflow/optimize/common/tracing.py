"""What a traced forward pass tells about a model: its output layers (the first trainable Conv/Linear on
every path back from an output), frozen layers, attention blocks, and a tracing mode that leaves
BatchNorm statistics alone. Pruning protects the output layers; 2:4 selection reads their outputs."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ...errors import OrinflowError
from .layers import PRUNABLE


def tracing_mode(module: nn.Module) -> nn.Module:
    """Training-mode forward (every head branch runs: end-to-end heads keep a one-to-many branch that
    inference skips) with BatchNorm statistics left alone."""
    module.train()
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or isinstance(m, nn.Dropout):
            m.eval()
    return module


def flat_tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in flat_tensors(item)]
    return []


def output_layers(module: nn.Module, example: torch.Tensor) -> set[nn.Module]:
    """The first trainable Conv/Linear on every path back from every output (frozen layers are walked through)."""
    frozen = frozen_layers(module)
    weights = {m.weight: m for m in module.modules() if isinstance(m, PRUNABLE) and m not in frozen}
    found: set[nn.Module] = set()
    # Tensors some module reads (a head that also returns its input features). They are held, not only
    # their ids: a temporary freed mid-forward hands its id on, and the model's output could inherit it.
    # An input a module returns as its output (an in-place activation) is not read: it is passed on.
    consumed: dict[int, torch.Tensor] = {}

    def note_inputs(_layer, inputs, output) -> None:
        passed = {id(t) for t in flat_tensors(output)}
        consumed.update((id(t), t) for t in flat_tensors(list(inputs)) if id(t) not in passed)

    hooks = [m.register_forward_hook(note_inputs) for m in module.modules()]
    try:
        with traceable(module, example) as traced:
            outputs = [t for t in flat_tensors(traced(example)) if id(t) not in consumed]
    finally:
        for hook in hooks:
            hook.remove()
        consumed.clear()
    if not outputs:  # nothing could be protected, and the output layer would lose channels
        raise OrinflowError("the model's forward returned no tensor that is not also a layer's input: "
                            "its output layers cannot be found")
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nexts = [n for n, _ in node.next_functions if n is not None]
        layer = next((weights[v] for v in map(_leaf_variable, nexts) if v is not None and v in weights), None)
        if layer is not None:
            found.add(layer)
        else:
            stack.extend(nexts)
    return found


def _leaf_variable(node):
    """The parameter behind an AccumulateGrad node, also through a transpose (Linear's weight.t())."""
    if hasattr(node, "variable"):
        return node.variable
    if type(node).__name__ in ("TBackward0", "PermuteBackward0", "TransposeBackward0"):
        inner = [n for n, _ in node.next_functions if n is not None]
        return inner[0].variable if len(inner) == 1 and hasattr(inner[0], "variable") else None
    return None


def frozen_layers(module: nn.Module) -> set[nn.Module]:
    """Layers kept fixed while the rest trains (YOLO's DFL projection). Checkpoints often store every
    weight with requires_grad off: then nothing is frozen on purpose."""
    layers = [m for m in module.modules() if isinstance(m, PRUNABLE)]
    fixed = {m for m in layers if not m.weight.requires_grad}
    return fixed if len(fixed) < len(layers) else set()


MATMULS = {torch.matmul, torch.bmm, torch.mm, torch.einsum, torch.Tensor.matmul, torch.Tensor.__matmul__,
           torch.Tensor.bmm, torch.nn.functional.scaled_dot_product_attention}


def attention_modules(module: nn.Module, example: torch.Tensor) -> set[nn.Module]:
    """Modules whose own forward multiplies two activations (attention): found by running the model."""
    from torch.overrides import TorchFunctionMode

    active: list[nn.Module] = []
    found: set[nn.Module] = set()

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if func in MATMULS and active and len(tensors) >= 2 and not any(isinstance(t, nn.Parameter)
                                                                              for t in tensors):
                found.add(active[-1])
            return func(*args, **(kwargs or {}))

    def enter(layer, _inputs) -> None:
        active.append(layer)

    def leave(_layer, _inputs, _output) -> None:  # a hook that returns something replaces the output
        active.pop()

    hooks = [m.register_forward_pre_hook(enter) for m in module.modules()]
    hooks += [m.register_forward_hook(leave) for m in module.modules()]
    try:
        with torch.no_grad(), Watch():
            module.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def _opaque(_module, inputs, output):
    """Tracing stand-in for an attention block: its output, cut from its insides, tied to its input by a
    reduction over channels. torch-pruning's index mapping through attention grows without bound;
    the reduction marks every group that meets the block as protected (CHANNEL_WISE_OPS)."""
    source = next(t for t in inputs if isinstance(t, torch.Tensor))
    return output.detach() + source.mean(dim=tuple(range(1, source.ndim)), keepdim=True).reshape(
        (-1,) + (1,) * (output.ndim - 1)) * 0


@contextlib.contextmanager
def traceable(module: nn.Module, example: torch.Tensor):
    """Gradients on for every parameter but the frozen layers' (tracing follows autograd), attention blocks
    made opaque, all restored after."""
    opaque = attention_modules(module, example)
    hooks = [m.register_forward_hook(_opaque) for m in opaque]
    try:
        with trainable(module):
            yield tracing_mode(module)
    finally:
        for hook in hooks:
            hook.remove()
        module.eval()


@contextlib.contextmanager
def trainable(module: nn.Module):
    """Gradients on for every parameter but the frozen layers' (checkpoints often store requires_grad off),
    restored after."""
    frozen = {id(p) for m in frozen_layers(module) for p in m.parameters()}
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) not in frozen)
    try:
        with torch.enable_grad():
            yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
