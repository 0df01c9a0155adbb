"""Under an accuracy budget, the calibration chosen by measurement on the selection data (`--method auto`, the
default with --max-drop): no one method is best for every model (docs/sensitivity.md has the figures).

1. Each candidate method that applies to the target (cheapest first) quantizes the whole model (cached, so a
   second run or a `sensitivity` run before it does not quantize again) and its full-INT8 selection metric is
   measured. Every candidate is measured: on yolov8n the first to meet the budget with every group in INT8
   (percentile) lost 1.19 points on held-out data where a later one (search) scored better on the selection
   data and lost 0.19 (docs/sensitivity.md).
2. When the best by that score meets the budget with every group in INT8, it is the model; otherwise the best
   `FINALISTS` each run the budget's fallback (sensitivity.fit_budget), the expensive part.
3. The model written is the finalist that meets the budget with the most INT8 FLOPs (ties: the better selection
   score); when none meets it, the one closest to it. The record's "calibration_choice" keeps every candidate's
   score, each finalist's fallback curve, and why the winner won.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ...data import Dataset
from ...errors import OrinflowError
from ...io import atomic_path, check_output, private_folder, write_record
from ...models.onnx_model import OnnxModel
from .ptq import AUTO, QuantizeSpec
from .sensitivity import BudgetSpec, MetricProbe, SensitivityOptions, fit_budget, quantize_full, selection_subset

CANDIDATES = {"tensorrt": ("max", "percentile", "entropy", "mse", "search"), "cpu": ("max", "percentile", "entropy")}
FINALISTS = 2


def candidate_methods(spec: QuantizeSpec, methods: list[str] | None = None) -> list[str]:
    """The calibrations tried for `spec`'s target, cheapest first; `methods` narrows them (in that order)."""
    allowed = CANDIDATES[spec.target]
    if not methods:
        return list(allowed)
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise OrinflowError(f"--methods {','.join(unknown)}: under --max-drop the {spec.target} target chooses "
                            f"among {', '.join(allowed)}")
    return [m for m in allowed if m in methods]


def budgeted(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, select: Dataset, budget: BudgetSpec,
             output: Path, options: SensitivityOptions | None = None, say=print,
             methods: list[str] | None = None) -> dict:
    """The budget's model: with `spec.method` auto, the calibration chosen by measurement; else that method's."""
    if spec.method != AUTO:
        return fit_budget(source, calib, spec, select, budget, output, options, say=say)
    return choose_calibration(source, calib, spec, select, budget, output, options, say, methods)


def choose_calibration(source: OnnxModel, calib: np.ndarray, spec: QuantizeSpec, select: Dataset,
                       budget: BudgetSpec, output: Path, options: SensitivityOptions | None = None, say=print,
                       methods: list[str] | None = None, keep: Path | None = None) -> dict:
    """The budget's model with the calibration chosen as the module says; `keep` (a folder) also receives every
    finalist's model as <method>.onnx (benchmarks/calib_choice.py claims each on held-out data)."""
    budget.validate()
    options = options or SensitivityOptions()
    check_output(output, (".onnx",), [source.path], command="quantize")
    methods = candidate_methods(spec, methods)
    subset = selection_subset(select, options.select_images, options.seed)
    started = time.perf_counter()
    with private_folder("orinflow-choice-") as work:
        probe = MetricProbe(subset, source.task, work, options.threads, options.metric)
        reference = probe.metric(onnx.load(str(source.path)))
        say(f"calibration chosen on {subset.name} ({len(subset)} images): {probe.key} FP32 {reference:.4f}; "
            f"trying {', '.join(methods)}")
        candidates = []
        for number, method in enumerate(methods, 1):
            trial = replace(spec, method=method)
            notes: list[str] = []
            began = time.perf_counter()
            full, _ = quantize_full(source, calib, trial, work, say=notes.append)
            cached = any("read from cache" in note for note in notes)
            value = probe.metric(full)
            drop = (reference - value) * 100
            candidates.append({"method": method, "full_int8": value, "drop_points": drop, "cached": cached,
                               "seconds": round(time.perf_counter() - began, 1)})
            say(f"  [{number}/{len(methods)}] {method}: full INT8 {value:.4f} ({-drop:+.2f} points)"
                + (" - its quantization read from cache" if cached else ""))
        ranked = sorted(candidates, key=lambda c: -c["full_int8"])  # stable: a tie keeps the cheaper method
        within = ranked[0]["drop_points"] <= budget.max_drop
        finalists = ranked[:1] if within else ranked[:FINALISTS]
        if within:
            say(f"  {ranked[0]['method']} scores best and meets --max-drop {budget.max_drop} with every group in "
                "INT8: no fallback needed")
        trials = []
        for row in finalists:
            say(f"fallback with {row['method']} calibration:")
            path = work / f"{row['method']}.onnx"
            made = fit_budget(source, calib, replace(spec, method=row["method"]), select, budget, path, options,
                              say=lambda m: say(f"  {m.strip()}"),
                              measured={"fp32": reference, "full_int8": row["full_int8"]})
            trials.append((row["method"], made, path))
        method, record, path = _winner(trials)
        with atomic_path(output) as tmp:
            shutil.copyfile(path, tmp)
        for name, _, made_path in trials if keep is not None else []:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(made_path, keep / f"{name}.onnx")
    record["model"] = str(output)
    record["calibration_choice"] = {
        "metric": probe.key, "select_data": subset.name, "select_images": len(subset), "fp32": reference,
        "candidates": candidates, "fallback_needed": not within,
        "finalists": [{"method": m, "met": r["budget"]["met"], "final": r["budget"]["final"],
                       "drop_points": r["budget"]["drop_points"], "int8_flop_share": r["budget"]["int8_flop_share"],
                       "fallback": r["budget"]["fallback"], "steps": r["budget"]["steps"],
                       "seconds": r["seconds"]} for m, r, _ in trials],
        "chosen": method, "why": _why(method, trials), "seconds": round(time.perf_counter() - started, 1)}
    record["seconds"] = record["calibration_choice"]["seconds"]
    write_record(Path(output), record)
    say(f"chosen: {method} ({record['calibration_choice']['why']})")
    return record


def _winner(trials: list[tuple[str, dict, Path]]) -> tuple[str, dict, Path]:
    """The finalist meeting the budget with the most INT8 FLOPs (ties: the better selection score); when none
    meets it, the best selection score."""
    met = [t for t in trials if t[1]["budget"]["met"]]
    if met:
        return max(met, key=lambda t: (round(t[1]["budget"]["int8_flop_share"], 6), t[1]["budget"]["final"]))
    return max(trials, key=lambda t: t[1]["budget"]["final"])


def _why(method: str, trials: list[tuple[str, dict, Path]]) -> str:
    chosen = next(r["budget"] for m, r, _ in trials if m == method)
    share = f"{chosen['int8_flop_share']:.1%} of the FLOPs in INT8"
    if len(trials) == 1:
        return (f"meets the budget with {share}" if chosen["met"] else
                f"the only finalist; misses the budget by {chosen['drop_points'] - chosen['max_drop']:.2f} points")
    if not chosen["met"]:
        return f"no finalist meets the budget; {method} comes closest ({chosen['drop_points']:.2f} points lost)"
    others = [r["budget"] for m, r, _ in trials if m != method]
    if all(not o["met"] for o in others):
        return f"the only finalist that meets the budget ({share})"
    return f"meets the budget with the most INT8: {share} (a tie goes to the better selection score)"
