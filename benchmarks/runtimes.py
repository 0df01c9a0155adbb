"""Runtimes benchmark: FP32 and INT8 (tensorrt and cpu targets) on ONNX Runtime and on OpenVINO, side by side.

    python benchmarks/runtimes.py                     # embedded demo detector and its generated data
    python benchmarks/runtimes.py -m ../shared/weights/yolov5n.pt --imgsz 640 \
        --yaml ../shared/data/coco128/coco128.yaml --split val -n 128 \
        --val-yaml ../shared/data/coco-val-dev/coco-val-dev.yaml --threads 2

The FP32 graph is exported with a free batch (so batch 4 is a real batch on both runtimes) and quantized
with --method max for each target. Every (model, runtime) pair is timed in turn, round by round, on the
same input (evaluate.latency.interleaved_latency), and each figure is printed as a ratio to ONNX Runtime
FP32 and to OpenVINO FP32 measured in that same run, with the CPU model and its integer features.

OpenVINO's INT8 kernels are exact only with VNNI or AMX (runtime/cpu.py). On a CPU without them, the
OpenVINO rows are the exact run (Q/DQ weights folded into float, "INT8 emulated") and the integer kernels
are timed too, as "openvino int8 kernels", with their accuracy when --val-yaml is given: fast, and wrong
there because their 16-bit sums saturate.
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
from orinflow.runtime import OrtRunner  # noqa: E402
from orinflow.runtime.cpu import describe_features, exact_int8_dot_products  # noqa: E402
from orinflow.runtime.openvino import OpenVinoRunner  # noqa: E402


def make_models(args, workdir: Path) -> dict[str, OnnxModel]:
    """FP32 (free batch) and its INT8 for the tensorrt and cpu targets, calibrated with max."""
    source = load_model(args.model, imgsz=args.imgsz)
    fp32 = source if isinstance(source, OnnxModel) else load_model(
        export_onnx(source, workdir / "fp32.onnx", dynamic=True).path)
    calib = build_calibration(fp32.processing, load_dataset(args.yaml, args.split), args.num_images)
    models = {"fp32": fp32}
    for target in ("tensorrt", "cpu"):
        path = workdir / f"int8_{target}.onnx"
        quantize_onnx(fp32, calib, QuantizeSpec(method="max", target=target), path, say=lambda m: None)
        models[f"int8 {target}"] = load_model(path)
    return models


def make_runners(models: dict[str, OnnxModel], threads: int) -> dict[tuple[str, str], object]:
    runners = {}
    for name, model in models.items():
        runners[(name, "onnxruntime")] = OrtRunner(model.path, threads)
        runners[(name, "openvino")] = OpenVinoRunner(model.path, threads)
        if name != "fp32" and not exact_int8_dot_products():
            runners[(name, "openvino int8 kernels")] = OpenVinoRunner(model.path, threads, int8="kernels")
    return runners


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data(parser, "calibration", "accuracy (optional; claim data)")
    add_timing_args(parser, 30, "interleaved timing rounds at batch 1", 4, "second batch size timed")
    args, workdir = parse_with_workdir(parser, "orinflow-bench-runtimes-")
    models = make_models(args, workdir)
    runners = make_runners(models, args.threads)
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
        rows = [{"model": m, "runtime": r, "latency_ms": {f"batch{b}": t[(m, r)] for b, t in latency.items()},
                 **({"accuracy": accuracy[(m, r)]} if accuracy else {})} for m, r in runners]
        write_json(args.json, {"cpu": cpu_name(), "features": describe_features(), "threads": args.threads,
                               "rounds": args.rounds, "model": args.model, "rows": rows})
    return 0


def print_table(runners: dict, latency: dict, accuracy: dict, args) -> None:
    print(f"\nRuntimes benchmark: {args.model} | {cpu_name()} ({describe_features()}) | {args.threads} threads, "
          f"{args.rounds} interleaved rounds at batch 1")
    metric = ("mAP50-95" if "mAP50-95" in next(iter(accuracy.values())) else "top1") if accuracy else None
    header = f"{'model':14} {'runtime':22}" + (f" {metric:>9}" if metric else "")
    for b in latency:
        header += f" {'b' + str(b) + ' ms':>9} {'/ORT FP32':>9} {'/OV FP32':>9}"
    print(header)
    for model, runtime in runners:
        line = f"{model:14} {runtime:22}"
        if metric:
            line += f" {accuracy[(model, runtime)][metric]:9.4f}"
        for times in latency.values():
            mine = times[(model, runtime)]["median"]
            line += (f" {mine:9.2f} {mine / times[('fp32', 'onnxruntime')]['median']:9.2f}"
                     f" {mine / times[('fp32', 'openvino')]['median']:9.2f}")
        print(line)
    if not exact_int8_dot_products():
        print("This CPU has no VNNI or AMX: the openvino rows ran the Q/DQ weights folded into float (exact); "
              "'openvino int8 kernels' are OpenVINO's integer kernels, whose 16-bit sums saturate here.")


if __name__ == "__main__":
    sys.exit(main())
