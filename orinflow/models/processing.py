"""Pre- and post-processing: the one place where pixels go in and detections come out.

A `Processing` is plain data (stored in every exported ONNX as metadata), so a PyTorch
module, an ONNX file and a TensorRT engine of the same model go through identical code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch
import torchvision

from ..config import IMAGENET_MEAN, IMAGENET_STD, LETTERBOX_PAD

# Raw output layouts of detection heads (what the exported graph returns).
HEAD_ANCHOR_FREE = "xywh_scores"  # (B, 4+nc, N): Ultralytics YOLOv8/11/26 one-to-many, decoded, sigmoided
HEAD_OBJECTNESS = "xywh_obj_scores"  # (B, N, 5+nc): original YOLOv5 anchors, objectness
HEAD_END2END = "xyxy_score_class"  # (B, K, 6): NMS-free heads (YOLO26 one-to-one)
HEAD_FORMATS = (HEAD_ANCHOR_FREE, HEAD_OBJECTNESS, HEAD_END2END)

MAX_NMS_CANDIDATES = 30000


@dataclass
class Detections:
    """One image's detections in original-image pixels."""

    boxes: np.ndarray  # (n, 4) xyxy
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int


@dataclass
class ImageMeta:
    """How an image was mapped into the network input, to map boxes back."""

    original_hw: tuple[int, int]
    scale: float = 1.0
    pad: tuple[float, float] = (0.0, 0.0)  # left, top


