"""The clinical inputs of the nomogram: the ONE field table (name, label, unit, UCUM code, plausible
range) and the ONE parser of typed values.

The daemon's form, its parser, the exports (PDF/SR) and the host toolchain (dataset columns, nomogram
candidates) all read this table, so a label, unit or range is changed in one place. The bundle's
nomogram may narrow a range (its `range` per predictor); the table's range is the fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

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


def parse_clinical(form: Mapping, ranges: Mapping[str, tuple[float, float]] | None = None) -> dict:
    """Form values (strings or numbers; missing/empty = not given) -> clean floats keyed by nomogram source.

    Volume comes either as volume_ml or as length/width/height in cm (Lambert: 0.71·L·W·H); the formula
    used is recorded. Raises InputError for the first bad field, naming field, value, unit and range."""
    ranges = ranges or {}
    clean: dict = {}

    def number(field: str, label: str, unit: str, lo: float, hi: float):
        raw = form.get(field)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        try:
            value = float(str(raw).strip().replace(",", "."))
        except ValueError:
            raise InputError(field, f"{label}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise InputError(field, f"{label}: {raw!r} is not a finite number")
        if not lo <= value <= hi:
            raise InputError(field, f"{label} = {value:g} {unit} is outside the plausible range {lo:g}–{hi:g} {unit}")
        return value

    for f in FIELDS:
        lo, hi = ranges.get(f.source, f.range)
        value = number(f.form, f.label, f.unit, lo, hi)
        if value is not None:
            clean[f.source] = value
    dims = {f: number(f, f"Testis {f.split('_')[0]}", "cm", *DIMENSION_RANGE_CM) for f in DIMENSION_FIELDS}
    given = [f for f, v in dims.items() if v is not None]
    if given and "volume_ml" in clean:
        raise InputError("volume_ml", "give either the testicular volume in mL or length/width/height in cm, not both")
    if given and len(given) < 3:
        missing = ", ".join(f for f in dims if dims[f] is None)
        raise InputError(missing.split(",")[0], f"testis dimensions: {missing} missing (need length, width and height in cm)")
    if len(given) == 3:
        volume = LAMBERT * dims["length_cm"] * dims["width_cm"] * dims["height_cm"]
        lo, hi = ranges.get("volume_ml", BY_SOURCE["volume_ml"].range)
        if not lo <= volume <= hi:
            raise InputError("length_cm", f"volume from dimensions 0.71·L·W·H = {volume:.1f} mL is outside the "
                                          f"plausible range {lo:g}–{hi:g} mL")
        clean["volume_ml"] = round(volume, 3)
        clean["volume_formula"] = "lambert_0.71"
        clean.update(dims)
    elif "volume_ml" in clean:
        clean["volume_formula"] = "entered"
    return clean
