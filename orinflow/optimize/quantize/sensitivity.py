"""Layer sensitivity of a quantized model, measured group by group (groups.py), and the accuracy budget.

Every view starts from one full quantization of the FP32 model (ModelOpt or ONNX Runtime), so
every variant shares the same calibrated scales; a variant only removes groups' Q/DQ pairs.
- alone:    only this group quantized; SQNR of the raw head outputs against FP32.
- all-but:  everything quantized except this group; the SQNR gain over full quantization.
- metric:   for the worst candidates, mAP50-95 (or top-1) of the all-but variant on the selection data.
The budget (`fit_budget`) then falls back the most harmful groups greedily, measuring the
selection metric after each step, until the drop is within --max-drop or the FLOP cap is hit.
"""
from __future__ import annotations

import hashlib
import json
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from ...config import workspace
from ...data import Dataset, draw_images
from ...errors import OrinflowError
from ...io import atomic_path, check_output, private_folder, read_cached, write_cached, write_record
from ...models.onnx_model import OnnxModel, read_metadata, write_metadata
from ...progress import progress
from ..common.probes import HeadProbe, head_tensors, sqnr_db
from ..common.qdq_report import qdq_report
from .groups import Group, dequantize_groups, quantization_groups
from .ptq import QuantizeSpec, quantize_onnx
from ...tasks import task_room

CACHE_VERSION = 1


@dataclass
class SensitivityOptions:
    sqnr_images: int = 16  # calibration images for the output-error views (2 passes per group)
    select_images: int = 300  # selection images for every metric measured here (0: all)
    top: int = 4  # worst candidates whose selection metric is measured
    seed: int = 0  # which selection images are drawn
    threads: int | None = None
    metric: str | None = None  # the selection figure (--select-metric); None: the task's headline

    def validate(self) -> None:
        if self.sqnr_images < 1 or self.select_images < 0 or self.top < 0:
            raise OrinflowError("--sqnr-images must be >= 1, --select-images >= 0 and --top >= 0")


@dataclass
class BudgetSpec:
    max_drop: float  # points of the main metric (mAP50-95 or top-1) on the selection data
    max_fallback: float = 0.10  # share of conv FLOPs allowed to leave INT8
    max_steps: int = 12  # fallback trials (each one measures the selection metric)

    def validate(self) -> None:
        if self.max_drop < 0:
            raise OrinflowError(f"--max-drop must be >= 0 points, got {self.max_drop}")
        if not 0 <= self.max_fallback <= 1:
            raise OrinflowError(f"--max-fallback is a share of conv FLOPs between 0 and 1, got {self.max_fallback}")
        if self.max_steps < 1:
            raise OrinflowError("--max-steps must be >= 1")


def main_metric(task: str, metric: str | None = None) -> str:
    """The selection figure: `metric` when the task reports it (one line naming those it does otherwise), else
    the task's headline (mAP50-95, mask mAP50-95, top-1)."""
    room = task_room(task)
    if metric is not None and metric not in room.figures:
        raise OrinflowError(f"--select-metric {metric}: a {task} model reports {', '.join(room.figures)}")
    return metric or room.headline


def selection_subset(dataset: Dataset, count: int, seed: int) -> Dataset:
    """A seeded draw of `count` images (all when 0 or more than there are), labels kept."""
    if dataset.task is None:
        raise OrinflowError(f"{dataset.name} has no labels: the selection data must be labelled (a dataset YAML "
                            "with YOLO txt labels, or class subfolders) to measure accuracy")
    return draw_images(dataset, count, seed)


