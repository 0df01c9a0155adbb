"""The families' own label losses for fine-tuning detectors (QAT, SAT), next to distillation.

- Ultralytics detectors: Ultralytics' own criterion (`v8DetectionLoss`: task-aligned
  assignment, BCE classes, CIoU + DFL boxes) with its default gains, on the head's
  training outputs, which the model returns beside the decoded boxes in eval mode.
- Original YOLOv5: the anchor/objectness loss of YOLOv5 v6 (anchor-ratio matching with the
  neighbouring-cell offsets, CIoU boxes, BCE objectness with the IoU as target and per-level
  balance, BCE classes), written for orinflow's Detect, which keeps its raw outputs on request.

Targets are the dataset's YOLO labels mapped through each image's letterbox into the network
input, as (image, class, cx, cy, w, h) normalised to the input size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from ...errors import OrinflowError
from ...models.processing import ImageMeta

# YOLOv5 v6 hyperparameters (data/hyps/hyp.scratch-low.yaml) and per-level objectness balance.
YOLOV5_HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "anchor_t": 4.0}
YOLOV5_BALANCE = (4.0, 1.0, 0.4)
NEIGHBOUR_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


def input_targets(labels: list[np.ndarray], metas: list[ImageMeta], imgsz: tuple[int, int]) -> torch.Tensor:
    """Per-image YOLO labels (normalised to the original image) -> (n, 6) image, class, xywh normalised to the input."""
    rows = []
    height, width = imgsz
    for index, (label, meta) in enumerate(zip(labels, metas)):
        if not len(label):
            continue
        h0, w0 = meta.original_hw
        cx = (label[:, 1] * w0 * meta.scale + meta.pad[0]) / width
        cy = (label[:, 2] * h0 * meta.scale + meta.pad[1]) / height
        w, h = label[:, 3] * w0 * meta.scale / width, label[:, 4] * h0 * meta.scale / height
        rows.append(np.stack([np.full(len(label), index), label[:, 0], cx, cy, w, h], 1))
    return torch.from_numpy(np.concatenate(rows).astype(np.float32)) if rows else torch.zeros(0, 6)


class UltralyticsDetectionLoss:
    """Ultralytics' detection criterion on a (quantized or sparse) copy of the model."""

    criterion_name = "v8DetectionLoss"

    def __init__(self, model: torch.nn.Module):
        from ultralytics.cfg import get_cfg
        from ultralytics.utils import loss

        self.refuse(model.model[-1])
        model.args = get_cfg()  # Ultralytics' default gains (box 7.5, cls 0.5, dfl 1.5; pose 12, kobj 1)
        self.criterion = getattr(loss, self.criterion_name)(model)

    def refuse(self, head: torch.nn.Module) -> None:
        """Raise where this criterion cannot score the head."""
        if getattr(head, "end2end", False):
            raise OrinflowError("label loss for NMS-free (end-to-end) heads is not supported yet; use --distill")

    def __call__(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs, targets)

    def loss(self, outputs, targets: torch.Tensor, **task_targets: torch.Tensor) -> torch.Tensor:
        """The criterion's loss per image; `task_targets` adds what the task's terms read (masks, keypoints)."""
        preds = outputs[1] if isinstance(outputs, (tuple, list)) and len(outputs) > 1 else None
        if not isinstance(preds, dict):
            raise OrinflowError("the Ultralytics head returned no training outputs (was it exported?)")
        batch = {"batch_idx": targets[:, 0], "cls": targets[:, 1:2], "bboxes": targets[:, 2:6], **task_targets}
        loss, _ = self.criterion(preds, {k: v.to(preds["scores"].device) for k, v in batch.items()})
        return loss.sum() / preds["scores"].shape[0]  # per image


