"""The embedded demo dataset: coloured shapes on noisy backgrounds, made from a fixed seed.

The recipe is the dataset: the same seed gives the same pixels and labels on any machine,
so the repository ships only this file and the detector trained on its output.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

CLASS_NAMES = ("circle", "square", "triangle")
IMAGE_SIZE = 256
SPLITS = {"train": (600, 0), "val": (100, 1)}  # split -> (number of images, seed offset)
RECIPE_SEED = 2026


def _background(rng: np.random.Generator) -> Image.Image:
    """A smooth two-colour gradient plus pixel noise, so the detector cannot key on a flat colour."""
    a, b = rng.integers(0, 256, size=(2, 3))
    t = np.linspace(0.0, 1.0, IMAGE_SIZE)[:, None, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)
    img = a * (1 - t) + b * t + rng.normal(0, 12, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _shape_colour(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    """A colour far enough from the local background to be visible."""
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        if np.abs(colour - background).sum() > 150:
            break
    return tuple(int(c) for c in colour)


def _draw_shape(draw: ImageDraw.ImageDraw, cls: int, box: tuple[float, float, float, float], colour) -> None:
    x0, y0, x1, y1 = box
    if cls == 0:
        draw.ellipse(box, fill=colour)
    elif cls == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _overlaps(box, boxes, limit=0.3) -> bool:
    for other in boxes:
        ix = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
        iy = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
        smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
        if ix * iy > limit * smaller:
            return True
    return False


def make_image(rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    """One image and its YOLO labels (class, cx, cy, w, h normalised)."""
    img = _background(rng)
    pixels = np.asarray(img).astype(int)
    draw = ImageDraw.Draw(img)
    boxes, labels = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(10):
            w = float(rng.uniform(24, 96))
            h = w * float(rng.uniform(0.7, 1.3))
            x0 = float(rng.uniform(0, IMAGE_SIZE - w))
            y0 = float(rng.uniform(0, IMAGE_SIZE - min(h, IMAGE_SIZE - 1)))
            box = (x0, y0, x0 + w, min(y0 + h, IMAGE_SIZE - 1.0))
            if not _overlaps(box, boxes):
                break
        else:
            continue
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        centre = pixels[int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2)]
        _draw_shape(draw, cls, box, _shape_colour(rng, centre))
        boxes.append(box)
        cx, cy = (box[0] + box[2]) / 2 / IMAGE_SIZE, (box[1] + box[3]) / 2 / IMAGE_SIZE
        labels.append((cls, cx, cy, (box[2] - box[0]) / IMAGE_SIZE, (box[3] - box[1]) / IMAGE_SIZE))
    return img, labels


def generate(root: str | Path, splits: dict[str, tuple[int, int]] | None = None) -> Path:
    """Write images/<split>, labels/<split> and shapes.yaml under `root`; return the YAML path.

    Skips the work when the YAML already exists with the same recipe, so the demo stays fast.
    """
    root = Path(root)
    splits = splits or SPLITS
    yaml_path = root / "shapes.yaml"
    recipe = {"seed": RECIPE_SEED, "imgsz": IMAGE_SIZE, "splits": {k: list(v) for k, v in splits.items()}}
    if yaml_path.exists() and yaml.safe_load(yaml_path.read_text()).get("recipe") == recipe:
        return yaml_path
    for split, (count, offset) in splits.items():
        rng = np.random.default_rng([RECIPE_SEED, offset])
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, labels = make_image(rng)
            img.save(root / "images" / split / f"{split}_{i:04d}.jpg", quality=92)
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}" for c, x, y, w, h in labels]
            (root / "labels" / split / f"{split}_{i:04d}.txt").write_text("\n".join(lines) + "\n")
    data = {
        "path": str(root.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(CLASS_NAMES)),
        "recipe": recipe,
    }
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path
