"""Pre- and post-processing: the one place where pixels go in and detections come out.

A `Processing` is plain data (stored in every exported ONNX as metadata), so a PyTorch
module, an ONNX file and a TensorRT engine of the same model go through identical code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real

import cv2
import numpy as np
import torch
import torchvision

from ..config import IMAGENET_MEAN, IMAGENET_STD, LETTERBOX_PAD, MAX_IMGSZ
from ..errors import OrinflowError

# Raw output layouts of detection heads (what the exported graph returns).
HEAD_ANCHOR_FREE = "xywh_scores"  # (B, 4+nc, N): Ultralytics YOLOv8/11/26 one-to-many, decoded, sigmoided
HEAD_OBJECTNESS = "xywh_obj_scores"  # (B, N, 5+nc): original YOLOv5 anchors, objectness
HEAD_END2END = "xyxy_score_class"  # (B, K, 6): NMS-free heads (YOLO26 one-to-one)
HEAD_EFFICIENT_NMS = "num_boxes_scores_classes"  # TensorRT's EfficientNMS_TRT outputs (export --nms trt)
HEAD_GRID = "grid_obj_scores"  # (B, N, 5+nc): YOLOX's default export, boxes relative to grid cells, not decoded
HEAD_FORMATS = (HEAD_ANCHOR_FREE, HEAD_OBJECTNESS, HEAD_END2END, HEAD_GRID, HEAD_EFFICIENT_NMS)
NMS_INSIDE = (HEAD_END2END, HEAD_EFFICIENT_NMS)  # heads whose graph already ran NMS
GRID_STRIDES = (8, 16, 32)  # YOLOX's (and every P3-P5 detector's) output strides
RESIZE_MODES = ("letterbox", "stretch")  # keep aspect and pad grey 114, or resize to imgsz ignoring aspect
CHANNEL_ORDERS = ("rgb", "bgr")

MAX_NMS_CANDIDATES = 30000


class ProcessingError(OrinflowError):
    """A processing field that breaks the rules its flag follows; `field` names it (the metadata key's field)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field = field


def _finite_triple(values) -> bool:
    return (isinstance(values, (tuple, list)) and len(values) == 3
            and all(isinstance(v, Real) and not isinstance(v, bool) and np.isfinite(v) for v in values))


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
    scale_y: float | None = None  # a stretched image's vertical scale (None: `scale`, aspect kept)


@dataclass
class Processing:
    task: str  # "detect" | "classify"
    imgsz: tuple[int, int]  # network input (h, w)
    names: dict[int, str] = field(default_factory=dict)
    head: str | None = None  # one of HEAD_FORMATS for detectors
    # Input = (pixel/255 - mean) / std per channel, in `channels` order. None: the task's default
    # (ImageNet for classifiers; 0..1 pixels, mean 0 and std 1, for detectors).
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    crop_fraction: float = 1.0  # classifiers: resize to imgsz/crop_fraction, centre-crop imgsz
    nms_iou: float = 0.7  # the family's usual default
    resize: str = "letterbox"  # detectors: one of RESIZE_MODES
    channels: str = "rgb"  # one of CHANNEL_ORDERS

    def __post_init__(self):
        classify = self.task == "classify"
        self.mean = tuple(IMAGENET_MEAN if classify else (0.0, 0.0, 0.0)) if self.mean is None else tuple(self.mean)
        self.std = tuple(IMAGENET_STD if classify else (1.0, 1.0, 1.0)) if self.std is None else tuple(self.std)
        self.validate()

    def validate(self) -> None:
        """The rules the flags follow (--imgsz, --mean/--std, --crop, --iou, --head, ...), for a Processing made
        from flags and one read from a model's metadata alike."""
        choices = {"task": ("detect", "classify"), "resize": RESIZE_MODES, "channels": CHANNEL_ORDERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ProcessingError(name, f"is {getattr(self, name)!r}; one of {', '.join(allowed)} expected")
        if self.head is not None and self.head not in HEAD_FORMATS:  # None: preprocessing only (calibration)
            raise ProcessingError("head", f"is {self.head!r}; one of {', '.join(HEAD_FORMATS)} expected")
        if (len(self.imgsz) != 2 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in self.imgsz)
                or not all(1 <= v <= MAX_IMGSZ for v in self.imgsz)):
            raise ProcessingError("imgsz", f"is {list(self.imgsz)}; two whole numbers from 1 to {MAX_IMGSZ} expected")
        if not _finite_triple(self.mean) or not _finite_triple(self.std) or min(self.std) <= 0:
            raise ProcessingError("mean/std", f"are {list(self.mean)} / {list(self.std)}; three finite numbers each, "
                                  "std positive, expected")
        if not isinstance(self.crop_fraction, Real) or not 0 < self.crop_fraction <= 1:
            raise ProcessingError("crop_fraction", f"is {self.crop_fraction!r}; a fraction in (0, 1] expected")
        if not isinstance(self.nms_iou, Real) or not 0 < self.nms_iou < 1:
            raise ProcessingError("nms_iou", f"is {self.nms_iou!r}; a value in (0, 1) expected")
        if not isinstance(self.names, dict) or not all(isinstance(k, Integral) and isinstance(v, str)
                                                       for k, v in self.names.items()):
            raise ProcessingError("names", "must map class numbers to names")

    # ---- serialisation (ONNX metadata, run records) ----
    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Processing":
        data = json.loads(text)
        data["imgsz"] = tuple(data["imgsz"])
        data["names"] = {int(k): v for k, v in data.get("names", {}).items()}
        if "channels" not in data and data.get("task") == "detect":
            data["mean"] = data["std"] = None  # written before detectors could be normalised: 0..1 pixels
        return cls(**data)

    # ---- preprocessing ----
    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        """BGR uint8 HWC image -> float32 CHW network input, and how to map back."""
        if self.task == "detect":
            resized, meta = (letterbox_image if self.resize == "letterbox" else stretch_image)(image_bgr, self.imgsz)
        else:
            resized, meta = centre_crop_image(image_bgr, self.imgsz, self.crop_fraction)
        return to_input(resized, self.channels, self.mean, self.std), meta

    def input_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) of what `preprocess` can produce (0..1 pixels, normalised)."""
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        if self.channels == "bgr":
            mean, std = mean[::-1], std[::-1]
        return (0 - mean) / std, (1 - mean) / std

    def describe_input(self) -> str:
        """One phrase for messages: how pixels become the input."""
        if (self.mean, self.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)):
            scale = "0..1"
        elif set(self.mean) == {0.0} and all(abs(s * 255 - 1) < 1e-6 for s in self.std):
            scale = "0..255"
        else:
            scale = f"mean {','.join(f'{v:g}' for v in self.mean)} std {','.join(f'{v:g}' for v in self.std)}"
        return f"{self.resize if self.task == 'detect' else 'centre crop'} {self.channels.upper()} {scale}"

    # ---- postprocessing ----
    def head_output(self, outputs: list) -> np.ndarray:
        """The graph outputs as the one array `postprocess` reads: EfficientNMS_TRT's four outputs become
        (B, K, 6) rows of x1, y1, x2, y2, score, class, zero past each image's count."""
        if self.head != HEAD_EFFICIENT_NMS:
            return outputs[0]
        count, boxes, scores, classes = (np.asarray(o) for o in outputs[:4])
        rows = np.concatenate([boxes, scores[..., None], classes[..., None]], -1).astype(np.float32)
        rows[np.arange(rows.shape[1])[None, :] >= count.reshape(-1, 1)] = 0
        return rows

    def postprocess(self, raw: np.ndarray | torch.Tensor, metas: list[ImageMeta], conf: float = 0.001,
                    iou: float | None = None, max_det: int = 300) -> list:
        """Raw first output of the graph -> per-image Detections (detect) or class probabilities (classify)."""
        raw = torch.as_tensor(np.asarray(raw, dtype=np.float32))
        if self.task == "classify":
            return list(class_probabilities(raw).numpy())
        iou = self.nms_iou if iou is None else iou
        out = []
        for pred, meta in zip(raw, metas):
            boxes, scores, classes = decode_candidates(pred, self.head, conf, self.imgsz)
            if self.head not in NMS_INSIDE:
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
    """The YOLO convention: letterboxed, RGB, 0..1 (float32 CHW)."""
    padded, meta = letterbox_image(image_bgr, imgsz)
    return to_input(padded, "rgb", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), meta


