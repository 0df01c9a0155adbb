"""Accuracy through any Runner: each task's room (orinflow/tasks) reads the outputs and scores them; this module
feeds it images and gathers the results."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..data import Dataset, read_image
from ..errors import OrinflowError
from ..models.processing import ImageMeta, Processing
from ..progress import progress
from ..runtime import Runner
from ..tasks import Scoring
from ..tasks.ap import (IOU_THRESHOLDS, ap_per_class, average_precision, box_stats,  # noqa: F401
                        detection_metrics, match_predictions)
from ..tasks.boxes import Detections, box_iou, labels_to_xyxy  # noqa: F401


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
    Processing.read (conf, iou, max_det for tasks with instances).
    """
    steps = (len(images) + batch_size - 1) // batch_size
    for indices, batch, metas in progress(batches(images, processing, batch_size, skipped), "inference", total=steps):
        yield from zip(indices, metas, processing.read(runner.run(batch), metas, **post))


def evaluate_task(runner: Runner, processing: Processing, dataset: Dataset, post: dict | None = None,
                  batch_size: int = 1, skipped: list[str] | None = None, scoring: Scoring | None = None,
                  names: dict[int, str] | None = None) -> dict:
    """The metrics of the model's task on `dataset`; images listed in `skipped` (when given) are left out with
    their labels. `post`: the task's post-processing settings; `scoring`: the class map and COCO collector."""
    room = processing.room
    room.check_data(dataset, processing)
    results = predictions(runner, processing, dataset.images, batch_size, skipped, **(post or {}))
    return room.score(results, dataset, names or processing.names or dataset.names, scoring or Scoring())


def evaluate_detection(runner: Runner, processing: Processing, dataset: Dataset, conf: float = 0.001,
                       iou: float | None = None, max_det: int = 300, batch_size: int = 1,
                       skipped: list[str] | None = None, coco=None, class_map: dict[int, int] | None = None) -> dict:
    """mAP of `dataset` (`evaluate_task` with a detector's settings). `coco` (a CocoCollector) also receives
    every image's ground truth and detections. `class_map`: model class -> data class (evaluate/classes.py);
    detections of other classes are not scored, nor are the labels of data classes no model class pairs with
    (the metrics' "unpaired" says which and how many)."""
    return evaluate_task(runner, processing, dataset, {"conf": conf, "iou": iou, "max_det": max_det}, batch_size,
                         skipped, Scoring(class_map, coco), scored_names(processing, dataset, class_map))


def scored_names(processing: Processing, dataset: Dataset, class_map: dict[int, int] | None) -> dict[int, str]:
    """The class names the metrics use: the data's when a class map pairs the model's classes with them,
    otherwise the model's (either, when the other has none)."""
    if class_map is not None:
        return dataset.names or processing.names
    return processing.names or dataset.names


def detection_map(per_image: list[tuple[Detections, tuple[int, int]]], dataset: Dataset) -> dict:
    """mAP50 and mAP50-95 of detections already made, one (Detections, original hw) per image of `dataset`."""
    stats = [box_stats(dets, labels_to_xyxy(labels, hw), labels)
             for (dets, hw), labels in zip(per_image, dataset.labels)]
    targets = np.concatenate([labels[:, 0].astype(int) for labels in dataset.labels]) if stats else np.zeros(0, int)
    metrics = detection_metrics(stats, targets, dataset.names)
    return {"mAP50": metrics["mAP50"], "mAP50-95": metrics["mAP50-95"]}


def evaluate_classification(runner: Runner, processing: Processing, dataset: Dataset, batch_size: int = 32,
                            skipped: list[str] | None = None) -> dict:
    """top-1 and top-5 of `dataset` (`evaluate_task` for a classifier)."""
    return evaluate_task(runner, processing, dataset, None, batch_size, skipped)
