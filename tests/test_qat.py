import json
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from orinflow.cli import app
from orinflow.data import load_dataset
from orinflow.errors import OrinflowError
from orinflow.evaluate import EvalOptions, evaluate_model
from orinflow.models import load_model
from orinflow.optimize.quantize.qat import run_qat
from orinflow.optimize.train.config import QATConfig
from orinflow.optimize.train.objective import distillation_loss
from orinflow.models.processing import HEAD_ANCHOR_FREE, HEAD_OBJECTNESS

TINY_CLASSIFIER = ("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), "
                   "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))\n")
QUICK = QATConfig(epochs=1, batch=4, calib_images=8, max_steps=2, lr=1e-5)


def test_distillation_loss_is_zero_for_identical_outputs_and_grows_with_error():
    teacher = torch.rand(2, 7, 50)
    teacher[:, :4] *= 256
    base = distillation_loss(teacher.clone(), teacher, HEAD_ANCHOR_FREE, 256, 2.0)
    worse = teacher.clone()
    worse[:, :4] += 10
    assert distillation_loss(worse, teacher, HEAD_ANCHOR_FREE, 256, 2.0) > base
    v5 = torch.rand(2, 30, 8)
    assert distillation_loss(v5, v5, HEAD_OBJECTNESS, 256, 2.0) < distillation_loss(v5.flip(1), v5, HEAD_OBJECTNESS,
                                                                                    256, 2.0)
    logits = torch.randn(4, 10)
    assert distillation_loss(logits, logits, None, 32, 2.0).abs() < 1e-6


def test_the_foreground_term_weighs_an_object_as_the_box_term_does_not_as_one_anchor_of_many():
    """One confident anchor among 1,000 background ones whose class scores the student gets wrong: the plain mean
    counts it once in 1,000, the foreground term (pruning's default) as a whole anchor, weighted by confidence."""
    anchors = 1000
    teacher = torch.zeros(1, anchors, 5 + 3)
    teacher[..., 4] = 1e-4  # background objectness
    teacher[0, 0, 4], teacher[0, 0, 5:] = 0.9, torch.tensor([0.9, 0.05, 0.05])
    student = teacher.clone()
    student[0, 0, 5:] = torch.tensor([0.05, 0.9, 0.05])  # the object's class is wrong
    def loss(outputs, foreground=False) -> float:
        return float(distillation_loss(outputs, teacher, HEAD_OBJECTNESS, 64, 2.0, foreground))

    plain, with_foreground, same = loss(student), loss(student, True), loss(teacher, True)
    wrong = float(torch.nn.functional.binary_cross_entropy(student[0, 0, 4:], teacher[0, 0, 4:]))
    right = float(torch.nn.functional.binary_cross_entropy(teacher[0, 0, 4:], teacher[0, 0, 4:]))
    assert plain - loss(teacher) == pytest.approx((wrong - right) / anchors, rel=1e-3)
    assert with_foreground - same > 0.8 * (wrong - right) > 100 * (plain - same)  # not diluted by the background


def test_detector_qat_exports_qdq_with_decode_in_high_precision(demo_adapter, demo_int8, tiny_shapes, tmp_path):
    start = demo_int8("max", "tensorrt")
    record = run_qat(demo_adapter, load_dataset(tiny_shapes, "train"), QUICK, tmp_path / "qat.onnx", start["model"],
                     say=lambda m: 0)
    report = record["qdq_report"]
    assert report["qdq_pairs"] > 0 and report["lint"] == [] and report["decode_nodes_reading_quantized"] == []
    assert report["quantized_compute_nodes"] == start["qdq_report"]["quantized_compute_nodes"]  # the start's
    assert report["quantized_flop_share"] == pytest.approx(start["qdq_report"]["quantized_flop_share"])
    assert len(record["losses"]) == 1 and np.isfinite(record["losses"][0])
    # the adapter itself stays FP32: QAT works on a copy
    assert not any("quantizer" in name for name, _ in demo_adapter.module.named_modules())
    metrics = evaluate_model(load_model(record["model"]), tiny_shapes, options=EvalOptions(measure_latency=False))
    assert metrics["metrics"]["mAP50"] > 0.5


def test_classifier_qat_with_labels_only(class_tree, tmp_path):
    from torch import nn

    module_file = tmp_path / "tiny_cls.py"
    module_file.write_text(TINY_CLASSIFIER)
    adapter = load_model("", arch=f"{module_file}:build", imgsz=32)
    config = QATConfig(epochs=2, batch=4, calib_images=4, distill=False, labels=True, lr=1e-2)
    record = run_qat(adapter, load_dataset(class_tree), config, tmp_path / "cls.onnx", say=lambda m: 0)
    model = onnx.load(record["model"])
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 4  # conv + linear, inputs + weights
    assert record["losses"][1] < record["losses"][0]  # it learns
    assert isinstance(adapter.module[0], nn.Conv2d)


