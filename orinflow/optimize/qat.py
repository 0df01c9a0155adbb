"""Route 2, quantization-aware training with NVIDIA ModelOpt, exported as Q/DQ ONNX.

Fake quantizers go on every Conv/Linear (per-channel weights, per-tensor activations),
calibrated on real images, then the model is fine-tuned with the quantizers in the loop.
The decode of a detector head is plain tensor arithmetic, not a module, so it stays in
high precision by construction; the DFL projection conv is excluded by name pattern.

Losses: cross-entropy on labels for classifiers; distillation from the FP32 model on the
raw head outputs for any family (`distill=True`), which needs no labels.
"""
from __future__ import annotations

import copy
import io
import time
import warnings
from contextlib import redirect_stdout
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..data import Dataset, read_image
from ..errors import OrinflowError
from ..io import atomic_path, write_json
from ..models import ModelAdapter
from ..models.onnx_model import META_FAMILY, META_PROCESSING, META_SOURCE, write_metadata
from ..models.processing import HEAD_ANCHOR_FREE, HEAD_END2END, HEAD_OBJECTNESS
from ..progress import progress
from ..runtime import OrtRunner
from . import import_quietly
from .graph import decode_nodes
from .report import qdq_report

DFL_PATTERN = "*dfl*"


@dataclass
class QATConfig:
    epochs: int = 1
    lr: float = 1e-4
    batch: int = 8
    calib_images: int = 64
    distill: bool = True
    temperature: float = 2.0
    labels: bool = True  # classifiers: add cross-entropy on the dataset's labels
    device: str = "cpu"
    seed: int = 0
    max_steps: int | None = None  # cap per epoch (quick runs, tests)


def _quant_config():
    mtq = import_quietly("modelopt.torch.quantization")

    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    # The DFL projection is decode, not learned compute: keep it in high precision.
    config["quant_cfg"].append({"quantizer_name": DFL_PATTERN, "enable": False})
    return config


def _batches(dataset: Dataset, adapter: ModelAdapter, indices: np.ndarray, batch: int):
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        images = np.stack([adapter.processing.preprocess(read_image(dataset.images[i]))[0] for i in chunk])
        labels = [dataset.labels[i] for i in chunk] if dataset.labels else None
        yield torch.from_numpy(images), labels


def insert_quantizers(adapter: ModelAdapter, dataset: Dataset, config: QATConfig) -> torch.nn.Module:
    """A copy of the model with calibrated fake quantizers on its Conv/Linear layers (the adapter stays FP32)."""
    mtq = import_quietly("modelopt.torch.quantization")

    module = copy.deepcopy(adapter.export_module()).to(config.device).eval()
    order = np.random.default_rng(config.seed).permutation(len(dataset))[:config.calib_images]

    def forward_loop(model):
        with torch.no_grad():
            for images, _ in _batches(dataset, adapter, order, config.batch):
                model(images.to(config.device))

    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return mtq.quantize(module, _quant_config(), forward_loop)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, head: str | None, imgsz: int,
                      temperature: float) -> torch.Tensor:
    """Match the FP32 model's raw outputs: soft labels for scores, confidence-weighted L1 for boxes."""
    if head is None:  # classifier logits
        t = temperature
        return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    if head == HEAD_ANCHOR_FREE:  # (B, 4+nc, N) -> (B, N, 4+nc)
        student, teacher = student.transpose(1, 2), teacher.transpose(1, 2)
        boxes_s, boxes_t, scores_s, scores_t = student[..., :4], teacher[..., :4], student[..., 4:], teacher[..., 4:]
        weight = scores_t.max(-1, keepdim=True).values
    elif head == HEAD_OBJECTNESS:  # (B, N, 5+nc)
        boxes_s, boxes_t, scores_s, scores_t = student[..., :4], teacher[..., :4], student[..., 4:], teacher[..., 4:]
        weight = teacher[..., 4:5]
    else:
        raise OrinflowError(f"distillation for head format {head} ({HEAD_END2END}) is not supported yet")
    box = (weight * (boxes_s - boxes_t).abs() / imgsz).sum() / weight.sum().clamp_min(1e-6)
    eps = 1e-6
    score = F.binary_cross_entropy(scores_s.clamp(eps, 1 - eps), scores_t.clamp(0, 1))
    return box + score


