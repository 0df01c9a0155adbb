"""Keypoints the way Ultralytics' pose validator scores them: object keypoint similarity (OKS) between each
labelled person and each prediction, with COCO's per-keypoint sigmas for the 17 COCO keypoints and equal
sigmas (1/K) for any other layout unless the data names its own (`kpt_oks_sigmas`). The area is the label
box's times 0.53, as in COCO's and Ultralytics' evaluation."""
from __future__ import annotations

import numpy as np

from ..errors import OrinflowError

COCO_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
                        0.89, 0.89], np.float32) / 10.0
COCO_KPT_SHAPE = (17, 3)
BOX_AREA_TO_OBJECT = 0.53  # COCO keypoint evaluation's object area from its box
VISIBILITY_VALUES = (0.0, 1.0, 2.0)  # not labelled, labelled but hidden, visible


def check_kpt_shape(shape, where: str) -> tuple[int, int]:
    """(K, D): K keypoints of D values each (2: x y; 3: x y visibility); one line when it is not."""
    ok = (isinstance(shape, (list, tuple)) and len(shape) == 2 and all(isinstance(v, int) for v in shape)
          and shape[0] >= 1 and shape[1] in (2, 3))
    if not ok:
        raise OrinflowError(f"{where}: kpt_shape is {shape!r}; [keypoints, 2 or 3] expected (for example [17, 3])")
    return int(shape[0]), int(shape[1])


def oks_sigmas(kpt_shape: tuple[int, int], custom=None) -> np.ndarray:
    """The per-keypoint sigmas OKS uses: `custom` when given, COCO's for 17x3, 1/K each otherwise."""
    count = kpt_shape[0]
    if custom is not None:
        sigmas = np.asarray(custom, np.float32).reshape(-1)
        if len(sigmas) != count or not np.all(sigmas > 0):
            raise OrinflowError(f"kpt_oks_sigmas must be {count} positive values, got {list(custom)[:20]}")
        return sigmas
    return COCO_SIGMAS if tuple(kpt_shape) == COCO_KPT_SHAPE else np.full(count, 1.0 / count, np.float32)


def keypoint_similarity(gt: np.ndarray, pred: np.ndarray, area: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """(n_labels, n_predictions) OKS. `gt`: (n, K, 3) pixels with visibility (0: not labelled, left out);
    `pred`: (m, K, >=2) pixels; `area`: (n,) object areas in pixels squared."""
    if not len(gt) or not len(pred):
        return np.zeros((len(gt), len(pred)), np.float32)
    gt, pred = np.asarray(gt, np.float64), np.asarray(pred, np.float64)
    d = ((gt[:, None, :, :2] - pred[None, :, :, :2]) ** 2).sum(-1)  # (n, m, K)
    e = d / ((2 * sigmas.astype(np.float64)) ** 2 * (area[:, None, None] + 1e-7) * 2)
    labelled = gt[..., 2] != 0  # (n, K)
    return ((np.exp(-e) * labelled[:, None]).sum(-1) / (labelled.sum(-1)[:, None] + 1e-7)).astype(np.float32)


def visibility_from_coordinates(points: np.ndarray) -> np.ndarray:
    """(..., K, 2) -> (..., K, 3): a 2-value keypoint is labelled unless a coordinate is negative (Ultralytics)."""
    labelled = ~((points[..., 0] < 0) | (points[..., 1] < 0))
    return np.concatenate([points, labelled[..., None].astype(points.dtype)], -1)


def flip_keypoints(keypoints: np.ndarray, flip_idx, width: float = 1.0) -> np.ndarray:
    """Keypoints (n, K, >=2) of an image mirrored left-right: x -> width - x, and each keypoint swapped with its
    mirror twin (`flip_idx`, from the dataset YAML)."""
    out = np.asarray(keypoints).copy()
    if flip_idx is not None:
        out = out[:, list(flip_idx)]
    out[..., 0] = width - out[..., 0]  # unlabelled points too, as Ultralytics does: their visibility masks them
    return out
