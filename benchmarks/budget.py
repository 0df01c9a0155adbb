"""Accuracy budget benchmark: full INT8 per calibration method against budgeted INT8 (--max-drop), selected on
one split, claimed on another.

    python benchmarks/budget.py                   # embedded demo detector; select on 'train', claim on 'val'
    python benchmarks/budget.py -m ../shared/weights/yolov5n.pt \
        --yaml ../shared/data/coco-tune/coco-tune.yaml --split val \
        --val-yaml ../shared/data/coco-val-dev/coco-val-dev.yaml -n 128 --max-drop 0.3 --select-images 0

Calibration and every selection step read --yaml:--split only; the claim figures come from
--val-yaml:--val-split, which no step selects on. Printed per model: the claim metric, its drop,
the INT8 share of conv FLOPs, and ONNX Runtime CPU latency as a ratio to FP32 timed in the same run.
Every method of --methods is quantized in full; the budget runs on the last one (default: max, then
search, the per-quantizer calibration choice).
(QAT figures come from benchmarks/qat.py.)
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")
sys.path.insert(0, str(Path(__file__).parent))

from ptq import add_model_and_data, default_to_demo, print_table  # noqa: E402

from orinflow.data import load_dataset  # noqa: E402
from orinflow.evaluate import EvalOptions  # noqa: E402
from orinflow.evaluate.latency import cpu_name, interleaved_latency  # noqa: E402
from orinflow.io import write_json  # noqa: E402
from orinflow.models import load_model  # noqa: E402
from orinflow.optimize.quantize.ptq import QuantizeSpec  # noqa: E402
from orinflow.optimize.quantize.route import run_ptq  # noqa: E402
from orinflow.optimize.quantize.sensitivity import BudgetSpec, SensitivityOptions  # noqa: E402
from orinflow.runtime import OrtRunner  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data(parser, "calibration and selection", "claim")
    parser.add_argument("--methods", "--method", default="max,search",
                        help="comma-separated; each quantized in full, the budget on the last")
    parser.add_argument("--target", default="tensorrt")
    parser.add_argument("--max-drop", type=float, default=0.3)
    parser.add_argument("--max-fallback", type=float, default=0.10)
    parser.add_argument("--max-steps", type=int, default=12)
    parser.add_argument("--select-images", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.batch = 1

    workdir = Path(tempfile.mkdtemp(prefix="orinflow-bench-budget-"))
    default_to_demo(args, workdir)
    model = load_model(args.model, imgsz=args.imgsz)
    options = EvalOptions(measure_latency=False, batch=8, threads=args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    spec = QuantizeSpec(method=methods[-1], target=args.target)
    common = (args.yaml, args.split, args.val_yaml or args.yaml, args.val_split)
    full = run_ptq(model, *common, workdir / "full", methods, [args.target], spec, args.num_images, options,
                   say=lambda m: None)
    budget = (BudgetSpec(args.max_drop, args.max_fallback, args.max_steps), load_dataset(args.yaml, args.split),
              SensitivityOptions(select_images=args.select_images, threads=args.threads))
    budgeted = run_ptq(load_model(full["fp32"]["model"]), *common, workdir / "budget", [methods[-1]], [args.target],
                       spec, args.num_images, options, say=lambda m: None, budget=budget)
    records = [full["fp32"], *full["variants"], budgeted["variants"][0]]
    for record in records:  # the two quantized files share a name: label each by its folder
        record["label"] = f"{Path(record['model']).parent.name}_{Path(record['model']).name}"
    runners = {r["label"]: OrtRunner(r["model"], args.threads) for r in records}
    shape = (1, 3, *load_model(records[0]["model"]).processing.imgsz)
    latency = {1: interleaved_latency(runners, shape, args.rounds)}
    print(f"CPU: {cpu_name()} ({platform.machine()}), {args.threads} threads")
    print_table([dict(r, model=r["label"]) for r in records], latency, args)
    b = budgeted["variants"][0]["budget"]
    print(f"selection ({b['select_data']}, {b['select_images']} images): FP32 {b['fp32']:.4f}, full INT8 "
          f"{b['full_int8']:.4f}, budgeted {b['final']:.4f} (drop {b['drop_points']:.2f} points, budget "
          f"{b['max_drop']:.2f} {'met' if b['met'] else 'NOT met'}); INT8 FLOP share full "
          f"{full['variants'][-1]['qdq_report']['quantized_flop_share']:.1%}, budgeted {b['int8_flop_share']:.1%}; "
          f"fallback: {', '.join(b['fallback']) or 'none'}")
    if args.json:
        write_json(args.json, {"full": full, "budgeted": budgeted, "latency": latency, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
