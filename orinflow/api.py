"""The Python API: `import orinflow`, then one function per command, with the CLI's names and defaults.

Every function returns the run record that the command writes (a dict), checks its inputs and
outputs before any work, and raises `orinflow.errors.OrinflowError` with one clear line for bad
input. `say` receives progress lines (the CLI passes its console; the default prints).
docs/python.md shows a worked example; the CLI in cli.py is a thin layer over these functions.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

from .config import DEFAULT_OPSET, DYNAMIC_DEFAULT_BATCH, calib_dir, workspace
from .errors import OrinflowError

PathLike = str | Path
Say = Callable[[str], object]


# Folders of the workspace that hold copies (deploy bundles) or caches, never a file to pick up by name.
LOOKUP_SKIPPED = ("deploy", "cache")


def locate(path: PathLike | None, say: Say = print) -> PathLike | None:
    """The file a bare name means (docs/workspace.md): `path` itself when it exists or names a folder; otherwise a
    file of that name in the workspace, where orinflow writes by default (`--calib coco128.npy`), or for NAME.onnx
    the export NAME_<imgsz>.onnx (`-m yolo26n.onnx`). One match is used and named through `say`; several are an
    error that lists them; otherwise `path` comes back as given (a missing file is then reported as missing)."""
    if not path:
        return path  # no model (an --arch factory alone)
    given = Path(path)
    root = workspace()
    if given.exists() or given.parent != Path(".") or not given.suffix or not root.is_dir():
        return path
    files = [p for p in root.rglob("*") if p.is_file()
             and not set(LOOKUP_SKIPPED) & set(p.relative_to(root).parts[:-1])]
    found = [p for p in files if p.name == given.name]
    if not found and given.suffix.lower() == ".onnx":
        export_name = re.compile(re.escape(given.stem) + r"_\d+\.onnx")
        found = [p for p in files if export_name.fullmatch(p.name)]
    if len(found) > 1:
        raise OrinflowError(f"{given} is not in the current folder and {len(found)} files in {root} match it "
                            f"({', '.join(map(str, sorted(found)[:4]))}{', ...' if len(found) > 4 else ''}): "
                            "give the path")
    if not found:
        return path
    say(f"{given}: not in the current folder; using {found[0]} from the workspace")
    return found[0]


def _triple(value: str | float | Sequence[float] | None, flag: str) -> tuple[float, float, float] | None:
    """'r,g,b' (the CLI's form; each may be a fraction such as 1/255), one value for all three, or three numbers."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else (list(value) if isinstance(value, (list, tuple)) else
                                                              [value])
    try:
        values = tuple(_number(v) for v in items)
    except (TypeError, ValueError, ZeroDivisionError):
        raise OrinflowError(f"{flag} must be three comma-separated numbers (or one), got {value!r}") from None
    values = values * 3 if len(values) == 1 else values
    if len(values) != 3 or not all(v == v and abs(v) != float("inf") for v in values):
        raise OrinflowError(f"{flag} must be three comma-separated numbers (or one), got {value!r}")
    if flag == "--std" and min(values) <= 0:
        raise OrinflowError(f"--std must be positive, got {value!r}")
    return values


def _number(text) -> float:
    if isinstance(text, str) and "/" in text:
        numerator, denominator = text.split("/", 1)
        return float(numerator) / float(denominator)
    return float(text)


def load(model: PathLike | None, *, arch: str | None = None, imgsz: int | None = None,
         mean: str | Sequence[float] | None = None, std: str | Sequence[float] | None = None,
         crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
         names: str | None = None, fuse: bool = True):
    """Load any model orinflow takes: an Ultralytics/YOLOv5 .pt, an Ultralytics model YAML, an orinflow
    ONNX, or weights with `arch` (a classifier: torchvision name, file.py:func or package.module:func;
    a detector of your own: file.py:func with `head`).

    imgsz: input size (default 640 detectors, 224 classifiers; ONNX keeps its own).
    mean, std: input = (pixel/255 - mean) / std per channel ('r,g,b', fractions such as 1/255 allowed);
    default ImageNet for classifiers, 0 and 1 (0..1 pixels) for detectors. crop: classifier centre crop.
    modules: Python files defining classes the checkpoint pickles (a fork's own blocks).
    head: the output layout of an `arch` detector (yolov8, yolov5, yolox, end2end; see `adopt`); names: its
    classes (a dataset YAML or 'a,b,c'; default numbers). fuse=False keeps YOLO BatchNorm layers apart from
    their convs (as `prune` needs them).
    Returns a ModelAdapter (PyTorch) or an OnnxModel.
    """
    from .models import load_model

    return load_model(model, arch=arch, imgsz=imgsz, mean=_triple(mean, "--mean"), std=_triple(std, "--std"),
                      crop_fraction=crop, modules=list(modules or []), head=head, names=names, fuse=fuse)


