"""converters.stats against independent references written here, in the fast suite (R checks the same in
tests/test_stats_vs_r.py; this file needs no R): DeLong AUC, SE, CI and the paired test against an all-pairs
O(m·n) implementation on small tables with ties; Youden's cut by brute force; the ≥ at the threshold; and the
cluster bootstrap inspected resample by resample (a patient's images always travel together)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from converters import stats
from reference_stats import delong, delong_paired, placements, youden

Z975 = 1.959963984540054


def _tables():
    """Small (y, score1, score2) tables: continuous, heavily tied, a 0/1 rule, tiny and unbalanced."""
    out = []
    for seed, n, digits in ((0, 12, None), (1, 25, 1), (2, 40, 0), (3, 7, 2), (4, 30, None)):
        rng = np.random.default_rng(seed)
        y = np.r_[np.ones(max(2, n // 3), int), np.zeros(n - max(2, n // 3), int)]
        rng.shuffle(y)
        s1 = y * 0.8 + rng.normal(0, 1, n)
        s2 = 0.5 * s1 + rng.normal(0, 1, n)
        if digits is not None:
            s1, s2 = np.round(s1, digits), np.round(s2, digits)
        out.append((y, s1, s2))
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0, 0])
    rule = np.array([1, 1, 0, 0, 1, 0, 0, 1, 0, 0], float)       # a yes/no rule: two distinct scores
    out.append((y, rule, np.linspace(0, 1, 10)))
    return out


TABLES = _tables()
IDS = ["continuous-12", "tied-25", "tied-40", "tiny-7", "continuous-30", "binary-rule"]


@pytest.mark.parametrize("table", TABLES, ids=IDS)
def test_auc_and_delong_ci_equal_the_all_pairs_reference(table):
    y, s1, _ = table
    ref = delong(y, s1)
    got = stats.delong_ci(y, s1)
    assert got["auc"] == pytest.approx(ref["auc"], abs=1e-12)
    assert stats.roc_auc(y, s1) == pytest.approx(ref["auc"], abs=1e-12)
    assert got["se"] == pytest.approx(ref["se"], rel=1e-9, abs=1e-12)
    lo, hi = max(0.0, ref["auc"] - Z975 * ref["se"]), min(1.0, ref["auc"] + Z975 * ref["se"])
    assert got["ci"] == pytest.approx([lo, hi], abs=1e-9)
    assert (got["n_cases"], got["n_controls"]) == (int(y.sum()), int((1 - y).sum()))


@pytest.mark.parametrize("table", TABLES, ids=IDS)
def test_delong_placements_equal_the_all_pairs_reference(table):
    y, s1, _ = table
    auc, v10, v01 = stats.delong_placements(y, s1)
    r_auc, r10, r01 = placements(y, s1)
    assert auc == pytest.approx(r_auc, abs=1e-12)
    np.testing.assert_allclose(v10, r10, atol=1e-12)
    np.testing.assert_allclose(v01, r01, atol=1e-12)


@pytest.mark.parametrize("table", TABLES, ids=IDS)
def test_paired_delong_test_equals_the_all_pairs_reference(table):
    y, s1, s2 = table
    ref = delong_paired(y, s1, s2)
    got = stats.delong_paired_test(y, s1, s2)
    assert got["difference"] == pytest.approx(ref["difference"], abs=1e-12)
    assert got["z"] == pytest.approx(ref["z"], rel=1e-9)
    assert got["p"] == pytest.approx(math.erfc(abs(ref["z"]) / math.sqrt(2)), rel=1e-9)
    sd = math.sqrt(ref["var"])
    assert got["difference_ci"] == pytest.approx([ref["difference"] - Z975 * sd, ref["difference"] + Z975 * sd],
                                                 abs=1e-9)


def test_delong_against_a_hand_computed_table():
    """3 cases, 2 controls, one tie: every number by hand. ψ = [[1, 1], [1, ½], [0, 0]]."""
    y = [1, 1, 1, 0, 0]
    s = [0.9, 0.6, 0.2, 0.3, 0.6]
    # AUC = (1 + 1 + 1 + ½ + 0 + 0) / 6 = 3.5 / 6; V10 = [1, ¾, 0], V01 = [⅔, ½]
    auc = 3.5 / 6
    s10 = ((1 - auc) ** 2 + (0.75 - auc) ** 2 + (0 - auc) ** 2) / 2
    s01 = ((2 / 3 - auc) ** 2 + (0.5 - auc) ** 2) / 1
    got = stats.delong_ci(y, s)
    assert got["auc"] == pytest.approx(auc, abs=1e-15)
    assert got["se"] == pytest.approx(math.sqrt(s10 / 3 + s01 / 2), rel=1e-12)


@pytest.mark.parametrize("table", TABLES, ids=IDS)
def test_youden_cut_equals_brute_force(table):
    y, s1, _ = table
    ref = youden(y, s1)
    got = stats.youden_threshold(y, s1)
    for key in ("threshold", "youden_j", "sensitivity", "specificity"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key


def test_a_score_equal_to_the_threshold_counts_as_positive():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.5, 0.5, 0.2, 0.7])
    m = stats.classification_metrics(y, p, 0.5)
    assert m["table"] == {"tp": 1, "fp": 2, "fn": 1, "tn": 0}


# --------------------------------------------------------------------------------- cluster bootstrap
def _patients() -> np.ndarray:
    """40 patients with 1–3 images each, rows interleaved (a patient's images are not adjacent)."""
    rng = np.random.default_rng(5)
    groups = np.repeat([f"P{i:02d}" for i in range(40)], rng.integers(1, 4, 40))
    return groups[rng.permutation(len(groups))]


def test_bootstrap_resamples_patients_with_all_their_images():
    groups = _patients()
    n, n_patients = len(groups), len(set(groups))
    samples = stats.bootstrap_samples(n, 60, seed=3, clusters=groups)
    assert len(samples) == 60
    seen_twice = seen_never = 0
    for idx in samples:
        counts = np.bincount(idx, minlength=n)
        draws = {}
        for g in set(groups):
            per_image = set(counts[groups == g].tolist())
            assert len(per_image) == 1, f"patient {g}: images drawn {sorted(per_image)} times: split apart"
            draws[g] = per_image.pop()
        assert sum(draws.values()) == n_patients      # one draw per patient of the cohort, not per image
        seen_twice += any(k >= 2 for k in draws.values())
        seen_never += any(k == 0 for k in draws.values())
    assert seen_twice == seen_never == 60             # with replacement: not the identity resample


def test_bootstrap_without_clusters_resamples_rows():
    samples = stats.bootstrap_samples(30, 5, seed=1)
    assert np.asarray(samples).shape == (5, 30)


def test_bootstrap_validate_reports_its_unit():
    rng = np.random.default_rng(6)
    groups = _patients()
    x = rng.normal(size=len(groups))
    y = (rng.random(len(groups)) < 1 / (1 + np.exp(-1.5 * x))).astype(int)
    clustered = stats.bootstrap_validate(x, y, B=20, seed=1, clusters=groups, calibration_grid=0)
    rows = stats.bootstrap_validate(x, y, B=20, seed=1, calibration_grid=0)
    assert clustered["resampling"].startswith("patients") and rows["resampling"] == "rows"
    assert clustered["indexes"]["C"]["apparent"] == rows["indexes"]["C"]["apparent"]
    assert clustered["indexes"]["C"]["optimism"] != rows["indexes"]["C"]["optimism"]


# ------------------------------------------------------------------------- degenerate inputs (issue 14)
@pytest.mark.parametrize("y, s, why", [
    ([1, 0, 0, 0], [0.9, 0.1, 0.2, 0.3], "1 case"),
    ([1, 1, 1, 0], [0.9, 0.8, 0.2, 0.3], "1 control"),
    ([1, 0, 1, 0, 1], [0.4] * 5, "tied"),
], ids=["one-case", "one-control", "all-ties"])
def test_delong_ci_is_nan_not_a_fake_interval_when_the_variance_is_not_estimable(y, s, why):
    got = stats.delong_ci(y, s)
    assert math.isnan(got["se"]) and all(math.isnan(b) for b in got["ci"]), got
    assert why in got["note"]
    assert got["auc"] == pytest.approx(placements(np.array(y), np.array(s, float))[0])  # the AUC is still defined


def test_calibration_under_perfect_separation_reports_what_is_defined():
    lp = np.array([-3.0, -2.5, -2.0, -1.0, 1.5, 2.0, 2.5, 4.0])
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    cal = stats.calibration_in_the_large_and_slope(y, lp)
    assert math.isnan(cal["calibration_slope"]) and all(math.isnan(b) for b in cal["slope_ci"])
    assert any("calibration slope not estimable: perfect separation" in n for n in cal["calibration_notes"])
    # calibration-in-the-large (one intercept, lp as offset) has a finite MLE here: score equation Σ(y − p) = 0
    a = cal["calibration_in_the_large"]
    assert math.isfinite(a)
    assert np.sum(y - 1 / (1 + np.exp(-(a + lp)))) == pytest.approx(0, abs=1e-8)
    ok = stats.calibration_in_the_large_and_slope(np.array([0, 1, 0, 1, 1, 0, 1, 1]), lp)
    assert math.isfinite(ok["calibration_slope"]) and ok["calibration_notes"] == []


def test_bootstrap_warns_when_more_than_a_tenth_of_refits_are_dropped():
    assert stats.BOOTSTRAP_MAX_FAILED == 0.10
    assert stats.bootstrap_warning(50, 5) is None
    assert "6 of 50" in stats.bootstrap_warning(50, 6) and "biased" in stats.bootstrap_warning(50, 6)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 2))
    y = (x[:, 0] + 0.3 * rng.normal(size=12) > 0).astype(int)
    y[:2] = 1 - y[:2]                                      # overlap: the full-data fit exists, resamples separate
    v = stats.bootstrap_validate(x, y, B=50, seed=0, calibration_grid=0)
    assert v["B_failed"] > 5 and v["warning"] and f"{v['B_failed']} of 50" in v["warning"]


