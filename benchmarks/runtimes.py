"""Runtimes benchmark: FP32 and INT8 (tensorrt and cpu targets) on ONNX Runtime and on OpenVINO, side by side.

    python benchmarks/runtimes.py                     # embedded demo detector and its generated data
    python benchmarks/runtimes.py -m ../shared/weights/yolov5n.pt --imgsz 640 \
        --yaml ../shared/data/coco128/coco128.yaml --split val -n 128 \
        --val-yaml ../shared/data/coco-val-dev/coco-val-dev.yaml --threads 2

The FP32 graph is exported with a free batch (so batch 4 is a real batch on both runtimes) and quantized
with --method max for each target, the cpu target also with --reduce-range (7-bit weights, "int8 cpu 7-bit"). Every (model, runtime) pair is timed in turn, round by round, on the
same input (evaluate.latency.interleaved_latency), and each figure is printed as a ratio to ONNX Runtime
FP32 and to OpenVINO FP32 measured in that same run, with the CPU model and its integer features.

The "openvino" and "onnxruntime" rows run as `orinflow evaluate` does (--int8-kernels auto): a runtime's integer
kernels only where they were measured, on the calibration images, to agree with the model's exact function on
this CPU (runtime/trust.py); the "path" column says which ran and why. Each INT8 model is also timed on
OpenVINO's integer kernels as the graph is written ("openvino integer") and on its exact path ("openvino
exact"), with their accuracy when --val-yaml is given, so the price of the rule is measured beside it.
Set ONEDNN_MAX_CPU_ISA=AVX2 to run OpenVINO as on a CPU without VNNI (oneDNN honours the cap).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ptq import add_model_and_data, add_timing_args, parse_with_workdir  # noqa: E402

from orinflow.data import load_dataset  # noqa: E402
from orinflow.data.calibration import build_calibration  # noqa: E402
from orinflow.evaluate import EvalOptions, evaluate_model, headline  # noqa: E402
from orinflow.evaluate.latency import cpu_name, interleaved_latency  # noqa: E402
from orinflow.export import export_onnx  # noqa: E402
from orinflow.io import write_json  # noqa: E402
from orinflow.models import OnnxModel, load_model  # noqa: E402
from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx  # noqa: E402
from orinflow.runtime.checked import checked_runner  # noqa: E402
from orinflow.runtime.cpu import describe_features  # noqa: E402
from orinflow.runtime.openvino import OpenVinoRunner  # noqa: E402
from orinflow.runtime.trust import probe_count  # noqa: E402


def make_models(args, workdir: Path) -> tuple[dict[str, OnnxModel], object]:
    """FP32 (free batch) and its INT8 for the tensorrt and cpu targets, calibrated with max; and the calibration
    images the integer kernels are checked on."""
    source = load_model(args.model, imgsz=args.imgsz)
    fp32 = source if isinstance(source, OnnxModel) else load_model(
        export_onnx(source, workdir / "fp32.onnx", dynamic=True).path)
    calib = build_calibration(fp32.processing, load_dataset(args.yaml, args.split), args.num_images)
    models = {"fp32": fp32}
    specs = {"int8 tensorrt": QuantizeSpec(method="max"), "int8 cpu": QuantizeSpec(method="max", target="cpu"),
             "int8 cpu 7-bit": QuantizeSpec(method="max", target="cpu", reduce_range=True)}
    for name, spec in specs.items():
        path = workdir / f"{name.replace(' ', '_')}.onnx"
        quantize_onnx(fp32, calib, spec, path, say=lambda m: None)
        models[name] = load_model(path)
    return models, calib[:probe_count(fp32.processing.imgsz)]


def make_runners(models: dict[str, OnnxModel], threads: int, probe) -> dict[tuple[str, str], object]:
    """Every model on both runtimes as evaluate runs it (checked on `probe`); INT8 models also on OpenVINO's
    integer kernels as written and on its exact path, unchecked."""
    runners = {}
    for name, model in models.items():
        for runtime in ("onnxruntime", "openvino"):
            runners[(name, runtime)] = checked_runner(model.path, runtime, threads)
            runners[(name, runtime)].settle(probe)
        if name != "fp32":
            runners[(name, "openvino integer")] = OpenVinoRunner(model.path, threads, form="as written")
            runners[(name, "openvino exact")] = OpenVinoRunner(model.path, threads, form="exact")
    return runners


def path_ran(runner) -> str:
    """Which path a runner ran, and why (the rule's verdict, or the form it was told to run)."""
    verdict = getattr(runner, "verdict", None)
    if verdict:
        return f"{verdict['used']}: {verdict['reason']}"
    return f"{runner.form} (unchecked)" if getattr(runner, "quantized", False) else "float"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data(parser, "calibration", "accuracy (optional; claim data)")
    add_timing_args(parser, 30, "interleaved timing rounds at batch 1", 4, "second batch size timed")
    args, workdir = parse_with_workdir(parser, "orinflow-bench-runtimes-")
    models, probe = make_models(args, workdir)
    runners = make_runners(models, args.threads, probe)
    image = (3, *models["fp32"].processing.imgsz)
    latency = {b: interleaved_latency(runners, (b, *image), args.rounds if b == 1 else max(5, args.rounds // b))
               for b in sorted({1, args.batch})}
    accuracy = {}
    if args.val_yaml:
        dataset = load_dataset(args.val_yaml, args.val_split)
        options = EvalOptions(measure_latency=False, threads=args.threads)
        accuracy = {key: headline(evaluate_model(models[key[0]], dataset, args.val_split, options, runner=runner))
                    for key, runner in runners.items()}
    print_table(runners, latency, accuracy, args)
    if args.json:
        rows = [{"model": m, "runtime": r, "path": path_ran(runners[(m, r)]),
                 "latency_ms": {f"batch{b}": t[(m, r)] for b, t in latency.items()},
                 **({"accuracy": accuracy[(m, r)]} if accuracy else {})} for m, r in runners]
        write_json(args.json, {"cpu": cpu_name(), "features": describe_features(), "threads": args.threads,
                               "rounds": args.rounds, "model": args.model, "rows": rows})
    return 0


def print_table(runners: dict, latency: dict, accuracy: dict, args) -> None:
    print(f"\nRuntimes benchmark: {args.model} | {cpu_name()} ({describe_features()}) | {args.threads} threads, "
          f"{args.rounds} interleaved rounds at batch 1")
    metric = ("mAP50-95" if "mAP50-95" in next(iter(accuracy.values())) else "top1") if accuracy else None
    header = f"{'model':15} {'runtime':18}" + (f" {metric:>9}" if metric else "")
    for b in latency:
        header += f" {'b' + str(b) + ' ms':>9} {'/ORT FP32':>9} {'/OV FP32':>9}"
    print(header + "  path")
    for model, runtime in runners:
        line = f"{model:15} {runtime:18}"
        if metric:
            line += f" {accuracy[(model, runtime)][metric]:9.4f}"
        for times in latency.values():
            mine = times[(model, runtime)]["median"]
            line += (f" {mine:9.2f} {mine / times[('fp32', 'onnxruntime')]['median']:9.2f}"
                     f" {mine / times[('fp32', 'openvino')]['median']:9.2f}")
        print(f"{line}  {path_ran(runners[(model, runtime)])}")


if __name__ == "__main__":
    sys.exit(main())
