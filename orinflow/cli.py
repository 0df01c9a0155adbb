"""`orinflow <command>`: one Typer app. The `orinflow-<command>` scripts run the same functions."""
from __future__ import annotations

import functools
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer
from rich.console import Console
from rich.text import Text

from .config import DEFAULT_OPSET, DYNAMIC_DEFAULT_BATCH
from .errors import OrinflowError

os.environ.setdefault("YOLO_OFFLINE", "1")

app = typer.Typer(help="Vision models to fast, accurate INT8 ONNX for TensorRT on Jetson Orin, with measured "
                       "accuracy and latency.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
# Tables are wide: never squeeze them below 180 columns when output is a pipe or a log.
_width = max(180, shutil.get_terminal_size((180, 24)).columns)
console = Console(width=_width)
err_console = Console(stderr=True, width=_width)

# ---- options shared by several commands ----
ModelOpt = Annotated[str, typer.Option("-m", "--model", help="Model: Ultralytics/YOLOv5 .pt, Ultralytics model YAML, "
                                       "orinflow .onnx, or a weights file with --arch.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Classifier architecture: a torchvision name "
                                                "(resnet50), path/to/file.py:func or package.module:func.")]
ImgszOpt = Annotated[Optional[int], typer.Option("--imgsz", help="Input size (square). Default: 640 detectors, "
                                                 "224 classifiers; ONNX models keep their own.")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Classifier normalisation mean, 'r,g,b' "
                                                "(default ImageNet 0.485,0.456,0.406).")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Classifier normalisation std, 'r,g,b' "
                                               "(default ImageNet 0.229,0.224,0.225).")]
CropOpt = Annotated[Optional[float], typer.Option("--crop", help="Classifier centre-crop fraction: resize to "
                                                  "imgsz/crop, crop imgsz (default 0.875 at >=128 px, else 1.0).")]
DataOpt = Annotated[Optional[str], typer.Option("--yaml", "--data", help="Dataset YAML (Ultralytics format), "
                                                "class-per-subfolder tree, or image folder.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split of the dataset YAML to read.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show full tracebacks on errors.")]
ModulesOpt = Annotated[Optional[list[Path]], typer.Option("--modules", help="Python file (repeatable) defining "
                                                          "classes the checkpoint pickles, such as a fork's "
                                                          "ultralytics.nn.modules.block.MyBlock.")]


def _one_line(error: Exception, verbose: bool) -> str:
    """An OrinflowError's whole message on one line; another exception's type and first line, with a hint."""
    if isinstance(error, OrinflowError):
        return " ".join(str(error).split()) or type(error).__name__
    first = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first}" + ("" if verbose else " (run with --verbose for the traceback)")


def cli_errors(func: Callable) -> Callable:
    """One clear line and exit code 2 for any failure; the traceback only with --verbose; exit 130 on Ctrl-C
    (orinflow/entry.py)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:  # in-process use; the console scripts exit from their signal handler
            from .io import remove_unfinished

            remove_unfinished()
            err_console.print("interrupted", highlight=False)
            raise typer.Exit(130)
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            if verbose:
                err_console.print(traceback.format_exc(), markup=False, highlight=False)
            err_console.print(Text.assemble(("error:", "red"), " ", _one_line(e, verbose)), soft_wrap=True)
            raise typer.Exit(2)
    return wrapper


def _load(model: str, arch, imgsz, mean, std, crop, modules=None):
    from .api import load

    return load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules)

# ---------------------------------------------------------------- export
@app.command()
@cli_errors
def export(
    model: ModelOpt,
    arch: ArchOpt = None,
    imgsz: ImgszOpt = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = DEFAULT_OPSET,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="Dynamic or static batch dimension.")] = False,
    half: Annotated[bool, typer.Option("--half", help="FP16 weights and arithmetic (float32 input/output).")] = False,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxslim.")] = True,
    image: Annotated[Optional[Path], typer.Option("--image", help="Real image for the parity check (default: an "
                                                  "image from the embedded demo recipe).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .onnx (default: "
                                                   "workspace/models/onnx/raw/<name>_<imgsz>.onnx).")] = None,
    mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None, modules: ModulesOpt = None,
    verbose: VerboseOpt = False,
):
    """Export a PyTorch model to ONNX, simplify it, and check PyTorch vs ONNX Runtime parity on a real image."""
    from . import api

    record = api.export(model, output=output, opset=opset, dynamic=dynamic, half=half, simplify=simplify,
                        image=image, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules)
    parity = record["parity"]
    console.print(f"exported [bold]{record['model']}[/bold] ({record['size_bytes'] / 1e6:.2f} MB, opset {opset}, "
                  f"{'dynamic' if dynamic else 'static'} batch) in {record['seconds']} s")
    console.print(f"parity PyTorch vs ONNX Runtime: max |diff| = {parity['max_abs_diff']:.3g} "
                  f"(output range ±{parity['output_max_abs']:.3g}, limit {parity['limit']:.3g})")


# ---------------------------------------------------------------- adopt
@app.command()
@cli_errors
def adopt(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX detector from another exporter (Ultralytics, "
                                       "the yolov5 repository, an end-to-end graph with NMS).")],
    head: Annotated[Optional[str], typer.Option("--head", help="Output layout: yolov8 (batch, 4+nc, anchors), yolov5 "
                                                "(batch, anchors, 5+nc) or end2end (batch, boxes, 6). Default: "
                                                "read from the output's shape.")] = None,
    names: Annotated[Optional[str], typer.Option("--names", help="Class names: a dataset YAML or 'a,b,c' (default: "
                                                 "the exporter's metadata, else numbers).")] = None,
    imgsz: Annotated[Optional[int], typer.Option("--imgsz", help="Input size, only for inputs without a fixed "
                                                 "size.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .onnx (default: "
                                                   "workspace/models/onnx/adopted/<name>.onnx).")] = None,
    verbose: VerboseOpt = False,
):
    """Give an ONNX detector from elsewhere orinflow's pre/post-processing, so every command takes it."""
    from . import api

    record = api.adopt(model, head=head, names=names, imgsz=imgsz, output=output)
    how = "given" if record["head_given"] else f"read from its output {record['output_shape']}"
    console.print(f"adopted [bold]{record['model']}[/bold]: head {record['head']} ({how}), "
                  f"{record['classes']} classes, input {record['imgsz'][0]}x{record['imgsz'][1]}, letterbox RGB 0..1")