@dataclass
class Processing:
    task: str  # "detect" | "classify"
    imgsz: tuple[int, int]  # network input (h, w)
    names: dict[int, str] = field(default_factory=dict)
    head: str | None = None  # one of HEAD_FORMATS for detectors
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_fraction: float = 1.0  # classifiers: resize to imgsz/crop_fraction, centre-crop imgsz
    nms_iou: float = 0.7  # the family's usual default

    # ---- serialisation (ONNX metadata, run records) ----
    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Processing":
        data = json.loads(text)
        data["imgsz"] = tuple(data["imgsz"])
        data["names"] = {int(k): v for k, v in data.get("names", {}).items()}
        data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
        return cls(**data)

    # ---- preprocessing ----
    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        """BGR uint8 HWC image -> float32 CHW network input, and how to map back."""
        if self.task == "detect":
            return letterbox(image_bgr, self.imgsz)
        return classify_transform(image_bgr, self.imgsz, self.crop_fraction, self.mean, self.std)

    def input_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) of what `preprocess` can produce: 0..1 pixels, normalised for classifiers."""
        if self.task == "detect":
            return np.zeros(3, np.float32), np.ones(3, np.float32)
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        return (0 - mean) / std, (1 - mean) / std

    # ---- postprocessing ----
    def postprocess(self, raw: np.ndarray | torch.Tensor, metas: list[ImageMeta], conf: float = 0.001,
                    iou: float | None = None, max_det: int = 300) -> list:
        """Raw first output of the graph -> per-image Detections (detect) or class probabilities (classify)."""
        raw = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        if self.task == "classify":
            return list(class_probabilities(raw).numpy())
        iou = self.nms_iou if iou is None else iou
        out = []
        for pred, meta in zip(raw, metas):
            boxes, scores, classes = decode_candidates(pred, self.head, conf)
            if self.head != HEAD_END2END:
                boxes, scores, classes = multiclass_nms(boxes, scores, classes, iou, max_det)
            else:
                boxes, scores, classes = boxes[:max_det], scores[:max_det], classes[:max_det]
            out.append(Detections(unletterbox(boxes.numpy(), meta), scores.numpy(), classes.numpy().astype(int)))
        return out


class UsesProcessing:
    """What every model form (PyTorch adapter, ONNX file) derives from its Processing."""

    processing: Processing

    @property
    def task(self) -> str:
        return self.processing.task

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, *self.processing.imgsz)


def letterbox(image_bgr: np.ndarray, imgsz: tuple[int, int]) -> tuple[np.ndarray, ImageMeta]:
    """Resize keeping aspect (area interpolation when shrinking), pad centred with grey 114."""
    h0, w0 = image_bgr.shape[:2]
    scale = min(imgsz[0] / h0, imgsz[1] / w0)
    h, w = round(h0 * scale), round(w0 * scale)
    if (h, w) != (h0, w0):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image_bgr = cv2.resize(image_bgr, (w, h), interpolation=interp)
    top, left = (imgsz[0] - h) / 2, (imgsz[1] - w) / 2
    t, b = round(top - 0.1), round(top + 0.1)
    l, r = round(left - 0.1), round(left + 0.1)
    padded = cv2.copyMakeBorder(image_bgr, t, b, l, r, cv2.BORDER_CONSTANT, value=(LETTERBOX_PAD,) * 3)
    chw = padded[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0
    return np.ascontiguousarray(chw), ImageMeta((h0, w0), scale, (float(l), float(t)))


def classify_transform(image_bgr, imgsz, crop_fraction, mean, std) -> tuple[np.ndarray, ImageMeta]:
    """Resize the short side to imgsz/crop_fraction, centre-crop imgsz, normalise with mean/std."""
    h0, w0 = image_bgr.shape[:2]
    short = round(min(imgsz) / crop_fraction)
    scale = short / min(h0, w0)
    h, w = max(imgsz[0], round(h0 * scale)), max(imgsz[1], round(w0 * scale))
    if (h, w) != (h0, w0):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        image_bgr = cv2.resize(image_bgr, (w, h), interpolation=interp)
    top, left = (h - imgsz[0]) // 2, (w - imgsz[1]) // 2
    rgb = image_bgr[top:top + imgsz[0], left:left + imgsz[1], ::-1].astype(np.float32) / 255.0
    rgb = (rgb - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)), ImageMeta((h0, w0), scale, (float(left), float(top)))


def class_probabilities(raw: torch.Tensor) -> torch.Tensor:
    """Softmax unless the graph already returns probabilities (rows summing to one)."""
    raw = raw.reshape(raw.shape[0], -1)
    if raw.min() >= 0 and torch.allclose(raw.sum(1), torch.ones(raw.shape[0]), atol=1e-3):
        return raw
    return raw.softmax(1)


def decode_candidates(pred: torch.Tensor, head: str, conf: float):
    """One image's raw head output -> (xyxy boxes, scores, classes) of all class scores above conf."""
    if head == HEAD_END2END:
        keep = pred[:, 4] > conf
        pred = pred[keep]
        return pred[:, :4], pred[:, 4], pred[:, 5].long()
    if head == HEAD_ANCHOR_FREE:
        pred = pred.T  # (N, 4+nc)
        boxes, cls_scores = pred[:, :4], pred[:, 4:]
    elif head == HEAD_OBJECTNESS:
        pred = pred[pred[:, 4] > conf]
        boxes, cls_scores = pred[:, :4], pred[:, 5:] * pred[:, 4:5]
    else:
        raise ValueError(f"unknown detection head format {head!r}")
    # Multi-label: every (box, class) pair above the threshold is a candidate, as COCO evaluation expects.
    idx, cls = (cls_scores > conf).nonzero(as_tuple=True)
    return xywh_to_xyxy(boxes[idx]), cls_scores[idx, cls], cls


def multiclass_nms(boxes, scores, classes, iou: float, max_det: int):
    if scores.numel() > MAX_NMS_CANDIDATES:
        top = scores.topk(MAX_NMS_CANDIDATES).indices
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    keep = torchvision.ops.batched_nms(boxes, scores, classes, iou)[:max_det]
    return boxes[keep], scores[keep], classes[keep]


def xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    xy, wh = xywh[:, :2], xywh[:, 2:4] / 2
    return torch.cat((xy - wh, xy + wh), 1)


def unletterbox(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Network-input xyxy -> original-image xyxy, clipped to the image."""
    boxes = boxes.copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - meta.pad[0]) / meta.scale
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - meta.pad[1]) / meta.scale
    h, w = meta.original_hw
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes
