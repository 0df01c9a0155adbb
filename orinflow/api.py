"""The Python API: `import orinflow`, then one function per command, with the CLI's names and defaults.

Every function returns the run record that the command writes (a dict), checks its inputs and
outputs before any work, and raises `orinflow.errors.OrinflowError` with one clear line for bad
input. `say` receives progress lines (the CLI passes its console; the default prints).
docs/python.md shows a worked example; the CLI in cli.py is a thin layer over these functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from .config import DEFAULT_OPSET, DYNAMIC_DEFAULT_BATCH, calib_dir, workspace
from .errors import OrinflowError

PathLike = str | Path
Say = Callable[[str], object]


def _triple(value: str | Sequence[float] | None, flag: str) -> tuple[float, float, float] | None:
    """'r,g,b' (the CLI's form) or three numbers."""
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise OrinflowError(f"{flag} must be three comma-separated numbers, got {value!r}") from None
    if len(values) != 3:
        raise OrinflowError(f"{flag} must be three comma-separated numbers, got {value!r}")
    return values


def load(model: PathLike | None, *, arch: str | None = None, imgsz: int | None = None,
         mean: str | Sequence[float] | None = None, std: str | Sequence[float] | None = None,
         crop: float | None = None, modules: Sequence[PathLike] | None = None):
    """Load any model orinflow takes: an Ultralytics/YOLOv5 .pt, an Ultralytics model YAML, an orinflow
    ONNX, or a classifier's weights with `arch` (torchvision name, file.py:func or package.module:func).

    imgsz: input size (default 640 detectors, 224 classifiers; ONNX keeps its own).
    mean, std, crop: classifier normalisation and centre crop (ImageNet defaults).
    modules: Python files defining classes the checkpoint pickles (a fork's own blocks).
    Returns a ModelAdapter (PyTorch) or an OnnxModel.
    """
    from .models import load_model

    return load_model(model, arch=arch, imgsz=imgsz, mean=_triple(mean, "--mean"), std=_triple(std, "--std"),
                      crop_fraction=crop, modules=list(modules or []))


def adopt(model: PathLike, *, head: str | None = None, names: str | None = None, imgsz: int | None = None,
          output: PathLike | None = None) -> dict:
    """Make an ONNX detector from another exporter (Ultralytics, the yolov5 repository, an end-to-end graph)
    usable by every command: writes a copy (default workspace/models/onnx/adopted/<name>.onnx) that carries
    orinflow's pre/post-processing metadata.

    head: yolov8 (batch, 4+nc, anchors), yolov5 (batch, anchors, 5+nc) or end2end (batch, boxes, 6); default:
    read from the output's shape. names: a dataset YAML or 'a,b,c' (default: the exporter's metadata).
    imgsz: only for inputs without a fixed size.
    """
    from .models.adopt import adopt_onnx

    output = Path(output) if output else workspace() / "models" / "onnx" / "adopted" / Path(model).name
    return adopt_onnx(model, output, head=head, names=names, imgsz=imgsz)


def export(model: PathLike, *, output: PathLike | None = None, opset: int = DEFAULT_OPSET, dynamic: bool = False,
           half: bool = False, simplify: bool = True, image: PathLike | None = None, arch: str | None = None,
           imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
           modules: Sequence[PathLike] | None = None) -> dict:
    """Export a PyTorch model to ONNX (default workspace/models/onnx/raw/<name>_<imgsz>.onnx), simplify it,
    and check PyTorch against ONNX Runtime on a real image (`image`, default one of the demo recipe)."""
    from .data import read_image
    from .export import export_onnx
    from .io import check_output

    if output is not None:
        check_output(output, (".onnx",), [model, image], command="export")
    adapter = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules)
    if not hasattr(adapter, "module"):
        raise OrinflowError(f"{model} is already ONNX; export takes a PyTorch model")
    parity_image = read_image(Path(image)) if image else None
    return export_onnx(adapter, Path(output) if output else None, opset=opset, dynamic=dynamic, half=half,
                       simplify=simplify, parity_image=parity_image).record


def calibrate(model: PathLike, data: PathLike, *, split: str = "train", num_images: int = 512, seed: int = 0,
              output: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None,
              std=None, crop: float | None = None, modules: Sequence[PathLike] | None = None) -> dict:
    """A calibration set (N,3,H,W float32 .npy, default workspace/calib/<model>_<data>_<split>_<N>.npy) of
    `num_images` images drawn with `seed` from `data`, preprocessed exactly as the model expects."""
    from .data import load_dataset
    from .data.calibration import build_calibration, save_calibration
    from .io import check_output, write_record

    if num_images <= 0:
        raise OrinflowError("--num-images must be positive")
    dataset = load_dataset(data, split)
    count = min(num_images, len(dataset))
    output = Path(output) if output else calib_dir() / f"{Path(model).stem}_{Path(data).stem}_{split}_{count}.npy"
    check_output(output, (".npy",), [model, data], command="calibrate")
    adapter = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules)
    array = build_calibration(adapter.processing, dataset, num_images, seed)
    save_calibration(array, output)
    record = {"command": "calibrate", "output": str(output), "model": str(model), "data": str(data), "split": split,
              "images": len(array), "seed": seed, "shape": list(array.shape),
              "processing": adapter.processing.to_json()}
    write_record(output, record)
    return record


