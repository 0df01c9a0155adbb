"""Route 2, quantization-aware training with NVIDIA ModelOpt, exported as Q/DQ ONNX.

Fake quantizers go on every Conv/Linear (per-channel weights, per-tensor activations),
calibrated on real images, then the model is fine-tuned with the quantizers in the loop.
The decode of a detector head is plain tensor arithmetic, not a module, so it stays in
high precision by construction; the DFL projection conv is excluded by name pattern.

Losses: distillation from the FP32 model on the raw head outputs for any family
(`distill=True`), which needs no labels; and the family's own label loss (`labels`):
cross-entropy for classifiers, Ultralytics' or YOLOv5's detection loss (losses.py).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..data import Dataset, read_image
from ..errors import OrinflowError
from ..io import atomic_path, check_output, write_record
from ..models import ModelAdapter
from ..models.onnx_model import META_FAMILY, META_PROCESSING, META_SOURCE, write_metadata
from ..models.processing import HEAD_ANCHOR_FREE, HEAD_END2END, HEAD_GRID, HEAD_OBJECTNESS, decode_grid
from ..progress import progress
from ..runtime import OrtRunner
from . import distributed, import_quietly, quietly
from .graph import decode_nodes
from .losses import detection_label_loss, input_targets
from .masks import hold_masks
from .report import qdq_report

DFL_PATTERN = "*dfl*"


SCHEDULES = ("constant", "cosine")


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise OrinflowError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


@dataclass
class QATConfig:
    epochs: int = 1
    lr: float = 1e-4
    batch: int = 8
    calib_images: int = 64
    distill: bool = True
    temperature: float = 2.0
    labels: bool | None = None  # the family's label loss; None: on for classifiers, off for detectors
    device: str = "cpu"  # under torchrun: cuda means each rank's own GPU (LOCAL_RANK)
    seed: int = 0
    max_steps: int | None = None  # cap per epoch (quick runs, tests)
    resume: bool = False  # continue from the checkpoint of an interrupted run
    flip: bool = False  # mirror a random half of each batch (teacher, student and labels alike)
    mixup: bool = False  # blend each image with another of its batch (share ~ U(0, 1)); labels of both count
    schedule: str = "constant"  # learning rate: constant, or cosine (decays to 0 over the run)
    # Detectors: also weigh the score term over the teacher's confident anchors (distillation_loss). Pruning turns
    # it on: its student starts far from the teacher, and the background-dominated mean barely moves it.
    foreground: bool = False

    def validate(self) -> None:
        if self.epochs < 0 or self.batch < 1 or self.lr <= 0:
            raise OrinflowError(f"epochs must be >= 0, --batch >= 1 and --lr > 0 (got {self.epochs}, {self.batch}, "
                                f"{self.lr})")
        if self.calib_images < 1:
            raise OrinflowError(f"--calib-images must be >= 1, got {self.calib_images}")
        if self.max_steps is not None and self.max_steps < 1:
            raise OrinflowError(f"--max-steps must be >= 1, got {self.max_steps}")
        check_schedule(self.schedule)

    def fingerprint(self) -> dict:
        """What must match for a checkpoint to be resumed (the epoch count may grow)."""
        return {k: v for k, v in asdict(self).items() if k not in ("epochs", "resume", "device")}


def _quant_config():
    mtq = import_quietly("modelopt.torch.quantization")

    config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    # The DFL projection is decode, not learned compute: keep it in high precision.
    config["quant_cfg"].append({"quantizer_name": DFL_PATTERN, "enable": False})
    return config


def _batches(dataset: Dataset, adapter: ModelAdapter, indices: np.ndarray, batch: int):
    """(images, labels or None, letterbox metas) per batch."""
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        prepared = [adapter.processing.preprocess(read_image(dataset.images[i])) for i in chunk]
        labels = [dataset.labels[i] for i in chunk] if dataset.labels else None
        yield torch.from_numpy(np.stack([p[0] for p in prepared])), labels, [p[1] for p in prepared]


def insert_quantizers(adapter: ModelAdapter, dataset: Dataset, config: QATConfig) -> torch.nn.Module:
    """A copy of the model with calibrated fake quantizers on its Conv/Linear layers (the adapter stays FP32)."""
    mtq = import_quietly("modelopt.torch.quantization")

    module = copy.deepcopy(adapter.export_module()).to(config.device).eval()
    order = np.random.default_rng(config.seed).permutation(len(dataset))[:config.calib_images]

    def forward_loop(model):
        with torch.no_grad():
            for images, _, _ in _batches(dataset, adapter, order, config.batch):
                model(images.to(config.device))

    with quietly():
        return mtq.quantize(module, _quant_config(), forward_loop)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, head: str | None, imgsz: int,
                      temperature: float, foreground: bool = False) -> torch.Tensor:
    """Match the FP32 model's raw outputs: soft labels for scores, confidence-weighted L1 for boxes.

    foreground (detectors): add the score BCE averaged over anchors by the teacher's confidence, as the box term
    is. The plain mean runs over every anchor, nearly all background, so the few objects weigh little in it."""
    if head is None:  # classifier logits
        t = temperature
        return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    if head == HEAD_ANCHOR_FREE:  # (B, 4+nc, N) -> (B, N, 4+nc)
        student, teacher = student.transpose(1, 2), teacher.transpose(1, 2)
        boxes_s, boxes_t, scores_s, scores_t = student[..., :4], teacher[..., :4], student[..., 4:], teacher[..., 4:]
        weight = scores_t.max(-1, keepdim=True).values
    elif head in (HEAD_OBJECTNESS, HEAD_GRID):  # (B, N, 5+nc); grid-relative boxes decoded to pixels first
        if head == HEAD_GRID:
            student, teacher = decode_grid(student, (imgsz, imgsz)), decode_grid(teacher, (imgsz, imgsz))
        boxes_s, boxes_t, scores_s, scores_t = student[..., :4], teacher[..., :4], student[..., 4:], teacher[..., 4:]
        weight = teacher[..., 4:5]
    else:
        raise OrinflowError(f"distillation for head format {head} ({HEAD_END2END}) is not supported yet")
    eps = 1e-6
    box = (weight * (boxes_s - boxes_t).abs() / imgsz).sum() / weight.sum().clamp_min(eps)
    per_anchor = F.binary_cross_entropy(scores_s.clamp(eps, 1 - eps), scores_t.clamp(0, 1),
                                        reduction="none").mean(-1, keepdim=True)
    loss = box + per_anchor.mean()
    if foreground:
        loss = loss + (weight * per_anchor).sum() / weight.sum().clamp_min(eps)
    return loss


def train(adapter: ModelAdapter, student: torch.nn.Module, teacher: torch.nn.Module, dataset: Dataset,
          config: QATConfig, say=print, checkpoint: Path | None = None,
          after_step: Callable[[], None] | None = None) -> list[float]:
    """Fine-tune the student; BatchNorm statistics stay frozen (eval mode).

    With `checkpoint`, the state is saved after every epoch; `config.resume` continues from it.
    `after_step` runs after each optimiser step (route 4 re-applies the 2:4 masks there).
    """
    teacher = teacher.to(config.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = list(student.parameters())
    for p in params:  # checkpoints often store frozen weights
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    objective = Objective(adapter, student, teacher, config)
    losses = _resume(student, optimizer, config, checkpoint, say)
    checkpoint = checkpoint if distributed.is_main() else None  # rank 0 writes, every rank resumes
    rng = np.random.default_rng(config.seed)
    try:
        for epoch in range(config.epochs):
            order = rng.permutation(len(dataset))  # drawn every epoch, so a resumed run sees the same order
            if epoch >= len(losses):
                losses.append(_epoch(adapter, objective, dataset, config, order, epoch, optimizer, after_step))
                say(f"epoch {epoch + 1}/{config.epochs}: mean loss {losses[-1]:.5f}")
                if checkpoint:
                    _save_checkpoint(checkpoint, student, optimizer, config, losses)
    except KeyboardInterrupt:
        if checkpoint and losses:
            say(f"interrupted: {len(losses)} epoch(s) saved in {checkpoint}; run again with --resume to continue")
        raise
    finally:
        objective.close()
    distributed.check_in_sync(student)
    return losses


def _epoch(adapter, objective, dataset, config: QATConfig, order, epoch: int, optimizer, after_step) -> float:
    """One pass over `order`; returns the mean loss."""
    order = distributed.shard(order)
    steps = (len(order) + config.batch - 1) // config.batch
    if config.max_steps:
        steps = min(steps, config.max_steps)
        order = order[:steps * config.batch]
    total = 0.0
    batches = progress(_batches(dataset, adapter, order, config.batch), f"epoch {epoch + 1}/{config.epochs}",
                       total=steps)
    for step, (images, labels, metas) in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, (epoch * steps + step) / (config.epochs * steps))
        loss = objective(images.to(config.device), labels, metas)
        optimizer.zero_grad()
        loss.backward()
        distributed.average_gradients(optimizer.param_groups[0]["params"])
        optimizer.step()
        if after_step:
            after_step()
        total += loss.item()
    return distributed.mean_across_ranks(total / max(steps, 1), images.device)


def learning_rate(config: QATConfig, progress_share: float) -> float:
    """The rate at this share of the run (a pure function of it, so a resumed run follows the same curve)."""
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * progress_share))
    return config.lr


def uses_labels(adapter: ModelAdapter, config: QATConfig) -> bool:
    return adapter.task == "classify" if config.labels is None else config.labels


class Objective:
    """One step's loss: distillation from the FP32 teacher and/or the family's own label loss."""

    def __init__(self, adapter: ModelAdapter, student: torch.nn.Module, teacher: torch.nn.Module, config: QATConfig):
        self.adapter, self.student, self.teacher, self.config = adapter, student, teacher, config
        self.labels = uses_labels(adapter, config)
        self.detection_loss = None
        if self.labels and adapter.task == "detect":
            self.detection_loss = detection_label_loss(adapter.family, student.module)

        self.rng = np.random.default_rng(config.seed + 1)

    def close(self) -> None:
        """Leave the student as it came: a loss that hooks into the model takes its state back out."""
        if hasattr(self.detection_loss, "close"):
            self.detection_loss.close()

    def __call__(self, images: torch.Tensor, labels, metas) -> torch.Tensor:
        flipped = torch.from_numpy(self.rng.random(len(images)) < 0.5 if self.config.flip
                                   else np.zeros(len(images), bool))
        if flipped.any():
            images = images.clone()
            images[flipped] = images[flipped].flip(-1)
        partner, share = self._mixing(len(images), images.device)
        if partner is not None:
            weight = share.view(-1, 1, 1, 1)
            images = weight * images + (1 - weight) * images[partner]
        outputs = self.student.module(images)  # beneath RawOutput: Ultralytics heads add their training outputs
        first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        processing = self.adapter.processing
        loss = torch.zeros((), device=images.device)
        if self.config.distill:
            with torch.no_grad():
                target = self.teacher(images)
            loss = distillation_loss(first, target, processing.head, processing.imgsz[0], self.config.temperature,
                                     self.config.foreground)
        if self.labels:
            if labels is None:
                raise OrinflowError("the label loss needs a labelled dataset; train with --distill --no-labels")
            if self.detection_loss is None:
                loss = loss + _class_loss(first, torch.as_tensor(labels, device=images.device), partner, share)
            else:
                targets = input_targets(labels, metas, processing.imgsz)
                mirrored = flipped[targets[:, 0].long()]
                targets[mirrored, 2] = 1 - targets[mirrored, 2]  # x centre, normalised to the input
                if partner is not None:  # a blended image holds both images' objects (as YOLO's own mixup)
                    targets = torch.cat([targets, _moved_to_partners(targets, partner)])
                    targets = targets[targets[:, 0].argsort(stable=True)]  # Ultralytics' loss reads them by image
                loss = loss + self.detection_loss(outputs, targets)
        return loss

    def _mixing(self, count: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """With --mixup: each image's partner in the batch and the image's own share of the blend."""
        if not self.config.mixup:
            return None, None
        partner = torch.from_numpy(self.rng.permutation(count)).to(device)
        share = torch.from_numpy(self.rng.random(count).astype(np.float32)).to(device)
        return partner, share


def _class_loss(logits: torch.Tensor, labels: torch.Tensor, partner, share) -> torch.Tensor:
    if partner is None:
        return F.cross_entropy(logits, labels)
    own = F.cross_entropy(logits, labels, reduction="none")
    other = F.cross_entropy(logits, labels[partner], reduction="none")
    return (share * own + (1 - share) * other).mean()


def _moved_to_partners(targets: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Image j's target rows, re-addressed to the image i that blends j in (partner[i] == j)."""
    blended_into = torch.argsort(partner.cpu()).to(targets.device)
    moved = targets.clone()
    moved[:, 0] = blended_into[targets[:, 0].long()].to(targets.dtype)
    return moved


