"""Recipe: a real-data pose model made the way a user makes one, from a COCO detector's weights.

    python benchmarks/pose_model.py --detector ../shared/weights/yolov8n.pt \
        --data ../shared/data/coco-tune-pose/coco-tune-pose.yaml --imgsz 320 --hours 0.75 --out runs/pose

Builds `yolov8n-pose.yaml` (17 keypoints, one class), loads every weight of the detector whose name and shape
match (backbone, neck, box branch), freezes the backbone (the first 10 modules) and trains the rest with
Ultralytics' own trainer for `--hours` of wall time on the CPU. Writes `<out>/yolov8n-pose.pt`.

Datasets whose images are stored as text files holding a relative path (git's form of a symbolic link when
links are not checked out) are first given a private folder of real links; the labels are copied beside them,
so Ultralytics' label cache never lands in the data folder.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

LINK_TEXT_LIMIT = 512  # a link stored as text is one short line


def linked_target(path: Path) -> Path | None:
    """The file a git link-as-text points to, or None when `path` is an ordinary file."""
    if path.stat().st_size > LINK_TEXT_LIMIT:
        return None
    try:
        text = path.read_text().strip()
    except UnicodeDecodeError:
        return None
    target = (path.parent / text).resolve()
    return target if "\n" not in text and target.is_file() else None


def materialize(yaml_path: Path, into: Path) -> Path:
    """A copy of the dataset at `yaml_path` under `into`: images as real links, labels copied; returns its YAML."""
    import yaml

    config = yaml.safe_load(yaml_path.read_text())
    root = yaml_path.parent
    into.mkdir(parents=True, exist_ok=True)
    for split in sorted({config["train"], config["val"]}):
        images = root / split
        for image in sorted(images.iterdir()):
            link = into / split / image.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(linked_target(image) or image.resolve())
        labels = Path(str(split).replace("images", "labels", 1))
        if (root / labels).is_dir() and not (into / labels).exists():
            shutil.copytree(root / labels, into / labels)
    config["path"] = str(into)
    out = into / yaml_path.name
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True, help="a COCO detector checkpoint (yolov8n.pt)")
    parser.add_argument("--data", required=True, help="a pose dataset YAML (kpt_shape, flip_idx)")
    parser.add_argument("--cfg", default="yolov8n-pose.yaml", help="the pose model's Ultralytics YAML")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--hours", type=float, default=0.75, help="wall-time budget of the training")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--freeze", type=int, default=10, help="modules kept at the detector's weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/pose")
    args = parser.parse_args(argv)

    from ultralytics import YOLO

    out = Path(args.out).resolve()
    data = materialize(Path(args.data).resolve(), out / "data")
    model = YOLO(args.cfg).load(args.detector)
    start = time.time()
    model.train(data=str(data), imgsz=args.imgsz, epochs=1000, time=args.hours, batch=args.batch, workers=0,
                device="cpu", plots=False, val=False, freeze=args.freeze, seed=args.seed, deterministic=True,
                project=str(out), name="train", exist_ok=True, verbose=False)
    last = out / "train" / "weights" / "last.pt"
    shutil.copyfile(last, out / "yolov8n-pose.pt")
    print(f"trained {time.time() - start:.0f} s on {args.imgsz} px -> {out / 'yolov8n-pose.pt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
