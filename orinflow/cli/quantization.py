"""Quantization: quantize (optionally under an accuracy budget), sensitivity, the ptq route."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import (ArchOpt, CropOpt, DataOpt, ImgszOpt, Int8KernelsOpt, LayoutOpt, MeanOpt, ModelOpt, ModulesOpt,
                  NamesOpt, SplitOpt, StdOpt, VerboseOpt, app, cli_errors, console, esc, say)
from .evaluation import print_notes


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
CalibOpt = Annotated[Optional[Path], typer.Option("--calib", help="Calibration .npy from `orinflow calibrate`.")]
NumImagesOpt = Annotated[int, typer.Option("--num-images", "-n", help="Images when building the set from --yaml.")]
HighPrecisionOpt = Annotated[str, typer.Option("--high-precision", help="Dtype of what is not quantized "
                                               "(tensorrt target): fp16 for Jetson, fp32 to evaluate on CPU.")]


def print_qdq(report: dict) -> None:
    console.print(f"Q/DQ: {report['quantized_compute_nodes']}/{report['compute_nodes']} conv/GEMM nodes quantized, "
                  f"{report['mode'].upper()} FLOP share {report['quantized_flop_share']:.1%} of {report['compute_gflops']:.2f} "
                  "GFLOPs, "
                  f"{report['decode_nodes']} decode nodes kept in high precision")
    for name in report["decode_nodes_reading_quantized"]:
        console.print(f"  [yellow]decode node reads quantized values:[/yellow] {esc(name)}", markup=True)
    if report["target"] == "tensorrt":
        console.print(f"TensorRT lint: {len(report['lint'])} violation(s)")
        for problem in report["lint"]:
            console.print(f"  [yellow]{esc(problem)}[/yellow]", markup=True, highlight=False)


# ---- accuracy budget and sensitivity (optimize/quantize/sensitivity.py)
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
SelectMetricOpt = Annotated[Optional[str], typer.Option("--select-metric", help="The figure the selection follows "
                                                        "(default the task's headline: mAP50-95, mask_mAP50-95, "
                                                        "top1); mAP50-95 follows a segmentation model's boxes.")]


def _print_budget(budget: dict, method: str, choice: dict | None = None) -> None:
    verdict = "[green]met[/green]" if budget["met"] else "[red]not met[/red]"
    console.print(f"budget {budget['max_drop']:.2f} points {verdict}: {budget['metric']} on "
                  f"{esc(budget['select_data'])} "
                  f"FP32 {budget['fp32']:.4f}, full INT8 {budget['full_int8']:.4f}, final {budget['final']:.4f} "
                  f"({-budget['drop_points']:+.2f} points), {len(budget['fallback'])} group(s) in "
                  f"{budget['fallback_precision']}, INT8 FLOP share {budget['int8_flop_share']:.1%}", markup=True)
    if not budget["met"]:
        console.print(f"[yellow]the budget is not met within --max-fallback {budget['max_fallback']:.0%} and "
                      f"--max-steps {budget['max_steps']}; the best model reached is written[/yellow]", markup=True)
        if choice is None and method != "search" and budget.get("search_full_int8") is not None:
            console.print(f"--method search starts from {budget['search_full_int8']:.4f} ({budget['metric']}, full "
                          f"INT8, measured on the same selection data earlier) against {method}'s "
                          f"{budget['full_int8']:.4f}: try it")
        elif choice is None and method != "search" and "search_full_int8" in budget:
            console.print(f"--method search (per-quantizer calibration) usually starts closer to FP32 than {method} "
                          "and often meets a budget that other methods miss: try it")


@app.command()
@cli_errors
def quantize(
    model: Annotated[str, typer.Option("-m", "--model", help="FP32 ONNX exported by `orinflow export`.")],
    calib: CalibOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "train",
    num_images: NumImagesOpt = 512,
    mode: ModeOpt = "int8",
    method: Annotated[Optional[str], typer.Option("--method", help="Activation calibration: entropy, max, percentile, "
                                                  "mse (tensorrt), search (per quantizer, whichever serves the head "
                                                  "outputs best; tensorrt int8) or auto (with --max-drop: each "
                                                  "measured on the selection data, the best kept). Default: entropy; "
                                                  "auto with --max-drop.")] = None,
    methods: Annotated[Optional[str], typer.Option("--methods", help="With --max-drop and --method auto: the "
                                                   "calibrations to try, 'max,entropy' (default: all that apply to "
                                                   "the target, cheapest first).")] = None,
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
    select_metric: SelectMetricOpt = None,
    reduce_range: Annotated[bool, typer.Option("--reduce-range", help="--target cpu: 7-bit weights, so ONNX "
                                               "Runtime's u8 x s8 kernels cannot saturate on CPUs without VNNI "
                                               "(docs/runtimes.md: what it costs).")] = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.onnx", help="Output .onnx (default: "
                                                   "workspace/models/onnx/<target>/<name>_<mode>_<method>.onnx).")] = None,
    verbose: VerboseOpt = False,
):
    """Post-training quantization of an FP32 ONNX into Q/DQ ONNX (INT8, FP8 or INT4), with a Q/DQ report.

    With --max-drop, groups that cost accuracy fall back to high precision until the budget holds on --select-yaml.
    """
    from .. import api
    from ..optimize.common.sparse24 import describe

    record = api.quantize(model, calib=calib, data=data, split=split, num_images=num_images, mode=mode, method=method,
                          percentile=percentile, target=target, exclude=exclude, head_protect=head_protect,
                          high_precision=high_precision, max_drop=max_drop, max_fallback=max_fallback,
                          max_steps=max_steps, select_yaml=select_yaml, select_split=select_split,
                          select_images=select_images, select_metric=select_metric, reduce_range=reduce_range,
                          methods=methods, output=output, say=say)
    used = record["quantization"]["method"]
    console.print(f"quantized [bold]{esc(record['model'])}[/bold] ({mode}, {used}, {target}) from "
                  f"{record['calibration_images']} calibration images in {record['seconds']} s", markup=True)
    print_qdq(record["qdq_report"])
    kernels = record.get("int8_kernels", {}).get("onnxruntime")
    if kernels:
        path = "integer kernels" if kernels["kind"] == "integer" else "exact path"
        console.print(f"ONNX Runtime on this CPU ({kernels['cpu']}): {path}, {kernels['reason']}", highlight=False,
                      soft_wrap=True)
    if "budget" in record:
        _print_budget(record["budget"], record["quantization"]["method"], record.get("calibration_choice"))
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
    method: Annotated[Optional[str], typer.Option("--method", help="Activation calibration: entropy, max, percentile "
                                                  "or search (default: search for tensorrt, as --max-drop uses; max "
                                                  "for cpu).")] = None,
    target: TargetOpt = "tensorrt",
    percentile: PercentileOpt = 99.999,
    head_protect: HeadOpt = True,
    select_images: SelectImagesOpt = 300,
    select_metric: SelectMetricOpt = None,
    sqnr_images: Annotated[int, typer.Option("--sqnr-images", help="Calibration images for the output-error "
                                             "(SQNR) views.")] = 16,
    top: Annotated[int, typer.Option("--top", help="Worst groups whose selection metric is measured.")] = 4,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Measure again even when a cached result exists.")]
    = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT_FOLDER",
                                                   help="Folder for sensitivity.json and "
                                                   "sensitivity.png (default: workspace/sensitivity/<model>_<method>"
                                                   "_<target>).")] = None,
    verbose: VerboseOpt = False,
):
    """Rank quantization groups by the accuracy they cost: each alone, each kept in float, and the selection metric."""
    from .. import api
    from ..report.sensitivity import table

    record = api.sensitivity(model, calib, data, split=split, method=method, target=target, percentile=percentile,
                             head_protect=head_protect, select_images=select_images, select_metric=select_metric,
                             sqnr_images=sqnr_images, top=top, threads=threads, no_cache=no_cache, output=output,
                             say=say)
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
    methods: Annotated[Optional[str], typer.Option("--methods", "--method", help="Calibration methods to compare, "
                                                   "comma-separated. Default: entropy; with --max-drop, search for "
                                                   "the tensorrt target.")] = None,
    targets: Annotated[str, typer.Option("--targets", "--target", help="Targets, comma-separated: tensorrt,cpu.")]
    = "tensorrt,cpu",
    percentile: PercentileOpt = 99.999,
    exclude: ExcludeOpt = None,
    head_protect: HeadOpt = True,
    high_precision: HighPrecisionOpt = "fp32",
    batch: Annotated[int, typer.Option("--batch", help="Evaluation batch and second latency figure.")] = 1,
    runs: Annotated[int, typer.Option("--runs", help="Timed latency runs (0 skips latency).")] = 30,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: all).")] = None,
    runtimes: Annotated[Optional[str], typer.Option("--runtimes", help="Also time every model on these runtimes, "
                                                    "side by side, and name the fastest: onnxruntime,openvino "
                                                    "(tensorrt on a GPU).")] = None,
    int8_kernels: Int8KernelsOpt = "auto",
    max_drop: MaxDropOpt = None,
    max_fallback: MaxFallbackOpt = 0.10,
    max_steps: MaxStepsOpt2 = 12,
    select_yaml: SelectYamlOpt = None,
    select_split: SelectSplitOpt = "val",
    select_images: SelectImagesOpt = 300,
    select_metric: SelectMetricOpt = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT_FOLDER",
                                                   help="Folder for the models and records "
                                                   "(default: workspace/ptq/<model>).")] = None,
    arch: ArchOpt = None, imgsz: ImgszOpt = None, mean: MeanOpt = None, std: StdOpt = None, crop: CropOpt = None,
    modules: ModulesOpt = None, head: LayoutOpt = None, names: NamesOpt = None,
    verbose: VerboseOpt = False,
):
    """Route 1 in one command: export, calibrate, quantize per method and target, evaluate, compare."""
    from .. import api
    from ..evaluate.table import comparison_table, runtimes_table

    route = api.ptq(model, data, split=split, val_data=val_data, val_split=val_split, num_images=num_images,
                    mode=mode, methods=methods, targets=targets, percentile=percentile, exclude=exclude,
                    head_protect=head_protect, high_precision=high_precision, batch=batch, runs=runs,
                    threads=threads, runtimes=runtimes, int8_kernels=int8_kernels, max_drop=max_drop,
                    max_fallback=max_fallback, max_steps=max_steps, select_yaml=select_yaml,
                    select_split=select_split, select_images=select_images, select_metric=select_metric,
                    output=output, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                    names=names, say=say)
    console.print(comparison_table([route["fp32"], *route["variants"]], title="route 1: PTQ"))
    if "latency_by_runtime" in route["fp32"]:
        console.print(runtimes_table([route["fp32"], *route["variants"]]))
    print_notes([route["fp32"], *route["variants"]])
    for variant in route["variants"]:
        if "budget" in variant:
            console.print(f"{Path(variant['model']).name}:", end=" ")
            _print_budget(variant["budget"], variant["quantization"]["method"], variant.get("calibration_choice"))
    for target, best in route["best"].items():
        console.print(f"best for {target}: {best['method']} ({best['metric']} {-best['drop'] * 100:+.2f} points "
                      "against FP32)")
    console.print(f"run record: {route['record']}")


# ---------------------------------------------------------------- calib-cache (implicit INT8, DLA, DeepStream)
@app.command("calib-cache")
@cli_errors
def calib_cache(
    model: Annotated[Optional[str], typer.Option("-m", "--model", help="FP32 ONNX whose activations the cache "
                                                 "covers.")] = None,
    calib: CalibOpt = None,
    data: DataOpt = None,
    split: SplitOpt = "train",
    num_images: NumImagesOpt = 512,
    method: Annotated[Optional[str], typer.Option("--method", help="entropy (TensorRT's entropy calibration; the "
                                                  "default), max, percentile or mse.")] = None,
    percentile: Annotated[Optional[float], typer.Option("--percentile", help="Percentile of |activation| for "
                                                        "--method percentile, 90 to 100 (default 99.99).")] = None,
    head_protect: HeadOpt = True,
    from_qdq: Annotated[Optional[str], typer.Option("--from-qdq", help="Write the scales this Q/DQ model's "
                                                    "quantizers carry instead of measuring.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="OUT.cache",
                                                   help="Output .cache (default: "
                                                   "workspace/calib/<model>_<method>.cache).")] = None,
    verbose: VerboseOpt = False,
):
    """TensorRT calibration cache for implicit INT8 (trtexec --calib, DLA, DeepStream int8-calib-file)."""
    from .. import api

    record = api.calib_cache(model, calib=calib, data=data, split=split, num_images=num_images, method=method,
                             percentile=percentile, head_protect=head_protect, from_qdq=from_qdq, output=output,
                             say=say)
    low, high = record["scale_range"]
    protected = (f"; the decode's {record['head_protected']} tensors left out (FP16 in TensorRT)"
                 if record["head_protected"] else "")
    console.print(f"wrote [bold]{esc(record['output'])}[/bold]: {record['tensors']} tensors ({record['method']}), "
                  f"{record['coverage']:.1%} of the model's {record['activations']} activations, "
                  f"scales {low:.3g}..{high:.3g}{protected}", markup=True)
    if record["missing"]:
        console.print(f"not in the cache (TensorRT keeps them in higher precision): {', '.join(record['missing'][:8])}"
                      f"{' ...' if len(record['missing']) > 8 else ''}")
    emulated = record["emulated"]
    if emulated.get("absurd"):
        console.print("[yellow]warning:[/yellow] emulated, this cache loses too much: `deploy --implicit` refuses it "
                      "(unless --trust-cache); try another --method", markup=True)
    elif emulated.get("kind") == "not measured":
        console.print(f"not measured: {emulated['why']}")
