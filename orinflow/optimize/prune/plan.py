"""The channel plan: each group's channel count on the rounding grid that meets --flops (allocation.py),
from the groups whose cuts, each measured alone on a few images, add the least distillation loss per FLOP
saved (the measured plan), or as even a share for all as the rounding allows."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import OrinflowError
from ...progress import progress
from ..common.layers import layer_macs
from ..train.loop import first_images
from .allocation import Group, allocate, lowest_count, next_count
from .graph import graph_groups, layer_shapes, prunable_groups
from .pruner import PruneConfig, importance, pruned_copy


PROBE_IMAGES = 8  # images of --yaml that each cut of the measured plan is scored on

MAX_LEVELS = 8  # counts measured per group, spread over its grid; between them the noise is interpolated


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
    distillation loss against the unpruned model (optimize/train/objective.py: confidence-weighted box L1 and score BCE on
    a detector's decoded outputs, KL on a classifier's logits)."""
    images: torch.Tensor
    head: str | None  # the detector's output format; None for a classifier
    imgsz: int

    def reference(self, module: nn.Module) -> torch.Tensor:
        """The model's raw output on the probe images (what the distillation loss compares)."""
        from ...models.base import RawOutput

        with torch.no_grad():
            return RawOutput(module).eval()(self.images)

    def loss(self, module: nn.Module, reference: torch.Tensor) -> float:
        from ..train.config import QATConfig
        from ..train.objective import distillation_loss

        return float(distillation_loss(self.reference(module), reference, self.head, self.imgsz,
                                       QATConfig.temperature))


def cut_probe(adapter, dataset, config: PruneConfig, say=print) -> CutProbe | None:
    """The measured plan's probe, or None where the cut is even: that plan, --ratio, no data, or a head
    the distillation loss does not read (NMS-free end-to-end heads)."""
    from ...models.processing import HEAD_END2END

    if config.plan != "measured" or config.ratio is not None:
        return None
    if dataset is None:
        say("no data to measure the cuts on (--yaml): the channels are cut evenly")
        return None
    head = adapter.processing.head  # None for tasks without boxes
    if head == HEAD_END2END:
        say("the end-to-end (NMS-free) head has no distillation measure yet: the channels are cut evenly")
        return None
    images = torch.cat(list(first_images(adapter, dataset, PROBE_IMAGES)))
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
    rank = importance("l1")
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
    """Channels every pruned layer keeps to meet config.flops (allocation.py), checked on a pruned
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
