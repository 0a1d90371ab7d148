"""Fidelity of each device variant against the Keras model, measured through the device's own runtime.

Predictions: Keras (`predict_keras`), TFLite through edge.runtime.ModelRunner (`predict_tflite`, so the
numbers cover the code that runs on the cart) and ONNX Runtime (`predict_onnx`). Metrics per variant:
max/mean |Δprob|, AUC and ΔAUC, decision agreement (nomogram decisions when every ROI has its clinical
values), CAM Pearson r; `meets_targets` checks them against TARGETS_FIDELITY.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters import require_train_extra
from converters.errors import ConvertError

TARGETS_FIDELITY = {"fp16": {"max_abs_dprob": 1e-3},
                    "int8": {"abs_delta_auc": 0.01, "agreement": 0.98, "mean_abs_dprob": 0.02}}


def predict_keras(model, x: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    probs, cams = [], []
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch], training=False)
        probs.append(np.asarray(out["prob"]).reshape(-1))
        cams.append(np.asarray(out["cam"]))
    return np.concatenate(probs).astype(np.float64), np.concatenate(cams).astype(np.float32)


def predict_tflite(path: Path, variant: str, x: np.ndarray, progress: bool = True):
    """Through the device wrapper, so fidelity covers the code that runs on the cart."""
    from tqdm import tqdm

    from edge.runtime import ModelRunner

    runner = ModelRunner(path, variant=variant, num_threads=2)
    probs = np.empty(len(x))
    cams = np.empty((len(x),) + runner.cam_shape, dtype=np.float32)
    for i, roi in enumerate(tqdm(x, desc=f"fidelity {variant}", disable=not progress, leave=False)):
        probs[i], cams[i] = runner.run(roi)
    return probs, cams, runner.info()


def predict_onnx(path: Path, x: np.ndarray):
    ort = require_train_extra("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if set(names) != {"prob", "cam"}:
        raise ConvertError(f"{path}: ONNX outputs are {names}, expected prob and cam")
    input_name = session.get_inputs()[0].name
    probs, cams = [], []
    for roi in x:
        out = dict(zip(names, session.run(None, {input_name: roi[None]}), strict=False))
        probs.append(float(out["prob"].reshape(-1)[0]))
        cams.append(out["cam"][0])
    return np.asarray(probs), np.asarray(cams, dtype=np.float32)


def nomogram_decisions(nomogram: dict, probs: np.ndarray, rows: list[dict]) -> np.ndarray | None:
    """Nomogram positive/negative per ROI with its clinical values (None if any ROI lacks one)."""
    from edge.nomogram import transform

    lp = np.full(len(probs), float(nomogram["intercept"]))
    for p in nomogram["predictors"]:
        if p["source"] == "dl_probability":
            values = probs
        else:
            values = np.array([np.nan if r.get(p["source"]) is None else r[p["source"]] for r in rows], float)
            if np.isnan(values).any():
                return None
        lo, hi = p.get("range", [-np.inf, np.inf])
        lp += float(p["coef"]) * np.asarray(transform(p["transform"], np.clip(values, lo, hi)), float)
    return 1.0 / (1.0 + np.exp(-lp)) >= float(nomogram["threshold"])


def fidelity_metrics(labels: np.ndarray, ref: tuple, var: tuple, decide) -> dict:
    """max/mean |Δprob|, AUC and ΔAUC vs Keras, decision agreement, CAM Pearson r (mean per ROI)."""
    from sklearn.metrics import roc_auc_score

    p_ref, cam_ref = ref
    p_var, cam_var = var
    d = np.abs(p_var - p_ref)
    two_classes = len(set(labels.tolist())) == 2
    auc = float(roc_auc_score(labels, p_var)) if two_classes else None
    auc_ref = float(roc_auc_score(labels, p_ref)) if two_classes else None
    a, b = cam_ref.reshape(len(cam_ref), -1), cam_var.reshape(len(cam_var), -1)
    if a.shape[1] > 1:
        rs = [_pearson(x, y) for x, y in zip(a, b, strict=False)]
        rs = [r for r in rs if r is not None]
        cam_r = float(np.mean(rs)) if rs else None
    else:
        cam_r = _pearson(a.ravel(), b.ravel())
    return {"auc": auc, "delta_auc": None if auc is None else auc - auc_ref,
            "agreement": float(np.mean(decide(p_var) == decide(p_ref))),
            "mean_abs_dprob": float(d.mean()), "max_abs_dprob": float(d.max()),
            "cam_r": cam_r, "cam_r_pooled": _pearson(a.ravel(), b.ravel())}


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.std() == 0 or y.std() == 0:
        return 1.0 if np.allclose(x, y) else None
    return float(np.corrcoef(x, y)[0, 1])


def meets_targets(variant: str, metrics: dict) -> dict:
    checks = {}
    for key, limit in TARGETS_FIDELITY.get(variant, {}).items():
        if key == "abs_delta_auc":
            value = None if metrics["delta_auc"] is None else abs(metrics["delta_auc"])
            checks[key] = {"value": value, "limit": limit, "ok": value is not None and value <= limit}
        elif key == "agreement":
            checks[key] = {"value": metrics[key], "limit": limit, "ok": metrics[key] >= limit}
        else:
            checks[key] = {"value": metrics[key], "limit": limit, "ok": metrics[key] <= limit}
    return checks


def auc_or_none(labels, probs):
    """ROC AUC, or None with a single class."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, probs)) if len(set(labels.tolist())) == 2 else None
