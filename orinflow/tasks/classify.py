"""Classification: centre-cropped images in, class probabilities out, scored by top-1 and top-5."""
from __future__ import annotations

import numpy as np
import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..errors import OrinflowError
from .base import Scoring, Task
from .image import centre_crop_image, to_input


def class_probabilities(raw: torch.Tensor) -> torch.Tensor:
    """Softmax unless the graph already returns probabilities (rows summing to one)."""
    raw = raw.reshape(raw.shape[0], -1)
    if raw.min() >= 0 and torch.allclose(raw.sum(1), torch.ones(raw.shape[0]), atol=1e-3):
        return raw
    return raw.softmax(1)


class Classify(Task):
    name = "classify"
    metric_keys = ("top1", "top5")
    headline = "top1"
    headline_label = "top-1"
    figures = ("top1", "top5")
    label_tasks = ("classify",)
    labels_hint = "classification labels (one subfolder of images per class)"
    default_mean = tuple(IMAGENET_MEAN)
    default_std = tuple(IMAGENET_STD)
    trains_on_labels = True
    results_phrase = "top-5 classes"
    deepstream_network_type = 1
    deepstream_label_separator = ";"

    def preprocess(self, processing, image_bgr):
        cropped, meta = centre_crop_image(image_bgr, processing.imgsz, processing.crop_fraction)
        return to_input(cropped, processing.channels, processing.mean, processing.std), meta

    def input_phrase(self, processing) -> str:
        return "centre crop"

    def read(self, processing, outputs, metas, **post):
        return list(class_probabilities(torch.as_tensor(np.asarray(outputs[0], dtype=np.float32))).numpy())

    def score(self, results, dataset, names, scoring: Scoring) -> dict:
        labels = np.asarray(dataset.labels)
        probs = np.zeros((len(dataset), 0), np.float32)
        seen = np.zeros(len(dataset), bool)
        for index, _, p in results:
            if probs.shape[1] == 0:
                if len(p) < len(dataset.names):
                    raise OrinflowError(f"the model predicts {len(p)} classes but the data has {len(dataset.names)}")
                probs = np.zeros((len(dataset), len(p)), np.float32)
            probs[index], seen[index] = p, True
        if not seen.any():
            raise OrinflowError(f"no image of {dataset.name} could be read")
        ranked = np.argsort(-probs[seen], 1)[:, :5]
        count = int(seen.sum())
        return {"top1": int((ranked[:, 0] == labels[seen]).sum()) / count,
                "top5": int((ranked == labels[seen][:, None]).any(1).sum()) / count, "images": count}

    def agreement(self, processing, reference, candidate, conf, iou) -> dict:
        same = np.argmax(reference[0], axis=1) == np.argmax(candidate[0], axis=1)
        return {"what": "top-1 classes", "agreement": float(same.mean())}

    def describe(self, result, names) -> dict:
        top = result.argsort()[::-1][:5]
        return {"top5": [{"class": int(c), "name": names.get(int(c), str(c)), "probability": float(result[c])}
                         for c in top]}


CLASSIFY = Classify()
