"""`noa-edge train DATASET --out RUN`: five backbones, patient-grouped k-fold CV, Grad-CAM, final model.

Flow: load + validate the dataset → pick NOA (1) vs OA (0) images → crop every ROI once (cached in
RUN/cache) → StratifiedGroupKFold by patient → per backbone and fold: an inner patient-grouped validation
split drives early stopping, the held-out patients get out-of-fold (OOF) probabilities and CAMs →
pooled OOF metrics pick the backbone → retrain it on all patients for the median best epoch →
RUN/model.keras (outputs "prob" and "cam"), Grad-CAM overlays, cv_report.json/html, run.json.

Each finished fold is written to RUN/folds/<backbone>/fold<k>.json (+ .npz with its CAMs) before the next
starts, so re-running the same command skips finished folds. TensorFlow graph tracing costs minutes per
backbone on 2 cores, so one compiled model per backbone is reset to its initial state for every fold
instead of being rebuilt; --quick runs eagerly, where tracing would cost more than its one epoch.
"""

from __future__ import annotations

import csv
import gc
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from converters import TrainExtraMissing, require_train_extra
from edge.bundle import sha256_file
from converters.models import BACKBONES, WeightsError, canonical_backbone, resolve_weights

QUICK_DEFAULTS = {"input_size": 64, "epochs": 1, "folds": 2, "max_images": 40}
DEFAULTS = {"input_size": 224, "epochs": 30, "folds": 5, "max_images": None}
# keras.applications ship BatchNormalization momentum 0.99-0.9997 (NASNetMobile 0.9997), tuned for ImageNet-length
# runs. With a few hundred steps the moving averages barely leave their initial values, so inference-mode
# predictions (validation, OOF, the saved model) come from wrong statistics: measured, a NASNetMobile fold at
# 96 px from scratch reached test AUC 0.31 with 0.9997. 0.9 lets them follow the data within an epoch.
BN_MOMENTUM = 0.9
# Early stopping watches the inner validation AUC (what model selection ranks on), not its loss: from
# scratch, the validation loss swings with batch-norm statistics while the ranking is already good, and
# measured on the default phantom at 160 px a val-loss stopper restored epoch 1 in one fold (test AUC
# 0.75 vs 0.91-0.95 in the others). No stop is taken before EARLY_STOP_WARMUP epochs.
EARLY_STOP_MONITOR = "val_auc"
EARLY_STOP_WARMUP = 3
INNER_VALIDATION_SPLITS = 5   # inner split: ~1/5 of the training patients validate (early stopping)
MIN_INPUT_SIZE = 32           # keras.applications minimum (NASNetMobile)
OOF_COLUMNS = ["image_id", "patient_id", "group", "label", "backbone", "fold", "prob"]
GRADCAM_PER_CATEGORY = 3
LOG_NAME = "noa_edge.train"


class TrainError(ValueError):
    """Bad input for training (dataset, options, run directory); the message says what and why."""


@dataclass
class TrainConfig:
    dataset: Path
    out: Path
    backbones: list[str] = field(default_factory=lambda: list(BACKBONES))
    folds: int = 5
    epochs: int = 30
    batch_size: int = 16
    input_size: int = 224
    seed: int = 0
    patience: int = 5
    weights: dict = field(default_factory=dict)   # backbone -> local .h5 path (None = from scratch)
    include_controls: bool = False
    quick: bool = False
    max_images: int | None = None
    learning_rate: float | None = None
    progress: bool = True

    def settings(self, dataset_sha: str, weight_shas: dict) -> dict:
        """Everything that changes fold results (resume only reuses folds made with the same settings)."""
        return {"dataset_sha256": dataset_sha, "folds": self.folds, "epochs": self.epochs,
                "batch_size": self.batch_size, "input_size": self.input_size, "seed": self.seed,
                "patience": self.patience, "include_controls": self.include_controls, "quick": self.quick,
                "max_images": self.max_images, "learning_rate": self.learning_rate,
                "weights_sha256": weight_shas}


def make_config(dataset, out, backbones: str | list[str] | None = None, folds=None, epochs=None,
                batch_size: int = 16, input_size=None, seed: int = 0, patience: int = 5,
                weights: str | None = None, include_controls: bool = False, quick: bool = False,
                max_images=None, learning_rate=None, progress: bool = True) -> TrainConfig:
    """Options as typed on the command line -> checked TrainConfig (quick mode fills its own defaults)."""
    base = QUICK_DEFAULTS if quick else DEFAULTS
    names = backbones.split(",") if isinstance(backbones, str) else (backbones or list(BACKBONES))
    try:
        chosen = [canonical_backbone(n) for n in names if n.strip()]
    except ValueError as exc:
        raise TrainError(f"--backbones: {exc}") from None
    if not chosen:
        raise TrainError(f"--backbones is empty; choose from {', '.join(BACKBONES)}")
    chosen = list(dict.fromkeys(chosen))
    cfg = TrainConfig(dataset=Path(dataset), out=Path(out), backbones=chosen,
                      folds=base["folds"] if folds is None else int(folds),
                      epochs=base["epochs"] if epochs is None else int(epochs),
                      batch_size=int(batch_size),
                      input_size=base["input_size"] if input_size is None else int(input_size),
                      seed=int(seed), patience=int(patience), include_controls=include_controls, quick=quick,
                      max_images=base["max_images"] if max_images is None else int(max_images),
                      learning_rate=learning_rate, progress=progress)
    for name, value, low in (("--folds", cfg.folds, 2), ("--epochs", cfg.epochs, 1),
                             ("--batch-size", cfg.batch_size, 1), ("--input-size", cfg.input_size, MIN_INPUT_SIZE),
                             ("--patience", cfg.patience, 0)):
        if value < low:
            raise TrainError(f"{name} must be >= {low}, got {value}")
    if cfg.max_images is not None and cfg.max_images < 4:
        raise TrainError(f"--max-images must be >= 4, got {cfg.max_images}")
    if learning_rate is not None and not (0 < learning_rate < 1):
        raise TrainError(f"--learning-rate must be in (0, 1), got {learning_rate}")
    cfg.weights = parse_weights(weights, cfg.backbones)
    return cfg


