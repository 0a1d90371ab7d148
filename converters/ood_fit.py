"""Fit and write a bundle's out-of-distribution description (edge/ood.py says what it is and why).

`add_ood(BUNDLE, DATASET)` is the whole step, for a new bundle (called at the end of `noa-edge convert`) and
for a shipped one (`noa-edge bundle-ood BUNDLE DATASET`, no retraining):
1. every .tflite variant gets the `features` output (converters/tflite_features.py; a no-op when present);
   `prob` and `cam` do not change, so fidelity.json stays true; the Edge TPU preflight is run again on int8;
2. the features of the training ROIs (OA and NOA, the images the model was trained on) by every variant,
   through the device runtime (edge.runtime.ModelRunner), cropped by the device's crop (edge.preprocess);
3. fit: class means + a probabilistic-PCA tied covariance of the square-rooted features (edge/ood.py); one
   description for every variant, fitted on all fp32 features;
4. threshold per variant: the 99th percentile of that variant's out-of-fold scores. The patients are split
   into 5 folds (whole patients, class by class); each fold is scored by a description fitted on the other
   ~80 % of patients, so every training ROI is scored once as held out: 550 held-out scores instead of the
   110 of a single 80/20 split, a steadier 99th percentile (in an exploratory run on the demo bundle the
   single split's threshold flagged 3 % of new phantom patients' ROIs, the out-of-fold one 1 %). Quantized
   features sit further from the fp32 means: with the fp32 threshold int8 flags every image
   (benchmarks/RESULTS.md), so each variant gets its own threshold;
5. ood.npz written, manifest `ood` entry, `outputs.features`, `provenance.ood` (tool, code version, dataset)
   and every hash rewritten (edge.bundle.finalize_manifest), then the bundle is verified.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from converters.bundle_docs import code_version
from converters.errors import ConvertError
from converters.tflite_features import FEATURES, with_features
from edge.bundle import MANIFEST, PREFLIGHT, finalize_manifest, sha256_file, verify
from edge.ood import SCHEMA, OODGuard, scores, to_npz_bytes, transform
from edge.preprocess import crop_roi
from edge.runtime import ModelRunner

OOD_FILE = "ood.npz"
QUANTILE = 0.99
FOLDS = 5             # out-of-fold thresholds: each fold is held out once, fit on the other 4/5 of patients
MAX_COMPONENTS = 32   # principal directions kept; each needs many ROIs (>= 10 per direction here)
METHOD = ("min over classes of squared Mahalanobis distance; class means + tied probabilistic-PCA covariance "
          "(top-k within-class directions + isotropic residual)")


def _log(msg: str) -> None:
    print(f"[ood] {msg}", flush=True)


def patient_folds(rows: list[dict], folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Fold number of every row: whole patients, class by class in a seeded order, dealt round-robin."""
    fold_of: dict[str, int] = {}
    for label in sorted({r["label"] for r in rows}):
        patients = sorted({r["patient_id"] for r in rows if r["label"] == label})
        random.Random(seed).shuffle(patients)
        fold_of.update({pid: i % folds for i, pid in enumerate(patients)})
    return np.array([fold_of[r["patient_id"]] for r in rows])


