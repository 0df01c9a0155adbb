"""A user's own detector (--arch file.py:factory --head --names) through export, every route and evaluation."""
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import orinflow
from conftest import ASSETS, DEMO_MODEL
from orinflow.cli import app
from orinflow.errors import OrinflowError

runner = CliRunner()
QUIET = {"say": lambda m: None}
GRID = f"{ASSETS / 'tiny_detectors.py'}:grid"
DECODED = f"{ASSETS / 'tiny_detectors.py'}:decoded"


@pytest.fixture(scope="module")
def grid_weights(tmp_path_factory):
    from tests_helpers import load_asset

    path = tmp_path_factory.mktemp("grid") / "grid.pt"
    torch.save({"state_dict": load_asset("tiny_detectors.py").grid().state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def demo_as_user_code(tmp_path_factory):
    """The embedded detector's weights as a plain state dict, and a user file that builds the network from its
    architecture (here Ultralytics' DetectionModel, called as ordinary code; orinflow sees only a factory)."""
    folder = tmp_path_factory.mktemp("user")
    model = torch.load(DEMO_MODEL, weights_only=False)["model"]
    torch.save(model.float().state_dict(), folder / "weights.pt")
    (folder / "arch.json").write_text(json.dumps(model.yaml))
    (folder / "my_detector.py").write_text(
        "import json, pathlib\n"
        "from ultralytics.nn.tasks import DetectionModel\n\n"
        "def build():\n"
        "    cfg = json.loads((pathlib.Path(__file__).parent / 'arch.json').read_text())\n"
        "    return DetectionModel(cfg, nc=3, verbose=False)\n")
    return folder


def test_user_detector_scores_as_the_same_weights_loaded_by_ultralytics(demo_as_user_code, demo_onnx, tiny_shapes,
                                                                         tmp_path):
    arch = f"{demo_as_user_code / 'my_detector.py'}:build"
    weights = demo_as_user_code / "weights.pt"
    loaded = orinflow.load(weights, arch=arch, head="yolov8", names="circle,square,triangle", imgsz=256)
    assert loaded.family == "custom" and loaded.processing.names == {0: "circle", 1: "square", 2: "triangle"}
    exported = orinflow.export(weights, arch=arch, head="yolov8", names="circle,square,triangle", imgsz=256,
                               output=tmp_path / "mine.onnx")
    assert exported["parity"]["max_abs_diff"] <= exported["parity"]["limit"]
    mine = orinflow.evaluate_many([weights, tmp_path / "mine.onnx"], tiny_shapes, runs=0, arch=arch, head="yolov8",
                            names="circle,square,triangle", imgsz=256, **QUIET)
    theirs = orinflow.evaluate(demo_onnx, tiny_shapes, runs=0, **QUIET)["metrics"]["mAP50-95"]
    assert theirs > 0.3  # a trained detector, so agreement means something
    assert all(abs(r["metrics"]["mAP50-95"] - theirs) <= 0.001 for r in mine)


def test_grid_detector_goes_through_every_route_from_the_cli(grid_weights, tiny_shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("ORINFLOW_WORKSPACE", str(tmp_path / "ws"))
    model = ["-m", str(grid_weights), "--arch", GRID, "--head", "yolox", "--names", "circle,square,triangle",
             "--imgsz", "64"]
    data = ["--yaml", str(tiny_shapes)]
    train = [*data, "--epochs", "1", "--max-steps", "1", "--batch", "4", "--calib-images", "4", "--runs", "0"]
    commands = {
        "export": ["export", *model, "-o", str(tmp_path / "grid.onnx")],
        "ptq": ["ptq", *model, *data, "-n", "8", "--methods", "max", "--targets", "tensorrt,cpu", "--runs", "0",
                "-o", str(tmp_path / "ptq")],
        "qat": ["qat", *model, *train, "-o", str(tmp_path / "qat" / "grid_qat.onnx")],
        "sparsify": ["sparsify", *model, *[a for a in train if a not in ("--runs", "0")],
                     "-o", str(tmp_path / "sat" / "grid_sparse.onnx")],
        "sparse-qat": ["sparse-qat", *model, *data, "--sat-epochs", "1", "--qat-epochs", "1", "--qat-mode", "int8",
                       "--max-steps", "1",
                       "--batch", "4", "--calib-images", "4", "--runs", "0", "-o", str(tmp_path / "sq" / "g.onnx")],
        "evaluate": ["evaluate", *model, *data, "--runs", "0"],
    }
    for name, args in commands.items():
        result = runner.invoke(app, args)
        assert result.exit_code == 0, f"{name}: {result.output}"
    for path in ("grid.onnx", "qat/grid_qat.onnx", "sat/grid_sparse.onnx", "sq/g.onnx"):
        processing = orinflow.load(tmp_path / path).processing
        assert (processing.head, processing.channels, processing.names[2]) == ("grid_obj_scores", "bgr", "triangle")
    inspected = orinflow.inspect(tmp_path / "sq" / "g.onnx")
    assert inspected["qdq_report"]["quantized_compute_nodes"] > 0 and inspected["sparsity"]["sparse_layers"] > 0


def test_adopted_yolox_onnx_agrees_with_the_pytorch_module(grid_weights, tiny_shapes, tmp_path):
    """An ONNX of the same network written by plain torch.onnx (no metadata), adopted as yolox, detects the same
    boxes as the module loaded with --arch: YOLOX's preprocessing (BGR 0..255) and grid decode on both sides."""
    from orinflow.data import load_dataset
    from orinflow.evaluate.accuracy import predictions
    from orinflow.runtime import make_runner
    from tests_helpers import load_asset

    module = load_asset("tiny_detectors.py").grid().eval()
    torch.onnx.export(module, torch.zeros(1, 3, 64, 64), tmp_path / "yolox.onnx", dynamo=False,
                      input_names=["images"], output_names=["output"])
    with pytest.raises(OrinflowError, match="one row per grid cell: say --head yolox"):
        orinflow.adopt(tmp_path / "yolox.onnx", output=tmp_path / "guess.onnx")
    record = orinflow.adopt(tmp_path / "yolox.onnx", head="yolox", names="circle,square,triangle",
                            output=tmp_path / "adopted.onnx")
    assert record["input"] == "letterbox BGR 0..255"
    images = load_dataset(tiny_shapes, "val").images
    found = []
    for model in (orinflow.load(tmp_path / "adopted.onnx"),
                  orinflow.load(grid_weights, arch=GRID, head="yolox", names="a,b,c", imgsz=64)):
        found.append([dets for _, _, dets in predictions(make_runner(model), model.processing, images, conf=0.3)])
    assert sum(len(d.boxes) for d in found[0]) > 0
    for onnx_dets, torch_dets in zip(*found):
        np.testing.assert_allclose(onnx_dets.boxes, torch_dets.boxes, atol=1e-3)
        np.testing.assert_array_equal(onnx_dets.classes, torch_dets.classes)


def test_grid_decode_matches_the_networks_own_decode(grid_weights):
    """--head yolox decodes grid-relative rows to the boxes the same network decodes itself (--head yolov5)."""
    from orinflow.models.processing import decode_grid

    x = torch.rand(2, 3, 64, 96)
    raw = [orinflow.load(grid_weights, arch=arch, head=head, imgsz=64).module(x).detach()
           for arch, head in ((GRID, "yolox"), (DECODED, "yolov5"))]
    torch.testing.assert_close(decode_grid(raw[0], (64, 96)), raw[1], atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"head": "yolov8"}, "--head yolov8 expects an output of shape (batch, 4 + classes, anchors), but this model's "
                         "is [1, 84, 8]"),
    ({"head": "end2end"}, "--head end2end expects"),
    ({"head": "yolox", "names": "a,b"}, "the model predicts 3 classes but --names gives 2"),
    ({"head": "ssd"}, "unknown --head 'ssd'"),
    ({"names": "a,b,c"}, "name the output layout"),
    ({"head": "yolox", "arch": "resnet18"}, "a detector is your own code"),
    ({"head": "yolox", "arch": f"{ASSETS / 'tiny_detectors.py'}:broken"}, "the factory's own error"),
    ({"head": "yolox", "std": "0,1,1"}, "--std must be positive"),
])
def test_bad_detector_options_are_one_clear_line(grid_weights, kwargs, message):
    options = {"arch": GRID, "imgsz": 64} | kwargs
    with pytest.raises(OrinflowError, match=None) as error:
        orinflow.load(grid_weights, **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_head_without_arch_points_to_adopt(demo_onnx):
    with pytest.raises(OrinflowError, match="orinflow adopt"):
        orinflow.load(demo_onnx, head="yolov8")
