"""`noa-edge nomogram RUN`: fit the nomogram on out-of-fold DL probabilities + clinical data.

Joins the training run's out-of-fold DL probabilities with the dataset's clinical columns, fits the
paper's logistic model (DL logit + FSH + volume + EDV, unpenalised ML like rms::lrm), writes the device
contract RUN/nomogram.json, the nomogram figure (converters/nomogram_figures.py), RUN/report.json (every
number) and a self-contained RUN/report.html laid out along TRIPOD+AI (converters/report_html.py).
External validation of the frozen result is converters/evaluate.py. Unit of prediction: one testis image
(that testis's volume and EDV, the patient's FSH); unit of resampling: the patient.
Heavy imports (scipy via converters.stats, matplotlib, keras) stay inside functions.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converters import tripod
from converters.errors import NomogramInputError
from edge.clinical import VARIABLES
from edge.nomogram import SCHEMA, Nomogram, nice_ticks, points_scaling

# name -> input source column, transform, label, unit, plausible range the device enforces, level; the
# clinical ones come from the one variable table (edge.clinical.VARIABLES).
CANDIDATES: dict[str, dict] = {
    "dl_logit": {"source": "dl_probability", "transform": "logit", "label": "DL probability", "unit": "",
                 "range": [0.001, 0.999], "level": "image"},
    **{name: {"source": name, "transform": "identity", "label": v.label, "unit": v.unit, "range": list(v.range),
              "level": v.level}
       for name, v in ((n, VARIABLES[n]) for n in ("fsh", "lh", "testosterone", "inhibin_b", "volume_ml",
                                                   "length_cm", "psv_cm_s", "edv_cm_s", "ri", "age"))},
}
DEFAULT_PREDICTORS = ["dl_logit", "fsh", "volume_ml", "edv_cm_s"]
CLINICAL_PREDICTORS = ["fsh", "volume_ml", "edv_cm_s"]
SCHOOR_FSH, SCHOOR_LONG_AXIS_CM = 7.6, 4.6
DL_PROB_CLIP = 1e-3  # logit of a saturated sigmoid: clip like the device does (range 0.001–0.999)


# ------------------------------------------------------------------------------------ inputs
def read_oof(run_dir: Path, backbone: str | None) -> tuple[dict[str, float], str, dict]:
    """RUN/oof_predictions.csv → {image_id: prob} for the selected backbone, the backbone, run.json."""
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise NomogramInputError(f"{run_json}: missing (is {run_dir} a `noa-edge train` output?)")
    try:
        run = json.loads(run_json.read_text())
    except json.JSONDecodeError as exc:
        raise NomogramInputError(f"{run_json}: not valid JSON ({exc})") from None
    path = run_dir / "oof_predictions.csv"
    if not path.is_file():
        raise NomogramInputError(f"{path}: missing")
    need = ["image_id", "patient_id", "label", "backbone", "prob"]
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise NomogramInputError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    available = sorted({r["backbone"] for r in rows})
    chosen = backbone or run.get("selected_backbone") or (available[0] if len(available) == 1 else None)
    if chosen is None:
        raise NomogramInputError(f"{run_json} has no selected_backbone and {path} holds {available}: pass --backbone")
    if chosen not in available:
        raise NomogramInputError(f"{path}: no rows for backbone {chosen!r} (has {', '.join(available) or 'none'})")
    probs = {}
    for line, r in enumerate(rows, start=2):
        if r["backbone"] != chosen:
            continue
        try:
            p = float(r["prob"])
        except ValueError:
            raise NomogramInputError(f"{path}: row {line}, column prob: {r['prob']!r} is not a number") from None
        if not 0 <= p <= 1:
            raise NomogramInputError(f"{path}: row {line}, column prob: {p} is not a probability")
        if r["image_id"] in probs:
            raise NomogramInputError(f"{path}: row {line}: image {r['image_id']!r} appears twice for {chosen}")
        probs[r["image_id"]] = p
    return probs, chosen, run


def load_dataset_for(run_dir: Path | None, run: dict | None, dataset: str | Path | None):
    """The dataset named by --dataset or RUN/run.json "dataset" (absolute, or relative to cwd or RUN)."""
    from converters.dataset import load_dataset

    given = dataset if dataset is not None else (run or {}).get("dataset")
    if not given:
        raise NomogramInputError(f"{run_dir}/run.json names no dataset: pass --dataset PATH")
    path = Path(given)
    if not path.exists() and run_dir is not None and (run_dir / path).exists():
        path = run_dir / path
    return load_dataset(path, check_images=False)


def joined_rows(ds, dl_probs: dict[str, float]) -> tuple[list[dict], dict]:
    """OA/NOA images with the patient's fields and the out-of-fold DL probability; flow counts."""
    labelled = ds.labelled_images(include_controls=False)
    rows, no_pred = [], 0
    for r in labelled:
        p = dl_probs.get(r["image_id"])
        if p is None:
            no_pred += 1
            continue
        rows.append({**r, "dl_probability": p})
    unknown = set(dl_probs) - {r["image_id"] for r in labelled}
    groups = {}
    for g in ("OA", "NOA", "control"):
        ids = {p["patient_id"] for p in ds.patients if p["group"] == g}
        groups[g] = {"patients": len(ids), "images": sum(i["patient_id"] in ids for i in ds.images)}
    flow = {"patients": len(ds.patients), "images": len(ds.images), "groups": groups,
            "controls_excluded": groups["control"],
            "oa_noa_images": len(labelled), "images_without_dl_prediction": no_pred,
            "predictions_not_in_dataset": len(unknown), "images_with_dl_prediction": len(rows)}
    return rows, flow


