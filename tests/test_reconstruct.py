"""Least-squares refit after a pruning step (optimize/reconstruct.py)."""
import copy

import torch
from torch import nn

from conftest import DEMO_MODEL
from orinflow.optimize.prune import graph as prune_graph
from orinflow.optimize.prune import pruner
from orinflow.optimize.prune import reconstruct


def _smooth_images(count: int, seed: int) -> torch.Tensor:
    """Low-pass noise: neighbouring pixels and so a conv's channels correlate, as in real images."""
    noise = torch.randn(count, 3, 40, 40, generator=torch.Generator().manual_seed(seed))
    return nn.functional.avg_pool2d(noise, 5, stride=1, padding=2) * 3


def _net() -> nn.Module:
    torch.manual_seed(0)
    block = lambda cin, cout: [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()]
    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 32), nn.Conv2d(32, 8, 1)).eval()


def _pruner(module: nn.Module, example: torch.Tensor):
    config = pruner.PruneConfig(flops=None, ratio=0.5, round_to=1)
    protected = prune_graph.protected_layers(module, example)
    return pruner.make_pruner(module, example, config, protected, 1)


def test_tracked_step_names_the_channels_each_layer_kept():
    """The pruned weight is the original's kept rows and columns: the indices that the refit reads are right."""
    dense = _net()
    module = copy.deepcopy(dense)
    example = _smooth_images(1, 0)
    kept = reconstruct.tracked_step(_pruner(module, example), module)
    originals = dict(dense.named_modules())
    changed = 0
    for name, layer in module.named_modules():
        if layer in kept:
            ins, outs = kept[layer]
            assert torch.equal(layer.weight, originals[name].weight[outs][:, ins])
            changed += len(ins) < originals[name].in_channels
    assert changed == 3  # every conv that reads a pruned layer


def test_refit_moves_the_outputs_less_than_pruning_alone():
    """On images it has not seen, the refitted model's output is closer to the unpruned one's than the plain
    pruned model's, and every layer that lost inputs was refitted."""
    dense = _net()
    example, calibration, held_out = _smooth_images(1, 0), _smooth_images(16, 1), _smooth_images(8, 2)
    plain, refitted = copy.deepcopy(dense), copy.deepcopy(dense)
    reconstruct.tracked_step(_pruner(plain, example), plain)
    count = reconstruct.pruned_and_refitted(_pruner(refitted, example), refitted, [calibration], say=lambda *_: 0)
    with torch.no_grad():
        reference = dense(held_out)
        error = {name: (model.eval()(held_out) - reference).pow(2).mean().item()
                 for name, model in (("plain", plain), ("refitted", refitted))}
    assert count == 3
    assert error["refitted"] < 0.5 * error["plain"], error


def test_demo_detector_refit_keeps_its_head_outputs_closer_than_batchnorm_alone(tiny_shapes, tmp_path):
    """The embedded (trained) detector at 30% fewer FLOPs, no fine-tuning: the refit's raw head outputs are
    closer to the unpruned model's than those of pruning with BatchNorm re-estimated (the route without it). The
    even plan cuts every group, so every group's readers are refitted."""
    import orinflow
    from orinflow.data import load_dataset
    from orinflow.models import load_model
    from orinflow.optimize.common.probes import sqnr_db
    from orinflow.optimize.train.loop import batches
    from orinflow.optimize.sparsity.select import HeadOutputs

    dense = load_model(DEMO_MODEL, imgsz=128)
    images = next(batches(load_dataset(tiny_shapes, "val"), dense, list(range(8)), 8))[0]
    reference = HeadOutputs(dense.export_module().eval(), images)()
    sqnr, records = {}, {}
    for refit in (True, False):
        output = tmp_path / f"refit_{refit}.pt"
        records[refit] = orinflow.prune(DEMO_MODEL, tiny_shapes, imgsz=128, flops=0.7, round_to=8, epochs=0,
                                        runs=0, reconstruct=refit, plan="even", output=output, say=lambda *_: 0)
        pruned = load_model(output, imgsz=128).export_module().eval()
        sqnr[refit] = sqnr_db(reference, HeadOutputs(pruned, images)())
    assert records[True]["steps"][0]["refitted_layers"] > 0
    assert "refitted_layers" not in records[False]["steps"][0]
    assert sqnr[True] > sqnr[False] + 1.0, sqnr


def test_taylor_importance_fills_gradients_before_the_refitted_step(tiny_shapes, tmp_path):
    """Taylor ranking reads .grad from the label loss: the refitted step takes them before it ranks, and the
    gradients are gone from the written model."""
    import orinflow
    from orinflow.models import load_model

    output = tmp_path / "taylor.pt"
    record = orinflow.prune(DEMO_MODEL, tiny_shapes, imgsz=128, flops=0.8, round_to=8, importance="taylor",
                            epochs=0, runs=0, output=output, say=lambda *_: 0)
    assert record["steps"][0]["refitted_layers"] > 0 and record["flops_share"] <= 0.8
    assert all(p.grad is None for p in load_model(output, imgsz=128).module.parameters())
