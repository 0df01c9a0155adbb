"""Recipe for the embedded demo detector: a small YOLOv8-style model trained on the shapes set.

Run once (a GPU makes it a few minutes; 2 CPU cores take hours) and commit the result:

    python -m orinflow.demo.train_detector --device 0 --out orinflow/demo/assets/shapes_yolov8p.pt

The architecture is Ultralytics' own yolov8.yaml with three classes and a narrower width
("p", for pico: depth 0.33, width 0.125), so the shipped checkpoint stays near 1.5 MB.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import yaml  # noqa: E402

from orinflow.demo import shapes  # noqa: E402
from orinflow.io import private_folder  # noqa: E402

PICO_SCALE = [0.33, 0.125, 1024]  # depth, width, max channels


def model_yaml(path: Path) -> Path:
    """Write the demo architecture: yolov8.yaml, three classes, pico scale."""
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8.yaml")
    cfg.update(nc=len(shapes.CLASS_NAMES), scales={"p": PICO_SCALE}, scale="p")
    cfg.pop("yaml_file", None)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(out: Path, device: str, epochs: int, batch: int, workers: int, hours: float | None = None) -> Path:
    from ultralytics import YOLO

    with private_folder("orinflow-demo-train-") as work:
        data_yaml = shapes.generate(work / "shapes")
        model = YOLO(str(model_yaml(work / "shapes-yolov8p.yaml")))
        model.train(
            data=str(data_yaml), epochs=epochs, imgsz=shapes.IMAGE_SIZE, batch=batch, device=device,
            workers=workers, time=hours, seed=0, deterministic=True, amp=False, plots=False,
            project=str(work / "runs"), name="train", exist_ok=True, verbose=False,
        )
        best = work / "runs" / "train" / "weights" / "best.pt"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(best, out)
        metrics = YOLO(str(out)).val(data=str(data_yaml), imgsz=shapes.IMAGE_SIZE, batch=32, device=device, plots=False)
        print(f"held-out val: mAP50 {metrics.box.map50:.3f}  mAP50-95 {metrics.box.map:.3f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "assets" / "shapes_yolov8p.pt")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--hours", type=float, default=None, help="wall-clock budget; overrides --epochs")
    args = parser.parse_args()
    train(args.out, args.device, args.epochs, args.batch, args.workers, args.hours)


if __name__ == "__main__":
    main()
