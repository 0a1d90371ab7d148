"""`noa-edge train DATASET --out RUN`: five backbones, patient-grouped k-fold CV, Grad-CAM, final model.

Flow: load + validate the dataset → pick NOA (1) vs OA (0) images → crop every ROI once (cached in
RUN/cache) → StratifiedGroupKFold by patient → per backbone and fold: an inner patient-grouped validation
split drives early stopping, the held-out patients get out-of-fold (OOF) probabilities and CAMs →
pooled OOF metrics pick the backbone → retrain it on all patients for the median best epoch →
RUN/model.keras (outputs "prob" and "cam"), Grad-CAM overlays, cv_report.json/html, run.json.
Images, ROI crops and folds: converters/train_data.py; the per-backbone Keras model: converters/backbone_trainer.py;
metrics and the report: converters/cv_report.py; the command line: converters/cli.py.

Each finished fold is written to RUN/folds/<backbone>/fold<k>.json (+ .npz with its CAMs) before the next
starts, so re-running the same command skips finished folds. TensorFlow graph tracing costs minutes per
backbone on 2 cores, so one compiled model per backbone is reset to its initial state for every fold
instead of being rebuilt; --quick runs eagerly, where tracing would cost more than its one epoch.
"""

from __future__ import annotations

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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from converters import cv_report, require_train_extra
from converters.backbone_trainer import EARLY_STOP_MONITOR, EARLY_STOP_WARMUP, BackboneTrainer, quiet_tensorflow
from converters.errors import TrainError
from converters.imagenet_weights import resolve_imagenet
from converters.models import BACKBONES, canonical_backbone, resolve_weights
from converters.precision import backbone_precision, cpu_bf16_flags, resolve_precision
from converters.train_data import dataset_sha256, inner_validation_split, load_rois, make_folds, select_images
from edge.bundle import sha256_file

QUICK_DEFAULTS = {"input_size": 64, "epochs": 1, "folds": 2, "max_images": 40}
DEFAULTS = {"input_size": 224, "epochs": 30, "folds": 5, "max_images": None}
MIN_INPUT_SIZE = 32           # keras.applications minimum (NASNetMobile)
LOG_NAME = "noa_edge.train"


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
    precision: str = "fp32"                       # resolved: fp32 | bf16 (converters/precision.py)
    precision_requested: str = "auto"

    def settings(self, dataset_sha: str, weight_shas: dict) -> dict:
        """Everything that changes fold results (resume only reuses folds made with the same settings)."""
        return {"dataset_sha256": dataset_sha, "folds": self.folds, "epochs": self.epochs,
                "batch_size": self.batch_size, "input_size": self.input_size, "seed": self.seed,
                "patience": self.patience, "include_controls": self.include_controls, "quick": self.quick,
                "max_images": self.max_images, "learning_rate": self.learning_rate,
                "weights_sha256": weight_shas, "precision": f"{self.precision} ({self.precision_requested})"}


def make_config(dataset, out, backbones: str | list[str] | None = None, folds=None, epochs=None,
                batch_size: int = 16, input_size=None, seed: int = 0, patience: int = 5,
                weights: str | None = None, include_controls: bool = False, quick: bool = False,
                max_images=None, learning_rate=None, progress: bool = True, precision: str = "auto") -> TrainConfig:
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
                      learning_rate=learning_rate, progress=progress,
                      precision=resolve_precision(precision, eager=quick), precision_requested=str(precision).lower())
    for name, value, low in (("--folds", cfg.folds, 2), ("--epochs", cfg.epochs, 1),
                             ("--batch-size", cfg.batch_size, 1), ("--input-size", cfg.input_size, MIN_INPUT_SIZE),
                             ("--patience", cfg.patience, 0)):
        if value < low:
            raise TrainError(f"{name} must be >= {low}, got {value}")
    if cfg.max_images is not None and cfg.max_images < 4:
        raise TrainError(f"--max-images must be >= 4, got {cfg.max_images}")
    if learning_rate is not None and not (0 < learning_rate < 1):
        raise TrainError(f"--learning-rate must be in (0, 1), got {learning_rate}")
    cfg.weights = parse_weights(weights, cfg.backbones, cfg.input_size)
    return cfg


def _weights_file(spec: str, backbone: str, input_size: int) -> str | None:
    """'imagenet' -> the backbone's ImageNet file (Keras cache or download); else a local file or nothing."""
    return resolve_imagenet(backbone, input_size) if spec == "imagenet" else resolve_weights(spec)


