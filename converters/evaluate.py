"""`noa-edge evaluate BUNDLE_OR_RUN DATASET`: external validation of a frozen model + nomogram.

Scores a new cohort with no refit and the development threshold carried over. DL probabilities come from
a precomputed CSV (--dl-probs), the run's RUN/model.keras (keras, ROIs cropped as on the device), or the
bundle's CPU variant through the device runtime; then AUC (DeLong CI), DL-alone AUC and the paired test,
sensitivity/specificity at the threshold (default: the frozen one; `--threshold`, converters.operating_point),
calibration-in-the-large and slope, Brier score, and the same at patient level (`patient`).
Unit of prediction: one testis image. Heavy imports (scipy, keras) stay inside functions.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from converters.errors import NomogramInputError
from converters.nomogram import jsonable
from edge.nomogram import Nomogram, NomogramError


def read_prob_csv(path: Path) -> dict[str, float]:
    """A precomputed DL probability source: CSV with image_id and prob columns."""
    path = Path(path)
    if not path.is_file():
        raise NomogramInputError(f"{path}: no such file")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        for col in ("image_id", "prob"):
            if col not in (reader.fieldnames or []):
                raise NomogramInputError(f"{path}: missing column {col!r}")
        out = {}
        for line, r in enumerate(reader, start=2):
            try:
                out[r["image_id"]] = float(r["prob"])
            except ValueError:
                raise NomogramInputError(f"{path}: row {line}, column prob: {r['prob']!r} is not a number") from None
    return out


def load_frozen(source: Path) -> tuple[dict, str]:
    """nomogram dict and the kind of source: "bundle" (verified with edge.bundle.load) or "run"."""
    source = Path(source)
    if (source / "manifest.json").is_file():
        from edge.bundle import BundleError, load

        try:
            return load(source).nomogram, "bundle"
        except BundleError as exc:
            raise NomogramInputError(str(exc)) from None
    if (source / "nomogram.json").is_file():
        return json.loads((source / "nomogram.json").read_text()), "run"
    raise NomogramInputError(f"{source}: neither a bundle (manifest.json) nor a run with nomogram.json "
                             "(run `noa-edge nomogram RUN` first)")


def score_images_with_keras(run_dir: Path, ds, rows: list[dict], progress: bool = True) -> dict[str, float]:
    """DL probabilities from RUN/model.keras on ROIs cropped exactly as on the device."""
    from converters import require_train_extra
    from edge.preprocess import crop_roi

    require_train_extra("tensorflow")
    import keras
    from tqdm import tqdm

    path = run_dir / "model.keras"
    if not path.is_file():
        raise NomogramInputError(f"{path}: missing; pass --dl-probs CSV or a run with a trained model")
    model = keras.models.load_model(path, compile=False)
    size = int(model.inputs[0].shape[1])
    names = list(getattr(model, "output_names", None) or [])
    out = {}
    batch = 16
    for start in tqdm(range(0, len(rows), batch), desc="scoring images (keras)", disable=not progress):
        chunk = rows[start:start + batch]
        x = np.stack([crop_roi(ds.read_image(r), r["roi"], size) for r in chunk])
        pred = model(x, training=False)
        if isinstance(pred, dict):
            prob = pred["prob"]
        elif isinstance(pred, (list, tuple)):
            if "prob" not in names:
                raise NomogramInputError(f"{path}: no output named 'prob' (outputs: {names})")
            prob = pred[names.index("prob")]
        else:
            prob = pred
        for r, p in zip(chunk, np.asarray(prob).reshape(len(chunk), -1)[:, 0], strict=False):
            out[r["image_id"]] = float(p)
    return out


def score_images_with_bundle(bundle_dir: Path, ds, rows: list[dict], variant: str | None = None,
                             progress: bool = True) -> dict[str, float]:
    """DL probabilities from the bundle's CPU variant (or `variant`) through the device runtime."""
    from tqdm import tqdm

    from edge.bundle import BundleError, load
    from edge.preprocess import crop_roi

    try:
        runner = load(bundle_dir).runner(target="cpu", variant=variant)
    except BundleError as exc:
        raise NomogramInputError(str(exc)) from None
    size = int(runner.input_shape[1])
    out = {}
    for r in tqdm(rows, desc=f"scoring images ({runner.variant})", disable=not progress):
        prob, _ = runner.run(crop_roi(ds.read_image(r), r["roi"], size))
        out[r["image_id"]] = float(prob)
    return out


