"""The ONE parser of typed clinical values (edge/clinical.py), as a table (issue 12: "4,5" became 45 IU/L
in a browser; "abc" was dropped silently; Python's float() takes "1_5" as 15 and "1e3" as 1000). The page
checks fields through POST /api/parse with this same code; tests/test_cart_api.py runs the table through
the real daemon."""

from __future__ import annotations

import pytest

from edge.clinical import check_clinical, parse_clinical, parse_number
from edge.errors import InputError

# (typed, value) — accepted: optional sign, digits, ONE decimal separator (. or ,), spaces around
ACCEPTED = [
    ("4,5", 4.5), ("4.5", 4.5), (" 4,5 ", 4.5), ("\t18\n", 18.0), ("0,500", 0.5), ("4,50", 4.5), (".5", 0.5),
    (",5", 0.5), ("+3", 3.0), ("-3", -3.0), ("1000,5", 1000.5), ("0", 0.0), ("007", 7.0), (18.5, 18.5), (3, 3.0),
]
# (typed, words in the message) — refused, never reinterpreted
REFUSED = [
    ("1,000", "ambiguous: 1 or 1000?"), ("1.000", "ambiguous"), ("12,500", "ambiguous: 12.5 or 12500?"),
    ("-1,000", "ambiguous"), ("4,5,6", "not a number"), ("4.5.6", "not a number"), ("1_5", "not a number"),
    ("abc", "not a number"), ("1e3", "not a number"), ("1E3", "not a number"), ("inf", "not a finite number"),
    ("-inf", "not a finite number"), ("Infinity", "not a finite number"), ("nan", "not a finite number"),
    ("NaN", "not a finite number"), ("+-3", "not a number"), ("--3", "not a number"), ("4 5", "not a number"),
    ("1 000", "not a number"), ("4,", "ends with a decimal separator"), ("4.", "ends with a decimal separator"),
    ("٤٫٥", "not a number"), ("４.５", "not a number"), ("0x10", "not a number"), ("4,5 IU/L", "not a number"),
    ("½", "not a number"), (".", "not a number"), (float("nan"), "not a finite number"), (True, "not a number"),
]


@pytest.mark.parametrize("typed,value", ACCEPTED, ids=[repr(a) for a, _ in ACCEPTED])
def test_accepted(typed, value):
    assert parse_number(typed, "fsh", "Serum FSH") == value


@pytest.mark.parametrize("typed,words", REFUSED, ids=[repr(a) for a, _ in REFUSED])
def test_refused_with_the_field_and_what_was_typed(typed, words):
    with pytest.raises(InputError) as err:
        parse_number(typed, "fsh", "Serum FSH")
    assert err.value.field == "fsh" and words in str(err.value)
    assert str(err.value).startswith("Serum FSH: ")
    # the same refusal through the form parser: nothing half-parsed
    values, errors = check_clinical({"fsh": typed, "edv": "2,1"})
    assert set(errors) == {"fsh"} and values == {"edv_cm_s": 2.1}
    with pytest.raises(InputError, match="Serum FSH"):
        parse_clinical({"fsh": typed, "edv": "2,1"})


@pytest.mark.parametrize("blank", [None, "", "   ", "\t"])
def test_blank_is_not_given(blank):
    assert parse_number(blank, "fsh") is None
    assert parse_clinical({"fsh": blank}) == {}


def test_decimal_comma_is_the_value_not_ten_times_it():
    values = parse_clinical({"fsh": "4,5", "volume_ml": "9,2", "edv": "2,1"})
    assert values == {"fsh": 4.5, "volume_ml": 9.2, "edv_cm_s": 2.1, "volume_formula": "entered"}


def test_edv_under_the_exam_name_and_twice():
    assert parse_clinical({"edv_cm_s": "2,1"})["edv_cm_s"] == 2.1
    assert parse_clinical({"edv": "2.1", "edv_cm_s": "2,1"})["edv_cm_s"] == 2.1  # same value twice is fine
    with pytest.raises(InputError, match="EDV given twice") as err:
        parse_clinical({"edv": "2.1", "edv_cm_s": "3"})
    assert err.value.field == "edv_cm_s"


def test_every_bad_field_is_reported_at_once_and_first_in_form_order():
    values, errors = check_clinical({"fsh": "abc", "volume_ml": "1,000", "edv": "900"})
    assert list(errors) == ["fsh", "volume_ml", "edv"] and values == {}
    assert "outside the plausible range 0–50 cm/s" in errors["edv"]
    with pytest.raises(InputError) as err:
        parse_clinical({"fsh": "abc", "edv": "900"})
    assert err.value.field == "fsh"


def test_dimensions_use_the_same_parser():
    values = parse_clinical({"length_cm": "4,5", "width_cm": "3", "height_cm": "2,5"})
    assert values["volume_ml"] == pytest.approx(0.71 * 4.5 * 3 * 2.5, abs=1e-3)
    assert values["volume_formula"] == "lambert_0.71" and values["length_cm"] == 4.5
    _, errors = check_clinical({"length_cm": "4,5", "width_cm": "1e3", "height_cm": "2"})
    assert "width_cm" in errors and "not a number" in errors["width_cm"]
    _, errors = check_clinical({"length_cm": "4", "width_cm": "3"})
    assert "height_cm missing" in errors["height_cm"]
    _, errors = check_clinical({"volume_ml": "9", "length_cm": "4", "width_cm": "3", "height_cm": "2"})
    assert "not both" in errors["volume_ml"]