class MetricProbe:
    """The selection metric of model variants (written to a private temporary file each)."""

    def __init__(self, dataset: Dataset, task: str, work: Path, threads: int | None, metric: str | None = None):
        self.dataset, self.key, self.work, self.threads = dataset, main_metric(task, metric), work, threads
        self.count = 0

    def metric(self, model: onnx.ModelProto) -> float:
        from ...evaluate import EvalOptions, evaluate_model
        from ...models import load_model

        self.count += 1
        path = self.work / f"variant_{self.count}.onnx"
        onnx.save(model, str(path))
        try:
            record = evaluate_model(load_model(path), self.dataset, "select",
                                    EvalOptions(measure_latency=False, threads=self.threads))
        finally:
            path.unlink(missing_ok=True)
        return float(record["metrics"][self.key])


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, select: Dataset,
              options: SensitivityOptions) -> str:
    labels = json.dumps([np.asarray(lab).tolist() for lab in select.labels]
                        + [[np.asarray(p).tolist() for p in image] for image in select.segments]
                        + [np.asarray(points).tolist() for points in select.keypoints]
                        + [select.kpt_sigmas])
    return _digest(str(CACHE_VERSION), _file_digest(Path(source.path)), hashlib.sha256(np.ascontiguousarray(calib)).hexdigest(),
                   json.dumps(asdict(spec), sort_keys=True), json.dumps([str(p) for p in select.images]), labels,
                   json.dumps({k: v for k, v in asdict(options).items() if k != "threads"}, sort_keys=True))


def cache_dir() -> Path:
    return workspace() / "cache" / "sensitivity"


def quantize_full(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, work: Path,
                  say=print, use_cache: bool = True) -> tuple[onnx.ModelProto, dict]:
    """One full quantization in a private folder: the model every variant is cut from, and its record.

    Cached in workspace/cache/quantized/ by the model file, the calibration array and the settings, so
    `quantize --max-drop` after `sensitivity` (or a second budget) does not quantize (or search) again."""
    key = _digest(str(CACHE_VERSION), "full", _file_digest(Path(source.path)),
                  hashlib.sha256(np.ascontiguousarray(calib)).hexdigest(), json.dumps(asdict(spec), sort_keys=True))
    stored = cache_dir().parent / "quantized" / f"{key}.onnx"
    stored_record = stored.with_suffix(".json")
    record = read_cached(stored_record, say) if use_cache and stored.is_file() else None
    if record is not None:
        say(f"full quantization: read from cache {stored}")
        return onnx.load(str(stored)), record
    record = quantize_onnx(source, calib, spec, work / "full.onnx", say=say)
    if use_cache:
        try:
            with atomic_path(stored) as tmp:
                tmp.write_bytes((work / "full.onnx").read_bytes())
        except (OrinflowError, OSError) as e:
            say(f"note: not cached ({e}); the result stands")
        else:
            write_cached(stored_record, record, say)
    return onnx.load(str(work / "full.onnx")), record


def measure_sensitivity(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, select: Dataset,
                        options: SensitivityOptions | None = None, say=print, use_cache: bool = True,
                        quantized: tuple[onnx.ModelProto, dict] | None = None, measured: dict | None = None) -> dict:
    """Per-group sensitivity of `source` quantized with `spec`: the ranked record (cached by its inputs).

    `quantized` is the full quantization (model, record) when the caller already has it; `measured` the selection
    metric of FP32 and of that full quantization ({"fp32": ..., "full_int8": ...}) when already measured.
    """
    options = options or SensitivityOptions()
    options.validate()
    spec.validate()
    if spec.mode != "int8":
        raise OrinflowError("sensitivity and --max-drop work on --mode int8")
    subset = selection_subset(select, options.select_images, options.seed)
    key = cache_key(source, calib, spec, subset, options)
    cached = cache_dir() / f"{key}.json"
    record = read_cached(cached, say) if use_cache else None
    if record is not None:
        record["cached"] = True
        say(f"sensitivity: read from cache {cached}")
        return record
    started = time.perf_counter()
    with private_folder("orinflow-sens-") as work:
        full, quant_record = quantized or quantize_full(source, calib, spec, work, say, use_cache)
        record = _measure(source, calib, full, subset, options, work, say, measured or {})
    record.update(key=key, cached=False, model=str(source.path), quantization=asdict(spec),
                  calibration_images=int(len(calib)), lint=quant_record["qdq_report"]["lint"],
                  seconds=round(time.perf_counter() - started, 1), peak_memory_mb=peak_memory_mb())
    if use_cache:
        write_cached(cached, record, say)
    return record


