"""The class activation map on the page: the ROI view it is drawn on and the JET overlay.

The CAM comes out of the model itself (the bundle's `cam` output; for a GAP + Dense(sigmoid) head it
equals Grad-CAM up to a positive scale), so no gradients run on the device.
"""

from __future__ import annotations

import cv2
import numpy as np

from .roi import Box

CAM_SIZE_MIN = 224                  # overlay is drawn at least this big so the page shows detail
ROI_VIEW_MAX_SIDE = 4096            # ...and its long side at most this (JPEG's limit is 65,535 px)

_JET_RGB = np.ascontiguousarray(
    cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, :, ::-1])


def roi_view(frame: np.ndarray, roi: Box) -> np.ndarray:
    """The ROI as shown on the page and under the CAM: the crop, bilinear-upscaled so its short side is
    at least CAM_SIZE_MIN, but never with a long side over ROI_VIEW_MAX_SIDE (a tall narrow ROI would
    otherwise become an overlay JPEG cannot hold; a huge one is shrunk). Also how the store derives the ROI
    image from a stored frame."""
    x, y, w, h = (int(v) for v in roi)
    view = frame[y:y + h, x:x + w]
    h, w = view.shape[:2]
    scale = min(max(1.0, CAM_SIZE_MIN / max(1, min(w, h))), ROI_VIEW_MAX_SIDE / max(1, w, h))
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        view = cv2.resize(view, size, interpolation=cv2.INTER_LINEAR if scale > 1.0 else cv2.INTER_AREA)
    return view


def cam_overlay(roi_rgb: np.ndarray, cam: np.ndarray, positive: bool, alpha: float = 0.4) -> np.ndarray:
    """Class activation map of the predicted class (ReLU, max-normalised), bilinear-upsampled onto the ROI
    and blended as a JET heatmap. For an OA call the map is negated: regions arguing for OA light up.
    JET comes from an RGB lookup table and cv2.blendLinear weights per pixel: no float copies of the ROI."""
    cam = np.asarray(cam, np.float32).squeeze()
    if cam.ndim != 2:
        raise ValueError(f"cam output has shape {cam.shape}, expected 2-D")
    cam = cam if positive else -cam
    cam = np.maximum(cam, 0.0)
    cam = cam / cam.max() if cam.max() > 0 else cam
    h, w = roi_rgb.shape[:2]
    heat = cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), _JET_RGB)
    weight = alpha * heat  # cool regions stay the plain image
    return cv2.blendLinear(np.ascontiguousarray(roi_rgb), colour, 1.0 - weight, weight)