def parse_weights(spec: str | None, backbones: list[str], input_size: int = 224) -> dict:
    """'imagenet' (every backbone), 'PATH' (one file, for a single backbone) or 'NASNetMobile=PATH,
    MobileNetV2=imagenet'. Files must exist; ImageNet files come from the Keras cache or Keras' download."""
    if spec is None or spec.strip() == "":
        return {b: None for b in backbones}
    if "=" not in spec:
        if spec.strip() != "imagenet" and len(backbones) > 1:
            raise TrainError("--weights PATH fits one backbone only; with several backbones write "
                             "--weights NASNetMobile=PATH,MobileNetV2=PATH (backbones not listed start from scratch)")
        return {b: _weights_file(spec.strip(), b, input_size) for b in backbones}
    out = {b: None for b in backbones}
    for part in spec.split(","):
        name, _, path = part.partition("=")
        try:
            name = canonical_backbone(name)
        except ValueError as exc:
            raise TrainError(f"--weights: {exc}") from None
        if name not in out:
            raise TrainError(f"--weights names {name}, which is not in --backbones ({', '.join(backbones)})")
        out[name] = _weights_file(path.strip(), name, input_size)
    return out


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
            quiet_tensorflow()
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
    n_pat = {y: len({g for g, lab in zip(groups, labels, strict=False) if lab == y}) for y in (0, 1)}
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
                     auc, cv_report.ci_text(results[backbone]["pooled"]["image"]),
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

    cv_report.write_oof(run / "oof_predictions.csv", cfg.backbones, results, rows)
    gradcams = cv_report.gradcam_overlays(run, best_name, results[best_name], rows, rois)
    report = cv_report.build_report(cfg, dsha, rows, labels, n_pat, best_name, results, final, gradcams)
    per_backbone = {b: backbone_precision(cfg.precision, cfg.precision_requested, b) for b in cfg.backbones}
    precision = {"training": cfg.precision, "requested": cfg.precision_requested, "cpu_bf16_flags": cpu_bf16_flags(),
                 "per_backbone": per_backbone, "exported_model": "float32"}
    report["precision"] = precision
    _write_json(run / "cv_report.json", report)
    (run / "cv_report.html").write_text(cv_report.html_report(report, run, labels, groups), encoding="utf-8")
    run_json = {
        "dataset": str(Path(cfg.dataset).resolve()), "dataset_sha256": dsha, "input_size": cfg.input_size,
        "backbones": cfg.backbones, "selected_backbone": best_name, "seed": cfg.seed, "folds": cfg.folds,
        "epochs": cfg.epochs, "batch_size": cfg.batch_size, "patience": cfg.patience,
        "include_controls": cfg.include_controls, "quick": cfg.quick, "max_images": cfg.max_images,
        "weights": cfg.weights, "settings": settings, "precision": precision,
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
             cv_report.ci_text(results[best_name]["pooled"]["image"]), run / "model.keras", run / "cv_report.html")
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
    metrics = cv_report.evaluate(groups[test], labels[test], prob)
    wall = time.perf_counter() - t0
    log.info("%s: best epoch %d of %d, test AUC %s, %.0f s", desc, out["best_epoch"], out["epochs_run"],
             cv_report.fmt(metrics["image"]["auc"]), wall)
    return {"backbone": trainer.backbone, "fold": k + 1, "settings_sha": settings_sha, **out,
            "n_fit": len(fit), "n_val": len(val), "n_test": len(test),
            "val_patients": sorted(set(groups[val].tolist())), "test_patients": sorted(set(groups[test].tolist())),
            "head_bias": trainer.head_bias(), "learning_rate": trainer.learning_rate, "metrics": metrics,
            "wall_s": round(wall, 1),
            "predictions": [{"image_id": image_ids[i], "prob": float(p)} for i, p in zip(test, prob, strict=False)],
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
    pooled = cv_report.evaluate([r["patient_id"] for r in rows], labels, oof)
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
    trainer.export_model().save(tmp)  # float32 whatever the training precision
    os.replace(tmp, model_path)
    rec = {"backbone": backbone, "epochs": epochs, "settings_sha": sha, "history": out["history"],
           "n_images": len(labels), "head_bias": trainer.head_bias(),
           "cam_shape": [int(d) for d in trainer.model.get_layer("cam").output.shape[1:]],
           "wall_s": round(time.perf_counter() - t0, 1), "file": "model.keras"}
    _write_json(marker, rec)
    log.info("final model: %s (%.0f s)", model_path, rec["wall_s"])
    return rec