def design(rows: list[dict], predictors: list[str]) -> tuple[np.ndarray, np.ndarray, list[dict], dict]:
    """Complete-case design matrix (transformed predictors), outcome, kept rows, missing counts."""
    missing = {name: 0 for name in predictors}
    kept = []
    for r in rows:
        ok = True
        for name in predictors:
            if r.get(CANDIDATES[name]["source"]) is None:
                missing[name] += 1
                ok = False
        if ok:
            kept.append(r)
    X = np.array([[_transformed(name, r) for name in predictors] for r in kept], float)
    X = X.reshape(len(kept), len(predictors))
    y = np.array([r["label"] for r in kept], int)
    return X, y, kept, missing


def _transformed(name: str, row: dict) -> float:
    c = CANDIDATES[name]
    x = float(row[c["source"]])
    if c["transform"] == "logit":
        x = min(max(x, DL_PROB_CLIP), 1 - DL_PROB_CLIP)
        return math.log(x / (1 - x))
    if c["transform"] == "log":
        return math.log(x)
    return x


def check_predictors(predictors: list[str]) -> list[str]:
    unknown = [p for p in predictors if p not in CANDIDATES]
    if unknown:
        raise NomogramInputError(f"unknown predictor(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    if len(set(predictors)) != len(predictors):
        raise NomogramInputError(f"predictor listed twice in {predictors}")
    return predictors


# ---------------------------------------------------------------------------------- analysis
def univariable(rows: list[dict]) -> list[dict]:
    """One logistic model per candidate (complete case for that candidate): OR per unit, 95% CI, p."""
    from converters import stats

    table = []
    for name, c in CANDIDATES.items():
        X, y, kept, missing = design(rows, [name])
        row = {"name": name, "label": c["label"], "unit": c["unit"],
               "per": "logit unit" if c["transform"] == "logit" else (c["unit"] or "unit"),
               "n": len(kept), "missing": missing[name], "events": int(y.sum())}
        try:
            fit = stats.fit_logistic(X, y, [name])
            t = fit.table()[1]
            row.update({"odds_ratio": t["odds_ratio"], "or_ci": t["or_ci"], "p": t["p"], "coef": t["coef"],
                        "se": t["se"], "auc": stats.roc_auc(y, X[:, 0]) if np.ptp(X[:, 0]) else None})
        except stats.ModelInputError as exc:
            row["error"] = str(exc)
        table.append(row)
    return table


@dataclass
class ModelResult:
    predictors: list[str]
    fit: object
    X: np.ndarray
    y: np.ndarray
    rows: list[dict]
    missing: dict


def fit_model(rows: list[dict], predictors: list[str]) -> ModelResult:
    from converters import stats

    X, y, kept, missing = design(rows, predictors)
    if len(kept) == 0:
        raise NomogramInputError(f"no complete rows for predictors {predictors} (missing: {missing})")
    try:
        fit = stats.fit_logistic(X, y, predictors)
    except stats.ModelInputError as exc:
        raise NomogramInputError(f"cannot fit the model {' + '.join(predictors)} on {len(kept)} images: "
                                 f"{exc}") from None
    return ModelResult(predictors, fit, X, y, kept, missing)


def axis_limits(model: ModelResult) -> dict[str, tuple[float, float]]:
    """Nomogram axis per predictor: the development data's display range as rms::datadist sets it
    (quantiles 10/n and 1 − 10/n, n >= 200), rounded outward to round numbers, inside the plausible
    range (DL probability: 0.01–0.99)."""
    out = {}
    for name in model.predictors:
        c = CANDIDATES[name]
        lo_r, hi_r = c["range"]
        raw = np.array([float(r[c["source"]]) for r in model.rows])
        if c["transform"] == "logit":
            out[name] = (max(0.01, lo_r), min(0.99, hi_r))
            continue
        q = 10 / max(len(raw), 200)
        lo, hi = (float(v) for v in np.quantile(raw, [q, 1 - q]))
        if not hi > lo:
            lo, hi = float(raw.min()), float(raw.max())
        ticks = nice_ticks(lo, hi, 7)
        step = ticks[1] - ticks[0] if len(ticks) > 1 else max(hi - lo, 1.0)
        lo, hi = math.floor(lo / step) * step, math.ceil(hi / step) * step
        if c["transform"] == "log":
            lo = max(lo, float(raw.min()) / 2, 1e-6)
        out[name] = (max(lo, lo_r), min(hi, hi_r))
    return out


def nomogram_spec(model: ModelResult, threshold: float, threshold_method: str = "youden_development") -> dict:
    """The device contract (docs/CONTRACTS.md, "Nomogram")."""
    preds = []
    for i, name in enumerate(model.predictors):
        c = CANDIDATES[name]
        preds.append({"name": name, "source": c["source"], "transform": c["transform"],
                      "coef": float(model.fit.coef[i + 1]), "label": c["label"], "unit": c["unit"],
                      "range": list(c["range"])})
    spec = {"schema": SCHEMA, "placeholder": False, "intercept": float(model.fit.coef[0]), "predictors": preds,
            "points": points_scaling(preds, axis_limits(model)),
            "threshold": float(threshold), "threshold_method": threshold_method,
            "n_development": model.fit.n, "events_development": model.fit.events}
    Nomogram(spec)  # the device's own validation must accept what we write
    return spec


def analyse(run_dir: str | Path, dataset=None, predictors: list[str] | None = None, bootstrap: int = 200,
            seed: int = 0, backbone: str | None = None, write: bool = True, progress: bool = True,
            threshold: str = "youden") -> dict:
    """The whole `noa-edge nomogram`. `dataset` is a path, a loaded Dataset, or None (RUN/run.json).
    `threshold` is a rule of converters.operating_point (default Youden on the development data)."""
    from converters import stats
    from converters.operating_point import parse_threshold, patient_block, resolve_threshold

    run_dir = Path(run_dir)
    predictors = check_predictors(list(predictors or DEFAULT_PREDICTORS))
    thr_spec = parse_threshold(threshold)
    dl_probs, chosen, run = read_oof(run_dir, backbone)
    ds = dataset if hasattr(dataset, "labelled_images") else load_dataset_for(run_dir, run, dataset)
    rows, flow = joined_rows(ds, dl_probs)
    if not rows:
        raise NomogramInputError(f"no image of {ds.root} has an out-of-fold prediction in "
                                 f"{run_dir}/oof_predictions.csv "
                                 "(do the image_id values match?)")
    notes: list[str] = []
    uni = univariable(rows)
    significant = [u["name"] for u in uni if u.get("p") is not None and u["p"] < 0.05]
    model = fit_model(rows, predictors)
    notes += model.fit.warnings
    X, y, kept = model.X, model.y, model.rows
    patients = [r["patient_id"] for r in kept]
    flow.update({"analysed_images": len(kept), "analysed_patients": len(set(patients)),
                 "analysed_events": int(y.sum()), "excluded_missing": len(rows) - len(kept),
                 "missing_by_predictor": model.missing})
    lp = model.fit.linear_predictor(X)
    prob = 1 / (1 + np.exp(-lp))
    youden = stats.youden_threshold(y, prob)
    chosen_thr = resolve_threshold(thr_spec, y, prob)
    method = {"youden": "youden_development", "fixed": "fixed"}.get(thr_spec["kind"],
                                                                    f"{chosen_thr['rule']}_development")
    spec = nomogram_spec(model, chosen_thr["threshold"], method)

    # comparators on the same images
    dl = np.array([r["dl_probability"] for r in kept])
    scores = {"nomogram": prob, "dl_only": dl}
    labels = {"nomogram": "Nomogram (" + " + ".join(CANDIDATES[p]["label"] for p in predictors) + ")",
              "dl_only": "DL probability only (out-of-fold)"}
    clinical = [p for p in CLINICAL_PREDICTORS]
    try:
        Xc = np.array([[_transformed(p, r) for p in clinical] for r in kept])
        if any(r.get(CANDIDATES[p]["source"]) is None for r in kept for p in clinical):
            raise ValueError("missing")
        cfit = stats.fit_logistic(Xc, y, clinical)
        scores["clinical_only"] = 1 / (1 + np.exp(-cfit.linear_predictor(Xc)))
        labels["clinical_only"] = "Clinical only (FSH + volume + EDV, logistic)"
    except (ValueError, stats.ModelInputError) as exc:
        notes.append(f"clinical-only comparator not fitted: {exc}")
    if all(r.get("fsh") is not None for r in kept):
        scores["fsh_only"] = np.array([r["fsh"] for r in kept], float)
        labels["fsh_only"] = "Serum FSH alone"
    discrimination = {k: stats.delong_ci(y, s) for k, s in scores.items()}
    comparisons = {k: stats.delong_paired_test(y, prob, s) for k, s in scores.items() if k != "nomogram"}
    schoor_rows = [i for i, r in enumerate(kept) if r.get("fsh") is not None and r.get("length_cm") is not None]
    schoor = None
    if schoor_rows:
        idx = np.array(schoor_rows)
        rule = np.array([float(kept[i]["fsh"] > SCHOOR_FSH or kept[i]["length_cm"] <= SCHOOR_LONG_AXIS_CM)
                         for i in idx])
        schoor = {"n_images": len(idx), "rule": f"FSH > {SCHOOR_FSH} IU/L or long axis <= {SCHOOR_LONG_AXIS_CM} cm",
                  "metrics": stats.classification_metrics(y[idx], rule, 0.5)}
        if 0 < y[idx].sum() < len(idx):
            schoor["auc"] = stats.delong_ci(y[idx], rule)
            schoor["vs_nomogram"] = stats.delong_paired_test(y[idx], prob[idx], rule)

    # Harrell bootstrap by patient
    B = int(bootstrap)
    validation = None
    if B > 0:
        validation = stats.bootstrap_validate(X, y, B=B, seed=seed, clusters=patients, fit=model.fit)
        if validation["warning"]:
            notes.append(validation["warning"])
        elif validation["B_failed"]:
            notes.append(f"{validation['B_failed']} of {B} bootstrap refits diverged (separation in the resample) "
                         "and were dropped, as rms::validate does")
    performance = {
        "threshold": {**youden, **chosen_thr} if thr_spec["kind"] == "youden" else chosen_thr,
        "youden": youden, "threshold_rule": chosen_thr["rule"],
        "at_threshold": stats.classification_metrics(y, prob, chosen_thr["threshold"]),
        "dl_at_its_youden": stats.classification_metrics(y, dl, stats.youden_threshold(y, dl)["threshold"]),
        "brier_apparent": stats.brier_score(y, prob),
    }
    dca = stats.decision_curve(y, {k: v for k, v in scores.items() if k != "fsh_only"})
    table1 = characteristics(ds, dl_probs)
    report = {
        "schema": "noa-edge.nomogram-report/1", "run": str(run_dir), "dataset": str(ds.root),
        "dataset_name": ds.meta.get("name"), "source_kind": (ds.meta.get("source") or {}).get("kind"),
        "synthetic_demo": (ds.meta.get("source") or {}).get("kind") == "phantom",
        "backbone": chosen,
        "unit_of_analysis": "testis image (one ultrasound image of one testis; FSH is the patient's)",
        "missing_data": "complete case on the model's predictors",
        "flow": flow, "table1": table1, "univariable": uni, "univariable_significant": significant,
        "model": {"predictors": predictors, "labels": {p: CANDIDATES[p]["label"] for p in predictors},
                  **model.fit.summary(),
                  "epv": min(model.fit.events, model.fit.n - model.fit.events) / len(predictors)},
        "nomogram": spec, "discrimination": discrimination, "labels": labels, "comparisons": comparisons,
        "schoor_rule": schoor, "performance": performance, "validation": validation, "decision_curve": dca,
        "threshold_rule": chosen_thr["rule"],
        "patient": patient_block(patients, y, prob, chosen_thr["threshold"]),
        "notes": notes, "methods": {**METHODS, "threshold": THRESHOLD_METHODS[thr_spec["kind"]]},
    }
    report["tripod_ai"] = tripod.checklist(report)
    if write:
        write_outputs(run_dir, report, y, scores, spec)
    return report


METHODS = {
    "model": "Unpenalised maximum-likelihood logistic regression (Newton-Raphson; standard errors from the inverse "
             "information matrix), identical to R rms::lrm. Odds ratios with Wald 95% CIs.",
    "auc": "Area under the ROC curve (Mann-Whitney, ties 1/2) with the DeLong 95% CI, identical to "
           "pROC::ci.auc(method='delong'); paired comparisons by DeLong's test as pROC::roc.test(paired=TRUE).",
    "threshold": "Youden index (max sensitivity + specificity - 1) on the development data, pre-specified for later "
                 "validation; positive = probability >= threshold.",
    "patient": "Patient level: the patient's probability is the mean of his testes' probabilities "
               "(edge.patient.patient_probability, the rule the cart uses), compared with the same threshold.",
    "proportions": "Accuracy, sensitivity, specificity, PPV, NPV with Clopper-Pearson exact 95% CIs (R binom.test).",
    "validation": "Harrell's optimism bootstrap as rms::validate: B refits on resamples of patients (both testes of a "
                  "patient stay together), indexes on the resample minus on the original data = optimism; corrected = "
                  "apparent - mean optimism. Calibration curves as rms::calibrate (lowess, bias-corrected).",
    "dca": "Net benefit = TP/n - FP/n x pt/(1-pt) over threshold probabilities (Vickers & Elkin 2006).",
    "table1": "Patient-level variables per patient, testis variables per image. Continuous: Shapiro-Wilk in every "
              "group -> Welch t / ANOVA, else Mann-Whitney U / Kruskal-Wallis. Categorical: chi-squared, Fisher exact "
              "for 2x2 with expected counts < 5.",
    "clustering": "The two testes of a patient are correlated; DeLong CIs treat images as independent (slightly "
                  "narrow); the bootstrap resamples patients.",
}

THRESHOLD_METHODS = {
    "youden": METHODS["threshold"],
    "fixed": "A fixed threshold given by the user (--threshold), e.g. a published or pre-registered cut-off; "
             "positive = probability >= threshold.",
    "sens": "The highest threshold whose sensitivity on the development data reaches the target (--threshold "
            "sens=...); positive = probability >= threshold.",
    "spec": "The lowest threshold whose specificity on the development data reaches the target (--threshold "
            "spec=...); positive = probability >= threshold.",
}


def characteristics(ds, dl_probs: dict[str, float]) -> dict:
    """Table 1: OA / NOA / controls, patient variables per patient and testis variables per image."""
    from converters import stats

    groups = ("OA", "NOA", "control")
    group_of = {p["patient_id"]: p["group"] for p in ds.patients}
    rows = []
    for var in ("age", "fsh", "lh", "testosterone", "inhibin_b"):
        by = {g: [p[var] for p in ds.patients if p["group"] == g] for g in groups}
        rows.append(_table1_row(var, "patient", by, stats))
    for var in ("length_cm", "width_cm", "height_cm", "volume_ml", "psv_cm_s", "edv_cm_s", "ri"):
        by = {g: [i[var] for i in ds.images if group_of[i["patient_id"]] == g] for g in groups}
        rows.append(_table1_row(var, "image", by, stats))
    by = {g: [dl_probs.get(i["image_id"]) for i in ds.images if group_of[i["patient_id"]] == g] for g in ("OA", "NOA")}
    rows.append(_table1_row("dl_probability", "image", by, stats, label="DL probability (out-of-fold)"))
    side = {g: [i["side"] for i in ds.images if group_of[i["patient_id"]] == g] for g in groups}
    cat = stats.compare_categorical(side)
    counts = {g: {"patients": sum(1 for p in ds.patients if p["group"] == g),
                  "images": sum(1 for i in ds.images if group_of[i["patient_id"]] == g)} for g in groups}
    return {"counts": counts, "continuous": rows, "categorical": [{"name": "side", "label": "Side (L/R)", **cat}]}


def _table1_row(var, level, by, stats, label=None):
    present = {g: v for g, v in by.items() if v}
    res3 = stats.compare_continuous(present)
    two = {g: present[g] for g in ("OA", "NOA") if g in present}
    res2 = stats.compare_continuous(two) if len(two) == 2 else {"test": None, "p": None}
    c = CANDIDATES.get(var, {})
    return {"name": var, "label": label or c.get("label", var.replace("_", " ")), "unit": c.get("unit", ""),
            "level": level, "groups": res3["groups"], "test_all_groups": res3["test"], "p_all_groups": res3["p"],
            "test_oa_vs_noa": res2["test"], "p_oa_vs_noa": res2["p"]}


# ------------------------------------------------------------------------------------ outputs
def write_outputs(run_dir: Path, report: dict, y: np.ndarray, scores: dict, spec: dict) -> None:
    from converters import report_html
    from converters.nomogram_figures import make_figures

    (run_dir / "nomogram.json").write_text(json.dumps(spec, indent=2))
    figures = make_figures(run_dir, report, y, scores, spec)
    report["files"] = {"nomogram_json": "nomogram.json", "report_html": "report.html",
                       **{k: str(Path(v).relative_to(run_dir)) for k, v in figures.items()}}
    (run_dir / "report.json").write_text(json.dumps(jsonable(report), indent=2, allow_nan=False))
    (run_dir / "report.html").write_text(report_html.render(report, figures))


def jsonable(obj):
    """A JSON-ready copy: numpy values as Python ones, non-finite floats as null."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