def parse_weights(spec: str | None, backbones: list[str]) -> dict:
    """'PATH' (one file, for a single backbone) or 'NASNetMobile=PATH,MobileNetV2=PATH'. Files must exist."""
    if spec is None or spec.strip() == "":
        return {b: None for b in backbones}
    if "=" not in spec:
        if spec.strip() != "imagenet" and len(backbones) > 1:
            raise TrainError("--weights PATH fits one backbone only; with several backbones write "
                             "--weights NASNetMobile=PATH,MobileNetV2=PATH (backbones not listed start from scratch)")
        path = resolve_weights(spec.strip())
        return {b: path for b in backbones}
    out = {b: None for b in backbones}
    for part in spec.split(","):
        name, _, path = part.partition("=")
        try:
            name = canonical_backbone(name)
        except ValueError as exc:
            raise TrainError(f"--weights: {exc}") from None
        if name not in out:
            raise TrainError(f"--weights names {name}, which is not in --backbones ({', '.join(backbones)})")
        out[name] = resolve_weights(path.strip())
    return out


# --------------------------------------------------------------------------------------------- data
def dataset_sha256(ds) -> str:
    """sha256 over (relative path, sha256) of dataset.json, both CSVs and every image file, sorted."""
    names = ["dataset.json", "patients.csv", "images.csv"] + sorted({row["file"] for row in ds.images})
    h = hashlib.sha256()
    for name in names:
        h.update(f"{name}\0{sha256_file(ds.root / name)}\n".encode())
    return h.hexdigest()


def select_images(ds, include_controls: bool, max_images: int | None, seed: int) -> list[dict]:
    """Labelled images for the task; a reproducible class-balanced patient subsample if max_images."""
    rows = ds.labelled_images(include_controls=include_controls)
    what = "NOA, OA or control" if include_controls else "NOA or OA (controls are excluded; --include-controls adds them as 0)"
    if not rows:
        raise TrainError(f"{ds.root}: no {what} images to train on")
    n_pos = sum(r["label"] for r in rows)
    if n_pos == 0 or n_pos == len(rows):
        only = "NOA" if n_pos else ("OA/control" if include_controls else "OA")
        raise TrainError(f"{ds.root}: one class only — all {len(rows)} images are {only}; "
                         "NOA vs OA needs patients of both groups")
    if max_images is None or len(rows) <= max_images:
        return rows
    rng = np.random.default_rng([seed, 7])
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], []).append(r)
    queues = []
    for label in (1, 0):
        ids = sorted(p for p, rs in by_patient.items() if rs[0]["label"] == label)
        queues.append([ids[i] for i in rng.permutation(len(ids))])
    chosen, count = set(), 0
    while any(queues):
        for q in queues:
            if q:
                pid = q.pop(0)
                if count + len(by_patient[pid]) <= max_images:
                    chosen.add(pid)
                    count += len(by_patient[pid])
    return [r for r in rows if r["patient_id"] in chosen]


def make_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every image: StratifiedGroupKFold by patient; checked before any training."""
    from sklearn.model_selection import StratifiedGroupKFold

    patient_label = {}
    for g, y in zip(groups, labels):
        if patient_label.setdefault(g, y) != y:
            raise TrainError(f"patient {g!r} has images with different labels")
    n_pos = sum(1 for y in patient_label.values() if y == 1)
    n_neg = len(patient_label) - n_pos
    for name, n in (("NOA", n_pos), ("OA", n_neg)):
        if n < n_folds:
            raise TrainError(f"only {n} {name} patients for {n_folds} folds: every test fold needs at least one "
                             f"{name} patient (a fold with no {'positives' if name == 'NOA' else 'negatives'}); "
                             f"use --folds {max(2, n)} or fewer, or more patients")
    fold_of = np.full(len(labels), -1, dtype=int)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for k, (_, test) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            fold_of[test] = k
    for k in range(n_folds):
        test, train = labels[fold_of == k], labels[fold_of != k]
        for part, ys in (("test", test), ("training", train)):
            if ys.size == 0 or ys.min() == ys.max():
                missing = "no positives (NOA)" if ys.size == 0 or ys.max() == 0 else "no negatives (OA)"
                raise TrainError(f"fold {k + 1} of {n_folds}: its {part} part has {missing}; "
                                 "use fewer --folds or more patients")
    return fold_of


def inner_validation_split(train_idx: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int,
                           fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) image indices inside a fold's training part, split by patient."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(set(groups[train_idx]))
    if n_groups < 2:
        raise TrainError(f"fold {fold}: only {n_groups} training patient(s); an inner validation split needs 2")
    patients_per_class = [len(set(groups[train_idx][labels[train_idx] == c])) for c in (0, 1)]
    if min(patients_per_class) < 2:
        raise TrainError(
            f"fold {fold}: the training part has {patients_per_class[1]} NOA and {patients_per_class[0]} OA "
            "patients; an inner validation split needs at least 2 of each (add patients or use fewer --folds)"
        )
    splitter = StratifiedGroupKFold(n_splits=min(INNER_VALIDATION_SPLITS, n_groups, *patients_per_class),
                                    shuffle=True, random_state=seed + 1000 * fold)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fit, val = next(splitter.split(np.zeros(len(train_idx)), labels[train_idx], groups[train_idx]))
    for part, idx in (("fit", fit), ("validation", val)):
        if len(set(labels[train_idx][idx].tolist())) < 2:
            raise TrainError(
                f"fold {fold}: the inner {part} split has only one class ({len(set(groups[train_idx][idx]))} "
                "patients); add patients of both groups or use fewer --folds"
            )
    return train_idx[fit], train_idx[val]


def load_rois(ds, rows: list[dict], size: int, cache_dir: Path, dataset_sha: str, progress: bool,
              log: logging.Logger) -> np.ndarray:
    """uint8 (N, S, S, 3) ROIs in `rows` order; each file decoded once, kept in RUN/cache across runs."""
    from tqdm import tqdm

    from edge.preprocess import crop_roi

    path = cache_dir / f"rois_{size}_{dataset_sha[:16]}.npz"
    cached: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as z:
            cached = dict(zip(z["image_ids"].tolist(), z["rois"]))
    missing = [r for r in rows if r["image_id"] not in cached]
    if missing:
        by_file: dict[str, list[dict]] = {}
        for r in missing:
            by_file.setdefault(r["file"], []).append(r)
        for file, file_rows in tqdm(by_file.items(), desc=f"ROIs {size}px", unit="img", disable=not progress,
                                    dynamic_ncols=True):
            rgb = ds.read_image(file_rows[0])
            for r in file_rows:
                try:
                    cached[r["image_id"]] = crop_roi(rgb, r["roi"], size)
                except ValueError as exc:
                    raise TrainError(f"images.csv image {r['image_id']} ({file}): {exc}") from None
        cache_dir.mkdir(parents=True, exist_ok=True)
        ids = sorted(cached)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, image_ids=np.array(ids), rois=np.stack([cached[i] for i in ids]))
        os.replace(tmp, path)
        log.info("cropped %d ROIs at %d px -> %s", len(missing), size, path)
    else:
        log.info("ROIs from cache %s", path)
    return np.stack([cached[r["image_id"]] for r in rows])


# ------------------------------------------------------------------------------------------ metrics
def binary_metrics(y, prob) -> dict:
    """AUC with DeLong 95% CI; accuracy, sensitivity, specificity at the Youden threshold of these data."""
    from converters.stats import classification_metrics, delong_ci, youden_threshold

    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    out = {"n": int(len(y)), "n_noa": int(y.sum()), "n_oa": int(len(y) - y.sum())}
    if out["n_noa"] == 0 or out["n_oa"] == 0:
        return {**out, "auc": None, "auc_ci": None, "note": "one class only: no AUC"}
    if min(out["n_noa"], out["n_oa"]) >= 2:
        d = delong_ci(y, prob)
        out.update(auc=d["auc"], auc_ci=d["ci"], auc_se=d["se"])
    else:
        from converters.stats import roc_auc

        out.update(auc=roc_auc(y, prob), auc_ci=None, auc_se=None)
    thr = youden_threshold(y, prob)["threshold"]
    cm = classification_metrics(y, prob, thr)
    if not math.isfinite(thr):  # constant predictions: "everything NOA" is the only cut-off
        out["note"] = "all probabilities equal: no finite threshold"
    out.update(threshold=thr if math.isfinite(thr) else None, accuracy=cm["accuracy"]["value"], sensitivity=cm["sensitivity"]["value"],
               specificity=cm["specificity"]["value"], table=cm["table"])
    return out


def patient_level(patient_ids, y, prob) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One row per patient: the mean probability of the patient's testes."""
    ids = list(dict.fromkeys(patient_ids))
    index = {p: i for i, p in enumerate(ids)}
    sums, counts, labels = np.zeros(len(ids)), np.zeros(len(ids)), np.zeros(len(ids), dtype=int)
    for p, yy, pr in zip(patient_ids, y, prob):
        sums[index[p]] += pr
        counts[index[p]] += 1
        labels[index[p]] = yy
    return ids, labels, sums / counts