def extract(model_path: Path, variant: str, dataset, rows: list[dict], size: int) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, C), probabilities (N,)) of `rows` by the device runtime on the model at `model_path`."""
    runner = ModelRunner(model_path, variant=variant)
    if not runner.has_features:
        raise ConvertError(f"{model_path.name}: no '{FEATURES}' output (add it with noa-edge bundle-ood)")
    feats, probs = [], []
    for row in rows:
        prob, _ = runner.run(crop_roi(dataset.read_image(row), row["roi"], size))
        assert runner.last_features is not None
        feats.append(runner.last_features.astype(np.float32))
        probs.append(prob)
    return np.stack(feats), np.asarray(probs)


def fit_description(features: np.ndarray, labels: np.ndarray, max_components: int = MAX_COMPONENTS) -> dict:
    """Class means (K, C) and the probabilistic-PCA tied covariance of the within-class residuals."""
    x = transform(features)
    classes = sorted({int(v) for v in labels})
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    n, dim = centred.shape
    k = int(min(max_components, max(1, n // 10), dim - 1))
    # eigen-decomposition of the within-class covariance through the SVD of the centred data (n < C)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    eig = s ** 2 / max(n - len(classes), 1)
    residual = float((eig.sum() - eig[:k].sum()) / (dim - k))
    if residual <= 0:
        raise ConvertError("the training features have no residual variance (too few distinct ROIs?)")
    return {"classes": classes, "means": means, "components": vt[:k], "eigenvalues": eig[:k],
            "residual_variance": residual, "explained": float(eig[:k].sum() / eig.sum())}


def guard_of(desc: dict, thresholds: dict | None = None) -> OODGuard:
    return OODGuard(desc["means"], desc["components"], desc["eigenvalues"], desc["residual_variance"],
                    dict(thresholds or {}), QUANTILE, METHOD)


def threshold_of(values: np.ndarray, quantile: float = QUANTILE) -> float:
    return float(np.quantile(np.asarray(values, np.float64), quantile))


def _tflite_variants(manifest: dict) -> dict[str, dict]:
    return {k: v for k, v in manifest["variants"].items() if str(v["file"]).endswith(".tflite") and k != "edgetpu"}


def add_features_outputs(bundle: Path, manifest: dict) -> list[str]:
    """The `features` output on every .tflite variant; returns the variants whose file changed."""
    changed = []
    for name, spec in _tflite_variants(manifest).items():
        path = bundle / spec["file"]
        buf = path.read_bytes()
        new = with_features(buf)
        if new is not buf:
            path.write_bytes(new)
            changed.append(name)
    if "edgetpu" in manifest["variants"] and changed:
        raise ConvertError("the bundle has a compiled Edge TPU model: convert again (the int8 model changed "
                           "and must be compiled again with edgetpu_compiler)")
    if "int8" in changed:
        from converters.edgetpu_preflight import preflight as run_preflight
        from converters.edgetpu_preflight import run_compiler

        int8 = bundle / manifest["variants"]["int8"]["file"]
        pre = run_preflight(int8)
        pre["model"] = int8.name
        pre["compiler"] = run_compiler(int8, bundle)
        (bundle / PREFLIGHT).write_text(json.dumps(pre, separators=(",", ":")) + "\n")
        manifest["edgetpu_preflight"] = {"verdict": pre["verdict"], "passes": pre["passes"],
                                         "compiler": {k: pre["compiler"].get(k)
                                                      for k in ("available", "command", "subgraphs", "ops_tpu",
                                                                "ops_cpu", "on_chip_memory", "off_chip_memory")}}
        _log(f"Edge TPU preflight (int8 with features): {pre['verdict']}")
    return changed


def add_ood(bundle_dir: str | Path, dataset_dir: str | Path, seed: int = 0, tool: str = "noa-edge bundle-ood") -> dict:
    """Steps 1-5 of the module docstring on the bundle in `bundle_dir`; returns the new manifest. The work is
    done on a copy next to it; only then are the changed files moved in, manifest.json last, so a daemon or a
    test reading the bundle meanwhile never sees a half-edited one."""
    bundle = Path(bundle_dir)
    problems = verify(bundle)
    if problems:
        raise ConvertError(f"{bundle}: not a valid bundle, fix it first:\n  " + "\n  ".join(problems))
    stage = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.ood-", dir=bundle.parent))
    try:
        shutil.copytree(bundle, stage, dirs_exist_ok=True)
        manifest = _add_ood(stage, dataset_dir, seed, tool)
        kept = {path.name for path in stage.iterdir()}
        for path in sorted(stage.iterdir(), key=lambda p: p.name == MANIFEST):
            target = bundle / path.name
            if not target.is_file() or sha256_file(target) != sha256_file(path):
                os.replace(path, target)
        for path in bundle.iterdir():
            if path.is_file() and path.name not in kept:
                path.unlink()  # e.g. manifest.sig: it signed the previous manifest
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    problems = verify(bundle)
    if problems:
        raise ConvertError(f"{bundle}: the bundle does not verify after the OOD step:\n  " + "\n  ".join(problems))
    return manifest


def _add_ood(bundle: Path, dataset_dir: str | Path, seed: int, tool: str) -> dict:
    from converters.dataset import DatasetError, load_dataset
    from converters.train_data import dataset_sha256

    manifest = json.loads((bundle / MANIFEST).read_text())
    try:
        data = load_dataset(dataset_dir, check_images=False)
    except DatasetError as exc:
        raise ConvertError(f"dataset {dataset_dir}: {exc}") from exc
    digest = dataset_sha256(data)
    trained_on = manifest.get("provenance", {})
    if data.meta.get("name") != trained_on.get("dataset"):
        raise ConvertError(f"dataset {dataset_dir} is {data.meta.get('name')!r}, the bundle was trained on "
                           f"{trained_on.get('dataset')!r}: describe the distribution the model was trained on")
    if digest != trained_on.get("dataset_sha256"):
        _log(f"note: dataset sha256 {digest[:12]} differs from the bundle's "
             f"{str(trained_on.get('dataset_sha256'))[:12]} (same name; a regenerated dataset.json changes it)")
    size = int(manifest["input"]["shape"][1])

    changed = add_features_outputs(bundle, manifest)
    _log(f"features output added to {', '.join(changed) or 'no variant (all had it)'}")
    rows = data.labelled_images(include_controls=False)
    labels = np.array([r["label"] for r in rows])
    fold = patient_folds(rows, FOLDS, seed)
    variants = _tflite_variants(manifest)
    if "fp32" not in variants:
        raise ConvertError(f"{bundle}: the OOD description is fitted on the fp32 model, which this bundle lacks")
    features = {}
    for name, spec in variants.items():
        _log(f"{name} features of {len(rows)} training ROIs")
        features[name], _ = extract(bundle / spec["file"], name, data, rows, size)
    oof = {name: np.zeros(len(rows)) for name in variants}
    for k in range(FOLDS):
        guard = guard_of(fit_description(features["fp32"][fold != k], labels[fold != k]))
        for name in variants:
            oof[name][fold == k] = scores(guard, features[name][fold == k])
    desc = fit_description(features["fp32"], labels)
    thresholds, rates = {}, {}
    for name in variants:
        thresholds[name] = threshold_of(oof[name])
        rates[name] = float(np.mean(oof[name] > thresholds[name]))
        _log(f"{name}: threshold {thresholds[name]:.1f} (99th percentile of {len(rows)} out-of-fold scores)")

    (bundle / OOD_FILE).write_bytes(to_npz_bytes(desc["means"], desc["components"], desc["eigenvalues"],
                                                 desc["residual_variance"]))
    manifest["outputs"] = {**manifest["outputs"], FEATURES: FEATURES}
    manifest["ood"] = {
        "schema": SCHEMA, "file": OOD_FILE, "method": METHOD, "features": FEATURES,
        "feature_dim": int(desc["means"].shape[1]), "components": int(desc["components"].shape[0]),
        "explained_within_class_variance": round(desc["explained"], 4),
        "classes": [manifest["labels"]["negative"] if c == 0 else manifest["labels"]["positive"]
                    for c in desc["classes"]],
        "fitted_on": "fp32", "quantile": QUANTILE, "thresholds": thresholds,
        "transform": "sqrt",
        "threshold_basis": f"{QUANTILE:.0%} quantile of each variant's out-of-fold scores on the training ROIs "
                           f"({FOLDS} folds of whole patients, each scored by a description fitted on the others)",
        "fit": {"rois": len(rows), "patients": len({r["patient_id"] for r in rows})},
        "out_of_fold": {"folds": FOLDS, "flag_rate": rates}, "split_seed": seed,
    }
    manifest.setdefault("provenance", {})["ood"] = {
        "tool": tool, "code_version": code_version(), "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": data.meta.get("name"), "dataset_sha256": digest, "features_added_to": changed}
    _model_card_section(bundle / "MODEL_CARD.md", manifest["ood"])
    return finalize_manifest(bundle, manifest)


CARD_SECTION = "\n## Out-of-distribution guard\n"


def _model_card_section(card: Path, ood: dict) -> None:
    """Append (or replace) the model card's section on the guard: what it flags and how often by design."""
    if not card.is_file():
        return
    text = card.read_text().split(CARD_SECTION)[0].rstrip("\n") + "\n"
    rates = ", ".join(f"{k} {v:.1%}" for k, v in ood["out_of_fold"]["flag_rate"].items())
    card.write_text(text + CARD_SECTION + "\n"
                    "Every analysis scores the model's pooled features against the training ROIs "
                    f"({ood['fit']['rois']} ROIs, {ood['fit']['patients']} patients): {ood['method']}. "
                    "An image above its variant's "
                    f"threshold (the {ood['quantile']:.0%} quantile of out-of-fold training scores; flagged out of "
                    f"fold: {rates}) is shown as \"image unlike the training data — result not reliable\". Measured "
                    "detection and false-alarm rates: benchmarks/RESULTS.md (out-of-distribution guard).\n")
