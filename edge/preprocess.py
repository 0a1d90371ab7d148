"""ROI crop and resize shared by training (host) and inference (device).

One function for both sides so the pixels the model sees in the clinic are the pixels it was
trained on. Model input is raw uint8 RGB (H, W, 3); scaling lives inside the graph.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any decoded frame (gray, gray+alpha, BGR, BGRA, uint16) -> uint8 RGB (H, W, 3)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        lo, hi = float(img.min()), float(img.max())
        img = np.rint((img - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(img)).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise ValueError(f"unsupported image shape {img.shape}")


def crop_roi(image_rgb: np.ndarray, roi: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Crop ROI (x, y, w, h, pixels of `image_rgb`), keep grayscale content as 3 equal channels,
    resize to (size, size) with area interpolation. Returns uint8 (size, size, 3), C-contiguous.

    Ultrasound B-mode is grayscale; colour UI overlays (Doppler boxes, markers) inside the ROI are
    folded to luminance so host and device agree whatever the cart's palette.
    """
    x, y, w, h = (int(v) for v in roi)
    H, W = image_rgb.shape[:2]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise ValueError(f"ROI {x},{y},{w},{h} is empty or outside the {W}x{H} image")
    patch = image_rgb[y : y + h, x : x + w]
    gray = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY) if patch.ndim == 3 else patch
    interp = cv2.INTER_AREA if (w > size or h > size) else cv2.INTER_LINEAR
    gray = cv2.resize(gray, (size, size), interpolation=interp)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
