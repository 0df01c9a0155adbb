import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from orinflow.cli import app
from orinflow.data import load_dataset
from orinflow.data.calibration import build_calibration
from orinflow.errors import OrinflowError
from orinflow.models import load_model
from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx
from orinflow.optimize.train.config import QATConfig
from orinflow.optimize.sparsity.sat import run_sat
from orinflow.optimize.common.sparse24 import is_2to4, sparsity_report


def _conv_model(weight: np.ndarray) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, weight.shape[1], 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [x], [y], [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_2to4_rule_runs_along_input_channels():
    weight = np.ones((8, 16, 3, 3), np.float32)
    weight[:, 0::4] = weight[:, 1::4] = 0  # two zeros in every group of four input channels
    assert is_2to4(np.moveaxis(weight, 1, -1))
    report = sparsity_report(_conv_model(weight))
    assert report["eligible_layers"] == 1 and report["sparse_layers"] == 1 and report["sparse_flop_share"] == 1.0
    dense = np.ones((8, 16, 3, 3), np.float32)
    dense[0::2] = 0  # zeros along output channels do not count
    assert sparsity_report(_conv_model(dense))["sparse_layers"] == 0
    assert sparsity_report(_conv_model(np.ones((8, 12, 3, 3), np.float32)))["eligible_layers"] == 0


def test_sat_then_ptq_keeps_2to4(demo_adapter, tiny_shapes, tmp_path):
    config = QATConfig(epochs=1, max_steps=1, batch=4, calib_images=4, lr=1e-4)
    record = run_sat(demo_adapter, load_dataset(tiny_shapes, "train"), "magnitude", config, tmp_path / "s.onnx",
                     say=lambda m: 0)
    assert record["sparsity"]["eligible_layers"] > 0 and record["sparsity"]["eligible_sparse_share"] == 1.0
    sparse = load_model(record["model"])
    calib = build_calibration(sparse.processing, load_dataset(tiny_shapes, "train"), 4)
    quantized = quantize_onnx(sparse, calib, QuantizeSpec(), tmp_path / "s_int8.onnx")
    assert quantized["sparsity"]["eligible_sparse_share"] == 1.0  # zeros stay zero through Q/DQ
    assert quantized["qdq_report"]["lint"] == []


def test_sparsify_rejects_unknown_method(demo_adapter, tiny_shapes, tmp_path):
    with pytest.raises(OrinflowError, match="unknown --method"):
        run_sat(demo_adapter, load_dataset(tiny_shapes, "train"), "random", QATConfig(), tmp_path / "x.onnx")


def test_inspect_and_sparsify_cli(tiny_shapes, demo_onnx, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", "-m", str(demo_onnx), "--layers", "--json", str(tmp_path / "i.json")])
    assert result.exit_code == 0, result.output
    assert "floating-point model" in result.output and "2:4 sparsity: 0 of" in result.output
    out = tmp_path / "sp.onnx"
    result = runner.invoke(app, ["sparsify", "-m", str(DEMO_MODEL), "--imgsz", "256", "--yaml", str(tiny_shapes),
                                 "--epochs", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "(100%)" in result.output and out.exists()


def test_sparse_qat_keeps_2to4_under_qdq(demo_adapter, tiny_shapes, tmp_path):
    """Route 4: the masks survive QAT (weights move, zeros stay) and the Q/DQ export is still 2:4."""
    from orinflow.optimize.common.masks import hold_masks, sparse_masks
    from orinflow.optimize.sparsity.sat import run_sparse_qat, sat_stage

    data = load_dataset(tiny_shapes, "train")
    config = QATConfig(epochs=1, max_steps=2, batch=4, calib_images=4, lr=1e-3)
    record = run_sparse_qat(demo_adapter, data, "magnitude", config, config, tmp_path / "sq.onnx", say=lambda m: 0)
    assert record["route"] == "sparse-qat" and len(record["losses"]) == 1 and len(record["sat_losses"]) == 1
    assert record["sparsity"]["eligible_layers"] > 0 and record["sparsity"]["eligible_sparse_share"] == 1.0
    assert record["qdq_report"]["qdq_pairs"] > 0 and record["qdq_report"]["lint"] == []
    graph = onnx.load(str(tmp_path / "sq.onnx"))
    assert sparsity_report(graph)["sparse_layers"] == record["sparsity"]["sparse_layers"]
    # interrupted during SAT (no QAT checkpoint yet): --resume finishes SAT from its checkpoint, starts QAT afresh
    (tmp_path / "sq.qat.pt").unlink()
    messages = []
    resumed = QATConfig(**{**config.__dict__, "resume": True})
    again = run_sparse_qat(demo_adapter, data, "magnitude", resumed, resumed, tmp_path / "sq.onnx", say=messages.append)
    assert again["sat_losses"] == record["sat_losses"] and any("after epoch 1" in m for m in messages)
    assert again["sparsity"]["eligible_sparse_share"] == 1.0
    # without holding the masks, a QAT step at this learning rate would fill the zeros in
    sparse, _, _ = sat_stage(demo_adapter, data, "magnitude", QATConfig(epochs=0), tmp_path / "x.pt")
    masks = sparse_masks(sparse)
    weight = dict(sparse.named_modules())[next(iter(masks))].weight
    with torch.no_grad():
        weight.add_(1.0)
    assert not torch.equal(weight != 0, masks[next(iter(masks))])
    hold_masks(sparse, masks)()
    assert torch.equal(weight != 0, masks[next(iter(masks))])


def test_sparse_qat_cli(tiny_shapes, tmp_path):
    """With --sparse-flops the 2:4 layer choice is recorded beside the QAT selection, which still scores the start
    and every epoch and writes the best (the choice once took the selection's place: nothing was scored, and the
    run ended in a TypeError)."""
    import json

    out = tmp_path / "sq.onnx"
    result = CliRunner().invoke(app, ["sparse-qat", "-m", str(DEMO_MODEL), "--imgsz", "256", "--yaml",
                                      str(tiny_shapes), "--sat-epochs", "1", "--qat-epochs", "1", "--max-steps", "1",
                                      "--batch", "4", "--calib-images", "4", "--runs", "0", "--sparse-flops", "0.5",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "route 4" in result.output and out.exists()
    record = json.loads(out.with_suffix(".json").read_text())
    assert len(record["selection"]["scores"]) == 2 and record["selection"]["epoch"] in (0, 1)  # start, epoch 1
    assert record["sparse_selection"]["layers"]


def test_sparsegpt_is_2to4_along_input_channels_and_beats_magnitude_on_the_data():
    """Our SparseGPT: 2:4 along input channels at each kernel position (ModelOpt's own mode groups (c, kh, kw)
    columns, which TensorRT cannot use on 3x3 kernels); its weight update moves the layer's output less."""
    from torch import nn

    from orinflow.optimize.sparsity.select import hessians, magnitude_24, sparsegpt_24

    torch.manual_seed(0)
    conv = nn.Conv2d(32, 16, 3, padding=1, bias=False)
    x = torch.randn(8, 32, 12, 12)
    x = x + 0.9 * x.roll(1, 1)  # correlated channels: what the data-aware update exploits
    found = hessians(nn.Sequential(conv), {"0": conv}, [x])["0"]
    errors = {}
    for name, weight in (("magnitude", magnitude_24(conv.weight)), ("sparsegpt", sparsegpt_24(conv.weight, found))):
        assert is_2to4(weight.movedim(1, -1).numpy()) and float((weight == 0).float().mean()) == 0.5
        with torch.no_grad():
            reference = conv(x)
            errors[name] = float((nn.functional.conv2d(x, weight, padding=1) - reference).norm() / reference.norm())
    assert errors["sparsegpt"] < 0.9 * errors["magnitude"], errors
    # the Hessian's columns are kernel position first, input channel last: only channel 0 lit lights 9 columns
    lit = torch.zeros(1, 32, 6, 6)
    lit[:, 0] = 1.0
    columns = torch.nonzero(torch.diag(hessians(nn.Sequential(conv), {"0": conv}, [lit])["0"])).flatten()
    assert columns.tolist() == [k * 32 for k in range(9)]


def test_sparse_flops_chooses_the_layers_that_cost_least(demo_adapter, tiny_shapes, tmp_path):
    """--sparse-flops 0.5 with SparseGPT: at least half the conv FLOPs 2:4 (exactly the chosen layers, checked on
    the exported ONNX and after INT8), and far less accuracy lost than ModelOpt's magnitude masks everywhere."""
    import orinflow

    runs = {}
    for name, method, share in (("all", "magnitude", None), ("chosen", "sparsegpt", 0.5)):
        runs[name] = orinflow.sparsify(DEMO_MODEL, tiny_shapes, imgsz=256, method=method, sparse_flops=share,
                                       epochs=0, batch=4, calib_images=8, output=tmp_path / f"{name}.onnx",
                                       say=lambda m: 0)
    chosen = runs["chosen"]["selection"]
    sparse = [layer["name"] for layer in chosen["layers"] if layer["sparse"]]
    assert 0.5 <= chosen["share"] < chosen["eligible_share"] and 0 < len(sparse) < len(chosen["layers"])
    assert all(layer["sqnr_db"] is not None for layer in chosen["layers"])
    assert runs["chosen"]["sparsity"]["sparse_layers"] == len(sparse)
    assert runs["chosen"]["sparsity"]["sparse_flop_share"] >= 0.5
    drop = {k: r["compare"][0]["metrics"]["mAP50-95"] - r["compare"][1]["metrics"]["mAP50-95"] for k, r in runs.items()}
    assert drop["chosen"] < 0.05 < drop["all"], drop
    checkpoint = load_model(tmp_path / "chosen_sparse.pt", imgsz=256)  # the sparse checkpoint beside -o
    assert runs["chosen"]["checkpoint"] == str(tmp_path / "chosen_sparse.pt")
    assert sum(float((m.weight == 0).float().mean()) == 0.5 for m in checkpoint.module.modules()
               if isinstance(m, torch.nn.Conv2d)) == len(sparse)
    calib = build_calibration(checkpoint.processing, load_dataset(tiny_shapes, "train"), 4)
    quantized = quantize_onnx(load_model(tmp_path / "chosen.onnx"), calib, QuantizeSpec(), tmp_path / "c_int8.onnx")
    assert quantized["sparsity"]["sparse_layers"] == len(sparse) and quantized["qdq_report"]["lint"] == []


@pytest.mark.parametrize("share", ["0", "1.5"])
def test_sparse_flops_outside_zero_to_one_is_refused(tiny_shapes, tmp_path, share):
    result = CliRunner().invoke(app, ["sparsify", "-m", str(DEMO_MODEL), "--imgsz", "256", "--yaml", str(tiny_shapes),
                                      "--sparse-flops", share, "-o", str(tmp_path / "s.onnx")])
    assert result.exit_code == 2 and "--sparse-flops is a share of the conv FLOPs" in result.stderr
    assert not list(tmp_path.iterdir())