def adopt(model: PathLike, *, head: str | None = None, names: str | None = None, imgsz: int | None = None,
          letterbox: bool = True, bgr: bool | None = None, mean: str | Sequence[float] | None = None,
          std: str | Sequence[float] | None = None, output: PathLike | None = None) -> dict:
    """Make an ONNX detector from another exporter (Ultralytics, the yolov5 repository, YOLOX, an end-to-end
    graph) usable by every command: writes a copy (default workspace/models/onnx/adopted/<name>.onnx) that
    carries orinflow's pre/post-processing metadata.

    head: yolov8 (batch, 4+nc, anchors), yolov5 (batch, anchors, 5+nc), yolox (batch, grid cells, 5+nc; boxes
    relative to the cells, YOLOX's default export) or end2end (batch, boxes, 6); default: read from the
    output's shape. names: a dataset YAML or 'a,b,c' (default: the exporter's metadata).
    imgsz: only for inputs without a fixed size. letterbox: keep the aspect and pad (False: stretch).
    bgr, mean, std: the input's channel order and (pixel/255 - mean) / std; default the layout's convention
    (RGB 0..1; yolox BGR 0..255, that is std 1/255).
    """
    from .models.adopt import adopt_onnx

    output = Path(output) if output else workspace() / "models" / "onnx" / "adopted" / Path(model).name
    return adopt_onnx(model, output, head=head, names=names, imgsz=imgsz, letterbox=letterbox, bgr=bgr,
                      mean=_triple(mean, "--mean"), std=_triple(std, "--std"))


def export(model: PathLike, *, output: PathLike | None = None, opset: int = DEFAULT_OPSET, dynamic: bool = False,
           half: bool = False, simplify: bool = True, image: PathLike | None = None, nms: str | None = None,
           pre_topk: int = 30000, keep_topk: int = 300, iou: float | None = None, conf: float = 0.25,
           arch: str | None = None, imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
           modules: Sequence[PathLike] | None = None, head: str | None = None, names: str | None = None,
           say: Say = print) -> dict:
    """Export a PyTorch model to ONNX (default workspace/models/onnx/raw/<name>_<imgsz>.onnx), simplify it,
    and check PyTorch against ONNX Runtime on a real image (`image`, default one of the demo recipe).

    nms: "onnx" (standard NonMaxSuppression, (batch, keep_topk, 6) output) or "trt" (TensorRT's EfficientNMS_TRT:
    num_dets, det_boxes, det_scores, det_classes) appends decode and NMS: `pre_topk` candidates by best class
    score, at most `keep_topk` detections per image, NMS IoU `iou` (default the family's), scores above `conf`
    (0.25 for deployment; 0.001 to measure mAP). The settings are stored in the model's metadata.
    """
    from .data import read_image
    from .export import export_onnx
    from .export.nms import NmsSpec
    from .io import check_output

    model = locate(model, say)
    spec = NmsSpec(flavour=nms, pre_topk=pre_topk, keep_topk=keep_topk, iou=iou, conf=conf) if nms else None
    if spec is not None:
        spec.validate()
    if output is not None:
        check_output(output, (".onnx",), [model, image], command="export")
    adapter = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                   names=names)
    if not hasattr(adapter, "module"):
        raise OrinflowError(f"{model} is already ONNX; export takes a PyTorch model")
    parity_image = read_image(Path(image)) if image else None
    return export_onnx(adapter, Path(output) if output else None, opset=opset, dynamic=dynamic, half=half,
                       simplify=simplify, parity_image=parity_image, nms=spec).record


def calibrate(model: PathLike | None, data: PathLike, *, split: str = "train", num_images: int = 512, seed: int = 0,
              output: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None,
              std=None, crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
              names: str | None = None, say: Say = print) -> dict:
    """A calibration set (N,3,H,W float32 .npy, default workspace/calib/<model>_<data>_<split>_<N>.npy) of
    `num_images` images drawn with `seed` from `data`, preprocessed exactly as the model expects.

    model None (the original `orinflow-calibrate` without -m): the standard detector preprocessing (letterbox,
    RGB, 0..1) at `imgsz` (default 640), written to workspace/calib/<data>.npy. `quantize` refuses it for a
    model whose preprocessing differs (the record names the preprocessing used).
    """
    from .data import load_dataset
    from .data.calibration import build_calibration, save_calibration
    from .io import check_output, write_record

    if num_images <= 0:
        raise OrinflowError("--num-images must be positive")
    model = locate(model, say)
    dataset = load_dataset(data, split)
    count = min(num_images, len(dataset))
    if model is None and any(v is not None for v in (arch, mean, std, crop, modules, head, names)):
        raise OrinflowError("without -m, calibrate uses the standard detector preprocessing: only --imgsz applies")
    default = (calib_dir() / f"{Path(data).stem}.npy" if model is None else
               calib_dir() / f"{Path(model).stem}_{Path(data).stem}_{split}_{count}.npy")
    output = Path(output) if output else default
    check_output(output, (".npy",), [model, data], command="calibrate")
    processing = (standard_detector_processing(imgsz) if model is None else
                  load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                       names=names).processing)
    array = build_calibration(processing, dataset, num_images, seed)
    save_calibration(array, output)
    record = {"command": "calibrate", "output": str(output), "model": None if model is None else str(model),
              "data": str(data), "split": split, "images": len(array), "seed": seed, "shape": list(array.shape),
              "processing": processing.to_json()}
    write_record(output, record)
    return record


