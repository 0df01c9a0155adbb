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
from typer.core import TyperCommand
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
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture of a weights file: a classifier (a "
                                                "torchvision name such as resnet50, path/to/file.py:func or "
                                                "package.module:func), or your own detector (file.py:func with "
                                                "--head).")]
ImgszOpt = Annotated[Optional[int], typer.Option("--imgsz", help="Input size (square). Default: 640 detectors, "
                                                 "224 classifiers; ONNX models keep their own.")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Input = (pixel/255 - mean) / std: mean 'r,g,b' "
                                                "(default ImageNet 0.485,0.456,0.406 for classifiers, 0 for "
                                                "detectors).")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Normalisation std 'r,g,b', fractions allowed "
                                               "(1/255 feeds 0..255 pixels; default ImageNet 0.229,0.224,0.225 "
                                               "for classifiers, 1 for detectors).")]
CropOpt = Annotated[Optional[float], typer.Option("--crop", help="Classifier centre-crop fraction: resize to "
                                                  "imgsz/crop, crop imgsz (default 0.875 at >=128 px, else 1.0).")]
DataOpt = Annotated[Optional[str], typer.Option("--yaml", "--data", help="Dataset YAML (Ultralytics format), "
                                                "class-per-subfolder tree, or image folder.")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split of the dataset YAML to read.")]
LayoutOpt = Annotated[Optional[str], typer.Option("--head", help="With --arch file.py:func, the model is a "
                                                  "detector: its first output's layout, yolov8 (batch, 4+nc, "
                                                  "anchors), yolov5 (batch, anchors, 5+nc), yolox (grid-relative) "
                                                  "or end2end (batch, boxes, 6).")]
NamesOpt = Annotated[Optional[str], typer.Option("--names", help="Class names of an --arch detector: a dataset YAML "
                                                 "or 'a,b,c' (default: numbers).")]
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


# ---- NMS inside the graph (export --nms, deploy --nms; export/nms.py)
PreTopkOpt = Annotated[int, typer.Option("--pre-topk", help="With --nms: candidates (by best class score) that reach "
                                         "NMS.")]
KeepTopkOpt = Annotated[int, typer.Option("--keep-topk", help="With --nms: detections kept per image.")]
NmsIouOpt = Annotated[Optional[float], typer.Option("--iou", help="With --nms: NMS IoU (default: the family's, 0.6 "
                                                    "YOLOv5, 0.7 Ultralytics).")]
NmsConfOpt = Annotated[float, typer.Option("--conf", help="With --nms: score threshold in the graph (0.001 to "
                                           "measure mAP).")]


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
    nms: Annotated[Optional[str], typer.Option("--nms", help="End-to-end detector: append decode and NMS, onnx "
                                               "(standard NonMaxSuppression; ONNX Runtime and TensorRT) or trt "
                                               "(TensorRT's EfficientNMS_TRT plugin: num_dets, boxes, scores, "
                                               "classes).")] = None,
    pre_topk: PreTopkOpt = 30000, keep_topk: KeepTopkOpt = 300, iou: NmsIouOpt = None, conf: NmsConfOpt = 0.25,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .onnx (default: "
                                                   "workspace/models/onnx/raw/<name>_<imgsz>.onnx).")] = None,
    mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None, modules: ModulesOpt = None,
    head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Export a PyTorch model to ONNX, simplify it, and check PyTorch vs ONNX Runtime parity on a real image."""
    from . import api

    record = api.export(model, output=output, opset=opset, dynamic=dynamic, half=half, simplify=simplify,
                        image=image, nms=nms, pre_topk=pre_topk, keep_topk=keep_topk, iou=iou, conf=conf, arch=arch,
                        imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head, names=names,
                        say=console.print)
    parity = record["parity"]
    console.print(f"exported [bold]{record['model']}[/bold] ({record['size_bytes'] / 1e6:.2f} MB, opset {opset}, "
                  f"{'dynamic' if dynamic else 'static'} batch) in {record['seconds']} s")
    console.print(f"parity PyTorch vs ONNX Runtime: max |diff| = {parity['max_abs_diff']:.3g} "
                  f"(output range ±{parity['output_max_abs']:.3g}, limit {parity['limit']:.3g})")
    if "nms" in record:
        spec, check = record["nms"], record["nms"]["check"]
        console.print(f"end-to-end ({spec['flavour']} NMS): pre-topk {spec['pre_topk']}, keep-topk {spec['keep_topk']}, "
                      f"IoU {spec['iou']}, conf {spec['conf']}" + (
                          f"; {check['detections']} detections on the parity image, "
                          f"{'the same as' if check['same'] else 'against'} {check['postprocessed']} from orinflow's "
                          "post-processing" if check else "; checked as ONNX (TensorRT runs the plugin)"))


# ---------------------------------------------------------------- adopt
@app.command()
@cli_errors
def adopt(
    model: Annotated[str, typer.Option("-m", "--model", help="ONNX detector from another exporter (Ultralytics, "
                                       "the yolov5 repository, YOLOX, an end-to-end graph with NMS).")],
    head: Annotated[Optional[str], typer.Option("--head", help="Output layout: yolov8 (batch, 4+nc, anchors), yolov5 "
                                                "(batch, anchors, 5+nc), yolox (batch, grid cells, 5+nc; boxes "
                                                "relative to the cells) or end2end (batch, boxes, 6). Default: "
                                                "read from the output's shape.")] = None,
    names: Annotated[Optional[str], typer.Option("--names", help="Class names: a dataset YAML or 'a,b,c' (default: "
                                                 "the exporter's metadata, else numbers).")] = None,
    imgsz: Annotated[Optional[int], typer.Option("--imgsz", help="Input size, only for inputs without a fixed "
                                                 "size.")] = None,
    letterbox: Annotated[bool, typer.Option("--letterbox/--resize", help="Keep the aspect and pad with grey 114, "
                                            "or stretch to the input size.")] = True,
    bgr: Annotated[Optional[bool], typer.Option("--bgr/--rgb", help="Channel order of the input (default: RGB; "
                                                "BGR for --head yolox).", show_default=False)] = None,
    mean: Annotated[Optional[str], typer.Option("--mean", help="Input = (pixel/255 - mean) / std: mean 'r,g,b' "
                                                "(default 0).")] = None,
    std: Annotated[Optional[str], typer.Option("--std", help="std 'r,g,b', fractions allowed (default 1, pixels "
                                               "0..1; yolox 1/255, pixels 0..255).")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .onnx (default: "
                                                   "workspace/models/onnx/adopted/<name>.onnx).")] = None,
    verbose: VerboseOpt = False,
):
    """Give an ONNX detector from elsewhere orinflow's pre/post-processing, so every command takes it."""
    from . import api

    record = api.adopt(model, head=head, names=names, imgsz=imgsz, letterbox=letterbox, bgr=bgr, mean=mean, std=std,
                       output=output)
    how = "given" if record["head_given"] else f"read from its output {record['output_shape']}"
    console.print(f"adopted [bold]{record['model']}[/bold]: head {record['head']} ({how}), "
                  f"{record['classes']} classes, input {record['imgsz'][0]}x{record['imgsz'][1]}, {record['input']}")


