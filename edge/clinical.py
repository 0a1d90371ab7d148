"""The clinical inputs of the nomogram: the ONE field table (name, label, unit, UCUM code, plausible
range) and the ONE parser of typed values.

The daemon's form, its parser, the exports (PDF/SR) and the host toolchain (dataset columns, nomogram
candidates) all read this table, so a label, unit or range is changed in one place. The bundle's
nomogram may narrow a range (its `range` per predictor); the table's range is the fallback.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InputError


# Every clinical variable of a dataset and a nomogram: column/source name -> (label, unit, plausible range,
# level, hint shown when a value is outside). Ranges are wide on purpose: they catch unit mix-ups and typos,
# not unusual patients. converters.dataset validates against these ranges and converters.nomogram offers
# these as candidate predictors, so a label, unit or range is written once.
@dataclass(frozen=True)
class Variable:
    label: str
    unit: str
    range: tuple[float, float]
    level: str          # patient | image
    hint: str = ""


VARIABLES: dict[str, Variable] = {
    "age": Variable("Age", "years", (10, 100), "patient"),
    "fsh": Variable("Serum FSH", "IU/L", (0, 200), "patient"),
    "lh": Variable("Serum LH", "IU/L", (0, 200), "patient"),
    "testosterone": Variable("Testosterone", "ng/mL", (0, 50), "patient", "nmol/L? ng/mL = nmol/L / 3.467"),
    "inhibin_b": Variable("Inhibin B", "pg/mL", (0, 2000), "patient"),
    "length_cm": Variable("Testis long axis", "cm", (0.5, 10), "image", "mm? use cm"),
    "width_cm": Variable("Testis width", "cm", (0.5, 10), "image", "mm? use cm"),
    "height_cm": Variable("Testis height", "cm", (0.5, 10), "image", "mm? use cm"),
    "volume_ml": Variable("Testicular volume", "mL", (0.5, 60), "image"),
    "psv_cm_s": Variable("PSV", "cm/s", (0, 100), "image"),
    "edv_cm_s": Variable("EDV", "cm/s", (0, 50), "image"),
    "ri": Variable("Resistive index", "", (0, 1), "image", "RI = (PSV - EDV) / PSV lies between 0 and 1"),
}

LAMBERT = 0.71                      # validated ultrasound volume coefficient (0.52 underestimates ~31%)
DIMENSION_RANGE_CM = (0.3, 8.0)    # the cart's form: a measured testis axis (a dataset allows 0.5–10)
DIMENSION_FIELDS = ("length_cm", "width_cm", "height_cm")


@dataclass(frozen=True)
class ClinicalField:
    """One clinical input: `form` is the name the page and API use, `source` the nomogram/exam key."""

    form: str
    source: str
    label: str
    unit: str
    ucum: str
    ucum_meaning: str
    range: tuple[float, float]


def _field(form: str, source: str, ucum: str, ucum_meaning: str) -> ClinicalField:
    v = VARIABLES[source]
    return ClinicalField(form, source, v.label, v.unit, ucum, ucum_meaning, (float(v.range[0]), float(v.range[1])))


# The nomogram's clinical inputs on the cart's form (the paper's FSH, volume, EDV), in form order.
FIELDS: tuple[ClinicalField, ...] = (
    _field("fsh", "fsh", "[IU]/L", "international unit per liter"),
    _field("volume_ml", "volume_ml", "mL", "milliliter"),
    _field("edv", "edv_cm_s", "cm/s", "centimeter per second"),
)
BY_SOURCE: dict[str, ClinicalField] = {f.source: f for f in FIELDS}


def form_fields(ranges: Mapping[str, tuple[float, float]]) -> list[dict]:
    """The form fields with units and the bundle's plausible ranges (falls back to the table's)."""
    out = []
    for f in FIELDS:
        lo, hi = ranges.get(f.source, f.range)
        out.append({"name": f.form, "label": f.label, "unit": f.unit, "min": lo, "max": hi})
    return out


# The one grammar of a typed number (issue 12): optional sign, digits, at most ONE decimal separator
# ("." or ","), spaces only around it. Everything else is refused, never reinterpreted: Python's float()
# would take "1_5" as 15, "1e3" as 1000, "inf"/"nan"; a browser's number field turns "4,5" into 45.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:[.,][0-9]+)?|[.,][0-9]+)")
# 1–3 digits (no leading zero), one separator, exactly 3 digits: "1,000" or "1.000" is a thousand in one
# locale and one in another. Refused; "0,500" or "4,50" are not ambiguous.
_AMBIGUOUS = re.compile(r"[+-]?[1-9][0-9]{0,2}[.,][0-9]{3}")
_NOT_FINITE = {"nan", "inf", "infinity"}

# Form/API names of the clinical inputs. `edv_cm_s` (the exam's key) is accepted as another name of `edv`.
INPUT_NAMES = ("fsh", "volume_ml", "edv", "edv_cm_s", *DIMENSION_FIELDS)
ALIASES = {"edv_cm_s": "edv"}


def parse_number(raw, field: str, label: str = "") -> float | None:
    """One typed value -> float, None when not given (missing or blank). InputError (naming the field and
    what was typed) for anything outside the grammar above. JSON numbers (int/float) pass if finite."""
    what = label or field
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise InputError(field, f"{what}: {raw!r} is not a number")
    if isinstance(raw, (int, float)):
        if not math.isfinite(raw):
            raise InputError(field, f"{what}: {raw!r} is not a finite number")
        return float(raw)
    text = str(raw)
    stripped = text.strip()
    if not stripped:
        return None
    if stripped.lower().lstrip("+-") in _NOT_FINITE:
        raise InputError(field, f"{what}: {text!r} is not a finite number")
    if _AMBIGUOUS.fullmatch(stripped):
        whole, frac = re.split("[.,]", stripped)
        raise InputError(field, f"{what}: {text!r} is ambiguous: {float(whole + '.' + frac):g} or "
                                f"{int(whole + frac):d}? Write it without digit grouping")
    if stripped[-1] in ".," and _NUMBER.fullmatch(stripped[:-1]):
        raise InputError(field, f"{what}: {text!r} ends with a decimal separator: finish the number "
                                "(e.g. 4,5) or remove the separator")
    if not _NUMBER.fullmatch(stripped):
        raise InputError(field, f"{what}: {text!r} is not a number (digits with at most one decimal point "
                                "or comma, e.g. 4.5 or 4,5)")
    return float(stripped.replace(",", "."))


def _blank(raw) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def raw_inputs(form: Mapping) -> dict[str, str | float]:
    """The clinical values as typed (non-blank ones), for the exam record."""
    out = {}
    for name in INPUT_NAMES:
        raw = form.get(name)
        if not _blank(raw):
            out[name] = raw if isinstance(raw, (int, float)) and not isinstance(raw, bool) else str(raw)
    return out


def check_clinical(form: Mapping, ranges: Mapping[str, tuple[float, float]] | None = None) -> tuple[dict, dict]:
    """Form values (strings or numbers; missing/blank = not given) -> (values keyed by nomogram source,
    errors {form field: message}). Every field is checked, so a page can mark all bad fields at once.

    Volume comes either as volume_ml or as length/width/height in cm (Lambert: 0.71·L·W·H); the formula
    used is recorded. The values of the good fields are returned even when another field has an error
    (the page shows both); parse_clinical refuses the whole form on any error."""
    ranges = ranges or {}
    errors: dict[str, str] = {}
    clean: dict = {}

    def number(field: str, label: str, unit: str, lo: float, hi: float):
        try:
            value = parse_number(form.get(field), field, label)
        except InputError as exc:
            errors[field] = str(exc)
            return None
        if value is not None and not lo <= value <= hi:
            errors[field] = (f"{label} = {value:g} {unit} is outside the plausible range {lo:g}–{hi:g} {unit}")
            return None
        return value

    for f in FIELDS:
        lo, hi = ranges.get(f.source, f.range)
        names = [f.form] + [a for a, target in ALIASES.items() if target == f.form]
        typed = {n: number(n, f.label, f.unit, lo, hi) for n in names if not _blank(form.get(n))}
        values = {n: v for n, v in typed.items() if v is not None}
        if len(set(values.values())) > 1:
            errors[names[-1]] = f"{f.label} given twice with different values ({', '.join(values)})"
        elif values:
            clean[f.source] = next(iter(values.values()))
    dims = {f: number(f, VARIABLES[f].label, "cm", *DIMENSION_RANGE_CM) for f in DIMENSION_FIELDS}
    given = [f for f, v in dims.items() if v is not None]
    if given and "volume_ml" in clean:
        errors.setdefault("volume_ml", "give either the testicular volume in mL or length/width/height in cm, "
                                       "not both")
    elif given and len(given) < 3:
        missing = [f for f in dims if dims[f] is None and f not in errors]
        if missing:
            errors.setdefault(missing[0], f"testis dimensions: {', '.join(missing)} missing (need length, "
                                          "width and height in cm)")
    elif len(given) == 3:
        volume = LAMBERT * dims["length_cm"] * dims["width_cm"] * dims["height_cm"]
        lo, hi = ranges.get("volume_ml", BY_SOURCE["volume_ml"].range)
        if not lo <= volume <= hi:
            errors.setdefault("length_cm", f"volume from dimensions 0.71·L·W·H = {volume:.1f} mL is outside the "
                                           f"plausible range {lo:g}–{hi:g} mL")
        else:
            clean["volume_ml"] = round(volume, 3)
            clean["volume_formula"] = "lambert_0.71"
            clean.update(dims)
    if "volume_ml" in clean and "volume_formula" not in clean:
        clean["volume_formula"] = "entered"
    return clean, errors


def parse_clinical(form: Mapping, ranges: Mapping[str, tuple[float, float]] | None = None) -> dict:
    """check_clinical, refusing with InputError for the first bad field (form order): nothing is ever
    half-parsed or silently dropped."""
    values, errors = check_clinical(form, ranges)
    if errors:
        field = next(iter(errors))
        raise InputError(field, errors[field])
    return values
