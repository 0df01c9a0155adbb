"""One evaluator for every runtime: accuracy, latency, size, as a JSON-ready run record."""
from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..data import Dataset, load_dataset
from ..errors import OrinflowError
from ..io import file_size, write_json
from .classes import class_mapping
from ..models import ModelAdapter, OnnxModel
from ..runtime import make_runner
from ..tasks import Scoring, task_room
from ..version import VERSION
from .accuracy import evaluate_task, scored_names
from .coco import CocoCollector, coco_metrics
from .latency import interleaved_latency, latency_profile


METRICS = ("yolov5", "coco")


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
    skip_bad_images: bool = False  # leave unreadable images out (named in the record) instead of stopping
    metric: str = "yolov5"  # yolov5: YOLOv5/Ultralytics-style mAP; coco: also the COCO evaluation's AP/AR table
    save_json: str | Path | None = None  # detections in COCO result format (with metric coco)
    class_map: str | None = None  # how a detector's classes pair with the data's (evaluate/classes.py)
    int8_kernels: str = "auto"  # how ONNX Runtime / OpenVINO run a Q/DQ model's integer part (runtime/trust.py)

    def validate(self) -> None:
        """Refuse settings that would quietly produce wrong numbers."""
        from ..runtime import RUNTIMES
        from ..runtime.trust import check_int8_kernels

        if not 0 < self.conf < 1:
            raise OrinflowError(f"--conf must be between 0 and 1 (exclusive), got {self.conf}")
        if self.iou is not None and not 0 < self.iou < 1:
            raise OrinflowError(f"--iou must be between 0 and 1 (exclusive), got {self.iou}")
        if self.max_det < 1:
            raise OrinflowError(f"--max-det must be >= 1, got {self.max_det}")
        if self.batch < 1:
            raise OrinflowError(f"--batch must be >= 1, got {self.batch}")
        if self.latency_runs < 0 or self.warmup < 0:
            raise OrinflowError(f"--runs and --warmup must be >= 0, got {self.latency_runs} and {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise OrinflowError(f"--threads must be >= 1 (leave it out for all cores), got {self.threads}")
        if self.metric not in METRICS:
            raise OrinflowError(f"unknown --metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.save_json is not None and self.metric != "coco":
            raise OrinflowError("--save-json writes COCO-format detections: use it with --metric coco")
        if self.runtime not in RUNTIMES:
            raise OrinflowError(f"unknown --runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        check_int8_kernels(self.int8_kernels)


def versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    found = {"orinflow": VERSION, "python": platform.python_version(), "torch": torch.__version__,
             "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    try:
        import ultralytics

        found["ultralytics"] = ultralytics.__version__
    except ImportError:
        pass
    if "openvino" in sys.modules:  # imported only by a run on OpenVINO
        found["openvino"] = sys.modules["openvino"].__version__.split("-")[0]
    return found


def model_path(model: ModelAdapter | OnnxModel) -> str:
    return str(model.path) if isinstance(model, OnnxModel) else model.source


def size_bytes(model: ModelAdapter | OnnxModel) -> int | None:
    """The model file's size, with an ONNX's external data."""
    path = Path(model_path(model))
    return file_size(path) if path.is_file() else None


def _score(runner, model: ModelAdapter | OnnxModel, dataset: Dataset, options: EvalOptions,
           skipped: list[str] | None) -> dict:
    """The task's metrics; for tasks with instances, classes paired with the data's and --metric coco added."""
    room, processing = model.processing.room, model.processing
    class_map = class_mapping(processing.names, dataset.names, options.class_map, dataset.name) \
        if room.instances else None
    names = scored_names(processing, dataset, class_map)
    # --metric coco reaches here only for a task that coco scores (evaluate_model refuses the others)
    scoring = Scoring(class_map, CocoCollector(names, dataset.coco) if options.metric == "coco" else None)
    post = room.post_options(options.conf, options.iou, options.max_det)
    metrics = evaluate_task(runner, processing, dataset, post, options.batch, skipped, scoring, names)
    if scoring.coco is not None:
        for iou_type in room.coco_iou_types:  # "bbox" as metrics["coco"], "segm" as metrics["coco_segm"]
            key = "coco" if iou_type == "bbox" else f"coco_{iou_type}"
            metrics[key] = coco_metrics(scoring.coco.ground_truth(), scoring.coco.results, iou_type=iou_type)
        if options.save_json is not None:
            write_json(options.save_json, scoring.coco.results)
    return metrics


def evaluate_model(model: ModelAdapter | OnnxModel, data: str | Path | Dataset, split: str = "val",
                   options: EvalOptions | None = None, runner=None) -> dict:
    """One run record; `runner` overrides the runtime chosen from the model and options (the bundle's engine)."""
    options = options or EvalOptions()
    options.validate()
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split)
    if dataset.task is None:
        raise OrinflowError(f"{dataset.name} has no labels: evaluation needs a dataset YAML or class subfolders")
    room = model.processing.room
    if options.metric == "coco" and not room.coco_iou_types:
        raise OrinflowError(f"--metric coco scores boxes and masks; a {room.name} model's metric is "
                            f"{' and '.join(room.metric_keys)}")
    if dataset.task not in room.label_tasks:
        raise OrinflowError(f"the model is a {model.task} model but {dataset.name} is a {dataset.task} dataset")
    runner = runner or make_runner(model, options.threads, options.runtime, options.batch, options.int8_kernels)
    settle_runner(runner, model, dataset)
    skipped: list[str] | None = [] if options.skip_bad_images else None
    metrics = _score(runner, model, dataset, options, skipped)
    notes = runtime_notes(runner)
    if metrics.get("unpaired"):
        left = metrics["unpaired"]
        notes.append(f"--class-map pairs no model class with data class(es) {', '.join(left)}: their "
                     f"{sum(left.values())} label(s) are left out of the mAP, which covers the paired classes only")
    if latency_batch(runner, options) != options.batch:
        notes.append(f"{model_path(model)} has a static batch of {runner.static_batch}: --batch {options.batch} "
                     f"ran image by image and no batch-{options.batch} latency was measured (export with --dynamic)")
    for what, paths in (("unreadable image(s) skipped", skipped or []),
                        ("image(s) the COCO JSON lists are not in the folder, left out", dataset.missing)):
        if paths:
            notes.append(f"{len(paths)} {what}: {', '.join(paths[:5])}{' ...' if len(paths) > 5 else ''}")
    record = {
        "model": model_path(model), "runtime": runner.name, "task": model.task, "family": model.family,
        "data": dataset.name, "split": split,
        "data_source": str(Path(data).resolve()) if not isinstance(data, Dataset) else None,
        "images": len(dataset) - len(skipped or []), "imgsz": list(model.processing.imgsz), "metrics": metrics,
        "settings": room.post_options(options.conf, model.processing.nms_iou if options.iou is None else options.iou,
                                      options.max_det),
        "params": model.num_params(), "size_bytes": size_bytes(model), "versions": versions(),
    }
    if hasattr(runner, "describe"):
        record["runtime_details"] = runner.describe()
        if runtime_label(runner) != runner.name:  # the tables' runtime column (runtime_notes: why)
            record["runtime_label"] = runtime_label(runner)
    if skipped is not None:
        record["skipped_images"] = dataset.missing + skipped
    if notes:
        record["notes"] = notes
    if options.measure_latency:
        record["latency_ms"] = latency_profile(runner, (3, *model.processing.imgsz), latency_batch(runner, options),
                                               options.latency_runs, options.warmup)
    return record


def settle_runner(runner, model: ModelAdapter | OnnxModel, dataset: Dataset) -> None:
    """Before a runner's integer kernels give a figure: check them on the data's first images (runtime/trust.py;
    a runner without integer kernels, or with its verdict, has nothing to do)."""
    if not getattr(runner, "checked", False) or runner.verdict is not None:
        return
    from ..data.calibration import build_calibration
    from ..progress import status
    from ..runtime.trust import probe_count

    try:
        probe = build_calibration(model.processing, dataset, probe_count(model.processing.imgsz),
                                  label=f"images to check {runner.name}'s integer kernels on")
    except OrinflowError:  # an unreadable image (--skip-bad-images): the runner checks its first batch instead
        return
    with status(f"{runner.name}: integer kernels against the exact function on {len(probe)} images"):
        runner.settle(probe)


def runtime_label(runner) -> str:
    """The runner's name, marked where a Q/DQ model's integer part ran emulated (runtime_notes: why)."""
    return f"{runner.name} (INT8 emulated)" if getattr(runner, "int8", None) == "exact" else runner.name


RUNTIME_WORDS = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
EXACT_PATHS = {"openvino": "the weights' Q/DQ folded into float weights, activations still quantized",
               "onnxruntime": "its Q/DQ fusions off, every Q/DQ computed as written"}


def runtime_notes(runner) -> list[str]:
    """What a record must say about how a runtime ran a Q/DQ model's integer part, and why (runtime/trust.py)."""
    from ..runtime.cpu import cpu_model, describe_features
    from ..runtime.trust import disagreement

    verdict = getattr(runner, "verdict", None)
    words = RUNTIME_WORDS.get(runner.name, runner.name)
    cpu = f"{cpu_model()}; {describe_features()}"
    if getattr(runner, "int8", None) == "exact":
        why = verdict["reason"] if verdict else "asked (--int8-kernels exact)"
        return [f"{words} ran this model's INT8 exactly ({EXACT_PATHS[runner.name]}) on this CPU ({cpu}): {why}; "
                "accuracy is the model's, latency is float-kernel latency"]
    if not verdict:
        return []
    wrong = disagreement(verdict)
    if wrong:
        return [f"{words} ran its integer kernels as asked, and on this CPU ({cpu}) they disagree with the model's "
                f"exact function ({wrong}): these figures are not the model's"]
    if verdict["used"] != next(iter(verdict["forms"])):
        return [f"{words} ran its integer kernels with the {verdict['used']} form (the same function) on this CPU "
                f"({cpu}): {verdict['reason']}"]
    return []


def latency_batch(runner, options: EvalOptions) -> int:
    """The batch a latency figure is measured at: --batch, or 1 for a graph whose static batch differs
    (ONNX Runtime runs it image by image, so a "batch N" figure would be N batch-1 runs)."""
    static = getattr(runner, "static_batch", None)
    return 1 if options.batch > 1 and isinstance(static, int) and static != options.batch else options.batch


def evaluate_side_by_side(models: list[ModelAdapter | OnnxModel], data: str | Path | Dataset, split: str = "val",
                          options: EvalOptions | None = None, say=lambda *_: None) -> list[dict]:
    """evaluate_model for several models; their batch-1 latencies are timed in turn, round by round
    (interleaved_latency), so that a busy neighbour or a clock change slows all of them alike. Timed one
    after another, a pruned yolov5n that runs at x0.77 of its original side by side came out slower than
    it (15.6 against 12.2 ms); the original alone read 12.2 ms in one run and 19.4 ms in another."""
    options = options or EvalOptions()
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split)
    accuracy_only = replace(options, measure_latency=False)
    records, runners, shapes = [], [], []
    for model in models:
        say(f"evaluating {model_path(model)} ...")
        runner = make_runner(model, options.threads, options.runtime, options.batch, options.int8_kernels)
        records.append(evaluate_model(model, dataset, split, accuracy_only, runner=runner))
        runners.append(runner)
        shapes.append((3, *model.processing.imgsz))
    if options.measure_latency:
        say(f"timing {len(models)} models in turn, {options.latency_runs} rounds ...")
        together = interleaved_latency(dict(enumerate(runners)), {i: (1, *shape) for i, shape in enumerate(shapes)},
                                       options.latency_runs, options.warmup)
        for index, (record, runner) in enumerate(zip(records, runners)):
            record["latency_ms"] = latency_profile(runner, shapes[index], latency_batch(runner, options),
                                                   options.latency_runs, options.warmup, batch1=together[index])
            record["latency_ms"]["interleaved"] = True
    return records


def runtime_latency(model: OnnxModel, runtimes: list[str], options: EvalOptions, probe=None) -> dict:
    """Batch-1 latency of one model on each runtime, timed in turn (interleaved_latency), and the fastest:
    {"latency_by_runtime": {runtime: figures}, "best_runtime": runtime}. A runtime's integer kernels are checked on
    `probe` first (real images; else on the timing input), and its figures say which path ran (runtime_label)."""
    runners = {runtime: make_runner(model, options.threads, runtime, options.batch, options.int8_kernels)
               for runtime in runtimes}
    for runner in runners.values():
        if probe is not None and hasattr(runner, "settle"):  # a runner with nothing to check returns at once
            runner.settle(probe)
    timed = interleaved_latency(runners, (1, 3, *model.processing.imgsz), options.latency_runs, options.warmup)
    for runtime, runner in runners.items():
        timed[runtime]["label"] = runtime_label(runner)
        if getattr(runner, "verdict", None):
            timed[runtime]["int8_kernels"] = {k: runner.verdict[k] for k in ("used", "kind", "reason")}
    return {"latency_by_runtime": timed, "best_runtime": min(timed, key=lambda r: timed[r]["median"])}


def headline(record: dict) -> dict[str, float]:
    """The accuracy figures a comparison table shows."""
    metrics = record["metrics"]
    return task_room(record["task"]).headline_of(metrics)
