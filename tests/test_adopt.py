"""orinflow adopt: ONNX detectors that orinflow did not write quantize, evaluate and deploy like its own."""
import shutil

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
def ultralytics_onnx(tmp_path_factory):
    """The demo detector exported by Ultralytics' own exporter (offline)."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("ultralytics")
    shutil.copy(DEMO_MODEL, folder / "demo.pt")
    return type(folder)(YOLO(str(folder / "demo.pt")).export(format="onnx", imgsz=256, verbose=False))


def _quantize_and_score(model, calib, data, out):
    quantized = orinflow.quantize(model, calib=calib, method="max", output=out, **QUIET)
    return orinflow.evaluate(quantized["model"], data, runs=0, **QUIET)["metrics"]["mAP50-95"]


def test_ultralytics_export_adopted_scores_as_orinflows_own(ultralytics_onnx, demo_onnx, calib, tiny_shapes,
                                                            tmp_path):
    record = orinflow.adopt(ultralytics_onnx, output=tmp_path / "adopted.onnx")
    assert (record["head"], record["classes"], record["imgsz"]) == ("yolov8", 3, [256, 256])
    assert orinflow.load(tmp_path / "adopted.onnx").processing.names == {0: "circle", 1: "square", 2: "triangle"}
    theirs = orinflow.evaluate(tmp_path / "adopted.onnx", tiny_shapes, runs=0, **QUIET)["metrics"]
    mine = orinflow.evaluate(demo_onnx, tiny_shapes, runs=0, **QUIET)["metrics"]
    assert abs(theirs["mAP50-95"] - mine["mAP50-95"]) <= 0.001
    np.save(tmp_path / "calib.npy", calib[:8])
    adopted_int8 = _quantize_and_score(tmp_path / "adopted.onnx", tmp_path / "calib.npy", tiny_shapes,
                                       tmp_path / "adopted_int8.onnx")
    own_int8 = _quantize_and_score(demo_onnx, tmp_path / "calib.npy", tiny_shapes, tmp_path / "own_int8.onnx")
    assert abs(adopted_int8 - own_int8) <= 0.001
    bundle = orinflow.deploy(tmp_path / "adopted_int8.onnx", output=tmp_path / "bundle")
    assert bundle["traits"]["has_processing"] and "--stronglyTyped" in bundle["build_engine"]


def test_original_yolov5_layout_is_read_from_the_output(tmp_path):
    from orinflow.export import export_onnx

    coco8 = shared_path("data", "coco8", "coco8.yaml")
    own = export_onnx(orinflow.load(shared_path("weights", "yolov5n.pt"), imgsz=320), tmp_path / "own.onnx").path
    bare = onnx.load(str(own))
    del bare.metadata_props[:]  # as the yolov5 repository's exporter writes it: no orinflow metadata
    onnx.save(bare, str(tmp_path / "yolov5n.onnx"))
    result = runner.invoke(app, ["adopt", "-m", str(tmp_path / "yolov5n.onnx"), "--names", str(coco8),
                                 "-o", str(tmp_path / "adopted.onnx")])
    assert result.exit_code == 0, result.output
    assert "head yolov5 (read from its output" in result.output and "80 classes" in result.output
    scores = [orinflow.evaluate(m, coco8, runs=0, **QUIET)["metrics"]["mAP50-95"]
              for m in (own, tmp_path / "adopted.onnx")]
    assert scores[0] == pytest.approx(scores[1], abs=1e-9)


def test_end_to_end_export_adopts_quantizes_evaluates_and_deploys(demo_onnx, tiny_shapes, tmp_path, monkeypatch):
    """Ultralytics' export with NMS inside the graph: (batch, 300, 6) boxes, scores and classes."""
    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    shutil.copy(DEMO_MODEL, tmp_path / "demo.pt")
    path = YOLO(str(tmp_path / "demo.pt")).export(format="onnx", imgsz=256, nms=True, conf=0.001, verbose=False)
    record = orinflow.adopt(path, output=tmp_path / "adopted.onnx")
    assert record["head"] == "end2end" and record["output_shape"][2] == 6
    end2end = orinflow.evaluate(tmp_path / "adopted.onnx", tiny_shapes, runs=0, **QUIET)["metrics"]["mAP50-95"]
    own = orinflow.evaluate(demo_onnx, tiny_shapes, runs=0, **QUIET)["metrics"]["mAP50-95"]
    assert end2end > own - 0.05  # the graph's own NMS keeps at most 300 boxes: close, not identical
    calib = tmp_path / "calib.npy"
    orinflow.calibrate(tmp_path / "adopted.onnx", tiny_shapes, num_images=4, output=calib)
    score = _quantize_and_score(tmp_path / "adopted.onnx", calib, tiny_shapes, tmp_path / "int8.onnx")
    assert score > own - 0.1
    assert orinflow.deploy(tmp_path / "int8.onnx", output=tmp_path / "bundle")["traits"]["has_processing"]


