"""Training-time augmentation for B-mode ROIs: numpy + OpenCV, seeded per (seed, fold, epoch, batch).

What varies between real scans, and so what the model should not rely on:
- geometry: left/right mirror (left and right testes, probe orientation), a few degrees of rotation,
  ±10 % zoom and a small shift (ROI drawn by hand). No vertical flip: depth runs top to bottom in every
  B-mode image, and near-field/far-field texture differ.
- intensity: overall gain, a smooth multiplicative field (time-gain compensation and probe contact vary
  across the image) and a gamma change (dynamic range / log-compression setting). All of these multiply
  or remap the grey level; none adds noise or blurs, so the speckle pattern — the texture that carries the
  NOA signal — keeps its statistics.
Every random number comes from `np.random.default_rng([seed, fold, epoch, batch])`, so a run repeats exactly
and a resumed fold sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT = 0.05          # fraction of the side
GAIN_RANGE = (0.8, 1.2)
FIELD_AMPLITUDE = 0.15    # smooth multiplicative field 1 ± 0.15
GAMMA_RANGE = (0.8, 1.25)


def augment_image(roi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (S, S, 3) grey ROI -> an augmented uint8 (S, S, 3) grey ROI."""
    size = roi.shape[0]
    gray = roi[:, :, 0].astype(np.float32)
    if rng.random() < 0.5:
        gray = gray[:, ::-1]
    angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
    scale = rng.uniform(*SCALE_RANGE)
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2) * size
    matrix = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, scale)
    matrix[:, 2] += shift
    gray = cv2.warpAffine(np.ascontiguousarray(gray), matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)
    coarse = rng.uniform(-1.0, 1.0, (3, 3)).astype(np.float32)
    field = 1.0 + FIELD_AMPLITUDE * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    gray = gray * (rng.uniform(*GAIN_RANGE) * field)
    gamma = math.exp(rng.uniform(math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1])))
    gray = 255.0 * np.power(np.clip(gray / 255.0, 0.0, 1.0), gamma)
    out = np.clip(gray + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def augment_batch(rois: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.stack([augment_image(r, rng) for r in rois]) if len(rois) else rois.copy()


def batch_rng(seed: int, fold: int, epoch: int, batch: int) -> np.random.Generator:
    return np.random.default_rng([seed, fold, epoch, batch])


def epoch_order(n: int, seed: int, fold: int, epoch: int) -> np.ndarray:
    """Shuffled sample order for one epoch (its own stream, independent of the batch streams)."""
    return np.random.default_rng([seed, fold, epoch, 1_000_003]).permutation(n)