# ---------------------------------------------------------------- calibrate
@app.command()
@cli_errors
def calibrate(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images to draw (all if fewer).")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random selection.")] = 0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .npy (default: "
                                                   "workspace/calib/<model>_<data>.npy).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None,
    verbose: VerboseOpt = False,
):
    """Build a calibration set (N,3,H,W float32 .npy) with exactly the model's preprocessing."""
    from . import api

    if not data:
        raise OrinflowError("give the images with --yaml data.yaml (and --split) or --data folder/")
    record = api.calibrate(model, data, split=split, num_images=num_images, seed=seed, output=output, arch=arch,
                           imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules)
    console.print(f"calibration set [bold]{record['output']}[/bold]: {record['images']} images, shape "
                  f"{tuple(record['shape'])}")


# ---------------------------------------------------------------- evaluate
@app.command()
@cli_errors
def evaluate(
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Model to evaluate (any format -m takes).")] = None,
    compare: Annotated[Optional[list[str]], typer.Option("--compare", help="Models to compare on the same data: "
                                                         "--compare A B C (the first is the baseline).")] = None,
    more: Annotated[Optional[list[str]], typer.Argument(help="Further models after --compare A.", show_default=False,
                                                        metavar="[MODELS]...")] = None,
    data: DataOpt = None,
    split: SplitOpt = "val",
    conf: Annotated[float, typer.Option("--conf", help="Detection score threshold.")] = 0.001,
    iou: Annotated[Optional[float], typer.Option("--iou", help="NMS IoU (default: the family's usual, 0.6 YOLOv5, "
                                                 "0.7 Ultralytics).")] = None,
    max_det: Annotated[int, typer.Option("--max-det", help="Detections kept per image.")] = 300,
    batch: Annotated[int, typer.Option("--batch", help="Batch for accuracy and the second latency figure.")] = 1,
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs at batch 1 (0 skips latency).")] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up runs.")] = 5,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all cores).")] = None,
    runtime: Annotated[str, typer.Option("--runtime", help="auto (PyTorch for .pt, ONNX Runtime CPU for .onnx), "
                                         "onnxruntime, or tensorrt (ONNX or .engine; needs the tensorrt package "
                                         "and a GPU).")] = "auto",
    per_class: Annotated[bool, typer.Option("--per-class", help="Print the per-class table (detection).")] = False,
    skip_bad_images: Annotated[bool, typer.Option("--skip-bad-images", help="Leave out images that cannot be "
                                                  "read (each is named, counted and recorded) instead of "
                                                  "stopping.")] = False,
    metric: Annotated[str, typer.Option("--metric", help="yolov5: YOLOv5/Ultralytics-style mAP (val.py's); coco: "
                                        "also the COCO evaluation's AP/AP50/AP75/APs/APm/APl/AR (faster-coco-eval)."
                                        )] = "yolov5",
    save_json: Annotated[Optional[Path], typer.Option("--save-json", help="With --metric coco: write the "
                                                      "detections in COCO result format here.")] = None,
    coco_json: Annotated[Optional[Path], typer.Option("--coco-json", help="A COCO instances JSON as the evaluation "
                                                      "data (with --images), instead of --yaml.")] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="The folder of --coco-json's images.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the run record(s) here.")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None,
    verbose: VerboseOpt = False,
):
    """Accuracy (mAP50/mAP50-95 or top-1/top-5), latency, size: one model or a side-by-side comparison."""
    from . import api
    from .evaluate.table import coco_table, comparison_table, per_class_table

    paths = ([model] if model else []) + _split_list(compare or []) + list(more or [])
    if more and not compare:
        raise OrinflowError(f"unexpected argument {more[0]!r}; compare models with --compare A B ...")
    if not paths:
        raise OrinflowError("give a model with -m, or several with --compare A B ...")
    records = api.compare(paths, data, split=split, conf=conf, iou=iou, max_det=max_det, batch=batch, runs=runs,
                          warmup=warmup, threads=threads, runtime=runtime, skip_bad_images=skip_bad_images,
                          metric=metric, save_json=save_json, coco_json=coco_json, images=images, json=json_out,
                          arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules,
                          say=console.print)
    console.print(comparison_table(records))
    if metric == "coco":
        console.print(coco_table(records))
    _print_notes(records)
    if per_class and records[0]["task"] == "detect":
        for record in records:
            console.print(per_class_table(record))
    if json_out:
        console.print(f"run record: {json_out}")


