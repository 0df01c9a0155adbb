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


def _console_script(name: str):
    """The function an installed console script runs, found by the script's name as pip registered it."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name=name)
    return script.load()


def _original(line: str, capsys, monkeypatch, executable: bool = False) -> str:
    """One usage line run as written, in the current folder (the default workspace): through its installed
    console script's executable when `executable`, else through the same entry point in this process."""
    import os
    import shlex
    import signal
    import subprocess
    import sys
    from pathlib import Path

    argv = shlex.split(line)
    if executable:
        env = {k: v for k, v in os.environ.items() if k != "ORINFLOW_WORKSPACE"}
        done = subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:]], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return " ".join(done.stdout.split())  # rich wraps long paths
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr("sys.argv", argv)
    capsys.readouterr()
    try:
        _console_script(argv[0])()
    except SystemExit as done:
        assert done.code in (0, None), f"{line}\n{capsys.readouterr()}"
    finally:
        for sig, handler in handlers.items():  # the script installs its Ctrl-C handling: give pytest's back
            signal.signal(sig, handler)
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture(scope="module")
def original_folder(tmp_path_factory):
    """The original lines' stand-ins: the embedded detector saved as yolo26n.pt and four images of the demo recipe
    named coco128.yaml, in a folder whose workspace is the default one (the lines say one epoch where they said ten)."""
    import shutil

    from conftest import DEMO_MODEL
    from orinflow.demo import shapes

    folder = tmp_path_factory.mktemp("original")
    shutil.copy(shapes.generate(folder / "data", {"train": (4, 0), "val": (4, 1)}), folder / "coco128.yaml")
    shutil.copy(DEMO_MODEL, folder / "yolo26n.pt")
    return folder


@pytest.fixture
def run_original(original_folder, capsys, monkeypatch):
    """Runs one original line as written in the stand-ins' folder; the user's checkpoint stays as it was."""
    monkeypatch.chdir(original_folder)
    monkeypatch.delenv("ORINFLOW_WORKSPACE", raising=False)
    checkpoint = (original_folder / "yolo26n.pt").read_bytes()
    yield lambda line, executable=False: _original(line, capsys, monkeypatch, executable)
    assert (original_folder / "yolo26n.pt").read_bytes() == checkpoint  # no line touched the user's checkpoint


def test_the_original_route_1_lines_run_verbatim(run_original, original_folder):
    """The first line runs through its console script's executable, the others through the same installed entry
    points in this process."""
    ws = original_folder / "workspace"
    run_original("orinflow-export -m yolo26n.pt --imgsz 640 --opset 13", executable=True)
    out = run_original("orinflow-calibrate --yaml coco128.yaml --split train --num-images 500")
    assert "workspace/calib/coco128.npy: 4 images, shape (4, 3, 640, 640)" in out
    out = run_original("orinflow-quantize -m yolo26n.onnx --calib coco128.npy --mode int8 --method entropy")
    assert "yolo26n.onnx: not in the current folder; using workspace/models/onnx/raw/yolo26n_640.onnx" in out
    assert "coco128.npy: not in the current folder; using workspace/calib/coco128.npy" in out
    assert (ws / "models/onnx/tensorrt/yolo26n_640_int8_entropy_tensorrt.onnx").is_file()
    out = run_original("orinflow-evaluate -m yolo26n --yaml coco128.yaml --compare")
    assert "found for yolo26n: yolo26n.pt" in out and "yolo26n_640_int8_entropy_tensorrt.onnx" in out
    assert out.count("evaluating ") == 3  # the checkpoint, the raw ONNX, the INT8 ONNX


def test_the_original_route_2_lines_run_verbatim(run_original):
    run_original("orinflow-qat -m yolo26n.pt --data coco128.yaml --mode int8 --epochs 1")
    out = run_original("orinflow-evaluate -m yolo26n_qat_int8.onnx --yaml coco128.yaml")
    assert "using workspace/qat/yolo26n/yolo26n_qat_int8.onnx" in out and "mAP50-95" in out


def test_the_original_route_3_lines_run_verbatim(run_original, original_folder):
    """The sparse checkpoint yolo26n_sparse.pt, exported, calibrated and quantized; still 2:4."""
    import onnx

    from orinflow.optimize.common.sparse24 import sparsity_summary

    run_original("orinflow-sparsify -m yolo26n.pt --data coco128.yaml --epochs 1")
    out = run_original("orinflow-export -m yolo26n_sparse.pt --imgsz 640 --opset 13")
    assert "using workspace/sat/yolo26n/yolo26n_sparse.pt" in out
    run_original("orinflow-calibrate --yaml coco128.yaml --split train --num-images 500")
    run_original("orinflow-quantize -m yolo26n_sparse.onnx --calib coco128.npy --mode int8 --method entropy")
    sparse_int8 = onnx.load(str(original_folder / "workspace/models/onnx/tensorrt/"
                                                  "yolo26n_sparse_640_int8_entropy_tensorrt.onnx"))
    summary = sparsity_summary(sparse_int8)
    assert summary["sparse_layers"] == summary["eligible_layers"] > 0


def test_the_original_route_4_line_runs_verbatim(run_original, original_folder):
    run_original("orinflow-sparse-qat -m yolo26n.pt --data coco128.yaml --sat-epochs 1 --qat-epochs 1 --qat-mode int8")
    assert (original_folder / "workspace/sparse_qat/yolo26n/yolo26n_sparse24_qat_int8.onnx").is_file()


def test_a_bare_name_is_looked_up_in_the_workspace_only_when_it_is_not_here(tmp_path, monkeypatch):
    from orinflow.api import locate

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ORINFLOW_WORKSPACE", str(tmp_path / "ws"))
    for name in ("models/onnx/raw/det_640.onnx", "models/onnx/raw/det_320.onnx", "calib/c.npy", "deploy/b/c.npy",
                 "models/onnx/raw/one_640.onnx", "models/onnx/tensorrt/one_640_int8_max_tensorrt.onnx"):
        (tmp_path / "ws" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ws" / name).write_bytes(b"x")
    said = []
    assert locate("c.npy", said.append) == tmp_path / "ws" / "calib" / "c.npy"  # the deploy bundle's copy is not
    assert locate("one.onnx", said.append) == tmp_path / "ws" / "models/onnx/raw/one_640.onnx"
    assert said == [f"c.npy: not in the current folder; using {tmp_path}/ws/calib/c.npy from the workspace",
                    f"one.onnx: not in the current folder; using {tmp_path}/ws/models/onnx/raw/one_640.onnx from "
                    "the workspace"]
    with pytest.raises(OrinflowError, match="det.onnx is not in the current folder and 2 files .* give the path"):
        locate("det.onnx", said.append)
    (tmp_path / "c.npy").write_bytes(b"here")  # a file here always wins; a path with a folder is never looked up
    assert str(locate("c.npy", said.append)) == "c.npy" and len(said) == 2
    assert str(locate("sub/one.onnx")) == "sub/one.onnx" and str(locate("missing.pt")) == "missing.pt"
