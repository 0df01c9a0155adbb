"""The Dataset every reader returns (data/__init__.py, data/coco_json.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Dataset:
    """Images with optional labels.

    task "detect":   labels[i] is an (n, 5) array: class, cx, cy, w, h (normalised, YOLO txt)
    task "classify": labels[i] is the class index (subfolder order)
    task None:       unlabelled images (calibration only)
    """

    name: str
    images: list[Path]
    task: str | None = None
    labels: list = field(default_factory=list)
    names: dict[int, str] = field(default_factory=dict)
    coco: dict | None = None  # a COCO JSON's own ground truth (load_coco_json), for --metric coco
    missing: list[str] = field(default_factory=list)  # images a COCO JSON lists that were left out (--skip-bad-images)

    def __len__(self) -> int:
        return len(self.images)
