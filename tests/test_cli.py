import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from orinflow.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_every_flag_with_default():
    result = invoke("export", "--help")
    assert result.exit_code == 0
    for flag in ("--model", "--imgsz", "--opset", "--dynamic", "--half", "--output", "default: 17"):
        assert flag in result.output


@pytest.mark.parametrize("script, flags", [
    ("orinflow-export", ["--opset", "--imgsz", "-m"]),
    ("orinflow-calibrate", ["--yaml", "--split", "--num-images"]),
    ("orinflow-evaluate", ["--compare", "--yaml", "--json"]),
    ("orinflow-quantize", ["--calib", "--mode", "--method", "--target", "--exclude"]),
    ("orinflow-qat", ["--epochs", "--distill", "--yaml"]),
    ("orinflow-sparsify", ["--method", "--epochs", "--yaml"]),
])
def test_seed_aliases_run_the_same_commands(script, flags):
    exe = __import__("pathlib").Path(sys.executable).parent / script
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in flags:
        assert flag in out.stdout


def test_export_calibrate_evaluate_end_to_end(tmp_path, tiny_shapes):
    onnx_path = tmp_path / "m.onnx"
    result = invoke("export", "-m", DEMO_MODEL, "--imgsz", 256, "-o", onnx_path)
    assert result.exit_code == 0, result.output
    assert "parity" in result.output and onnx_path.exists()

    calib = tmp_path / "calib.npy"
    result = invoke("calibrate", "-m", onnx_path, "--yaml", tiny_shapes, "--split", "train", "--num-images", 5,
                    "-o", calib)
    assert result.exit_code == 0, result.output
    assert np.load(calib).shape == (5, 3, 256, 256)

    record_path = tmp_path / "record.json"
    result = invoke("evaluate", "-m", onnx_path, "--yaml", tiny_shapes, "--runs", 3, "--batch", 2,
                    "--json", record_path, "--per-class")
    assert result.exit_code == 0, result.output
    record = json.loads(record_path.read_text())
    for key in ("model", "runtime", "task", "data", "images", "metrics", "latency_ms", "params", "size_bytes",
                "versions"):
        assert key in record
    assert set(record["metrics"]) >= {"mAP50", "mAP50-95"}
    # a static-batch graph cannot time batch 2: no such figure, and the record says why
    assert set(record["latency_ms"]) == {"batch1", "threads", "cpu"}
    assert "static batch of 1" in record["notes"][0] and "static batch" in result.output
    assert record["latency_ms"]["batch1"]["median"] > 0 and record["images"] == 8


def test_compare_table_with_deltas(tmp_path, tiny_shapes, demo_onnx):
    out = tmp_path / "cmp.json"
    result = invoke("evaluate", "--compare", DEMO_MODEL, demo_onnx, "--imgsz", 256, "--yaml", tiny_shapes,
                    "--runs", 2, "--json", out)
    assert result.exit_code == 0, result.output
    assert "mAP50-95 (Δ)" in result.output
    records = json.loads(out.read_text())["compare"]
    assert [r["runtime"] for r in records] == ["torch", "onnxruntime"]
    assert all(r["latency_ms"]["interleaved"] and r["latency_ms"]["batch1"]["runs"] == 2 for r in records)
    assert "timed in turn" in result.output and records[0]["latency_ms"]["cpu"] in result.output
    assert abs(records[0]["metrics"]["mAP50-95"] - records[1]["metrics"]["mAP50-95"]) < 0.01


def _one_line_error(result):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_missing_model(tmp_path):
    assert "not found" in _one_line_error(invoke("export", "-m", tmp_path / "missing.pt"))


def test_corrupt_model(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    _one_line_error(invoke("export", "-m", bad, "-o", tmp_path / "out.onnx"))
    assert not (tmp_path / "out.onnx").exists()


def test_yaml_with_wrong_paths(tmp_path):
    data = tmp_path / "data.yaml"
    data.write_text("train: images/nowhere\nval: images/nowhere\nnames: {0: a}\n")
    line = _one_line_error(invoke("calibrate", "-m", DEMO_MODEL, "--yaml", data, "-o", tmp_path / "c.npy"))
    assert "does not exist" in line and not (tmp_path / "c.npy").exists()


def test_unreadable_image(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    line = _one_line_error(invoke("calibrate", "-m", DEMO_MODEL, "--data", folder, "-o", tmp_path / "c.npy"))
    assert "cannot read image" in line and not (tmp_path / "c.npy").exists()


def test_verbose_shows_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    result = invoke("export", "-m", bad, "--verbose")
    assert result.exit_code == 2 and "Traceback" in result.output


def test_wrong_task_data(tmp_path, class_tree):
    _one_line_error(invoke("evaluate", "-m", DEMO_MODEL, "--data", class_tree, "--runs", 0))
