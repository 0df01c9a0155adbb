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
SUPPORTED_TASKS = ("detect", "classify")


def load_ultralytics(path: Path, imgsz: int | None = None) -> ModelAdapter:
    from ultralytics import YOLO

    try:
        model = YOLO(str(path), verbose=False).model
    except Exception as e:  # Ultralytics raises many types for a bad file or YAML
        raise OrinflowError(f"Ultralytics could not load {path}: {str(e).strip().splitlines()[0][:200]}") from e
    task = getattr(model, "task", None)
    if task not in SUPPORTED_TASKS:
        raise OrinflowError(f"{path}: Ultralytics task {task!r} is not supported (supported: {', '.join(SUPPORTED_TASKS)})")
    model = model.float().eval()
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
        processing = Processing(task="detect", imgsz=(size, size), names=names,
                                head=HEAD_END2END if getattr(head, "end2end", False) else HEAD_ANCHOR_FREE,
                                nms_iou=ULTRALYTICS_NMS_IOU)
    return ModelAdapter(family="ultralytics", source=str(path), module=model, processing=processing)


def _trained_imgsz(model) -> int | None:
    args = getattr(model, "args", None) or {}
    size = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    return int(size) if isinstance(size, int) else None
