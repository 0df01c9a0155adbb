"""Pose: a detector whose rows also carry K keypoints (x, y in input pixels, and a visibility score when the
model's `kpt_shape` has 3 values per point), decoded in the graph. Boxes are read as a detector's; each kept box
brings its keypoints, mapped back to the original image. Scored by box mAP and pose mAP (OKS) as Ultralytics'
pose validator scores them (tasks/keypoints.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import OrinflowError
from .ap import match_by_iou, paired_metrics
from .base import Scoring
from .boxes import HEAD_ANCHOR_FREE, Detections, kept_candidates, labels_to_xyxy
from .detect import Detect
from .image import unletterbox, to_image_pixels
from .keypoints import BOX_AREA_TO_OBJECT, keypoint_similarity, oks_sigmas


@dataclass
class Poses(Detections):
    """One image's instances: boxes, scores and classes in original-image pixels (as Detections), and
    `keypoints`, (n, K, D) in original-image pixels (x, y, and the visibility score when D is 3)."""

    keypoints: np.ndarray = None


def keypoint_count(processing) -> int:
    """Values per anchor row that are keypoints (K x D of the model's kpt_shape)."""
    if processing.kpt_shape is None:
        raise OrinflowError("a pose model's processing must name its kpt_shape (keypoints, values per keypoint)")
    return processing.kpt_shape[0] * processing.kpt_shape[1]


class Pose(Detect):
    name = "pose"
    metric_keys = ("pose_mAP50", "pose_mAP50-95")
    headline = "pose_mAP50-95"
    headline_label = "pose mAP50-95"
    figures = ("pose_mAP50-95", "pose_mAP50", "mAP50-95", "mAP50")  # box figures on request
    nms_in_engine = False  # EfficientNMS_TRT drops the keypoints: NMS stays in post-processing
    label_tasks = ("pose",)
    labels_hint = ("keypoint labels (a dataset YAML with kpt_shape, and YOLO txt rows "
                   "'class cx cy w h x1 y1 [v1] x2 y2 [v2] ...')")
    coco_iou_types = ("bbox",)  # COCO's keypoint AP needs its own sigmas file; pose mAP is the validator's
    results_phrase = "persons (box, class, score, keypoints x, y and visibility; NMS runs here, not in the engine)"
    keypoints = True  # its rows end in keypoints; its label loss reads each object's keypoints
    deepstream = False  # nvinfer has no keypoint output: it needs a custom parser and a tracker-side consumer

    outline_cause = "keypoints differ"
    seen_score = 0.5  # a predicted keypoint counts as seen above this visibility score (compare's reference)

    def instance_similarity(self, a, b):
        """OKS of B's keypoints against A's, A's seen points and box standing in for the labels."""
        if not len(a.keypoints) or not len(b.keypoints):
            return None
        reference = self.seen_points(a.keypoints)
        area = (a.boxes[:, 2] - a.boxes[:, 0]) * (a.boxes[:, 3] - a.boxes[:, 1]) * BOX_AREA_TO_OBJECT
        return keypoint_similarity(reference, b.keypoints, area, oks_sigmas(a.keypoints.shape[1:]))

    def seen_points(self, keypoints: np.ndarray) -> np.ndarray:
        """(n, K, 3) x, y and 1 where the model sees the point (visibility score above `seen_score`; every
        point of a 2-value layout), 0 elsewhere."""
        seen = keypoints[..., 2] > self.seen_score if keypoints.shape[-1] == 3 else np.ones(keypoints.shape[:2], bool)
        return np.concatenate([keypoints[..., :2], seen[..., None].astype(np.float32)], -1)

    def keypoint_errors(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel distance of each of B's keypoints from A's, (n, K), and where A sees the point."""
        return np.linalg.norm(b[..., :2] - a[..., :2], axis=-1), self.seen_points(a)[..., 2] > 0

    def classes_in_head(self, processing, channels, output_shapes) -> int:
        return channels - keypoint_count(processing)

    def read(self, processing, outputs, metas, conf: float = 0.001, iou: float | None = None, max_det: int = 300):
        count = keypoint_count(processing)
        raw = torch.as_tensor(np.asarray(outputs[0], dtype=np.float32))
        iou = processing.nms_iou if iou is None else iou
        out = []
        for pred, meta in zip(raw, metas):
            boxes, scores, classes, rows = kept_candidates(pred, processing.head, conf, iou, max_det,
                                                           processing.imgsz, extra=count)
            values = pred[-count:, rows].T if processing.head == HEAD_ANCHOR_FREE else pred[rows, -count:]
            points = values.numpy().reshape(len(rows), *processing.kpt_shape).copy()
            if len(rows):
                points[..., :2] = to_image_pixels(points[..., :2].reshape(-1, 2), meta).reshape(points.shape[:2] + (2,))
            out.append(Poses(unletterbox(boxes.numpy(), meta), scores.numpy(), classes.numpy().astype(int),
                             points))
        return out

    def check_data(self, dataset, processing=None) -> None:
        super().check_data(dataset, processing)
        if len(getattr(dataset, "keypoints", [])) != len(dataset.images):
            raise OrinflowError(f"{dataset.name} has no {self.labels_hint}")
        model = tuple(processing.kpt_shape) if processing is not None and processing.kpt_shape else None
        if model is not None and model[0] != dataset.kpt_shape[0]:
            raise OrinflowError(f"the model predicts {model[0]} keypoints (kpt_shape {list(model)}) but "
                                f"{dataset.name} labels {dataset.kpt_shape[0]} (kpt_shape {list(dataset.kpt_shape)})")

    def score(self, results, dataset, names, scoring: Scoring) -> dict:
        self.check_data(dataset)
        return super().score(results, dataset, names, scoring)

    def image_stats(self, dets, dataset, index, kept, meta) -> tuple:
        """Box statistics as a detector's, then keypoint statistics by OKS in original-image pixels."""
        box = super().image_stats(dets, dataset, index, kept, meta)
        labels = dataset.labels[index][kept]
        gt = label_keypoints(dataset.keypoints[index][kept], meta.original_hw)
        boxes = labels_to_xyxy(labels, meta.original_hw)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * BOX_AREA_TO_OBJECT
        sigmas = oks_sigmas(dataset.kpt_shape, dataset.kpt_sigmas)
        oks = keypoint_similarity(gt, dets.keypoints, area, sigmas)
        return box, (match_by_iou(oks, labels[:, 0].astype(int), dets.classes, dets.scores), dets.scores,
                     dets.classes)

    def metrics(self, stats: list, targets: np.ndarray, names: dict) -> dict:
        return paired_metrics(stats, targets, names, "pose")

    def describe(self, result, names) -> dict:
        found = super().describe(result, names)
        for row, points in zip(found["detections"], result.keypoints):
            row["keypoints"] = [[round(float(v), 3) for v in point] for point in points]
        return found


def label_keypoints(keypoints: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(n, K, 3) normalised keypoints with visibility -> pixels of an (h, w) image, visibility kept."""
    out = np.array(keypoints, np.float32)  # (n, K, 3), n may be 0
    out[..., 0] *= hw[1]
    out[..., 1] *= hw[0]
    return out


POSE = Pose()
