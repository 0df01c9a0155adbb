"""Route 2 starts where route 1 ended (optimize/quantize/qat_start.py, qat_select.py): QAT from a Q/DQ model keeps
its scales, float groups and placement, reproduces it untrained, and never writes a model below it."""
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from test_yolov5_modules import v7_checkpoint  # noqa: F401 (a fixture)
from orinflow.cli import app
from orinflow.data import load_dataset, read_image
from orinflow.errors import OrinflowError
from orinflow.evaluate import EvalOptions, evaluate_model
from orinflow.export import export_onnx
from orinflow.models import load_model
from orinflow.optimize.quantize.groups import dequantize_groups, quantization_groups
from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx
from orinflow.optimize.quantize.qat import insert_quantizers, run_qat
from orinflow.optimize.quantize.qat_start import pair_start, read_start
from orinflow.optimize.train.config import QATConfig
from orinflow.runtime import OrtRunner

UNTRAINED = QATConfig(epochs=0, batch=4, calib_images=4)


def quantized_tensors(path) -> list[str]:
    """What each QuantizeLinear quantizes, and with which scale value: the placement."""
    model = onnx.load(str(path))
    values = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    return sorted(f"{n.input[0]}@{values[n.input[1]].ravel()[:3].tolist()}" for n in model.graph.node
                  if n.op_type == "QuantizeLinear")


@pytest.fixture(scope="module")
def budgeted_start(demo_int8, tmp_path_factory):
    """The embedded detector's max INT8 model with two quantization groups in float, as a budget leaves them."""
    full = onnx.load(demo_int8("max", "tensorrt")["model"])
    groups = quantization_groups(full)
    path = tmp_path_factory.mktemp("start") / "budgeted.onnx"
    onnx.save(dequantize_groups(full, groups[1:3]), str(path))
    return path


def score(path, data) -> float:
    return evaluate_model(load_model(path), data, options=EvalOptions(measure_latency=False))["metrics"]["mAP50-95"]


def test_untrained_qat_is_the_budgeted_start_with_its_placement(demo_adapter, budgeted_start, tiny_shapes, tmp_path):
    train = load_dataset(tiny_shapes, "train")
    record = run_qat(demo_adapter, train, UNTRAINED, tmp_path / "q.onnx", budgeted_start, say=lambda m: 0,
                     selection=load_dataset(tiny_shapes, "val"))
    assert quantized_tensors(tmp_path / "q.onnx") == quantized_tensors(budgeted_start)  # same count, tensors, scales
    start = read_start(budgeted_start)
    assert record["start"]["paired_layers"] == len(start.layers) and record["start"]["calibrated_afresh"] == []
    assert record["start"]["float_layers"] == sum(layer.weight_amax is None for layer in start.layers) > 0
    image = demo_adapter.processing.preprocess(read_image(train.images[0]))[0][None]
    assert np.array_equal(OrtRunner(tmp_path / "q.onnx").run(image)[0], OrtRunner(budgeted_start).run(image)[0])
    assert record["selection"]["epoch"] == 0 and len(record["selection"]["scores"]) == 1
    # the paired PyTorch model reproduces the start (the check that refuses a start of other weights)
    fidelity = record["start"]["fidelity"]
    assert fidelity["p99_abs_diff"] < 0.05 * fidelity["output_max_abs"]


def test_qat_never_writes_a_model_below_its_start(demo_adapter, budgeted_start, tiny_shapes, tmp_path):
    """An epoch at a learning rate that wrecks the model: the start is written, and the record says so."""
    train, val = load_dataset(tiny_shapes, "train"), load_dataset(tiny_shapes, "val")
    wrecking = QATConfig(epochs=1, batch=4, calib_images=4, max_steps=2, lr=0.5)
    record = run_qat(demo_adapter, train, wrecking, tmp_path / "q.onnx", budgeted_start, say=lambda m: 0,
                     selection=val)
    scores = [s["mAP50-95"] for s in record["selection"]["scores"]]
    assert len(scores) == 2 and scores[1] < scores[0]
    assert record["selection"]["epoch"] == 0 and record["selection"]["never_beat_start"]
    assert score(tmp_path / "q.onnx", val) == pytest.approx(scores[0])
    assert quantized_tensors(tmp_path / "q.onnx") == quantized_tensors(budgeted_start)
    gentle = QATConfig(epochs=1, batch=4, calib_images=4, max_steps=2, lr=1e-5)
    kept = run_qat(demo_adapter, train, gentle, tmp_path / "g.onnx", budgeted_start, say=lambda m: 0, selection=val)
    best = max(kept["selection"]["scores"], key=lambda s: s["mAP50-95"])
    assert best["mAP50-95"] >= scores[0] and score(tmp_path / "g.onnx", val) == pytest.approx(best["mAP50-95"])


