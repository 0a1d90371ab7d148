"""Nomogram stage: statistics without R, the device-side nomogram, `noa-edge nomogram` and `evaluate`.

The training run is synthetic (tests/nomogram_fixture.py): real dataset CSVs loaded by the real
converters.dataset loader (check_images=False, no image files), simulated out-of-fold probabilities.
"""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from converters import evaluate as ev
from converters import nomogram as nm
from converters import stats
from converters.cli import register as register_host_commands
from edge.nomogram import Nomogram, NomogramError, load_nomogram, points_scaling

sys.path.insert(0, str(Path(__file__).parent))
from nomogram_fixture import make_run  # noqa: E402
from reference_image import expected_model_input  # noqa: E402
from reference_stats import delong, youden  # noqa: E402

PATIENT = {"dl_probability": 0.83, "fsh": 14.2, "volume_ml": 9.1, "edv_cm_s": 2.4}


def cli():
    app = typer.Typer()
    register_host_commands(app)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode
    return app


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """One analysed development run shared by the read-only tests."""
    root = tmp_path_factory.mktemp("dev")
    ds, run = make_run(root)
    rep = nm.analyse(run, bootstrap=40, seed=1)
    return ds, run, rep


# ------------------------------------------------------------------------- stats (no R needed)
def test_separation_no_variance_and_collinearity_raise_clear_errors():
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    y = (x > 0).astype(int)
    with pytest.raises(stats.SeparationError, match="separation.*'dl'"):
        stats.fit_logistic(np.column_stack([x, rng.normal(size=60)]), y, ["dl", "fsh"])
    y2 = (rng.random(60) < 0.5).astype(int)
    with pytest.raises(stats.ModelInputError, match="'edv' has no variance"):
        stats.fit_logistic(np.column_stack([x, np.full(60, 3.0)]), y2, ["x", "edv"])
    with pytest.raises(stats.ModelInputError, match="collinear"):
        stats.fit_logistic(np.column_stack([x, 2 * x + 1]), y2, ["a", "b"])
    with pytest.raises(stats.ModelInputError, match="single class"):
        stats.fit_logistic(x[:, None], np.ones(60, int))
    y3 = np.zeros(60, int)
    y3[:12] = 1
    fit3 = stats.fit_logistic(np.column_stack([rng.normal(size=60), rng.normal(size=60)]), y3)
    assert any("6.0 events per variable" in w for w in fit3.warnings)


def test_quasi_complete_separation_detected():
    x = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3], float)
    y = np.array([0, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1])      # classes overlap: the MLE exists
    assert not stats.check_separation(np.column_stack([np.ones(12), x]), y)
    y_q = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1])    # mixed only at x == 1: quasi-complete
    assert stats.check_separation(np.column_stack([np.ones(12), x]), y_q)
    with pytest.raises(stats.SeparationError):
        stats.fit_logistic(x[:, None], y_q)
    assert np.isfinite(stats.fit_logistic(x[:, None], y).coef).all()


def test_batch_fit_equals_single_fit_on_resampled_rows():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = (rng.random(200) < 1 / (1 + np.exp(-X @ [1.0, -0.5, 0.3]))).astype(int)
    idx = rng.integers(0, 200, size=(5, 200))
    W = np.stack([np.bincount(i, minlength=200) for i in idx]).astype(float)
    coefs, ok = stats.fit_logistic_batch(np.column_stack([np.ones(200), X]), y.astype(float), W)
    assert ok.all()
    for b in range(5):
        single = stats.fit_logistic(X[idx[b]], y[idx[b]], check=False)
        np.testing.assert_allclose(coefs[b], single.coef, atol=1e-7)
        assert stats._weighted_auc(y, X @ coefs[b, 1:], W[b]) == pytest.approx(
            stats.roc_auc(y[idx[b]], X[idx[b]] @ coefs[b, 1:]), abs=1e-12)


def test_youden_threshold_and_classification_table():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    yt = stats.youden_threshold(y, p)
    assert yt["threshold"] == pytest.approx(0.3) and yt["youden_j"] == pytest.approx(2 / 3)
    m = stats.classification_metrics(y, p, yt["threshold"])
    assert m["table"] == {"tp": 3, "fp": 1, "fn": 0, "tn": 2}
    assert m["sensitivity"]["value"] == 1.0 and m["sensitivity"]["ci"][1] == 1.0
    assert m["specificity"]["value"] == pytest.approx(2 / 3)