def quantize(model: PathLike, *, calib: PathLike | None = None, data: PathLike | None = None, split: str = "train",
             num_images: int = 512, mode: str = "int8", method: str = "entropy", percentile: float = 99.999,
             target: str = "tensorrt", exclude: Sequence[str] | None = None, head_protect: bool = True,
             high_precision: str = "fp32", max_drop: float | None = None, max_fallback: float = 0.10,
             max_steps: int = 12, select_yaml: PathLike | None = None, select_split: str = "val",
             select_images: int = 300, output: PathLike | None = None,
             say: Say = print) -> dict:
    """Post-training quantization of an orinflow FP32 ONNX into Q/DQ ONNX (default
    workspace/models/onnx/<target>/<name>_<mode>_<method>.onnx).

    Calibration comes from `calib` (.npy from `calibrate`) or is built from `data`/`split`.
    mode: int8, fp8, int4. method: entropy, max, percentile, search. target: tensorrt (ModelOpt) or cpu
    (ONNX Runtime). With `max_drop`, the groups that cost most fall back to `high_precision` until the
    main metric on `select_yaml` drops at most `max_drop` points (docs/sensitivity.md).
    """
    from .data import load_dataset
    from .data.calibration import build_calibration, load_calibration
    from .io import check_output
    from .models import OnnxModel
    from .optimize.ptq import quantize_onnx
    from .optimize.route import quantized_name

    spec = quantize_spec(mode, method, target, percentile, exclude, head_protect, high_precision)
    if calib is None and not data:
        raise OrinflowError("give calibration data: --calib calib.npy, or --yaml data.yaml to build it")
    output = Path(output) if output else workspace() / "models" / "onnx" / target / quantized_name(Path(model).stem,
                                                                                                    spec)
    check_output(output, (".onnx",), [model, calib, data, select_yaml], command="quantize")
    budget = budget_inputs(max_drop, max_fallback, max_steps, select_yaml, select_split, select_images)
    source = load(model)
    if not isinstance(source, OnnxModel):
        raise OrinflowError(f"{model} is not ONNX: export it first (`orinflow export`) or run `orinflow ptq`")
    if calib is not None:
        array = load_calibration(Path(calib), source.processing)
    else:
        array = build_calibration(source.processing, load_dataset(data, split), num_images)
    if budget is None:
        return quantize_onnx(source, array, spec, output, say=say)
    from .optimize.sensitivity import fit_budget

    return fit_budget(source, array, spec, budget[1], budget[0], output, budget[2], say=say)


def quantize_spec(mode: str, method: str, target: str, percentile: float, exclude: Sequence[str] | None,
                  head_protect: bool, high_precision: str):
    """The checked QuantizeSpec of the quantization flags (shared by quantize, ptq and sensitivity)."""
    from .optimize.ptq import QuantizeSpec

    spec = QuantizeSpec(mode=mode, method=method, target=target, percentile=percentile, exclude=list(exclude or []),
                        head_protect=head_protect, high_precision=high_precision)
    spec.validate()
    return spec


def budget_inputs(max_drop, max_fallback, max_steps, select_yaml, select_split, select_images, threads=None):
    """(BudgetSpec, selection Dataset, SensitivityOptions), or None without max_drop; checked before any work."""
    from .data import load_dataset
    from .optimize.sensitivity import BudgetSpec, SensitivityOptions, selection_subset

    if max_drop is None:
        return None
    budget = BudgetSpec(max_drop=max_drop, max_fallback=max_fallback, max_steps=max_steps)
    budget.validate()
    if not select_yaml:
        raise OrinflowError("--max-drop needs labelled selection data: --select-yaml data.yaml (not your claim data)")
    options = SensitivityOptions(select_images=select_images, threads=threads)
    options.validate()
    select = load_dataset(select_yaml, select_split)
    selection_subset(select, 0, 0)  # refuses unlabelled data in one line
    return budget, select, options


def evaluate(model: PathLike, data: PathLike | None = None, *, split: str = "val", conf: float = 0.001,
             iou: float | None = None, max_det: int = 300, batch: int = 1, runs: int = 50, warmup: int = 5,
             threads: int | None = None,
             runtime: str = "auto", skip_bad_images: bool = False, metric: str = "yolov5",
             save_json: PathLike | None = None, coco_json: PathLike | None = None, images: PathLike | None = None,
             json: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None, std=None,
             crop: float | None = None, modules: Sequence[PathLike] | None = None, say: Say = print) -> dict:
    """Accuracy (mAP50 and mAP50-95, or top-1 and top-5), latency (`runs` timed runs; 0 skips) and size of one
    model on `data`/`split`; `json` also writes the record there.

    metric "coco" adds the COCO evaluation's AP, AP50, AP75, APs, APm, APl and AR (faster-coco-eval) under
    the record's metrics["coco"]; `save_json` then writes the detections in COCO result format.
    `coco_json` and `images` (a COCO instances JSON and its image folder) replace `data`.
    """
    return compare([model], data, split=split, conf=conf, iou=iou, max_det=max_det, batch=batch, runs=runs,
                   warmup=warmup, threads=threads, runtime=runtime, skip_bad_images=skip_bad_images, metric=metric,
                   save_json=save_json, coco_json=coco_json, images=images, json=json, arch=arch, imgsz=imgsz,
                   mean=mean, std=std, crop=crop, modules=modules, say=say)[0]


