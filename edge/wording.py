"""The words and numbers a clinician reads: one place for the page, the exam page, the PDF and the SR.

Percentages never read "100 %" or "0 %" (a model is never certain: "> 99 %" / "< 1 %"), one decimal near
the ends; one plain sentence per result; why the DL-only threshold differs from the nomogram's; human
labels with units (from edge.clinical), never internal keys such as `dl_logit` or `edv_cm_s`; local time
with its zone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from .clinical import FIELDS, VARIABLES

SHORT = {"fsh": "FSH", "volume_ml": "volume", "edv_cm_s": "EDV"}  # nomogram inputs, in a sentence
POINT_LABELS = {"dl_logit": "Image model (DL probability)"}


def percent(p, decimals: int | None = None) -> str:
    """0.853 -> "85 %"; "> 99 %" / "< 1 %" at the ends; one decimal below 10 % and above 90 %."""
    if p is None:
        return "-"
    pct = 100.0 * float(p)
    if pct > 99.0:
        return "> 99 %"
    if pct < 1.0:
        return "< 1 %"
    if decimals is None:
        decimals = 1 if pct < 10.0 or pct > 90.0 else 0
    return f"{pct:.{decimals}f} %"


def pair_texts(p: float, t: float) -> tuple[str, str]:
    """Probability and threshold as texts that never look equal when they are not."""
    for decimals in (None, 1, 2):
        a, b = percent(p, decimals), percent(t, decimals)
        if a != b or p == t:
            return a, b
    return a, b


def number_text(v) -> str:
    return "-" if v is None else f"{round(float(v), 2):g}"


def positive_label(exam: Mapping) -> str:
    return str((exam.get("labels") or {}).get("positive", "NOA"))


def _missing(exam: Mapping) -> list[str]:
    inputs = exam.get("inputs") or {}
    return [SHORT.get(f.source, f.label) for f in FIELDS if inputs.get(f.source) is None]


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def basis_text(exam: Mapping) -> str:
    if exam.get("nomogram_probability") is not None:
        return "nomogram: image model combined with FSH, testicular volume and EDV"
    if (exam.get("thresholds") or {}).get("nomogram", 0) is None or any(
            "no nomogram" in str(n) for n in exam.get("notes") or []):
        return "image model alone (this model bundle has no nomogram)"
    missing = _missing(exam)
    needs = f"the nomogram also needs {_join(missing)}" if missing else "the nomogram was not computed"
    return f"image model alone; {needs}"


def probability(exam: Mapping) -> float | None:
    p = exam.get("nomogram_probability")
    return exam.get("dl_probability") if p is None else p


def result_sentence(exam: Mapping) -> str:
    """e.g. "85 % probability of NOA (nomogram); above the 65 % threshold → NOA."; an exam whose image is unlike
    the training data (exam["ood"]) starts with the warning and gives the model's output as not a result."""
    sentence = _plain_result_sentence(exam)
    return f"{OOD_WARNING_SENTENCE} (Model output, not a result: {sentence})" if exam.get("ood") else sentence


def _plain_result_sentence(exam: Mapping) -> str:
    p, t = probability(exam), exam.get("threshold")
    if p is None or t is None:
        return "No result."
    p, t = float(p), float(t)
    ptxt, ttxt = pair_texts(p, t)
    where = "above" if p > t else ("at" if p == t else "below")
    short = "nomogram" if exam.get("nomogram_probability") is not None else basis_text(exam)
    label = exam.get("label", "-")
    return f"{ptxt} probability of {positive_label(exam)} ({short}); {where} the {ttxt} threshold → {label}."


def threshold_explanation(exam: Mapping) -> str:
    t = exam.get("threshold")
    if t is None:
        return ""
    thresholds = exam.get("thresholds") or {}
    if exam.get("nomogram_probability") is not None:
        return (f"The threshold {percent(t)} is the model bundle's cut-off for the nomogram probability "
                "(image model + FSH + volume + EDV).")
    nomo = thresholds.get("nomogram")
    other = (f"; the nomogram's own threshold ({percent(nomo)}) applies only to the nomogram probability"
             if nomo is not None else "")
    return (f"Without all clinical values only the image model is used, judged at its own threshold "
            f"{percent(t)}{other}. The two probabilities are not interchangeable.")