def test_decision_curve_reference_strategies():
    y = np.array([1, 1, 1, 0])
    d = stats.decision_curve(y, {"perfect": y.astype(float)}, thresholds=[0.25, 0.5])
    np.testing.assert_allclose(d["treat_all"], [0.75 - 0.25 / 3, 0.5])
    np.testing.assert_allclose(d["models"]["perfect"], [0.75, 0.75])


def test_table1_tests_are_chosen_by_the_data():
    rng = np.random.default_rng(2)
    normal = stats.compare_continuous({"a": list(rng.normal(0, 1, 80)), "b": list(rng.normal(0.5, 1, 80))})
    skewed = stats.compare_continuous({"a": list(rng.lognormal(0, 1, 80)),
                                       "b": list(rng.lognormal(0.3, 1, 80)) + [None]})
    assert normal["test"] == "Welch t-test" and skewed["test"] == "Mann-Whitney U"
    assert skewed["groups"]["b"]["missing"] == 1
    three = stats.compare_continuous({"a": list(rng.lognormal(0, 1, 30)), "b": list(rng.lognormal(0, 1, 30)),
                                      "c": list(rng.lognormal(1, 1, 30))})
    assert three["test"] == "Kruskal-Wallis"
    small = stats.compare_categorical({"a": ["L", "L", "R"], "b": ["R", "R", "R", "L"]})
    assert small["test"] == "Fisher exact"


# ------------------------------------------------------------------------ device-side nomogram
def test_device_prediction_equals_formula_and_points(dev):
    _, run, _ = dev
    nomo = Nomogram.load(run / "nomogram.json")
    spec = nomo.spec
    res = nomo.predict(PATIENT)
    lp = spec["intercept"] + sum(
        p["coef"] * (np.log(PATIENT[p["source"]] / (1 - PATIENT[p["source"]])) if p["transform"] == "logit"
                     else PATIENT[p["source"]]) for p in spec["predictors"])
    assert res["lp"] == pytest.approx(lp, abs=1e-12)
    assert res["probability"] == pytest.approx(1 / (1 + np.exp(-lp)), abs=1e-15)
    assert res["label"] == ("NOA" if res["probability"] >= spec["threshold"] else "OA")
    assert nomo.probability_from_points(res["total_points"]) == pytest.approx(res["probability"], abs=1e-12)
    # rms scaling: the widest-ranging axis spans exactly 0-100 points, the others less
    spans = [abs(a["points_max"] - a["points_min"]) for a in spec["points"]["axes"]]
    assert max(spans) == pytest.approx(100) and min(spans) < 100


def _one_predictor_nomogram(coef: float, intercept: float, threshold: float = 0.5) -> Nomogram:
    preds = [{"name": "fsh", "source": "fsh", "transform": "identity", "coef": coef, "label": "Serum FSH",
              "unit": "IU/L", "range": [0, 200]},
             {"name": "volume_ml", "source": "volume_ml", "transform": "identity", "coef": -0.25,
              "label": "Testicular volume", "unit": "mL", "range": [0.5, 60]}]
    return Nomogram({"schema": "noa-edge.nomogram/1", "intercept": intercept, "predictors": preds,
                     "points": points_scaling(preds, {"fsh": (0, 60), "volume_ml": (0, 40)}),
                     "threshold": threshold})


def test_a_probability_exactly_at_the_threshold_is_called_positive():
    nomo = _one_predictor_nomogram(0.5, -2.5)   # fsh 10, volume 10: lp = -2.5 + 5 - 2.5 = 0, probability ½
    at = nomo.predict({"fsh": 10, "volume_ml": 10})
    assert at["lp"] == 0.0 and at["probability"] == 0.5 and at["label"] == "NOA"
    below = nomo.predict({"fsh": 9.99, "volume_ml": 10})
    assert below["probability"] < 0.5 and below["label"] == "OA"