def test_adopt_refuses_what_contradicts_the_graph(ultralytics_onnx, demo_onnx, tmp_path):
    with pytest.raises(OrinflowError, match=r"--head yolov5 expects .*\[1, 7, 1344\]"):
        orinflow.adopt(ultralytics_onnx, head="yolov5", output=tmp_path / "a.onnx")
    with pytest.raises(OrinflowError, match="predicts 3 classes but --names gives 2"):
        orinflow.adopt(ultralytics_onnx, names="a,b", output=tmp_path / "a.onnx")
    with pytest.raises(OrinflowError, match="already carries orinflow metadata"):
        orinflow.adopt(demo_onnx, output=tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    with pytest.raises(OrinflowError, match=r"--head yolox expects .* at 256x256"):
        orinflow.adopt(ultralytics_onnx, head="yolox", output=tmp_path / "a.onnx")
    with pytest.raises(OrinflowError, match="--mean must be three comma-separated numbers"):
        orinflow.adopt(ultralytics_onnx, mean="0,0", output=tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()


def test_adopt_records_the_input_convention_it_is_told(ultralytics_onnx, tiny_shapes, tmp_path):
    """--resize, --bgr, --mean/--std (fractions allowed) reach the model's metadata and change what it sees."""
    result = runner.invoke(app, ["adopt", "-m", str(ultralytics_onnx), "--resize", "--bgr", "--mean", "0.5",
                                 "--std", "1/4,1/4,1/4", "-o", str(tmp_path / "told.onnx")])
    assert result.exit_code == 0, result.output
    assert "stretch BGR mean 0.5,0.5,0.5 std 0.25,0.25,0.25" in " ".join(result.output.split())
    processing = orinflow.load(tmp_path / "told.onnx").processing
    assert (processing.resize, processing.channels, processing.mean, processing.std) == (
        "stretch", "bgr", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    told = orinflow.evaluate(tmp_path / "told.onnx", tiny_shapes, runs=0, **QUIET)["metrics"]["mAP50-95"]
    right = orinflow.evaluate(orinflow.adopt(ultralytics_onnx, output=tmp_path / "right.onnx")["model"], tiny_shapes,
                              runs=0, **QUIET)["metrics"]["mAP50-95"]
    assert told < right - 0.1  # the detector was trained on letterboxed RGB 0..1: the wrong convention costs


def test_adopt_imgsz_is_checked_against_the_graph(demo_onnx, tmp_path):
    bare = onnx.load(str(demo_onnx))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "fixed.onnx"))
    for dim, name in zip(bare.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.dim_param = name  # the input says any size; the graph inside was traced at 256
    onnx.save(bare, str(tmp_path / "free.onnx"))
    with pytest.raises(OrinflowError, match="contradicts the model's fixed input 256x256"):
        orinflow.adopt(tmp_path / "fixed.onnx", imgsz=320, output=tmp_path / "a.onnx")
    with pytest.raises(OrinflowError, match="does not run at 320x320"):
        orinflow.adopt(tmp_path / "free.onnx", imgsz=320, output=tmp_path / "a.onnx")
    for size in (-5, 0, 40000):
        with pytest.raises(OrinflowError, match="--imgsz must be 1 or more"):
            orinflow.adopt(tmp_path / "free.onnx", imgsz=size, output=tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    record = orinflow.adopt(tmp_path / "free.onnx", imgsz=256, output=tmp_path / "a.onnx")
    assert record["imgsz"] == [256, 256] and record["head"] == "yolov8"