def input_rows(exam: Mapping) -> list[dict]:
    """The clinical inputs with human labels and units (and how the volume was obtained)."""
    inputs = exam.get("inputs") or {}
    rows = []
    for f in FIELDS:
        v = inputs.get(f.source)
        text = "not given" if v is None else f"{number_text(v)} {f.unit}".strip()
        if f.source == "volume_ml" and v is not None and inputs.get("volume_formula") == "lambert_0.71":
            dims = " × ".join(number_text(inputs.get(k)) for k in ("length_cm", "width_cm", "height_cm"))
            text += f" (0.71 × {dims} cm)"
        rows.append({"name": f.source, "label": f.label, "unit": f.unit, "value_text": text})
    return rows


def point_label(name: str) -> str:
    if name in POINT_LABELS:
        return POINT_LABELS[name]
    v = VARIABLES.get(name)
    return f"{v.label} ({v.unit})" if v and v.unit else (v.label if v else name.replace("_", " "))


def local_time(iso: str | None) -> str:
    """A stored ISO time (UTC) as local time with its zone: "2025-05-01 12:11:12 CEST (UTC+02:00)"."""
    if not iso:
        return "-"
    try:
        t = dt.datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    t = t.astimezone()
    off = t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M:%S} {t.tzname()} (UTC{off[:3]}:{off[3:]})"


def patient_sentence(result: Mapping, positive: str = "NOA") -> str:
    """The patient-level result (edge.patient.summarize) in one sentence."""
    p, t = float(result["probability"]), float(result["threshold"])
    ptxt, ttxt = pair_texts(p, t)
    where = "above" if p > t else ("at" if p == t else "below")
    which = " and ".join({"L": "left", "R": "right"}[s] for s in result["sides_used"])
    basis = "nomogram" if result["basis"] == "nomogram" else "image model alone"
    sentence = (f"Patient: {ptxt} probability of {positive} (mean of {which}, {basis}); "
                f"{where} the {ttxt} threshold → {result['label']}.")
    return f"{OOD_WARNING_SENTENCE} (Model output, not a result: {sentence})" if result.get("ood") else sentence


def display(exam: Mapping, strict: bool = True) -> dict:
    """The words every surface shows for one exam (the API's `display`). strict=False (the API): a stored
    exam with an unreadable value gets a sentence saying so instead of an error."""
    try:
        return _display(exam)
    except (TypeError, ValueError, KeyError, AttributeError):
        if strict:
            raise
        return {"sentence": "This exam's stored values cannot be read.", "probability_text": "-",
                "threshold_text": "-", "basis_text": "-", "threshold_explanation": "", "dl_probability_text": "-",
                "inputs": [], "points": [], "created_local": str(exam.get("created", "-")),
                "ood": exam.get("ood") is True, "ood_text": OOD_WARNING if exam.get("ood") is True else "",
                "ood_detail": ""}


def _display(exam: Mapping) -> dict:
    p, t = probability(exam), exam.get("threshold")
    ptxt, ttxt = pair_texts(float(p), float(t)) if p is not None and t is not None else (percent(p), percent(t))
    if exam.get("ood"):
        ptxt += " (not reliable)"
    return {"sentence": result_sentence(exam), "probability_text": ptxt, "threshold_text": ttxt,
            "ood": bool(exam.get("ood")), "ood_text": OOD_WARNING if exam.get("ood") else "",
            "ood_detail": ood_detail(exam),
            "basis_text": basis_text(exam), "threshold_explanation": threshold_explanation(exam),
            "dl_probability_text": percent(exam.get("dl_probability")),
            "inputs": input_rows(exam),
            "points": [{"label": point_label(k), "value_text": f"{float(v):.1f}"}
                       for k, v in (exam.get("points") or {}).items() if v is not None],
            "created_local": local_time(exam.get("created"))}


# -- out-of-distribution guard (edge/ood.py): the words every surface shows for a flagged exam
OOD_WARNING = "image unlike the training data — result not reliable"
OOD_WARNING_SENTENCE = "Image unlike the training data — result not reliable."


def ood_detail(exam: Mapping) -> str:
    """What the guard found, in one line (or that there was no guard)."""
    score, threshold = exam.get("ood_score"), exam.get("ood_threshold")
    if exam.get("ood") is None or score is None or threshold is None:
        return "Not checked against the training data (no out-of-distribution guard for this model bundle)."
    if exam.get("ood"):
        return (f"Out-of-distribution score {float(score):.0f} is above the bundle's threshold {float(threshold):.0f} "
                "(the top 1 % of held-out training images): the image model was not trained on images like this "
                "one, so its probability is not reliable here.")
    return (f"Out-of-distribution score {float(score):.0f} is within the bundle's threshold {float(threshold):.0f}: "
            "the image resembles the training data.")