def standard_detector_processing(imgsz: int | None):
    """The YOLO exporters' preprocessing (letterbox with grey 114, RGB, 0..1) at imgsz (default 640)."""
    from .config import DEFAULT_DET_IMGSZ
    from .models.processing import Processing

    size = imgsz or DEFAULT_DET_IMGSZ
    if size < 32 or size % 32:
        raise OrinflowError(f"--imgsz {size} must be a positive multiple of 32")
    return Processing(task="detect", imgsz=(size, size))


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
    model, calib = locate(model, say), locate(calib, say)
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
    from .export.nms import with_nms_restored
    from .optimize.sensitivity import fit_budget

    if budget is None:
        return with_nms_restored(source, output, lambda raw, out: quantize_onnx(raw, array, spec, out, say=say))
    return with_nms_restored(source, output, lambda raw, out: fit_budget(raw, array, spec, budget[1], budget[0], out,
                                                                         budget[2], say=say))


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
             crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
             names: str | None = None, say: Say = print) -> dict:
    """Accuracy (mAP50 and mAP50-95, or top-1 and top-5), latency (`runs` timed runs; 0 skips) and size of one
    model on `data`/`split`; `json` also writes the record there.

    metric "coco" adds the COCO evaluation's AP, AP50, AP75, APs, APm, APl and AR (faster-coco-eval) under
    the record's metrics["coco"]; `save_json` then writes the detections in COCO result format.
    `coco_json` and `images` (a COCO instances JSON and its image folder) replace `data`.
    """
    return evaluate_many([model], data, split=split, conf=conf, iou=iou, max_det=max_det, batch=batch, runs=runs,
                   warmup=warmup, threads=threads, runtime=runtime, skip_bad_images=skip_bad_images, metric=metric,
                   save_json=save_json, coco_json=coco_json, images=images, json=json, arch=arch, imgsz=imgsz,
                   mean=mean, std=std, crop=crop, modules=modules, head=head, names=names, say=say)[0]


def compare(a: PathLike, b: PathLike, data: PathLike | None = None, *, split: str = "val", images: int = 16,
            seed: int = 0, conf: float = 0.25, top: int = 5, output: PathLike | None = None, arch: str | None = None,
            imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
            modules: Sequence[PathLike] | None = None, head: str | None = None, names: str | None = None,
            say: Say = print) -> dict:
    """Where two forms of one model part (docs/compare.md): any two of a checkpoint, an FP32/FP16/Q/DQ/end-to-end
    ONNX and an engine, on `images` real images drawn with `seed` from `data`/`split`.

    Layers: per paired tensor, cosine, SQNR (dB), max |A - B| and the SQNR lost there ("growth"), in graph order;
    `top` worst by growth. Detections (score threshold `conf`): the raw head outputs before NMS, then the final
    detections matched per image (same class, IoU >= 0.9), each unmatched one with its cause; the mAP of both on
    those images when `data` is labelled. Writes compare.json and compare.png into `output` (default
    workspace/compare/<A>_vs_<B>) and returns the record.
    """
    if isinstance(a, (list, tuple)):
        raise OrinflowError("orinflow.compare(A, B) compares two models layer by layer; evaluate several side by "
                            "side with orinflow.evaluate_many(models, data)")
    from .evaluate.alignment import load_side
    from .evaluate.compare_report import run_compare
    from .io import check_output_folder, require_file

    if images < 1 or top < 1:
        raise OrinflowError("--images and --top must be >= 1")
    if not 0 < conf < 1:
        raise OrinflowError(f"--conf must lie in (0, 1), got {conf}")
    if not data:
        raise OrinflowError("give the images with --yaml data.yaml (and --split) or --data folder/")
    a, b = locate(a, say), locate(b, say)
    for path in (a, b):
        require_file(path, "model")
    folder = check_output_folder(output or workspace() / "compare" / f"{Path(a).stem}_vs_{Path(b).stem}", [a, b, data])
    options = {"arch": arch, "imgsz": imgsz, "mean": mean, "std": std, "crop": crop, "modules": modules,
               "head": head, "names": names}
    sides = (load_side(a, "A", **options), load_side(b, "B", **options))
    return run_compare(sides, (a, b), data, split, images, seed, conf, top, Path(folder), say)


def evaluate_many(models: Sequence[PathLike], data: PathLike | None = None, *, split: str = "val", conf: float = 0.001,
            iou: float | None = None, max_det: int = 300, batch: int = 1, runs: int = 50, warmup: int = 5,
            threads: int | None = None, runtime: str = "auto", skip_bad_images: bool = False, metric: str = "yolov5",
            save_json: PathLike | None = None, coco_json: PathLike | None = None, images: PathLike | None = None,
            json: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None, std=None,
            crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
            names: str | None = None, say: Say = print) -> list[dict]:
    """`evaluate` for several models on the same data and settings (`evaluate --compare`; the first is the
    baseline of a table). Their batch-1 latencies are timed in turn, round by round, so drift hits all alike.

    `json` writes the record of one model, or {"compare": [records]} for several.
    """
    from .evaluate import EvalOptions, evaluate_model, evaluate_side_by_side
    from .io import check_output, check_record_slot, write_json

    if not models:
        raise OrinflowError("give a model with -m, or several with --compare A B ...")
    models = [locate(path, say) for path in models]
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
    loading = dict(arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head, names=names)
    if len(models) == 1:
        say(f"evaluating {models[0]} ...")
        records = [evaluate_model(load(models[0], **loading), dataset, split, options)]
    else:  # every model loaded before the first is scored: a bad one fails at once; latency timed in turn
        records = evaluate_side_by_side([load(path, **loading) for path in models], dataset, split, options, say)
    if json is not None:
        write_json(json, records[0] if len(records) == 1 else {"compare": records})
    return records


