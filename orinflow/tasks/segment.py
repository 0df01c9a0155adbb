"""Instance segmentation: a detector whose rows also carry mask coefficients, and a second output of mask
prototypes. Boxes are read as a detector's; each kept box's mask is its coefficients times the prototypes, cut to
the box. Scored by box and mask mAP as Ultralytics' segmentation validator scores them (tasks/masks.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OrinflowError
from .ap import match_by_iou, paired_metrics
from .base import Scoring
from .boxes import HEAD_ANCHOR_FREE, Detections, kept_candidates
from .detect import Detect
from .image import ImageMeta, unletterbox
from .masks import label_masks, mask_iou, mask_polygons, prototype_masks


@dataclass
class Segments(Detections):
    """One image's instances: boxes, scores and classes in original-image pixels (as Detections), and `masks`,
    (n, mh, mw) bool on the prototype grid of the network input (a quarter of its size, letterbox included)."""

    masks: np.ndarray = None
    meta: ImageMeta = None  # how the image was fitted to the input
    imgsz: tuple[int, int] = (0, 0)  # the network input (h, w)

    def take(self, keep: np.ndarray, classes: np.ndarray | None = None) -> "Segments":
        return Segments(self.boxes[keep], self.scores[keep], self.classes[keep] if classes is None else classes,
                        self.masks[keep], self.meta, self.imgsz)

    @property
    def polygons(self) -> list:
        """Each mask as polygons in original-image pixels."""
        return [mask_polygons(mask, self.meta, self.imgsz) for mask in self.masks]

    def image_masks(self) -> np.ndarray:
        """(n, h, w) bool masks in original-image pixels."""
        import cv2

        meta, imgsz = self.meta, self.imgsz
        h0, w0 = meta.original_hw
        out = np.zeros((len(self.masks), h0, w0), bool)
        for i, mask in enumerate(self.masks):
            full = cv2.resize(mask.astype(np.uint8), (imgsz[1], imgsz[0]), interpolation=cv2.INTER_NEAREST)
            top, left = int(round(meta.pad[1])), int(round(meta.pad[0]))
            h, w = round(h0 * (meta.scale_y or meta.scale)), round(w0 * meta.scale)
            out[i] = cv2.resize(full[top:top + h, left:left + w], (w0, h0), interpolation=cv2.INTER_NEAREST) > 0
        return out


class Segment(Detect):
    name = "segment"
    metric_keys = ("mask_mAP50", "mask_mAP50-95")
    headline = "mask_mAP50-95"
    headline_label = "mask mAP50-95"
    figures = ("mask_mAP50-95", "mask_mAP50", "mAP50-95", "mAP50")  # box figures on request
    nms_in_engine = False  # EfficientNMS_TRT drops the mask coefficients: NMS stays in post-processing
    label_tasks = ("segment",)
    labels_hint = "segmentation labels (YOLO txt polygons: 'class x1 y1 x2 y2 x3 y3 ...')"
    coco_iou_types = ("bbox", "segm")
    results_phrase = "instances (box, class, score, mask polygons; NMS runs here, not in the engine)"
    outputs = 2
    mask_labels = True  # its label loss reads each object's polygon
    deepstream = False  # nvinfer needs a custom instance-mask parser

    outline_cause = "mask differs"

    def instance_similarity(self, a, b):
        return mask_iou(a.masks, b.masks) if len(a.masks) and len(b.masks) else None

    def classes_in_head(self, processing, channels, output_shapes) -> int:
        prototypes = output_shapes[1][1] if len(output_shapes) > 1 and len(output_shapes[1]) == 4 else 0
        return channels - prototypes if isinstance(prototypes, int) else channels

    def read(self, processing, outputs, metas, conf: float = 0.001, iou: float | None = None, max_det: int = 300):
        if len(outputs) < 2:
            raise OrinflowError("a segmentation model has two outputs (detections with mask coefficients, and "
                                f"mask prototypes); this one gave {len(outputs)}")
        raw = torch.as_tensor(np.asarray(outputs[0], dtype=np.float32))
        protos = torch.as_tensor(np.asarray(outputs[1], dtype=np.float32))
        count = protos.shape[1]
        iou = processing.nms_iou if iou is None else iou
        out = []
        for pred, proto, meta in zip(raw, protos, metas):
            boxes, scores, classes, rows = kept_candidates(pred, processing.head, conf, iou, max_det,
                                                           processing.imgsz, extra=count)
            coefficients = pred[-count:, rows].T if processing.head == HEAD_ANCHOR_FREE else pred[rows, -count:]
            masks = prototype_masks(proto, coefficients, boxes, processing.imgsz)
            out.append(Segments(unletterbox(boxes.numpy(), meta), scores.numpy(), classes.numpy().astype(int), masks,
                                meta, tuple(processing.imgsz)))
        return out

    def outlines(self, dataset, index, kept) -> list:
        return [p for p, keep in zip(dataset.segments[index], kept) if keep]

    def image_stats(self, dets, dataset, index, kept, meta) -> tuple:
        """Box statistics as a detector's, then mask statistics on the prototype grid."""
        box = super().image_stats(dets, dataset, index, kept, meta)
        polygons = self.outlines(dataset, index, kept)
        gt = label_masks(polygons, meta, dets.imgsz, dets.masks.shape[1:])
        classes = dataset.labels[index][kept, 0].astype(int)
        iou = mask_iou(gt, dets.masks) if len(gt) and len(dets.masks) else np.zeros((len(gt), len(dets.masks)))
        return box, (match_by_iou(iou, classes, dets.classes, dets.scores), dets.scores, dets.classes)

    def score(self, results, dataset, names, scoring: Scoring) -> dict:
        if len(dataset.segments) != len(dataset.images):
            raise OrinflowError(f"{dataset.name} has no {self.labels_hint}")
        return super().score(results, dataset, names, scoring)

    def metrics(self, stats: list, targets: np.ndarray, names: dict) -> dict:
        return paired_metrics(stats, targets, names, "mask")

    def describe(self, result, names) -> dict:
        found = super().describe(result, names)
        for row, polygons in zip(found["detections"], result.polygons):
            row["polygons_xy"] = polygons
        return found


SEGMENT = Segment()
