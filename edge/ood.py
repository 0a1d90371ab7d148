"""The out-of-distribution guard: is this ROI like the ROIs the model was trained on?

The bundle describes the training distribution of the model's pooled backbone features (the `features`
output, converters/tflite_features.py) in `ood.npz`, written by converters/ood_fit.py and listed in the
manifest under `ood` (optional: older bundles have none and the daemon says so in /api/health).

The features are mean ReLU activations (non-negative, variance growing with the mean); their square roots
("power normalisation", as for Fisher vectors) are modelled: in an exploratory run on the demo bundle the raw
features detected fewer of pydicom's ultrasound examples at the same false-alarm rate.

Score = the smallest squared Mahalanobis distance of the features to a class mean (OA, NOA), under one
covariance shared by the classes. The covariance is a probabilistic PCA (Tipping & Bishop 1999): the top k
principal directions of the within-class scatter with their own variances, and one variance for every other
direction (the mean of the remaining eigenvalues). That is the maximum-likelihood rank-k-plus-noise estimate,
a shrinkage of the sample covariance (C = 1056 features, a few hundred ROIs: the sample covariance is
singular) that keeps the residual directions, where images unlike the training set tend to land, instead of
dropping them as a plain PCA projection would; and it is small (k x C numbers).

An exam is flagged when its score is above the threshold for the variant that ran: the 99th percentile of
that variant's out-of-fold scores on the training ROIs (5 folds of whole patients, each fold scored by a
description fitted on the other ~80 % of patients), so about 1 % of training-like ROIs are flagged by design.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeError

SCHEMA = "noa-edge.ood/1"
ARRAYS = ("means", "components", "eigenvalues", "residual_variance")


class OODError(EdgeError, ValueError):
    """The bundle's OOD description is unreadable or does not fit the model's features."""


@dataclass(frozen=True)
class OODGuard:
    """A loaded description: class means (K, C), components (k, C), eigenvalues (k,), residual variance."""

    means: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    residual_variance: float
    thresholds: dict[str, float]   # variant -> threshold on the score
    quantile: float
    method: str

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def threshold_for(self, variant: str) -> float | None:
        """The threshold of `variant`; the Edge TPU runs the int8 model, so it uses int8's."""
        if variant in self.thresholds:
            return float(self.thresholds[variant])
        if variant == "edgetpu" and "int8" in self.thresholds:
            return float(self.thresholds["int8"])
        return None

    def score(self, features: np.ndarray) -> float:
        return float(scores(self, np.asarray(features, dtype=np.float64).reshape(1, -1))[0])


def transform(features: np.ndarray) -> np.ndarray:
    """The modelled features: square roots of the pooled activations (negative quantization noise clipped)."""
    return np.sqrt(np.maximum(np.asarray(features, dtype=np.float64), 0.0))


def scores(guard: OODGuard, features: np.ndarray) -> np.ndarray:
    """Score of every row of `features` (N, C), raw model output: min over classes of the squared Mahalanobis
    distance of the transformed features."""
    x = transform(features)
    if x.ndim != 2 or x.shape[1] != guard.dim:
        raise OODError(f"features have shape {x.shape}, the OOD description expects (N, {guard.dim})")
    d = x[:, None, :] - guard.means[None, :, :].astype(np.float64)          # (N, K, C)
    z = d @ guard.components.T.astype(np.float64)                             # (N, K, k)
    inside = np.sum(z * z / guard.eigenvalues.astype(np.float64), axis=2)     # along the principal directions
    residual = np.maximum(np.sum(d * d, axis=2) - np.sum(z * z, axis=2), 0.0)  # everything else
    per_class = inside + residual / guard.residual_variance
    return per_class.min(axis=1)


def flagged(score: float, threshold: float) -> bool:
    """True when the score is above the threshold (unlike the training data)."""
    return score > threshold


def to_npz_bytes(means, components, eigenvalues, residual_variance: float) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, means=np.asarray(means, np.float32), components=np.asarray(components, np.float32),
             eigenvalues=np.asarray(eigenvalues, np.float32),
             residual_variance=np.asarray([residual_variance], np.float64))
    return buf.getvalue()


def load_guard(bundle_path: str | Path, manifest: Mapping[str, Any]) -> OODGuard | None:
    """The bundle's guard, or None when its manifest has no `ood` entry (a bundle built before the guard).
    The file's sha256 was checked with the rest of the bundle (edge.bundle.verify)."""
    spec = manifest.get("ood")
    if not spec:
        return None
    path = Path(bundle_path) / str(spec.get("file", ""))
    if spec.get("transform") != "sqrt":
        raise OODError(f"{path.name}: OOD feature transform {spec.get('transform')!r} is not one this noa-edge "
                       "knows (sqrt); update noa-edge")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in ARRAYS}
        thresholds = {str(k): float(v) for k, v in dict(spec["thresholds"]).items()}
        guard = OODGuard(arrays["means"], arrays["components"], arrays["eigenvalues"],
                         float(arrays["residual_variance"].reshape(-1)[0]), thresholds,
                         float(spec.get("quantile", 0.99)), str(spec.get("method", "")))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise OODError(f"{path.name}: the bundle's OOD description cannot be read ({exc})") from exc
    if guard.means.ndim != 2 or guard.components.shape[1:] != (guard.dim,) or \
            guard.eigenvalues.shape != (guard.components.shape[0],) or guard.residual_variance <= 0 or \
            np.any(guard.eigenvalues <= 0):
        raise OODError(f"{path.name}: inconsistent OOD description (means {guard.means.shape}, components "
                       f"{guard.components.shape}, eigenvalues {guard.eigenvalues.shape})")
    return guard
