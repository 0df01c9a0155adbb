"""Route 3 benchmark: accuracy against the share of conv FLOPs made 2:4, FP32 and after INT8.

    python benchmarks/sparsity.py                   # the embedded demo detector on its generated data (minutes)
    python benchmarks/sparsity.py -m ../shared/weights/yolov5n.pt --yaml ../shared/data/coco-tune/coco-tune.yaml \
        --val-yaml ../shared/data/coco-val-dev/coco-val-dev.yaml -n 256 --shares 0.3,0.5,0.7,1 --epochs 0

For every share, `orinflow sparsify --sparse-flops SHARE` chooses the layers on the tuning data and
(with --epochs) fine-tunes there; the sparse ONNX is then quantized to INT8 (ModelOpt, TensorRT target,
calibrated on the tuning data) and both are evaluated on the held-out data. The dense model goes
through the same INT8 step, so each row's drop is read beside the dense model's, from one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")
sys.path.insert(0, str(Path(__file__).parent))

from ptq import add_model_and_data, default_to_demo  # noqa: E402

import orinflow  # noqa: E402
from orinflow.evaluate import EvalOptions, evaluate_model  # noqa: E402
from orinflow.io import write_json  # noqa: E402
from orinflow.models import load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_data(parser, "tuning (layer choice, fine-tuning, INT8 calibration)", "claim")
    parser.add_argument("--shares", default="0.3,0.5,0.7,1", help="shares of the conv FLOPs to make 2:4")
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--epochs", type=int, default=0)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--calib-images", type=int, default=64, help="images for SparseGPT's Hessians")
    parser.add_argument("--int8-method", default="max")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="orinflow-bench-sparsity-"))
    default_to_demo(args, work)
    data, imgsz, val_data = args.yaml, args.imgsz, args.val_yaml or args.yaml
    rows = []
    for share in [float(s) for s in args.shares.split(",")]:
        record = orinflow.sparsify(args.model, data, split=args.split, method=args.method, sparse_flops=share,
                                   epochs=args.epochs, max_steps=args.max_steps, batch=args.batch, lr=args.lr,
                                   calib_images=args.calib_images, imgsz=imgsz, val_data=val_data,
                                   val_split=args.val_split, output=work / f"sparse_{share}.onnx", say=lambda m: None)
        dense, sparse = record["compare"]  # evaluated on the held-out data; nothing is chosen on them
        if not rows:
            rows.append({"name": "dense", "share": 0.0, "fp32": dense["model"], "fp32_metric": dense["metrics"]})
        rows.append({"name": f"--sparse-flops {share}", "share": record["sparsity"]["sparse_flop_share"],
                     "fp32": record["model"], "fp32_metric": sparse["metrics"]})
    metric = "mAP50-95" if "mAP50-95" in rows[0]["fp32_metric"] else "top1"
    for row in rows:
        row["fp32_metric"] = row["fp32_metric"][metric]
        int8 = orinflow.quantize(row["fp32"], data=data, split=args.split, num_images=args.num_images,
                                 method=args.int8_method, output=work / f"{Path(row['fp32']).stem}_int8.onnx",
                                 say=lambda m: None)
        found = evaluate_model(load_model(int8["model"]), val_data, args.val_split, EvalOptions(measure_latency=False))
        row["int8_metric"] = found["metrics"][metric]
    base = rows[0]
    print(f"\n{metric} on {val_data} ({args.val_split}); layers chosen and INT8 calibrated on {data} ({args.split}); "
          f"{args.method}, {args.epochs} fine-tuning epoch(s)")
    print(f"{'model':<22} {'2:4 FLOP share':>14} {'FP32':>8} {'Δ':>7} {'INT8':>8} {'Δ vs dense FP32':>16}")
    for row in rows:
        print(f"{row['name']:<22} {row['share']:>14.1%} {row['fp32_metric']:>8.4f} "
              f"{row['fp32_metric'] - base['fp32_metric']:>+7.4f} {row['int8_metric']:>8.4f} "
              f"{row['int8_metric'] - base['fp32_metric']:>+16.4f}")
    if args.json:
        write_json(args.json, {"rows": rows, "metric": metric, "data": str(data), "val_data": str(val_data)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
