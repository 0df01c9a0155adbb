"""Dataset readers: Ultralytics dataset YAMLs (boxes, polygons, keypoints), class-per-subfolder trees, plain image
folders."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from ..config import IMAGE_SUFFIXES
from ..errors import OrinflowError
from .coco_json import load_coco_json
from .dataset import Dataset
from .label_rows import row_values
from .pose_labels import pose_config, read_pose_labels

__all__ = ["Dataset", "load_coco_json", "load_dataset", "draw_images", "read_image", "list_images"]


def draw_images(dataset: Dataset, count: int, seed: int) -> Dataset:
    """A seeded draw of `count` images (all when 0 or more than there are), labels kept."""
    if not count or count >= len(dataset):
        return dataset
    chosen = sorted(np.random.default_rng(seed).choice(len(dataset), count, replace=False).tolist())
    return dataset.subset(chosen, f"{dataset.name}[{count}]")


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 HWC; a clear error for unreadable files."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OrinflowError(f"cannot read image {path} (missing, unreadable or not an image)")
    return image


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_dataset(spec: str | Path, split: str = "val") -> Dataset:
    """A dataset YAML (with `split`), a class-per-subfolder tree, or a folder of images."""
    path = Path(spec)
    if not path.exists():
        raise OrinflowError(f"data not found: {path}")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _from_yaml(path, split)
    if path.is_dir():
        return _from_folder(path)
    raise OrinflowError(f"data must be a dataset YAML or a folder: {path}")


def _from_yaml(path: Path, split: str) -> Dataset:
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise OrinflowError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(cfg, dict) or split not in cfg:
        keys = ", ".join(k for k in ("train", "val", "test") if isinstance(cfg, dict) and k in cfg) or "none"
        raise OrinflowError(f"{path} has no '{split}' split (splits present: {keys})")
    # Ultralytics' rule: `path:` relative to the YAML's folder; without it, the YAML's folder itself.
    root = (path.parent / cfg.get("path", "")).resolve()
    entries = cfg[split] if isinstance(cfg[split], list) else [cfg[split]]
    images = []
    for entry in entries:
        images += _images_of(root / entry, path)
    if not images:
        raise OrinflowError(f"{path}: split '{split}' holds no images")
    names = _class_names(cfg.get("names") or {}, path)
    if (root / entries[0]).is_dir() and _is_class_tree(root / entries[0]):
        return _from_folder(root / entries[0])
    if "kpt_shape" in cfg:  # a pose set: every row ends in keypoints
        kpt_shape, flip_idx, sigmas = pose_config(cfg, path)
        read = [read_pose_labels(_label_path(p), kpt_shape, names) for p in images]
        return Dataset(f"{path.stem}:{split}", images, "pose", [rows for rows, _ in read], names,
                       keypoints=[points for _, points in read], kpt_shape=kpt_shape, flip_idx=flip_idx,
                       kpt_sigmas=sigmas)
    read = [_read_labels(_label_path(p), p, names) for p in images]
    labels, segments = [rows for rows, _ in read], [polygons for _, polygons in read]
    polygons = [p for found in segments for p in found]
    if polygons and all(p is not None for p in polygons):  # every object outlined: a segmentation set
        return Dataset(f"{path.stem}:{split}", images, "segment", labels, names, segments=segments)
    return Dataset(f"{path.stem}:{split}", images, "detect", labels, names)


def _class_names(names, path: Path) -> dict[int, str]:
    if isinstance(names, list):
        return dict(enumerate(names))
    try:
        return {int(k): v for k, v in dict(names).items()}
    except (TypeError, ValueError):
        raise OrinflowError(f"{path}: 'names' must be a list or a mapping of class id to name") from None


def _images_of(target: Path, yaml_path: Path) -> list[Path]:
    if target.is_dir():
        return list_images(target)
    if target.suffix == ".txt" and target.is_file():  # a list of image paths, relative to the list's folder
        lines = [ln.strip() for ln in target.read_text().splitlines() if ln.strip()]
        return [(target.parent / ln).resolve() for ln in lines]
    raise OrinflowError(f"{yaml_path}: path in YAML does not exist: {target}")


def _label_path(image: Path) -> Path:
    """Ultralytics convention: .../images/x.jpg -> .../labels/x.txt (last 'images' component)."""
    parts = list(image.parts)
    idx = len(parts) - 1 - parts[::-1].index("images") if "images" in parts else None
    if idx is None:
        return image.with_suffix(".txt")
    parts[idx] = "labels"
    return Path(*parts).with_suffix(".txt")


def _read_labels(path: Path, image: Path, names: dict[int, str]) -> tuple[np.ndarray, list]:
    """(n, 5) class, cx, cy, w, h from a YOLO txt file, and each row's polygon ((k, 2) normalised x, y; None for
    a box row). A polygon row (segment label) gives its box."""
    if not path.exists():
        return np.zeros((0, 5), np.float32), []  # no label file: an image with no objects
    rows, polygons = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            row, polygon = _label_row(line, path, number, names)
            rows.append(row)
            polygons.append(polygon)
    return np.asarray(rows, np.float32).reshape(-1, 5), polygons


def _label_row(line: str, path: Path, number: int, names: dict[int, str]) -> tuple[list[float], np.ndarray | None]:
    where = f"bad label file {path}, line {number}"
    values = row_values(line, where, names)
    if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
        raise OrinflowError(f"{where}: {len(values)} columns; a YOLO label is "
                            "'class cx cy w h' (5 columns) or 'class x1 y1 x2 y2 x3 y3 ...' (a polygon of 3 or more "
                            "points)")
    if any(v < -0.01 or v > 1.01 for v in values[1:]):
        raise OrinflowError(f"{where}: coordinates must be normalised to 0..1: {line.strip()[:60]!r}")
    cls = values[0]
    if len(values) == 5:
        return values, None
    xs, ys = values[1::2], values[2::2]  # a polygon: its bounding box
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [cls, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], np.asarray(values[1:], np.float32).reshape(-1, 2)


def _is_class_tree(folder: Path) -> bool:
    subdirs = [d for d in folder.iterdir() if d.is_dir()]
    return bool(subdirs) and all(any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir()) for d in subdirs)


def _from_folder(folder: Path) -> Dataset:
    if _is_class_tree(folder):
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
        images, labels = [], []
        for idx, name in enumerate(classes):
            found = list_images(folder / name)
            images += found
            labels += [idx] * len(found)
        return Dataset(folder.name, images, "classify", labels, dict(enumerate(classes)))
    images = list_images(folder)
    if not images:
        raise OrinflowError(f"no images found in {folder}")
    return Dataset(folder.name, images)
