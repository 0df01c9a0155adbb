"""Ultralytics pose labels: a dataset YAML with `kpt_shape` (and `flip_idx`, optionally `kpt_oks_sigmas`), and
one row per object, 'class cx cy w h' followed by K keypoints of x y (and visibility when kpt_shape has 3 values
per keypoint), all normalised to the image. Every row is checked; a bad one is refused in one line naming the
file and the line."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OrinflowError
from .label_rows import row_values
from ..tasks.keypoints import VISIBILITY_VALUES, check_kpt_shape, oks_sigmas, visibility_from_coordinates

COORDINATE_SLACK = 0.01  # Ultralytics accepts coordinates up to 1% outside the image


def pose_config(cfg: dict, path: Path) -> tuple[tuple[int, int], list[int] | None, list[float] | None]:
    """(kpt_shape, flip_idx, kpt_oks_sigmas) of a dataset YAML that has `kpt_shape`, each checked."""
    shape = check_kpt_shape(cfg["kpt_shape"], str(path))
    flip = cfg.get("flip_idx")
    if flip is not None and (not isinstance(flip, list) or sorted(flip) != list(range(shape[0]))):
        raise OrinflowError(f"{path}: flip_idx must list each of the {shape[0]} keypoints once (its mirror twin), "
                            f"got {str(flip)[:80]}")
    sigmas = cfg.get("kpt_oks_sigmas")
    if sigmas is not None:
        try:
            sigmas = [float(v) for v in oks_sigmas(shape, sigmas)]
        except (OrinflowError, TypeError, ValueError) as e:
            raise OrinflowError(f"{path}: {e}") from None
    return shape, flip, sigmas


def read_pose_labels(path: Path, kpt_shape: tuple[int, int], names: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 5) class, cx, cy, w, h and (n, K, 3) keypoints (normalised x, y, visibility) of one label file."""
    count, values_per_point = kpt_shape
    if not path.exists():  # no label file: an image with no objects
        return np.zeros((0, 5), np.float32), np.zeros((0, count, 3), np.float32)
    rows, points = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            row = _pose_row(line, f"bad label file {path}, line {number}", kpt_shape, names)
            rows.append(row[:5])
            points.append(row[5:])
    keypoints = np.asarray(points, np.float32).reshape(-1, count, values_per_point)
    if values_per_point == 2:
        keypoints = visibility_from_coordinates(keypoints)
    return np.asarray(rows, np.float32).reshape(-1, 5), keypoints


def _pose_row(line: str, where: str, kpt_shape: tuple[int, int], names: dict[int, str]) -> list[float]:
    fields = line.split()
    expected = 5 + kpt_shape[0] * kpt_shape[1]
    if len(fields) != expected:
        raise OrinflowError(f"{where}: {len(fields)} values; kpt_shape {list(kpt_shape)} needs {expected} "
                            f"('class cx cy w h' and {kpt_shape[0]} keypoints of {kpt_shape[1]} values)")
    values = row_values(line, where, names)
    points = np.asarray(values[5:], np.float64).reshape(kpt_shape)
    if kpt_shape[1] == 3:
        bad = [v for v in points[:, 2] if v not in VISIBILITY_VALUES]
        if bad:
            raise OrinflowError(f"{where}: keypoint visibility {bad[0]:g} is not 0 (not labelled), 1 (hidden) or "
                                "2 (visible)")
        labelled = points[points[:, 2] > 0, :2]
    else:
        labelled = points[(points[:, 0] >= 0) & (points[:, 1] >= 0)]
    box = np.asarray(values[1:5])
    if ((box < -COORDINATE_SLACK) | (box > 1 + COORDINATE_SLACK)).any() or (labelled > 1 + COORDINATE_SLACK).any() \
            or (labelled < -COORDINATE_SLACK).any():
        raise OrinflowError(f"{where}: coordinates must be normalised to 0..1: {line.strip()[:60]!r}")
    return values