def _print_notes(records: list[dict]) -> None:
    """What an evaluation record says about itself (skipped images, a batch it could not run)."""
    for record in records:
        for note in record.get("notes", []):
            console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)


def _split_list(values: list[str]) -> list[str]:
    """--compare a.onnx,b.onnx and repeated --compare both work."""
    return [v for value in values for v in value.split(",") if v]


# ---------------------------------------------------------------- quantize
ModeOpt = Annotated[str, typer.Option("--mode", help="int8 (both targets); fp8 (GPUs with FP8, e.g. Hopper/Ada; "
                                      "tensorrt target only); int4 (weight-only, tensorrt target only).")]
TargetOpt = Annotated[str, typer.Option("--target", help="tensorrt: ModelOpt Q/DQ for TensorRT (evaluate its "
                                        "accuracy on CPU, not its speed); cpu: ONNX Runtime QDQ that its CPU "
                                        "provider runs as integer kernels.")]
PercentileOpt = Annotated[float, typer.Option("--percentile", help="Percentile of |activation| for "
                                              "--method percentile.")]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option("--exclude", help="Node-name regex kept in high "
                                                         "precision (repeatable).")]
HeadOpt = Annotated[bool, typer.Option("--head-protect/--no-head-protect", help="Keep a detector's decode (DFL, "
                                       "sigmoid, box arithmetic, final concat) in high precision.")]
HighPrecisionOpt = Annotated[str, typer.Option("--high-precision", help="Dtype of what is not quantized "
                                               "(tensorrt target): fp16 for Jetson, fp32 to evaluate on CPU.")]


def _print_qdq(report: dict) -> None:
    console.print(f"Q/DQ: {report['quantized_compute_nodes']}/{report['compute_nodes']} conv/GEMM nodes quantized, "
                  f"{report['mode'].upper()} FLOP share {report['quantized_flop_share']:.1%} of {report['compute_gflops']:.2f} "
                  "GFLOPs, "
                  f"{report['decode_nodes']} decode nodes kept in high precision")
    for name in report["decode_nodes_reading_quantized"]:
        console.print(f"  [yellow]decode node reads quantized values:[/yellow] {name}")
    if report["target"] == "tensorrt":
        console.print(f"TensorRT lint: {len(report['lint'])} violation(s)")
        for problem in report["lint"]:
            console.print(f"  [yellow]{problem}[/yellow]", highlight=False)


# ---- accuracy budget and sensitivity (optimize/sensitivity.py)
MaxDropOpt = Annotated[Optional[float], typer.Option("--max-drop", help="Accuracy budget: fall back the most harmful "
                                                     "quantization groups until the main metric (mAP50-95 or top-1) "
                                                     "on --select-yaml drops at most this many points.")]
MaxFallbackOpt = Annotated[float, typer.Option("--max-fallback", help="Share of conv FLOPs allowed to leave INT8 "
                                               "under --max-drop.")]
MaxStepsOpt2 = Annotated[int, typer.Option("--max-steps", help="Fallback trials under --max-drop (each measures "
                                           "the selection metric).")]
SelectYamlOpt = Annotated[Optional[str], typer.Option("--select-yaml", help="Labelled selection data (never the "
                                                      "data you claim figures on).")]
SelectSplitOpt = Annotated[str, typer.Option("--select-split", help="Split of --select-yaml.")]
SelectImagesOpt = Annotated[int, typer.Option("--select-images", help="Selection images drawn (seeded) for every "
                                              "accuracy measurement (0: all).")]


def _print_budget(budget: dict) -> None:
    verdict = "[green]met[/green]" if budget["met"] else "[red]not met[/red]"
    console.print(f"budget {budget['max_drop']:.2f} points {verdict}: {budget['metric']} on {budget['select_data']} "
                  f"FP32 {budget['fp32']:.4f}, full INT8 {budget['full_int8']:.4f}, final {budget['final']:.4f} "
                  f"({-budget['drop_points']:+.2f} points), {len(budget['fallback'])} group(s) in "
                  f"{budget['fallback_precision']}, INT8 FLOP share {budget['int8_flop_share']:.1%}")
    if not budget["met"]:
        console.print(f"[yellow]the budget is not met within --max-fallback {budget['max_fallback']:.0%} and "
                      f"--max-steps {budget['max_steps']}; the best model reached is written[/yellow]")


