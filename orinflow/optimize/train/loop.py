"""The one training loop that QAT, SAT and pruning share: AdamW with BatchNorm frozen, per-epoch
checkpoints and --resume, data parallel under torchrun (distributed.py), a constant or cosine rate.

Its objective (objective.py) is distillation from the FP32 model on the raw head outputs for any family,
which needs no labels, and/or the family's own label loss (losses.py).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import distributed
from ...data import Dataset, read_image
from ...errors import OrinflowError
from ...io import atomic_path
from ...models import ModelAdapter
from ...models.processing import HEAD_END2END
from ...progress import progress
from .config import QATConfig
from .objective import Objective, uses_labels


def batches(dataset: Dataset, adapter: ModelAdapter, indices: np.ndarray, batch: int):
    """(images, labels or None, letterbox metas, each object's polygon or keypoints or None) per batch."""
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        prepared = [adapter.processing.preprocess(read_image(dataset.images[i])) for i in chunk]
        labels = [dataset.labels[i] for i in chunk] if dataset.labels else None
        extras = dataset.segments or dataset.keypoints
        outlines = [extras[i] for i in chunk] if extras else None
        yield torch.from_numpy(np.stack([p[0] for p in prepared])), labels, [p[1] for p in prepared], outlines



def first_images(adapter: ModelAdapter, dataset: Dataset, images: int, batch: int = 8):
    """The first `images` images of `dataset`, preprocessed, in batches (statistics and probes, not training)."""
    for batch_images, *_ in batches(dataset, adapter, list(range(min(images, len(dataset)))), batch):
        yield batch_images

def train(adapter: ModelAdapter, student: torch.nn.Module, teacher: torch.nn.Module, dataset: Dataset,
          config: QATConfig, say=print, checkpoint: Path | None = None,
          after_step: Callable[[], None] | None = None,
          after_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Fine-tune the student; BatchNorm statistics stay frozen (eval mode).

    With `checkpoint`, the state is saved after every epoch; `config.resume` continues from it.
    `after_step` runs after each optimiser step (route 4 re-applies the 2:4 masks there); `after_epoch(n)` after
    each epoch trained in this run (QAT scores the model there).
    """
    teacher = teacher.to(config.device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = list(student.parameters())
    for p in params:  # checkpoints often store frozen weights
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    objective = Objective(adapter, student, teacher, config)
    objective.flip_idx = dataset.flip_idx
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
                if after_epoch:
                    after_epoch(epoch + 1)
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
    shown = progress(batches(dataset, adapter, order, config.batch), f"epoch {epoch + 1}/{config.epochs}",
                     total=steps)
    for step, (images, labels, metas, outlines) in enumerate(shown):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, (epoch * steps + step) / (config.epochs * steps))
        loss = objective(images.to(config.device), labels, metas, outlines)
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
        named = ["the model, the data or the start model (--init-from)" if k == "run" else k for k in changed]
        raise OrinflowError(f"--resume: {checkpoint} was written with different settings ({', '.join(named)})")
    student.load_state_dict(state["student"])
    optimizer.load_state_dict(state["optimizer"])
    say(f"resumed from {checkpoint} after epoch {len(state['losses'])}")
    return list(state["losses"])


def checkpoint_path(output: Path, stage: str) -> Path:
    """Where a training stage of `output` keeps its per-epoch checkpoint (for --resume)."""
    return output.with_name(f"{output.stem}.{stage}.pt")


def check_trainable(adapter: ModelAdapter, config: QATConfig, dataset: Dataset | None = None) -> None:
    """What training would refuse, said before anything is written."""
    config.validate()
    room = adapter.processing.room
    if uses_labels(adapter, config) and config.mixup and (room.mask_labels or room.keypoints):
        raise OrinflowError(f"--mixup with the label loss of a {adapter.task} model is not supported (two images' "
                            f"{'masks' if room.mask_labels else 'keypoints'} in one): drop --mixup, or train with "
                            "--distill --no-labels")
    if uses_labels(adapter, config) and config.flip and room.keypoints and dataset is not None \
            and dataset.flip_idx is None and dataset.kpt_shape and dataset.kpt_shape[0] > 1:
        raise OrinflowError(f"--flip with the pose label loss needs the data's flip_idx (each keypoint's mirror "
                            f"twin) in {dataset.name}'s YAML: add it, or drop --flip")
    labelled = dataset is None or dataset.task in adapter.processing.room.label_tasks
    if uses_labels(adapter, config) and not labelled:
        raise OrinflowError(f"the label loss needs {adapter.task} labels, which {dataset.name} does not have; train "
                            "with --distill --no-labels")
    if adapter.processing.head == HEAD_END2END:
        raise OrinflowError("fine-tuning NMS-free (end-to-end) heads is not supported yet")
    if not config.distill and not uses_labels(adapter, config):
        raise OrinflowError("nothing to train on: use --distill, --labels, or both")
