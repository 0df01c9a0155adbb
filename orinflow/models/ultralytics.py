"""Adapter for Ultralytics checkpoints and model YAMLs (YOLO26, YOLO11, YOLOv8, YOLOv5u, ...)."""
from __future__ import annotations

import os
from pathlib import Path

from ..config import DEFAULT_CLS_IMGSZ, DEFAULT_DET_IMGSZ
from ..errors import OrinflowError
from .base import ModelAdapter
from .processing import HEAD_ANCHOR_FREE, HEAD_END2END, Processing

os.environ.setdefault("YOLO_OFFLINE", "1")  # never let Ultralytics reach for the network

ULTRALYTICS_NMS_IOU = 0.7  # Ultralytics val default
SUPPORTED_TASKS = ("detect", "segment", "pose", "classify")


def load_ultralytics(path: Path, imgsz: int | None = None, fuse: bool = True) -> ModelAdapter:
    """fuse=False keeps BatchNorm layers apart (pruning ranks channels by them and saves them)."""
    from ultralytics import YOLO

    try:
        model = YOLO(str(path), verbose=False).model
    except Exception as e:  # Ultralytics raises many types for a bad file or YAML
        raise OrinflowError(f"Ultralytics could not load {path}: {str(e).strip().splitlines()[0][:200]}") from e
    task = getattr(model, "task", None)
    if task not in SUPPORTED_TASKS:
        raise OrinflowError(f"{path}: Ultralytics task {task!r} is not supported (supported: {', '.join(SUPPORTED_TASKS)})")
    model = model.float().eval()
    if fuse:
        model.fuse(verbose=False) if "verbose" in model.fuse.__code__.co_varnames else model.fuse()
    names = dict(model.names) if hasattr(model, "names") else {}
    if task == "classify":
        size = imgsz or _trained_imgsz(model) or DEFAULT_CLS_IMGSZ
        processing = Processing(task="classify", imgsz=(size, size), names=names, mean=(0.0, 0.0, 0.0),
                                std=(1.0, 1.0, 1.0), crop_fraction=1.0)
    else:
        size = imgsz or DEFAULT_DET_IMGSZ
        stride = int(max(model.stride))
        if size % stride:
            raise OrinflowError(f"--imgsz {size} must be a multiple of the model's stride {stride}")
        head = model.model[-1]
        kpt_shape = getattr(head, "kpt_shape", None) if task == "pose" else None
        processing = Processing(task=task, imgsz=(size, size), names=names,
                                head=HEAD_END2END if getattr(head, "end2end", False) else HEAD_ANCHOR_FREE,
                                nms_iou=ULTRALYTICS_NMS_IOU,
                                kpt_shape=tuple(int(v) for v in kpt_shape) if kpt_shape else None)
    return ModelAdapter(family="ultralytics", source=str(path), module=model, processing=processing)


def _trained_imgsz(model) -> int | None:
    args = getattr(model, "args", None) or {}
    size = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    return int(size) if isinstance(size, int) else None


def split_chunked_blocks(model) -> int:
    """Rebuild every block that halves one conv's output with chunk/split (C2f, C3k2, C2fPSA, C2PSA) as two
    convs (models/pruned_blocks.py), so a dependency graph can prune each half. Returns how many."""
    from ultralytics.nn.modules.block import C2PSA, C2f

    from .pruned_blocks import SplitC2f, SplitC2PSA, split_block

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, C2f) and type(child).forward is C2f.forward:
                setattr(parent, name, split_block(child, SplitC2f))
            elif isinstance(child, C2PSA) and type(child).forward is C2PSA.forward:
                setattr(parent, name, split_block(child, SplitC2PSA))
            else:
                continue
            count += 1
    return count


def save_ultralytics(model, path: Path, info: dict) -> None:
    """An Ultralytics checkpoint (`YOLO(path)` loads it) of `model`, unfused, with orinflow's notes."""
    import datetime

    import torch
    import ultralytics

    from ..io import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": model, "train_args": {}, "date": datetime.datetime.now().isoformat(),
                    "version": ultralytics.__version__, "orinflow": info}, tmp)
