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


def build_calibration(processing: Processing, dataset: Dataset, num_images: int = 512, seed: int = 0,
                      label: str = "calibration images") -> np.ndarray:
    images = select_images(dataset, num_images, seed)
    batch = np.empty((len(images), 3, *processing.imgsz), np.float32)
    for i, path in enumerate(progress(images, label)):
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
    if not np.issubdtype(array.dtype, np.floating):
        raise OrinflowError(f"calibration set {path} holds {array.dtype} values, not the model's float input "
                            "(raw pixels?); rebuild it with `orinflow calibrate -m <model>`")
    values = np.asarray(array, dtype=np.float32)
    check_input_range(values, processing, f"calibration set {path}")
    check_recorded_preprocessing(Path(path), processing)
    return values


PREPROCESSING_FIELDS = ("task", "imgsz", "resize", "channels", "mean", "std", "crop_fraction")


def check_recorded_preprocessing(path: Path, processing: Processing) -> None:
    """A set whose calibrate record names another preprocessing than the model's is refused (values can lie in
    range and still be wrong: 0..1 pixels for a 0..255 model, RGB for BGR)."""
    import json

    from ..io import record_path

    record = record_path(path)
    try:
        made = json.loads(record.read_text()) if record.is_file() else {}
    except (OSError, ValueError):
        return
    if made.get("command") != "calibrate" or "processing" not in made:
        return
    recorded = Processing.from_json(made["processing"])
    differs = [f for f in PREPROCESSING_FIELDS if getattr(recorded, f) != getattr(processing, f)]
    if differs:
        raise OrinflowError(f"calibration set {path} was made with another preprocessing than the model's "
                            f"({', '.join(differs)} differ); rebuild it with `orinflow calibrate -m <model>`")


def check_input_range(values: np.ndarray, processing: Processing, what: str, tolerance: float = 0.02) -> None:
    """Refuse (N,3,H,W) inputs outside what the model's preprocessing produces (wrong scale or normalisation)."""
    if not np.isfinite(values).all():
        raise OrinflowError(f"{what} holds NaN or infinite values")
    low, high = processing.input_range()
    margin = tolerance * (high - low)
    seen_low, seen_high = values.min(axis=(0, 2, 3)), values.max(axis=(0, 2, 3))
    if (seen_low < low - margin).any() or (seen_high > high + margin).any():
        raise OrinflowError(f"{what} spans {seen_low.min():.3g}..{seen_high.max():.3g}, outside the model's input "
                            f"range {low.min():.3g}..{high.max():.3g}; rebuild it with `orinflow calibrate -m <model>`")
