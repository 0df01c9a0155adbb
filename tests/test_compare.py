"""orinflow compare A B: layers paired by name, error where it is born, every detection difference explained."""
import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

import orinflow
from conftest import DEMO_MODEL, shared_path
from orinflow.cli import app
from orinflow.errors import OrinflowError

runner = CliRunner()
QUIET = {"say": lambda m: None}


@pytest.fixture(scope="module")
def int8(demo_onnx, calib, tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8")
    np.save(folder / "calib.npy", calib)
    return orinflow.quantize(demo_onnx, calib=folder / "calib.npy", method="max", output=folder / "int8.onnx",
                             **QUIET)["model"]


def test_pytorch_and_its_onnx_agree_on_every_conv(demo_onnx, tiny_shapes, tmp_path):
    record = orinflow.compare(DEMO_MODEL, demo_onnx, tiny_shapes, imgsz=256, images=4, output=tmp_path / "c", **QUIET)
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(demo_onnx)).graph.node)
    assert record["paired_layers"] == convs  # every Conv2d found its node, through Sequential scopes too
    assert min(r["cosine"] for r in record["layers"]) >= 0.99999
    detections = record["detections"]
    assert detections["a"] == detections["b"] == detections["matched"] > 0
    assert record["mAP"]["a"]["mAP50-95"] == pytest.approx(record["mAP"]["b"]["mAP50-95"], abs=1e-6)
    assert json.loads((tmp_path / "c" / "compare.json").read_text())["command"] == "compare"
    assert (tmp_path / "c" / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_fp32_against_int8_names_where_the_error_is_born(demo_onnx, int8, tiny_shapes, tmp_path):
    result = runner.invoke(app, ["compare", str(demo_onnx), str(int8), "--yaml", str(tiny_shapes), "--images", "4",
                                 "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "c" / "compare.json").read_text())
    worst = record["worst_layers"]
    assert len(worst) == 5 and worst[0]["growth"] >= worst[-1]["growth"] > 0
    assert worst[0]["tensor"] in result.output and "noise added" in result.output
    assert record["paired_layers"] > 100  # every float tensor of the FP32 graph is in the Q/DQ graph too
    assert 0.99 < record["head_output"]["cosine"] < 1  # INT8 moves the head, a little
    detections = record["detections"]
    unexplained = sum(detections["a_only"].values()) + sum(detections["b_only"].values())
    assert detections["a"] - detections["matched"] == sum(detections["a_only"].values())
    assert detections["b"] - detections["matched"] == sum(detections["b_only"].values()) <= unexplained
    written = orinflow.report([tmp_path / "c"], output=tmp_path / "report")
    assert written["alignment"] == 1
    markdown, page = (tmp_path / "report" / "report.md").read_text(), (tmp_path / "report" / "report.html").read_text()
    assert "## Alignment: " in markdown and worst[0]["tensor"] in markdown
    assert "<h2>Alignment: " in page and "<svg" in page


def test_a_pre_nms_topk_cut_is_named_as_the_cause(demo_adapter, tiny_shapes, tmp_path):
    """Two end-to-end exports, one cutting candidates hard: what only the uncut model finds is blamed on the cut."""
    from orinflow.export import export_onnx
    from orinflow.export.nms import NmsSpec

    full = export_onnx(demo_adapter, tmp_path / "full.onnx", nms=NmsSpec(conf=0.001)).path
    cut = export_onnx(demo_adapter, tmp_path / "cut.onnx", nms=NmsSpec(conf=0.001, pre_topk=20, keep_topk=10)).path
    record = orinflow.compare(full, cut, tiny_shapes, images=8, conf=0.01, output=tmp_path / "c", **QUIET)
    lost = record["detections"]["a_only"]
    assert sum(lost.values()) > 0 and lost["cut by pre-NMS top-k"] + lost["cut by keep-top-k"] == sum(lost.values())
    assert record["head_output"]["sqnr_db"] == 100.0  # the same raw head, read from inside both graphs
    assert all(e["cause"].startswith("cut by") for e in record["examples"])


def test_compare_refuses_models_that_are_not_two_forms_of_one(demo_onnx, tiny_shapes, tmp_path):
    other_size = orinflow.export(DEMO_MODEL, imgsz=320, output=tmp_path / "320.onnx")["model"]
    with pytest.raises(OrinflowError, match="different inputs"):
        orinflow.compare(demo_onnx, other_size, tiny_shapes, output=tmp_path / "c", **QUIET)
    bare = onnx.load(str(demo_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    record = orinflow.compare(demo_onnx, tmp_path / "bare.onnx", tiny_shapes, images=2, output=tmp_path / "d",
                              **QUIET)
    assert record["paired_layers"] > 100 and record["detections"] is not None
    assert any("no orinflow metadata" in note for note in record["notes"])
    with pytest.raises(OrinflowError, match="evaluate_many"):
        orinflow.compare([demo_onnx, demo_onnx], tiny_shapes)
    (tmp_path / "e.engine").write_bytes(b"not built here")
    result = runner.invoke(app, ["compare", str(demo_onnx), str(tmp_path / "e.engine"), "--yaml", str(tiny_shapes),
                                 "-o", str(tmp_path / "e")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "tensorrt" in result.stderr.lower()
    assert not (tmp_path / "e").exists() and not (tmp_path / "c").exists()


def test_yolov5n_pytorch_against_onnx_on_coco8(tmp_path):
    weights = shared_path("weights", "yolov5n.pt")
    coco8 = shared_path("data", "coco8", "coco8.yaml")
    onnx_path = orinflow.export(weights, imgsz=320, output=tmp_path / "y.onnx")["model"]
    record = orinflow.compare(weights, onnx_path, coco8, imgsz=320, images=8, output=tmp_path / "c", **QUIET)
    assert record["paired_layers"] >= 60 and min(r["cosine"] for r in record["layers"]) >= 0.99999
    detections = record["detections"]
    assert detections["matched"] == detections["a"] - sum(detections["a_only"].values())
