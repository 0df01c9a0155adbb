"""Average precision as YOLOv5's val.py and Ultralytics' validator compute it: predictions matched to labels at
ten IoU thresholds, then 101-point interpolated AP per class. Every task with instances (boxes, masks,
keypoints) scores through these, each with its own IoU."""
from __future__ import annotations

import numpy as np

from ..errors import OrinflowError
from .boxes import Detections, box_iou

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def match_predictions(dets: Detections, gt_boxes: np.ndarray, gt_classes: np.ndarray) -> np.ndarray:
    """(n_pred, 10) bool: prediction is a true positive at each IoU threshold.

    Per threshold, YOLOv5's and Ultralytics' rule: among same-class pairs above it, each
    prediction takes its best-IoU label, then each label keeps the most confident of the
    predictions that took it. (Keeping the best-IoU prediction instead turns confident
    detections into false positives: on yolov5n/coco128 that reads mAP50 0.47 instead of 0.55.)
    """
    if not len(dets.scores) or not len(gt_boxes):
        return np.zeros((len(dets.scores), len(IOU_THRESHOLDS)), bool)
    return match_by_iou(box_iou(gt_boxes, dets.boxes), gt_classes, dets.classes, dets.scores)


def box_stats(dets: Detections, gt_boxes: np.ndarray, labels: np.ndarray) -> tuple:
    """One image's (true positives per IoU threshold, scores, classes) by box IoU, what detection_metrics reads."""
    return match_predictions(dets, gt_boxes, labels[:, 0].astype(int)), dets.scores, dets.classes


def match_by_iou(iou: np.ndarray, gt_classes: np.ndarray, classes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """`match_predictions` for any (labels, predictions) IoU matrix: boxes, masks or keypoint similarity."""
    correct = np.zeros((len(scores), len(IOU_THRESHOLDS)), bool)
    if not len(scores) or not len(gt_classes):
        return correct
    iou = iou * (gt_classes[:, None] == classes[None])
    confidence_rank = np.argsort(np.argsort(-scores, kind="stable"), kind="stable")
    for t, threshold in enumerate(IOU_THRESHOLDS):
        gt_idx, pred_idx = np.nonzero(iou >= threshold)
        if not len(gt_idx):
            continue
        order = np.argsort(-iou[gt_idx, pred_idx], kind="stable")
        gt_idx, pred_idx = gt_idx[order], pred_idx[order]
        _, first = np.unique(pred_idx, return_index=True)  # each prediction: its best-IoU label
        gt_idx, pred_idx = gt_idx[first], pred_idx[first]
        order = np.argsort(confidence_rank[pred_idx], kind="stable")
        gt_idx, pred_idx = gt_idx[order], pred_idx[order]
        _, first = np.unique(gt_idx, return_index=True)  # each label: its most confident prediction
        correct[pred_idx[first], t] = True
    return correct


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point interpolated AP of one precision/recall curve.

    The curve runs on from the last recall to (1, 0), as in YOLOv5's val.py and Ultralytics
    up to 8.3, whose figures are the references users compare against. (Ultralytics 8.4
    drops precision to 0 after the last recall instead, which reads lower for weak classes.)
    """
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(np.trapezoid(np.interp(x, mrec, mpre), x))


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray):
    """AP at each IoU threshold for every class present in the targets, plus precision/recall at conf 0.5 rank."""
    order = np.argsort(-conf, kind="stable")
    tp, pred_cls = tp[order], pred_cls[order]
    classes, counts = np.unique(target_cls, return_counts=True)
    ap = np.zeros((len(classes), tp.shape[1]))
    precision_at_end, recall_at_end = np.zeros(len(classes)), np.zeros(len(classes))
    for k, (cls, n_labels) in enumerate(zip(classes, counts)):
        hits = tp[pred_cls == cls]
        if not len(hits):
            continue
        tpc = hits.cumsum(0)
        recall = tpc / n_labels
        precision = tpc / np.arange(1, len(hits) + 1)[:, None]
        ap[k] = [average_precision(recall[:, j], precision[:, j]) for j in range(tp.shape[1])]
        precision_at_end[k], recall_at_end[k] = precision[-1, 0], recall[-1, 0]
    return classes, ap, precision_at_end, recall_at_end


def detection_metrics(stats: list, target_classes: np.ndarray, names: dict[int, str]) -> dict:
    if not stats or not len(target_classes):
        raise OrinflowError("the evaluation data has no labelled objects")
    tp, conf, pred_cls = (np.concatenate(x) for x in zip(*stats))
    classes, ap, _, recall = ap_per_class(tp, conf, pred_cls, target_classes)
    per_class = {
        names.get(int(cls), str(int(cls))): {
            "instances": int((target_classes == cls).sum()), "mAP50": float(ap[i, 0]),
            "mAP50-95": float(ap[i].mean()), "max_recall50": float(recall[i]),
        }
        for i, cls in enumerate(classes)
    }
    return {"mAP50": float(ap[:, 0].mean()), "mAP50-95": float(ap.mean()),
            "instances": int(len(target_classes)), "per_class": per_class}


def paired_metrics(stats: list, target_classes: np.ndarray, names: dict[int, str], prefix: str) -> dict:
    """Box metrics and a second instance metric beside them (masks, keypoints): `stats` holds one (box stats,
    second stats) pair per image; the second's figures are named `prefix`_mAP50 and `prefix`_mAP50-95."""
    box = detection_metrics([s[0] for s in stats], target_classes, names)
    second = detection_metrics([s[1] for s in stats], target_classes, names)
    for name, row in box["per_class"].items():
        row.update({f"{prefix}_{k}": v for k, v in second["per_class"][name].items() if k.startswith("mAP")})
    return {**box, f"{prefix}_mAP50": second["mAP50"], f"{prefix}_mAP50-95": second["mAP50-95"]}