def peak_memory_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _measure(source: OnnxModel, calib: np.ndarray, full: onnx.ModelProto, subset: Dataset,
             options: SensitivityOptions, work: Path, say, measured: dict) -> dict:
    fp32 = onnx.load(str(source.path))
    groups = quantization_groups(full)
    if not groups:
        raise OrinflowError("the quantized model has no Q/DQ groups to measure")
    heads = head_tensors(fp32, source.task)
    images = np.asarray(calib[:options.sqnr_images], np.float32)
    probe = HeadProbe(images, heads, options.threads)
    reference = probe.outputs(fp32)
    full_sqnr = sqnr_db(reference, probe.outputs(full))
    total_flops = sum(g.flops for g in groups) or 1
    rows = []
    for group in progress(groups, f"sensitivity: {len(groups)} groups x 2 views on {len(images)} images"):
        others = [g for g in groups if g is not group]
        alone = sqnr_db(reference, probe.outputs(dequantize_groups(full, others)))
        all_but = sqnr_db(reference, probe.outputs(dequantize_groups(full, [group])))
        rows.append(group.to_json() | {"flop_share": group.flops / total_flops, "sqnr_alone_db": alone,
                                       "sqnr_all_but_db": all_but, "gain_db": all_but - full_sqnr})
    rows.sort(key=lambda r: -r["gain_db"])
    key = main_metric(source.task, options.metric)
    metrics = MetricProbe(subset, source.task, work, options.threads, options.metric)
    say(f"sensitivity: {key} of FP32, full INT8 and the {min(options.top, len(rows))} worst groups on "
        f"{len(subset)} selection images")
    fp32_metric = measured["fp32"] if "fp32" in measured else metrics.metric(fp32)
    full_metric = measured["full_int8"] if "full_int8" in measured else metrics.metric(full)
    by_name = {g.name: g for g in groups}
    for row in rows[:options.top]:
        value = metrics.metric(dequantize_groups(full, [by_name[row["name"]]]))
        row.update({f"all_but_{key}": value, "metric_gain_points": (value - full_metric) * 100})
    return {"metric": key, "select_data": subset.name, "select_images": len(subset), "sqnr_images": len(images),
            "head_tensors": heads, "fp32": {key: fp32_metric},
            "full_int8": {key: full_metric, "sqnr_db": full_sqnr, "drop_points": (fp32_metric - full_metric) * 100},
            "groups": rows}


