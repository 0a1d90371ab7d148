"""The patient: the open patient context and the patient-level rule (issue 12).

A *context* is one patient's ID and clinical values (FSH, volume or L×W×H, EDV), parsed once with the one
parser (edge.clinical). While it is open, automatic analyses (freeze, folder, DICOM) use its values and ID
and say so; "New patient" clears it. Without a context an automatic exam is DL-only.

The patient-level rule lives here ONCE: the host's cross-validation statistics (converters/cv_report.py
`patient_level`) and the cart's patient summary both call `patient_probability`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .clinical import parse_clinical, raw_inputs
from .errors import InputError
from .held_frames import local_now

SIDES = ("L", "R")
MAX_PATIENT_ID = 64  # DICOM PatientID is LO: at most 64 characters

PATIENT_RULE = ("Patient-level probability = the mean of the available testes' probabilities (the newest "
                "result per side; nomogram probabilities when every side has one, else the image model's), "
                "compared with the threshold of that basis.")


def patient_probability(probabilities: Iterable[float]) -> float:
    """THE patient-level rule: the mean of the patient's testes' (images') probabilities."""
    values = [float(p) for p in probabilities]
    if not values:
        raise ValueError("patient_probability needs at least one probability")
    return sum(values) / len(values)


def clean_patient_id(raw) -> str | None:
    """Strip; None when blank; refuse (not cut) an ID longer than DICOM allows or with control characters."""
    if raw is None:
        return None
    text = str(raw).strip()
    if not text:
        return None
    if len(text) > MAX_PATIENT_ID:
        raise InputError("patient_id", f"patient ID is {len(text)} characters; at most {MAX_PATIENT_ID} allowed")
    if any(ord(c) < 32 or c == "\\" for c in text):
        raise InputError("patient_id", "patient ID contains a control character or a backslash")
    return text


def clean_side(raw) -> str | None:
    if raw is None or not str(raw).strip():
        return None
    side = str(raw).strip().upper()
    if side not in SIDES:
        raise InputError("side", f"side must be L or R (left or right testis), not {str(raw)!r}")
    return side


@dataclass(frozen=True)
class Context:
    patient_id: str
    values: dict
    raw: dict
    opened_at: str = field(default_factory=local_now)

    def public(self) -> dict:
        return {"patient_id": self.patient_id, "values": dict(self.values), "raw": dict(self.raw),
                "opened_at": self.opened_at}

    def note(self) -> str:
        return f"clinical values from the open patient context (ID {self.patient_id})"


class PatientContext:
    """The one open context of the cart (thread-safe; replaced whole, never half-updated)."""

    def __init__(self) -> None:
        self._ctx: Context | None = None
        self._lock = threading.Lock()

    def open(self, form: Mapping, ranges: Mapping[str, tuple[float, float]] | None = None) -> Context:
        """Parse and open; InputError (field named) leaves the previous context untouched."""
        pid = clean_patient_id(form.get("patient_id"))
        if pid is None:
            raise InputError("patient_id", "a patient context needs a patient ID")
        values = parse_clinical(form, ranges)
        ctx = Context(patient_id=pid, values=values, raw=raw_inputs(form))
        with self._lock:
            self._ctx = ctx
        return ctx

    def get(self) -> Context | None:
        with self._lock:
            return self._ctx

    def clear(self) -> Context | None:
        with self._lock:
            old, self._ctx = self._ctx, None
        return old


def newest_per_side(exams: Iterable[Mapping]) -> dict[str, Mapping]:
    """The newest exam (highest id) per side among `exams`; exams without a side are not a testis."""
    out: dict[str, Mapping] = {}
    for exam in exams:
        side = exam.get("side")
        if side in SIDES and (side not in out or int(exam["id"]) > int(out[side]["id"])):
            out[side] = exam
    return out


def summarize(sides: Mapping[str, Mapping], thresholds: Mapping[str, float], labels: Mapping[str, str]) -> dict | None:
    """The patient-level result from the newest exam per side (None without any)."""
    exams = [sides[s] for s in SIDES if s in sides]
    if not exams:
        return None
    nomogram = all(e.get("nomogram_probability") is not None for e in exams)
    key = "nomogram_probability" if nomogram else "dl_probability"
    prob = patient_probability(e[key] for e in exams)
    basis = "nomogram" if nomogram else "dl_only"
    threshold = float(thresholds[basis])
    positive, negative = labels.get("positive", "NOA"), labels.get("negative", "OA")
    notes = []
    if len(exams) < len(SIDES):
        notes.append(f"only the {'left' if exams[0]['side'] == 'L' else 'right'} testis is analysed")
    if len({(e.get("bundle") or {}).get("sha256") for e in exams}) > 1:
        notes.append("the sides were scored by different model bundles")
    ood = any(e.get("ood") for e in exams)  # a side unlike the training data (edge/ood.py) makes it unreliable
    if ood:
        notes.append("a side's image is unlike the training data: the patient-level result is not reliable")
    return {"ood": ood, "probability": prob, "basis": basis, "threshold": threshold,
            "label": positive if prob >= threshold else negative, "rule": PATIENT_RULE,
            "sides_used": [e["side"] for e in exams], "exam_ids": [e["id"] for e in exams], "notes": notes}
