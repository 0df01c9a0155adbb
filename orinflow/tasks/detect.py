"""Detection: letterboxed images in, boxes with classes and scores out, scored by mAP50 and mAP50-95 as
YOLOv5's val.py and Ultralytics' validator score them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import OrinflowError
from .ap import box_stats, detection_metrics
from .base import Scoring, Task
from .boxes import HEAD_EFFICIENT_NMS, Detections, box_iou, kept_candidates, labels_to_xyxy
from .image import ImageMeta, letterbox_image, stretch_image, to_input, unletterbox


def efficient_nms_rows(processing, outputs: list) -> np.ndarray:
    """The graph outputs as the one array the decode reads: EfficientNMS_TRT's four outputs become (B, K, 6) rows
    of x1, y1, x2, y2, score, class, zero past each image's count."""
    if processing.head != HEAD_EFFICIENT_NMS:
        return outputs[0]
    count, boxes, scores, classes = (np.asarray(o) for o in outputs[:4])
    rows = np.concatenate([boxes, scores[..., None], classes[..., None]], -1).astype(np.float32)
    rows[np.arange(rows.shape[1])[None, :] >= count.reshape(-1, 1)] = 0
    return rows


class Detect(Task):
    name = "detect"
    metric_keys = ("mAP50", "mAP50-95")
    headline = "mAP50-95"
    headline_label = "mAP50-95"
    figures = ("mAP50-95", "mAP50")
    instances = True
    protects_decode = True
    nms_in_engine = True
    label_tasks = ("detect", "segment", "pose")  # a polygon's box and a person's box are box labels
    labels_hint = "detection labels (a dataset YAML with YOLO txt labels is needed)"
    coco_iou_types = ("bbox",)
    results_phrase = "detections (box, class, score)"

    def preprocess(self, processing, image_bgr):
        fit = letterbox_image if processing.resize == "letterbox" else stretch_image
        resized, meta = fit(image_bgr, processing.imgsz)
        return to_input(resized, processing.channels, processing.mean, processing.std), meta

    def input_phrase(self, processing) -> str:
        return processing.resize

    def post_options(self, conf, iou, max_det) -> dict:
        return {"conf": conf, "iou": iou, "max_det": max_det}

    def head_output(self, processing, outputs):
        return efficient_nms_rows(processing, outputs)

    def read(self, processing, outputs, metas, conf: float = 0.001, iou: float | None = None, max_det: int = 300):
        raw = torch.as_tensor(np.asarray(efficient_nms_rows(processing, outputs), dtype=np.float32))
        iou = processing.nms_iou if iou is None else iou
        out = []
        for pred, meta in zip(raw, metas):
            boxes, scores, classes, _ = kept_candidates(pred, processing.head, conf, iou, max_det, processing.imgsz)
            out.append(Detections(unletterbox(boxes.numpy(), meta), scores.numpy(), classes.numpy().astype(int)))
        return out

    def score(self, results, dataset, names, scoring: Scoring) -> dict:
        """mAP of `dataset`. Labels of data classes that no model class pairs with (`scoring.class_map`) are left
        out and counted in the metrics' "unpaired"."""
        stats, target_classes, unpaired = [], [], {}
        paired = set(scoring.class_map.values()) if scoring.class_map else None
        for index, meta, dets in results:
            dets = dets.in_classes(scoring.class_map)
            labels = dataset.labels[index]
            kept = self.paired_labels(labels, paired, unpaired)
            stats.append(self.image_stats(dets, dataset, index, kept, meta))
            if scoring.coco is not None:
                scoring.coco.add(index, Path(dataset.images[index]), meta.original_hw,
                                 labels_to_xyxy(labels[kept], meta.original_hw), labels[kept, 0].astype(int), dets,
                                 self.outlines(dataset, index, kept))
            target_classes.append(labels[kept, 0].astype(int))
        if not stats:
            raise OrinflowError(f"no image of {dataset.name} could be read")
        targets = np.concatenate(target_classes)
        metrics = self.metrics(stats, targets, names)
        if unpaired:
            metrics["unpaired"] = {str(dataset.names.get(c, c)): n for c, n in sorted(unpaired.items())}
        return metrics

    @staticmethod
    def paired_labels(labels: np.ndarray, paired: set | None, unpaired: dict) -> np.ndarray:
        """Which label rows are scored; the others' classes are counted in `unpaired`."""
        if paired is None:
            return np.ones(len(labels), bool)
        left = ~np.isin(labels[:, 0].astype(int), list(paired))
        for cls in labels[left, 0].astype(int):
            unpaired[int(cls)] = unpaired.get(int(cls), 0) + 1
        return ~left

    def outlines(self, dataset, index: int, kept: np.ndarray) -> list | None:
        """The scored objects' polygons, for tasks scored by their outline (None: boxes only)."""
        return None

    def image_stats(self, dets, dataset, index: int, kept: np.ndarray, meta) -> tuple:
        """One image's (true positives per IoU threshold, scores, classes)."""
        labels = dataset.labels[index][kept]
        return box_stats(dets, labels_to_xyxy(labels, meta.original_hw), labels)

    def metrics(self, stats: list, targets: np.ndarray, names: dict) -> dict:
        return detection_metrics(stats, targets, names)

    def agreement(self, processing, reference, candidate, conf, iou) -> dict:
        meta = [ImageMeta(tuple(processing.imgsz)) for _ in reference[0]]  # boxes stay in network pixels
        wanted, got = (self.read(processing, outputs, meta, conf=conf) for outputs in (reference, candidate))
        total = kept = 0
        for a, b in zip(wanted, got):
            total += len(a.boxes)
            if len(a.boxes) and len(b.boxes):
                match = box_iou(a.boxes, b.boxes) * (a.classes[:, None] == b.classes[None])
                kept += int((match >= iou).any(1).sum())
        return {"what": "detections", "agreement": kept / total if total else 1.0}

    def describe(self, result, names) -> dict:
        return {"detections": [{"class": int(c), "name": names.get(int(c), str(c)), "score": float(s),
                                "box_xyxy": [float(v) for v in box]}
                               for box, s, c in zip(result.boxes, result.scores, result.classes)]}


DETECT = Detect()
