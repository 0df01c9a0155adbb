"""Route 5 benchmark: FLOPs / accuracy / latency curve of `orinflow prune`, with and without distillation.

    python benchmarks/prune.py                      # the embedded demo detector on its generated data (minutes)
    python benchmarks/prune.py -m ../shared/weights/yolov5n.pt --data ../shared/data/coco-tune/coco-tune.yaml \
        --val-data ../shared/data/coco-val-dev/coco-val-dev.yaml --epochs 1 --batch 8

Each target is pruned twice from the same model with the same fine-tuning budget: distillation from
the unpruned model, and the family's label loss alone. Every model is exported to ONNX and evaluated on
the held-out data; all of them are then timed on ONNX Runtime CPU batch 1 in turn (interleaved), so the
latency ratios come from one run on one machine. Fine-tune and select on tuning data only.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("ORINFLOW_QUIET", "1")

import orinflow  # noqa: E402
from orinflow.evaluate import EvalOptions, evaluate_model  # noqa: E402
from orinflow.evaluate.latency import cpu_name, interleaved_latency  # noqa: E402
from orinflow.io import write_json  # noqa: E402
from orinflow.models import load_model  # noqa: E402
from orinflow.runtime import OrtRunner  # noqa: E402

DEMO_MODEL = Path(orinflow.__file__).parent / "demo" / "assets" / "shapes_yolov8p.pt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--model", default=str(DEMO_MODEL))
    parser.add_argument("--imgsz", type=int)
    parser.add_argument("--data", help="fine-tuning data (default: the demo's generated shapes, split train)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--val-data", help="held-out data the figures are claimed on (default: --data)")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--targets", default="0.9,0.8,0.7,0.6", help="FLOP shares to keep")
    parser.add_argument("--round-to", type=int, help="channel multiple (default: orinflow prune's)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="orinflow-bench-prune-"))
    data = args.data
    imgsz = args.imgsz
    if data is None:
        from orinflow.demo import shapes

        data, imgsz = str(shapes.generate(work / "shapes")), imgsz or shapes.IMAGE_SIZE
    val_data = args.val_data or data
    rounding = {} if args.round_to is None else {"round_to": args.round_to}
    options = EvalOptions(measure_latency=False, batch=8)
    original = orinflow.export(args.model, imgsz=imgsz, output=work / "original.onnx")["model"]
    rows = [{"name": "original", "onnx": original, "flops_share": 1.0, "params": None,
             "record": evaluate_model(load_model(original), val_data, args.val_split, options)}]
    for target in [float(t) for t in args.targets.split(",")]:
        for distill in (True, False):
            name = f"{target:.2f}_{'distill' if distill else 'labels'}"
            made = orinflow.prune(args.model, data, split=args.split, flops=target, **rounding,
                                  epochs=args.epochs, max_steps=args.max_steps, batch=args.batch, lr=args.lr,
                                  distill=distill, labels=not distill, imgsz=imgsz, runs=0,
                                  output=work / f"{name}.pt", say=lambda *_: None)
            onnx = orinflow.export(made["model"], imgsz=imgsz, output=work / f"{name}.onnx")["model"]
            rows.append({"name": name, "onnx": onnx, "flops_share": made["flops_share"],
                         "params": made["after"]["params"] / made["before"]["params"],
                         "record": evaluate_model(load_model(onnx), val_data, args.val_split, options)})
            print(f"{name}: done", flush=True)
    shape = (1, 3, *rows[0]["record"]["imgsz"])
    latency = interleaved_latency({row["name"]: OrtRunner(row["onnx"]) for row in rows}, shape, rounds=args.runs)
    metric = "mAP50-95" if rows[0]["record"]["task"] == "detect" else "top1"
    base_score, base_ms = rows[0]["record"]["metrics"][metric], latency["original"]["median"]
    print(f"\n{args.model} on {val_data} ({args.val_split}); ONNX Runtime CPU batch 1 on {cpu_name()}, "
          f"{args.runs} interleaved runs each")
    print(f"| model | FLOP share | params share | {metric} | change (points) | ms | latency ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        score = row["record"]["metrics"][metric]
        ms = latency[row["name"]]["median"]
        params = "1.000" if row["params"] is None else f"{row['params']:.3f}"
        print(f"| {row['name']} | {row['flops_share']:.3f} | {params} | {score:.4f} | "
              f"{100 * (score - base_score):+.2f} | {ms:.2f} | {ms / base_ms:.3f} |")
    if args.json:
        write_json(args.json, {"rows": rows, "latency_ms": latency, "cpu": cpu_name()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
