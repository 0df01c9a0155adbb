"""Route 1 in one call: export → calibrate → quantize (each method × target) → evaluate → compare."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ...data import Dataset, load_dataset
from ...data.calibration import build_calibration, save_calibration
from ...errors import OrinflowError
from ...evaluate import EvalOptions, evaluate_model, headline, runtime_latency
from ...export import export_onnx
from ...export.nms import with_nms_restored
from ...io import write_json
from ...models import ModelAdapter, OnnxModel, load_model
from ...runtime.trust import probe_count
from .ptq import QuantizeSpec, default_method, quantize_onnx
from .calib_choice import budgeted
from .sensitivity import BudgetSpec, SensitivityOptions
from ...tasks import task_room

Budget = tuple[BudgetSpec, Dataset, SensitivityOptions]


def quantized_name(stem: str, spec: QuantizeSpec) -> str:
    return f"{stem}_{spec.mode}_{spec.method}_{spec.target}.onnx"


def target_methods(base: QuantizeSpec, methods: list[str] | None, target: str, budget: bool) -> list[str]:
    """The methods quantized for `target`: those given, else the default (under a budget, the calibration the
    selection data measures best: ptq.default_method, calib_choice.py)."""
    return methods if methods else [default_method(target, base.mode, budget)]


def check_variants(base: QuantizeSpec, methods: list[str] | None, targets: list[str], budget: bool = False) -> None:
    """Refuse any bad method x target pair (such as search on cpu) before work starts."""
    for target in targets:
        for method in target_methods(base, methods, target, budget):
            replace(base, method=method, target=target).validate()


def run_ptq(model: ModelAdapter | OnnxModel, calib_data: str | Path, calib_split: str, eval_data: str | Path,
            eval_split: str, workdir: Path, methods: list[str] | None, targets: list[str], base: QuantizeSpec,
            num_images: int, options: EvalOptions, say=print, budget: Budget | None = None,
            runtimes: list[str] | None = None) -> dict:
    """Returns the route record: FP32 and every quantized variant evaluated on the same data.

    `runtimes` (several ONNX runtimes): each model is also timed on each of them (evaluate.runtime_latency);
    the record's "latency_by_runtime" holds the figures and "best_runtime" the fastest.

    With `budget` (BudgetSpec, selection Dataset, SensitivityOptions), every variant is quantized
    under that accuracy budget (sensitivity.fit_budget), selected on the selection data only.
    `methods` None: each target's default (target_methods).
    """
    check_variants(base, methods, targets, budget is not None)

    def indented(message: str) -> None:
        say(f"  {message.strip()}")

    if isinstance(model, OnnxModel):
        fp32 = model
    else:
        fp32 = load_model(export_onnx(model, workdir / f"{Path(model.source).stem}_fp32.onnx").path)
        say(f"exported {fp32.path}")
    calib = build_calibration(fp32.processing, load_dataset(calib_data, calib_split), num_images)
    save_calibration(calib, workdir / "calib.npy")
    say(f"calibration set: {len(calib)} images from {calib_data}:{calib_split}")
    evaluation = load_dataset(eval_data, eval_split)
    records = [evaluate_model(fp32, evaluation, eval_split, options)]
    variants = []
    for target in targets:
        for method in target_methods(base, methods, target, budget is not None):
            spec = replace(base, method=method, target=target)
            out = workdir / quantized_name(Path(fp32.path).stem.removesuffix("_fp32"), spec)
            if budget:
                quantized = with_nms_restored(fp32, out, lambda raw, path: budgeted(
                    raw, calib, spec, budget[1], budget[0], path, budget[2], say=indented))
            else:
                quantized = with_nms_restored(fp32, out, lambda raw, path: quantize_onnx(raw, calib, spec, path,
                                                                                         say=indented))
            say(f"quantized {out.name}: {spec.mode.upper()} FLOP share {quantized['qdq_report']['quantized_flop_share']:.1%}, "
                f"lint {len(quantized['qdq_report']['lint'])} issue(s)")
            record = evaluate_model(load_model(out), evaluation, eval_split, options)
            record.update(route="ptq", quantization=quantized["quantization"], qdq_report=quantized["qdq_report"],
                          sparsity=quantized["sparsity"])
            if budget:
                record["budget"] = quantized["budget"]
            if "calibration_choice" in quantized:
                record["calibration_choice"] = quantized["calibration_choice"]
            records.append(record)
            variants.append(record)
    if not variants:
        raise OrinflowError("nothing to quantize: give at least one method and one target")
    if runtimes and len(runtimes) > 1 and options.measure_latency:
        for record in records:
            say(f"timing {Path(record['model']).name} on {', '.join(runtimes)} ...")
            record.update(runtime_latency(load_model(record["model"]), runtimes, options,
                                          probe=calib[:probe_count(fp32.processing.imgsz)]))
    route = {"route": "ptq", "fp32": records[0], "variants": variants, "best": best_by_target(records[0], variants)}
    write_json(workdir / "ptq_record.json", route)
    return route


def best_by_target(fp32: dict, variants: list[dict]) -> dict[str, dict]:
    """For each target, the method that loses the least accuracy (main metric) against FP32."""
    key = task_room(fp32["task"]).headline
    best: dict[str, dict] = {}
    for record in variants:
        target = record["quantization"]["target"]
        drop = headline(fp32)[key] - headline(record)[key]
        if target not in best or drop < best[target]["drop"]:
            best[target] = {"method": record["quantization"]["method"], "metric": key, "drop": drop,
                            "model": record["model"]}
    return best
