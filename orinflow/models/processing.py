"""Pre- and post-processing: the one place where pixels go in and detections come out.

A `Processing` is plain data (stored in every exported ONNX as metadata), so a PyTorch
module, an ONNX file and a TensorRT engine of the same model go through identical code.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real

import numpy as np
import torch

from ..config import MAX_IMGSZ
from ..errors import OrinflowError
from ..tasks import TASKS, task_room
from ..tasks.boxes import (GRID_STRIDES, HEAD_ANCHOR_FREE, HEAD_EFFICIENT_NMS, HEAD_END2END, HEAD_FORMATS,  # noqa: F401
                           HEAD_GRID, HEAD_OBJECTNESS, MAX_NMS_CANDIDATES, NMS_INSIDE, Detections, anchor_view,
                           decode_candidates, decode_grid, grid_cells, multiclass_nms, xywh_to_xyxy)
from ..tasks.classify import class_probabilities  # noqa: F401
from ..tasks.image import (ImageMeta, centre_crop_image, classify_transform, letterbox, letterbox_image,  # noqa: F401
                           stretch_image, to_input, unletterbox)

RESIZE_MODES = ("letterbox", "stretch")  # keep aspect and pad grey 114, or resize to imgsz ignoring aspect
CHANNEL_ORDERS = ("rgb", "bgr")


class ProcessingError(OrinflowError):
    """A processing field that breaks the rules its flag follows; `field` names it (the metadata key's field)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field = field


def _finite_triple(values) -> bool:
    return (isinstance(values, (tuple, list)) and len(values) == 3
            and all(isinstance(v, Real) and not isinstance(v, bool) and np.isfinite(v) for v in values))


def _kpt_shape_ok(shape) -> bool:
    return (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(v, Integral) for v in shape)
            and shape[0] >= 1 and shape[1] in (2, 3))


@dataclass
class Processing:
    task: str  # a task of orinflow/tasks (detect, classify, segment)
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
    kpt_shape: tuple[int, int] | None = None  # pose: keypoints per instance, values per keypoint (x y [visibility])

    def __post_init__(self):
        if self.kpt_shape is not None:
            self.kpt_shape = tuple(self.kpt_shape)
        room = TASKS.get(self.task)
        if room is not None:  # an unknown task is refused by validate()
            self.mean = tuple(room.default_mean if self.mean is None else self.mean)
            self.std = tuple(room.default_std if self.std is None else self.std)
        self.validate()

    @property
    def room(self):
        """The task's room (orinflow/tasks): everything that differs between tasks."""
        return task_room(self.task)

    def validate(self) -> None:
        """The rules the flags follow (--imgsz, --mean/--std, --crop, --iou, --head, ...), for a Processing made
        from flags and one read from a model's metadata alike."""
        choices = {"task": tuple(TASKS), "resize": RESIZE_MODES, "channels": CHANNEL_ORDERS}
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
        wants_keypoints = self.task in TASKS and task_room(self.task).keypoints
        if (self.kpt_shape is not None or wants_keypoints) and not _kpt_shape_ok(self.kpt_shape):
            raise ProcessingError("kpt_shape", f"is {self.kpt_shape!r}; [keypoints, 2 or 3] expected for a pose "
                                  "model (for example [17, 3])")
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
        if "channels" not in data and data.get("task") in TASKS and task_room(data["task"]).instances:
            data["mean"] = data["std"] = None  # written before detectors could be normalised: 0..1 pixels
        return cls(**data)

    # ---- preprocessing ----
    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, ImageMeta]:
        """BGR uint8 HWC image -> float32 CHW network input, and how to map back."""
        return self.room.preprocess(self, image_bgr)

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
        return f"{self.room.input_phrase(self)} {self.channels.upper()} {scale}"

    # ---- postprocessing ----
    def read(self, outputs: list, metas: list[ImageMeta], **post) -> list:
        """The graph's outputs for a batch -> one result per image: Detections (detect), class probabilities
        (classify), Segments (segment). `post`: the task's settings (conf, iou, max_det for instances)."""
        return self.room.read(self, list(outputs), metas, **post)

    def head_output(self, outputs: list) -> np.ndarray:
        """The graph outputs as the one array the task's decode reads first (EfficientNMS_TRT's four outputs become
        (B, K, 6) rows)."""
        return self.room.head_output(self, list(outputs))

    def postprocess(self, raw: np.ndarray | torch.Tensor, metas: list[ImageMeta], **post) -> list:
        """`read` of a graph with one output."""
        return self.read([raw], metas, **post)


class UsesProcessing:
    """What every model form (PyTorch adapter, ONNX file) derives from its Processing."""

    processing: Processing

    @property
    def task(self) -> str:
        return self.processing.task

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, *self.processing.imgsz)