def letterbox_image(image_bgr: np.ndarray, imgsz: tuple[int, int]) -> tuple[np.ndarray, ImageMeta]:
    """Resize keeping aspect (area interpolation when shrinking), pad centred with grey 114 (uint8 HWC)."""
    h0, w0 = image_bgr.shape[:2]
    scale = min(imgsz[0] / h0, imgsz[1] / w0)
    h, w = round(h0 * scale), round(w0 * scale)
    image_bgr = _resize(image_bgr, h, w, scale)
    top, left = (imgsz[0] - h) / 2, (imgsz[1] - w) / 2
    t, b = round(top - 0.1), round(top + 0.1)
    l, r = round(left - 0.1), round(left + 0.1)
    padded = cv2.copyMakeBorder(image_bgr, t, b, l, r, cv2.BORDER_CONSTANT, value=(LETTERBOX_PAD,) * 3)
    return padded, ImageMeta((h0, w0), scale, (float(l), float(t)))


def stretch_image(image_bgr: np.ndarray, imgsz: tuple[int, int]) -> tuple[np.ndarray, ImageMeta]:
    """Resize to exactly imgsz, aspect not kept (detectors trained that way, such as SSD-style exports)."""
    h0, w0 = image_bgr.shape[:2]
    scale_x, scale_y = imgsz[1] / w0, imgsz[0] / h0
    return _resize(image_bgr, imgsz[0], imgsz[1], min(scale_x, scale_y)), ImageMeta((h0, w0), scale_x, (0.0, 0.0),
                                                                                   scale_y)


