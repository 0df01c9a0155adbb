"""Route 1 benchmark: FP32 vs INT8 accuracy per method and target, and CPU latency ratios side by side.

    python benchmarks/ptq.py                      # embedded demo detector and its generated data
    python benchmarks/ptq.py -m ../shared/weights/yolov5n.pt --yaml ../shared/data/coco128/coco128.yaml \
        --split val --val-yaml ../shared/data/coco-val-dev/coco-val-dev.yaml -n 128 --threads 2

Latency: every model runs on ONNX Runtime's CPU provider with the same thread count, timed
in turn (round-robin) on the same input, and is reported as a ratio to FP32 measured in
that same run. Accuracy and latency come from one invocation; nothing is reused from files.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")

from orinflow.evaluate import EvalOptions  # noqa: E402
from orinflow.evaluate.latency import interleaved_latency  # noqa: E402
from orinflow.io import write_json  # noqa: E402
from orinflow.models import load_model  # noqa: E402
from orinflow.optimize.quantize.ptq import QuantizeSpec  # noqa: E402
from orinflow.optimize.quantize.route import run_ptq  # noqa: E402
from orinflow.runtime import OrtRunner  # noqa: E402


def add_model_and_data(parser: argparse.ArgumentParser, calib_role: str, val_role: str) -> None:
    """The model and data options every route benchmark takes."""
    parser.add_argument("-m", "--model", help="model (default: the embedded demo detector)")
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--yaml", help=f"{calib_role} dataset YAML (default: generated shapes)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--val-yaml", help=f"{val_role} dataset YAML (default: --yaml)")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("-n", "--num-images", type=int, default=128)


def default_to_demo(args: argparse.Namespace, workdir: Path) -> None:
    """No --model: the embedded demo detector on its generated shapes."""
    if args.model is None:
        from orinflow.demo import shapes
        from orinflow.demo.pipeline import DEMO_MODEL

        args.model, args.imgsz = str(DEMO_MODEL), shapes.IMAGE_SIZE
        args.yaml = args.yaml or str(shapes.generate(workdir / "shapes"))


def add_timing_args(parser: argparse.ArgumentParser, rounds: int, rounds_help: str, batch: int,
                    batch_help: str) -> None:
    """Threads, timing rounds and the second batch size, the record and the working folder."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)
    parser.add_argument("--json", type=Path, help="write the benchmark record here")
    parser.add_argument("--workdir", type=Path, default=None)


def parse_with_workdir(parser: argparse.ArgumentParser, prefix: str) -> tuple[argparse.Namespace, Path]:
    """The arguments and the working folder (a new one without --workdir); no --model: the demo detector."""
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=prefix))
    default_to_demo(args, workdir)
    if args.yaml is None:
        parser.error("--yaml is required with --model")
    return args, workdir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data(parser, "calibration", "evaluation")
    parser.add_argument("--methods", default="entropy,max,percentile")
    parser.add_argument("--targets", default="tensorrt,cpu")
    add_timing_args(parser, 50, "interleaved timing rounds per batch size", 8, "second batch size timed (1 only: 1)")
    args, workdir = parse_with_workdir(parser, "orinflow-bench-ptq-")
    model = load_model(args.model, imgsz=args.imgsz)
    route = run_ptq(model, args.yaml, args.split, args.val_yaml or args.yaml, args.val_split, workdir,
                    args.methods.split(","), args.targets.split(","), QuantizeSpec(), args.num_images,
                    EvalOptions(measure_latency=False, batch=8, threads=args.threads), say=lambda m: None)
    records = [route["fp32"], *route["variants"]]
    runners = {Path(r["model"]).name: OrtRunner(r["model"], args.threads) for r in records}
    shape = (3, *load_model(route["fp32"]["model"]).processing.imgsz)
    latency = {b: interleaved_latency(runners, (b, *shape), args.rounds if b == 1 else max(5, args.rounds // b))
               for b in batch_sizes(runners, args.batch)}
    print_table(records, latency, args)
    for record in records:  # the side-by-side figures replace none: the route measured no latency
        name = Path(record["model"]).name
        record["latency_ms"] = {**{f"batch{b}": {**times[name], "batch": b} for b, times in latency.items()},
                                "threads": args.threads, "interleaved": True}
    if args.json:
        write_json(args.json, {"route": route, "threads": args.threads, "rounds": args.rounds})
    return 0


def batch_sizes(runners: dict, batch: int) -> list[int]:
    """1, and `batch` only when every graph takes it: a static-batch graph would run it image by image."""
    static = [name for name, runner in runners.items() if isinstance(runner.static_batch, int)]
    if batch > 1 and static:
        print(f"batch {batch} not timed: {len(static)} graph(s) have a static batch of 1, so a 'batch {batch}' "
              f"figure would be {batch} batch-1 runs")
        return [1]
    return sorted({1, batch})


def print_table(records: list[dict], latency: dict[int, dict], args) -> None:
    key = "mAP50-95" if records[0]["task"] == "detect" else "top1"
    fp32_name = Path(records[0]["model"]).name
    print(f"\nPTQ benchmark: {args.model} | calib {args.yaml}:{args.split} ({args.num_images}) | eval "
          f"{args.val_yaml or args.yaml}:{args.val_split} | ONNX Runtime CPU, {args.threads} threads, "
          f"{args.rounds} interleaved rounds")
    header = f"{'model':48} {'target':9} {'method':10} {key:>9} {'Δ pts':>7}"
    for b in latency:
        header += f" {'b' + str(b) + ' ms':>9} {'ratio':>6}"
    print(header)
    base = records[0]["metrics"][key]
    for record in records:
        name = Path(record["model"]).name
        q = record.get("quantization", {})
        line = (f"{name:48} {q.get('target', 'fp32'):9} {q.get('method', '-'):10} {record['metrics'][key]:9.4f} "
                f"{(record['metrics'][key] - base) * 100:+7.2f}")
        for times in latency.values():
            line += f" {times[name]['median']:9.2f} {times[name]['median'] / times[fp32_name]['median']:6.2f}"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
