"""Workspace layout and defaults shared by every command."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_OPSET = 17
DYNAMIC_DEFAULT_BATCH = 8  # the batch a dynamic-batch model's engine is tuned for, unless told
DEFAULT_DET_IMGSZ = 640
MAX_IMGSZ = 8192  # larger inputs are taken for a mistake (a 40000x40000 input needs 19 GB)
DEFAULT_CLS_IMGSZ = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LETTERBOX_PAD = 114
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def workspace() -> Path:
    """Root of the predictable output layout; ORINFLOW_WORKSPACE overrides ./workspace."""
    return Path(os.environ.get("ORINFLOW_WORKSPACE", "workspace"))


def raw_onnx_dir() -> Path:
    return workspace() / "models" / "onnx" / "raw"


def calib_dir() -> Path:
    return workspace() / "calib"


def records_dir() -> Path:
    return workspace() / "records"


def shared_dir() -> Path:
    """The real data beside the checkout (tests and benchmarks only; never required)."""
    return Path(os.environ.get("ORINFLOW_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