def named_models(model: PathLike) -> list[Path]:
    """`evaluate -m NAME --compare` (the original switch): NAME's checkpoint (NAME.pt here or in the workspace, or the
    file given) first, then every ONNX of that name in the workspace (NAME.onnx, NAME_*.onnx: raw and optimized),
    deploy bundles and caches left out."""
    given = Path(model)
    name = given.stem if given.suffix else given.name
    candidates = [given] if given.suffix else [Path(f"{name}.pt"), workspace() / f"{name}.pt"]
    checkpoint = next((p for p in candidates if p.suffix.lower() != ".onnx" and p.is_file()), None)
    root = workspace()
    found = sorted(p for p in root.rglob("*.onnx") if (p.stem == name or p.stem.startswith(name + "_"))
                   and not {"deploy", "cache"} & set(p.relative_to(root).parts))
    models = ([checkpoint] if checkpoint else []) + [p for p in found if p != checkpoint]
    if len(models) < 2:
        raise OrinflowError(f"-m {model} --compare: found {', '.join(map(str, models)) or 'nothing'}; it needs "
                            f"{name}.pt (here or in {root}) and ONNX files named {name}*.onnx in {root}")
    return models


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
           workspace_mib: int | None = None, nms: str = "trt", pre_topk: int = 30000, keep_topk: int = 300,
           iou: float | None = None, conf: float = 0.25, overwrite: bool = False, say: Say = print) -> dict:
    """A Jetson bundle (default workspace/deploy/<model>): the ONNX, build_engine.sh with trtexec flags read from
    the model, bench.sh, infer.py and a README. Dynamic-batch models get a profile from min/opt/max batch
    (opt default 8).

    nms: an orinflow detector without NMS inside is deployed end-to-end, so no NMS runs on the Jetson's CPU:
    "trt" (EfficientNMS_TRT; the bundle also keeps model_raw.onnx for ONNX Runtime), "onnx"
    (NonMaxSuppression) or "none". pre_topk, keep_topk, iou, conf: as `export`'s.
    fp16: FP16 kernels for what is not quantized; with trt "10" a Q/DQ model's FP32 layers become FP16 in the
    bundle's graph (--stronglyTyped builds the types the graph gives), see docs/deploy.md.
    """
    from .deploy.bundle import write_bundle
    from .deploy.traits import model_traits
    from .deploy.trtexec import BuildOptions
    from .deploy.prepare import prepare_graph
    from .export.nms import FLAVOURS, NmsSpec
    from .io import check_output_folder, private_folder, require_file

    path = require_file(locate(model, say), "model")
    if path.suffix.lower() != ".onnx":
        raise OrinflowError(f"{path} is not ONNX: export or quantize it first (orinflow export / quantize)")
    if nms not in (*FLAVOURS, "none"):
        raise OrinflowError(f"--nms {nms}: choose trt, onnx or none")
    spec = NmsSpec(flavour=nms, pre_topk=pre_topk, keep_topk=keep_topk, iou=iou, conf=conf) if nms != "none" else None
    if spec is not None:
        spec.validate()
    output = check_output_folder(output or workspace() / "deploy" / path.stem, [path], replaced=True)
    with private_folder() as folder:
        deployed, done = prepare_graph(path, spec, fp16 and trt == "10", folder / "model.onnx")
        traits = model_traits(deployed)
        default = DYNAMIC_DEFAULT_BATCH if traits.dynamic_batch else 1
        opt = opt_batch or min(default, max_batch or default)
        options = BuildOptions(trt=trt, fp16=fp16, min_batch=min_batch, opt_batch=opt, max_batch=max_batch or opt,
                               workspace_mib=workspace_mib)
        nms_done = done.get("nms")
        keep_raw = nms_done is not None and nms_done["flavour"] == "trt"  # ONNX Runtime lacks the plugin
        return write_bundle(deployed, Path(output), options, overwrite, traits, raw=path if keep_raw else None,
                            nms=nms_done, source=path, high_precision=done.get("high_precision"))


def report(sources: Sequence[PathLike] | None = None, *, output: PathLike | None = None) -> dict:
    """report.md and a self-contained report.html (default workspace/report) of every evaluation record found in
    `sources` (record files or folders; default the workspace). Returns the paths written and the row count."""
    from .io import check_output_folder
    from .report import write_report

    sources = [Path(s) for s in (sources or [workspace()])]
    output = check_output_folder(output or workspace() / "report", sources)
    return write_report(sources, Path(output))


def names_list(value: str | Sequence[str] | None) -> list[str]:
    """'a,b' or ['a', 'b,c'] -> ['a', 'b', 'c'] (how the CLI's lists are written)."""
    values = [value] if isinstance(value, str) else list(value or [])
    return [v.strip() for item in values for v in str(item).split(",") if v.strip()]