@app.command()
@cli_errors
def quantize(
    model: Annotated[str, typer.Option("-m", "--model", help="FP32 ONNX exported by `orinflow export`.")],
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Calibration .npy from `orinflow calibrate`.")] = None,
    data: DataOpt = None,
    split: SplitOpt = "train",
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images when building the set from "
                                            "--yaml.")] = 512,
    mode: ModeOpt = "int8",
    method: Annotated[str, typer.Option("--method", help="Activation calibration: entropy, max, percentile, or "
                                        "search (per quantizer, whichever serves the head outputs best; tensorrt "
                                        "int8).")] = "entropy",
    percentile: PercentileOpt = 99.999,
    target: TargetOpt = "tensorrt",
    exclude: ExcludeOpt = None,
    head_protect: HeadOpt = True,
    high_precision: HighPrecisionOpt = "fp32",
    max_drop: MaxDropOpt = None,
    max_fallback: MaxFallbackOpt = 0.10,
    max_steps: MaxStepsOpt2 = 12,
    select_yaml: SelectYamlOpt = None,
    select_split: SelectSplitOpt = "val",
    select_images: SelectImagesOpt = 300,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .onnx (default: "
                                                   "workspace/models/onnx/<target>/<name>_<mode>_<method>.onnx).")] = None,
    verbose: VerboseOpt = False,
):
    """Post-training quantization of an FP32 ONNX into Q/DQ ONNX (INT8, FP8 or INT4), with a Q/DQ report.

    With --max-drop, groups that cost accuracy fall back to high precision until the budget holds on --select-yaml.
    """
    from . import api
    from .optimize.sparsity_check import describe

    record = api.quantize(model, calib=calib, data=data, split=split, num_images=num_images, mode=mode, method=method,
                          percentile=percentile, target=target, exclude=exclude, head_protect=head_protect,
                          high_precision=high_precision, max_drop=max_drop, max_fallback=max_fallback,
                          max_steps=max_steps, select_yaml=select_yaml, select_split=select_split,
                          select_images=select_images, output=output, say=console.print)
    console.print(f"quantized [bold]{record['model']}[/bold] ({mode}, {method}, {target}) from "
                  f"{record['calibration_images']} calibration images in {record['seconds']} s")
    _print_qdq(record["qdq_report"])
    if "budget" in record:
        _print_budget(record["budget"])
    console.print(describe(record["sparsity"]))


# ---------------------------------------------------------------- sensitivity
@app.command()
@cli_errors
def sensitivity(
    model: Annotated[str, typer.Option("-m", "--model", help="FP32 ONNX exported by `orinflow export`.")],
    calib: Annotated[Path, typer.Option("--calib", help="Calibration .npy from `orinflow calibrate`.")],
    data: Annotated[Optional[str], typer.Option("--yaml", "--data", help="Labelled selection data (never the data "
                                                "you claim figures on).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split of the selection data.")] = "val",
    method: Annotated[str, typer.Option("--method", help="Activation calibration: entropy, max, percentile or "
                                        "search.")] = "max",
    target: TargetOpt = "tensorrt",
    percentile: PercentileOpt = 99.999,
    head_protect: HeadOpt = True,
    select_images: SelectImagesOpt = 300,
    sqnr_images: Annotated[int, typer.Option("--sqnr-images", help="Calibration images for the output-error "
                                             "(SQNR) views.")] = 16,
    top: Annotated[int, typer.Option("--top", help="Worst groups whose selection metric is measured.")] = 4,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Measure again even when a cached result exists.")]
    = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Folder for sensitivity.json and "
                                                   "sensitivity.png (default: workspace/sensitivity/<model>_<method>"
                                                   "_<target>).")] = None,
    verbose: VerboseOpt = False,
):
    """Rank quantization groups by the accuracy they cost: each alone, each kept in float, and the selection metric."""
    from . import api
    from .data import load_dataset
    from .data.calibration import load_calibration
    from .io import check_output_folder
    from .models import OnnxModel
    from .config import workspace
    from .optimize.sensitivity import SensitivityOptions, measure_sensitivity, selection_subset
    from .report.sensitivity import table, write_sensitivity

    spec = api.quantize_spec("int8", method, target, percentile, None, head_protect, "fp32")
    options = SensitivityOptions(sqnr_images=sqnr_images, select_images=select_images, top=top, threads=threads)
    options.validate()
    if not data:
        raise OrinflowError("give labelled selection data with --yaml data.yaml (not the data you claim figures on)")
    folder = check_output_folder(output or workspace() / "sensitivity" / f"{Path(model).stem}_{method}_{target}",
                                 [model, calib, data])
    select = load_dataset(data, split)
    selection_subset(select, 0, 0)
    source = _load(model, None, None, None, None, None)
    if not isinstance(source, OnnxModel):
        raise OrinflowError(f"{model} is not ONNX: export it first (`orinflow export`)")
    array = load_calibration(calib, source.processing)
    record = measure_sensitivity(source, array, spec, select, options, say=console.print, use_cache=not no_cache)
    written = write_sensitivity(record, folder)
    console.print(table(record))
    console.print(f"measured in {record['seconds']} s (peak memory {record['peak_memory_mb']:.0f} MB)"
                  f"{', read from cache' if record['cached'] else ''}; record {written['json']}, plot {written['plot']}")


