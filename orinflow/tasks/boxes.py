"""Boxes: the raw layouts of detection heads, their decode, NMS, and box IoU. Detection, segmentation and pose
heads all start from these rows."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision

# Raw output layouts of detection heads (what the exported graph returns).
HEAD_ANCHOR_FREE = "xywh_scores"  # (B, 4+nc, N): Ultralytics YOLOv8/11/26 one-to-many, decoded, sigmoided
HEAD_OBJECTNESS = "xywh_obj_scores"  # (B, N, 5+nc): original YOLOv5 anchors, objectness
HEAD_END2END = "xyxy_score_class"  # (B, K, 6): NMS-free heads (YOLO26 one-to-one)
HEAD_EFFICIENT_NMS = "num_boxes_scores_classes"  # TensorRT's EfficientNMS_TRT outputs (export --nms trt)
HEAD_GRID = "grid_obj_scores"  # (B, N, 5+nc): YOLOX's default export, boxes relative to grid cells, not decoded
HEAD_FORMATS = (HEAD_ANCHOR_FREE, HEAD_OBJECTNESS, HEAD_END2END, HEAD_GRID, HEAD_EFFICIENT_NMS)
NMS_INSIDE = (HEAD_END2END, HEAD_EFFICIENT_NMS)  # heads whose graph already ran NMS
GRID_STRIDES = (8, 16, 32)  # YOLOX's (and every P3-P5 detector's) output strides

MAX_NMS_CANDIDATES = 30000


@dataclass
class Detections:
    """One image's detections in original-image pixels."""

    boxes: np.ndarray  # (n, 4) xyxy
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int

    def take(self, keep: np.ndarray, classes: np.ndarray | None = None) -> "Detections":
        """The detections at `keep` (a bool or index array), with `classes` in place of theirs when given."""
        return type(self)(**{name: (classes if name == "classes" and classes is not None else value[keep])
                             for name, value in vars(self).items()})

    def in_classes(self, mapping: dict[int, int] | None) -> "Detections":
        """Detections in the data's classes (model class -> data class); those of classes the mapping leaves out
        are dropped."""
        if mapping is None:
            return self
        keep = np.array([int(c) in mapping for c in self.classes], bool).reshape(-1)
        classes = np.array([mapping[int(c)] for c in self.classes[keep]], dtype=self.classes.dtype).reshape(-1)
        return self.take(keep, classes)


def kept_candidates(pred: torch.Tensor, head: str, conf: float, iou: float, max_det: int,
                    imgsz: tuple[int, int], extra: int = 0):
    """One image's raw head output -> kept (xyxy boxes, scores, classes, anchor rows), NMS applied unless the
    graph ran it. `extra`: trailing channels per anchor that are not class scores (mask coefficients)."""
    boxes, scores, classes, rows = decode_candidates(pred, head, conf, imgsz, extra)
    if head not in NMS_INSIDE:
        keep = nms_keep(boxes, scores, classes, iou, max_det)
    else:
        keep = torch.arange(min(max_det, len(scores)))
    return boxes[keep], scores[keep], classes[keep], rows[keep]


def decode_candidates(pred: torch.Tensor, head: str, conf: float, imgsz: tuple[int, int] = (640, 640),
                      extra: int = 0):
    """One image's raw head output -> (xyxy boxes, scores, classes, anchor rows) of all class scores above conf."""
    if head in NMS_INSIDE:
        rows = (pred[:, 4] > conf).nonzero()[:, 0]
        pred = pred[rows]
        return pred[:, :4], pred[:, 4], pred[:, 5].long(), rows
    anchors = torch.arange(pred.shape[-1] if head == HEAD_ANCHOR_FREE else pred.shape[0])
    if head == HEAD_OBJECTNESS:  # objectness below conf cannot give a class score above it: skip early
        anchors = anchors[pred[:, 4] > conf]
        pred = pred[anchors]
    boxes, cls_scores = anchor_view(pred, head, imgsz)
    if extra:
        cls_scores = cls_scores[:, :-extra]
    # Multi-label: every (box, class) pair above the threshold is a candidate, as COCO evaluation expects.
    idx, cls = (cls_scores > conf).nonzero(as_tuple=True)
    return boxes[idx], cls_scores[idx, cls], cls, anchors[idx]


def anchor_view(pred: torch.Tensor, head: str, imgsz: tuple[int, int] = (640, 640)):
    """One image's raw head output (NMS not inside) -> per anchor, xyxy boxes (N, 4) and class scores (N, nc)."""
    if head == HEAD_ANCHOR_FREE:
        pred = pred.T  # (N, 4+nc)
        return xywh_to_xyxy(pred[:, :4]), pred[:, 4:]
    if head in (HEAD_OBJECTNESS, HEAD_GRID):
        if head == HEAD_GRID:
            pred = decode_grid(pred, imgsz)
        return xywh_to_xyxy(pred[:, :4]), pred[:, 5:] * pred[:, 4:5]
    raise ValueError(f"unknown detection head format {head!r}")


def nms_keep(boxes, scores, classes, iou: float, max_det: int) -> torch.Tensor:
    """Indices kept by class-aware NMS, most confident first (at most max_det)."""
    order = torch.arange(len(scores))
    if scores.numel() > MAX_NMS_CANDIDATES:
        order = scores.topk(MAX_NMS_CANDIDATES).indices
    keep = torchvision.ops.batched_nms(boxes[order], scores[order], classes[order], iou)[:max_det]
    return order[keep]


def multiclass_nms(boxes, scores, classes, iou: float, max_det: int):
    keep = nms_keep(boxes, scores, classes, iou, max_det)
    return boxes[keep], scores[keep], classes[keep]


def decode_grid(pred: torch.Tensor, imgsz: tuple[int, int]) -> torch.Tensor:
    """YOLOX's undecoded (..., N, 5+nc) -> input-pixel xywh: xy = (offset + cell) * stride, wh = exp(wh) * stride.

    N must be the cell count of strides 8, 16 and 32 at `imgsz`; the cells run row by row, stride by stride.
    """
    cells, strides = grid_cells(imgsz, pred.shape[-2])
    cells, strides = cells.to(pred), strides.to(pred)
    xy = (pred[..., :2] + cells) * strides
    wh = pred[..., 2:4].exp() * strides
    return torch.cat((xy, wh, pred[..., 4:]), -1)


def grid_cells(imgsz: tuple[int, int], count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) cell x/y and (N, 1) stride of every output row of a P3-P5 grid head at `imgsz`."""
    cells, strides = [], []
    for stride in GRID_STRIDES:
        h, w = -(-imgsz[0] // stride), -(-imgsz[1] // stride)
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cells.append(torch.stack((x, y), -1).reshape(-1, 2))
        strides.append(torch.full((h * w, 1), stride))
    cells, strides = torch.cat(cells).float(), torch.cat(strides).float()
    if count is not None and count != len(cells):
        raise ValueError(f"a grid head at {imgsz[0]}x{imgsz[1]} has {len(cells)} rows (strides "
                         f"{', '.join(map(str, GRID_STRIDES))}), not {count}")
    return cells, strides


def xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    xy, wh = xywh[:, :2], xywh[:, 2:4] / 2
    return torch.cat((xy - wh, xy + wh), 1)




def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between xyxy boxes a (n,4) and b (m,4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


def labels_to_xyxy(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """YOLO label rows (class, cx, cy, w, h normalised) -> original-image xyxy boxes."""
    h, w = hw
    cx, cy, bw, bh = labels[:, 1] * w, labels[:, 2] * h, labels[:, 3] * w, labels[:, 4] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