# ---------------------------------------------------------------- calibrate
@app.command()
@cli_errors
def calibrate(
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Model whose preprocessing to use (any format "
                                                 "-m takes). Without it: the standard detector preprocessing "
                                                 "(letterbox, RGB, 0..1) at --imgsz, default 640.")] = None,
    data: DataOpt = None,
    split: SplitOpt = "train",
    num_images: Annotated[int, typer.Option("--num-images", "-n", help="Images to draw (all if fewer).")] = 512,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random selection.")] = 0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output .npy (default: "
                                                   "workspace/calib/<model>_<data>_<split>_<N>.npy, or "
                                                   "workspace/calib/<data>.npy without -m).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Build a calibration set (N,3,H,W float32 .npy) with exactly the model's preprocessing (or the standard
    detector's, without -m)."""
    from . import api

    if not data:
        raise OrinflowError("give the images with --yaml data.yaml (and --split) or --data folder/")
    record = api.calibrate(model, data, split=split, num_images=num_images, seed=seed, output=output, arch=arch,
                           imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head, names=names,
                           say=console.print)
    console.print(f"calibration set [bold]{record['output']}[/bold]: {record['images']} images, shape "
                  f"{tuple(record['shape'])}")


# ---------------------------------------------------------------- evaluate
class CompareSwitch(TyperCommand):
    """`--compare` with no model after it is the original design's switch: --compare-workspace."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, token in enumerate(args):
            if token == "--compare" and (i + 1 == len(args) or args[i + 1].startswith("-")):
                args[i] = "--compare-workspace"
        return super().parse_args(ctx, args)


@app.command(cls=CompareSwitch)
@cli_errors
def evaluate(
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="Model to evaluate (any format -m takes).")] = None,
    compare: Annotated[Optional[list[str]], typer.Option("--compare", help="Models to compare on the same data: "
                                                         "--compare A B C (the first is the baseline).")] = None,
    more: Annotated[Optional[list[str]], typer.Argument(help="Further models after --compare A.", show_default=False,
                                                        metavar="[MODELS]...")] = None,
    compare_workspace: Annotated[bool, typer.Option("--compare-workspace", help="Evaluate -m's checkpoint beside "
                                                    "every ONNX of that name in the workspace (-m takes a name such "
                                                    "as yolo26n); `--compare` alone means this too.")] = False,
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
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Accuracy (mAP50/mAP50-95 or top-1/top-5), latency, size: one model or a side-by-side comparison."""
    from . import api
    from .evaluate.table import coco_table, comparison_table, per_class_table

    if compare_workspace:
        if not model or compare:
            raise OrinflowError("--compare alone compares -m NAME's checkpoint with its ONNX files: give -m NAME")
        found = api.named_models(model)
        console.print(f"found for {model}: " + ", ".join(str(p) for p in found), highlight=False, soft_wrap=True)
        model = str(found[0])
        compare = [str(p) for p in found[1:]]
    paths = ([model] if model else []) + _split_list(compare or []) + list(more or [])
    if more and not compare:
        raise OrinflowError(f"unexpected argument {more[0]!r}; compare models with --compare A B ...")
    if not paths:
        raise OrinflowError("give a model with -m, or several with --compare A B ...")
    records = api.evaluate_many(paths, data, split=split, conf=conf, iou=iou, max_det=max_det, batch=batch, runs=runs,
                          warmup=warmup, threads=threads, runtime=runtime, skip_bad_images=skip_bad_images,
                          metric=metric, save_json=save_json, coco_json=coco_json, images=images, json=json_out,
                          arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop,
                          modules=modules, head=head, names=names,
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


# ---------------------------------------------------------------- compare (alignment debugger)
@app.command("compare")
@cli_errors
def compare_command(
    a: Annotated[str, typer.Argument(help="Model A (the reference): checkpoint, ONNX (FP32, FP16, Q/DQ, "
                                     "end-to-end) or engine.", show_default=False)],
    b: Annotated[str, typer.Argument(help="Model B, compared with A.", show_default=False)],
    data: DataOpt = None,
    split: SplitOpt = "val",
    images: Annotated[int, typer.Option("--images", help="Images drawn (seeded) from the data.")] = 16,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the draw.")] = 0,
    conf: Annotated[float, typer.Option("--conf", help="Score threshold of the detections matched.")] = 0.25,
    top: Annotated[int, typer.Option("--top", help="Layers listed where the error grows most.")] = 5,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Folder for compare.json and compare.png "
                                                   "(default: workspace/compare/<A>_vs_<B>).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Where two forms of a model part: layer by layer (cosine, SQNR, max error) and detection by detection."""
    from . import api
    from .evaluate.compare_report import compare_tables

    record = api.compare(a, b, data, split=split, images=images, seed=seed, conf=conf, top=top, output=output,
                         arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                         names=names, say=console.print)
    for table in compare_tables(record):
        console.print(table)
    if record["mAP"]:
        console.print(f"mAP50-95 on these images: A {record['mAP']['a']['mAP50-95']:.4f}, "
                      f"B {record['mAP']['b']['mAP50-95']:.4f}")
    for note in record["notes"]:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)
    console.print(f"record {record['files']['json']}, plot {record['files']['plot']}")


def _print_notes(records: list[dict]) -> None:
    """What an evaluation record says about itself (skipped images, a batch it could not run)."""
    for record in records:
        for note in record.get("notes", []):
            console.print(f"[yellow]note:[/yellow] {note}", highlight=False, soft_wrap=True)


def _split_list(values: list[str]) -> list[str]:
    """--compare a.onnx,b.onnx and repeated --compare both work."""
    from .api import names_list

    return names_list(values)


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
    from .report.sensitivity import table

    record = api.sensitivity(model, calib, data, split=split, method=method, target=target, percentile=percentile,
                             head_protect=head_protect, select_images=select_images, sqnr_images=sqnr_images,
                             top=top, threads=threads, no_cache=no_cache, output=output, say=console.print)
    console.print(table(record))
    console.print(f"measured in {record['seconds']} s (peak memory {record['peak_memory_mb']:.0f} MB)"
                  f"{', read from cache' if record['cached'] else ''}; record {record['files']['json']}, plot "
                  f"{record['files']['plot']}")


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
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 1 in one command: export, calibrate, quantize per method and target, evaluate, compare."""
    from . import api
    from .evaluate.table import comparison_table

    route = api.ptq(model, data, split=split, val_data=val_data, val_split=val_split, num_images=num_images,
                    mode=mode, methods=methods, targets=targets, percentile=percentile, exclude=exclude,
                    head_protect=head_protect, high_precision=high_precision, batch=batch, runs=runs,
                    threads=threads, max_drop=max_drop, max_fallback=max_fallback, max_steps=max_steps,
                    select_yaml=select_yaml, select_split=select_split, select_images=select_images, output=output,
                    arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop,
                    modules=modules, head=head, names=names, say=console.print)
    console.print(comparison_table([route["fp32"], *route["variants"]], title="route 1: PTQ"))
    _print_notes([route["fp32"], *route["variants"]])
    for variant in route["variants"]:
        if "budget" in variant:
            console.print(f"{Path(variant['model']).name}:", end=" ")
            _print_budget(variant["budget"])
    for target, best in route["best"].items():
        console.print(f"best for {target}: {best['method']} ({best['metric']} {-best['drop'] * 100:+.2f} points "
                      "against FP32)")
    console.print(f"run record: {route['record']}")


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
SparseMethodOpt = Annotated[str, typer.Option("--method", help="2:4 mask: magnitude, or sparsegpt (weights "
                                              "rebuilt from --calib-images' activations).")]
SparseFlopsOpt = Annotated[Optional[float], typer.Option("--sparse-flops", help="Share of the conv FLOPs to make "
                                                         "2:4, the layers that lose least per FLOP first (measured "
                                                         "on the training images; default: every eligible layer).")]


def _print_comparison(records: list[dict], title: str) -> None:
    from .evaluate.table import comparison_table

    console.print(comparison_table(records, title=title))
    _print_notes(records)


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
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 2: quantization-aware fine-tuning with ModelOpt, exported as Q/DQ ONNX, compared with FP32."""
    from . import api

    record = api.qat(model, data, split=split, val_data=val_data, val_split=val_split, mode=mode, epochs=epochs,
                     lr=lr, batch=batch, calib_images=calib_images, distill=distill, labels=labels, device=device,
                     max_steps=max_steps, flip=flip, resume=resume, runs=runs, output=output, arch=arch, imgsz=imgsz,
                     mean=mean, std=std, crop=crop,
                     modules=modules, head=head, names=names, say=console.print)
    if "compare" in record:
        console.print(f"QAT model [bold]{record['model']}[/bold] in {record['seconds']} s")
        _print_qdq(record["qdq_report"])
        _print_comparison(record["compare"], "route 2: QAT")


@app.command()
@cli_errors
def sparsify(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    val_data: ValYamlOpt = None,
    val_split: ValSplitOpt = "val",
    method: SparseMethodOpt = "magnitude",
    sparse_flops: SparseFlopsOpt = None,
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
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 3: 2:4 sparsity + sparsity-aware fine-tuning; writes a sparse FP32 ONNX for `ptq` and the sparse
    checkpoint."""
    from . import api
    from .optimize.sparsity_check import describe

    record = api.sparsify(model, data, split=split, val_data=val_data, val_split=val_split, method=method,
                          sparse_flops=sparse_flops, epochs=epochs, lr=lr, batch=batch, calib_images=calib_images,
                          distill=distill, labels=labels,
                          device=device, max_steps=max_steps, flip=flip, resume=resume, output=output, arch=arch,
                          imgsz=imgsz, mean=mean, std=std, crop=crop,
                          modules=modules, head=head, names=names, say=console.print)
    if "compare" in record:
        console.print(f"sparse model [bold]{record['model']}[/bold]; {describe(record['sparsity'])}")
        _print_comparison(record["compare"], "route 3: 2:4 sparsity (then `orinflow ptq -m` the sparse ONNX)")


@app.command("sparse-qat")
@cli_errors
def sparse_qat(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    val_data: ValYamlOpt = None,
    val_split: ValSplitOpt = "val",
    method: SparseMethodOpt = "magnitude",
    sparse_flops: SparseFlopsOpt = None,
    sat_epochs: Annotated[int, typer.Option("--sat-epochs", help="Sparsity-aware fine-tuning epochs.")] = 1,
    qat_epochs: Annotated[int, typer.Option("--qat-epochs", help="QAT epochs, 2:4 masks held.")] = 1,
    qat_mode: Annotated[str, typer.Option("--qat-mode", help="Quantization of the QAT stage (int8).")] = "int8",
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
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 4: SAT then QAT with the 2:4 masks kept, exported as Q/DQ + 2:4 ONNX, compared with FP32."""
    from . import api
    from .optimize.sparsity_check import describe

    record = api.sparse_qat(model, data, split=split, val_data=val_data, val_split=val_split, method=method,
                            sparse_flops=sparse_flops, sat_epochs=sat_epochs, qat_epochs=qat_epochs,
                            qat_mode=qat_mode, lr=lr, qat_lr=qat_lr, batch=batch,
                            calib_images=calib_images, distill=distill, labels=labels, device=device,
                            max_steps=max_steps, flip=flip, resume=resume, runs=runs, output=output, arch=arch,
                            imgsz=imgsz, mean=mean, std=std, crop=crop,
                            modules=modules, head=head, names=names, say=console.print)
    if "compare" in record:
        console.print(f"sparse INT8 model [bold]{record['model']}[/bold] in {record['seconds']} s; "
                      f"{describe(record['sparsity'])}")
        _print_qdq(record["qdq_report"])
        _print_comparison(record["compare"], "route 4: SAT + QAT")


# ---------------------------------------------------------------- route 5: prune
@app.command()
@cli_errors
def prune(
    model: ModelOpt,
    data: DataOpt = None,
    split: SplitOpt = "train",
    flops: Annotated[Optional[float], typer.Option("--flops", help="Target share of the original conv/linear FLOPs "
                                                   "(0.7: 30% fewer).")] = 0.7,
    ratio: Annotated[Optional[float], typer.Option("--ratio", help="Instead of --flops: prune this share of every "
                                                   "prunable layer's channels.")] = None,
    importance: Annotated[str, typer.Option("--importance", help="Channel ranking: l1, l2, bn, taylor, "
                                            "lamp.")] = "l1",
    round_to: Annotated[int, typer.Option("--round-to", help="Channel counts kept as multiples of this (32: "
                                          "TensorRT's INT8 vector width; 8 suits FP16).")] = 32,
    steps: Annotated[int, typer.Option("--steps", help="Prune in this many steps, fine-tuning after each.")] = 1,
    min_share: Annotated[float, typer.Option("--min-share", help="Share of its channels every layer "
                                             "keeps.")] = 0.25,
    reconstruct: Annotated[bool, typer.Option("--reconstruct/--no-reconstruct", help="Refit the layers that lost "
                                              "input channels by least squares on 64 --yaml images (without: "
                                              "re-estimate BatchNorm only).")] = True,
    plan: Annotated[str, typer.Option("--plan", help="Share of the cut per channel group: measured (first the "
                                      "groups whose cuts add the least distillation loss per FLOP, each measured "
                                      "on 8 --yaml images; without --yaml: even), or even (the same share from "
                                      "every group).")] = "measured",
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs after each step (0: prune "
                                        "only).")] = 1,
    lr: LrOpt = 1e-4,
    batch: BatchOpt = 8,
    distill: DistillOpt = True,
    labels: LabelsOpt = None,
    max_drop: Annotated[Optional[float], typer.Option("--max-drop", help="Undo the step that drops the selection "
                                                      "score (mAP50-95 or top-1) more than this, and stop.")] = None,
    select_yaml: SelectYamlOpt = None,
    select_split: SelectSplitOpt = "val",
    select_images: SelectImagesOpt = 200,
    device: DeviceOpt = "cpu",
    max_steps: MaxStepsOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print channels, params and FLOPs per layer before "
                                          "and after; write nothing.")] = False,
    runs: Annotated[int, typer.Option("--runs", help="Timed ONNX Runtime runs of both models, side by side (0 "
                                      "skips).")] = 20,
    flip: FlipOpt = False,
    mixup: Annotated[bool, typer.Option("--mixup/--no-mixup", help="Blend each image with another of its batch "
                                        "(a uniform share; the labels of both count).")] = False,
    schedule: Annotated[str, typer.Option("--schedule", help="Learning rate: constant, or cosine (decays to 0 "
                                          "over the run).")] = "constant",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fine-tuning's image order and "
                                      "augmentation.")] = 0,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Output checkpoint (default: "
                                                   "workspace/prune/<model>/<model>_pruned.pt).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 5: dependency-aware channel pruning with fine-tuning; writes a checkpoint of the same family."""
    from . import api

    record = api.prune(model, data, split=split, flops=flops, ratio=ratio, importance=importance,
                       round_to=round_to, steps=steps, min_share=min_share, reconstruct=reconstruct, plan=plan,
                       epochs=epochs, lr=lr, batch=batch, distill=distill, labels=labels, max_drop=max_drop,
                       select_yaml=select_yaml, select_split=select_split, select_images=select_images,
                       device=device, max_steps=max_steps, dry_run=dry_run, runs=runs, flip=flip, mixup=mixup,
                       schedule=schedule, seed=seed,
                       output=output, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules,
                       head=head, names=names, say=console.print)
    _print_prune(record)


def _print_prune(record: dict) -> None:
    from rich.table import Table

    if record.get("dry_run"):
        table = Table("layer", "channels", "MFLOPs", title="dry run: nothing written")
        for row in record["layers"]:
            changed = row["channels_after"] != row["channels_before"]
            table.add_row(row["layer"], f"{row['channels_before']} -> {row['channels_after']}" if changed
                          else str(row["channels_before"]),
                          f"{2 * row['macs_before'] / 1e6:.1f} -> {2 * (row['macs_after'] or 0) / 1e6:.1f}")
        console.print(table)
    before, after = record["before"], record["after"]
    console.print(f"params {before['params']:,} -> {after['params']:,}; GFLOPs {before['gflops']} -> "
                  f"{after['gflops']} ({after['macs'] / before['macs']:.3f} of the original)")
    if "onnx" in record:
        onnx_ = record["onnx"]
        console.print(f"ONNX Runtime CPU batch 1 ({onnx_['cpu']}): {onnx_['latency_ms']['original']['median']:.2f} -> "
                      f"{onnx_['latency_ms']['pruned']['median']:.2f} ms (x{onnx_['latency_ratio']:.3f}, timed in "
                      f"turn); ONNX {onnx_['size_bytes']['original'] / 1e6:.2f} -> "
                      f"{onnx_['size_bytes']['pruned'] / 1e6:.2f} MB")
    if not record.get("dry_run"):
        console.print(f"pruned model [bold]{record['model']}[/bold] in {record['seconds']} s")


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
    from rich.table import Table

    from . import api
    from .optimize.sparsity_check import describe

    record = api.inspect(model, target=target, json=json_out, say=console.print)
    if "qdq_report" in record:
        _print_qdq(record["qdq_report"])
    else:
        console.print("no Q/DQ nodes: a floating-point model")
    sparsity = record["sparsity"]
    console.print(describe(sparsity))
    if layers:
        table = Table(title="conv/GEMM layers")
        for column in ("node", "op", "reduction dim", "eligible", "2:4", "MFLOPs"):
            table.add_column(column, justify="left" if column in ("node", "op") else "right")
        for layer in sparsity["layers"]:
            table.add_row(layer["node"], layer["op"], str(layer["reduction_dim"] or "-"), str(layer["eligible"]),
                          str(layer["is_2to4"]), f"{layer['flops'] / 1e6:.1f}")
        console.print(table)


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
    nms: Annotated[str, typer.Option("--nms", help="A detector without NMS inside is deployed end-to-end: trt "
                                     "(EfficientNMS_TRT; model_raw.onnx kept for ONNX Runtime), onnx "
                                     "(NonMaxSuppression) or none.")] = "trt",
    pre_topk: PreTopkOpt = 30000, keep_topk: KeepTopkOpt = 300, iou: NmsIouOpt = None, conf: NmsConfOpt = 0.25,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle folder.")] = False,
    verbose: VerboseOpt = False,
):
    """Jetson bundle: the ONNX, build_engine.sh (trtexec flags read from the model), bench.sh, infer.py, README."""
    from . import api

    record = api.deploy(model, output=output, trt=trt, fp16=fp16, min_batch=min_batch, opt_batch=opt_batch,
                        max_batch=max_batch, workspace_mib=workspace_mib, nms=nms, pre_topk=pre_topk,
                        keep_topk=keep_topk, iou=iou, conf=conf, overwrite=overwrite,
                        say=console.print)
    console.print(f"bundle [bold]{record['bundle']}[/bold]: {len(record['build_engine'])} trtexec arguments")
    if "nms" in record:
        console.print(f"end-to-end: {record['nms']['flavour']} NMS inside the engine (keep-topk "
                      f"{record['nms']['keep_topk']}, IoU {record['nms']['iou']}, conf {record['nms']['conf']})")
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


def _alias(command: Callable, name: str, cls: type | None = None) -> Callable[[], None]:
    """A console script that runs exactly one command, for the original `orinflow-<name>` tools."""
    def run() -> None:
        single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
        single.command(name=name, cls=cls)(command)
        single(prog_name=f"orinflow-{name}")
    return run


export_alias = _alias(export, "export")
calibrate_alias = _alias(calibrate, "calibrate")
evaluate_alias = _alias(evaluate, "evaluate", CompareSwitch)
quantize_alias = _alias(quantize, "quantize")
qat_alias = _alias(qat, "qat")
sparsify_alias = _alias(sparsify, "sparsify")
sparse_qat_alias = _alias(sparse_qat, "sparse-qat")

if __name__ == "__main__":  # python -m orinflow.cli (torchrun)
    from .entry import install

    install()
    sys.exit(main())