def train(adapter: ModelAdapter, student: torch.nn.Module, teacher: torch.nn.Module, dataset: Dataset,
          config: QATConfig, say=print) -> list[float]:
    """Fine-tune the fake-quantized student; BatchNorm statistics stay frozen (eval mode)."""
    teacher = teacher.to(config.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = list(student.parameters())
    for p in params:  # checkpoints often store frozen weights
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    rng = np.random.default_rng(config.seed)
    head, imgsz = adapter.processing.head, adapter.processing.imgsz[0]
    losses = []
    for epoch in range(config.epochs):
        order = rng.permutation(len(dataset))
        steps = (len(order) + config.batch - 1) // config.batch
        if config.max_steps:
            steps = min(steps, config.max_steps)
            order = order[:steps * config.batch]
        total = 0.0
        for images, labels in progress(_batches(dataset, adapter, order, config.batch),
                                       f"QAT epoch {epoch + 1}/{config.epochs}", total=steps):
            images = images.to(config.device)
            out = student(images)
            if config.distill:
                with torch.no_grad():
                    target = teacher(images)
                loss = distillation_loss(out, target, head, imgsz, config.temperature)
            else:
                loss = torch.tensor(0.0, device=config.device)
            if adapter.task == "classify" and config.labels and labels is not None:
                loss = loss + F.cross_entropy(out, torch.as_tensor(labels, device=config.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total / max(steps, 1))
        say(f"epoch {epoch + 1}/{config.epochs}: mean loss {losses[-1]:.5f}")
    return losses


def export_qdq(adapter: ModelAdapter, student: torch.nn.Module, probe: np.ndarray, output: Path,
               opset: int = 17) -> dict:
    """Export the fake-quantized model as Q/DQ ONNX with orinflow metadata; check it against PyTorch.

    The two differ a little by design: ModelOpt's fake quantizer clamps to [-127, 127] while
    ONNX QuantizeLinear (and TensorRT) use [-128, 127], so activations beyond the calibrated
    range round differently. The check therefore bounds the 99th percentile of the
    difference on a real image and records the maximum.
    """
    student = student.cpu().eval()
    dummy = torch.zeros(adapter.input_shape)
    with atomic_path(output) as tmp:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(student, (dummy,), str(tmp), opset_version=opset, input_names=["images"],
                              output_names=["output0"], dynamo=False)
        model = onnx.load(str(tmp))
        write_metadata(model, {META_PROCESSING: adapter.processing.to_json(), META_FAMILY: adapter.family,
                               META_SOURCE: adapter.source, "orinflow.quantization": '{"route": "qat"}'})
        onnx.save(model, str(tmp))
        with torch.no_grad():
            reference = student(torch.from_numpy(probe)).numpy()
        diff = np.abs(OrtRunner(tmp).run(probe)[0] - reference)
        scale = float(np.abs(reference).max()) or 1.0
        p99 = float(np.percentile(diff, 99))
        if not np.isfinite(diff).all() or p99 > 0.05 * max(1.0, scale):
            raise OrinflowError(f"QAT export is broken: 99th percentile |PyTorch - ONNX| = {p99:.3g} "
                                f"(outputs up to {scale:.3g})")
    return {"max_abs_diff": float(diff.max()), "p99_abs_diff": p99, "mean_abs_diff": float(diff.mean()),
            "output_max_abs": scale}


def run_qat(adapter: ModelAdapter, dataset: Dataset, config: QATConfig, output: Path, say=print) -> dict:
    if adapter.task == "detect" and adapter.processing.head == HEAD_END2END:
        raise OrinflowError("QAT of NMS-free (end-to-end) heads is not supported yet")
    if not config.distill and (adapter.task != "classify" or not config.labels):
        raise OrinflowError("nothing to train on: detectors need --distill (label losses for detectors are not "
                            "built yet); classifiers need --distill or --labels")
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    teacher = adapter.export_module()  # the FP32 model; the student is a quantized copy
    student = insert_quantizers(adapter, dataset, config)
    say(f"fake quantizers inserted and calibrated on {min(config.calib_images, len(dataset))} images")
    losses = train(adapter, student, teacher, dataset, config, say)
    probe = adapter.processing.preprocess(read_image(dataset.images[0]))[0][None]
    parity = export_qdq(adapter, student, probe, output)
    exported = onnx.load(str(output))
    decode = set(decode_nodes(exported)) if adapter.task == "detect" else set()
    record = {"command": "qat", "route": "qat", "model": str(output), "source": adapter.source,
              "config": asdict(config), "losses": losses, "parity": parity,
              "qdq_report": qdq_report(exported, "tensorrt", "int8", decode),
              "seconds": round(time.perf_counter() - started, 1)}
    write_json(output.with_suffix(".json"), record)
    return record
