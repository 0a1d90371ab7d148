"""Grad-CAM: the gradient reference (to prove the in-graph `cam` output equals it) and overlay images.

For the CAM-first head in converters/models.py (cam = Σ_k w_k·A_k + b, logit = mean(cam)) the Grad-CAM
weights are α_k = mean_ij ∂logit/∂A_k(i,j) = w_k / (h·w), so Σ_k α_k A_k = (cam − b) / (h·w): the same map
up to a positive scale and an offset. `gradient_grad_cam` computes it the textbook way (Selvaraju et al.
2017) with a GradientTape; tests/test_train.py checks the two agree (Pearson r ≥ 0.99). Overlays are then
drawn from the stored `cam` of the out-of-fold model, with no gradients.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from converters.models import FEATURES_LAYER


def gradient_grad_cam(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Grad-CAM of the NOA logit, before the ReLU: (maps (N, h, w), logits (N,)).

    The logit is the input of the sigmoid (layer "head_gap"); the feature map is layer "features"."""
    import tensorflow as tf

    keras = tf.keras
    probe = keras.Model(model.inputs, [model.get_layer(FEATURES_LAYER).output,
                                       model.get_layer("head_gap").output])
    with tf.GradientTape() as tape:
        features, logit = probe([tf.convert_to_tensor(images)], training=False)
        total = tf.reduce_sum(logit)  # each image's logit depends only on its own features
    grads = tape.gradient(total, features)                      # (N, h, w, K)
    alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)   # (N, 1, 1, K)
    maps = tf.reduce_sum(alpha * features, axis=-1)             # (N, h, w)
    return maps.numpy(), logit.numpy().reshape(-1)


def evidence_map(cam: np.ndarray, bias: float, for_noa: bool) -> np.ndarray:
    """Grad-CAM (ReLU applied) for the class shown: NOA evidence = relu(cam − b), OA = relu(b − cam)."""
    centred = np.asarray(cam, dtype=np.float32) - float(bias)
    return np.maximum(centred if for_noa else -centred, 0.0)


def overlay(roi_rgb: np.ndarray, heat: np.ndarray, display: int = 224, alpha: float = 0.45) -> np.ndarray:
    """ROI (uint8 RGB) with a JET heat map; returns BGR uint8 for cv2.imwrite. Heat normalised to its max."""
    base = cv2.resize(roi_rgb, (display, display), interpolation=cv2.INTER_LINEAR)
    peak = float(heat.max()) if heat.size else 0.0
    norm = heat / peak if peak > 0 else np.zeros_like(heat)
    up = cv2.resize(norm.astype(np.float32), (display, display), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.clip(up * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(cv2.cvtColor(base, cv2.COLOR_RGB2BGR), 1 - alpha, colour, alpha, 0)


def caption(image_bgr: np.ndarray, lines: list[str]) -> np.ndarray:
    """Add a black caption band below the image."""
    band = np.zeros((16 * len(lines) + 6, image_bgr.shape[1], 3), np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(band, text, (4, 15 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.vstack([image_bgr, band])


def write_overlay(path: Path, roi_rgb: np.ndarray, cam: np.ndarray, bias: float, for_noa: bool,
                  lines: list[str]) -> Path:
    heat = evidence_map(cam, bias, for_noa)
    img = caption(overlay(roi_rgb, heat), lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")
    return path
