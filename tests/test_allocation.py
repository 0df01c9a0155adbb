"""Channel plans for a FLOP target (optimize/allocation.py): the estimate against real pruned copies, and the
even allocation on the rounding grid."""
import random

import pytest
import torch

from conftest import DEMO_MODEL
from orinflow.optimize import prune
from orinflow.optimize.allocation import FlopEstimate, Group, LayerShape, even_allocation, lowest_count


@pytest.fixture(scope="module")
def demo_graph():
    """The demo detector (C2f halves, concats, residual adds, SPPF, Detect) with its groups."""
    from orinflow.models import load_model, prunable_copy

    module = prunable_copy(load_model(DEMO_MODEL, imgsz=64, fuse=False))
    example = torch.zeros(1, 3, 64, 64)
    protected = prune.protected_layers(module, example)
    names = {m: n for n, m in module.named_modules()}
    return module, example, protected, {names[m]: why for m, why in protected.items()}


def test_the_estimate_matches_pruned_copies(demo_graph):
    """Random channel counts per group: the MACs estimated from the groups' readers and writers are the MACs of
    the copy pruned to those counts (wrong coupling, a concat's offsets say, would miss them)."""
    module, example, protected, protected_names = demo_graph
    groups = prune.prunable_groups(module, example, protected)
    shapes = prune.layer_shapes(module, example)
    assert len(groups) > 10 and any(len(group.readers) > 1 for group in groups)
    draw = random.Random(0)
    for _ in range(3):
        counts = [draw.randint(max(1, group.channels // 4), group.channels) for group in groups]
        keep = {name: count for group, count in zip(groups, counts) for name in group.writers}
        estimate = FlopEstimate(shapes)
        for group, count in zip(groups, counts):
            estimate.remove(group, group.channels - count)
        copy = prune.pruned_copy(module, example, prune.PruneConfig(round_to=1), protected_names, keep)
        assert prune.channels(copy)[next(iter(groups[0].writers))] == counts[0]
        assert estimate.total == pytest.approx(sum(prune.layer_macs(copy, example).values()), rel=1e-9)


def _chain(widths: list[int], size: int = 8) -> tuple[dict, list[Group]]:
    """Plain 3x3 convs in a chain: layer i writes group i and reads group i-1; the last layer is the output."""
    shapes, groups = {}, []
    inputs = 3
    for index, width in enumerate(widths + [10]):
        shapes[f"l{index}"] = LayerShape(width * inputs * 9 * size * size, width, inputs)
        if index < len(widths):
            groups.append(Group(width, writers={f"l{index}": 1.0}, readers={f"l{index + 1}": 1.0}))
        inputs = width
    return shapes, groups


@pytest.mark.parametrize("round_to", [1, 8, 16, 32])
def test_even_allocation_is_the_closest_to_uniform_the_grid_allows(round_to):
    """On the grid, within the minimum share; at most one multiple past the target; and no group has lost a
    larger share than another could still lose before it (the levels are as even as the multiples allow)."""
    shapes, groups = _chain([16, 32, 32, 64, 64, 128, 256, 256])
    base = sum(shape.macs for shape in shapes.values())
    counts, reached = even_allocation(shapes, groups, 0.7 * base, round_to, 0.25)
    assert reached <= 0.7 * base
    for group, count in zip(groups, counts):
        assert count == group.channels or count % round_to == 0
        assert count >= lowest_count(group.channels, round_to, 0.25)
    lost = [1 - count / group.channels for group, count in zip(groups, counts)]
    for index, group in enumerate(groups):  # the next cut any group could take lies at or above every level
        after = counts[index] - round_to
        if after >= lowest_count(group.channels, round_to, 0.25):
            assert 1 - after / group.channels >= max(lost) - 1e-12
    cut = max(range(len(groups)), key=lambda i: (lost[i], -groups[i].channels, i))  # the last one taken
    undone = [c + round_to * (i == cut) for i, c in enumerate(counts)]
    assert _macs(shapes, groups, undone) > 0.7 * base  # the last cut was needed


def _macs(shapes, groups, counts) -> float:
    estimate = FlopEstimate(shapes)
    for group, count in zip(groups, counts):
        estimate.remove(group, group.channels - count)
    return estimate.total


def test_a_target_below_every_floor_is_reported_unreached():
    shapes, groups = _chain([32, 64])
    base = sum(shape.macs for shape in shapes.values())
    counts, reached = even_allocation(shapes, groups, 0.01 * base, 16, 0.25)
    assert counts == [16, 16] and reached > 0.01 * base