def _save_checkpoint(path: Path, student, optimizer, config: QATConfig, losses: list[float]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(), "losses": losses,
                    "config": config.fingerprint()}, tmp)


def _resume(student, optimizer, config: QATConfig, checkpoint: Path | None, say) -> list[float]:
    """Losses of the epochs already done: none, unless resuming from a matching checkpoint."""
    if not config.resume:
        return []
    if checkpoint is None or not checkpoint.exists():
        raise OrinflowError(f"--resume: no checkpoint at {checkpoint} (it is written after each epoch)")
    try:
        state = torch.load(checkpoint, map_location=config.device, weights_only=True)
    except Exception as e:
        raise OrinflowError(f"--resume: {checkpoint} is not a readable orinflow checkpoint ({type(e).__name__})") from e
    # a setting added since the checkpoint was written reads as its default, which that run used
    saved = {**QATConfig().fingerprint(), **state.get("config", {})}
    if saved != config.fingerprint():
        changed = sorted(k for k, v in config.fingerprint().items() if saved.get(k) != v)
        raise OrinflowError(f"--resume: {checkpoint} was written with different settings ({', '.join(changed)})")
    student.load_state_dict(state["student"])
    optimizer.load_state_dict(state["optimizer"])
    say(f"resumed from {checkpoint} after epoch {len(state['losses'])}")
    return list(state["losses"])


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
        with quietly(), torch.no_grad():
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