def centre_crop_image(image_bgr, imgsz, crop_fraction) -> tuple[np.ndarray, ImageMeta]:
    """Resize the short side to imgsz/crop_fraction, centre-crop imgsz (uint8 HWC)."""
    h0, w0 = image_bgr.shape[:2]
    short = round(min(imgsz) / crop_fraction)
    scale = short / min(h0, w0)
    h, w = max(imgsz[0], round(h0 * scale)), max(imgsz[1], round(w0 * scale))
    image_bgr = _resize(image_bgr, h, w, scale)
    top, left = (h - imgsz[0]) // 2, (w - imgsz[1]) // 2
    return image_bgr[top:top + imgsz[0], left:left + imgsz[1]], ImageMeta((h0, w0), scale, (float(left), float(top)))


def classify_transform(image_bgr, imgsz, crop_fraction, mean, std) -> tuple[np.ndarray, ImageMeta]:
    """Centre crop, RGB, normalised with mean/std (float32 CHW)."""
    cropped, meta = centre_crop_image(image_bgr, imgsz, crop_fraction)
    return to_input(cropped, "rgb", mean, std), meta


def _resize(image: np.ndarray, h: int, w: int, scale: float) -> np.ndarray:
    if (h, w) == image.shape[:2]:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def to_input(image_bgr: np.ndarray, channels: str, mean, std) -> np.ndarray:
    """uint8 HWC BGR -> float32 CHW in `channels` order, (pixel/255 - mean) / std (mean/std in that order)."""
    pixels = image_bgr if channels == "bgr" else image_bgr[:, :, ::-1]
    values = pixels.astype(np.float32) / 255.0
    if tuple(mean) != (0.0, 0.0, 0.0) or tuple(std) != (1.0, 1.0, 1.0):
        values = (values - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def class_probabilities(raw: torch.Tensor) -> torch.Tensor:
    """Softmax unless the graph already returns probabilities (rows summing to one)."""
    raw = raw.reshape(raw.shape[0], -1)
    if raw.min() >= 0 and torch.allclose(raw.sum(1), torch.ones(raw.shape[0]), atol=1e-3):
        return raw
    return raw.softmax(1)


def decode_candidates(pred: torch.Tensor, head: str, conf: float, imgsz: tuple[int, int] = (640, 640)):
    """One image's raw head output -> (xyxy boxes, scores, classes) of all class scores above conf."""
    if head in NMS_INSIDE:
        keep = pred[:, 4] > conf
        pred = pred[keep]
        return pred[:, :4], pred[:, 4], pred[:, 5].long()
    if head == HEAD_OBJECTNESS:  # objectness below conf cannot give a class score above it: skip early
        pred = pred[pred[:, 4] > conf]
    boxes, cls_scores = anchor_view(pred, head, imgsz)
    # Multi-label: every (box, class) pair above the threshold is a candidate, as COCO evaluation expects.
    idx, cls = (cls_scores > conf).nonzero(as_tuple=True)
    return boxes[idx], cls_scores[idx, cls], cls


def anchor_view(pred: torch.Tensor, head: str, imgsz: tuple[int, int] = (640, 640)):
    """One image's raw head output (NMS not inside) -> per anchor, xyxy boxes (N, 4) and class scores (N, nc)."""
    if head == HEAD_ANCHOR_FREE:
        pred = pred.T  # (N, 4+nc)
        return xywh_to_xyxy(pred[:, :4]), pred[:, 4:]
    if head in (HEAD_OBJECTNESS, HEAD_GRID):
        if head == HEAD_GRID:
            pred = decode_grid(pred, imgsz)
        return xywh_to_xyxy(pred[:, :4]), pred[:, 5:] * pred[:, 4:5]
    raise ValueError(f"unknown detection head format {head!r}")


def multiclass_nms(boxes, scores, classes, iou: float, max_det: int):
    if scores.numel() > MAX_NMS_CANDIDATES:
        top = scores.topk(MAX_NMS_CANDIDATES).indices
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    keep = torchvision.ops.batched_nms(boxes, scores, classes, iou)[:max_det]
    return boxes[keep], scores[keep], classes[keep]


def decode_grid(pred: torch.Tensor, imgsz: tuple[int, int]) -> torch.Tensor:
    """YOLOX's undecoded (..., N, 5+nc) -> input-pixel xywh: xy = (offset + cell) * stride, wh = exp(wh) * stride.

    N must be the cell count of strides 8, 16 and 32 at `imgsz`; the cells run row by row, stride by stride.
    """
    cells, strides = grid_cells(imgsz, pred.shape[-2])
    cells, strides = cells.to(pred), strides.to(pred)
    xy = (pred[..., :2] + cells) * strides
    wh = pred[..., 2:4].exp() * strides
    return torch.cat((xy, wh, pred[..., 4:]), -1)


def grid_cells(imgsz: tuple[int, int], count: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) cell x/y and (N, 1) stride of every output row of a P3-P5 grid head at `imgsz`."""
    cells, strides = [], []
    for stride in GRID_STRIDES:
        h, w = -(-imgsz[0] // stride), -(-imgsz[1] // stride)
        y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        cells.append(torch.stack((x, y), -1).reshape(-1, 2))
        strides.append(torch.full((h * w, 1), stride))
    cells, strides = torch.cat(cells).float(), torch.cat(strides).float()
    if count is not None and count != len(cells):
        raise ValueError(f"a grid head at {imgsz[0]}x{imgsz[1]} has {len(cells)} rows (strides "
                         f"{', '.join(map(str, GRID_STRIDES))}), not {count}")
    return cells, strides


def xywh_to_xyxy(xywh: torch.Tensor) -> torch.Tensor:
    xy, wh = xywh[:, :2], xywh[:, 2:4] / 2
    return torch.cat((xy - wh, xy + wh), 1)


def unletterbox(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Network-input xyxy -> original-image xyxy, clipped to the image."""
    boxes = boxes.copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - meta.pad[0]) / meta.scale
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - meta.pad[1]) / (meta.scale_y or meta.scale)
    h, w = meta.original_hw
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    return boxes