def evaluate(patient_ids, y, prob) -> dict:
    _, py, pp = patient_level(patient_ids, y, prob)
    return {"image": binary_metrics(y, prob), "patient": binary_metrics(py, pp)}


# ------------------------------------------------------------------------------------------ training
def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class BackboneTrainer:
    """One compiled model per backbone, reset to its initial weights and optimizer state for every fold."""

    def __init__(self, backbone: str, cfg: TrainConfig, log: logging.Logger):
        _quiet_tensorflow()
        tf = require_train_extra("tensorflow")
        from converters.models import build_cam_model

        keras = tf.keras
        self.keras, self.backbone, self.cfg, self.log = keras, backbone, cfg, log
        weights = cfg.weights.get(backbone)
        self.learning_rate = cfg.learning_rate or (1e-4 if weights else 1e-3)
        t0 = time.perf_counter()
        self.model = build_cam_model(backbone, cfg.input_size, weights, seed=cfg.seed)
        for layer in self.model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = min(float(layer.momentum), BN_MOMENTUM)
        self.train_model = keras.Model(self.model.inputs, self.model.get_layer("prob").output,
                                       name=f"{backbone}_train")
        self.optimizer = keras.optimizers.Adam(self.learning_rate)
        self.train_model.compile(optimizer=self.optimizer, loss="binary_crossentropy",
                                 metrics=[keras.metrics.AUC(name="auc")], jit_compile=False,
                                 run_eagerly=cfg.quick)
        self.optimizer.build(self.train_model.trainable_variables)
        self._initial_model = [v.numpy() for v in self.model.variables]
        self._initial_optimizer = [v.numpy() for v in self.optimizer.variables]
        log.info("%s: built at %d px (%d parameters, weights %s, lr %g) in %.1f s", backbone, cfg.input_size,
                 self.model.count_params(), weights or "from scratch", self.learning_rate, time.perf_counter() - t0)

    def reset(self) -> None:
        for v, a in zip(self.model.variables, self._initial_model):
            v.assign(a)
        for v, a in zip(self.optimizer.variables, self._initial_optimizer):
            v.assign(a)

    def fit(self, x, y, fold: int, epochs: int, desc: str, validation=None) -> dict:
        """Train with augmentation and class weights; with validation, early stopping restores the best epoch."""
        keras, cfg = self.keras, self.cfg
        n_pos = int(y.sum())
        class_weight = {0: len(y) / (2.0 * (len(y) - n_pos)), 1: len(y) / (2.0 * n_pos)}
        weights = np.where(y == 1, class_weight[1], class_weight[0]).astype("float32")
        batches = _augmented_batches(keras)(x, y.astype("float32").reshape(-1, 1), weights, cfg.batch_size,
                                            cfg.seed, fold)
        callbacks = [_progress_callback(keras)(desc, epochs, len(batches), self.log, cfg.progress)]
        stopper = None
        if validation is not None:
            stopper = keras.callbacks.EarlyStopping(monitor=EARLY_STOP_MONITOR, mode="max", patience=cfg.patience,
                                                    restore_best_weights=True,
                                                    start_from_epoch=EARLY_STOP_WARMUP)
            callbacks.append(stopper)
            validation = (validation[0], validation[1].astype("float32").reshape(-1, 1))
        history = self.train_model.fit(batches, validation_data=validation, epochs=epochs, verbose=0,
                                       callbacks=callbacks)
        hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
        epochs_run = len(hist.get("loss", []))
        best = int(stopper.best_epoch) + 1 if stopper is not None and stopper.best_weights is not None else epochs_run
        return {"history": hist, "epochs_run": epochs_run, "best_epoch": best,
                "class_weight": {str(k): v for k, v in class_weight.items()}}

    def predict(self, x) -> tuple[np.ndarray, np.ndarray]:
        out = self.model.predict(x, batch_size=64, verbose=0)
        return np.asarray(out["prob"]).reshape(-1), np.asarray(out["cam"])

    def head_bias(self) -> float:
        return float(self.model.get_layer("head_dense").get_weights()[1][0])