def test_points_rise_with_a_positive_and_fall_with_a_negative_coefficient():
    """rms scaling written out: FSH spans 0.5·60 = 30 lp units = 100 points; volume 0.25·40 = 10 lp units,
    so 33.3 points at volume 0 falling to 0 at 40 mL."""
    nomo = _one_predictor_nomogram(0.5, -2.5)
    p = nomo.predict({"fsh": 30, "volume_ml": 8})["points"]
    assert p["fsh"] == pytest.approx(50.0, abs=1e-9)
    assert p["volume_ml"] == pytest.approx(100 / 3 * (1 - 8 / 40), abs=1e-9)
    assert nomo.predict({"fsh": 60, "volume_ml": 40})["points"] == pytest.approx({"fsh": 100.0, "volume_ml": 0.0})
    assert nomo.predict({"fsh": 0, "volume_ml": 0.5})["points"]["fsh"] == pytest.approx(0.0)


def test_logit_transform_of_the_dl_probability():
    spec = {"schema": "noa-edge.nomogram/1", "intercept": 0.0, "threshold": 0.5, "predictors": [
        {"name": "dl_logit", "source": "dl_probability", "transform": "logit", "coef": 1.0, "range": [0.001, 0.999]}]}
    spec["points"] = points_scaling(spec["predictors"], {"dl_logit": (0.01, 0.99)})
    res = Nomogram(spec).predict({"dl_probability": 0.8})
    assert res["lp"] == pytest.approx(np.log(4.0), abs=1e-12)   # log(0.8 / 0.2)
    assert res["probability"] == pytest.approx(0.8, abs=1e-12)   # logit then sigmoid: back to 0.8


def test_device_rejects_bad_inputs_with_clear_messages(dev):
    nomo = Nomogram.load(dev[1] / "nomogram.json")
    with pytest.raises(NomogramError) as e:
        nomo.predict({"dl_probability": 0.5, "fsh": -3, "volume_ml": "abc"})
    msg = str(e.value)
    assert "Serum FSH (fsh) = -3 IU/L is outside the plausible range 0–200 IU/L" in msg
    assert "Testicular volume (volume_ml) = 'abc' is not a number" in msg
    assert "EDV (edv_cm_s) is missing" in msg
    with pytest.raises(NomogramError, match="DL probability .* outside"):
        nomo.predict({**PATIENT, "dl_probability": 1.7})
    res = nomo.predict({**PATIENT, "dl_probability": 1.0})  # saturated sigmoid: clipped, not refused
    assert res["inputs"]["dl_probability"] == 0.999 and "clipped" in res["notes"][0]


def test_device_rejects_broken_nomogram_files(dev, tmp_path):
    spec = json.loads((dev[1] / "nomogram.json").read_text())
    bad = copy.deepcopy(spec)
    bad["points"]["axes"][1]["points_max"] *= 1.5
    with pytest.raises(NomogramError, match="points scaling is inconsistent"):
        Nomogram(bad)
    bad = copy.deepcopy(spec)
    bad["predictors"][0]["transform"] = "sqrt"
    with pytest.raises(NomogramError, match="transform 'sqrt'"):
        Nomogram(bad)
    bad = copy.deepcopy(spec)
    del bad["intercept"]
    with pytest.raises(NomogramError, match="missing field 'intercept'"):
        Nomogram(bad)
    with pytest.raises(NomogramError, match="schema"):
        Nomogram({**spec, "schema": "other/9"})
    (tmp_path / "n.json").write_text("{oops")
    with pytest.raises(NomogramError, match="not valid JSON"):
        load_nomogram(tmp_path / "n.json")
    assert load_nomogram({"nomogram": spec}).intercept == spec["intercept"]  # bundle manifest form


def test_svg_is_valid_and_marks_the_patient(dev):
    nomo = Nomogram.load(dev[1] / "nomogram.json")
    svg = nomo.render_svg(PATIENT)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    for label in ("Points", "DL probability", "Serum FSH (IU/L)", "Total points", "Probability of NOA"):
        assert label in texts
    res = nomo.predict(PATIENT)
    assert f"Total {res['total_points']:.0f} points" in texts
    circles = list(root.iter("{http://www.w3.org/2000/svg}circle"))
    assert len(circles) == len(nomo.predictors) + 2
    assert "circle" not in nomo.render_svg()