# ---------------------------------------------------------------- ptq (route 1)
@app.command()
@cli_errors
def ptq(
    model: ModelOpt,
    data: Annotated[Optional[str], typer.Option("--yaml", "--data", help="Dataset YAML: calibration from "
                                                "--split, evaluation from --val-split.")] = None,
    split: SplitOpt = "train",
    val_data: Annotated[Optional[str], typer.Option("--val-yaml", help="Separate evaluation dataset YAML "
                                                    "(default: --yaml).")] = None,
    val_split: Annotated[str, typer.Option("--val-split", help="Evaluation split.")] = "val",
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Calibration images.")] = 512,
    mode: ModeOpt = "int8",
    methods: Annotated[str, typer.Option("--methods", "--method", help="Calibration methods to compare, "
                                         "comma-separated.")] = "entropy",
    targets: Annotated[str, typer.Option("--targets", "--target", help="Targets, comma-separated: tensorrt,cpu.")]
    = "tensorrt,cpu",
    percentile: PercentileOpt = 99.999,
    exclude: ExcludeOpt = None,
    head_protect: HeadOpt = True,
    high_precision: HighPrecisionOpt = "fp32",
    batch: Annotated[int, typer.Option("--batch", help="Evaluation batch and second latency figure.")] = 1,
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs (0 skips latency).")] = 30,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all).")] = None,
    max_drop: MaxDropOpt = None,
    max_fallback: MaxFallbackOpt = 0.10,
    max_steps: MaxStepsOpt2 = 12,
    select_yaml: SelectYamlOpt = None,
    select_split: SelectSplitOpt = "val",
    select_images: SelectImagesOpt = 300,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Folder for the models and records "
                                                   "(default: workspace/ptq/<model>).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 1 in one command: export, calibrate, quantize per method and target, evaluate, compare."""
    from .config import workspace
    from .evaluate import EvalOptions
    from .evaluate.table import comparison_table
    from . import api
    from .io import check_output_folder
    from .optimize.route import check_variants, run_ptq

    if not data:
        raise OrinflowError("give the data with --yaml data.yaml (calibration split and evaluation split)")
    spec = api.quantize_spec(mode, "entropy", "tensorrt", percentile, exclude, head_protect, high_precision)
    method_list, target_list = _split_list([methods]), _split_list([targets])
    check_variants(spec, method_list, target_list)
    options = EvalOptions(batch=batch, latency_runs=runs, threads=threads, measure_latency=runs > 0)
    options.validate()
    workdir = check_output_folder(output or workspace() / "ptq" / Path(model).stem,
                                  [model, data, val_data, select_yaml])
    budget = api.budget_inputs(max_drop, max_fallback, max_steps, select_yaml, select_split, select_images, threads)
    loaded = _load(model, arch, imgsz, mean, std, crop, modules)
    route = run_ptq(loaded, data, split, val_data or data, val_split, workdir, method_list, target_list, spec,
                    num_images, options, say=console.print, budget=budget)
    console.print(comparison_table([route["fp32"], *route["variants"]], title="route 1: PTQ"))
    _print_notes([route["fp32"], *route["variants"]])
    for variant in route["variants"]:
        if "budget" in variant:
            console.print(f"{Path(variant['model']).name}:", end=" ")
            _print_budget(variant["budget"])
    for target, best in route["best"].items():
        console.print(f"best for {target}: {best['method']} ({best['metric']} {-best['drop'] * 100:+.2f} points "
                      "against FP32)")
    console.print(f"run record: {workdir / 'ptq_record.json'}")


# ---------------------------------------------------------------- training routes (2, 3, 4)
ValYamlOpt = Annotated[Optional[str], typer.Option("--val-yaml", help="Separate evaluation dataset YAML "
                                                   "(default: --yaml).")]
ValSplitOpt = Annotated[str, typer.Option("--val-split", help="Split evaluated before/after.")]
LrOpt = Annotated[float, typer.Option("--lr", help="AdamW learning rate.")]
BatchOpt = Annotated[int, typer.Option("--batch", help="Training batch size.")]
CalibImagesOpt = Annotated[int, typer.Option("--calib-images", help="Images that calibrate the quantizers (and "
                                             "feed SparseGPT).")]
DistillOpt = Annotated[bool, typer.Option("--distill/--no-distill", help="Distil from the FP32 model on the raw "
                                          "head outputs (works without labels, any family).")]
