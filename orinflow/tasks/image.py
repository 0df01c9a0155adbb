"""Images into network inputs and back: letterbox, stretch, centre crop, and the map from input pixels to the
original image. Every task's preprocessing is built from these."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..config import LETTERBOX_PAD


@dataclass
class ImageMeta:
    """How an image was mapped into the network input, to map boxes back."""

    original_hw: tuple[int, int]
    scale: float = 1.0
    pad: tuple[float, float] = (0.0, 0.0)  # left, top
    scale_y: float | None = None  # a stretched image's vertical scale (None: `scale`, aspect kept)


def letterbox(image_bgr: np.ndarray, imgsz: tuple[int, int]) -> tuple[np.ndarray, ImageMeta]:
    """The YOLO convention: letterboxed, RGB, 0..1 (float32 CHW)."""
    padded, meta = letterbox_image(image_bgr, imgsz)
    return to_input(padded, "rgb", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), meta


def letterbox_image(image_bgr: np.ndarray, imgsz: tuple[int, int]) -> tuple[np.ndarray, ImageMeta]:
    """Resize keeping aspect (area interpolation when shrinking), pad centred with grey 114 (uint8 HWC)."""
    h0, w0 = image_bgr.shape[:2]
    scale = min(imgsz[0] / h0, imgsz[1] / w0)
    h, w = round(h0 * scale), round(w0 * scale)
    image_bgr = resize_image(image_bgr, h, w, scale)
    top, left = (imgsz[0] - h) / 2, (imgsz[1] - w) / 2
    t, b = round(top - 0.1), round(top + 0.1)
    l, r = round(left - 0.1), round(left + 0.1)
    padded = cv2.copyMakeBorder(image_bgr, t, b, l, r, cv2.BORDER_CONSTANT, value=(LETTERBOX_PAD,) * 3)
    return padded, ImageMeta((h0, w0), scale, (float(l), float(t)))


def stretch_image(image_bgr: np.ndarray, imgsz: tuple[int, int]) -> tuple[np.ndarray, ImageMeta]:
    """Resize to exactly imgsz, aspect not kept (detectors trained that way, such as SSD-style exports)."""
    h0, w0 = image_bgr.shape[:2]
    scale_x, scale_y = imgsz[1] / w0, imgsz[0] / h0
    return resize_image(image_bgr, imgsz[0], imgsz[1], min(scale_x, scale_y)), ImageMeta((h0, w0), scale_x, (0.0, 0.0),
                                                                                   scale_y)


def centre_crop_image(image_bgr, imgsz, crop_fraction) -> tuple[np.ndarray, ImageMeta]:
    """Resize the short side to imgsz/crop_fraction, centre-crop imgsz (uint8 HWC)."""
    h0, w0 = image_bgr.shape[:2]
    short = round(min(imgsz) / crop_fraction)
    scale = short / min(h0, w0)
    h, w = max(imgsz[0], round(h0 * scale)), max(imgsz[1], round(w0 * scale))
    image_bgr = resize_image(image_bgr, h, w, scale)
    top, left = (h - imgsz[0]) // 2, (w - imgsz[1]) // 2
    return image_bgr[top:top + imgsz[0], left:left + imgsz[1]], ImageMeta((h0, w0), scale, (float(left), float(top)))


def classify_transform(image_bgr, imgsz, crop_fraction, mean, std) -> tuple[np.ndarray, ImageMeta]:
    """Centre crop, RGB, normalised with mean/std (float32 CHW)."""
    cropped, meta = centre_crop_image(image_bgr, imgsz, crop_fraction)
    return to_input(cropped, "rgb", mean, std), meta


def resize_image(image: np.ndarray, h: int, w: int, scale: float) -> np.ndarray:
    if (h, w) == image.shape[:2]:
        return image
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def to_input(image_bgr: np.ndarray, channels: str, mean, std) -> np.ndarray:
    """uint8 HWC BGR -> float32 CHW in `channels` order, (pixel/255 - mean) / std (mean/std in that order)."""
    pixels = image_bgr if channels == "bgr" else image_bgr[:, :, ::-1]
    values = pixels.astype(np.float32) / 255.0
    if tuple(mean) != (0.0, 0.0, 0.0) or tuple(std) != (1.0, 1.0, 1.0):
        values = (values - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(values.transpose(2, 0, 1))


def unletterbox(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Network-input xyxy -> original-image xyxy, clipped to the image."""
    return to_image_pixels(boxes.reshape(-1, 2), meta).reshape(-1, 4)


def to_image_pixels(points: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Network-input xy points (n, 2) -> original-image pixels, clipped to the image."""
    points = points.copy()
    h, w = meta.original_hw
    points[:, 0] = ((points[:, 0] - meta.pad[0]) / meta.scale).clip(0, w)
    points[:, 1] = ((points[:, 1] - meta.pad[1]) / (meta.scale_y or meta.scale)).clip(0, h)
    return points


def to_input_pixels(points: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Original-image xy points (n, 2) -> network-input pixels (the inverse of `unletterbox`, unclipped)."""
    points = np.asarray(points, np.float32).copy()
    points[:, 0] = points[:, 0] * meta.scale + meta.pad[0]
    points[:, 1] = points[:, 1] * (meta.scale_y or meta.scale) + meta.pad[1]
    return points
