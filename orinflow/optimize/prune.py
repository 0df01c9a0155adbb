"""Route 5: dependency-aware structured (channel) pruning with torch-pruning's DependencyGraph.

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

A FLOP target is met by choosing each group's channel count on the rounding grid (optimize/allocation.py):
first from the groups whose cuts, each measured alone on a few images, add the least distillation loss per
FLOP saved, or (without data) as close to one share for all as the rounding allows. Pruning then runs in
`steps` steps with fine-tuning between them (optimize/qat.py's trainer: distillation from the unpruned
model and/or the family's label loss). Before fine-tuning, each step's changed layers are refitted by least
squares on training images (optimize/reconstruct.py), or without data, BatchNorm is re-estimated.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..errors import OrinflowError
from ..progress import progress
from .allocation import Group, LayerShape, allocate, lowest_count, next_count
from .reconstruct import pruned_and_refitted

IMPORTANCES = ("l1", "l2", "bn", "taylor", "lamp")
PLANS = ("measured", "even")  # how the FLOPs to cut are shared among the groups (optimize/allocation.py)
PROBE_IMAGES = 8  # images of --yaml that each cut of the measured plan is scored on
MAX_LEVELS = 8  # counts measured per group, spread over its grid; between them the noise is interpolated
DEFAULT_ROUND_TO = 32  # TensorRT's INT8 convolutions read channels in vectors of 32 (NC/32HW32)
DEFAULT_MIN_SHARE = 0.25
PRUNABLE = (nn.Conv2d, nn.Linear)
OUTPUT_LAYER = "output layer"
# Ops that act on every channel alone, so a channel index means the same thing before and after
# them. Any other op inside a group (matmul, permute, pad, split, mean over channels, an op
# torch-pruning does not know) protects that group.
CHANNEL_WISE_OPS = {"Add", "Sub", "Mul", "Div", "Neg", "Sigmoid", "Silu", "Relu", "Relu6", "Hardswish",
                    "Hardsigmoid", "LeakyRelu", "Gelu", "Tanh", "Clamp", "Hardtanh", "Elu", "Mish", "Softplus",
                    "MaxPool2DWithIndices", "AvgPool2D", "AdaptiveAvgPool2D", "AdaptiveMaxPool2D",
                    "UpsampleNearest2D", "UpsampleBilinear2D", "Clone", "ToCopy", "Exp", "Pow", "Sqrt", "Abs",
                    "Threshold", "NativeBatchNorm", "CudnnBatchNorm", "NativeDropout"}


@dataclass
class PruneConfig:
    flops: float | None = 0.7  # target share of the original conv/linear FLOPs
    ratio: float | None = None  # or: prune this share of every prunable layer's channels
    importance: str = "l1"
    round_to: int = DEFAULT_ROUND_TO
    steps: int = 1
    min_share: float = DEFAULT_MIN_SHARE
    reconstruct: bool = True  # refit the layers that lost inputs by least squares (optimize/reconstruct.py)
    plan: str = "measured"  # or even (measured needs data: without it the cut is even)

    def validate(self) -> None:
        if self.importance not in IMPORTANCES:
            raise OrinflowError(f"unknown --importance {self.importance!r}; choose one of {', '.join(IMPORTANCES)}")
        if self.plan not in PLANS:
            raise OrinflowError(f"unknown --plan {self.plan!r}; choose one of {', '.join(PLANS)}")
        if (self.flops is None) == (self.ratio is None):
            raise OrinflowError("give either --flops (target share of FLOPs) or --ratio (share of channels to prune)")
        if self.flops is not None and not 0 < self.flops < 1:
            raise OrinflowError(f"--flops is the share of the original FLOPs to keep: it must be in (0, 1), got "
                                f"{self.flops}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise OrinflowError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.round_to < 1 or self.steps < 1:
            raise OrinflowError(f"--round-to and --steps must be >= 1 (got {self.round_to}, {self.steps})")
        if not 0 < self.min_share <= 1:
            raise OrinflowError(f"--min-share must be in (0, 1], got {self.min_share}")


# ---- measuring
def layer_macs(module: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d/Linear in one inference forward pass, by module name."""
    names = {m: n for n, m in module.named_modules()}
    macs: dict[str, int] = {}

    def count(layer, _inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(layer, nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            per_output = layer.in_features
        macs[names[layer]] = macs.get(names[layer], 0) + out.numel() // out.shape[0] * per_output

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()
    return macs


def out_width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def channels(module: nn.Module) -> dict[str, int]:
    return {n: out_width(m) for n, m in module.named_modules() if isinstance(m, PRUNABLE)}


def summary(module: nn.Module, example: torch.Tensor) -> dict:
    macs = layer_macs(module, example)
    return {"params": sum(p.numel() for p in module.parameters()), "macs": sum(macs.values()), "layer_macs": macs,
            "channels": channels(module)}


# ---- what must not be pruned
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
    consumed: dict[int, torch.Tensor] = {}

    def note_inputs(_layer, inputs) -> None:
        consumed.update((id(t), t) for t in flat_tensors(list(inputs)))

    hooks = [m.register_forward_pre_hook(note_inputs) for m in module.modules()]
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


# ---- pruning
def _importance(name: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "bn": lambda: tp.importance.BNScaleImportance(),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "lamp": lambda: tp.importance.LAMPImportance(p=2)}[name]()


def make_pruner(module: nn.Module, example: torch.Tensor, config: PruneConfig, protected: dict[nn.Module, str],
                steps: int, keep: dict[str, int] | None = None):
    """A pruner that takes every group to the channels `keep` gives its layers (by name, from plan_channels) or,
    without it, prunes config.ratio of every group; in `steps` equal steps."""
    import torch_pruning as tp

    class RoundedPruner(tp.pruner.BasePruner):
        """Rounds the channels a layer keeps to the nearest multiple of round_to, never below one multiple
        (torch-pruning rounds down, which takes 64 channels to 32 at any ratio, and can reach zero)."""

        def _round_to(self, n_pruned, current_channels, round_to):
            keep = round((current_channels - n_pruned) / round_to) * round_to
            keep = min(max(keep, round_to), current_channels)
            return current_channels - keep

    by_name = dict(module.named_modules())
    ratios = {by_name[name]: 1 - count / out_width(by_name[name]) for name, count in (keep or {}).items()}
    with warnings.catch_warnings(), traceable(module, example) as traced:
        warnings.simplefilter("ignore")
        return RoundedPruner(traced, example, importance=_importance(config.importance),
                             pruning_ratio=0.0 if keep is not None else config.ratio, pruning_ratio_dict=ratios,
                             max_pruning_ratio=1 - config.min_share, iterative_steps=steps,
                             ignored_layers=list(protected), round_to=config.round_to,
                             forward_fn=traced_forward({m for m, why in protected.items() if why == OUTPUT_LAYER}),
                             root_module_types=list(PRUNABLE))


def prune_step(pruner, module: nn.Module, gradients=None) -> None:
    """One of the pruner's steps; `gradients` fills .grad first (Taylor importance needs them)."""
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        if gradients is not None:
            gradients(module)
        pruner.step()
    module.zero_grad(set_to_none=True)


def pruned_copy(module: nn.Module, example: torch.Tensor, config: PruneConfig, protected_names: dict[str, str],
                keep: dict[str, int] | None = None) -> nn.Module:
    """A copy pruned as make_pruner would, in one step with L1 importance (channel counts do not depend on
    importance)."""
    trial = copy.deepcopy(module)
    by_name = dict(trial.named_modules())
    pruner = make_pruner(trial, example, replace(config, importance="l1"),
                         {by_name[n]: why for n, why in protected_names.items()}, 1, keep)
    with same_gradient_flags(trial):
        prune_step(pruner, trial)
    return trial


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


def grid_counts(channels: int, round_to: int, min_share: float) -> list[int]:
    """The counts a group may be cut to, widest first: multiples of round_to down to its floor."""
    counts, floor = [], lowest_count(channels, round_to, min_share)
    after = next_count(channels, round_to)
    while after >= floor and after > 0:
        counts.append(after)
        after = next_count(after, round_to)
    return counts


@dataclass
class CutProbe:
    """What the measured plan reads each cut on: preprocessed images of --yaml, scored by the trainer's
    distillation loss against the unpruned model (optimize/qat.py: confidence-weighted box L1 and score BCE on
    a detector's decoded outputs, KL on a classifier's logits)."""
    images: torch.Tensor
    head: str | None  # the detector's output format; None for a classifier
    imgsz: int

    def reference(self, module: nn.Module) -> torch.Tensor:
        """The model's raw output on the probe images (what the distillation loss compares)."""
        from ..models.base import RawOutput

        with torch.no_grad():
            return RawOutput(module).eval()(self.images)

    def loss(self, module: nn.Module, reference: torch.Tensor) -> float:
        from .qat import QATConfig, distillation_loss

        return float(distillation_loss(self.reference(module), reference, self.head, self.imgsz,
                                       QATConfig.temperature))


def cut_probe(adapter, dataset, config: PruneConfig, say=print) -> CutProbe | None:
    """The measured plan's probe, or None where the cut is even: that plan, --ratio, no data, or a head
    the distillation loss does not read (NMS-free end-to-end heads)."""
    from ..models.processing import HEAD_END2END

    if config.plan != "measured" or config.ratio is not None:
        return None
    if dataset is None:
        say("no data to measure the cuts on (--yaml): the channels are cut evenly")
        return None
    head = adapter.processing.head if adapter.task == "detect" else None
    if head == HEAD_END2END:
        say("the end-to-end (NMS-free) head has no distillation measure yet: the channels are cut evenly")
        return None
    images = torch.cat(list(_images(adapter, dataset, PROBE_IMAGES)))
    return CutProbe(images, head, adapter.processing.imgsz[0])


def measured_noise(module: nn.Module, found: tuple, groups: list[Group], config: PruneConfig,
                   probe: CutProbe) -> list[dict[int, float]]:
    """Per group: how much the distillation loss against the unpruned model grows on the probe's images with
    only that group cut, to each of up to MAX_LEVELS counts of its grid (0 at full width).

    A cut is simulated, not made: the channels the L1 rank would remove are zeroed in every layer that reads
    them, which gives the outputs of the pruned model (before any refit) without building a graph per trial.
    The loss on the decoded outputs, not the SQNR of the raw head outputs, is read: on the demo detector a
    plan with more head SQNR scored 0.37 mAP50-95 against the even plan's 0.89, this one 0.98."""
    graph, coupled_groups = found
    reference = probe.reference(module)
    base = probe.loss(module, reference)  # not 0: the score BCE of soft targets is their entropy
    rank = _importance("l1")
    noise = []
    for group, coupled in progress(list(zip(groups, coupled_groups)), "measuring each group's cuts"):
        counts = grid_counts(group.channels, config.round_to, config.min_share)
        if len(counts) > MAX_LEVELS:  # spread over the grid, the floor always among them
            counts = [counts[round(i * (len(counts) - 1) / (MAX_LEVELS - 1))] for i in range(MAX_LEVELS)]
        scores = rank(coupled)
        order = (torch.argsort(scores) if scores is not None else torch.arange(group.channels)).tolist()
        readers = [(item.dep.target.module, list(item.idxs), item.root_idxs) for item in coupled
                   if graph.is_in_channel_pruning_fn(item.dep.handler) and _mixes_inputs(item.dep.target.module)]
        table = {group.channels: 0.0}
        for count in counts:
            with _inputs_zeroed(readers, set(order[:group.channels - count])):
                table[count] = max(probe.loss(module, reference) - base, 0.0)
        noise.append(table)
    return noise


def _mixes_inputs(layer: nn.Module) -> bool:
    """A Conv/Linear that sums over its input channels (a depthwise conv passes them on to later readers)."""
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


@contextlib.contextmanager
def _inputs_zeroed(readers: list, removed: set[int]):
    """Every reader's input columns of the `removed` root channels set to zero, then restored."""
    saved = []
    with torch.no_grad():
        for layer, idxs, roots in readers:
            columns = [index for index, root in zip(idxs, roots) if root in removed]
            saved.append((layer, columns, layer.weight[:, columns].clone()))
            layer.weight[:, columns] = 0
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, columns, weights in saved:
                layer.weight[:, columns] = weights


def plan_channels(module: nn.Module, example: torch.Tensor, config: PruneConfig, protected: dict[nn.Module, str],
                  probe: CutProbe | None = None, say=print) -> tuple[dict[str, int] | None, dict | None]:
    """Channels every pruned layer keeps to meet config.flops (optimize/allocation.py), checked on a pruned
    copy, and the plan's record; None, None with config.ratio (every group loses that share). `probe`: what
    the measured plan reads its cuts on (cut_probe; without it, the cut is even)."""
    if config.ratio is not None:
        return None, None
    names = {m: n for n, m in module.named_modules()}
    protected_names = {names[m]: why for m, why in protected.items()}
    shapes = layer_shapes(module, example)
    found = graph_groups(module, example, protected)
    groups = prunable_groups(module, example, protected, found)
    base = sum(shape.macs for shape in shapes.values())
    plan = "measured" if probe is not None else "even"  # cut_probe gives a probe only to a plan it can measure
    noise = measured_noise(module, found, groups, config, probe) if probe is not None else None
    goal = config.flops
    for _ in range(4):  # the estimate misses ops it does not model (a flatten's features): aim lower and retry
        counts, estimated = allocate(shapes, groups, goal * base, config.round_to, config.min_share, noise)
        keep = {name: count for group, count in zip(groups, counts) if count < group.channels
                for name in group.writers}
        reached = sum(layer_macs(pruned_copy(module, example, config, protected_names, keep), example).values()) / base
        if estimated > goal * base:
            raise OrinflowError(f"--flops {config.flops} is out of reach: with every layer keeping "
                                f"{config.min_share:.0%} of its channels (rounded to {config.round_to}), pruning gets to "
                                f"{reached:.3f} of the original FLOPs")
        if reached <= config.flops + 1e-9:
            break
        goal *= config.flops / reached
    else:
        raise OrinflowError(f"--flops {config.flops}: the pruned copies stay at {reached:.3f} of the original FLOPs")
    pruned = sum(count < group.channels for group, count in zip(groups, counts))
    say(f"{pruned} of {len(groups)} prunable groups cut to multiples of {config.round_to} ({plan} plan"
        f"{f', each cut measured on {len(probe.images)} images' if noise else ''}); {reached:.3f} of the original "
        "FLOPs")
    return keep, plan_record(plan, groups, counts, noise, len(probe.images) if noise else 0)


def plan_record(plan: str, groups: list[Group], counts: list[int], noise: list[dict[int, float]] | None,
                probe_images: int) -> dict:
    """Each group's layers, width and kept count; for the measured plan, the distillation loss each of its
    measured cuts adds."""
    entries = []
    for index, (group, count) in enumerate(zip(groups, counts)):
        entry = {"layers": list(group.writers), "channels": group.channels, "kept": count}
        if noise:
            entry["loss_increase"] = {cut: float(f"{added:.4g}") for cut, added in noise[index].items()
                                      if cut < group.channels}
        entries.append(entry)
    return {"plan": plan, "probe_images": probe_images, "groups": entries}


def layer_table(before: dict, after: dict) -> list[dict]:
    """Per prunable layer: channels and MACs before and after."""
    rows = []
    for name, macs in before["layer_macs"].items():
        rows.append({"layer": name, "channels_before": before["channels"][name],
                     "channels_after": after["channels"].get(name), "macs_before": macs,
                     "macs_after": after["layer_macs"].get(name)})
    return rows


def check_prunable(module: nn.Module, protected: dict[nn.Module, str]) -> None:
    layers = [m for m in module.modules() if isinstance(m, PRUNABLE)]
    if layers and all(m in protected for m in layers):
        kinds = sorted(set(protected.values()))
        raise OrinflowError(f"nothing to prune: every one of the {len(layers)} conv/linear layers is protected "
                            f"({'; '.join(kinds)})")


# ---- the route
def run_prune(adapter, config: PruneConfig, output, dataset=None, train_config=None, selection=None,
              max_drop: float | None = None, dry_run: bool = False, say=print) -> dict:
    """Prune `adapter` (loaded unfused) to config's target in config.steps steps, fine-tuning after each
    step on `dataset` with `train_config` (optimize/qat.py's trainer; epochs 0 skips), and write an
    ordinary checkpoint of the same family at `output`.

    `selection`: a labelled dataset scored after every step; the first step that drops more than
    `max_drop` (mAP50-95 or top-1, absolute) is undone and pruning stops there.
    """
    import time

    from ..models import ModelAdapter, prunable_copy, save_checkpoint
    from ..models.base import RawOutput

    config.validate()
    started = time.perf_counter()
    module = prunable_copy(adapter)
    full = torch.zeros(1, 3, *adapter.processing.imgsz)
    example = torch.zeros(1, 3, *trace_size(adapter))
    protected = protected_layers(module, example)
    check_prunable(module, protected)
    names = {m: n for n, m in module.named_modules()}
    protected_names = {names[m]: why for m, why in protected.items()}
    say(f"{len(protected)} layer(s) protected: " + ", ".join(f"{n} ({why})" for n, why in
                                                           list(protected_names.items())[:6])
        + (" ..." if len(protected) > 6 else ""))
    probe = cut_probe(adapter, dataset, config, say)
    keep, plan = plan_channels(module, example, config, protected, probe, say)
    before = summary(module, full)
    record = {"command": "prune", "route": "prune", "source": adapter.source, "family": adapter.family,
              "config": asdict(config), "protected": protected_names, "before": _totals(before), "plan": plan}
    if dry_run:
        after = summary(pruned_copy(module, example, config, protected_names, keep), full)
        return dict(record, dry_run=True, after=_totals(after), layers=layer_table(before, after))
    teacher = RawOutput(prunable_copy(adapter)).eval()
    pruner = make_pruner(module, example, config, protected, config.steps, keep)
    pruned_adapter = ModelAdapter(adapter.family, adapter.source, module, adapter.processing, adapter.extra)
    gradients = taylor_gradients(pruned_adapter, teacher, dataset, train_config) \
        if config.importance == "taylor" else None
    baseline = _score(adapter, selection) if selection is not None else None
    undoable = selection is not None and max_drop is not None
    steps, kept = [], copy.deepcopy(module) if undoable else None
    refit_batches = list(_images(adapter, dataset)) if config.reconstruct and dataset is not None else None
    for step in range(config.steps):
        entry = {"step": step + 1}
        with same_gradient_flags(module):
            if refit_batches:
                entry["refitted_layers"] = pruned_and_refitted(pruner, module, refit_batches, gradients, say)
            else:
                prune_step(pruner, module, gradients)
                if dataset is not None:
                    recalibrate_batchnorm(pruned_adapter, module, dataset)
            entry.update(_totals(summary(module, full)))
            if train_config is not None and train_config.epochs:
                from .qat import train

                entry["losses"] = train(pruned_adapter, RawOutput(module), teacher, dataset, train_config, say)
        if selection is not None:
            entry["selection_score"] = _score(pruned_adapter, selection)
            drop = baseline - entry["selection_score"]
            say(f"step {step + 1}/{config.steps}: {entry['macs'] / before['macs']:.3f} of the FLOPs, selection "
                f"score {entry['selection_score']:.4f} (drop {drop:.4f})")
            if undoable and drop > max_drop:
                if step == 0:
                    raise OrinflowError(f"the first pruning step already drops the selection score by {drop:.4f} "
                                        f"(> --max-drop {max_drop}); nothing written: use more --steps, more "
                                        "--epochs or a milder --flops")
                entry["undone"] = True
                steps.append(entry)
                module = kept
                say(f"stopped: the drop {drop:.4f} exceeds --max-drop {max_drop}; the model of step {step} is kept")
                break
        steps.append(entry)
        kept = copy.deepcopy(module) if undoable else None
    after = summary(module, full)
    record.update(model=str(output), after=_totals(after), steps=steps, layers=layer_table(before, after),
                  flops_share=after["macs"] / before["macs"],
                  selection={"data": selection.name, "before": baseline} if selection is not None else None)
    save_checkpoint(adapter, module, output, {"source": adapter.source, "ratio": config.ratio,
                                              "flops_share": record["flops_share"]})
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


BN_IMAGES = 64


def recalibrate_batchnorm(adapter, module: nn.Module, dataset, images: int = BN_IMAGES, batch: int = 8) -> None:
    """Re-estimate every BatchNorm's statistics on `images` images: a layer that lost input channels sees other
    pre-activations than its stored statistics describe (fine-tuning keeps BatchNorm frozen). Measured on
    yolov5n with 5% of its channels pruned by L1, 64 coco-tune images: mAP50-95 0.035 -> 0.159 (0.324 before
    pruning). Folding the removed channels' mean into the consumers' biases first was tried: 0.035 -> 0.095
    alone, 0.157 with this re-estimation, so it is not done."""
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return
    saved = [(m, m.momentum) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()
    try:
        with torch.no_grad():
            for batch_images in _images(adapter, dataset, images, batch):
                module(batch_images)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        module.eval()


def _images(adapter, dataset, images: int = BN_IMAGES, batch: int = 8):
    """The first `images` images of `dataset`, preprocessed, in batches (statistics, not training)."""
    from .qat import _batches

    for batch_images, _, _ in _batches(dataset, adapter, list(range(min(images, len(dataset)))), batch):
        yield batch_images


def trace_size(adapter) -> tuple[int, int]:
    """A small input for tracing and the channel plan: channel counts do not depend on it."""
    height, width = adapter.processing.imgsz
    if adapter.task != "detect":
        return height, width
    return min(height, 128), min(width, 128)


def _totals(found: dict) -> dict:
    return {"params": found["params"], "macs": found["macs"], "gflops": round(2 * found["macs"] / 1e9, 3)}


def _score(adapter, dataset) -> float:
    """mAP50-95 for detectors, top-1 for classifiers, of the PyTorch model on `dataset`."""
    from ..evaluate import EvalOptions, evaluate_model

    metrics = evaluate_model(adapter, dataset, options=EvalOptions(measure_latency=False, batch=8))["metrics"]
    return float(metrics["mAP50-95"] if adapter.task == "detect" else metrics["top1"])


def taylor_gradients(adapter, teacher, dataset, train_config):
    """Fills .grad with the family's label loss on one batch (Taylor importance weighs weights by them)."""
    from .qat import Objective, QATConfig, _batches

    if dataset is None or dataset.task is None:
        raise OrinflowError("--importance taylor needs labelled data (--yaml) for its gradients")
    config = QATConfig(batch=train_config.batch if train_config else 8, distill=False, labels=True)

    def gradients(module: nn.Module) -> None:
        from ..models.base import RawOutput

        objective = Objective(adapter, RawOutput(module), teacher, config)
        images, labels, metas = next(_batches(dataset, adapter, list(range(min(len(dataset), config.batch))),
                                              config.batch))
        module.zero_grad(set_to_none=True)
        with trainable(module):
            objective(images, labels, metas).backward()

    return gradients


def onnx_side_by_side(original, pruned, runs: int) -> dict:
    """Both models (loaded as inference loads them) exported to ONNX: sizes, and ONNX Runtime CPU batch-1
    latency timed in turn."""
    import tempfile
    from pathlib import Path

    from ..evaluate.latency import cpu_name, interleaved_latency
    from ..export import export_onnx
    from ..runtime import OrtRunner

    with tempfile.TemporaryDirectory() as folder:
        paths = {name: export_onnx(model, Path(folder) / f"{name}.onnx").path
                 for name, model in (("original", original), ("pruned", pruned))}
        latency = interleaved_latency({name: OrtRunner(path) for name, path in paths.items()},
                                      (1, 3, *original.processing.imgsz), rounds=runs)
        sizes = {name: path.stat().st_size for name, path in paths.items()}
    return {"size_bytes": sizes, "latency_ms": latency, "cpu": cpu_name(),
            "latency_ratio": latency["pruned"]["median"] / latency["original"]["median"]}
