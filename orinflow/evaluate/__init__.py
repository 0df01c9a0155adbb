"""One evaluator for every runtime: accuracy, latency, size, as a JSON-ready run record."""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..data import Dataset, load_dataset
from ..errors import OrinflowError
from ..models import ModelAdapter, OnnxModel
from ..runtime import make_runner
from .accuracy import evaluate_classification, evaluate_detection
from .latency import latency_profile


@dataclass
class EvalOptions:
    conf: float = 0.001
    iou: float | None = None  # None: the model family's usual NMS IoU
    max_det: int = 300
    batch: int = 1
    latency_runs: int = 50
    warmup: int = 5
    threads: int | None = None
    measure_latency: bool = True
    runtime: str = "auto"  # auto: PyTorch for .pt, ONNX Runtime for .onnx; or tensorrt


def versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    found = {"orinflow": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    try:
        import ultralytics

        found["ultralytics"] = ultralytics.__version__
    except ImportError:
        pass
    return found


def model_path(model: ModelAdapter | OnnxModel) -> str:
    return str(model.path) if isinstance(model, OnnxModel) else model.source


def size_bytes(model: ModelAdapter | OnnxModel) -> int | None:
    path = Path(model_path(model))
    return path.stat().st_size if path.is_file() else None


def evaluate_model(model: ModelAdapter | OnnxModel, data: str | Path | Dataset, split: str = "val",
                   options: EvalOptions | None = None, runner=None) -> dict:
    """One run record; `runner` overrides the runtime chosen from the model and options (the bundle's engine)."""
    options = options or EvalOptions()
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split)
    if dataset.task is None:
        raise OrinflowError(f"{dataset.name} has no labels: evaluation needs a dataset YAML or class subfolders")
    if dataset.task != model.task:
        raise OrinflowError(f"the model is a {model.task} model but {dataset.name} is a {dataset.task} dataset")
    runner = runner or make_runner(model, options.threads, options.runtime, options.batch)
    if model.task == "detect":
        metrics = evaluate_detection(runner, model.processing, dataset, options.conf, options.iou, options.max_det,
                                     options.batch)
    else:
        metrics = evaluate_classification(runner, model.processing, dataset, max(options.batch, 1))
    record = {
        "model": model_path(model), "runtime": runner.name, "task": model.task, "family": model.family,
        "data": dataset.name, "split": split,
        "data_source": str(Path(data).resolve()) if not isinstance(data, Dataset) else None,
        "images": len(dataset), "imgsz": list(model.processing.imgsz), "metrics": metrics,
        "settings": {"conf": options.conf, "iou": options.iou if options.iou is not None else model.processing.nms_iou,
                     "max_det": options.max_det} if model.task == "detect" else {},
        "params": model.num_params(), "size_bytes": size_bytes(model), "versions": versions(),
    }
    if options.measure_latency:
        record["latency_ms"] = latency_profile(runner, (3, *model.processing.imgsz), options.batch,
                                               options.latency_runs, options.warmup)
    return record


def headline(record: dict) -> dict[str, float]:
    """The accuracy figures a comparison table shows."""
    metrics = record["metrics"]
    keys = ("mAP50", "mAP50-95") if record["task"] == "detect" else ("top1", "top5")
    return {k: metrics[k] for k in keys}