def _augmented_batches(keras):
    from converters.augment import augment_batch, batch_rng, epoch_order

    class AugmentedBatches(keras.utils.PyDataset):
        """Shuffled, augmented batches; batch i of epoch e depends only on (seed, fold, e, i)."""

        def __init__(self, x, y, w, batch_size, seed, fold):
            super().__init__()
            self.x, self.y, self.w = x, y, w
            self.batch_size, self.seed, self.fold, self.epoch = batch_size, seed, fold, 0

        def __len__(self):
            return math.ceil(len(self.x) / self.batch_size)

        def __getitem__(self, i):
            order = epoch_order(len(self.x), self.seed, self.fold, self.epoch)
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = augment_batch(self.x[idx], batch_rng(self.seed, self.fold, self.epoch, i))
            return xb, self.y[idx], self.w[idx]

        def on_epoch_end(self):
            self.epoch += 1

    return AugmentedBatches


def _progress_callback(keras):
    from tqdm import tqdm

    class TqdmProgress(keras.callbacks.Callback):
        """A batch bar over all epochs of one fit (tqdm gives the ETA); one log line per epoch."""

        def __init__(self, desc, epochs, steps, log, enabled):
            super().__init__()
            self.desc, self.epochs, self.steps, self.log, self.enabled = desc, epochs, steps, log, enabled
            self.bar = None
            self.t0 = 0.0

        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=self.epochs * self.steps, desc=self.desc, unit="batch", leave=False,
                            position=1, disable=not self.enabled, dynamic_ncols=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            shown = {k: f"{v:.3f}" for k, v in logs.items() if k in ("loss", "val_loss", "val_auc")}
            self.bar.set_postfix(epoch=f"{epoch + 1}/{self.epochs}", **shown)
            self.log.info("%s epoch %d/%d %s (%.1f s)", self.desc, epoch + 1, self.epochs,
                          " ".join(f"{k}={v:.4f}" for k, v in logs.items()), time.perf_counter() - self.t0)

        def on_train_end(self, logs=None):
            self.bar.close()

    return TqdmProgress


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_finite(data), indent=1, default=_json_default, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _finite(o):
    """Strict JSON: NaN/inf (a diverged loss, say) become null."""
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def _settings_sha(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _load_done_fold(path: Path, settings_sha: str, test_ids: list[str]) -> dict | None:
    """A finished fold's record if it was made with these settings and these test images."""
    npz = path.with_suffix(".npz")
    if not path.is_file() or not npz.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if rec.get("settings_sha") != settings_sha or [p["image_id"] for p in rec.get("predictions", [])] != test_ids:
        return None
    return rec


# ---------------------------------------------------------------------------------------- the run
def _setup_log(run: Path, progress: bool) -> logging.Logger:
    from tqdm import tqdm

    log = logging.getLogger(LOG_NAME)
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    run.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run / "train.log", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    if progress:
        class TqdmHandler(logging.Handler):
            def emit(self, record):
                tqdm.write(record.getMessage(), file=sys.stderr)  # tracebacks go to the file only

        th = TqdmHandler()
        log.addHandler(th)
    return log


def _close_log(log: logging.Logger) -> None:
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()


def _versions() -> dict:
    import cv2
    import sklearn
    import tensorflow as tf

    from edge import __version__

    commit = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"noa_edge": __version__, "git_commit": commit, "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": tf.keras.__version__, "numpy": np.__version__,
            "scikit_learn": sklearn.__version__, "opencv": cv2.__version__, "platform": platform.platform()}


def train(cfg: TrainConfig) -> dict:
    """The whole `noa-edge train`. Returns the cv_report dict; raises TrainError/DatasetError/WeightsError."""
    for module in ("sklearn", "scipy", "matplotlib", "tensorflow"):
        if module == "tensorflow":
            _quiet_tensorflow()
        require_train_extra(module)
    from tqdm import tqdm

    from converters.dataset import load_dataset

    t_start = time.perf_counter()
    run = Path(cfg.out)
    if run.exists() and not run.is_dir():
        raise TrainError(f"--out {run} exists and is not a directory")
    ds = load_dataset(cfg.dataset)
    rows = select_images(ds, cfg.include_controls, cfg.max_images, cfg.seed)
    labels = np.array([r["label"] for r in rows], dtype=int)
    groups = np.array([r["patient_id"] for r in rows])
    fold_of = make_folds(labels, groups, cfg.folds, cfg.seed)

    log = _setup_log(run, cfg.progress)
    try:
        return _train(cfg, ds, rows, labels, groups, fold_of, run, log, t_start, tqdm)
    except Exception:
        log.exception("training stopped")
        raise
    finally:
        _close_log(log)