def _pairs_fully(adapter, onnx_path, calib, tmp_path, data) -> None:
    from orinflow.models import load_model as load

    start = tmp_path / "start.onnx"
    quantize_onnx(load(onnx_path), calib, QuantizeSpec(method="max"), start, say=lambda m: 0)
    student = insert_quantizers(adapter, data, UNTRAINED)
    model = read_start(start)
    pairing = pair_start(model, student)
    weighted = [n for n in onnx.load(str(start)).graph.node if n.op_type in ("Conv", "Gemm")]
    assert pairing.first_problem() is None and len(pairing.pairs) == len(model.layers) == len(weighted)


def test_pairing_on_the_detector_and_a_classifier(demo_adapter, demo_int8, tiny_shapes, class_tree, tmp_path):
    from orinflow.data.calibration import build_calibration

    shapes = load_dataset(tiny_shapes, "train")
    student = insert_quantizers(demo_adapter, shapes, UNTRAINED)  # YOLOv8-style
    start = read_start(demo_int8("max", "tensorrt")["model"])
    pairing = pair_start(start, student)
    assert pairing.first_problem() is None and len(pairing.pairs) == len(start.layers) == 64
    module_file = tmp_path / "tiny_cls.py"
    module_file.write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), "
                           "nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), "
                           "nn.Flatten(), nn.Linear(8, 3))\n")  # the export folds the BatchNorm: so does QAT's copy
    classifier = load_model("", arch=f"{module_file}:build", imgsz=32)
    cls_onnx = export_onnx(classifier, tmp_path / "cls.onnx").path
    classes = load_dataset(class_tree)
    _pairs_fully(classifier, cls_onnx, build_calibration(load_model(cls_onnx).processing, classes, 4), tmp_path, classes)


def test_pairing_on_yolov5n(tiny_shapes, tmp_path):
    """The original YOLOv5 (objectness head, the project's own module definitions)."""
    from conftest import shared_path
    from orinflow.data.calibration import build_calibration

    adapter = load_model(shared_path("weights", "yolov5n.pt"), imgsz=160)
    path = export_onnx(adapter, tmp_path / "v5.onnx").path
    shapes = load_dataset(tiny_shapes, "train")
    _pairs_fully(adapter, path, build_calibration(load_model(path).processing, shapes, 4), tmp_path, shapes)


def test_what_does_not_pair_is_refused_or_with_allow_partial_calibrated_afresh(v7_checkpoint, tiny_shapes, tmp_path):
    """YOLOv5 v7's transformer block exports q/k/v and the attention's projection folded into one MatMul weight:
    nothing to pair them with, one-to-one."""
    from orinflow.data.calibration import build_calibration

    adapter = load_model(v7_checkpoint, imgsz=64)
    path = export_onnx(adapter, tmp_path / "v7.onnx").path
    shapes = load_dataset(tiny_shapes, "train")
    start = tmp_path / "start.onnx"
    quantize_onnx(load_model(path), build_calibration(load_model(path).processing, shapes, 4),
                  QuantizeSpec(method="max"), start, say=lambda m: 0)
    with pytest.raises(OrinflowError, match="does not pair with .*MatMul.*--allow-partial"):
        run_qat(adapter, shapes, UNTRAINED, tmp_path / "q.onnx", start)
    record = run_qat(adapter, shapes, UNTRAINED, tmp_path / "q.onnx", start, allow_partial=True, say=lambda m: 0)
    assert record["start"]["calibrated_afresh"] and record["start"]["kept_from_start"]
    assert record["start"]["paired_layers"] == len(read_start(start).layers) - len(record["start"]["kept_from_start"])
    assert quantized_tensors(tmp_path / "q.onnx") == quantized_tensors(start)