def evaluate(source: str | Path, dataset, dl_probs: str | Path | None = None, variant: str | None = None,
             progress: bool = True, threshold: str = "frozen") -> dict:
    """External validation of a frozen model + nomogram: no refit, the development threshold carried over
    (threshold="frozen"), or a rule of converters.operating_point; youden/sens=/spec= are then chosen on
    THIS cohort, which the report says (an optimistic, not a pre-specified, cut-off)."""
    from converters import stats
    from converters.dataset import load_dataset
    from converters.operating_point import parse_threshold, patient_block, resolve_threshold

    source = Path(source)
    rule = parse_threshold(threshold, allow_frozen=True)
    spec, kind = load_frozen(source)
    try:
        nomo = Nomogram(spec)
    except NomogramError as exc:
        raise NomogramInputError(f"{source}: {exc}") from None
    ds = dataset if hasattr(dataset, "labelled_images") else load_dataset(Path(dataset), check_images=dl_probs is None)
    rows = ds.labelled_images(include_controls=False)
    if dl_probs is not None:
        probs = read_prob_csv(Path(dl_probs))
        prob_source = f"precomputed ({dl_probs})"
    elif kind == "run":
        probs = score_images_with_keras(source, ds, rows, progress)
        prob_source = f"{source / 'model.keras'} (keras)"
    else:
        probs = score_images_with_bundle(source, ds, rows, variant, progress)
        prob_source = f"{source} (bundle, device runtime)"
    scored, excluded = [], {}
    for r in rows:
        if r["image_id"] not in probs:
            excluded["no DL probability"] = excluded.get("no DL probability", 0) + 1
            continue
        values = {**r, "dl_probability": probs[r["image_id"]]}
        try:
            res = nomo.predict(values)
        except NomogramError as exc:
            reason = str(exc).split(";")[0]
            reason = "missing input" if "missing" in reason else "input outside plausible range"
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        scored.append((r, res, probs[r["image_id"]]))
    if not scored:
        raise NomogramInputError(f"no image of {ds.root} could be scored (excluded: {excluded})")
    y = np.array([r["label"] for r, _, _ in scored])
    p = np.array([res["probability"] for _, res, _ in scored])
    lp = np.array([res["lp"] for _, res, _ in scored])
    dl = np.array([d for _, _, d in scored])
    if y.min() == y.max():
        raise NomogramInputError(f"{ds.root}: the scored images are all {'NOA' if y[0] else 'OA'}: no AUC")
    auc = stats.delong_ci(y, p)
    dl_auc = stats.delong_ci(y, dl)
    if rule["kind"] == "frozen":
        thr, thr_rule, thr_method = nomo.threshold, "frozen", nomo.threshold_method
    else:
        chosen = resolve_threshold(rule, y, p)
        thr, thr_rule = chosen["threshold"], chosen["rule"]
        thr_method = "fixed" if rule["kind"] == "fixed" else f"{thr_rule} chosen on this cohort (optimistic)"
    at = stats.classification_metrics(y, p, thr)
    cal = stats.calibration_in_the_large_and_slope(y, lp)
    result = {
        "schema": "noa-edge.evaluation/1", "source": str(source), "source_kind": kind, "dl_probabilities": prob_source,
        "dataset": str(ds.root), "synthetic_demo": (ds.meta.get("source") or {}).get("kind") == "phantom",
        "auc": auc["auc"], "auc_ci": auc["ci"], "dl_auc": dl_auc["auc"], "dl_auc_ci": dl_auc["ci"],
        "nomogram_vs_dl": stats.delong_paired_test(y, p, dl),
        "threshold": thr, "threshold_rule": thr_rule, "threshold_method": thr_method,
        "frozen_threshold": nomo.threshold,
        "sensitivity": at["sensitivity"]["value"], "sensitivity_ci": at["sensitivity"]["ci"],
        "specificity": at["specificity"]["value"], "specificity_ci": at["specificity"]["ci"],
        "accuracy": at["accuracy"]["value"], "accuracy_ci": at["accuracy"]["ci"],
        "ppv": at["ppv"]["value"], "npv": at["npv"]["value"], "table": at["table"],
        **cal, "brier": stats.brier_score(y, p),
        "n_images": len(scored), "n_patients": len({r["patient_id"] for r, _, _ in scored}),
        "n_events": int(y.sum()), "excluded": excluded,
        "patient": patient_block([r["patient_id"] for r, _, _ in scored], y, p, thr),
        "notes": [n for n in (auc.get("note"), dl_auc.get("note")) if n] + cal["calibration_notes"],
        "unit_of_analysis": "testis image", "refit": False,
    }
    return jsonable(result)
