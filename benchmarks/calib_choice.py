"""Under a budget, the calibration chosen by measurement (--method auto) against each finalist, claimed on
held-out data.

    python benchmarks/calib_choice.py -m ../shared/weights/yolov5n.pt --imgsz 640 \
        --calib-yaml ../shared/data/coco128/coco128.yaml --calib-split train -n 128 \
        --select-yaml ../shared/data/coco-tune/coco-tune.yaml --select-split val \
        --claim-yaml ../shared/data/coco-val-dev/coco-val-dev.yaml --max-drop 0.5

Calibration reads --calib-yaml, every choice reads --select-yaml only; the claim figures come from
--claim-yaml, which nothing selects on. Printed: each candidate's full-INT8 selection score, each finalist's
budget (selection) and claim, the method chosen, and the run's cost in seconds on this CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")

from orinflow.data import load_dataset  # noqa: E402
from orinflow.data.calibration import build_calibration  # noqa: E402
from orinflow.evaluate import EvalOptions, evaluate_model  # noqa: E402
from orinflow.evaluate.latency import cpu_name  # noqa: E402
from orinflow.export import export_onnx  # noqa: E402
from orinflow.models import OnnxModel, load_model  # noqa: E402
from orinflow.optimize.quantize.calib_choice import choose_calibration  # noqa: E402
from orinflow.optimize.quantize.ptq import QuantizeSpec  # noqa: E402
from orinflow.optimize.quantize.sensitivity import BudgetSpec, SensitivityOptions  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--imgsz", type=int)
    parser.add_argument("--arch")
    parser.add_argument("--calib-yaml", required=True)
    parser.add_argument("--calib-split", default="train")
    parser.add_argument("-n", "--num-images", type=int, default=128)
    parser.add_argument("--select-yaml", required=True)
    parser.add_argument("--select-split", default="val")
    parser.add_argument("--select-images", type=int, default=300)
    parser.add_argument("--claim-yaml", required=True)
    parser.add_argument("--claim-split", default="val")
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--methods", help="comma-separated candidates (default: all for the target)")
    parser.add_argument("--target", default="tensorrt")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="orinflow-bench-choice-"))
    model = load_model(args.model, arch=args.arch, imgsz=args.imgsz)
    fp32 = model if isinstance(model, OnnxModel) else load_model(export_onnx(model, work / "fp32.onnx").path)
    calib = build_calibration(fp32.processing, load_dataset(args.calib_yaml, args.calib_split), args.num_images)
    select = load_dataset(args.select_yaml, args.select_split)
    started = time.perf_counter()
    made = choose_calibration(fp32, calib, QuantizeSpec(method="auto", target=args.target), select,
                              BudgetSpec(args.max_drop), work / "chosen.onnx",
                              SensitivityOptions(select_images=args.select_images), say=print,
                              methods=args.methods.split(",") if args.methods else None, keep=work / "finalists")
    seconds = time.perf_counter() - started
    choice = made["calibration_choice"]
    options = EvalOptions(measure_latency=False, int8_kernels="exact")
    key = choice["metric"]
    claim = {"fp32": evaluate_model(fp32, args.claim_yaml, args.claim_split, options)["metrics"][key]}
    for path in sorted((work / "finalists").glob("*.onnx")):
        claim[path.stem] = evaluate_model(load_model(path), args.claim_yaml, args.claim_split, options)["metrics"][key]
    print(f"\n{Path(args.model).name}: {key}, budget {args.max_drop} points, chosen {choice['chosen']} "
          f"({choice['why']}); {seconds:.0f} s on {cpu_name()}")
    print(f"FP32: selection {choice['fp32']:.4f}, claim {claim['fp32']:.4f}")
    for row in choice["candidates"]:
        print(f"  {row['method']:>10}: full INT8 selection {row['full_int8']:.4f} ({-row['drop_points']:+.2f})")
    for row in choice["finalists"]:
        got = claim[row["method"]]
        print(f"  finalist {row['method']:>10}: selection {row['final']:.4f} ({-row['drop_points']:+.2f}), "
              f"{'met' if row['met'] else 'NOT met'}, {len(row['fallback'])} group(s) in float, INT8 FLOPs "
              f"{row['int8_flop_share']:.1%}; claim {got:.4f} ({(got - claim['fp32']) * 100:+.2f})")
    if args.json:
        args.json.write_text(json.dumps({"choice": choice, "claim": claim, "seconds": seconds, "cpu": cpu_name()},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
