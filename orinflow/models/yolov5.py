"""Adapter for original YOLOv5 v6/v7 checkpoints (anchor-based head with objectness)."""
from __future__ import annotations

import pickle
from pathlib import Path

from ..config import DEFAULT_DET_IMGSZ
from ..errors import OrinflowError
from . import yolov5_modules
from .base import ModelAdapter, fuse_conv_bn, torch_load
from .processing import HEAD_OBJECTNESS, Processing

YOLOV5_MODULES = ("models.yolo", "models.common", "models.experimental")
YOLOV5_NMS_IOU = 0.6  # yolov5 val.py default


class YOLOv5Unpickler(pickle.Unpickler):
    """Resolves the yolov5 repository's classes to orinflow's own definitions (or the user's, --modules)."""

    provided: dict[str, type] = {}

    def find_class(self, module, name):
        if module in YOLOV5_MODULES:
            found = yolov5_modules.PICKLE_CLASSES.get((module, name)) or self.provided.get(name)
            if found is None:
                raise OrinflowError(f"YOLOv5 checkpoint uses {module}.{name}, which orinflow does not support yet; "
                                    "give its definition with --modules file.py")
            return found
        if module.startswith("utils."):  # training-time helpers pickled into some checkpoints
            return _Placeholder
        return super().find_class(module, name)


class _Placeholder:
    """Stands in for yolov5 training objects (loggers, hyp dicts) that inference never uses."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def load_yolov5(path: Path, imgsz: int | None = None, provided: dict[str, type] | None = None,
                fuse: bool = True) -> ModelAdapter:
    unpickler = type("YOLOv5UserUnpickler", (YOLOv5Unpickler,), {"provided": dict(provided or {})})
    ckpt = torch_load(path, unpickler)
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
    if model is None or not isinstance(model, yolov5_modules.Model):
        raise OrinflowError(f"{path} has no YOLOv5 model inside (expected a 'model' or 'ema' entry)")
    model = model.float().eval()
    if fuse:
        model = fuse_conv_bn(model)
    names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
    size = imgsz or DEFAULT_DET_IMGSZ
    _check_stride(size, int(max(model.stride)))
    processing = Processing(task="detect", imgsz=(size, size), names=names, head=HEAD_OBJECTNESS,
                            nms_iou=YOLOV5_NMS_IOU)
    return ModelAdapter(family="yolov5", source=str(path), module=model, processing=processing)


def _check_stride(imgsz: int, stride: int) -> None:
    if imgsz % stride:
        raise OrinflowError(f"--imgsz {imgsz} must be a multiple of the model's stride {stride}")


class YOLOv5Pickler(pickle._Pickler):
    """Pickles orinflow's YOLOv5 classes under the yolov5 repository's names, as the original checkpoints do."""

    names = {cls: key for key, cls in reversed(list(yolov5_modules.PICKLE_CLASSES.items()))}

    def save_global(self, obj, name=None):
        key = self.names.get(obj) if isinstance(obj, type) else None
        if key is None:
            return super().save_global(obj, name)
        module, qualname = key
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode())
        self.memoize(obj)


def save_yolov5(model, path: Path, info: dict) -> None:
    """A YOLOv5 checkpoint of `model` ({"model": ..., "epoch": -1}), loadable by orinflow and the yolov5 repository."""
    import torch

    from ..io import atomic_path

    pickle_module = type("YOLOv5PickleModule", (), {"Pickler": YOLOv5Pickler, "__name__": "orinflow_yolov5_pickle"})
    with atomic_path(path) as tmp:
        torch.save({"model": model, "epoch": -1, "orinflow": info}, tmp, pickle_module=pickle_module)
