"""The original design's usage lines (issue 15), as far as they run today."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

import orinflow
from orinflow.cli import app
from orinflow.errors import OrinflowError

runner = CliRunner()
QUIET = {"say": lambda m: None}


def demo_onnx_without_metadata(demo_onnx, tmp_path):
    import onnx

    model = onnx.load(str(demo_onnx))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    return tmp_path / "bare.onnx"


def test_calibrate_without_a_model_uses_the_standard_detector_preprocessing(demo_onnx, tiny_shapes, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("ORINFLOW_WORKSPACE", str(tmp_path / "ws"))
    result = runner.invoke(app, ["calibrate", "--yaml", str(tiny_shapes), "--split", "train", "--num-images", "500",
                                 "--imgsz", "256"])
    assert result.exit_code == 0, result.output
    calib = tmp_path / "ws" / "calib" / f"{tiny_shapes.stem}.npy"
    assert np.load(calib).shape == (12, 3, 256, 256)  # every train image (fewer than 500)
    assert json.loads(calib.with_name(calib.name + ".json").read_text())["model"] is None
    record = orinflow.quantize(demo_onnx, calib=calib, method="max", output=tmp_path / "q.onnx", **QUIET)
    assert record["calibration_images"] == 12
    yolox_like = orinflow.adopt(demo_onnx_without_metadata(demo_onnx, tmp_path), bgr=True,
                                output=tmp_path / "bgr.onnx")["model"]
    with pytest.raises(OrinflowError, match="another preprocessing than the model's .*channels"):
        orinflow.quantize(yolox_like, calib=calib, method="max", output=tmp_path / "q2.onnx", **QUIET)
    result = runner.invoke(app, ["calibrate", "--yaml", str(tiny_shapes), "--mean", "0.5", "-o",
                                 str(tmp_path / "c.npy")])
    assert result.exit_code == 2 and "only --imgsz applies" in result.stderr


def test_sparse_qat_takes_the_original_qat_mode(tiny_shapes, tmp_path):
    from conftest import DEMO_MODEL

    result = runner.invoke(app, ["sparse-qat", "-m", str(DEMO_MODEL), "--data", str(tiny_shapes), "--qat-mode", "fp8",
                                 "-o", str(tmp_path / "s.onnx")])
    assert result.exit_code == 2 and "--qat-mode fp8" in result.stderr and not list(tmp_path.iterdir())


def test_evaluate_name_with_the_compare_switch(tiny_shapes, tmp_path, monkeypatch):
    """`orinflow-evaluate -m det --yaml data.yaml --compare`: det.pt against every ONNX named det* in the workspace."""
    import shutil

    from conftest import DEMO_MODEL
    from orinflow.cli import evaluate_alias

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORINFLOW_WORKSPACE", str(tmp_path / "ws"))
    shutil.copy(DEMO_MODEL, tmp_path / "det.pt")
    assert runner.invoke(app, ["export", "-m", "det.pt", "--imgsz", "256"]).exit_code == 0
    raw = tmp_path / "ws" / "models" / "onnx" / "raw" / "det_256.onnx"
    np.save(tmp_path / "c.npy", np.random.default_rng(0).random((4, 3, 256, 256), dtype=np.float32))
    assert runner.invoke(app, ["quantize", "-m", str(raw), "--calib", "c.npy", "--method", "max"]).exit_code == 0
    result = runner.invoke(app, ["evaluate", "-m", "det", "--yaml", str(tiny_shapes), "--compare", "--imgsz", "256",
                                 "--runs", "0"])
    assert result.exit_code == 0, result.output
    assert "found for det: det.pt" in result.output and "det_256.onnx" in result.output
    assert "det_256_int8_max_tensorrt.onnx" in "".join(result.output.split())  # the optimized one too
    table = [line for line in result.output.splitlines() if ".onnx" in line and "│" in line]
    assert len(table) == 2
    result = runner.invoke(app, ["evaluate", "-m", "nothing", "--yaml", str(tiny_shapes), "--compare"])
    assert result.exit_code == 2 and "nothing.pt" in result.stderr
    monkeypatch.setattr("sys.argv", ["orinflow-evaluate", "-m", "det", "--yaml", str(tiny_shapes), "--imgsz", "256",
                                     "--runs", "0", "--compare"])  # the alias, switch last
    with pytest.raises(SystemExit) as done:
        evaluate_alias()
    assert done.value.code in (0, None)