def test_edge_nomogram_imports_numpy_only():
    code = ("import sys, edge.nomogram\n"
            "bad = [m for m in ('matplotlib', 'scipy', 'tensorflow', 'keras', 'sklearn') if m in sys.modules]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_points_scaling_negative_coefficient():
    pts = points_scaling([{"name": "a", "transform": "identity", "coef": 2.0},
                          {"name": "b", "transform": "identity", "coef": -0.5}], {"a": (0, 10), "b": (0, 10)})
    assert pts["scale_per_unit_lp"] == pytest.approx(5.0)
    assert pts["axes"][1] == {"name": "b", "min": 0.0, "max": 10.0, "points_min": 25.0, "points_max": 0.0}


# ------------------------------------------------------------------------------ nomogram stage
def test_analyse_writes_contract_report_and_figures(dev):
    ds, run, rep = dev
    for name in ("nomogram.json", "nomogram.png", "nomogram.svg", "report.json", "report.html"):
        assert (run / name).stat().st_size > 500, name
    saved = json.loads((run / "report.json").read_text())
    assert saved["model"]["predictors"] == ["dl_logit", "fsh", "volume_ml", "edv_cm_s"]
    assert saved["flow"]["analysed_images"] == 544 and saved["flow"]["excluded_missing"] == 6  # 3 patients lack FSH
    assert saved["flow"]["controls_excluded"]["patients"] == 30
    assert {u["name"] for u in saved["univariable"]} == set(nm.CANDIDATES)
    assert set(saved["comparisons"]) == {"dl_only", "clinical_only", "fsh_only"}
    assert "vs_nomogram" in saved["schoor_rule"]
    assert saved["validation"]["B_used"] == 40 and saved["validation"]["resampling"].startswith("patients")
    # the device, fed the development rows, reproduces the host's fitted probabilities exactly
    nomo = Nomogram(saved["nomogram"])
    from converters.dataset import load_dataset

    probs, _, _ = nm.read_oof(run, None)
    rows, _ = nm.joined_rows(load_dataset(ds, check_images=False), probs)
    X, y, kept, _ = nm.design(rows, saved["model"]["predictors"])
    fit = stats.fit_logistic(X, y)
    host = 1 / (1 + np.exp(-fit.linear_predictor(X)))
    device = np.array([nomo.predict(r)["probability"] for r in kept])
    np.testing.assert_allclose(device, host, atol=1e-12)
    assert rep["discrimination"]["nomogram"]["auc"] == pytest.approx(stats.roc_auc(y, host), abs=1e-12)
    # the threshold is Youden's cut on the development fit, found here by brute force over every cut
    best = youden(y, host)
    assert saved["nomogram"]["threshold"] == pytest.approx(best["threshold"], abs=1e-12)
    assert saved["nomogram"]["threshold_method"] == "youden_development"
    at = rep["performance"]["at_threshold"]
    assert at["sensitivity"]["value"] == pytest.approx(best["sensitivity"], abs=1e-12)
    assert at["specificity"]["value"] == pytest.approx(best["specificity"], abs=1e-12)


def test_report_html_is_self_contained_with_banner(dev):
    html = (dev[1] / "report.html").read_text()
    assert "synthetic demo model — not for diagnosis" in html
    assert html.count("data:image/png;base64,") >= 4
    assert "src=\"http" not in html and "href=\"http" not in html
    for section in ("Participants (flow)", "Characteristics (Table 1)", "Model specification", "Performance",
                    "How to use the nomogram", "Internal validation", "Clinical utility (decision curve)"):
        assert section in html


def test_clinic_dataset_has_no_banner_and_cli_runs(tmp_path):
    ds, run = make_run(tmp_path, kind="clinic", n_oa=60, n_noa=80, n_controls=5, seed=3)
    res = CliRunner().invoke(cli(), ["nomogram", str(run), "--bootstrap", "10", "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "AUC" in res.output and "DeLong p" in res.output and "optimism-corrected C" in res.output
    assert "not for diagnosis" not in (run / "report.html").read_text()


def test_cli_bad_inputs_give_clear_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli(), ["nomogram", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "run.json: missing" in res.output and "Traceback" not in res.output
    ds, run = make_run(tmp_path, n_oa=40, n_noa=40, n_controls=0, seed=4)
    res = runner.invoke(cli(), ["nomogram", str(run), "--predictors", "dl_logit,shoe_size"])
    assert res.exit_code == 2 and "unknown predictor(s) shoe_size" in res.output
    res = runner.invoke(cli(), ["nomogram", str(run), "--backbone", "VGG16"])
    assert res.exit_code == 2 and "no rows for backbone 'VGG16'" in res.output
    # a predictor with no variance
    rows = list(csv.DictReader((ds / "images.csv").open()))
    for r in rows:
        r["edv_cm_s"] = "3.0"
        r["ri"] = f"{(float(r['psv_cm_s']) - 3.0) / float(r['psv_cm_s']):.3f}"
    _rewrite(ds / "images.csv", rows)
    res = runner.invoke(cli(), ["nomogram", str(run), "--bootstrap", "0"])
    assert res.exit_code == 2 and "predictor 'edv_cm_s' has no variance" in res.output


def test_perfect_separation_is_reported_not_fitted(tmp_path):
    ds, run = make_run(tmp_path, n_oa=40, n_noa=40, n_controls=0, seed=5)
    rows = list(csv.DictReader((run / "oof_predictions.csv").open()))
    for r in rows:
        r["prob"] = "0.97" if r["label"] == "1" else "0.02"
    _rewrite(run / "oof_predictions.csv", rows)
    res = CliRunner().invoke(cli(), ["nomogram", str(run), "--bootstrap", "0"])
    assert res.exit_code == 2 and "separation" in res.output and "infinite" in res.output
    assert not (run / "nomogram.json").exists()


def test_low_epv_warns(tmp_path):
    ds, run = make_run(tmp_path, n_oa=12, n_noa=30, n_controls=0, seed=6, dl_strength=0.6)
    res = CliRunner().invoke(cli(), ["nomogram", str(run), "--bootstrap", "20"])
    assert res.exit_code == 0, res.output
    assert "events per variable" in res.output and "< 10" in res.output
    assert any("events per variable" in n for n in json.loads((run / "report.json").read_text())["notes"])


# ------------------------------------------------------------------------------------ evaluate
def _prob_csv(run: Path, path: Path) -> Path:
    rows = [r for r in csv.DictReader((run / "oof_predictions.csv").open()) if r["backbone"] == "NASNetMobile"]
    _rewrite(path, [{"image_id": r["image_id"], "prob": r["prob"]} for r in rows])
    return path


def test_evaluate_on_development_data_reproduces_apparent_fit(dev, tmp_path):
    """No refit: on the development rows the frozen model must give the apparent AUC, calibration-in-the-
    large 0 and slope 1 (ML score equations), which a refit or a wrong threshold would not guarantee."""
    ds, run, rep = dev
    res = ev.evaluate(run, ds, dl_probs=_prob_csv(run, tmp_path / "p.csv"))
    assert res["auc"] == pytest.approx(rep["discrimination"]["nomogram"]["auc"], abs=1e-12)
    # the CI against the all-pairs DeLong reference on the development fit (not delong_ci against itself)
    from converters.dataset import load_dataset

    probs, _, _ = nm.read_oof(run, None)
    rows, _ = nm.joined_rows(load_dataset(ds, check_images=False), probs)
    X, y, _, _ = nm.design(rows, rep["model"]["predictors"])
    host = 1 / (1 + np.exp(-stats.fit_logistic(X, y).linear_predictor(X)))
    ref = delong(y, host)
    assert res["auc"] == pytest.approx(ref["auc"], abs=1e-12)
    assert res["auc_ci"] == pytest.approx([ref["auc"] - 1.959963984540054 * ref["se"],
                                           min(1.0, ref["auc"] + 1.959963984540054 * ref["se"])], abs=1e-9)
    assert res["calibration_slope"] == pytest.approx(1.0, abs=1e-7)
    assert res["calibration_in_the_large"] == pytest.approx(0.0, abs=1e-7)
    assert res["sensitivity"] == pytest.approx(rep["performance"]["at_threshold"]["sensitivity"]["value"])
    assert res["n_images"] == 544 and res["n_patients"] == 272 and res["excluded"] == {"missing input": 6}


def test_evaluate_external_cohort_via_cli(dev, tmp_path):
    _, run, rep = dev
    ext_ds, ext_run = make_run(tmp_path, n_oa=35, n_noa=65, n_controls=0, seed=11, dl_strength=1.2, name="ext")
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(cli(), ["evaluate", str(run), str(ext_ds), "--dl-probs",
                                     str(_prob_csv(ext_run, tmp_path / "ext.csv")), "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    for key in ("auc", "auc_ci", "dl_auc", "sensitivity", "specificity", "calibration_slope",
                "calibration_in_the_large", "n_patients", "n_images"):
        assert key in got, key
    assert got["threshold"] == rep["nomogram"]["threshold"] and got["refit"] is False
    assert got["excluded"] == {"missing input": 6}  # the fixture blanks FSH of 3 patients
    assert got["n_patients"] == 97 and 0.7 < got["auc"] <= 1 and got["calibration_slope"] != pytest.approx(1.0)
    res = CliRunner().invoke(cli(), ["evaluate", str(tmp_path), str(ext_ds)])
    assert res.exit_code == 2 and "neither a bundle" in res.output


def _rewrite(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_evaluate_scores_images_with_keras_run(dev, tmp_path):
    """The real scoring path RUN/model.keras via keras (ROIs cropped by edge.preprocess.crop_roi inside) against
    the model on inputs the test computes itself; a tiny random CNN stands in for the trained backbone. (The bundle
    path, edge.bundle + LiteRT, is not compared here: this tiny model converted with TFLiteConverter gives -FLT_MAX
    outputs, see the closing report.)"""
    import cv2
    import keras

    ds, run = make_run(tmp_path, n_oa=8, n_noa=12, n_controls=0, seed=8, fsh_missing=0, name="img")
    rng = np.random.default_rng(8)
    # Each image is constant on 4×3 blocks aligned with the ROI (16, 9, 128, 96), so the 32 px model input is
    # exactly one value per block: the expected input is computed below from the written pixels, not by crop_roi.
    image_rows = list(csv.DictReader((ds / "images.csv").open()))
    written = {}
    for r in image_rows:
        r.update(roi_x=16, roi_y=9, roi_w=128, roi_h=96)
        (ds / r["file"]).parent.mkdir(exist_ok=True)
        level = rng.uniform(20, 230)  # brightness differs per image so the random CNN's outputs spread
        blocks = np.clip(level + rng.normal(0, 20, (40, 40)), 0, 255).astype(np.uint8)
        written[r["image_id"]] = np.kron(blocks, np.ones((3, 4), np.uint8))  # 120 × 160
        cv2.imwrite(str(ds / r["file"]), written[r["image_id"]])
    _rewrite(ds / "images.csv", image_rows)
    inp = keras.Input((32, 32, 3), dtype="float32")
    feat = keras.layers.Conv2D(4, 3, strides=4, activation="relu", kernel_initializer=keras.initializers.RandomNormal(
        seed=1))(keras.layers.Rescaling(1 / 255)(inp))
    cam4 = keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.RandomNormal(stddev=5.0, seed=2))(feat)
    prob = keras.layers.Activation("sigmoid", name="prob")(keras.layers.GlobalAveragePooling2D()(cam4))
    model = keras.Model(inp, {"prob": prob,
                              "cam": keras.layers.Reshape((8, 8), name="cam")(cam4)})
    model.save(run / "model.keras")
    (run / "nomogram.json").write_text((dev[1] / "nomogram.json").read_text())

    from converters.dataset import load_dataset

    dset = load_dataset(ds)
    rows = dset.labelled_images()
    via_keras = ev.score_images_with_keras(run, dset, rows, progress=False)
    expected = np.stack([expected_model_input(written[r["image_id"]], (16, 9, 128, 96), 32) for r in rows])
    assert np.array_equal(expected[0, :, :, 0], written[rows[0]["image_id"]][9:105:3, 16:144:4])  # one block each
    direct = model(expected.astype("float32"))
    np.testing.assert_allclose([via_keras[r["image_id"]] for r in rows], np.asarray(direct["prob"])[:, 0], atol=1e-6)
    assert len(via_keras) == len(rows) == 40 and np.ptp(list(via_keras.values())) > 0.01
    res = ev.evaluate(run, ds, progress=False)
    assert res["dl_probabilities"].endswith("(keras)") and res["source_kind"] == "run" and res["n_images"] == 40
    assert res["dl_auc"] == pytest.approx(stats.roc_auc([r["label"] for r in rows],
                                                        [via_keras[r["image_id"]] for r in rows]))


# ------------------------------------------------------- thresholds, patient level, degenerate cohorts (14)
def _by_patient_mean(pids, y, p):
    """The patient rule written out here (mean of the patient's testes), to check the report against."""
    acc: dict = {}
    for pid, yy, pp in zip(pids, y, p, strict=True):
        acc.setdefault(pid, [yy, []])[1].append(pp)
    return np.array([v[0] for v in acc.values()]), np.array([sum(v[1]) / len(v[1]) for v in acc.values()])


def test_evaluate_reports_a_patient_block_and_the_threshold_rule(dev, tmp_path):
    _, run, rep = dev
    ext_ds, ext_run = make_run(tmp_path, n_oa=35, n_noa=65, n_controls=0, seed=11, dl_strength=1.2, name="ext")
    probs = _prob_csv(ext_run, tmp_path / "ext.csv")
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(cli(), ["evaluate", str(run), str(ext_ds), "--dl-probs", str(probs), "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    assert got["threshold_rule"] == "frozen" and got["threshold"] == rep["nomogram"]["threshold"]
    assert "patient level (97 patients)" in res.output and "(frozen)" in res.output
    # the patient block against the rule written out here and the all-pairs DeLong reference
    from converters.dataset import load_dataset

    nomo = Nomogram(rep["nomogram"])
    pr = ev.read_prob_csv(probs)
    rows = [r for r in load_dataset(ext_ds, check_images=False).labelled_images(include_controls=False)
            if r.get("fsh") is not None]
    p = [nomo.predict({**r, "dl_probability": pr[r["image_id"]]})["probability"] for r in rows]
    py, pp = _by_patient_mean([r["patient_id"] for r in rows], [r["label"] for r in rows], p)
    pat = got["patient"]
    ref = delong(py, pp)
    assert pat["n_patients"] == 97 == len(py) and pat["auc"] == pytest.approx(ref["auc"], abs=1e-12)
    assert pat["auc_ci"][0] == pytest.approx(ref["auc"] - 1.959963984540054 * ref["se"], abs=1e-9)
    thr = got["threshold"]
    assert pat["sensitivity"] == pytest.approx(np.mean(pp[py == 1] >= thr), abs=1e-12)
    assert pat["specificity"] == pytest.approx(np.mean(pp[py == 0] < thr), abs=1e-12)
    assert pat["accuracy"] == pytest.approx(np.mean((pp >= thr) == (py == 1)), abs=1e-12)
    # a fixed threshold, and a target chosen on this cohort (labelled as such)
    res = CliRunner().invoke(cli(), ["evaluate", str(run), str(ext_ds), "--dl-probs", str(probs), "--json", str(out),
                                     "--threshold", "0.3"])
    got = json.loads(out.read_text())
    assert res.exit_code == 0 and got["threshold"] == 0.3 and got["threshold_rule"] == "0.3"
    assert got["frozen_threshold"] == rep["nomogram"]["threshold"]
    res = CliRunner().invoke(cli(), ["evaluate", str(run), str(ext_ds), "--dl-probs", str(probs), "--json", str(out),
                                     "--threshold", "sens=0.9"])
    got = json.loads(out.read_text())
    assert got["threshold_rule"] == "sens=0.9" and "optimistic" in got["threshold_method"] and got["sensitivity"] >= 0.9
    res = CliRunner().invoke(cli(), ["evaluate", str(run), str(ext_ds), "--dl-probs", str(probs), "--threshold", "2"])
    assert res.exit_code == 2 and "--threshold '2'" in res.output and "Traceback" not in res.output


def test_evaluate_on_a_perfectly_separated_cohort_reports_what_is_defined(dev, tmp_path):
    _, run, _ = dev
    ext_ds, ext_run = make_run(tmp_path, n_oa=30, n_noa=40, n_controls=0, seed=12, name="sep")
    rows = [r for r in csv.DictReader((ext_run / "oof_predictions.csv").open()) if r["backbone"] == "NASNetMobile"]
    _rewrite(tmp_path / "sep.csv", [{"image_id": r["image_id"], "prob": "0.999" if r["label"] == "1" else "0.001"}
                                    for r in rows])
    patients = list(csv.DictReader((ext_ds / "patients.csv").open()))  # FSH far apart too: lp separates the groups
    for r in patients:
        r["fsh"] = "" if not r["fsh"] else ("60" if r["group"] == "NOA" else "2")
    _rewrite(ext_ds / "patients.csv", patients)
    out = tmp_path / "sep.json"
    res = CliRunner().invoke(cli(), ["evaluate", str(run), str(ext_ds), "--dl-probs", str(tmp_path / "sep.csv"),
                                     "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "calibration slope not estimable: perfect separation" in res.output and "Traceback" not in res.output
    got = json.loads(out.read_text())
    assert got["auc"] == 1.0 and got["calibration_slope"] is None and got["slope_ci"] == [None, None]
    assert any("perfect separation" in n for n in got["notes"])
    for key in ("sensitivity", "specificity", "brier", "calibration_in_the_large", "dl_auc"):
        assert got[key] is not None, key
    assert got["patient"]["auc"] == 1.0


def test_evaluate_on_one_class_is_a_clear_error(dev, tmp_path):
    _, run, _ = dev
    ext_ds, ext_run = make_run(tmp_path, n_oa=0, n_noa=20, n_controls=0, seed=13, name="one")
    res = CliRunner().invoke(cli(), ["evaluate", str(run), str(ext_ds), "--dl-probs",
                                     str(_prob_csv(ext_run, tmp_path / "one.csv"))])
    assert res.exit_code == 2 and "all NOA" in res.output and "no AUC" in res.output
    assert "Traceback" not in res.output


def test_nomogram_threshold_option_and_patient_block(tmp_path):
    ds, run = make_run(tmp_path, n_oa=50, n_noa=70, n_controls=0, seed=14)
    runner = CliRunner()
    res = runner.invoke(cli(), ["nomogram", str(run), "--bootstrap", "0", "--threshold", "sens=1.5"])
    assert res.exit_code == 2 and "--threshold 'sens=1.5'" in res.output and "Traceback" not in res.output
    assert not (run / "nomogram.json").exists()
    res = runner.invoke(cli(), ["nomogram", str(run), "--bootstrap", "0", "--threshold", "0.42"])
    assert res.exit_code == 0, res.output
    spec = json.loads((run / "nomogram.json").read_text())
    saved = json.loads((run / "report.json").read_text())
    assert spec["threshold"] == 0.42 and spec["threshold_method"] == "fixed" and saved["threshold_rule"] == "0.42"
    assert saved["performance"]["at_threshold"]["threshold"] == 0.42
    html = (run / "report.html").read_text()
    assert "<code class='threshold-rule'>0.42</code>" in html and "Patient level (" in html
    # the patient block against the rule written out here
    from converters.dataset import load_dataset

    probs, _, _ = nm.read_oof(run, None)
    rows, _ = nm.joined_rows(load_dataset(ds, check_images=False), probs)
    X, y, kept, _ = nm.design(rows, saved["model"]["predictors"])
    host = 1 / (1 + np.exp(-stats.fit_logistic(X, y).linear_predictor(X)))
    py, pp = _by_patient_mean([r["patient_id"] for r in kept], y, host)
    pat = saved["patient"]
    assert pat["n_patients"] == len(py) and pat["auc"] == pytest.approx(delong(py, pp)["auc"], abs=1e-12)
    assert pat["sensitivity"] == pytest.approx(np.mean(pp[py == 1] >= 0.42), abs=1e-12)
    assert pat["specificity"] == pytest.approx(np.mean(pp[py == 0] < 0.42), abs=1e-12)
    # spec=0.9: the lowest threshold whose development specificity reaches 0.9
    rep = nm.analyse(run, bootstrap=0, threshold="spec=0.9", write=False)
    thr = rep["nomogram"]["threshold"]
    assert rep["threshold_rule"] == "spec=0.9" and rep["nomogram"]["threshold_method"] == "spec=0.9_development"
    assert np.mean(host[y == 0] < thr) >= 0.9
    below = host[host < thr].max()                  # the next lower cut would classify that image positive
    assert np.mean(host[y == 0] < below) < 0.9