def ptq(model: PathLike, data: PathLike, *, split: str = "train", val_data: PathLike | None = None,
        val_split: str = "val", num_images: int = 512, mode: str = "int8", methods: str | Sequence[str] = "entropy",
        targets: str | Sequence[str] = "tensorrt,cpu", percentile: float = 99.999,
        exclude: Sequence[str] | None = None, head_protect: bool = True, high_precision: str = "fp32",
        batch: int = 1, runs: int = 30, threads: int | None = None, max_drop: float | None = None,
        max_fallback: float = 0.10, max_steps: int = 12, select_yaml: PathLike | None = None,
        select_split: str = "val", select_images: int = 300, output: PathLike | None = None,
        arch: str | None = None, imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
        modules: Sequence[PathLike] | None = None, head: str | None = None,
        names: str | None = None, say: Say = print) -> dict:
    """Route 1 in one call: export, calibrate on `data`/`split`, quantize for every method x target, evaluate
    everything on `val_data` (default `data`)/`val_split`. Writes into `output` (default workspace/ptq/<model>).

    Returns the route record: "fp32", "variants" (evaluation records), "best" per target, and "record" (the
    ptq_record.json written).
    """
    from .evaluate import EvalOptions
    from .io import check_output_folder
    from .optimize.route import check_variants, run_ptq

    if not data:
        raise OrinflowError("give the data with --yaml data.yaml (calibration split and evaluation split)")
    model = locate(model, say)
    spec = quantize_spec(mode, "entropy", "tensorrt", percentile, exclude, head_protect, high_precision)
    method_list, target_list = names_list(methods), names_list(targets)
    check_variants(spec, method_list, target_list)
    options = EvalOptions(batch=batch, latency_runs=runs, threads=threads, measure_latency=runs > 0)
    options.validate()
    workdir = check_output_folder(output or workspace() / "ptq" / Path(model).stem,
                                  [model, data, val_data, select_yaml])
    budget = budget_inputs(max_drop, max_fallback, max_steps, select_yaml, select_split, select_images, threads)
    loaded = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                   names=names)
    route = run_ptq(loaded, data, split, val_data or data, val_split, Path(workdir), method_list, target_list, spec,
                    num_images, options, say=say, budget=budget)
    return dict(route, record=str(Path(workdir) / "ptq_record.json"))


def sensitivity(model: PathLike, calib: PathLike, data: PathLike, *, split: str = "val", method: str = "max",
                target: str = "tensorrt", percentile: float = 99.999, head_protect: bool = True,
                select_images: int = 300, sqnr_images: int = 16, top: int = 4, threads: int | None = None,
                no_cache: bool = False, output: PathLike | None = None, say: Say = print) -> dict:
    """Rank the quantization groups of an FP32 ONNX by the accuracy they cost (docs/sensitivity.md), on labelled
    selection data `data` (never claim data). Writes sensitivity.json and .png into `output` (default
    workspace/sensitivity/<model>_<method>_<target>); the record's "files" names them."""
    from .data import load_dataset
    from .data.calibration import load_calibration
    from .io import check_output_folder
    from .models import OnnxModel
    from .optimize.sensitivity import SensitivityOptions, measure_sensitivity, selection_subset
    from .report.sensitivity import write_sensitivity

    spec = quantize_spec("int8", method, target, percentile, None, head_protect, "fp32")
    model, calib = locate(model, say), locate(calib, say)
    options = SensitivityOptions(sqnr_images=sqnr_images, select_images=select_images, top=top, threads=threads)
    options.validate()
    if not data:
        raise OrinflowError("give labelled selection data with --yaml data.yaml (not the data you claim figures on)")
    folder = check_output_folder(output or workspace() / "sensitivity" / f"{Path(model).stem}_{method}_{target}",
                                 [model, calib, data])
    select = load_dataset(data, split)
    selection_subset(select, 0, 0)
    source = load(model)
    if not isinstance(source, OnnxModel):
        raise OrinflowError(f"{model} is not ONNX: export it first (`orinflow export`)")
    array = load_calibration(Path(calib), source.processing)
    record = measure_sensitivity(source, array, spec, select, options, say=say, use_cache=not no_cache)
    return dict(record, files=write_sensitivity(record, Path(folder)))


def inspect(model: PathLike, *, target: str = "tensorrt", json: PathLike | None = None, say: Say = print) -> dict:
    """The Q/DQ report (quantized share, TensorRT lint; Q/DQ models only) and the 2:4 sparsity check of an ONNX
    model; `json` also writes the record there."""
    import onnx

    from .io import check_output, check_record_slot, require_file, write_json
    from .optimize.graph import QDQ_OPS, decode_nodes
    from .optimize.report import qdq_report
    from .optimize.sparsity_check import sparsity_report

    path = require_file(locate(model, say), "model")
    if json is not None:
        check_output(json, (".json",), [path], flag="--json")
        check_record_slot(Path(json), "inspect", json)
    try:
        graph = onnx.load(str(path))
    except Exception as e:
        raise OrinflowError(f"{path} is not a readable ONNX model ({type(e).__name__})") from e
    record: dict = {"command": "inspect", "output": str(json), "model": str(path)}
    if any(n.op_type in QDQ_OPS for n in graph.graph.node):
        record["qdq_report"] = qdq_report(graph, target, "int8", set(decode_nodes(graph)))
    record["sparsity"] = sparsity_report(graph)
    if json is not None:
        write_json(json, record)
    return record