LabelsOpt = Annotated[Optional[bool], typer.Option("--labels/--no-labels", help="Add the family's own label loss "
                                                   "(cross-entropy; Ultralytics' or YOLOv5's detection loss). Default: "
                                                   "on for classifiers, off for detectors.", show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N. Several GPUs: launch with "
                                        "`torchrun --nproc_per_node N -m orinflow.cli ...` and --device cuda.")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", help="Cap on steps per epoch.")]
FlipOpt = Annotated[bool, typer.Option("--flip/--no-flip", help="Mirror a random half of each batch (teacher, "
                                       "student and labels alike).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from the checkpoint "
                                         "saved after each epoch (<output>.qat.pt / .sat.pt).")]
SparseMethodOpt = Annotated[str, typer.Option("--method", help="2:4 mask: magnitude, or sparsegpt (uses "
                                              "--calib-images).")]


def _training_output(output: Path, reference_suffix: str, inputs: list, command: str, resume: bool,
                     stages: tuple[str, ...]) -> Path:
    """The trained model's path and its FP32 reference's, checked before any work; --resume needs a checkpoint."""
    from .io import check_output
    from .optimize.qat import checkpoint_path

    check_output(output, (".onnx",), inputs, command=command)
    check_output(output.with_name(output.stem + reference_suffix), (".onnx",), inputs, command="export")
    if resume and not any(checkpoint_path(output, stage).exists() for stage in stages):
        raise OrinflowError(f"--resume: no checkpoint at {checkpoint_path(output, stages[-1])} (it is written after "
                            "each epoch)")
    return output


def _ready_to_train(adapter, config, train_set, method: str | None = None) -> None:
    """What the training functions would refuse, refused before the FP32 reference is written."""
    from .optimize.qat import check_trainable
    from .optimize.sat import check_method

    check_trainable(adapter, config, train_set)
    if method is not None:
        check_method(method)


def _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop, modules, what: str):
    """Checks shared by the training commands; returns the PyTorch adapter and the training set."""
    from .data import load_dataset
    from .models import ModelAdapter
    from .optimize.distributed import check_device

    if not data:
        raise OrinflowError("give the training data with --yaml data.yaml (or --data folder/)")
    if epochs < 0 or batch < 1 or lr <= 0:
        raise OrinflowError("epochs must be >= 0, --batch >= 1 and --lr > 0")
    check_device(device)
    adapter = _load(model, arch, imgsz, mean, std, crop, modules)
    if not isinstance(adapter, ModelAdapter):
        raise OrinflowError(f"{model} is ONNX: {what} needs the PyTorch model")
    return adapter, load_dataset(data, split)


def _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip):
    """The training settings; under torchrun this also joins the process group and picks the rank's device."""
    from .optimize import distributed
    from .optimize.qat import QATConfig

    config = QATConfig(epochs=epochs, lr=lr, batch=batch, calib_images=calib_images, distill=distill, labels=labels,
                       device=device, max_steps=max_steps, resume=resume, flip=flip)
    config.validate()
    config.device = distributed.setup(device)
    return config


def _compare(models: list[Path], data, val_data, val_split, batch: int, runs: int, title: str) -> None:
    from .data import load_dataset
    from .evaluate import EvalOptions, evaluate_model
    from .evaluate.table import comparison_table
    from .models import load_model

    options = EvalOptions(latency_runs=runs, measure_latency=runs > 0, batch=max(1, batch))
    evaluation = load_dataset(val_data or data, val_split)
    records = [evaluate_model(load_model(p), evaluation, val_split, options) for p in models]
    console.print(comparison_table(records, title=title))
    _print_notes(records)


def _other_rank(record: dict) -> bool:
    """True on torchrun ranks other than 0, which train but neither export nor report."""
    return "rank" in record


def _reference_onnx(adapter, output: Path, suffix: str) -> Path | None:
    """The FP32 ONNX that the trained model is compared with (rank 0 only under torchrun)."""
    from .export import export_onnx
    from .optimize.distributed import is_main

    return export_onnx(adapter, output.with_name(output.stem + suffix)).path if is_main() else None


@app.command()
@cli_errors
def qat(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    val_data: ValYamlOpt = None,
    val_split: ValSplitOpt = "val",
    mode: Annotated[str, typer.Option("--mode", help="Quantization mode (int8).")] = "int8",
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs.")] = 1,
    lr: LrOpt = 1e-4,
    batch: BatchOpt = 8,
    calib_images: CalibImagesOpt = 64,
    distill: DistillOpt = True,
    labels: LabelsOpt = None,
    device: DeviceOpt = "cpu",
    max_steps: MaxStepsOpt = None,
    flip: FlipOpt = False,
    resume: ResumeOpt = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs in the comparison (0 skips).")] = 20,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output Q/DQ .onnx (default: "
                                                   "workspace/qat/<model>/<model>_qat_int8.onnx).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 2: quantization-aware fine-tuning with ModelOpt, exported as Q/DQ ONNX, compared with FP32."""
    from .config import workspace
    from .optimize.qat import run_qat

    if mode != "int8":
        raise OrinflowError(f"--mode {mode}: QAT supports int8")
    if epochs < 1:
        raise OrinflowError("--epochs must be >= 1")
    output = _training_output(output or workspace() / "qat" / Path(model).stem / f"{Path(model).stem}_qat_int8.onnx",
                              "_fp32_ref.onnx", [model, data, val_data], "qat", resume, ("qat",))
    adapter, train_set = _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop,
                                         modules, "QAT")
    config = _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    _ready_to_train(adapter, config, train_set)
    fp32 = _reference_onnx(adapter, output, "_fp32_ref.onnx")
    record = run_qat(adapter, train_set, config, output, say=console.print)
    if _other_rank(record):
        return
    console.print(f"QAT model [bold]{output}[/bold] in {record['seconds']} s")
    _print_qdq(record["qdq_report"])
    _compare([fp32, output], data, val_data, val_split, batch, runs, "route 2: QAT")


