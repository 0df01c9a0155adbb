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
    task "pose":     as "detect", and keypoints[i] is an (n, K, 3) array: each row's keypoints as normalised x, y and
                     visibility (0 not labelled, 1 hidden, 2 visible; for 2-value keypoints, 0 where a coordinate
                     is negative, else 1); `kpt_shape` and `flip_idx` come from the dataset YAML
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
    keypoints: list = field(default_factory=list)  # task "pose": per image, (n, K, 3) normalised x, y, visibility
    kpt_shape: tuple[int, int] | None = None  # task "pose": keypoints per object, values per keypoint in the files
    flip_idx: list[int] | None = None  # task "pose": each keypoint's mirror twin (left/right swap on a flip)
    kpt_sigmas: list[float] | None = None  # task "pose": the data's own OKS sigmas (`kpt_oks_sigmas`), if any

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, chosen: list[int], name: str) -> "Dataset":
        """The images at `chosen`, each with its labels, polygons and keypoints."""
        return Dataset(name, [self.images[i] for i in chosen], self.task,
                       [self.labels[i] for i in chosen] if self.labels else [], self.names,
                       segments=[self.segments[i] for i in chosen] if self.segments else [],
                       keypoints=[self.keypoints[i] for i in chosen] if self.keypoints else [],
                       kpt_shape=self.kpt_shape, flip_idx=self.flip_idx, kpt_sigmas=self.kpt_sigmas)