def checkpoint_path(output: Path, stage: str) -> Path:
    """Where a training stage of `output` keeps its per-epoch checkpoint (for --resume)."""
    return output.with_name(f"{output.stem}.{stage}.pt")


def check_trainable(adapter: ModelAdapter, config: QATConfig, dataset: Dataset | None = None) -> None:
    """What training would refuse, said before anything is written."""
    config.validate()
    if dataset is not None and uses_labels(adapter, config) and dataset.task != adapter.task:
        raise OrinflowError(f"the label loss needs {adapter.task} labels, which {dataset.name} does not have; train "
                            "with --distill --no-labels")
    if adapter.task == "detect" and adapter.processing.head == HEAD_END2END:
        raise OrinflowError("fine-tuning NMS-free (end-to-end) heads is not supported yet")
    if not config.distill and not uses_labels(adapter, config):
        raise OrinflowError("nothing to train on: use --distill, --labels, or both")


def run_qat(adapter: ModelAdapter, dataset: Dataset, config: QATConfig, output: Path, say=print,
            teacher: torch.nn.Module | None = None, masks: dict | None = None) -> dict:
    """Route 2 (and the QAT stage of route 4, which passes the dense teacher and the 2:4 masks to hold)."""
    check_output(output, (".onnx",), [adapter.source], command="qat")
    check_trainable(adapter, config, dataset)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    teacher = adapter.export_module() if teacher is None else teacher  # FP32; the student is a quantized copy
    student = insert_quantizers(adapter, dataset, config)
    say(f"fake quantizers inserted and calibrated on {min(config.calib_images, len(dataset))} images")
    after_step = hold_masks(student, masks) if masks else None
    losses = train(adapter, student, teacher, dataset, config, say, checkpoint_path(output, "qat"), after_step)
    if not distributed.is_main():
        return {"rank": distributed.rank(), "losses": losses}  # rank 0 exports and records
    probe = adapter.processing.preprocess(read_image(dataset.images[0]))[0][None]
    parity = export_qdq(adapter, student, probe, output)
    exported = onnx.load(str(output))
    decode = set(decode_nodes(exported)) if adapter.task == "detect" else set()
    record = {"command": "qat", "route": "qat", "model": str(output), "source": adapter.source,
              "config": asdict(config), "processes": distributed.world_size(), "losses": losses, "parity": parity,
              "qdq_report": qdq_report(exported, "tensorrt", "int8", decode),
              "seconds": round(time.perf_counter() - started, 1)}
    write_record(output, record)
    return record