@app.command()
@cli_errors
def sparsify(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    val_data: ValYamlOpt = None,
    val_split: ValSplitOpt = "val",
    method: SparseMethodOpt = "magnitude",
    epochs: Annotated[int, typer.Option("--epochs", help="Sparsity-aware fine-tuning epochs (0: masks only).")] = 1,
    lr: LrOpt = 1e-4,
    batch: BatchOpt = 8,
    calib_images: CalibImagesOpt = 64,
    distill: DistillOpt = True,
    labels: LabelsOpt = None,
    device: DeviceOpt = "cpu",
    max_steps: MaxStepsOpt = None,
    flip: FlipOpt = False,
    resume: ResumeOpt = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output 2:4-sparse FP32 .onnx (default: "
                                                   "workspace/sat/<model>/<model>_sparse24.onnx).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 3: 2:4 sparsity (ModelOpt) + sparsity-aware fine-tuning; writes a sparse FP32 ONNX for `ptq`."""
    from .config import workspace
    from .optimize.sat import run_sat
    from .optimize.sparsity_check import describe

    output = _training_output(output or workspace() / "sat" / Path(model).stem / f"{Path(model).stem}_sparse24.onnx",
                              "_dense_ref.onnx", [model, data, val_data], "sparsify", resume, ("sat",))
    adapter, train_set = _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop,
                                         modules, "sparsify")
    config = _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    _ready_to_train(adapter, config, train_set, method)
    dense = _reference_onnx(adapter, output, "_dense_ref.onnx")
    record = run_sat(adapter, train_set, method, config, output, say=console.print)
    if _other_rank(record):
        return
    console.print(f"sparse model [bold]{output}[/bold]; {describe(record['sparsity'])}")
    _compare([dense, output], data, val_data, val_split, batch, 0,
             "route 3: 2:4 sparsity (then `orinflow ptq -m` the sparse ONNX)")


@app.command("sparse-qat")
@cli_errors
def sparse_qat(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    val_data: ValYamlOpt = None,
    val_split: ValSplitOpt = "val",
    method: SparseMethodOpt = "magnitude",
    sat_epochs: Annotated[int, typer.Option("--sat-epochs", help="Sparsity-aware fine-tuning epochs.")] = 1,
    qat_epochs: Annotated[int, typer.Option("--qat-epochs", help="QAT epochs, 2:4 masks held.")] = 1,
    lr: LrOpt = 1e-4,
    qat_lr: Annotated[Optional[float], typer.Option("--qat-lr", help="QAT learning rate (default: --lr).")] = None,
    batch: BatchOpt = 8,
    calib_images: CalibImagesOpt = 64,
    distill: DistillOpt = True,
    labels: LabelsOpt = None,
    device: DeviceOpt = "cpu",
    max_steps: MaxStepsOpt = None,
    flip: FlipOpt = False,
    resume: ResumeOpt = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs in the comparison (0 skips).")] = 20,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output Q/DQ + 2:4 .onnx (default: "
                                                   "workspace/sparse_qat/<model>/<model>_sparse24_qat_int8.onnx).")]
    = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 4: SAT then QAT with the 2:4 masks kept, exported as Q/DQ + 2:4 ONNX, compared with FP32."""
    from .config import workspace
    from .optimize.sat import run_sparse_qat
    from .optimize.sparsity_check import describe

    if qat_epochs < 1:
        raise OrinflowError("--qat-epochs must be >= 1")
    stem = Path(model).stem
    output = _training_output(output or workspace() / "sparse_qat" / stem / f"{stem}_sparse24_qat_int8.onnx",
                              "_fp32_ref.onnx", [model, data, val_data], "sparse-qat", resume, ("sat", "qat"))
    adapter, train_set = _training_setup(model, data, split, sat_epochs, batch, lr, device, arch, imgsz, mean, std,
                                         crop, modules, "sparse-qat")
    sat_config = _train_config(sat_epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    if qat_lr is not None and qat_lr <= 0:
        raise OrinflowError("--qat-lr must be > 0")
    qat_config = _train_config(qat_epochs, qat_lr or lr, batch, calib_images, distill, labels, device, max_steps,
                               resume, flip)
    _ready_to_train(adapter, sat_config, train_set, method)
    fp32 = _reference_onnx(adapter, output, "_fp32_ref.onnx")
    record = run_sparse_qat(adapter, train_set, method, sat_config, qat_config, output, say=console.print)
    if _other_rank(record):
        return
    console.print(f"sparse INT8 model [bold]{output}[/bold] in {record['seconds']} s; {describe(record['sparsity'])}")
    _print_qdq(record["qdq_report"])
    _compare([fp32, output], data, val_data, val_split, batch, runs, "route 4: SAT + QAT")


# ---------------------------------------------------------------- inspect
@app.command()
@cli_errors
def inspect(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX model to inspect.")],
    target: Annotated[str, typer.Option("--target", help="Lint Q/DQ for this target (tensorrt or cpu).")]
    = "tensorrt",
    layers: Annotated[bool, typer.Option("--layers", help="Print every conv/GEMM layer.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the inspection record here.")] = None,
    verbose: VerboseOpt = False,
):
    """Q/DQ report and 2:4 sparsity check (TensorRT's rule, per conv/GEMM) of an ONNX model."""
    import onnx
    from rich.table import Table

    from .io import check_output, check_record_slot, require_file, write_json
    from .optimize.graph import QDQ_OPS, decode_nodes
    from .optimize.report import qdq_report
    from .optimize.sparsity_check import describe, sparsity_report

    path = require_file(model, "model")
    if json_out is not None:
        check_output(json_out, (".json",), [path], flag="--json")
        check_record_slot(json_out, "inspect", json_out)
    try:
        graph = onnx.load(str(path))
    except Exception as e:
        raise OrinflowError(f"{path} is not a readable ONNX model ({type(e).__name__})") from e
    record: dict = {"command": "inspect", "output": str(json_out), "model": str(path)}
    if any(n.op_type in QDQ_OPS for n in graph.graph.node):
        record["qdq_report"] = qdq_report(graph, target, "int8", set(decode_nodes(graph)))
        _print_qdq(record["qdq_report"])
    else:
        console.print("no Q/DQ nodes: a floating-point model")
    sparsity = record["sparsity"] = sparsity_report(graph)
    console.print(describe(sparsity))
    if layers:
        table = Table(title="conv/GEMM layers")
        for column in ("node", "op", "reduction dim", "eligible", "2:4", "MFLOPs"):
            table.add_column(column, justify="left" if column in ("node", "op") else "right")
        for layer in sparsity["layers"]:
            table.add_row(layer["node"], layer["op"], str(layer["reduction_dim"] or "-"), str(layer["eligible"]),
                          str(layer["is_2to4"]), f"{layer['flops'] / 1e6:.1f}")
        console.print(table)
    if json_out:
        write_json(json_out, record)


# ---------------------------------------------------------------- deploy / report
@app.command()
@cli_errors
def deploy(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX model to deploy (FP32/FP16, Q/DQ, 2:4).")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Bundle folder (default: "
                                                   "workspace/deploy/<model>).")] = None,
    trt: Annotated[str, typer.Option("--trt", help="TensorRT on the device: 10 (JetPack 6, --stronglyTyped for "
                                     "Q/DQ) or 8 (JetPack 5, --int8 --fp16).")] = "10",
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="Floating-point models: build with FP16 kernels "
                                       "allowed.")] = True,
    min_batch: Annotated[int, typer.Option("--min-batch", help="Dynamic-batch models: smallest batch.")] = 1,
    opt_batch: Annotated[Optional[int], typer.Option("--opt-batch", help="Dynamic-batch models: batch TensorRT "
                                                     f"tunes for (default {DYNAMIC_DEFAULT_BATCH}).")] = None,
    max_batch: Annotated[Optional[int], typer.Option("--max-batch", help="Dynamic-batch models: largest batch "
                                                     "(default: --opt-batch).")] = None,
    workspace_mib: Annotated[Optional[int], typer.Option("--workspace-mib", help="TensorRT builder workspace "
                                                         "(default: TensorRT's).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle folder.")] = False,
    verbose: VerboseOpt = False,
):
    """Jetson bundle: the ONNX, build_engine.sh (trtexec flags read from the model), bench.sh, infer.py, README."""
    from . import api

    record = api.deploy(model, output=output, trt=trt, fp16=fp16, min_batch=min_batch, opt_batch=opt_batch,
                        max_batch=max_batch, workspace_mib=workspace_mib, overwrite=overwrite)
    console.print(f"bundle [bold]{record['bundle']}[/bold]: {len(record['build_engine'])} trtexec arguments")
    if not record["traits"]["has_processing"]:
        console.print("[yellow]warning:[/yellow] the model carries no orinflow metadata, so the bundle's infer.py "
                      "cannot know its pre/post-processing (build_engine.sh and bench.sh work)")
    console.print(" ".join(record["build_engine"]), highlight=False, soft_wrap=True)


