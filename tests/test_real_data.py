"""Checks on the real data in ../shared; each skips with the reason when it is absent."""
import pytest

from conftest import ASSETS, shared_path
from orinflow.evaluate import EvalOptions, evaluate_model
from orinflow.export import export_onnx
from orinflow.models import load_model

NO_LATENCY = EvalOptions(measure_latency=False, batch=8)
# Reference mAP50-95 from yolov5's val.py (../shared/data/README.md).
YOLOV5N_REFERENCE = {"coco128": 0.351, "coco-val-dev": 0.288}


@pytest.fixture(scope="module")
def yolov5n(tmp_path_factory):
    adapter = load_model(shared_path("weights", "yolov5n.pt"), imgsz=640)
    onnx_model = load_model(export_onnx(adapter, tmp_path_factory.mktemp("v5") / "yolov5n.onnx").path)
    return adapter, onnx_model


@pytest.fixture(scope="module")
def yolov5n_scores(yolov5n):
    adapter, onnx_model = yolov5n
    scores = {}
    for name in YOLOV5N_REFERENCE:
        data = shared_path("data", name, f"{name}.yaml")
        scores[name] = tuple(evaluate_model(m, data, "val", NO_LATENCY)["metrics"]["mAP50-95"]
                             for m in (adapter, onnx_model))
    return scores


@pytest.mark.parametrize("name", list(YOLOV5N_REFERENCE))
def test_yolov5n_pytorch_and_onnx_agree(yolov5n_scores, name):
    torch_map, onnx_map = yolov5n_scores[name]
    assert abs(torch_map - onnx_map) <= 0.002
    assert torch_map > YOLOV5N_REFERENCE[name] - 0.03  # a broken model or evaluator reads far lower


@pytest.mark.xfail(strict=True, reason="orinflow reads about 0.016-0.024 below yolov5 val.py's mAP50-95 "
                                       "(0.335 vs 0.351, 0.264 vs 0.288); cause not yet found, see docs/accuracy.md")
@pytest.mark.parametrize("name", list(YOLOV5N_REFERENCE))
def test_yolov5n_matches_reference_within_0_01(yolov5n_scores, name):
    torch_map, onnx_map = yolov5n_scores[name]
    assert abs(torch_map - YOLOV5N_REFERENCE[name]) <= 0.01
    assert abs(onnx_map - YOLOV5N_REFERENCE[name]) <= 0.01


def test_resnet20_cifar10_top1_pytorch_and_onnx(tmp_path):
    weights = shared_path("weights", "resnet20-cifar10.th")
    data = shared_path("data", "cifar10-test-dev")
    adapter = load_model(weights, arch=f"{ASSETS / 'resnet_cifar.py'}:resnet20", imgsz=32)
    onnx_model = load_model(export_onnx(adapter, tmp_path / "resnet20.onnx").path)
    top1 = [evaluate_model(m, data, options=NO_LATENCY)["metrics"]["top1"] for m in (adapter, onnx_model)]
    assert 0.78 <= top1[0] <= 0.84  # about 0.81 on the JPEG re-saves
    assert abs(top1[0] - top1[1]) <= 0.002


def test_yolo26n_yaml_exports_and_evaluates_on_coco8(tmp_path):
    data = shared_path("data", "coco8", "coco8.yaml")
    from orinflow.data import read_image

    image = read_image(sorted((data.parent / "images" / "val").iterdir())[0])
    adapter = load_model("yolo26n.yaml", imgsz=640)
    result = export_onnx(adapter, tmp_path / "yolo26n.onnx", parity_image=image)
    assert result.record["parity"]["max_abs_diff"] < 1e-3
    records = [evaluate_model(m, data, "val", NO_LATENCY) for m in (adapter, load_model(result.path))]
    assert all(r["images"] == 4 and 0 <= r["metrics"]["mAP50-95"] <= 1 for r in records)


def test_resnet20_int8_both_targets_within_half_a_point(tmp_path):
    from orinflow.data import load_dataset
    from orinflow.data.calibration import build_calibration
    from orinflow.optimize.ptq import QuantizeSpec, quantize_onnx

    weights = shared_path("weights", "resnet20-cifar10.th")
    data = shared_path("data", "cifar10-test-dev")
    adapter = load_model(weights, arch=f"{ASSETS / 'resnet_cifar.py'}:resnet20", imgsz=32)
    fp32 = load_model(export_onnx(adapter, tmp_path / "resnet20.onnx").path)
    dataset = load_dataset(data)
    # cifar10-test-dev is the only CIFAR data here: calibration draws 256 of its images.
    calib = build_calibration(fp32.processing, dataset, 256)
    base = evaluate_model(fp32, dataset, options=NO_LATENCY)["metrics"]["top1"]
    for target in ("tensorrt", "cpu"):
        record = quantize_onnx(fp32, calib, QuantizeSpec(target=target), tmp_path / f"r20_{target}.onnx")
        top1 = evaluate_model(load_model(record["model"]), dataset, options=NO_LATENCY)["metrics"]["top1"]
        assert base - top1 <= 0.005, (target, base, top1)