# ---- the training routes (2, 3, 4)
def qat(model: PathLike, data: PathLike, *, split: str = "train", val_data: PathLike | None = None,
        val_split: str = "val", mode: str = "int8", epochs: int = 1, lr: float = 1e-4, batch: int = 8,
        calib_images: int = 64, distill: bool = True, labels: bool | None = None, device: str = "cpu",
        max_steps: int | None = None, flip: bool = False, resume: bool = False, runs: int = 20,
        output: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None, std=None,
        crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
        names: str | None = None, say: Say = print) -> dict:
    """Route 2: quantization-aware fine-tuning (ModelOpt) on `data`/`split`, exported as Q/DQ ONNX (default
    workspace/qat/<model>/<model>_qat_int8.onnx) beside its FP32 reference `<output>_fp32_ref.onnx`.

    distill: learn from the FP32 model's raw head outputs (any family, no labels needed); labels: add the
    family's label loss (default on for classifiers, off for detectors). Returns the run record with
    "compare": the FP32 and QAT evaluation records on `val_data` (default `data`)/`val_split`.
    """
    if mode != "int8":
        raise OrinflowError(f"--mode {mode}: QAT supports int8")
    if epochs < 1:
        raise OrinflowError("--epochs must be >= 1")
    model = locate(model, say)
    stem = Path(model).stem
    output = _training_output(output or workspace() / "qat" / stem / f"{stem}_qat_int8.onnx", "_fp32_ref.onnx",
                              [model, data, val_data], "qat", resume, ("qat",))
    adapter, train_set = _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop,
                                         modules, head, names, "QAT")
    config = _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    _ready_to_train(adapter, config, train_set)
    from .optimize.qat import run_qat

    fp32 = _reference_onnx(adapter, output, "_fp32_ref.onnx")
    record = run_qat(adapter, train_set, config, output, say=say)
    return _with_comparison(record, [fp32, output], data, val_data, val_split, batch, runs, say)


def sparsify(model: PathLike, data: PathLike, *, split: str = "train", val_data: PathLike | None = None,
             val_split: str = "val", method: str = "magnitude", sparse_flops: float | None = None, epochs: int = 1,
             lr: float = 1e-4, batch: int = 8, calib_images: int = 64, distill: bool = True,
             labels: bool | None = None, device: str = "cpu", max_steps: int | None = None, flip: bool = False,
             resume: bool = False,
             output: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None,
             std=None, crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
             names: str | None = None,
             say: Say = print) -> dict:
    """Route 3: 2:4 sparsity (method magnitude or sparsegpt) and `epochs` of sparsity-aware fine-tuning (0: masks
    only), written as a sparse FP32 ONNX (default workspace/sat/<model>/<model>_sparse24.onnx) for `ptq`, and
    beside it as an ordinary checkpoint of the model's family (BatchNorm folded): <model>_sparse.pt by default,
    <output>_sparse.pt with `output`.

    sparse_flops: the share of conv FLOPs to make 2:4, the layers chosen by the accuracy they cost per FLOP on
    the training images (docs/sparsity.md); default every eligible layer.
    Returns the run record with "compare": the dense and sparse evaluation records (no latency)."""
    from .io import check_output

    model = locate(model, say)
    stem = Path(model).stem
    checkpoint_name = f"{Path(output).stem}_sparse.pt" if output else f"{stem}_sparse.pt"  # default: the original's
    output = _training_output(output or workspace() / "sat" / stem / f"{stem}_sparse24.onnx", "_dense_ref.onnx",
                              [model, data, val_data], "sparsify", resume, ("sat",))
    sparse_checkpoint = output.with_name(checkpoint_name)
    check_output(sparse_checkpoint, (".pt",), [model, data, val_data], command="sparsify")
    adapter, train_set = _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop,
                                         modules, head, names, "sparsify")
    config = _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    _ready_to_train(adapter, config, train_set, method, sparse_flops)
    from .optimize.sat import run_sat

    dense = _reference_onnx(adapter, output, "_dense_ref.onnx")
    record = run_sat(adapter, train_set, method, config, output, say=say, sparse_checkpoint=sparse_checkpoint,
                     sparse_flops=sparse_flops)
    return _with_comparison(record, [dense, output], data, val_data, val_split, batch, 0, say)


