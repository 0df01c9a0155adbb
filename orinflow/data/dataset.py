"""The Dataset every reader returns (data/__init__.py, data/coco_json.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Dataset:
    """Images with optional labels.

    task "detect":   labels[i] is an (n, 5) array: class, cx, cy, w, h (normalised, YOLO txt)
    task "segment":  as "detect" (each polygon's box), and segments[i] holds each row's polygon, an (k, 2) array
                     of normalised x, y (a list of them for an object in parts, from a COCO JSON)
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
    segments: list = field(default_factory=list)  # task "segment": per image, one polygon per label row

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, chosen: list[int], name: str) -> "Dataset":
        """The images at `chosen`, each with its labels and polygons."""
        return Dataset(name, [self.images[i] for i in chosen], self.task,
                       [self.labels[i] for i in chosen] if self.labels else [], self.names,
                       segments=[self.segments[i] for i in chosen] if self.segments else [])
