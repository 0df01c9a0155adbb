"""Instance masks the way Ultralytics' segmentation validator makes and scores them, so that mask mAP reads the
same: predictions are prototypes times coefficients at prototype resolution (a quarter of the input), cut to
their box; labels are polygons filled at input resolution, shrunk to the same grid, smaller objects drawn over
larger ones. IoU is counted on that grid."""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .image import ImageMeta, to_image_pixels, to_input_pixels

POLYGON_POINTS = 1000  # Ultralytics resamples every polygon to this many points before filling it


def prototype_masks(protos: torch.Tensor, coefficients: torch.Tensor, boxes: torch.Tensor,
                    imgsz: tuple[int, int]) -> np.ndarray:
    """(n, mh, mw) bool masks on the prototype grid: sigmoid(coefficients @ protos) > 0.5, zero outside each box
    (`boxes`: xyxy in input pixels)."""
    count, (mh, mw) = len(coefficients), protos.shape[1:]
    if not count:
        return np.zeros((0, mh, mw), bool)
    logits = (coefficients.float() @ protos.float().reshape(protos.shape[0], -1)).reshape(count, mh, mw)
    ratios = torch.tensor([mw / imgsz[1], mh / imgsz[0], mw / imgsz[1], mh / imgsz[0]])
    x1, y1, x2, y2 = (boxes.float() * ratios).T[:, :, None, None]
    cols = torch.arange(mw, dtype=torch.float32)[None, None, :]
    rows = torch.arange(mh, dtype=torch.float32)[None, :, None]
    inside = (cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2)
    return ((logits > 0) & inside).numpy()


def resample(polygon: np.ndarray, points: int) -> np.ndarray:
    """A closed polygon (k, 2) with points added along its edges up to `points` (its own vertices kept)."""
    closed = np.concatenate([polygon, polygon[:1]])
    where = np.arange(len(closed))
    if len(closed) >= points:
        return closed.astype(np.float32)
    added = np.linspace(0, len(closed) - 1, points - len(closed))
    at = np.insert(added, np.searchsorted(added, where), where)
    return np.stack([np.interp(at, where, closed[:, i]) for i in range(2)], 1).astype(np.float32)


def label_masks(polygons: list[np.ndarray], meta: ImageMeta, imgsz: tuple[int, int],
                grid: tuple[int, int]) -> np.ndarray:
    """(n, gh, gw) bool: each label polygon (normalised to the original image; a list of them for an object in
    parts) filled at input resolution, shrunk to `grid`; where objects overlap the smaller one owns the pixel."""
    if not polygons:
        return np.zeros((0, *grid), bool)
    return label_owner(polygons, meta, imgsz, grid)[None] == np.arange(1, len(polygons) + 1)[:, None, None]


def label_owner(polygons: list[np.ndarray], meta: ImageMeta, imgsz: tuple[int, int],
                grid: tuple[int, int]) -> np.ndarray:
    """(gh, gw) int32: on the grid, 1 + the row of the label that owns each pixel (0: none); the smaller object
    owns an overlap. The target Ultralytics' segmentation loss reads (its overlap_mask form)."""
    if not polygons:
        return np.zeros(grid, np.int32)
    h0, w0 = meta.original_hw
    objects = [outline if isinstance(outline, list) else [outline] for outline in polygons]
    points = max(POLYGON_POINTS, max(len(part) for parts in objects for part in parts) + 1)
    filled = []
    for parts in objects:  # an object of several parts (a COCO polygon list) fills them all
        pixels = [to_input_pixels(resample(part * np.float32([w0, h0]), points), meta) for part in parts]
        canvas = np.zeros(imgsz, np.uint8)
        cv2.fillPoly(canvas, [p.astype(np.int32) for p in pixels], color=1)
        filled.append(cv2.resize(canvas, (grid[1], grid[0])))
    owner = np.zeros(grid, np.int32)
    for index in np.argsort(-np.asarray([m.sum() for m in filled])):  # Ultralytics' order, ties included
        owner[filled[index] > 0] = index + 1  # larger first: each smaller object paints over it
    return owner


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between bool masks a (n, h, w) and b (m, h, w)."""
    fa, fb = a.reshape(len(a), -1).astype(np.float32), b.reshape(len(b), -1).astype(np.float32)
    inter = fa @ fb.T
    return inter / (fa.sum(1)[:, None] + fb.sum(1)[None] - inter + 1e-7)


def mask_polygons(mask: np.ndarray, meta: ImageMeta, imgsz: tuple[int, int]) -> list[list[list[float]]]:
    """A prototype-grid mask as polygons in original-image pixels (the outer contour of each part)."""
    scale_x, scale_y = imgsz[1] / mask.shape[1], imgsz[0] / mask.shape[0]
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        xy = to_image_pixels(contour.reshape(-1, 2).astype(np.float32) * np.float32([scale_x, scale_y]), meta)
        out.append([[round(float(x), 1), round(float(y), 1)] for x, y in xy])
    return out