def test_a_start_of_another_architecture_or_form_is_refused_in_one_line(demo_int8, tiny_shapes, class_tree,
                                                                         tmp_path):
    module_file = tmp_path / "tiny_cls.py"
    module_file.write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), "
                           "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))\n")
    classifier = load_model("", arch=f"{module_file}:build", imgsz=32)
    with pytest.raises(OrinflowError, match=r"does not pair with .*: module\.model\.0\.conv\.weight") as caught:
        run_qat(classifier, load_dataset(class_tree), UNTRAINED, tmp_path / "q.onnx", demo_int8("max", "tensorrt")["model"])
    assert "\n" not in str(caught.value) and not (tmp_path / "q.onnx").exists()
    demo = load_model(DEMO_MODEL, imgsz=256)
    with pytest.raises(OrinflowError, match="cpu target"):
        run_qat(demo, load_dataset(tiny_shapes, "train"), UNTRAINED, tmp_path / "c.onnx",
                demo_int8("entropy", "cpu")["model"])


def test_qat_cli_from_init_and_its_conflicts(demo_int8, tiny_shapes, tmp_path):
    runner = CliRunner()
    common = ["qat", "-m", str(DEMO_MODEL), "--imgsz", "256", "--yaml", str(tiny_shapes), "--batch", "4", "--runs", "0"]
    start = demo_int8("max", "tensorrt")["model"]
    result = runner.invoke(app, [*common, "--init-from", str(start), "--method", "max", "-o", str(tmp_path / "a.onnx")])
    assert result.exit_code == 2 and "--init-from is the start model" in result.output
    result = runner.invoke(app, [*common, "--init-from", str(start), "--epochs", "0", "-o", str(tmp_path / "b.onnx")])
    assert result.exit_code == 0, result.output
    assert "start: selection mAP50-95" in result.output and "route 2: QAT" in result.output
    assert quantized_tensors(tmp_path / "b.onnx") == quantized_tensors(start)


def test_a_start_for_another_input_and_a_checkpoint_of_another_start_are_refused(demo_int8, budgeted_start, calib,
                                                                                  tiny_shapes, tmp_path):
    """A start quantized at 128 px for the model at 256 px is named before any pairing (it used to fail after the
    pairing, naming a deleted temporary file); --resume refuses a checkpoint trained from another --init-from."""
    import torch

    import orinflow
    from orinflow.optimize.train.config import QATConfig

    small = export_onnx(load_model(DEMO_MODEL, imgsz=128), tmp_path / "s128.onnx").path
    start128 = tmp_path / "start128.onnx"
    quantize_onnx(load_model(small), calib[:, :, :128, :128], QuantizeSpec(method="max"), start128, say=lambda m: 0)
    quiet = dict(epochs=0, batch=4, calib_images=4, runs=0, say=lambda m: None)
    with pytest.raises(OrinflowError, match="made for another input: its stored imgsz is 128x128, the model's is 256"):
        orinflow.qat(DEMO_MODEL, tiny_shapes, imgsz=256, init_from=start128, output=tmp_path / "a.onnx", **quiet)
    assert not (tmp_path / "a.onnx").exists()
    output = tmp_path / "r.onnx"
    other_run = QATConfig(epochs=1, batch=4, calib_images=4, run="another start").fingerprint()
    torch.save({"student": {}, "optimizer": {}, "losses": [0.1], "config": other_run}, output.with_name("r.qat.pt"))
    with pytest.raises(OrinflowError, match="different settings .*the start model"):
        orinflow.qat(DEMO_MODEL, tiny_shapes, imgsz=256, init_from=budgeted_start, output=output, resume=True,
                     **dict(quiet, epochs=2))
