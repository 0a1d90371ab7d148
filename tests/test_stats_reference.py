"""converters.stats against independent references written here, in the fast suite (R checks the same in
tests/test_stats_vs_r.py; this file needs no R): DeLong AUC, SE, CI and the paired test against an all-pairs
O(m·n) implementation on small tables with ties; Youden's cut by brute force; the ≥ at the threshold; and the
cluster bootstrap inspected resample by resample (a patient's images always travel together)."""

from __future__ import annotations

import math

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
