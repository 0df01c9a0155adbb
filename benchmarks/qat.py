"""Route 2 benchmark: FP32 vs PTQ (best of entropy/max/percentile, tensorrt target) vs QAT INT8.

    python benchmarks/qat.py -m ../shared/weights/resnet20-cifar10.th --arch tests/assets/resnet_cifar.py:resnet20 \
        --imgsz 32 --data ../shared/data/cifar10-test-dev --halves --epochs 3
    python benchmarks/qat.py -m ../shared/weights/yolov5n.pt --data ../shared/data/coco128/coco128.yaml \
        --split val --val-data ../shared/data/coco-val-dev/coco-val-dev.yaml --epochs 2 --batch 8

--halves trains/calibrates on the even-numbered images and evaluates on the odd-numbered
ones, for data sets that have no separate training split. Accuracy only; every figure
comes from this one run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")

from orinflow.data import Dataset, load_dataset  # noqa: E402
from orinflow.data.calibration import build_calibration  # noqa: E402
from orinflow.evaluate import EvalOptions, evaluate_model, headline  # noqa: E402
from orinflow.export import export_onnx  # noqa: E402
from orinflow.io import write_json  # noqa: E402
from orinflow.models import load_model  # noqa: E402
from orinflow.optimize.quantize.ptq import QuantizeSpec, quantize_onnx  # noqa: E402
from orinflow.optimize.quantize.qat import run_qat  # noqa: E402
from orinflow.optimize.train.config import QATConfig  # noqa: E402


def subset(dataset: Dataset, parity: int) -> Dataset:
    keep = range(parity, len(dataset), 2)
    return Dataset(f"{dataset.name}[{parity}::2]", [dataset.images[i] for i in keep], dataset.task,
                   [dataset.labels[i] for i in keep] if dataset.labels else [], dataset.names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--arch")
    parser.add_argument("--imgsz", type=int)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--val-data")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--halves", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--calib-images", type=int, default=128)
    parser.add_argument("--labels", action="store_true", help="classifiers: add cross-entropy on the labels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="orinflow-bench-qat-"))
    adapter = load_model(args.model, arch=args.arch, imgsz=args.imgsz)
    train_set = load_dataset(args.data, args.split)
    eval_set = load_dataset(args.val_data, args.val_split) if args.val_data else train_set
    if args.halves:
        train_set, eval_set = subset(train_set, 0), subset(train_set, 1)
    options = EvalOptions(measure_latency=False, batch=8)
    fp32 = load_model(export_onnx(adapter, work / "fp32.onnx").path)
    rows = [("fp32", evaluate_model(fp32, eval_set, args.val_split, options))]
    calib = build_calibration(fp32.processing, train_set, args.calib_images)
    for method in ("entropy", "max", "percentile"):
        q = quantize_onnx(fp32, calib, replace(QuantizeSpec(), method=method), work / f"ptq_{method}.onnx")
        rows.append((f"ptq {method}", evaluate_model(load_model(q["model"]), eval_set, args.val_split, options)))
    started = time.perf_counter()
    config = QATConfig(epochs=args.epochs, lr=args.lr, batch=args.batch, calib_images=args.calib_images,
                       distill=True, labels=args.labels, device=args.device)
    # route 2 starts where route 1 ended: here the entropy model (quantize's default), scored on the training data
    qat = run_qat(adapter, train_set, config, work / "qat.onnx", work / "ptq_entropy.onnx", selection=train_set)
    seconds = time.perf_counter() - started
    rows.append((f"qat from ptq entropy ({args.epochs} ep, {seconds / 60:.1f} min, {args.device})",
                 evaluate_model(load_model(qat["model"]), eval_set, args.val_split, options)))
    base = headline(rows[0][1])
    print(f"\nQAT benchmark: {args.model} | train {train_set.name} ({len(train_set)}) | eval {eval_set.name} "
          f"({len(eval_set)})")
    for name, record in rows:
        figures = headline(record)
        print(f"{name:36} " + "  ".join(f"{k} {v:.4f} ({(v - base[k]) * 100:+.2f} pts)" for k, v in figures.items()))
    if args.json:
        write_json(args.json, {"rows": [{"name": n, "record": r} for n, r in rows], "qat": qat})
    return 0


if __name__ == "__main__":
    sys.exit(main())