def sparse_qat(model: PathLike, data: PathLike, *, split: str = "train", val_data: PathLike | None = None,
               val_split: str = "val", method: str = "magnitude", sparse_flops: float | None = None,
               sat_epochs: int = 1, qat_epochs: int = 1,
               qat_mode: str = "int8",
               lr: float = 1e-4, qat_lr: float | None = None, batch: int = 8, calib_images: int = 64,
               distill: bool = True, labels: bool | None = None, device: str = "cpu", max_steps: int | None = None,
               flip: bool = False, resume: bool = False, runs: int = 20, output: PathLike | None = None,
               arch: str | None = None, imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
               modules: Sequence[PathLike] | None = None, head: str | None = None,
               names: str | None = None, say: Say = print) -> dict:
    """Route 4: SAT, then QAT with the 2:4 masks held, exported as Q/DQ + 2:4 ONNX (default
    workspace/sparse_qat/<model>/<model>_sparse24_qat_int8.onnx). qat_lr defaults to `lr`.
    qat_mode: the QAT stage's quantization (int8, the original design's --qat-mode).
    sparse_flops: as in `sparsify`. Returns the run record with "compare": the FP32 and sparse INT8 evaluation
    records."""
    if qat_mode != "int8":
        raise OrinflowError(f"--qat-mode {qat_mode}: QAT supports int8")
    if qat_epochs < 1:
        raise OrinflowError("--qat-epochs must be >= 1")
    if qat_lr is not None and qat_lr <= 0:
        raise OrinflowError("--qat-lr must be > 0")
    model = locate(model, say)
    stem = Path(model).stem
    output = _training_output(output or workspace() / "sparse_qat" / stem / f"{stem}_sparse24_qat_int8.onnx",
                              "_fp32_ref.onnx", [model, data, val_data], "sparse-qat", resume, ("sat", "qat"))
    adapter, train_set = _training_setup(model, data, split, sat_epochs, batch, lr, device, arch, imgsz, mean, std,
                                         crop, modules, head, names, "sparse-qat")
    sat_config = _train_config(sat_epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    qat_config = _train_config(qat_epochs, qat_lr or lr, batch, calib_images, distill, labels, device, max_steps,
                               resume, flip)
    _ready_to_train(adapter, sat_config, train_set, method, sparse_flops)
    from .optimize.sat import run_sparse_qat

    fp32 = _reference_onnx(adapter, output, "_fp32_ref.onnx")
    record = run_sparse_qat(adapter, train_set, method, sat_config, qat_config, output, say=say,
                            sparse_flops=sparse_flops)
    return _with_comparison(record, [fp32, output], data, val_data, val_split, batch, runs, say)


# ---- route 5
def prune(model: PathLike, data: PathLike | None = None, *, split: str = "train", flops: float | None = 0.7,
          ratio: float | None = None, importance: str = "l1", round_to: int = 32, steps: int = 1,
          min_share: float = 0.25, reconstruct: bool = True, plan: str = "measured", epochs: int = 1,
          lr: float = 1e-4, batch: int = 8, distill: bool = True, labels: bool | None = None,
          max_drop: float | None = None, select_yaml: PathLike | None = None,
          select_split: str = "val", select_images: int = 200, device: str = "cpu", max_steps: int | None = None,
          dry_run: bool = False, runs: int = 20, flip: bool = False, mixup: bool = False, schedule: str = "constant",
          seed: int = 0, output: PathLike | None = None,
          arch: str | None = None, imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
          modules: Sequence[PathLike] | None = None, head: str | None = None, names: str | None = None,
          say: Say = print) -> dict:
    """Route 5: dependency-aware channel pruning (torch-pruning's DependencyGraph) to `flops` of the original
    conv/linear FLOPs (or `ratio` of every prunable layer's channels), in `steps` steps, each followed by
    `epochs` of fine-tuning on `data`/`split` (distillation from the unpruned model, a detector's score term
    also averaged over the teacher's confident anchors (QATConfig.foreground), and/or the family's label loss;
    epochs 0 prunes only). Channel counts are rounded to `round_to` and every layer keeps `min_share`.
    reconstruct: after each step, refit every layer that lost input channels by least squares to its output
    before the step, on 64 images of `data` (optimize/reconstruct.py); off, or without data, BatchNorm
    statistics are re-estimated instead. plan: how the FLOPs to cut are shared among the coupled channel groups
    (with `flops`): measured cuts first the groups whose cuts add the least distillation loss against the
    unpruned model per FLOP, each measured alone on 8 images of `data` (without data, or for an end-to-end
    head: even); even takes the same share from every group, as the rounding allows (docs/prune.md).

    max_drop: score the model on `select_yaml`/`select_split` (default `data`, `select_images` drawn) after every
    step and undo the step that loses more than this (absolute mAP50-95 or top-1). dry_run: per-layer channels,
    params and FLOPs before and after, nothing written. Writes an ordinary checkpoint of the model's family
    (default workspace/prune/<model>/<model>_pruned.pt) and its record; `runs` > 0 times both models as ONNX
    on ONNX Runtime, side by side. flip: mirror a random half of each fine-tuning batch. mixup: blend each image
    with another of its batch. schedule: the learning rate, constant or cosine. seed: the fine-tuning's image
    order and augmentation draws. Returns the record.
    """
    from .data import draw_images, load_dataset
    from .io import check_output, write_record
    from .models import ModelAdapter
    from .optimize.prune import PruneConfig, run_prune
    from .optimize.qat import check_schedule

    check_schedule(schedule)  # checked with --epochs 0 too: a typo is not silently ignored
    config = PruneConfig(flops=None if ratio is not None else flops, ratio=ratio, importance=importance,
                         round_to=round_to, steps=steps, min_share=min_share, reconstruct=reconstruct,
                         plan=plan)
    config.validate()
    if max_drop is not None and max_drop < 0:
        raise OrinflowError("--max-drop must be >= 0")
    if epochs and not data:
        raise OrinflowError("fine-tuning needs data: give --yaml data.yaml, or --epochs 0 to prune only")
    model = locate(model, say)
    stem = Path(model).stem if model else str(arch or "model").rpartition(":")[2]
    output = Path(output or workspace() / "prune" / stem / f"{stem}_pruned.pt")
    if not dry_run:
        check_output(output, (".pt", ".pth"), [model, data, select_yaml], command="prune")
    adapter = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                   names=names, fuse=False)
    if not isinstance(adapter, ModelAdapter):
        raise OrinflowError(f"{model} is ONNX: pruning needs the PyTorch model")
    dataset = load_dataset(data, split) if data else None
    train_config = None
    if epochs and not dry_run:
        train_config = _train_config(epochs, lr, batch, 1, distill, labels, device, max_steps, False, flip, seed,
                                     mixup, schedule, foreground=True)
        _ready_to_train(adapter, train_config, dataset)
    selection = None
    if max_drop is not None and not dry_run:
        if not (select_yaml or data):
            raise OrinflowError("--max-drop scores each step: give --select-yaml (or --yaml)")
        selection = draw_images(load_dataset(select_yaml or data, select_split), select_images, 0)
    record = run_prune(adapter, config, output, dataset, train_config, selection, max_drop, dry_run, say)
    if dry_run:
        return record
    if train_config is not None:  # how it was fine-tuned, so the figure can be reproduced
        from dataclasses import asdict

        record["training"] = {**asdict(train_config), "device": str(train_config.device)}
    if runs:
        from .optimize.prune import onnx_side_by_side

        loading = dict(arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head, names=names)
        record["onnx"] = onnx_side_by_side(load(model, **loading), load(output, **loading), runs)
    write_record(output, record)
    return record