def compare(models: Sequence[PathLike], data: PathLike | None = None, *, split: str = "val", conf: float = 0.001,
            iou: float | None = None, max_det: int = 300, batch: int = 1, runs: int = 50, warmup: int = 5,
            threads: int | None = None, runtime: str = "auto", skip_bad_images: bool = False, metric: str = "yolov5",
            save_json: PathLike | None = None, coco_json: PathLike | None = None, images: PathLike | None = None,
            json: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None, std=None,
            crop: float | None = None, modules: Sequence[PathLike] | None = None, say: Say = print) -> list[dict]:
    """`evaluate` for several models on the same data and settings (the first is the baseline of a table).

    `json` writes the record of one model, or {"compare": [records]} for several.
    """
    from .evaluate import EvalOptions, evaluate_model
    from .io import check_output, check_record_slot, write_json

    if not models:
        raise OrinflowError("give a model with -m, or several with --compare A B ...")
    dataset = _evaluation_data(data, coco_json, images)
    options = EvalOptions(conf=conf, iou=iou, max_det=max_det, batch=batch, latency_runs=runs, warmup=warmup,
                          threads=threads, measure_latency=runs > 0, runtime=runtime,
                          skip_bad_images=skip_bad_images, metric=metric, save_json=save_json)
    options.validate()
    if save_json is not None:
        if len(models) > 1:
            raise OrinflowError("--save-json writes one model's detections: evaluate one model with -m")
        check_output(save_json, (".json",), [*models, data, coco_json, json], flag="--save-json")
    if json is not None:
        check_output(json, (".json",), [*models, data, coco_json], flag="--json")
        check_record_slot(Path(json), "evaluate", json)
    records = []
    for path in models:
        loaded = load(path, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules)
        say(f"evaluating {path} ...")
        records.append(evaluate_model(loaded, dataset, split, options))
    if json is not None:
        write_json(json, records[0] if len(records) == 1 else {"compare": records})
    return records


def _evaluation_data(data, coco_json, images):
    """The evaluation Dataset: a dataset YAML or folder, or a COCO JSON with its image folder."""
    from .data import load_coco_json

    if coco_json is not None:
        if data is not None:
            raise OrinflowError("give the evaluation data once: --yaml data.yaml, or --coco-json with --images")
        if images is None:
            raise OrinflowError("--coco-json needs --images, the folder its file names are in")
        return load_coco_json(coco_json, images)
    if not data:
        raise OrinflowError("give the evaluation data with --yaml data.yaml or --data folder/ (or --coco-json)")
    return data


def deploy(model: PathLike, *, output: PathLike | None = None, trt: str = "10", fp16: bool = True,
           min_batch: int = 1, opt_batch: int | None = None, max_batch: int | None = None,
           workspace_mib: int | None = None, overwrite: bool = False) -> dict:
    """A Jetson bundle (default workspace/deploy/<model>): the ONNX, build_engine.sh with trtexec flags read from
    the model, bench.sh, infer.py and a README. Dynamic-batch models get a profile from min/opt/max batch
    (opt default 8)."""
    from .deploy.bundle import write_bundle
    from .deploy.traits import model_traits
    from .deploy.trtexec import BuildOptions
    from .io import check_output_folder, require_file

    path = require_file(model, "model")
    if path.suffix.lower() != ".onnx":
        raise OrinflowError(f"{path} is not ONNX: export or quantize it first (orinflow export / quantize)")
    output = check_output_folder(output or workspace() / "deploy" / path.stem, [path], replaced=True)
    traits = model_traits(path)
    default = DYNAMIC_DEFAULT_BATCH if traits.dynamic_batch else 1
    opt = opt_batch or min(default, max_batch or default)
    options = BuildOptions(trt=trt, fp16=fp16, min_batch=min_batch, opt_batch=opt, max_batch=max_batch or opt,
                           workspace_mib=workspace_mib)
    return write_bundle(path, Path(output), options, overwrite, traits)


def report(sources: Sequence[PathLike] | None = None, *, output: PathLike | None = None) -> dict:
    """report.md and a self-contained report.html (default workspace/report) of every evaluation record found in
    `sources` (record files or folders; default the workspace). Returns the paths written and the row count."""
    from .io import check_output_folder
    from .report import write_report

    sources = [Path(s) for s in (sources or [workspace()])]
    output = check_output_folder(output or workspace() / "report", sources)
    return write_report(sources, Path(output))
