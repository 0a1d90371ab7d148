"""The data a training run sees: which images, their ROI crops, and how they are split by patient.

`dataset_sha256`: the dataset's identity (resume only reuses folds of the same data); `select_images`:
the NOA (1) vs OA (0) images (controls as 0 on request), with a reproducible class-balanced patient
subsample; `load_rois`: every ROI cropped once and cached in RUN/cache; `make_folds`: StratifiedGroupKFold
by patient, every fold with both classes, checked before any training; `inner_validation_split`: the
patient-grouped validation part of a fold's training patients that drives early stopping.
scikit-learn is imported inside the functions ([train] extra).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from converters.errors import TrainError
from edge.bundle import sha256_file
from edge.imaging import DECODER_VERSION

INNER_VALIDATION_SPLITS = 5   # inner split: ~1/5 of the training patients validate (early stopping)


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
    what = ("NOA, OA or control" if include_controls
            else "NOA or OA (controls are excluded; --include-controls adds them as 0)")
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
    for g, y in zip(groups, labels, strict=False):
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

    # keyed by the decoder's version: a cache made by an older decoder (other frame, no VOI LUT) is not reused
    path = cache_dir / f"rois_{size}_{dataset_sha[:16]}_d{DECODER_VERSION}.npz"
    cached: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as z:
            cached = dict(zip(z["image_ids"].tolist(), z["rois"], strict=False))
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