def _training_output(output: PathLike, reference_suffix: str, inputs: list, command: str, resume: bool,
                     stages: tuple[str, ...]) -> Path:
    """The trained model's path and its FP32 reference's, checked before any work; --resume needs a checkpoint."""
    from .io import check_output
    from .optimize.qat import checkpoint_path

    output = Path(output)
    check_output(output, (".onnx",), inputs, command=command)
    check_output(output.with_name(output.stem + reference_suffix), (".onnx",), inputs, command="export")
    if resume and not any(checkpoint_path(output, stage).exists() for stage in stages):
        raise OrinflowError(f"--resume: no checkpoint at {checkpoint_path(output, stages[-1])} (it is written after "
                            "each epoch)")
    return output


def _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop, modules, head, names,
                    what: str):
    """Checks shared by the training routes; returns the PyTorch adapter and the training set."""
    from .data import load_dataset
    from .models import ModelAdapter
    from .optimize.distributed import check_device

    if not data:
        raise OrinflowError("give the training data with --yaml data.yaml (or --data folder/)")
    if epochs < 0 or batch < 1 or lr <= 0:
        raise OrinflowError("epochs must be >= 0, --batch >= 1 and --lr > 0")
    check_device(device)
    adapter = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                   names=names)
    if not isinstance(adapter, ModelAdapter):
        raise OrinflowError(f"{model} is ONNX: {what} needs the PyTorch model")
    return adapter, load_dataset(data, split)


def _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip, seed=0,
                  mixup=False, schedule="constant", foreground=False):
    """The training settings; under torchrun this also joins the process group and picks the rank's device."""
    from .optimize import distributed
    from .optimize.qat import QATConfig

    config = QATConfig(epochs=epochs, lr=lr, batch=batch, calib_images=calib_images, distill=distill, labels=labels,
                       device=device, max_steps=max_steps, resume=resume, flip=flip, seed=seed, mixup=mixup,
                       schedule=schedule, foreground=foreground)
    config.validate()
    config.device = distributed.setup(device)
    return config


def _ready_to_train(adapter, config, train_set, method: str | None = None, sparse_flops: float | None = None) -> None:
    """What the training functions would refuse, refused before the FP32 reference is written."""
    from .optimize.qat import check_trainable
    from .optimize.sat import check_method

    check_trainable(adapter, config, train_set)
    if method is not None:
        check_method(method, sparse_flops)


def _reference_onnx(adapter, output: Path, suffix: str) -> Path | None:
    """The FP32 ONNX that the trained model is compared with (rank 0 only under torchrun)."""
    from .export import export_onnx
    from .optimize.distributed import is_main

    return export_onnx(adapter, output.with_name(output.stem + suffix)).path if is_main() else None


def _with_comparison(record: dict, models: list, data, val_data, val_split, batch: int, runs: int, say) -> dict:
    """The training record plus "compare": reference and trained model evaluated side by side (rank 0 only)."""
    from .data import load_dataset
    from .evaluate import EvalOptions, evaluate_model

    if "rank" in record:  # torchrun ranks other than 0 train but neither export nor evaluate
        return record
    options = EvalOptions(latency_runs=runs, measure_latency=runs > 0, batch=max(1, batch))
    evaluation = load_dataset(val_data or data, val_split)
    compared = []
    for path in models:
        say(f"evaluating {path} ...")
        compared.append(evaluate_model(load(path), evaluation, val_split, options))
    return dict(record, compare=compared)