def test_detector_with_no_loss_at_all_is_refused(demo_adapter, tiny_shapes, tmp_path):
    with pytest.raises(OrinflowError, match="--distill, --labels"):
        run_qat(demo_adapter, load_dataset(tiny_shapes, "train"), QATConfig(distill=False), tmp_path / "x.onnx")
    assert not any(tmp_path.iterdir())


def test_qat_cli_end_to_end(tiny_shapes, tmp_path):
    out = tmp_path / "q.onnx"
    result = CliRunner().invoke(app, ["qat", "-m", str(DEMO_MODEL), "--imgsz", "256", "--yaml", str(tiny_shapes),
                                      "--epochs", "1", "--max-steps", "1", "--batch", "4", "--calib-images", "4",
                                      "--runs", "0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and out.with_suffix(".json").exists() and "route 2: QAT" in result.output


def test_interrupted_qat_resumes_from_its_checkpoint(class_tree, tmp_path, monkeypatch):
    """A run stopped after epoch 1 continues at epoch 2 with --resume; other settings are refused."""
    import orinflow.optimize.train.loop as qat

    module_file = tmp_path / "tiny_cls.py"
    module_file.write_text(TINY_CLASSIFIER)
    adapter = load_model("", arch=f"{module_file}:build", imgsz=32)
    data = load_dataset(class_tree)
    config = QATConfig(epochs=2, batch=4, calib_images=4, max_steps=1, distill=False)
    real_epoch = qat._epoch

    def stop_in_second_epoch(adapter, objective, dataset, config, order, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(adapter, objective, dataset, config, order, epoch, *rest)

    monkeypatch.setattr(qat, "_epoch", stop_in_second_epoch)
    messages = []
    with pytest.raises(KeyboardInterrupt):
        run_qat(adapter, data, config, tmp_path / "q.onnx", say=messages.append)
    checkpoint = tmp_path / "q.qat.pt"
    assert checkpoint.exists() and not (tmp_path / "q.onnx").exists()
    assert any("--resume" in m for m in messages)
    monkeypatch.setattr(qat, "_epoch", real_epoch)
    resumed = QATConfig(**{**config.__dict__, "resume": True})
    record = run_qat(adapter, data, resumed, tmp_path / "q.onnx", say=messages.append)
    assert len(record["losses"]) == 2 and any("resumed" in m and "after epoch 1" in m for m in messages)
    with pytest.raises(OrinflowError, match="different settings.*lr"):
        run_qat(adapter, data, QATConfig(**{**resumed.__dict__, "lr": 1.0}), tmp_path / "q.onnx")
    with pytest.raises(OrinflowError, match="no checkpoint"):
        run_qat(adapter, data, resumed, tmp_path / "other.onnx")


def test_qat_data_parallel_under_torchrun(tiny_shapes, tmp_path):
    """Two gloo processes on the CPU: each takes half the images, gradients are averaged, rank 0 exports."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp.onnx"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ORINFLOW_QUIET": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "orinflow.cli", "qat", "-m", str(DEMO_MODEL), "--imgsz", "128", "--yaml", str(tiny_shapes),
               "--epochs", "2", "--batch", "2", "--max-steps", "2", "--calib-images", "4", "--runs", "0",
               "--lr", "1e-4", "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["processes"] == 2 and len(record["losses"]) == 2 and record["qdq_report"]["lint"] == []
    assert result.stdout.count("route 2: QAT") == 1  # one report, from rank 0


def test_cosine_schedule_decays_to_zero_and_constant_holds():
    from orinflow.optimize.train.config import QATConfig
    from orinflow.optimize.train.loop import learning_rate

    cosine, constant = QATConfig(lr=1e-3, schedule="cosine"), QATConfig(lr=1e-3)
    assert [round(learning_rate(cosine, t), 7) for t in (0, 0.5, 1)] == [1e-3, 5e-4, 0]
    assert {learning_rate(constant, t) for t in (0, 0.5, 1)} == {1e-3}


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    """Checkpoints written before --mixup/--schedule existed hold no such keys: they resume as the defaults."""
    import orinflow.optimize.train.loop as qat

    student = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(student.parameters())
    config = QATConfig(resume=True)
    older = {k: v for k, v in config.fingerprint().items() if k not in ("mixup", "schedule")}
    torch.save({"config": older, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                "losses": [0.5]}, tmp_path / "c.pt")
    assert qat._resume(student, optimizer, config, tmp_path / "c.pt", lambda *_: 0) == [0.5]
    with pytest.raises(OrinflowError, match="different settings.*mixup"):
        qat._resume(student, optimizer, QATConfig(resume=True, mixup=True), tmp_path / "c.pt", lambda *_: 0)
