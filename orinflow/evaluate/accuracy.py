"""Accuracy through any Runner: COCO-style mAP for detectors, top-1/top-5 for classifiers."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..data import Dataset, read_image
from ..errors import OrinflowError
from ..models.processing import Detections, ImageMeta, Processing
from ..progress import progress
from ..runtime import Runner
from .classes import remap

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def batches(images: Sequence[str | Path], processing: Processing, batch_size: int,
            skipped: list[str] | None = None) -> Iterator[tuple[list[int], np.ndarray, list]]:
    """Preprocessed batches; image decoding runs in threads ahead of inference.

    With a `skipped` list, an unreadable image is appended to it and left out instead of stopping the run.
    """
    def prepare(index: int):
        try:
            return processing.preprocess(read_image(images[index]))
        except OrinflowError:
            if skipped is None:
                raise
            return None

    indices = list(range(len(images)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            prepared = dict(zip(chunk, pool.map(prepare, chunk)))
            if skipped is not None:
                skipped += [str(images[i]) for i in chunk if prepared[i] is None]
            kept = [i for i in chunk if prepared[i] is not None]
            if kept:
                yield kept, np.stack([prepared[i][0] for i in kept]), [prepared[i][1] for i in kept]


def predictions(runner: Runner, processing: Processing, images: Sequence[str | Path], batch_size: int = 1,
                skipped: list[str] | None = None, **post) -> Iterator[tuple[int, ImageMeta, object]]:
    """(image index, its letterbox/resize meta, postprocessed result) for every image: what evaluation scores and `infer.py` prints.

    `skipped` (a list) skips unreadable images and collects their paths; `post` goes to
    Processing.postprocess (conf, iou, max_det for detectors).
    """
    steps = (len(images) + batch_size - 1) // batch_size
    for indices, batch, metas in progress(batches(images, processing, batch_size, skipped), "inference", total=steps):
        yield from zip(indices, metas, processing.postprocess(processing.head_output(runner.run(batch)), metas, **post))


def evaluate_detection(runner: Runner, processing: Processing, dataset: Dataset, conf: float = 0.001,
                       iou: float | None = None, max_det: int = 300, batch_size: int = 1,
                       skipped: list[str] | None = None, coco=None, class_map: dict[int, int] | None = None) -> dict:
    """mAP of `dataset`; images listed in `skipped` (when given) are left out with their labels.

    `coco` (a CocoCollector) also receives every image's ground truth and detections. `class_map`: model class
    -> data class (evaluate/classes.py); detections of other classes are not scored, nor are the labels of data
    classes no model class pairs with (the metrics' "unpaired" says which and how many).
    """
    if dataset.task != "detect":
        raise OrinflowError(f"{dataset.name} has no detection labels (a dataset YAML with YOLO txt labels is needed)")
    stats, target_classes, unpaired = [], [], {}
    paired = set(class_map.values()) if class_map else None
    for index, meta, dets in predictions(runner, processing, dataset.images, batch_size, skipped, conf=conf, iou=iou,
                                         max_det=max_det):
        dets = remap(dets, class_map)
        labels = dataset.labels[index]
        if paired is not None:
            left = ~np.isin(labels[:, 0].astype(int), list(paired))
            for cls in labels[left, 0].astype(int):
                unpaired[int(cls)] = unpaired.get(int(cls), 0) + 1
            labels = labels[~left]
        gt_boxes = _labels_to_xyxy(labels, meta.original_hw)
        stats.append(image_stats(dets, gt_boxes, labels))
        if coco is not None:
            coco.add(index, Path(dataset.images[index]), meta.original_hw, gt_boxes, labels[:, 0].astype(int), dets)
        target_classes.append(labels[:, 0].astype(int))
    if not stats:
        raise OrinflowError(f"no image of {dataset.name} could be read")
    metrics = detection_metrics(stats, np.concatenate(target_classes) if target_classes else np.zeros(0, int),
                                (dataset.names or processing.names) if class_map else (processing.names or dataset.names))
    if unpaired:
        metrics["unpaired"] = {str(dataset.names.get(c, c)): n for c, n in sorted(unpaired.items())}
    return metrics


def image_stats(dets: Detections, gt_boxes: np.ndarray, labels: np.ndarray) -> tuple:
    """One image's (true positives per IoU threshold, scores, classes), what detection_metrics reads."""
    return match_predictions(dets, gt_boxes, labels[:, 0].astype(int)), dets.scores, dets.classes


def detection_map(per_image: list[tuple[Detections, tuple[int, int]]], dataset: Dataset) -> dict:
    """mAP50 and mAP50-95 of detections already made, one (Detections, original hw) per image of `dataset`."""
    stats = [image_stats(dets, _labels_to_xyxy(labels, hw), labels)
             for (dets, hw), labels in zip(per_image, dataset.labels)]
    targets = np.concatenate([labels[:, 0].astype(int) for labels in dataset.labels]) if stats else np.zeros(0, int)
    metrics = detection_metrics(stats, targets, dataset.names)
    return {"mAP50": metrics["mAP50"], "mAP50-95": metrics["mAP50-95"]}


def _labels_to_xyxy(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    cx, cy, bw, bh = labels[:, 1] * w, labels[:, 2] * h, labels[:, 3] * w, labels[:, 4] * h
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between xyxy boxes a (n,4) and b (m,4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area_a = (a[:, 2:] - a[:, :2]).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).prod(1)
    return inter / (area_a[:, None] + area_b[None] - inter + 1e-9)


def match_predictions(dets: Detections, gt_boxes: np.ndarray, gt_classes: np.ndarray) -> np.ndarray:
    """(n_pred, 10) bool: prediction is a true positive at each IoU threshold.

    Per threshold, YOLOv5's and Ultralytics' rule: among same-class pairs above it, each
    prediction takes its best-IoU label, then each label keeps the most confident of the
    predictions that took it. (Keeping the best-IoU prediction instead turns confident
    detections into false positives: on yolov5n/coco128 that reads mAP50 0.47 instead of 0.55.)
    """
    correct = np.zeros((len(dets.scores), len(IOU_THRESHOLDS)), bool)
    if not len(dets.scores) or not len(gt_boxes):
        return correct
    iou = box_iou(gt_boxes, dets.boxes) * (gt_classes[:, None] == dets.classes[None])
    confidence_rank = np.argsort(np.argsort(-dets.scores, kind="stable"), kind="stable")
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


def evaluate_classification(runner: Runner, processing: Processing, dataset: Dataset, batch_size: int = 32,
                            skipped: list[str] | None = None) -> dict:
    if dataset.task != "classify":
        raise OrinflowError(f"{dataset.name} is not a classification set (one subfolder of images per class)")
    labels = np.asarray(dataset.labels)
    probs = np.zeros((len(dataset), 0), np.float32)
    seen = np.zeros(len(dataset), bool)
    for index, _, p in predictions(runner, processing, dataset.images, batch_size, skipped):
        if probs.shape[1] == 0:
            if len(p) < len(dataset.names):
                raise OrinflowError(f"the model predicts {len(p)} classes but the data has {len(dataset.names)}")
            probs = np.zeros((len(dataset), len(p)), np.float32)
        probs[index], seen[index] = p, True
    if not seen.any():
        raise OrinflowError(f"no image of {dataset.name} could be read")
    ranked = np.argsort(-probs[seen], 1)[:, :5]
    top1_hits = int((ranked[:, 0] == labels[seen]).sum())
    top5_hits = int((ranked == labels[seen][:, None]).any(1).sum())
    count = int(seen.sum())
    return {"top1": top1_hits / count, "top5": top5_hits / count, "images": count}
