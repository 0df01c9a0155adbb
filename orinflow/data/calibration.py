"""Calibration sets: images preprocessed exactly as the model sees them, saved as (N,3,H,W) float32."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OrinflowError
from ..io import atomic_path
from ..models.processing import Processing
from ..progress import progress
from . import Dataset, read_image


def select_images(dataset: Dataset, num_images: int, seed: int) -> list[Path]:
    """A seeded random subset (all images when fewer are available)."""
    if num_images <= 0:
        raise OrinflowError("--num-images must be positive")
    order = np.random.default_rng(seed).permutation(len(dataset))[:num_images]
    return [dataset.images[i] for i in sorted(order)]


def build_calibration(processing: Processing, dataset: Dataset, num_images: int = 512, seed: int = 0) -> np.ndarray:
    images = select_images(dataset, num_images, seed)
    batch = np.empty((len(images), 3, *processing.imgsz), np.float32)
    for i, path in enumerate(progress(images, "calibration images")):
        batch[i] = processing.preprocess(read_image(path))[0]
    return batch


def save_calibration(array: np.ndarray, output: Path) -> Path:
    if output.suffix != ".npy":
        raise OrinflowError(f"calibration output must end in .npy: {output}")
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return output


def load_calibration(path: Path, processing: Processing) -> np.ndarray:
    """Load and check that the set fits the model's input (N,3,H,W)."""
    if not Path(path).is_file():
        raise OrinflowError(f"calibration file not found: {path}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as e:
        raise OrinflowError(f"{path} is not a .npy calibration array ({e})") from e
    expected = (3, *processing.imgsz)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise OrinflowError(f"calibration set {path} has shape {tuple(array.shape)}, but the model takes "
                            f"(N, {', '.join(map(str, expected))}); rebuild it with `orinflow calibrate -m <model>`")
    if array.shape[0] == 0:
        raise OrinflowError(f"calibration set {path} is empty")
    return np.asarray(array, dtype=np.float32)
