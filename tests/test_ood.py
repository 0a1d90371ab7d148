"""The out-of-distribution guard on the device (edge/ood.py, the Analyzer) with the shipped demo bundle and real
LiteRT: a phantom ROI is not flagged, pydicom's ultrasound example and noise are, the flag and score are stored
with the exam, and a bundle without a description still serves (the guard says why it is off)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pydicom import examples

from conftest import ROOT
from converters.ood_fit import fit_description, guard_of, patient_folds
from edge.bundle import MANIFEST, finalize_manifest, verify
from edge.imaging import decode_image
from edge.ood import OODGuard, flagged, load_guard, scores
from edge.patient import summarize
from edge.pipeline import Analyzer
from edge.store import ExamStore
from edge.wording import OOD_WARNING, display, patient_sentence

DEMO = ROOT / "firmware_assets" / "demo-phantom"
SAMPLES = ROOT / "docs" / "samples"
US_EXAMPLE = examples.get_path("palette_color")  # a real ultrasound image (not testis): flagged by fp32


def frame(path) -> np.ndarray:
    return decode_image(path.read_bytes(), path.name).frame


# ------------------------------------------------------------------------------------------ the score


def test_score_is_the_smallest_class_distance():
    """Two classes far apart: a point at either class mean is in distribution (min over classes, not max),
    a point between or beside them is not. (Features are non-negative activations: squares here, since the
    guard models their square roots.)"""
    rng = np.random.default_rng(0)
    dim = 40

    def sample(centre, n):
        return (rng.normal(0, 1, (n, dim)) + centre) ** 2

    desc = fit_description(np.vstack([sample(30, 300), sample(60, 300)]), np.array([0] * 300 + [1] * 300),
                           max_components=8)
    guard = guard_of(desc)
    assert np.all(scores(guard, desc["means"] ** 2) < 1e-6)
    held = scores(guard, np.vstack([sample(30, 200), sample(60, 200)]))
    threshold = float(np.quantile(held, 0.99))
    outside = scores(guard, np.vstack([np.full((1, dim), 45.0 ** 2), sample(90, 5)]))
    assert np.all(outside > threshold)
    assert not flagged(threshold, threshold) and flagged(threshold + 1e-9, threshold)


def test_patient_folds_keep_patients_whole():
    rows = [{"patient_id": f"P{i:03d}", "label": i % 2, "side": s} for i in range(50) for s in "LR"]
    fold = patient_folds(rows, 5, seed=0)
    for k in range(5):
        held = {r["patient_id"] for r, f in zip(rows, fold, strict=True) if f == k}
        rest = {r["patient_id"] for r, f in zip(rows, fold, strict=True) if f != k}
        assert held.isdisjoint(rest) and len(held) == 10
        assert {r["label"] for r, f in zip(rows, fold, strict=True) if f == k} == {0, 1}


def test_demo_bundle_carries_a_guard_for_every_variant():
    manifest = json.loads((DEMO / MANIFEST).read_text())
    guard = load_guard(DEMO, manifest)
    assert isinstance(guard, OODGuard) and guard.dim == 1056
    assert set(guard.thresholds) == set(manifest["variants"]) >= {"fp32", "fp16", "int8"}  # onnx too, when added
    assert guard.threshold_for("edgetpu") == guard.thresholds["int8"]
    assert manifest["ood"]["file"] in manifest["files"] and manifest["outputs"]["features"] == "features"
    assert manifest["provenance"]["ood"]["dataset"] == manifest["provenance"]["dataset"]


# ------------------------------------------------------------------------------------------ the Analyzer


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    store = ExamStore(tmp_path_factory.mktemp("store"))
    yield Analyzer(DEMO, variant="fp32", threads=1, store=store)
    store.close()


def test_phantom_image_is_not_flagged(analyzer):
    exam = analyzer.analyze(frame(SAMPLES / "oa.png"), trigger="upload")
    assert exam["ood"] is False and exam["ood_score"] <= exam["ood_threshold"]
    assert OOD_WARNING not in display(exam)["sentence"]


@pytest.mark.parametrize("kind", ["ultrasound", "noise"])
def test_unlike_the_training_data_is_flagged_and_stored(analyzer, kind):
    image = frame(US_EXAMPLE) if kind == "ultrasound" else \
        np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    before = analyzer.ood_flagged
    exam = analyzer.analyze(image, trigger="upload")
    assert exam["ood"] is True and exam["ood_score"] > exam["ood_threshold"]
    assert analyzer.ood_flagged == before + 1
    stored = analyzer.store.get_exam(exam["id"])
    assert stored["ood"] is True and stored["ood_score"] == exam["ood_score"]
    assert stored["dl_probability"] == exam["dl_probability"]  # still stored, just not presented as a result
    words = display(stored)
    assert words["sentence"].startswith("Image unlike the training data — result not reliable.")
    assert words["ood_text"] == OOD_WARNING and "not reliable" in words["probability_text"]


def test_health_info_says_the_guard_is_active(analyzer):
    info = analyzer.info()["ood"]
    assert info["active"] is True and info["threshold"] == pytest.approx(json.loads(
        (DEMO / MANIFEST).read_text())["ood"]["thresholds"]["fp32"])


def test_bundle_without_description_still_serves(tmp_path):
    old = tmp_path / "old-bundle"
    shutil.copytree(DEMO, old)
    manifest = json.loads((old / MANIFEST).read_text())
    (old / manifest.pop("ood")["file"]).unlink()
    manifest["outputs"].pop("features")
    finalize_manifest(old, manifest)
    assert verify(old) == []
    a = Analyzer(old, variant="fp32", threads=1)
    assert a.info()["ood"]["active"] is False
    assert a.info()["ood"]["message"] == "inactive: no OOD description in this bundle"
    exam = a.analyze(frame(US_EXAMPLE), trigger="upload")
    assert exam["ood"] is None and exam["label"] in ("NOA", "OA")
    assert "Not checked against the training data" in display(exam)["ood_detail"]


def test_description_file_must_be_listed(tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(DEMO, bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    manifest["ood"]["file"] = "elsewhere.npz"
    finalize_manifest(bad, manifest)
    assert any("'ood' must name its description file" in p for p in verify(bad))


def test_patient_level_result_is_not_reliable_when_a_side_is_flagged():
    side = {"dl_probability": 0.8, "nomogram_probability": None, "bundle": {"sha256": "x"}}
    sides = {"L": {**side, "side": "L", "id": 1, "ood": False}, "R": {**side, "side": "R", "id": 2, "ood": True}}
    result = summarize(sides, {"nomogram": 0.6, "dl_only": 0.5}, {"positive": "NOA", "negative": "OA"})
    assert result["ood"] is True
    assert patient_sentence(result).startswith("Image unlike the training data — result not reliable.")
    sides["R"]["ood"] = False
    result = summarize(sides, {"nomogram": 0.6, "dl_only": 0.5}, {"positive": "NOA", "negative": "OA"})
    assert result["ood"] is False and patient_sentence(result).startswith("Patient: ")
