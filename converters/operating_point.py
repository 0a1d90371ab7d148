"""The operating point: which threshold turns a probability into NOA/OA (`--threshold`), and the statistics
at it for the patient (the unit a clinician decides on).

Threshold rules (`parse_threshold`, `resolve_threshold`):
  youden       max sensitivity + specificity − 1 on the data given (ties → lowest threshold)
  0.37         a fixed number in (0, 1): a published or pre-registered cut-off
  sens=0.95    the HIGHEST threshold whose sensitivity on the data given is >= 0.95
  spec=0.95    the LOWEST threshold whose specificity on the data given is >= 0.95
  frozen       (evaluate only) the threshold stored with the frozen model (bundle manifest / nomogram.json)
Positive = probability >= threshold everywhere. The patient-level block aggregates with the ONE rule,
edge.patient.patient_probability, through converters.cv_report.patient_level.
"""

from __future__ import annotations

import math

import numpy as np

from converters.errors import NomogramInputError

RULE_HELP = ("'youden', a number in (0, 1), 'sens=0.95' (highest threshold with sensitivity >= 0.95) or "
             "'spec=0.95' (lowest threshold with specificity >= 0.95)")


def parse_threshold(text: str | None, option: str = "--threshold", allow_frozen: bool = False) -> dict:
    """'youden' / '0.4' / 'sens=0.95' / 'spec=0.9' (/ 'frozen') -> {"kind", "value"}; a clear error naming
    the option otherwise."""
    raw = (text or "").strip().lower()
    allowed = RULE_HELP + (" or 'frozen' (the model's stored threshold)" if allow_frozen else "")
    if raw in ("youden", "frozen"):
        if raw == "frozen" and not allow_frozen:
            raise NomogramInputError(f"{option} {text!r}: 'frozen' only applies to evaluate; use {allowed}")
        return {"kind": raw, "value": None}
    kind, _, number = raw.partition("=") if "=" in raw else ("fixed", "", raw)
    if kind not in ("fixed", "sens", "spec"):
        raise NomogramInputError(f"{option} {text!r}: unknown rule {kind!r}; use {allowed}")
    try:
        value = float(number)
    except ValueError:
        raise NomogramInputError(f"{option} {text!r}: {number!r} is not a number; use {allowed}") from None
    if not (math.isfinite(value) and 0 < value < 1) and not (kind != "fixed" and value == 1):
        what = "a threshold" if kind == "fixed" else "a target sensitivity/specificity"
        raise NomogramInputError(f"{option} {text!r}: {what} must be in (0, 1), got {value:g}")
    return {"kind": kind, "value": value}


def rule_text(rule: dict) -> str:
    """The rule as written in reports (`threshold_rule`)."""
    if rule["kind"] in ("youden", "frozen"):
        return rule["kind"]
    return f"{rule['value']:g}" if rule["kind"] == "fixed" else f"{rule['kind']}={rule['value']:g}"


def resolve_threshold(rule: dict, y, prob) -> dict:
    """The threshold the rule picks on (y, prob), with the rates there. An infinite cut-off (every image
    positive / negative) is replaced by the score bound that classifies the same way, so it stays a
    probability the device accepts."""
    from converters.stats import classification_metrics, roc_curve, youden_threshold

    prob = np.asarray(prob, float)
    if rule["kind"] == "fixed":
        thr = float(rule["value"])
    elif rule["kind"] == "youden":
        thr = youden_threshold(y, prob)["threshold"]
    elif rule["kind"] in ("sens", "spec"):
        rc = roc_curve(y, prob)
        t = rc["thresholds"]
        if rule["kind"] == "sens":
            thr = float(t[rc["sensitivity"] >= rule["value"] - 1e-12].max())
        else:
            thr = float(t[rc["specificity"] >= rule["value"] - 1e-12].min())
    else:
        raise NomogramInputError(f"threshold rule {rule['kind']!r} needs the stored threshold")
    if thr == -math.inf:
        thr = float(prob.min())
    elif thr == math.inf:
        thr = float(np.nextafter(prob.max(), math.inf))
    m = classification_metrics(y, prob, thr)
    return {"threshold": thr, "rule": rule_text(rule), "sensitivity": m["sensitivity"]["value"],
            "specificity": m["specificity"]["value"]}


def patient_block(patient_ids, y, prob, threshold: float) -> dict:
    """Patient-level AUC (DeLong CI) and the rates at `threshold`, patients aggregated by the one rule
    (edge.patient.patient_probability: mean of the patient's testes)."""
    from converters.cv_report import patient_level
    from converters.stats import classification_metrics, delong_ci
    from edge.patient import PATIENT_RULE

    _, py, pp = patient_level(list(patient_ids), np.asarray(y), np.asarray(prob, float))
    out: dict = {"n_patients": len(py), "n_events": int(py.sum()), "threshold": float(threshold),
                 "rule": PATIENT_RULE}
    if 0 < py.sum() < len(py):
        ci = delong_ci(py, pp)
        out.update(auc=ci["auc"], auc_ci=ci["ci"])
        if "note" in ci:
            out["note"] = ci["note"]
    else:
        out.update(auc=float("nan"), auc_ci=[float("nan"), float("nan")], note="one class among the patients: no AUC")
    m = classification_metrics(py, pp, threshold)
    for k in ("sensitivity", "specificity", "accuracy"):
        out[k] = m[k]["value"]
        out[f"{k}_ci"] = m[k]["ci"]
    out["table"] = m["table"]
    return out
