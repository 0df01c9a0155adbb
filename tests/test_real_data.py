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
def yolov5n_scores(yolov5n, yolov5n_coco):
    adapter, onnx_model = yolov5n
    coco128 = shared_path("data", "coco128", "coco128.yaml")
    return {"coco128": tuple(evaluate_model(m, coco128, "val", NO_LATENCY)["metrics"]["mAP50-95"]
                             for m in (adapter, onnx_model)),
            "coco-val-dev": (yolov5n_coco[1]["mAP50-95"],)}  # ONNX only: PyTorch's agreement is shown on coco128


@pytest.fixture(scope="module")
def yolov5n_coco(yolov5n):
    """The ONNX model on coco-val-dev: its detections and ground truth in COCO form, and the YOLOv5-style metrics."""
    from orinflow.data import load_dataset
    from orinflow.evaluate.accuracy import evaluate_detection
    from orinflow.evaluate.coco import CocoCollector
    from orinflow.runtime import OrtRunner

    onnx_model = yolov5n[1]
    data = load_dataset(shared_path("data", "coco-val-dev", "coco-val-dev.yaml"), "val")
    collector = CocoCollector(onnx_model.processing.names)
    metrics = evaluate_detection(OrtRunner(onnx_model.path), onnx_model.processing, data, coco=collector)
    return collector, metrics


def test_yolov5n_coco_metric_on_coco_val_dev(yolov5n_coco):
    """COCO's AP lies within 0.01 of the YOLOv5-style mAP50-95 (measured 0.2912 against 0.2903), and the two
    COCO libraries agree to 1e-4 on every figure."""
    from orinflow.evaluate.coco import COCO_KEYS, coco_metrics

    collector, metrics = yolov5n_coco
    fast = coco_metrics(collector.ground_truth(), collector.results, "faster-coco-eval")
    reference = coco_metrics(collector.ground_truth(), collector.results, "pycocotools")
    assert abs(fast["AP"] - metrics["mAP50-95"]) <= 0.01
    assert all(abs(fast[k] - reference[k]) <= 1e-4 for k in COCO_KEYS), (fast, reference)
    assert 0 < fast["APs"] < fast["APm"] < fast["APl"]  # small objects are the hard ones


def test_yolov5n_pytorch_and_onnx_agree(yolov5n_scores):
    torch_map, onnx_map = yolov5n_scores["coco128"]
    assert abs(torch_map - onnx_map) <= 0.002
    assert torch_map > YOLOV5N_REFERENCE["coco128"] - 0.03  # a broken model or evaluator reads far lower


@pytest.mark.parametrize("name", list(YOLOV5N_REFERENCE))
def test_yolov5n_matches_reference_within_0_01(yolov5n_scores, name):
    """yolov5's val.py figures (rectangular batches); orinflow's square letterbox lands within 0.01."""
    for score in yolov5n_scores[name]:
        assert abs(score - YOLOV5N_REFERENCE[name]) <= 0.01


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
    from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx

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


def test_yolov5_backbone_and_neck_match_ultralytics_implementation():
    """orinflow's own YOLOv5 modules against Ultralytics' independent Conv/C3/SPPF, same weights."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    from orinflow.models.base import torch_load
    from orinflow.models.yolov5 import YOLOv5Unpickler

    original = torch_load(shared_path("weights", "yolov5n.pt"), YOLOv5Unpickler)["model"].float().eval()
    reference = DetectionModel("yolov5n.yaml", nc=80, verbose=False).eval()
    theirs = reference.state_dict()
    for layer in range(24):  # everything before the (different) detection head
        ours = [(k, v) for k, v in original.state_dict().items() if k.startswith(f"model.{layer}.")]
        keys = [k for k in theirs if k.startswith(f"model.{layer}.")]
        assert len(ours) == len(keys)
        for (_, value), key in zip(ours, keys):
            theirs[key] = value.clone()
    reference.load_state_dict(theirs)

    def features(model, x):
        saved = []
        for layer in model.model[:24]:
            if layer.f != -1:
                x = saved[layer.f] if isinstance(layer.f, int) else [x if j == -1 else saved[j] for j in layer.f]
            x = layer(x)
            saved.append(x)
        return [saved[i] for i in (17, 20, 23)]

    image = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        for a, b in zip(features(original, image), features(reference, image)):
            assert torch.allclose(a, b, atol=1e-5)


def test_yolov5n_bundle_infer_matches_evaluate_on_coco8(yolov5n, tmp_path):
    """The Jetson bundle's infer.py (ONNX Runtime backend) gives evaluate's detections on real COCO images."""
    from test_deploy import assert_infer_matches_evaluate

    data = shared_path("data", "coco8", "coco8.yaml")
    assert_infer_matches_evaluate(yolov5n[1].path, data, tmp_path / "bundle", tmp_path)
