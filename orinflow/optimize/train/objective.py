"""One training step's loss: distillation from the FP32 teacher on the raw head outputs (soft scores and
confidence-weighted boxes for detectors, KL for classifier logits) and/or the family's own label loss."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import OrinflowError
from ...models import ModelAdapter
from ...models.processing import HEAD_ANCHOR_FREE, HEAD_END2END, HEAD_GRID, HEAD_OBJECTNESS, decode_grid
from .config import QATConfig
from .losses import detection_label_loss, input_targets, keypoint_targets


def head_distillation(student: torch.Tensor, teacher: torch.Tensor, head: str | None, imgsz: int,
                      temperature: float, foreground: bool = False) -> torch.Tensor:
    """Match the FP32 model's raw outputs: soft labels for scores, confidence-weighted L1 for boxes.

    foreground (detectors): add the score BCE averaged over anchors by the teacher's confidence, as the box term
    is. The plain mean runs over every anchor, nearly all background, so the few objects weigh little in it."""
    if head is None:  # classifier logits
        t = temperature
        return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t
    if head == HEAD_ANCHOR_FREE:  # (B, 4+nc, N) -> (B, N, 4+nc)
        student, teacher = student.transpose(1, 2), teacher.transpose(1, 2)
        boxes_s, boxes_t, scores_s, scores_t = student[..., :4], teacher[..., :4], student[..., 4:], teacher[..., 4:]
        weight = scores_t.max(-1, keepdim=True).values
    elif head in (HEAD_OBJECTNESS, HEAD_GRID):  # (B, N, 5+nc); grid-relative boxes decoded to pixels first
        if head == HEAD_GRID:
            student, teacher = decode_grid(student, (imgsz, imgsz)), decode_grid(teacher, (imgsz, imgsz))
        boxes_s, boxes_t, scores_s, scores_t = student[..., :4], teacher[..., :4], student[..., 4:], teacher[..., 4:]
        weight = teacher[..., 4:5]
    else:
        raise OrinflowError(f"distillation for head format {head} ({HEAD_END2END}) is not supported yet")
    eps = 1e-6
    box = (weight * (boxes_s - boxes_t).abs() / imgsz).sum() / weight.sum().clamp_min(eps)
    per_anchor = F.binary_cross_entropy(scores_s.clamp(eps, 1 - eps), scores_t.clamp(0, 1),
                                        reduction="none").mean(-1, keepdim=True)
    loss = box + per_anchor.mean()
    if foreground:
        loss = loss + (weight * per_anchor).sum() / weight.sum().clamp_min(eps)
    return loss


def distillation_loss(student, teacher, head: str | None, imgsz: int, temperature: float,
                      foreground: bool = False, kpt_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """`head_distillation` for any head: a segmentation head's outputs (rows ending in mask coefficients, and
    the prototypes) add the coefficients' L1, weighted by the teacher's confidence as the boxes are, and the
    prototypes' squared error relative to their spread; a pose head's rows (ending in `kpt_shape` keypoints)
    add `keypoint_distillation`."""
    if kpt_shape is not None:
        count = kpt_shape[0] * kpt_shape[1]
        loss = head_distillation(_rows(student, count), _rows(teacher, count), head, imgsz, temperature, foreground)
        return loss + keypoint_distillation(student, teacher, head, kpt_shape, imgsz)
    if not isinstance(student, (tuple, list)):
        return head_distillation(student, teacher, head, imgsz, temperature, foreground)
    (rows_s, protos_s), (rows_t, protos_t) = student[:2], teacher[:2]
    count = protos_s.shape[1]
    loss = head_distillation(rows_s[:, :-count], rows_t[:, :-count], head, imgsz, temperature, foreground)
    weight = rows_t[:, 4:-count].max(1, keepdim=True).values  # (B, 1, anchors)
    coefficients = (weight * (rows_s[:, -count:] - rows_t[:, -count:]).abs()).sum() / (
        weight.sum().clamp_min(1e-6) * count)
    prototypes = F.mse_loss(protos_s, protos_t) / protos_t.var().clamp_min(1e-6)
    return loss + coefficients + prototypes


def _rows(output: torch.Tensor, count: int) -> torch.Tensor:
    """A pose head's rows without their `count` trailing keypoint values (boxes and scores, as a detector's)."""
    return output[:, :-count]


def keypoint_distillation(student: torch.Tensor, teacher: torch.Tensor, head: str, kpt_shape: tuple[int, int],
                          imgsz: int) -> torch.Tensor:
    """Keypoints of a pose head's rows: L1 of x, y (relative to the input size) and, with a visibility value,
    its BCE against the teacher's, each weighted by the teacher's confidence as the boxes are."""
    if head != HEAD_ANCHOR_FREE:
        raise OrinflowError(f"keypoint distillation for head format {head} is not supported yet")
    count, dims = kpt_shape[0] * kpt_shape[1], kpt_shape[1]
    weight = teacher[:, 4:-count].max(1, keepdim=True).values[:, None]  # (B, 1, 1, anchors)
    points_s = student[:, -count:].reshape(student.shape[0], kpt_shape[0], dims, -1)
    points_t = teacher[:, -count:].reshape(teacher.shape[0], kpt_shape[0], dims, -1)
    eps = 1e-6
    total = weight.sum().clamp_min(eps) * kpt_shape[0]
    loss = (weight * (points_s[:, :, :2] - points_t[:, :, :2]).abs()).sum() / (total * 2 * imgsz)
    if dims == 3:
        seen = F.binary_cross_entropy(points_s[:, :, 2].clamp(eps, 1 - eps), points_t[:, :, 2].clamp(0, 1),
                                      reduction="none")
        loss = loss + (weight[:, :, 0] * seen).sum() / total
    return loss


def uses_labels(adapter: ModelAdapter, config: QATConfig) -> bool:
    return adapter.processing.room.trains_on_labels if config.labels is None else config.labels


class Objective:
    """One step's loss: distillation from the FP32 teacher and/or the family's own label loss."""

    def __init__(self, adapter: ModelAdapter, student: torch.nn.Module, teacher: torch.nn.Module, config: QATConfig):
        self.adapter, self.student, self.teacher, self.config = adapter, student, teacher, config
        self.labels = uses_labels(adapter, config)
        self.detection_loss = None
        if self.labels and adapter.processing.room.instances:
            self.detection_loss = detection_label_loss(adapter.family, student.module)

        self.rng = np.random.default_rng(config.seed + 1)
        self.flip_idx = None  # the data's left/right keypoint twins (train() sets them for a pose label loss)

    def close(self) -> None:
        """Leave the student as it came: a loss that hooks into the model takes its state back out."""
        if hasattr(self.detection_loss, "close"):
            self.detection_loss.close()

    def __call__(self, images: torch.Tensor, labels, metas, outlines=None) -> torch.Tensor:
        """`labels`, `metas` and `outlines` (polygons for a segmentation label loss, keypoints for a pose one) per
        image of `images`."""
        flipped = torch.from_numpy(self.rng.random(len(images)) < 0.5 if self.config.flip
                                   else np.zeros(len(images), bool))
        if flipped.any():
            images = images.clone()
            images[flipped] = images[flipped].flip(-1)
        partner, share = self._mixing(len(images), images.device)
        if partner is not None:
            weight = share.view(-1, 1, 1, 1)
            images = weight * images + (1 - weight) * images[partner]
        outputs = self.student.module(images)  # beneath RawOutput: Ultralytics heads add their training outputs
        first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        processing = self.adapter.processing
        loss = torch.zeros((), device=images.device)
        if self.config.distill:
            with torch.no_grad():
                target = self.teacher(images)
            loss = distillation_loss(first, target, processing.head, processing.imgsz[0],
                                     self.config.temperature, self.config.foreground, processing.kpt_shape)
        if self.labels:
            if labels is None:
                raise OrinflowError("the label loss needs a labelled dataset; train with --distill --no-labels")
            if self.detection_loss is None:
                loss = loss + _class_loss(first, torch.as_tensor(labels, device=images.device), partner, share)
            else:
                targets = input_targets(labels, metas, processing.imgsz)
                mirrored = flipped[targets[:, 0].long()]
                targets[mirrored, 2] = 1 - targets[mirrored, 2]  # x centre, normalised to the input
                if partner is not None:  # a blended image holds both images' objects (as YOLO's own mixup)
                    targets = torch.cat([targets, _moved_to_partners(targets, partner)])
                    targets = targets[targets[:, 0].argsort(stable=True)]  # Ultralytics' loss reads them by image
                if getattr(self.detection_loss, "needs_masks", False):
                    loss = loss + self.detection_loss(outputs, targets, self._mask_targets(outlines, metas, flipped))
                elif getattr(self.detection_loss, "needs_keypoints", False):
                    points = keypoint_targets(outlines, metas, flipped, processing.imgsz, self.flip_idx)
                    loss = loss + self.detection_loss(outputs, targets, points)
                else:
                    loss = loss + self.detection_loss(outputs, targets)
        return loss

    def _mask_targets(self, outlines, metas, flipped: torch.Tensor) -> torch.Tensor:
        """Each image's label polygons on the prototype grid (1 + the object's row per pixel), mirrored with it."""
        from ...tasks.masks import label_owner

        if outlines is None:
            raise OrinflowError("the segmentation label loss needs polygon labels (YOLO txt polygons or a COCO "
                                "JSON with segmentation); train with --distill --no-labels")
        imgsz = self.adapter.processing.imgsz
        grid = (imgsz[0] // 4, imgsz[1] // 4)  # the prototypes' resolution
        owners = np.stack([label_owner(o, m, imgsz, grid) for o, m in zip(outlines, metas)])
        owners[flipped.numpy()] = owners[flipped.numpy()][..., ::-1]
        return torch.from_numpy(np.ascontiguousarray(owners)).float()

    def _mixing(self, count: int, device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """With --mixup: each image's partner in the batch and the image's own share of the blend."""
        if not self.config.mixup:
            return None, None
        partner = torch.from_numpy(self.rng.permutation(count)).to(device)
        share = torch.from_numpy(self.rng.random(count).astype(np.float32)).to(device)
        return partner, share


def _class_loss(logits: torch.Tensor, labels: torch.Tensor, partner, share) -> torch.Tensor:
    if partner is None:
        return F.cross_entropy(logits, labels)
    own = F.cross_entropy(logits, labels, reduction="none")
    other = F.cross_entropy(logits, labels[partner], reduction="none")
    return (share * own + (1 - share) * other).mean()


def _moved_to_partners(targets: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """Image j's target rows, re-addressed to the image i that blends j in (partner[i] == j)."""
    blended_into = torch.argsort(partner.cpu()).to(targets.device)
    moved = targets.clone()
    moved[:, 0] = blended_into[targets[:, 0].long()].to(targets.dtype)
    return moved
