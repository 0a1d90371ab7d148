"""Table 1 of the nomogram report: per-group summaries and a test chosen by the data (Shapiro–Wilk ->
Welch t / ANOVA, else Mann–Whitney U / Kruskal–Wallis; chi-squared or Fisher exact for categories).
scipy only; re-exported by converters.stats. Each p-value equals R's t.test / oneway.test(var.equal = TRUE) /
wilcox.test / kruskal.test / chisq.test / fisher.test (tests/test_stats_vs_r.py).
"""

from __future__ import annotations

import warnings

import numpy as np


def _is_normal(groups: list[np.ndarray]) -> bool:
    from scipy.stats import shapiro

    for g in groups:
        if len(g) < 3:
            return False
        if np.ptp(g) == 0:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if shapiro(g[:5000]).pvalue <= 0.05:
                return False
    return True


def _mwu_method(a: np.ndarray, b: np.ndarray) -> str:
    """R's wilcox.test rule: the exact distribution when both groups have < 50 values and there are no ties,
    else the normal approximation with continuity and tie corrections (scipy's own "auto" goes exact only
    below 9 values, which gives different p-values than R for 9–49)."""
    both = np.concatenate([a, b])
    return "exact" if len(a) < 50 and len(b) < 50 and len(np.unique(both)) == len(both) else "asymptotic"


def compare_continuous(groups: dict[str, list]) -> dict:
    """Summary per group (n, missing, mean ± SD, median [IQR]) and a test chosen by the data:
    Shapiro–Wilk p > 0.05 in every group → Welch t (2 groups) / one-way ANOVA (3+), else
    Mann–Whitney U (2) / Kruskal–Wallis (3+)."""
    from scipy import stats as sps

    summ, arrays = {}, []
    for g, values in groups.items():
        v = np.array([np.nan if x is None else x for x in values], float)
        obs = v[np.isfinite(v)]
        summ[g] = {"n": int(len(obs)), "missing": int(len(v) - len(obs))}
        if len(obs):
            q1, med, q3 = np.percentile(obs, [25, 50, 75])
            summ[g].update({"mean": float(obs.mean()), "sd": float(obs.std(ddof=1)) if len(obs) > 1 else float("nan"),
                            "median": float(med), "q1": float(q1), "q3": float(q3)})
        if len(obs):
            arrays.append(obs)
    res = {"groups": summ, "test": None, "p": None}
    if len(arrays) >= 2 and all(len(a) >= 2 for a in arrays):
        normal = _is_normal(arrays)
        try:
            if len(arrays) == 2:
                r = (sps.ttest_ind(*arrays, equal_var=False) if normal
                     else sps.mannwhitneyu(*arrays, alternative="two-sided", method=_mwu_method(*arrays)))
                res["test"] = "Welch t-test" if normal else "Mann-Whitney U"
            else:
                r = sps.f_oneway(*arrays) if normal else sps.kruskal(*arrays)
                res["test"] = "one-way ANOVA" if normal else "Kruskal-Wallis"
            res["p"] = float(r.pvalue)
        except ValueError as exc:  # e.g. all values identical
            res["test"], res["p"] = f"not testable ({exc})", None
    return res


def compare_categorical(groups: dict[str, list]) -> dict:
    """Counts per level and group; chi-squared, or Fisher's exact test for a 2×2 table with any
    expected count < 5 (larger tables with small counts keep chi-squared and say so)."""
    from scipy import stats as sps

    levels = sorted({x for vals in groups.values() for x in vals if x is not None})
    table = np.array([[sum(1 for x in vals if x == lev) for lev in levels] for vals in groups.values()])
    missing = {g: sum(1 for x in vals if x is None) for g, vals in groups.items()}
    counts = {g: dict(zip(levels, map(int, row), strict=False)) for g, row in zip(groups, table, strict=False)}
    res = {"levels": levels, "counts": counts,
           "missing": missing, "test": None, "p": None}
    keep_r, keep_c = table.sum(1) > 0, table.sum(0) > 0
    t = table[keep_r][:, keep_c]
    if t.shape[0] >= 2 and t.shape[1] >= 2:
        expected = sps.contingency.expected_freq(t)
        if t.shape == (2, 2) and expected.min() < 5:
            res["test"], res["p"] = "Fisher exact", float(sps.fisher_exact(t).pvalue)
        else:
            r = sps.chi2_contingency(t, correction=t.shape == (2, 2))
            res["test"] = "chi-squared" + (" (some expected counts < 5)" if expected.min() < 5 else "")
            res["p"] = float(r.pvalue)
    return res