class UltralyticsSegmentationLoss(UltralyticsDetectionLoss):
    """Ultralytics' segmentation criterion (`v8SegmentationLoss`: the detection terms, and each object's mask
    BCE inside its box against its polygon on the prototype grid; overlap_mask: one map per image, pixel = 1 +
    the object's row)."""

    criterion_name = "v8SegmentationLoss"
    needs_masks = True

    def __call__(self, outputs, targets: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        if masks is None:
            raise OrinflowError("the segmentation label loss needs polygon labels")
        return self.loss(outputs, targets, masks=masks)


class UltralyticsPoseLoss(UltralyticsDetectionLoss):
    """Ultralytics' pose criterion (`v8PoseLoss`: the detection terms, each assigned anchor's keypoints by OKS
    against the object's, and the keypoints' visibility BCE)."""

    criterion_name = "v8PoseLoss"
    needs_keypoints = True

    def refuse(self, head: torch.nn.Module) -> None:
        if getattr(head, "end2end", False) or hasattr(head, "flow_model"):
            raise OrinflowError("the label loss of YOLO26 pose heads (a flow model on the keypoints) is not built; "
                                "use --distill --no-labels")

    def __call__(self, outputs, targets: torch.Tensor, keypoints: torch.Tensor | None = None) -> torch.Tensor:
        if keypoints is None:
            raise OrinflowError("the pose label loss needs keypoint labels")
        return self.loss(outputs, targets, keypoints=keypoints)


def keypoint_targets(keypoints: list[np.ndarray] | None, metas: list[ImageMeta], flipped: torch.Tensor,
                     imgsz: tuple[int, int], flip_idx: list[int] | None) -> torch.Tensor:
    """Each object's keypoints (n, K, 3) normalised to the input, in `input_targets`' order; a mirrored image's
    x mirrored and each keypoint swapped with its twin (`flip_idx`)."""
    from ...tasks.keypoints import flip_keypoints

    if keypoints is None:
        raise OrinflowError("the pose label loss needs keypoint labels (a dataset YAML with kpt_shape); train with "
                            "--distill --no-labels")
    height, width = imgsz
    rows = []
    for points, meta, mirrored in zip(keypoints, metas, flipped.tolist()):
        if not len(points):
            continue
        h0, w0 = meta.original_hw
        out = np.asarray(points, np.float32).copy()
        out[..., 0] = (out[..., 0] * w0 * meta.scale + meta.pad[0]) / width
        out[..., 1] = (out[..., 1] * h0 * (meta.scale_y or meta.scale) + meta.pad[1]) / height
        if mirrored:
            out = flip_keypoints(out, flip_idx)
        rows.append(out)
    return torch.from_numpy(np.concatenate(rows)) if rows else torch.zeros(0, 1, 3)


class YOLOv5DetectionLoss:
    """YOLOv5 v6's training loss on orinflow's Detect (which keeps the raw, pre-sigmoid outputs)."""

    def __init__(self, model: torch.nn.Module):
        self.detect = model.model[-1]
        self.detect.keep_raw = True
        nl, nc = self.detect.nl, self.detect.nc
        self.gains = {"box": YOLOV5_HYP["box"] * 3 / nl, "obj": YOLOV5_HYP["obj"] * 3 / nl,
                      "cls": YOLOV5_HYP["cls"] * nc / 80 * 3 / nl}
        self.balance = YOLOV5_BALANCE if nl == 3 else (4.0, 1.0, 0.25, 0.06, 0.02)[:nl]

    def close(self) -> None:
        """The raw outputs kept for the loss hold the autograd graph: a trained model must not keep (or pickle)
        them."""
        self.detect.keep_raw = False
        self.detect.__dict__.pop("raw", None)

    def __call__(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        raw = self.detect.raw
        device = raw[0].device
        targets = targets.to(device)
        box_loss = obj_loss = cls_loss = torch.zeros((), device=device)
        for level, pred in enumerate(raw):  # pred: (B, na, ny, nx, 5+nc), before the sigmoid
            anchors = self.detect.anchors[level].to(device)  # in grid cells
            images, anchor_idx, gj, gi, tbox, tcls = self._match(targets, pred.shape, anchors)
            obj_target = torch.zeros(pred.shape[:4], device=device)
            if len(images):
                picked = pred[images, anchor_idx, gj, gi]
                xy = picked[:, :2].sigmoid() * 2 - 0.5
                wh = (picked[:, 2:4].sigmoid() * 2) ** 2 * anchors[anchor_idx]
                box_pred, box_true = _xywh_to_xyxy(torch.cat((xy, wh), 1)), _xywh_to_xyxy(tbox)
                ciou_loss = torchvision.ops.complete_box_iou_loss(box_pred, box_true, reduction="none")
                box_loss = box_loss + ciou_loss.mean()
                obj_target[images, anchor_idx, gj, gi] = (1 - ciou_loss).detach().clamp(0).to(obj_target.dtype)
                cls_target = F.one_hot(tcls, pred.shape[-1] - 5).to(picked.dtype)
                cls_loss = cls_loss + F.binary_cross_entropy_with_logits(picked[:, 5:], cls_target)
            obj_loss = obj_loss + F.binary_cross_entropy_with_logits(pred[..., 4], obj_target) * self.balance[level]
        return box_loss * self.gains["box"] + obj_loss * self.gains["obj"] + cls_loss * self.gains["cls"]

    def _match(self, targets: torch.Tensor, shape, anchors: torch.Tensor):
        """Targets to (image, anchor, cell) triples: anchors within 4x in size, plus the two nearest neighbour cells."""
        ny, nx = shape[2], shape[3]
        scale = torch.tensor([nx, ny, nx, ny], device=targets.device, dtype=targets.dtype)
        grid = targets[:, 2:6] * scale  # boxes in grid cells
        ratio = grid[None, :, 2:4] / anchors[:, None]  # (na, nt, 2)
        fits = torch.max(ratio, 1 / ratio).max(2).values < YOLOV5_HYP["anchor_t"]
        anchor_idx, target_idx = fits.nonzero(as_tuple=True)
        boxes = grid[target_idx]
        xy, xy_inverse = boxes[:, :2], scale[:2] - boxes[:, :2]
        left, top = ((xy % 1 < 0.5) & (xy > 1)).T
        right, bottom = ((xy_inverse % 1 < 0.5) & (xy_inverse > 1)).T
        use = torch.stack((torch.ones_like(left), left, top, right, bottom))  # (5, n)
        offsets = NEIGHBOUR_OFFSETS.to(targets.device)[:, None].expand(5, len(boxes), 2)[use]
        anchor_idx, target_idx = anchor_idx.repeat(5, 1)[use], target_idx.repeat(5, 1)[use]
        boxes = grid[target_idx]
        cells = (boxes[:, :2] - offsets).long()
        gi, gj = cells[:, 0].clamp(0, nx - 1), cells[:, 1].clamp(0, ny - 1)
        tbox = torch.cat((boxes[:, :2] - torch.stack((gi, gj), 1), boxes[:, 2:4]), 1)
        return (targets[target_idx, 0].long(), anchor_idx, gj, gi, tbox, targets[target_idx, 1].long())


def _xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    xy, half = boxes[:, :2], boxes[:, 2:4] / 2
    return torch.cat((xy - half, xy + half), 1)


def detection_label_loss(family: str, model: torch.nn.Module):
    """The family's own loss for `model` (the inner network of the student), or a clear error."""
    if family == "ultralytics":  # a head with mask prototypes is a segmentation head, one with keypoints a pose head
        head = model.model[-1]
        if hasattr(head, "proto"):
            return UltralyticsSegmentationLoss(model)
        return (UltralyticsPoseLoss if hasattr(head, "kpt_shape") else UltralyticsDetectionLoss)(model)
    if family == "yolov5":
        return YOLOv5DetectionLoss(model)
    raise OrinflowError(f"no label loss for {family} detectors; train with --distill")
