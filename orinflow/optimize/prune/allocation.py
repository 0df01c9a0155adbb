"""How many channels each prunable group keeps to meet a FLOP target (`orinflow prune --flops`).

One ratio for every group, rounded to the hardware multiple, moves in coarse jumps: at `--round-to 16`
every 32-channel group of yolov5n goes to 16 at once, so `--flops 0.7` could only be met at 0.572.
Here each group's count is chosen on the rounding grid instead, one multiple at a time, until the
estimated FLOPs reach the target; the plan passes the target by at most one multiple of one group.
Which group gives the next multiple:
- measured (`noise` given; the default of `orinflow prune` with data): the one whose cut adds the least
  noise per MAC it saves. Each group's noise was measured with that group alone cut to each count
  (plan.py: the growth of the distillation loss against the unpruned model), and the noises of
  several groups are taken to add up.
- even (no noise): the one that would then have lost the smallest share of its channels (ties: the
  widest). This is the allocation closest to uniform that the rounding allows.

FLOPs are estimated from the dependency graph: a layer's multiply-accumulates scale with the share of
its output channels and of its input features that are left (a depthwise conv's with its outputs only).
orinflow checks the estimate by pruning a copy (plan.py).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field


@dataclass
class LayerShape:
    macs: float  # at full width
    outputs: int
    inputs: int
    depthwise: bool = False  # its input width follows its output width


@dataclass
class Group:
    """Coupled channels: pruning one removes it from every writer's outputs and every reader's inputs."""
    channels: int
    writers: dict[str, float] = field(default_factory=dict)  # layer -> output channels lost per channel
    readers: dict[str, float] = field(default_factory=dict)  # layer -> input features lost per channel


class FlopEstimate:
    """Total MACs as groups lose channels, updated layer by layer."""

    def __init__(self, layers: dict[str, LayerShape]):
        self.layers = layers
        self.lost_out = dict.fromkeys(layers, 0.0)
        self.lost_in = dict.fromkeys(layers, 0.0)
        self.macs = {name: shape.macs for name, shape in layers.items()}
        self.total = sum(self.macs.values())

    def remove(self, group: Group, count: int) -> None:
        for side, lost in ((group.writers, self.lost_out), (group.readers, self.lost_in)):
            for name, per_channel in side.items():
                if name in lost:  # not a layer the inference pass skips (the FLOP count does not reach it)
                    lost[name] += per_channel * count
                    self._update(name)

    def _update(self, name: str) -> None:
        shape = self.layers[name]
        share = max(0.0, 1 - self.lost_out[name] / shape.outputs)
        if not shape.depthwise:
            share *= max(0.0, 1 - self.lost_in[name] / shape.inputs)
        self.total += shape.macs * share - self.macs[name]
        self.macs[name] = shape.macs * share


def lowest_count(channels: int, round_to: int, min_share: float) -> int:
    """The fewest channels a group may keep: a multiple of round_to holding min_share (a group narrower
    than one multiple keeps all)."""
    return min(channels, max(round_to, math.ceil(min_share * channels / round_to) * round_to))


def next_count(kept: int, round_to: int) -> int:
    """The next multiple of round_to below `kept`."""
    return (kept - 1) // round_to * round_to


def interpolated(table: dict[int, float], count: int) -> float:
    """`table`'s value at `count`, linear between the nearest counts it holds."""
    if count in table:
        return table[count]
    above = min(c for c in table if c > count)
    below = max((c for c in table if c < count), default=None)
    if below is None:
        return table[above]
    return table[below] + (table[above] - table[below]) * (count - below) / (above - below)


def allocate(layers: dict[str, LayerShape], groups: list[Group], target_macs: float, round_to: int,
             min_share: float, noise: list[dict[int, float]] | None = None) -> tuple[list[int], float]:
    """Channels each group keeps, and the estimated MACs they reach (above target_macs when every group is
    already at its lowest count). `noise`: per group, the noise measured at some of its counts (its full
    width among them, at 0); without it, the cut is even."""
    estimate = FlopEstimate(layers)
    kept = [group.channels for group in groups]
    floors = [lowest_count(group.channels, round_to, min_share) for group in groups]
    per_channel = [channel_macs(layers, group) for group in groups]
    queue: list[tuple[float, int, int]] = []

    def offer(index: int) -> None:
        after = next_count(kept[index], round_to)
        if after < floors[index] or after <= 0:
            return
        if noise is None:
            key = 1 - after / groups[index].channels
        else:
            added = interpolated(noise[index], after) - interpolated(noise[index], kept[index])
            key = max(added, 1e-12) / max(per_channel[index] * (kept[index] - after), 1e-12)
        heapq.heappush(queue, (key, -groups[index].channels, index))

    for index in range(len(groups)):
        offer(index)
    while estimate.total > target_macs and queue:
        _, _, index = heapq.heappop(queue)
        after = next_count(kept[index], round_to)
        estimate.remove(groups[index], kept[index] - after)
        kept[index] = after
        offer(index)
    return kept, estimate.total


def channel_macs(layers: dict[str, LayerShape], group: Group) -> float:
    """MACs one of the group's channels costs at full width (what its removal saves, to first order)."""
    writes = sum(layers[n].macs * share / layers[n].outputs for n, share in group.writers.items() if n in layers)
    reads = sum(layers[n].macs * share / layers[n].inputs for n, share in group.readers.items()
                if n in layers and not layers[n].depthwise)
    return writes + reads