def _train(cfg, ds, rows, labels, groups, fold_of, run, log, t_start, tqdm) -> dict:
    log.info("noa-edge train %s --out %s (%s)", cfg.dataset, run, " ".join(
        f"{k}={v}" for k, v in asdict(cfg).items() if k not in ("dataset", "out", "progress")))
    dsha = dataset_sha256(ds)
    weight_shas = {b: (sha256_file(Path(p)) if p else None) for b, p in cfg.weights.items()}
    settings = dict(cfg.settings(dsha, weight_shas), early_stopping=f"{EARLY_STOP_MONITOR}>{EARLY_STOP_WARMUP}")
    prev_run = run / "run.json"
    if prev_run.is_file():
        try:
            prev = json.loads(prev_run.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, json.JSONDecodeError):
            prev = {}
        diff = {k: (prev.get(k), v) for k, v in settings.items()
                if k != "weights_sha256" and k in prev and prev.get(k) != v}
        if diff:
            raise TrainError(f"{run} holds a run made with other settings ("
                             + ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in diff.items())
                             + "); use a new --out directory or delete this one")
    sha = _settings_sha({k: v for k, v in settings.items() if k != "weights_sha256"})
    n_pat = {y: len({g for g, l in zip(groups, labels) if l == y}) for y in (0, 1)}
    log.info("cohort: %d images (%d NOA, %d OA) from %d patients (%d NOA, %d OA); %d folds by patient",
             len(rows), labels.sum(), len(labels) - labels.sum(), n_pat[0] + n_pat[1], n_pat[1], n_pat[0], cfg.folds)

    rois = load_rois(ds, rows, cfg.input_size, run / "cache", dsha, cfg.progress, log)
    image_ids = [r["image_id"] for r in rows]

    # jobs not yet done, for the overall bar's ETA
    fold_paths = {(b, k): run / "folds" / b / f"fold{k + 1}.json" for b in cfg.backbones for k in range(cfg.folds)}
    test_ids = {k: [image_ids[i] for i in np.flatnonzero(fold_of == k)] for k in range(cfg.folds)}
    def fold_sha(backbone: str) -> str:  # a fold is reused only with the same settings and weights file
        return f"{sha}:{backbone}" + (f":{weight_shas[backbone]}" if weight_shas.get(backbone) else "")

    done = {key: _load_done_fold(p, fold_sha(key[0]), test_ids[key[1]]) for key, p in fold_paths.items()}
    todo = sum(1 for v in done.values() if v is None)
    overall = tqdm(total=todo + 1, desc="train", unit="fit", position=0, disable=not cfg.progress,
                   dynamic_ncols=True)
    results: dict[str, dict] = {}
    best_name, best_auc, best_trainer = None, -1.0, None
    try:
        for backbone in cfg.backbones:
            t_bb = time.perf_counter()
            trainer = None
            records = []
            for k in range(cfg.folds):
                rec = done[(backbone, k)]
                if rec is not None:
                    log.info("%s fold %d/%d: done before, skipped (%s)", backbone, k + 1, cfg.folds,
                             fold_paths[(backbone, k)])
                    records.append(rec)
                    continue
                if trainer is None:
                    trainer = BackboneTrainer(backbone, cfg, log)
                rec = _run_fold(trainer, cfg, k, labels, groups, fold_of, rois, image_ids, fold_sha(backbone), log)
                cams = rec.pop("_cams")
                fold_paths[(backbone, k)].parent.mkdir(parents=True, exist_ok=True)
                np.savez(fold_paths[(backbone, k)].with_suffix(".npz"), image_ids=np.array(test_ids[k]), cam=cams)
                _write_json(fold_paths[(backbone, k)], rec)
                records.append(rec)
                overall.update(1)
            results[backbone] = _summarise_backbone(backbone, records, rows, labels, time.perf_counter() - t_bb)
            auc = results[backbone]["pooled"]["image"]["auc"] or 0.0
            log.info("%s: pooled OOF AUC %.3f %s (image level), %.3f (patient level); fold wall %.0f s", backbone,
                     auc, _ci_text(results[backbone]["pooled"]["image"]),
                     results[backbone]["pooled"]["patient"]["auc"] or float("nan"), results[backbone]["fold_wall_s"])
            if auc > best_auc:
                best_name, best_auc = backbone, auc
                best_trainer = trainer
            trainer = None
            gc.collect()

        final = _final_model(cfg, best_name, results[best_name], best_trainer, rois, labels, run,
                             sha + (f":{weight_shas[best_name]}" if weight_shas.get(best_name) else ""), log)
        overall.update(1)
    finally:
        overall.close()
    best_trainer = None
    gc.collect()

    _write_oof(run / "oof_predictions.csv", cfg.backbones, results, rows)
    gradcams = _gradcam_overlays(run, best_name, results[best_name], rows, rois)
    report = {
        "schema": "noa-edge.cv_report/1", "task": "NOA (label 1) vs OA (label 0), one prediction per testis image",
        "dataset": str(cfg.dataset), "dataset_sha256": dsha, "folds": cfg.folds, "seed": cfg.seed,
        "input_size": cfg.input_size, "cohort": {
            "images": len(rows), "images_noa": int(labels.sum()), "images_oa": int(len(labels) - labels.sum()),
            "patients": int(n_pat[0] + n_pat[1]), "patients_noa": int(n_pat[1]), "patients_oa": int(n_pat[0]),
            "include_controls": cfg.include_controls, "subsampled_to": cfg.max_images},
        "selection": "highest pooled out-of-fold image-level AUC", "selected_backbone": best_name,
        "backbones": results, "final_model": final, "gradcam": gradcams,
        "notes": [
            "Every probability is out-of-fold: predicted by the fold model that never saw that patient.",
            "Accuracy, sensitivity and specificity use the Youden threshold of the same predictions "
            "(optimistic; the nomogram step chooses its own threshold).",
            "Image-level DeLong CIs treat a patient's two testes as independent and are too narrow; "
            "patient level (mean of the patient's testes) is the unit of splitting.",
            f"Early stopping monitors the AUC ({EARLY_STOP_MONITOR}) of an inner validation split of the training "
            f"patients, from epoch {EARLY_STOP_WARMUP + 1} on, and restores the best epoch.",
        ],
    }
    _write_json(run / "cv_report.json", report)
    (run / "cv_report.html").write_text(_html_report(report, run, labels, groups), encoding="utf-8")
    run_json = {
        "dataset": str(Path(cfg.dataset).resolve()), "dataset_sha256": dsha, "input_size": cfg.input_size,
        "backbones": cfg.backbones, "selected_backbone": best_name, "seed": cfg.seed, "folds": cfg.folds,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "patience": cfg.patience,
        "include_controls": cfg.include_controls, "quick": cfg.quick, "max_images": cfg.max_images,
        "weights": cfg.weights, "settings": settings,
        "cv_auc": results[best_name]["pooled"]["image"]["auc"],
        "cv_auc_ci": results[best_name]["pooled"]["image"]["auc_ci"],
        "cv_auc_patient": results[best_name]["pooled"]["patient"]["auc"],
        "final_epochs": final["epochs"], "model": "model.keras", "outputs": {"prob": "prob", "cam": "cam"},
        "cam_shape": final["cam_shape"], "versions": _versions(),
        "wall_s": {"per_backbone_folds": {b: results[b]["fold_wall_s"] for b in cfg.backbones},
                   "final_model": final["wall_s"], "this_invocation": round(time.perf_counter() - t_start, 1)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(run / "run.json", run_json)
    log.info("selected %s (pooled OOF AUC %.3f %s); model -> %s; report -> %s", best_name, best_auc,
             _ci_text(results[best_name]["pooled"]["image"]), run / "model.keras", run / "cv_report.html")
    return report


def _run_fold(trainer: BackboneTrainer, cfg: TrainConfig, k: int, labels, groups, fold_of, rois, image_ids,
              settings_sha: str, log) -> dict:
    t0 = time.perf_counter()
    test = np.flatnonzero(fold_of == k)
    fit, val = inner_validation_split(np.flatnonzero(fold_of != k), labels, groups, cfg.seed, k + 1)
    trainer.reset()
    desc = f"{trainer.backbone} fold {k + 1}/{cfg.folds}"
    log.info("%s: fit %d images / val %d / test %d (patients %d / %d / %d)", desc, len(fit), len(val), len(test),
             len(set(groups[fit])), len(set(groups[val])), len(set(groups[test])))
    out = trainer.fit(rois[fit], labels[fit], k + 1, cfg.epochs, desc, validation=(rois[val], labels[val]))
    prob, cam = trainer.predict(rois[test])
    metrics = evaluate(groups[test], labels[test], prob)
    wall = time.perf_counter() - t0
    log.info("%s: best epoch %d of %d, test AUC %s, %.0f s", desc, out["best_epoch"], out["epochs_run"],
             _fmt(metrics["image"]["auc"]), wall)
    return {"backbone": trainer.backbone, "fold": k + 1, "settings_sha": settings_sha, **out,
            "n_fit": len(fit), "n_val": len(val), "n_test": len(test),
            "val_patients": sorted(set(groups[val].tolist())), "test_patients": sorted(set(groups[test].tolist())),
            "head_bias": trainer.head_bias(), "learning_rate": trainer.learning_rate, "metrics": metrics,
            "wall_s": round(wall, 1),
            "predictions": [{"image_id": image_ids[i], "prob": float(p)} for i, p in zip(test, prob)],
            "_cams": cam.astype(np.float32)}


def _summarise_backbone(backbone: str, records: list[dict], rows: list[dict], labels, wall: float) -> dict:
    prob = {}
    fold = {}
    for rec in records:
        for p in rec["predictions"]:
            if p["image_id"] in prob:
                raise AssertionError(f"{backbone}: image {p['image_id']} predicted by two folds")
            prob[p["image_id"]], fold[p["image_id"]] = p["prob"], rec["fold"]
    ids = [r["image_id"] for r in rows]
    missing = [i for i in ids if i not in prob]
    if missing:
        raise AssertionError(f"{backbone}: no out-of-fold prediction for {len(missing)} images, e.g. {missing[:3]}")
    oof = np.array([prob[i] for i in ids])
    pooled = evaluate([r["patient_id"] for r in rows], labels, oof)
    return {"pooled": pooled,
            "folds": [{k: rec[k] for k in ("fold", "metrics", "best_epoch", "epochs_run", "n_fit", "n_val",
                                           "n_test", "wall_s", "history", "class_weight", "head_bias")}
                      for rec in records],
            "fold_wall_s": round(sum(rec["wall_s"] for rec in records), 1),
            "wall_s_this_invocation": round(wall, 1),
            "oof": {"prob": oof.tolist(), "fold": [fold[i] for i in ids]}}


def _final_model(cfg, backbone, result, trainer, rois, labels, run: Path, sha: str, log) -> dict:
    """Retrain the selected backbone on all patients for the median best epoch of its folds."""
    epochs = max(1, int(round(statistics.median(f["best_epoch"] for f in result["folds"]))))
    marker, model_path = run / "final.json", run / "model.keras"
    if marker.is_file() and model_path.is_file():
        prev = json.loads(marker.read_text(encoding="utf-8"))
        if prev.get("settings_sha") == sha and prev.get("backbone") == backbone and prev.get("epochs") == epochs:
            log.info("final model: done before, skipped (%s)", model_path)
            return prev
    t0 = time.perf_counter()
    if trainer is None:
        trainer = BackboneTrainer(backbone, cfg, log)
    trainer.reset()
    log.info("final model: %s on all %d images for %d epochs (median best epoch of the folds)", backbone,
             len(labels), epochs)
    out = trainer.fit(rois, labels, 0, epochs, f"{backbone} final")
    tmp = run / "model.tmp.keras"
    trainer.model.save(tmp)
    os.replace(tmp, model_path)
    rec = {"backbone": backbone, "epochs": epochs, "settings_sha": sha, "history": out["history"],
           "n_images": len(labels), "head_bias": trainer.head_bias(),
           "cam_shape": [int(d) for d in trainer.model.get_layer("cam").output.shape[1:]],
           "wall_s": round(time.perf_counter() - t0, 1), "file": "model.keras"}
    _write_json(marker, rec)
    log.info("final model: %s (%.0f s)", model_path, rec["wall_s"])
    return rec


def _write_oof(path: Path, backbones: list[str], results: dict, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(OOF_COLUMNS)
        for b in backbones:
            oof = results[b]["oof"]
            for r, p, k in zip(rows, oof["prob"], oof["fold"]):
                w.writerow([r["image_id"], r["patient_id"], r["group"], r["label"], b, k, f"{p:.6f}"])
    os.replace(tmp, path)


def _gradcam_overlays(run: Path, backbone: str, result: dict, rows: list[dict], rois) -> list[dict]:
    """Out-of-fold Grad-CAM (= CAM for this head) of the most confident right and wrong calls per class."""
    from converters.gradcam import write_overlay

    out_dir = run / "gradcam"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    prob = np.array(result["oof"]["prob"])
    fold = result["oof"]["fold"]
    y = np.array([r["label"] for r in rows])
    thr = result["pooled"]["image"].get("threshold")
    thr = 0.5 if thr is None else thr
    pred = (prob >= thr).astype(int)
    cams, bias = {}, {}
    for f in result["folds"]:
        with np.load(run / "folds" / backbone / f"fold{f['fold']}.npz") as z:
            cams.update(zip(z["image_ids"].tolist(), z["cam"]))
        bias[f["fold"]] = f["head_bias"]
    written = []
    for label, name in ((1, "NOA"), (0, "OA")):
        for correct in (True, False):
            idx = np.flatnonzero((y == label) & ((pred == label) == correct))
            confidence = np.where(pred[idx] == 1, prob[idx], 1 - prob[idx])
            for rank, i in enumerate(idx[np.argsort(-confidence, kind="stable")][:GRADCAM_PER_CATEGORY]):
                r = rows[i]
                shown = "NOA" if pred[i] else "OA"
                cat = f"{name}_{'correct' if correct else 'wrong'}"
                path = out_dir / f"{cat}_{rank + 1}_{r['image_id']}.png"
                write_overlay(path, rois[i], cams[r["image_id"]], bias[fold[i]], bool(pred[i]),
                              [f"{r['image_id']} {r['group']} fold {fold[i]}",
                               f"p(NOA)={prob[i]:.2f} thr {thr:.2f} -> {shown}", f"evidence for {shown}"])
                written.append({"file": f"gradcam/{path.name}", "category": cat, "image_id": r["image_id"],
                                "group": r["group"], "prob": float(prob[i]), "fold": fold[i]})
    return written


# ------------------------------------------------------------------------------------------ report
def _fmt(x, d=3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def _ci_text(m: dict) -> str:
    ci = m.get("auc_ci")
    return f"(95% CI {ci[0]:.3f}–{ci[1]:.3f})" if ci else "(no CI)"


def _figure_png(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _roc_figure(report: dict, level: str, labels: np.ndarray, groups: np.ndarray) -> str:
    """Every backbone's pooled OOF ROC; its probabilities are in the cohort's row order, like labels/groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from converters.stats import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, res in report["backbones"].items():
        y, p = labels, np.array(res["oof"]["prob"])
        if level == "patient":
            _, y, p = patient_level(groups, y, p)
        rc = roc_curve(y, p)
        auc = res["pooled"][level]["auc"]
        ax.plot(1 - rc["specificity"], rc["sensitivity"], label=f"{name} (AUC {_fmt(auc)})")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"Pooled out-of-fold ROC, {level} level")
    ax.legend(loc="lower right", fontsize=8)
    return _figure_png(fig)


def _curves_figure(name: str, res: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for f in res["folds"]:
        h = f["history"]
        ep = np.arange(1, len(h.get("loss", [])) + 1)
        line, = axes[0].plot(ep, h.get("loss", []), marker="o", ms=2, label=f"fold {f['fold']} train")
        if "val_loss" in h:
            axes[0].plot(ep, h["val_loss"], ls="--", marker="o", ms=2, color=line.get_color(), label=f"fold {f['fold']} val")
            axes[0].axvline(f["best_epoch"], color=line.get_color(), lw=0.6, alpha=0.5)
        if "val_auc" in h:
            axes[1].plot(ep, h["val_auc"], marker="o", ms=2, color=line.get_color(), label=f"fold {f['fold']}")
    axes[0].set_title(f"{name}: loss (dashed = inner validation)")
    axes[0].set_xlabel("epoch")
    axes[1].set_title("inner-validation AUC")
    axes[1].set_xlabel("epoch")
    axes[0].legend(fontsize=6, ncol=2)
    return _figure_png(fig)


def _html_report(report: dict, run: Path, labels: np.ndarray, groups: np.ndarray) -> str:
    import base64
    from html import escape

    def metric_cells(m):
        ci = m.get("auc_ci")
        ci_txt = f" [{ci[0]:.3f}–{ci[1]:.3f}]" if ci else ""
        return (f"<td>{m['n']} ({m['n_noa']}/{m['n_oa']})</td><td>{_fmt(m.get('auc'))}{ci_txt}</td>"
                f"<td>{_fmt(m.get('accuracy'))}</td><td>{_fmt(m.get('sensitivity'))}</td>"
                f"<td>{_fmt(m.get('specificity'))}</td><td>{_fmt(m.get('threshold'))}</td>")

    head = ("<tr><th></th><th>n (NOA/OA)</th><th>AUC [DeLong 95% CI]</th><th>accuracy</th><th>sensitivity</th>"
            "<th>specificity</th><th>Youden threshold</th>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>noa-edge CV report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>Cross-validation report: NOA vs OA</h1>",
             f"<p class='method'>Dataset {escape(report['dataset'])} (sha256 {report['dataset_sha256'][:16]}…); "
             f"{report['cohort']['images']} images ({report['cohort']['images_noa']} NOA / "
             f"{report['cohort']['images_oa']} OA) of {report['cohort']['patients']} patients; "
             f"{report['folds']}-fold StratifiedGroupKFold by patient, seed {report['seed']}; "
             f"input {report['input_size']} px.</p>",
             f"<p><b>Selected backbone: {escape(report['selected_backbone'])}</b> ({escape(report['selection'])}); "
             f"final model retrained on all patients for {report['final_model']['epochs']} epochs.</p>",
             "<h2>Summary (pooled out-of-fold)</h2><table>",
             "<tr><th>backbone</th><th>image AUC [95% CI]</th><th>patient AUC [95% CI]</th><th>image accuracy</th>"
             "<th>sensitivity</th><th>specificity</th><th>fold wall time</th></tr>"]
    for name, res in report["backbones"].items():
        im, pa = res["pooled"]["image"], res["pooled"]["patient"]
        parts.append(f"<tr><td>{escape(name)}</td><td>{_fmt(im['auc'])} {_ci_text(im)}</td>"
                     f"<td>{_fmt(pa['auc'])} {_ci_text(pa)}</td><td>{_fmt(im.get('accuracy'))}</td>"
                     f"<td>{_fmt(im.get('sensitivity'))}</td><td>{_fmt(im.get('specificity'))}</td>"
                     f"<td>{res['fold_wall_s']:.0f} s</td></tr>")
    parts.append("</table>")
    parts.append(f"<img alt='ROC image level' src='data:image/png;base64,{_roc_figure(report, 'image', labels, groups)}'>")
    parts.append(f"<img alt='ROC patient level' src='data:image/png;base64,{_roc_figure(report, 'patient', labels, groups)}'>")
    for name, res in report["backbones"].items():
        parts.append(f"<h2>{escape(name)}</h2>")
        for level in ("image", "patient"):
            parts.append(f"<h3>{level} level</h3><table>{head}<th>best epoch</th><th>wall</th></tr>")
            for f in res["folds"]:
                parts.append(f"<tr><td>fold {f['fold']}</td>{metric_cells(f['metrics'][level])}"
                             f"<td>{f['best_epoch']}/{f['epochs_run']}</td><td>{f['wall_s']:.0f} s</td></tr>")
            parts.append(f"<tr><td><b>pooled</b></td>{metric_cells(res['pooled'][level])}<td></td><td></td></tr>"
                         "</table>")
        parts.append(f"<img alt='training curves {escape(name)}' "
                     f"src='data:image/png;base64,{_curves_figure(name, res)}'>")
    parts.append("<h2>Grad-CAM (out-of-fold models, selected backbone)</h2><p class='method'>For this head "
                 "Grad-CAM equals the in-graph CAM up to a positive scale; each map shows the evidence for the "
                 "predicted class, normalised to its own maximum.</p><div>")
    for g in report["gradcam"]:
        data = base64.b64encode((run / g["file"]).read_bytes()).decode()
        parts.append(f"<figure style='display:inline-block;margin:4px'><img src='data:image/png;base64,{data}'>"
                     f"<figcaption>{escape(g['category'])}</figcaption></figure>")
    parts.append("</div><h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


_CSS = """body{font-family:'DejaVu Sans',Arial,sans-serif;max-width:1050px;margin:24px auto;padding:0 16px;color:#222;
font-size:14px}h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0 16px;font-size:12.5px}th,td{border:1px solid #ccc;
padding:3px 7px;text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.method{color:#555;font-size:12.5px}img{max-width:100%}figcaption{font-size:11px;text-align:center}"""


# --------------------------------------------------------------------------------------------- CLI
def register(app) -> None:
    import typer

    @app.command("train")
    def train_cmd(
        dataset: Path = typer.Argument(..., help="Dataset directory (see docs/CONTRACTS.md)."),
        out: Path = typer.Option(..., "--out", "-o", help="Run directory (re-running the same one resumes)."),
        backbones: str = typer.Option(",".join(BACKBONES), "--backbones",
                                      help="Comma-separated subset of " + ", ".join(BACKBONES) + "."),
        folds: int = typer.Option(None, "--folds", help="Cross-validation folds by patient [5; --quick 2]."),
        epochs: int = typer.Option(None, "--epochs", help="Maximum epochs per fold [30; --quick 1]."),
        batch_size: int = typer.Option(16, "--batch-size"),
        input_size: int = typer.Option(None, "--input-size", help="Model input side in px [224; --quick 64]."),
        seed: int = typer.Option(0, "--seed"),
        patience: int = typer.Option(5, "--patience", help="Early-stopping patience (epochs) on the inner validation AUC."),
        weights: str = typer.Option(None, "--weights",
                                    help="Local Keras no-top .h5: PATH (one backbone) or NAME=PATH,NAME=PATH. "
                                    "Without it, weights start from scratch (nothing is downloaded)."),
        include_controls: bool = typer.Option(False, "--include-controls", help="Add controls as label 0."),
        quick: bool = typer.Option(False, "--quick", help="Smoke run: 64 px, 1 epoch, 2 folds, <= 40 images."),
        max_images: int = typer.Option(None, "--max-images", help="Class-balanced patient subsample [--quick 40]."),
        learning_rate: float = typer.Option(None, "--learning-rate", help="Adam [1e-3 from scratch, 1e-4 with weights]."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars or log lines on the terminal."),
    ) -> None:
        """Train the backbones with patient-grouped CV, pick the best, save RUN/model.keras + reports."""
        from converters.dataset import DatasetError

        try:
            cfg = make_config(dataset, out, backbones, folds, epochs, batch_size, input_size, seed, patience,
                              weights, include_controls, quick, max_images, learning_rate, progress=not quiet)
            report = train(cfg)
        except (TrainError, WeightsError, TrainExtraMissing) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        except DatasetError as exc:
            typer.echo(f"error: dataset {dataset}: {exc}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.echo(f"interrupted; finished folds are kept in {out}/folds (re-run the same command to resume)",
                       err=True)
            raise typer.Exit(130)
        except Exception as exc:  # never a traceback: the log file has it
            typer.echo(f"error: training failed: {type(exc).__name__}: {exc} (details in {out}/train.log)", err=True)
            raise typer.Exit(1)
        sel = report["selected_backbone"]
        im = report["backbones"][sel]["pooled"]["image"]
        for name, res in report["backbones"].items():
            m = res["pooled"]["image"]
            typer.echo(f"{name:<15} pooled OOF AUC {_fmt(m['auc'])} {_ci_text(m)}  "
                       f"patient {_fmt(res['pooled']['patient']['auc'])}  folds {res['fold_wall_s']:.0f} s")
        typer.echo(f"selected {sel} (AUC {_fmt(im['auc'])}); wrote {out}/model.keras, {out}/cv_report.html, "
                   f"{out}/oof_predictions.csv")
