"""The words every surface shares (edge/wording.py) and the one patient-level rule (edge/patient.py), which
the host's CV statistics (converters/cv_report.py) use too."""

from __future__ import annotations

import datetime as dt

import pytest

from edge import wording
from edge.patient import PATIENT_RULE, newest_per_side, patient_probability, summarize

PERCENT = [(0.853, "85 %"), (0.5, "50 %"), (0.649, "65 %"), (1.0, "> 99 %"), (0.9951, "> 99 %"), (0.99, "99.0 %"),
           (0.0, "< 1 %"), (0.004, "< 1 %"), (0.01, "1.0 %"), (0.05, "5.0 %"), (0.0999, "10.0 %"), (0.93, "93.0 %"),
           (0.9, "90 %"), (None, "-")]


@pytest.mark.parametrize("p,text", PERCENT, ids=[str(p) for p, _ in PERCENT])
def test_percent_never_certain(p, text):
    assert wording.percent(p) == text


def test_close_probability_and_threshold_never_read_equal():
    assert wording.pair_texts(0.652, 0.649) == ("65.2 %", "64.9 %")
    assert wording.pair_texts(0.85, 0.65) == ("85 %", "65 %")


def _exam(**kw):
    exam = {"dl_probability": 0.62, "nomogram_probability": 0.853, "threshold": 0.649, "label": "NOA",
            "inputs": {"fsh": 21.3, "volume_ml": 8.2, "edv_cm_s": 2.1, "volume_formula": "entered"},
            "points": {"dl_logit": 10.0, "edv_cm_s": 5.0}, "thresholds": {"nomogram": 0.649, "dl_only": 0.5},
            "labels": {"positive": "NOA", "negative": "OA"}, "created": "2025-05-01T10:11:12.000+00:00"}
    exam.update(kw)
    return exam


def test_sentences():
    assert wording.result_sentence(_exam()) == "85 % probability of NOA (nomogram); above the 65 % threshold → NOA."
    dl_only = _exam(nomogram_probability=None, threshold=0.5, label="NOA", inputs={"fsh": 21.3})
    assert wording.result_sentence(dl_only) == ("62 % probability of NOA (image model alone; the nomogram also "
                                                "needs volume and EDV); above the 50 % threshold → NOA.")
    why = wording.threshold_explanation(dl_only)
    assert "50 %" in why and "65 %" in why  # why the DL-only threshold differs from the nomogram's
    below = wording.result_sentence(_exam(nomogram_probability=0.2, label="OA"))
    assert below.endswith("below the 65 % threshold → OA.")


def test_display_has_human_labels_with_units_and_local_time():
    d = wording.display(_exam(inputs={"volume_ml": 17.04, "volume_formula": "lambert_0.71", "length_cm": 4.0,
                                      "width_cm": 3.0, "height_cm": 2.0}))
    assert [r["label"] for r in d["inputs"]] == ["Serum FSH", "Testicular volume", "EDV"]
    assert [r["value_text"] for r in d["inputs"]] == ["not given", "17.04 mL (0.71 × 4 × 3 × 2 cm)", "not given"]
    assert [p["label"] for p in d["points"]] == ["Image model (DL probability)", "EDV (cm/s)"]
    text = repr(d)
    assert "dl_logit" not in text and "edv_cm_s" not in text.replace("'name': 'edv_cm_s'", "")
    local = dt.datetime(2025, 5, 1, 10, 11, 12, tzinfo=dt.timezone.utc).astimezone()
    assert d["created_local"].startswith(local.strftime("%Y-%m-%d %H:%M:%S ")) and "(UTC" in d["created_local"]


def test_display_of_an_unreadable_exam_is_words_not_an_error():
    assert "cannot be read" in wording.display(_exam(threshold="high"), strict=False)["sentence"]
    with pytest.raises(ValueError):
        wording.display(_exam(threshold="high"))


def test_patient_rule_is_the_mean_and_the_host_uses_it():
    assert patient_probability([0.2, 0.6]) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        patient_probability([])
    from converters import cv_report

    assert cv_report.patient_probability is patient_probability  # one rule, host and cart
    ids, labels, probs = cv_report.patient_level(["a", "b", "a"], [1, 0, 1], [0.2, 0.3, 0.6])
    assert ids == ["a", "b"] and list(labels) == [1, 0] and list(probs) == pytest.approx([0.4, 0.3])


def test_summary_from_the_newest_exam_per_side():
    exams = [{"id": 1, "side": "L", "dl_probability": 0.9, "nomogram_probability": 0.95},
             {"id": 2, "side": "L", "dl_probability": 0.7, "nomogram_probability": 0.8},
             {"id": 3, "side": "R", "dl_probability": 0.4, "nomogram_probability": 0.5},
             {"id": 4, "side": None, "dl_probability": 0.1, "nomogram_probability": None}]
    sides = newest_per_side(exams)
    assert {s: e["id"] for s, e in sides.items()} == {"L": 2, "R": 3}
    thresholds, labels = {"nomogram": 0.649, "dl_only": 0.5}, {"positive": "NOA", "negative": "OA"}
    res = summarize(sides, thresholds, labels)
    assert res["probability"] == pytest.approx(0.65) and res["basis"] == "nomogram" and res["label"] == "NOA"
    assert res["rule"] == PATIENT_RULE and res["sides_used"] == ["L", "R"]
    sides["R"] = dict(sides["R"], nomogram_probability=None)  # one side DL-only: both sides' DL probabilities
    res = summarize(sides, thresholds, labels)
    assert res["basis"] == "dl_only" and res["probability"] == pytest.approx(0.55) and res["threshold"] == 0.5
    assert wording.patient_sentence(res) == ("Patient: 55 % probability of NOA (mean of left and right, image "
                                             "model alone); above the 50 % threshold → NOA.")
    assert summarize({}, thresholds, labels) is None
