"""Independent reference for the pixels the model sees: crop, luminance and resize written in plain numpy.

The tests compare edge.preprocess.crop_roi (OpenCV) with these, so a shared bug cannot cancel out on the
"device = host" side. OpenCV rounds through fixed-point arithmetic: compare with a tolerance of 1 grey level.
"""

from __future__ import annotations

import numpy as np


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB image (R 0.299, G 0.587, B 0.114), float64."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): output pixel i averages the source interval [i·s, (i+1)·s), s = n_in / n_out,
    each source pixel weighted by its overlap with that interval."""
    s = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * s, (i + 1) * s
        for j in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
            w[i, j] = (min(hi, j + 1) - max(lo, j)) / s
    return w


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): bilinear with half-pixel centres, edges clamped (what OpenCV's INTER_LINEAR does)."""
    s = n_in / n_out
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        f = (i + 0.5) * s - 0.5
        j = int(np.floor(f))
        a = f - j
        if j < 0:
            j, a = 0, 0.0
        if j >= n_in - 1:
            j, a = n_in - 1, 0.0
        w[i, j] += 1 - a
        if a:
            w[i, j + 1] += a
    return w


def resize_gray(gray: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Area average when shrinking (both axes), bilinear when enlarging (both axes); float64."""
    h, w = gray.shape
    if w >= out_w and h >= out_h:
        wy, wx = _area_weights(h, out_h), _area_weights(w, out_w)
    elif w <= out_w and h <= out_h:
        wy, wx = _linear_weights(h, out_h), _linear_weights(w, out_w)
    else:
        raise ValueError("reference resize: shrink or enlarge both axes")
    return wy @ np.asarray(gray, np.float64) @ wx.T


def expected_model_input(frame_rgb: np.ndarray, roi, size: int) -> np.ndarray:
    """The model input for `roi` = (x, y, w, h) of `frame_rgb`: rows y..y+h, columns x..x+w, folded to
    luma, resized to size×size, the same value on 3 channels; uint8."""
    x, y, w, h = (int(v) for v in roi)
    patch = np.asarray(frame_rgb)[y:y + h, x:x + w]
    gray = luminance(patch) if patch.ndim == 3 else patch.astype(np.float64)
    out = np.clip(np.rint(resize_gray(gray, size, size)), 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def assert_close_pixels(actual: np.ndarray, expected: np.ndarray, tol: int = 1) -> None:
    """Same shape, every pixel within `tol` grey levels (OpenCV's fixed-point rounding)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    assert diff.max() <= tol, f"pixel {worst} differs by {diff.max()} (> {tol}) from the reference"