# ------------------------------------------------------------------------------ threshold rules (issue 14)
def test_threshold_rules_parse_and_refuse_bad_specs():
    from converters.errors import NomogramInputError
    from converters.operating_point import parse_threshold, rule_text

    assert parse_threshold("youden") == {"kind": "youden", "value": None}
    assert parse_threshold(" 0.37 ") == {"kind": "fixed", "value": 0.37}
    assert parse_threshold("sens=0.95") == {"kind": "sens", "value": 0.95}
    assert rule_text(parse_threshold("SPEC=0.9")) == "spec=0.9"
    for bad, why in (("1.5", "must be in (0, 1)"), ("0", "must be in (0, 1)"), ("sens=abc", "not a number"),
                     ("ppv=0.9", "unknown rule 'ppv'"), ("frozen", "only applies to evaluate"), ("", "not a number")):
        with pytest.raises(NomogramInputError, match=r"--threshold .*" + re.escape(why)):
            parse_threshold(bad)
    assert parse_threshold("frozen", allow_frozen=True)["kind"] == "frozen"


@pytest.mark.parametrize("table", TABLES, ids=IDS)
@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_sens_and_spec_rules_equal_brute_force(table, target):
    """sens=t: the highest threshold with sensitivity >= t; spec=t: the lowest with specificity >= t, found
    here by trying every observed score and midpoint."""
    from converters.operating_point import resolve_threshold

    y, s, _ = table
    u = np.unique(s)
    cands = np.concatenate([u, (u[1:] + u[:-1]) / 2, [np.nextafter(u[-1], np.inf)]])

    def rates(t):
        pos = s >= t
        return (pos & (y == 1)).sum() / (y == 1).sum(), (~pos & (y == 0)).sum() / (y == 0).sum()

    got = resolve_threshold({"kind": "sens", "value": target}, y, s)
    best = max(t for t in cands if rates(t)[0] >= target)
    assert rates(got["threshold"]) == rates(best) and got["sensitivity"] >= target
    got = resolve_threshold({"kind": "spec", "value": target}, y, s)
    best = min(t for t in cands if rates(t)[1] >= target)
    assert rates(got["threshold"]) == rates(best) and got["specificity"] >= target and got["rule"] == f"spec={target:g}"


