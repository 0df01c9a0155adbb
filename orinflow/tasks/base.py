"""What every task room answers. The rest of orinflow asks the model's task (`task_room(processing.task)`) and
never branches on its name: a new task is a new room, not a new branch in twenty files."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..errors import OrinflowError


@dataclass
class Scoring:
    """What scoring needs besides the predictions: `class_map` (model class -> data class, None when they are
    the same) and `coco`, a collector that also receives every image's ground truth and predictions."""

    class_map: dict[int, int] | None = None
    coco: object | None = None


class Task:
    """One task's behaviour. Subclasses set the attributes and implement the methods that differ."""

    name = ""
    metric_keys: tuple[str, str] = ("", "")  # the two figures every table shows
    headline = ""  # the figure budgets, selections and route tables follow
    headline_label = ""  # that figure's name in a chart
    figures: tuple[str, ...] = ()  # every figure a selection may follow (--select-metric), the headline first
    instances = False  # predictions are scored instances: --conf, --iou, --max-det, NMS, per-class tables
    nms_in_engine = False  # export/deploy --nms may append EfficientNMS (it carries boxes, scores, classes only)
    protects_decode = False  # the head's decode stays float under INT8 (docs/quantization.md says why)
    label_tasks: tuple[str, ...] = ()  # dataset label kinds this task scores
    labels_hint = ""  # what the data must hold, for the error when it does not
    default_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    default_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    trains_on_labels = False  # fine-tuning adds the label loss by default (distillation alone otherwise)
    coco_iou_types: tuple[str, ...] = ()  # what --metric coco scores
    outputs = 1  # graph outputs the post-processing reads
    mask_labels = False  # the label loss reads polygons too (blending two images' objects is not built for it)
    keypoints = False  # instances carry keypoints: the processing names kpt_shape; the label loss reads them
    deepstream = True  # deploy --deepstream writes an nvinfer config nvinfer can parse

    # ---- pre- and post-processing ----
    def preprocess(self, processing, image_bgr: np.ndarray):
        raise NotImplementedError

    def input_phrase(self, processing) -> str:
        """How images are fitted to the input, for messages."""
        raise NotImplementedError

    def read(self, processing, outputs: list, metas: list, **post) -> list:
        """The graph's outputs for a batch -> one result per image."""
        raise NotImplementedError

    def head_output(self, processing, outputs: list):
        """The output the decode reads first."""
        return outputs[0]

    def classes_in_head(self, processing, channels: int, output_shapes: list) -> int:
        """The class count of a head whose rows hold `channels` class-like columns (the graph's output shapes
        and the processing's keypoint layout tell what else they hold)."""
        return channels

    def post_options(self, conf: float, iou: float | None, max_det: int) -> dict:
        """The post-processing settings this task takes (evaluation records them)."""
        return {}

    # ---- scoring ----
    def check_data(self, dataset, processing=None) -> None:
        """Refuse data this task cannot score (and, with `processing`, data that disagrees with the model)."""
        if dataset.task not in self.label_tasks:
            raise OrinflowError(f"{dataset.name} has no {self.labels_hint}")

    def score(self, results: Iterable, dataset, names: dict[int, str], scoring: Scoring) -> dict:
        """Metrics of `results` ((image index, meta, result) per image) against `dataset`'s labels."""
        raise NotImplementedError

    def agreement(self, processing, reference: list, candidate: list, conf: float, iou: float) -> dict:
        """How often `candidate` outputs give the same answer as `reference` outputs on the same images:
        {"what": ..., "agreement": share}. Instance tasks match at `conf` and `iou`."""
        raise NotImplementedError

    outline_cause = ""  # compare's cause when box and class agree and the task's outline (mask, keypoints) does not

    def instance_similarity(self, a, b):
        """(len(a), len(b)) agreement of two results' instances beyond their boxes (mask IoU, keypoint
        similarity), or None for a task whose instances are boxes only."""
        return None

    def headline_of(self, metrics: dict) -> dict[str, float]:
        return {key: metrics[key] for key in self.metric_keys}

    # ---- what a bundle and a DeepStream config say ----
    def describe(self, result, names: dict[int, str]) -> dict:
        """One image's result as infer.py prints it (JSON)."""
        raise NotImplementedError

    results_phrase = ""  # what infer.py prints per image, for a bundle's README
    deepstream_network_type = 0  # nvinfer's network-type
    deepstream_label_separator = "\n"  # how labels.txt separates names