# ------------------------------------------------------------------ the budget
def fit_budget(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, select: Dataset, budget: BudgetSpec,
               output: Path, options: SensitivityOptions | None = None, say=print,
               measured: dict | None = None) -> dict:
    """Quantize `source`, then fall back the most harmful groups until the selection drop is within budget.

    Writes the best model reached (also when the budget is not met) and returns its record. `measured`: the
    selection metric of FP32 and of the full quantization when the caller has measured them (calib_choice.py);
    a full quantization already within the budget then needs no sensitivity ranking.
    """
    budget.validate()
    options = options or SensitivityOptions()
    check_output(output, (".onnx",), [source.path], command="quantize")
    subset = selection_subset(select, options.select_images, options.seed)
    started = time.perf_counter()
    with private_folder("orinflow-budget-") as work:
        full, quant_record = quantize_full(source, calib, spec, work, say)
        metrics = MetricProbe(subset, source.task, work, options.threads, options.metric)
        if measured and (measured["fp32"] - measured["full_int8"]) * 100 <= budget.max_drop:
            ranking = {"metric": metrics.key, "fp32": {metrics.key: measured["fp32"]}, "key": None,
                       "full_int8": {metrics.key: measured["full_int8"]}, "groups": []}
        else:
            ranking = measure_sensitivity(source, calib, spec, select, options, say=say,
                                          quantized=(full, quant_record), measured=measured)
        groups = {g.name: g for g in quantization_groups(full)}
        total_flops = sum(g.flops for g in groups.values()) or 1
        reference = ranking["fp32"][ranking["metric"]]
        current = ranking["full_int8"][ranking["metric"]]
        steps, kept = _greedy(ranking, groups, total_flops, budget, reference, current, full, metrics, say)
        final = dequantize_groups(full, [groups[name] for name in kept])
        final_metric = max([current] + [s["metric"] for s in steps if s["kept"]])
        meta = read_metadata(full)
        write_metadata(final, meta | {"orinflow.fallback": json.dumps(kept)})
        with atomic_path(output) as tmp:
            onnx.save(final, str(tmp))
    drop = (reference - final_metric) * 100
    report = qdq_report(final, spec.target, spec.mode, set(quant_record["excluded_nodes"])
                        if source.processing.room.protects_decode else set())
    record = {
        "command": "quantize", "model": str(output), "source": str(source.path), "task": source.task,
        "quantization": asdict(spec), "calibration_images": int(len(calib)),
        "excluded_nodes": quant_record["excluded_nodes"], "qdq_report": report,
        "sparsity": quant_record["sparsity"], "channel_aligned_convs": quant_record["channel_aligned_convs"],
        "budget": {
            **asdict(budget), "metric": ranking["metric"], "select_data": subset.name, "select_images": len(subset),
            "fallback_precision": spec.high_precision if spec.target == "tensorrt" else "fp32",
            "fp32": reference, "full_int8": ranking["full_int8"][ranking["metric"]], "final": final_metric,
            "drop_points": drop, "met": drop <= budget.max_drop + 1e-9, "fallback": kept,
            "fallback_compute": [c for name in kept for c in groups[name].compute], "steps": steps,
            "int8_flop_share": report["quantized_flop_share"],
            "full_int8_flop_share": quant_record["qdq_report"]["quantized_flop_share"], "sensitivity_key": ranking["key"],
            "search_full_int8": _measured_search_start(source, calib, spec, subset, options),
        },
        "seconds": round(time.perf_counter() - started, 1),  # the sensitivity run included (or read from cache)
        "size_bytes": Path(output).stat().st_size,
    }
    write_record(Path(output), record)
    return record


def _measured_search_start(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, subset: Dataset,
                           options: SensitivityOptions) -> float | None:
    """The selection metric of full INT8 with --method search on the same model, calibration and selection data,
    when an earlier run measured it (the sensitivity cache); None otherwise. Nothing is measured here."""
    if spec.method == "search" or spec.target != "tensorrt" or spec.mode != "int8":
        return None
    key = cache_key(source, calib, replace(spec, method="search"), subset, options)
    cached = read_cached(cache_dir() / f"{key}.json", lambda message: None)
    return None if cached is None else cached["full_int8"][cached["metric"]]


def _greedy(ranking: dict, groups: dict[str, Group], total_flops: int, budget: BudgetSpec, reference: float,
            current: float, full: onnx.ModelProto, metrics: MetricProbe, say) -> tuple[list[dict], list[str]]:
    """Try the groups in ranked order; keep a fallback only when it raises the selection metric."""
    kept: list[str] = []
    steps: list[dict] = []
    spent = 0
    cap = budget.max_fallback * total_flops
    candidates = [r for r in ranking["groups"] if r["gain_db"] > 0 and r["name"] in groups]
    for row in candidates:
        if (reference - current) * 100 <= budget.max_drop or len(steps) >= budget.max_steps:
            break
        cost = groups[row["name"]].flops
        if spent + cost > cap:
            steps.append({"group": row["name"], "flop_share": cost / total_flops, "kept": False,
                          "reason": "over --max-fallback", "metric": None, "gain_points": None})
            continue
        value = metrics.metric(dequantize_groups(full, [groups[n] for n in kept + [row["name"]]]))
        gain = (value - current) * 100
        keep = value > current
        steps.append({"group": row["name"], "flop_share": cost / total_flops, "kept": keep, "metric": value,
                      "gain_points": gain, "reason": "raises the metric" if keep else "no gain"})
        say(f"  fallback {row['name']} ({cost / total_flops:.1%} of conv FLOPs): {gain:+.2f} points"
            f"{'' if keep else ' - not kept'}")
        if keep:
            kept.append(row["name"])
            spent += cost
            current = value
    return steps, kept
