"""Adapter for a user's own detector: `--arch file.py:factory` builds the nn.Module, `--head` names the layout
of its first output (models/heads.py), `--names` its classes; `-m` gives the weights (a state dict).

The module's forward must return the raw head output in that layout (decoded boxes for yolov8/yolov5,
grid-relative for yolox), NMS excluded: the same contract as every other family's exported graph.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import DEFAULT_DET_IMGSZ
from ..errors import OrinflowError
from .base import ModelAdapter, RawOutput
from .classifier import build_arch, load_weights
from .heads import check_head, class_names, detector_processing


def load_custom_detector(path: Path | None, arch: str, head: str, imgsz: int | None = None, names: str | None = None,
                         mean=None, std=None) -> ModelAdapter:
    if ":" not in arch:
        raise OrinflowError(f"--arch {arch} with --head: a detector is your own code; give file.py:factory or "
                            "package.module:factory")
    model = build_arch(arch)
    if path is not None:
        load_weights(model, path, arch)
    module = model.float().eval()
    size = (imgsz or DEFAULT_DET_IMGSZ,) * 2
    shape = _output_shape(module, size, arch)
    count = check_head(head, shape, size)
    processing = detector_processing(head, size, class_names(names, {}, count), mean=mean, std=std)
    return ModelAdapter(family="custom", source=str(path or arch), module=module, processing=processing,
                        extra={"arch": arch, "head": head})


def _output_shape(module: torch.nn.Module, size: tuple[int, int], arch: str) -> list[int]:
    """The first output's shape on one blank image: what --head is checked against."""
    try:
        with torch.no_grad():
            output = RawOutput(module)(torch.zeros(1, 3, *size))
    except Exception as e:  # noqa: BLE001 - the user's forward may raise anything
        raise OrinflowError(f"{arch}: forward on a 1x3x{size[0]}x{size[1]} image failed: {type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") from e
    if not isinstance(output, torch.Tensor):
        raise OrinflowError(f"{arch}: the first output is a {type(output).__name__}, not a tensor")
    return list(output.shape)