@app.command()
@cli_errors
def report(
    sources: Annotated[Optional[list[Path]], typer.Argument(help="Run records (.json) or folders searched for them "
                                                            "(default: the workspace).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Report folder (default: "
                                                   "workspace/report).")] = None,
    verbose: VerboseOpt = False,
):
    """report.md and a self-contained report.html: every evaluated variant side by side, with plots."""
    from . import api

    written = api.report(sources, output=output)
    console.print(f"report of {written['rows']} models: [bold]{written['markdown']}[/bold] and "
                  f"[bold]{written['html']}[/bold]")


# ---------------------------------------------------------------- demo
@app.command()
@cli_errors
def demo(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where the demo writes its data and models.")] = Path(
        "workspace/demo"),
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs per model.")] = 30,
    verbose: VerboseOpt = False,
):
    """Offline run on the embedded shapes detector: export, PTQ for TensorRT and CPU, a short QAT, compare, then a Jetson bundle and the report."""
    from .demo.pipeline import run_demo

    run_demo(workdir, runs, console)


# ---------------------------------------------------------------- entry points
def main() -> None:
    app()


def _alias(command: Callable, name: str) -> Callable[[], None]:
    """A console script that runs exactly one command, for the original `orinflow-<name>` tools."""
    def run() -> None:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name=name)(command)
        single(prog_name=f"orinflow-{name}")
    return run


export_alias = _alias(export, "export")
calibrate_alias = _alias(calibrate, "calibrate")
evaluate_alias = _alias(evaluate, "evaluate")
quantize_alias = _alias(quantize, "quantize")
qat_alias = _alias(qat, "qat")
sparsify_alias = _alias(sparsify, "sparsify")
sparse_qat_alias = _alias(sparse_qat, "sparse-qat")

if __name__ == "__main__":  # python -m orinflow.cli (torchrun)
    from .entry import install

    install()
    sys.exit(main())
