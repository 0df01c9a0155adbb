"""Channel plans for a FLOP target (optimize/allocation.py): the estimate against real pruned copies, and the
even and the measured allocation on the rounding grid."""
import random

import pytest
import torch

from conftest import DEMO_MODEL
from orinflow.optimize.common import layers
from orinflow.optimize.prune import graph as prune_graph
from orinflow.optimize.prune import plan as prune_plan
from orinflow.optimize.prune import pruner
from orinflow.optimize.train.loop import first_images
from orinflow.optimize.prune.allocation import FlopEstimate, Group, LayerShape, allocate, interpolated, lowest_count


@pytest.fixture(scope="module")
def demo_graph():
    """The demo detector (C2f halves, concats, residual adds, SPPF, Detect) with its groups."""
    from orinflow.models import load_model, prunable_copy

    module = prunable_copy(load_model(DEMO_MODEL, imgsz=64, fuse=False))
    example = torch.zeros(1, 3, 64, 64)
    protected = prune_graph.protected_layers(module, example)
    names = {m: n for n, m in module.named_modules()}
    return module, example, protected, {names[m]: why for m, why in protected.items()}


def test_the_estimate_matches_pruned_copies(demo_graph):
    """Random channel counts per group: the MACs estimated from the groups' readers and writers are the MACs of
    the copy pruned to those counts (wrong coupling, a concat's offsets say, would miss them)."""
    module, example, protected, protected_names = demo_graph
    groups = prune_graph.prunable_groups(module, example, protected)
    shapes = prune_graph.layer_shapes(module, example)
    assert len(groups) > 10 and any(len(group.readers) > 1 for group in groups)
    draw = random.Random(0)
    for _ in range(3):
        counts = [draw.randint(max(1, group.channels // 4), group.channels) for group in groups]
        keep = {name: count for group, count in zip(groups, counts) for name in group.writers}
        estimate = FlopEstimate(shapes)
        for group, count in zip(groups, counts):
            estimate.remove(group, group.channels - count)
        copy = pruner.pruned_copy(module, example, pruner.PruneConfig(round_to=1), protected_names, keep)
        assert layers.channels(copy)[next(iter(groups[0].writers))] == counts[0]
        assert estimate.total == pytest.approx(sum(layers.layer_macs(copy, example).values()), rel=1e-9)


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
    counts, reached = allocate(shapes, groups, 0.7 * base, round_to, 0.25)
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
    counts, reached = allocate(shapes, groups, 0.01 * base, 16, 0.25)
    assert counts == [16, 16] and reached > 0.01 * base


def test_interpolated_noise_between_measured_counts():
    table = {64: 0.0, 32: 1.0, 8: 4.0}
    assert interpolated(table, 32) == 1.0
    assert interpolated(table, 48) == pytest.approx(0.5)
    assert interpolated(table, 16) == pytest.approx(3.0)


def test_the_measured_plan_takes_the_flops_where_the_cuts_add_least_noise():
    """Three groups of a chain; the middle one's cuts are measured nearly free. The measured plan takes the whole
    cut from it (its 48 interpolated between 64 and 16), where the even plan starts with the first group."""
    shapes, groups = _chain([64, 64, 64])
    base = sum(shape.macs for shape in shapes.values())
    noise = [{64: 0.0, 32: 1.0, 16: 4.0}, {64: 0.0, 16: 0.01}, {64: 0.0, 32: 1.0, 16: 4.0}]
    counts, reached = allocate(shapes, groups, 0.8 * base, 16, 0.25, noise)
    assert counts == [64, 48, 64] and reached <= 0.8 * base
    even, _ = allocate(shapes, groups, 0.8 * base, 16, 0.25)
    assert even[0] < 64


def _probe(adapter, dataset, images: int):
    return prune_plan.CutProbe(torch.cat(list(first_images(adapter, dataset, images))), adapter.processing.head,
                          adapter.processing.imgsz[0])


def test_the_measured_plan_moves_the_outputs_less_than_the_even_one(demo_graph, tiny_shapes):
    """On the demo detector at the same FLOP target, the copy pruned by the measured plan (no refit, no
    fine-tuning) is closer to the unpruned model, by the distillation loss the plan reads, than the even plan's
    copy."""
    from orinflow.data import load_dataset
    from orinflow.models import load_model

    module, example, protected, protected_names = demo_graph
    adapter = load_model(DEMO_MODEL, imgsz=64, fuse=False)
    probe = _probe(adapter, load_dataset(tiny_shapes, "train"), 8)
    config = pruner.PruneConfig(flops=0.7, round_to=8, plan="measured")
    measured, record = prune_plan.plan_channels(module, example, config, protected, probe, say=lambda *_: None)
    even, even_record = prune_plan.plan_channels(module, example, config, protected, None, say=lambda *_: None)
    assert record["plan"] == "measured" and even_record["plan"] == "even" and measured != even
    assert all(entry["loss_increase"] for entry in record["groups"] if entry["kept"] < entry["channels"])
    reference = probe.reference(module)
    loss = {}
    for name, keep in (("measured", measured), ("even", even)):
        copy = pruner.pruned_copy(module, example, config, protected_names, keep)
        assert sum(layers.layer_macs(copy, example).values()) <= 0.7 * sum(layers.layer_macs(module, example).values())
        loss[name] = probe.loss(copy, reference) - probe.loss(module, reference)
    assert 0 < loss["measured"] < 0.8 * loss["even"]


def test_a_simulated_cut_moves_the_outputs_as_the_pruned_copy_does(demo_graph, tiny_shapes):
    """measured_noise zeroes the columns that read the channels the L1 rank drops instead of pruning a copy; at
    the first and the last count of several groups (a concat's, a residual add's) the loss it adds is the
    pruned copy's."""
    from orinflow.data import load_dataset
    from orinflow.models import load_model

    module, example, protected, protected_names = demo_graph
    adapter = load_model(DEMO_MODEL, imgsz=64, fuse=False)
    probe = _probe(adapter, load_dataset(tiny_shapes, "train"), 4)
    graph, coupled = prune_graph.graph_groups(module, example, protected)
    groups = prune_graph.prunable_groups(module, example, protected, (graph, coupled))
    wide = [i for i, group in enumerate(groups) if group.channels >= 32]
    chosen = [i for i in wide if len(groups[i].writers) > 1][:2] + [i for i in wide if len(groups[i].readers) > 1][:2]
    assert len(chosen) == 4
    config = pruner.PruneConfig(flops=0.7, round_to=8)
    noise = prune_plan.measured_noise(module, (graph, [coupled[i] for i in chosen]), [groups[i] for i in chosen],
                                 config, probe)
    reference = probe.reference(module)
    base = probe.loss(module, reference)
    for index, table in zip(chosen, noise):
        cuts = sorted(count for count in table if count < groups[index].channels)
        assert cuts and table[cuts[0]] > 0
        for count in {cuts[0], cuts[-1]}:  # the floor and the first multiple
            copy = pruner.pruned_copy(module, example, config, protected_names,
                                     dict.fromkeys(groups[index].writers, count))
            assert table[count] == pytest.approx(probe.loss(copy, reference) - base, rel=1e-3, abs=1e-7)


def test_a_head_the_distillation_loss_cannot_read_is_cut_evenly(tiny_shapes):
    """cut_probe: an already NMS-ed (end-to-end) head output has no distillation loss, so the plan says so and
    falls back to the even cut instead of failing; a detector it can read gets its probe images."""
    from dataclasses import replace

    from orinflow.data import load_dataset
    from orinflow.models import load_model
    from orinflow.models.processing import HEAD_END2END

    adapter = load_model(DEMO_MODEL, imgsz=64, fuse=False)
    dataset = load_dataset(tiny_shapes, "train")
    config = pruner.PruneConfig(plan="measured")
    probe = prune_plan.cut_probe(adapter, dataset, config, say=lambda *_: None)
    assert probe is not None and len(probe.images) == prune_plan.PROBE_IMAGES and probe.head == adapter.processing.head
    adapter.processing = replace(adapter.processing, head=HEAD_END2END)
    said = []
    assert prune_plan.cut_probe(adapter, dataset, config, say=said.append) is None
    assert said and "cut evenly" in said[0]
    assert prune_plan.cut_probe(adapter, None, config, say=said.append) is None and "--yaml" in said[1]