# -------------------------------------------------------------------- paired backbone tests (issue 14)
def test_holm_equals_r_p_adjust():
    from converters.cv_report import holm

    # R: p.adjust(c(0.01, 0.04, 0.03, 0.005, 0.5), "holm") = 0.04 0.09 0.09 0.025 0.5
    assert holm([0.01, 0.04, 0.03, 0.005, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5], abs=1e-15)
    assert holm([0.6, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_paired_backbone_tests_and_cv_table_cover_every_pair(tmp_path):
    """Three backbones on the same images: 3 pairs, each equal to the all-pairs paired DeLong reference, Holm p
    >= raw p; benchmarks/cv_table.py prints the same tests from oof_predictions.csv."""
    import csv
    import json
    import subprocess
    import sys
    from pathlib import Path

    from converters.cv_report import holm, paired_backbone_tests

    y, s1, s2 = TABLES[4]
    s3 = np.round(s1 + np.random.default_rng(9).normal(0, 1, len(y)), 2)
    probs = {"A": s1, "B": s2, "C": s3}
    res = paired_backbone_tests(y, probs)
    assert [(t["a"], t["b"]) for t in res["tests"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    for t in res["tests"]:
        ref = delong_paired(y, probs[t["a"]], probs[t["b"]])
        assert t["z"] == pytest.approx(ref["z"], rel=1e-9) and t["p_holm"] >= t["p"]
    assert [t["p_holm"] for t in res["tests"]] == holm([t["p"] for t in res["tests"]])
    assert "Holm" in res["note"] and "k(k-1)/2" in res["note"]
    run = tmp_path / "run"
    run.mkdir()
    with (run / "oof_predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "patient_id", "group", "label", "backbone", "fold", "prob"])
        for name, p in probs.items():
            for i, (yy, pp) in enumerate(zip(y, p, strict=True)):
                w.writerow([f"I{i}", f"P{i}", "NOA" if yy else "OA", yy, name, i % 3, f"{pp:.6f}"])
    block = {"auc": 0.8, "auc_ci": [0.7, 0.9]}
    (run / "cv_report.json").write_text(json.dumps({
        "input_size": 64, "folds": 3, "seed": 0, "selected_backbone": "A", "selection": "highest AUC",
        "backbones": {n: {"folds": [{"metrics": {"image": {"auc": 0.8}}, "best_epoch": 1}], "fold_wall_s": 5,
                          "pooled": {"image": block, "patient": block}} for n in probs}}))
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "benchmarks/cv_table.py", str(run)], cwd=root, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    paired = [line for line in out.stdout.split("| p (Holm) |", 1)[1].splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[:2] for line in paired] == [["| A", "B"], ["| A", "C"], ["| B", "C"]]
    for line, t in zip(paired, res["tests"], strict=True):
        assert line.endswith(f"| {t['p']:.3g} | {t['p_holm']:.3g} |")
