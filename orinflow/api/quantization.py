"""Quantization commands: quantize (PTQ, optionally under an accuracy budget), the PTQ route, sensitivity,
and inspect (the Q/DQ placement and 2:4 report of an ONNX)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import workspace
from ..errors import OrinflowError
from .common import PathLike, Say, checked, locate, names_list
from .prepare import load


@checked
def quantize(model: PathLike, *, calib: PathLike | None = None, data: PathLike | None = None, split: str = "train",
             num_images: int = 512, mode: str = "int8", method: str | None = None, percentile: float = 99.999,
             target: str = "tensorrt", exclude: Sequence[str] | None = None, head_protect: bool = True,
             high_precision: str = "fp32", max_drop: float | None = None, max_fallback: float = 0.10,
             max_steps: int = 12, select_yaml: PathLike | None = None, select_split: str = "val",
             select_images: int = 300, select_metric: str | None = None, reduce_range: bool = False,
             methods: str | Sequence[str] | None = None, output: PathLike | None = None, say: Say = print) -> dict:
    """Post-training quantization of an orinflow FP32 ONNX into Q/DQ ONNX (default
    workspace/models/onnx/<target>/<name>_<mode>_<method>.onnx).

    Calibration comes from `calib` (.npy from `calibrate`) or is built from `data`/`split`.
    mode: int8, fp8, int4. method: entropy, max, percentile, mse (tensorrt), search (tensorrt int8), or auto; default
    entropy, or auto under `max_drop` (int8): each calibration that applies to the target is measured on the
    selection data and the one that meets the budget with the most INT8 wins (calib_choice.py); `methods`
    ('max,entropy') narrows that list. target: tensorrt (ModelOpt) or cpu (ONNX Runtime). With `max_drop`, the
    groups that cost most fall back to `high_precision` until the main metric on `select_yaml` drops at most
    `max_drop` points (docs/sensitivity.md); `select_metric` names another figure of the task to follow (a
    segmentation model's box mAP50-95: "mAP50-95"; default its headline, docs/tasks.md).
    reduce_range (target cpu): 7-bit weights, so ONNX Runtime's u8 x s8
    kernels cannot saturate on CPUs without VNNI (docs/runtimes.md has what it costs). A cpu-target model is
    checked on ONNX Runtime's integer kernels of this CPU against its exact function: the record's
    "int8_kernels" says which ran its figures, and a disagreement is printed.
    """
    from ..data import load_dataset
    from ..data.calibration import build_calibration, load_calibration
    from ..io import check_output
    from ..models import OnnxModel
    from ..optimize.quantize.ptq import quantize_onnx
    from ..optimize.quantize.route import quantized_name

    from ..optimize.quantize.ptq import default_method

    method = method or default_method(target, mode, budget=max_drop is not None)
    spec = quantize_spec(mode, method, target, percentile, exclude, head_protect, high_precision, reduce_range)
    candidates = auto_methods(spec, methods, max_drop)
    model, calib = locate(model, say), locate(calib, say)
    if calib is None and not data:
        raise OrinflowError("give calibration data: --calib calib.npy, or --yaml data.yaml to build it")
    output = Path(output) if output else workspace() / "models" / "onnx" / target / quantized_name(Path(model).stem,
                                                                                                    spec)
    check_output(output, (".onnx",), [model, calib, data, select_yaml], command="quantize")
    budget = budget_inputs(max_drop, max_fallback, max_steps, select_yaml, select_split, select_images,
                           select_metric=select_metric)
    source = load(model)
    if not isinstance(source, OnnxModel):
        raise OrinflowError(f"{model} is not ONNX: export it first (`orinflow export`) or run `orinflow ptq`")
    check_select_metric(source.task, select_metric)
    if calib is not None:
        array = load_calibration(Path(calib), source.processing)
    else:
        array = build_calibration(source.processing, load_dataset(data, split), num_images)
    from ..export.nms import with_nms_restored
    from ..optimize.quantize.calib_choice import budgeted

    if budget is None:
        made = with_nms_restored(source, output, lambda raw, out: quantize_onnx(raw, array, spec, out, say=say))
    else:
        made = with_nms_restored(source, output, lambda raw, out: budgeted(raw, array, spec, budget[1], budget[0],
                                                                           out, budget[2], say=say,
                                                                           methods=candidates))
    if target == "cpu":
        from ..optimize.quantize.ptq import check_cpu_kernels

        made = check_cpu_kernels(made, source.processing, array, say)
    return made



@checked
def calib_cache(model: PathLike | None = None, *, calib: PathLike | None = None, data: PathLike | None = None,
                split: str = "train", num_images: int = 512, method: str | None = None,
                percentile: float | None = None, head_protect: bool = True, from_qdq: PathLike | None = None,
                output: PathLike | None = None, say: Say = print) -> dict:
    """A TensorRT calibration cache for implicit INT8 (trtexec --calib, DLA, DeepStream's int8-calib-file), default
    workspace/calib/<model>_<method>.cache, with its record beside it (docs/deploy.md).

    From an FP32 ONNX `model` and a calibration set (`calib` .npy, or built from `data`/`split`): the scale of every
    activation tensor, by `method` (entropy, the default; max, percentile at `percentile`, default 99.99; mse); with
    `head_protect`, a detector's decode gets no scale, so TensorRT keeps it in FP16 as the explicit Q/DQ models keep
    it in float. Or `from_qdq`: the scales a Q/DQ model's activation quantizers carry, so an implicit build shares the
    explicit one's calibration (with `model`, the record also says which of its activations the Q/DQ model leaves
    unquantized); method, percentile and head_protect do not apply there and are refused.
    The cache is measured before it is trusted (optimize/quantize/cache_emulation.py): with `model`, the FP32 graph
    runs with a Q/DQ pair at each cached tensor, and the record's "emulated" holds the drop of the main metric on
    `data` (or the share of the FP32 model's answers kept on the calibration images); `deploy --implicit` shows it.
    """
    from ..io import check_output

    model, calib, from_qdq = locate(model, say), locate(calib, say), locate(from_qdq, say)
    method = _cache_method(method, percentile, head_protect, from_qdq)
    percentile = 99.99 if percentile is None else percentile
    if model is None and from_qdq is None:
        raise OrinflowError("give the FP32 ONNX (-m model.onnx) with --calib or --yaml, or a Q/DQ model with "
                            "--from-qdq")
    if from_qdq is None and calib is None and not data:
        raise OrinflowError("give calibration data: --calib calib.npy, or --yaml data.yaml to build it")
    if from_qdq is not None and (calib is not None or data):
        raise OrinflowError("--from-qdq reads the scales the Q/DQ model carries: --calib and --yaml have no use there")
    stem = Path(from_qdq or model).stem
    output = Path(output) if output else workspace() / "calib" / f"{stem}{'' if from_qdq else '_' + method}.cache"
    check_output(output, (".cache",), [model, calib, data, from_qdq], command="calib-cache")
    from ..optimize.quantize.cache_make import make_cache

    return make_cache(model, calib, data, split, num_images, method, percentile, head_protect, from_qdq, output, say)


def _cache_method(method: str | None, percentile: float | None, head_protect: bool, from_qdq) -> str:
    """calib-cache's method, its flags checked against each other before any work."""
    from ..optimize.quantize.calib_cache import METHODS

    if from_qdq is not None:
        given = [flag for flag, value in (("--method", method is not None), ("--percentile", percentile is not None),
                                          ("--no-head-protect", not head_protect)) if value]
        if given:
            raise OrinflowError(f"{', '.join(given)}: --from-qdq reads the scales the Q/DQ model carries, so it "
                                "measures nothing and protects nothing")
        return "from-qdq"
    method = method or "entropy"
    if method not in METHODS:
        raise OrinflowError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    if percentile is not None and (method != "percentile" or not 90 < percentile < 100):
        raise OrinflowError(f"--percentile {percentile}: give it with --method percentile, between 90 and 100 "
                            "(exclusive)" if method == "percentile" else "--percentile applies to --method percentile")
    return method


def auto_methods(spec, methods, max_drop) -> list[str] | None:
    """The calibrations `--method auto` tries (`methods` narrows them), checked before any work; None otherwise."""
    from ..optimize.quantize.calib_choice import candidate_methods
    from ..optimize.quantize.ptq import AUTO

    listed = names_list(methods) if methods else None
    if spec.method != AUTO:
        if listed:
            raise OrinflowError(f"--methods narrows the calibrations --method auto tries; --method {spec.method} "
                                "names one already")
        return None
    if max_drop is None:
        raise OrinflowError("--method auto chooses the calibration by measurement under an accuracy budget: add "
                            "--max-drop (and --select-yaml), or name a method")
    return candidate_methods(spec, listed)


def quantize_spec(mode: str, method: str, target: str, percentile: float, exclude: Sequence[str] | None,
                  head_protect: bool, high_precision: str, reduce_range: bool = False):
    """The checked QuantizeSpec of the quantization flags (shared by quantize, ptq and sensitivity)."""
    from ..optimize.quantize.ptq import QuantizeSpec

    spec = QuantizeSpec(mode=mode, method=method, target=target, percentile=percentile, exclude=list(exclude or []),
                        head_protect=head_protect, high_precision=high_precision, reduce_range=reduce_range)
    spec.validate()
    return spec


def budget_inputs(max_drop, max_fallback, max_steps, select_yaml, select_split, select_images, threads=None,
                  select_metric=None):
    """(BudgetSpec, selection Dataset, SensitivityOptions), or None without max_drop; checked before any work."""
    from ..data import load_dataset
    from ..optimize.quantize.sensitivity import BudgetSpec, SensitivityOptions, selection_subset

    if max_drop is None:
        return None
    budget = BudgetSpec(max_drop=max_drop, max_fallback=max_fallback, max_steps=max_steps)
    budget.validate()
    if not select_yaml:
        raise OrinflowError("--max-drop needs labelled selection data: --select-yaml data.yaml (not your claim data)")
    options = SensitivityOptions(select_images=select_images, threads=threads, metric=select_metric)
    options.validate()
    select = load_dataset(select_yaml, select_split)
    selection_subset(select, 0, 0)  # refuses unlabelled data in one line
    return budget, select, options


@checked
def ptq(model: PathLike, data: PathLike, *, split: str = "train", val_data: PathLike | None = None,
        val_split: str = "val", num_images: int = 512, mode: str = "int8",
        methods: str | Sequence[str] | None = None,
        targets: str | Sequence[str] = "tensorrt,cpu", percentile: float = 99.999,
        exclude: Sequence[str] | None = None, head_protect: bool = True, high_precision: str = "fp32",
        batch: int = 1, runs: int = 30, threads: int | None = None,
        runtimes: str | Sequence[str] | None = None, int8_kernels: str = "auto", max_drop: float | None = None,
        max_fallback: float = 0.10, max_steps: int = 12, select_yaml: PathLike | None = None,
        select_split: str = "val", select_images: int = 300, select_metric: str | None = None,
        output: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None, std=None,
        crop: float | None = None,
        modules: Sequence[PathLike] | None = None, head: str | None = None,
        names: str | None = None, say: Say = print) -> dict:
    """Route 1 in one call: export, calibrate on `data`/`split`, quantize for every method x target, evaluate
    everything on `val_data` (default `data`)/`val_split`. Writes into `output` (default workspace/ptq/<model>).
    methods: default entropy, or under `max_drop` search for the tensorrt target (entropy for cpu).
    runtimes: time every model on each of these too (onnxruntime, openvino, tensorrt), side by side; each
    evaluation record gains "latency_by_runtime" and "best_runtime". Accuracy is measured on ONNX Runtime.
    int8_kernels (auto, integer, exact): how ONNX Runtime and OpenVINO run the INT8 models (as in `evaluate`;
    auto checks their integer kernels against the exact function on this CPU first).

    Returns the route record: "fp32", "variants" (evaluation records), "best" per target, and "record" (the
    ptq_record.json written).
    """
    from ..evaluate import EvalOptions
    from ..io import check_output_folder
    from ..optimize.quantize.route import check_variants, run_ptq

    if not data:
        raise OrinflowError("give the data with --yaml data.yaml (calibration split and evaluation split)")
    model = locate(model, say)
    spec = quantize_spec(mode, "entropy", "tensorrt", percentile, exclude, head_protect, high_precision)
    method_list, target_list = names_list(methods) or None, names_list(targets)
    check_variants(spec, method_list, target_list, max_drop is not None)
    runtime_list = timed_runtimes(runtimes)
    options = EvalOptions(batch=batch, latency_runs=runs, threads=threads, measure_latency=runs > 0,
                          int8_kernels=int8_kernels)
    options.validate()
    workdir = check_output_folder(output or workspace() / "ptq" / Path(model).stem,
                                  [model, data, val_data, select_yaml])
    budget = budget_inputs(max_drop, max_fallback, max_steps, select_yaml, select_split, select_images, threads,
                           select_metric)
    loaded = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                   names=names)
    check_select_metric(loaded.task, select_metric)
    route = run_ptq(loaded, data, split, val_data or data, val_split, Path(workdir), method_list, target_list, spec,
                    num_images, options, say=say, budget=budget, runtimes=runtime_list)
    return dict(route, record=str(Path(workdir) / "ptq_record.json"))


def check_select_metric(task: str, select_metric: str | None) -> None:
    """--select-metric is a figure the model's task reports; said before any work."""
    from ..optimize.quantize.sensitivity import main_metric

    main_metric(task, select_metric)


TIMED_RUNTIMES = ("onnxruntime", "openvino", "tensorrt")


def timed_runtimes(runtimes) -> list[str]:
    """ptq's --runtimes, checked before any work (an uninstalled runtime is named at once)."""
    from ..runtime import check_runtime

    chosen = names_list(runtimes)
    for runtime in chosen:
        if runtime not in TIMED_RUNTIMES:
            raise OrinflowError(f"--runtimes {runtime}: choose among {', '.join(TIMED_RUNTIMES)}")
        check_runtime([], runtime)
    return chosen


@checked
def sensitivity(model: PathLike, calib: PathLike, data: PathLike, *, split: str = "val", method: str | None = None,
                target: str = "tensorrt", percentile: float = 99.999, head_protect: bool = True,
                select_images: int = 300, sqnr_images: int = 16, top: int = 4, threads: int | None = None,
                select_metric: str | None = None, no_cache: bool = False, output: PathLike | None = None,
                say: Say = print) -> dict:
    """Rank the quantization groups of an FP32 ONNX by the accuracy they cost (docs/sensitivity.md), on labelled
    selection data `data` (never claim data). Writes sensitivity.json and .png into `output` (default
    workspace/sensitivity/<model>_<method>_<target>); the record's "files" names them. method: default search for
    tensorrt (what `quantize --max-drop` calibrates with, so it reads this ranking from the cache), max for cpu."""
    from ..data import load_dataset
    from ..data.calibration import load_calibration
    from ..io import check_output_folder
    from ..models import OnnxModel
    from ..optimize.quantize.sensitivity import SensitivityOptions, measure_sensitivity, selection_subset
    from ..report.sensitivity import write_sensitivity

    method = method or ("search" if target == "tensorrt" else "max")
    spec = quantize_spec("int8", method, target, percentile, None, head_protect, "fp32")
    model, calib = locate(model, say), locate(calib, say)
    options = SensitivityOptions(sqnr_images=sqnr_images, select_images=select_images, top=top, threads=threads,
                                 metric=select_metric)
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
    check_select_metric(source.task, select_metric)
    array = load_calibration(Path(calib), source.processing)
    record = measure_sensitivity(source, array, spec, select, options, say=say, use_cache=not no_cache)
    return dict(record, files=write_sensitivity(record, Path(folder)))


@checked
def inspect(model: PathLike, *, target: str = "tensorrt", calib_cache: PathLike | None = None,
            json: PathLike | None = None, say: Say = print) -> dict:
    """The Q/DQ report (quantized share, TensorRT lint; Q/DQ models only) and the 2:4 sparsity check of an ONNX
    model; `json` also writes the record there. A TensorRT calibration cache (`model` ending in .cache, or
    `calib_cache` beside an ONNX): its tensors, scale range, and the model's activations it misses."""
    import onnx

    from ..io import check_output, require_file, write_json
    from ..optimize.common.graph import QDQ_OPS, decode_nodes
    from ..optimize.common.qdq_report import qdq_report
    from ..optimize.common.sparse24 import sparsity_report
    from ..optimize.quantize.calib_cache import cache_summary
    from ..optimize.quantize.ptq import TARGETS

    if target not in TARGETS:
        raise OrinflowError(f"unknown --target {target!r}; choose one of {', '.join(TARGETS)}")
    path = require_file(locate(model, say), "model")
    if json is not None:
        check_output(json, (".json",), [path, calib_cache], flag="--json", record_of="inspect")
    record: dict = {"command": "inspect", "output": str(json), "model": str(path)}
    if path.suffix.lower() == ".cache":
        if calib_cache is not None:
            raise OrinflowError("give the cache with -m alone, or the ONNX with -m and the cache with --calib-cache")
        record["calib_cache"] = cache_summary(path, None)
    else:
        try:
            graph = onnx.load(str(path))
        except Exception as e:
            raise OrinflowError(f"{path} is not a readable ONNX model ({type(e).__name__})") from e
        if any(n.op_type in QDQ_OPS for n in graph.graph.node):
            record["qdq_report"] = qdq_report(graph, target, "int8", set(decode_nodes(graph)))
        record["sparsity"] = sparsity_report(graph)
        if calib_cache is not None:
            record["calib_cache"] = cache_summary(require_file(locate(calib_cache, say), "--calib-cache"), graph)
    if json is not None:
        write_json(json, record)
    return record


