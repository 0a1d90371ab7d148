"""ROC statistics as R's pROC computes them, and exact binomial intervals for the 2×2 rates.

  roc_auc / delong_ci            pROC::auc, pROC::ci.auc(method = "delong")
  delong_paired_test             pROC::roc.test(method = "delong", paired = TRUE)
  roc_curve / youden_threshold   pROC::coords (thresholds at midpoints; "best", youden)
  binomial_ci                    binom.test(x, n)$conf.int     (Clopper–Pearson exact interval)
tests/test_stats_vs_r.py checks them against R. numpy + scipy only; re-exported by converters.stats.
"""

from __future__ import annotations

import math

import numpy as np

from converters.errors import ModelInputError

Z975 = 1.959963984540054  # qnorm(0.975)


def norm_sf(z):
    from scipy.special import ndtr

    return ndtr(-np.asarray(z, dtype=float))


def _midranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


# --------------------------------------------------------------------------------------------- ROC
def _check_binary(y, score=None) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.asarray(y)
    if y.ndim != 1 or not np.all((y == 0) | (y == 1)):
        raise ModelInputError("outcome must be a 1-D array of 0/1")
    y = y.astype(int)
    if y.sum() == 0 or y.sum() == len(y):
        raise ModelInputError(f"outcome has a single class ({len(y)} rows, {int(y.sum())} events): no ROC/AUC")
    if score is not None:
        score = np.asarray(score, dtype=float)
        if score.shape != y.shape:
            raise ModelInputError(f"score has shape {score.shape}, outcome {y.shape}")
        if not np.all(np.isfinite(score)):
            raise ModelInputError("score contains missing or non-finite values")
    return y, score


def delong_placements(y, score) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong structural components. V10[i] = P(score_case_i > control) (+½ ties), V01[j] likewise.

    Computed from midranks (Sun & Xu 2014) so ties count ½, as in pROC."""
    y, score = _check_binary(y, score)
    cases, controls = score[y == 1], score[y == 0]
    m, n = len(cases), len(controls)
    r_all = _midranks(np.concatenate([cases, controls]))
    r_cases, r_controls = _midranks(cases), _midranks(controls)
    v10 = (r_all[:m] - r_cases) / n
    v01 = 1.0 - (r_all[m:] - r_controls) / m
    return float(v10.mean()), v10, v01


def roc_auc(y, score) -> float:
    """Area under the ROC curve, direction 'higher score = case' (pROC direction = "<")."""
    return delong_placements(y, score)[0]


def delong_ci(y, score, level: float = 0.95) -> dict:
    """AUC with DeLong variance and the normal CI pROC::ci.auc(method = "delong") gives (clipped to 0–1).

    Where the variance is not estimable (one case, one control, every score tied) se and both bounds are
    nan with a "note": `max(0, nan)` would otherwise print a fake [0, 1]."""
    auc, v10, v01 = delong_placements(y, score)
    m, n = len(v10), len(v01)
    out = {"auc": auc, "se": float("nan"), "ci": [float("nan"), float("nan")], "n_cases": m, "n_controls": n,
           "method": "DeLong"}
    if m < 2 or n < 2:
        out["note"] = f"DeLong variance not estimable with {m} case(s) and {n} control(s): no CI"
        return out
    if np.ptp(np.asarray(score, dtype=float)) == 0:
        out["note"] = "every score is tied: the AUC is 0.5 by construction, no CI"
        return out
    var = np.sum((v10 - auc) ** 2) / (m - 1) / m + np.sum((v01 - auc) ** 2) / (n - 1) / n
    se = math.sqrt(var)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    out.update(se=se, ci=[max(0.0, auc - z * se), min(1.0, auc + z * se)])
    return out


def delong_paired_test(y, score1, score2) -> dict:
    """Two correlated ROC curves on the same subjects: DeLong's z test (pROC::roc.test, paired)."""
    auc1, a10, a01 = delong_placements(y, score1)
    auc2, b10, b01 = delong_placements(y, score2)
    m, n = len(a10), len(a01)
    s10 = np.cov(np.vstack([a10, b10]))  # (m-1) denominators, like pROC
    s01 = np.cov(np.vstack([a01, b01]))
    S = s10 / m + s01 / n
    var_diff = S[0, 0] + S[1, 1] - 2 * S[0, 1]
    diff = auc1 - auc2
    if var_diff <= 0:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    else:
        z = diff / math.sqrt(var_diff)
    p = float(2 * norm_sf(abs(z)))
    sd = math.sqrt(max(var_diff, 0.0))
    return {"auc1": auc1, "auc2": auc2, "difference": diff, "z": z, "p": p,
            "difference_ci": [diff - Z975 * sd, diff + Z975 * sd], "method": "DeLong paired"}


def roc_curve(y, score) -> dict:
    """Sensitivity/specificity at every threshold (midpoints between distinct scores, plus ±inf).

    Positive = score >= threshold, as pROC does for direction "<"."""
    y, score = _check_binary(y, score)
    u = np.unique(score)
    thr = np.concatenate([[-np.inf], (u[1:] + u[:-1]) / 2, [np.inf]])
    pos = score[None, :] >= thr[:, None]
    sens = (pos & (y == 1)).sum(1) / (y == 1).sum()
    spec = (~pos & (y == 0)).sum(1) / (y == 0).sum()
    return {"thresholds": thr, "sensitivity": sens, "specificity": spec}


def youden_threshold(y, score) -> dict:
    """Threshold maximising sensitivity + specificity − 1 (pROC coords 'best', youden).

    Ties are broken towards the lowest threshold (the more sensitive cut-off)."""
    rc = roc_curve(y, score)
    j = rc["sensitivity"] + rc["specificity"] - 1
    i = int(np.argmax(j))
    return {"threshold": float(rc["thresholds"][i]), "youden_j": float(j[i]),
            "sensitivity": float(rc["sensitivity"][i]), "specificity": float(rc["specificity"][i])}


# ------------------------------------------------------------------------------- binomial + 2x2
def binomial_ci(k: int, n: int, level: float = 0.95) -> list[float]:
    """Clopper–Pearson exact interval (R: binom.test(k, n)$conf.int)."""
    from scipy.stats import beta

    if n == 0:
        return [float("nan"), float("nan")]
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return [lo, hi]


def classification_metrics(y, prob, threshold: float) -> dict:
    """2×2 table at `threshold` (positive = prob >= threshold) and the usual rates with exact CIs."""
    y = np.asarray(y).astype(int)
    pred = np.asarray(prob, dtype=float) >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))

    def rate(k, n):
        return {"value": k / n if n else float("nan"), "ci": binomial_ci(k, n), "k": k, "n": n}

    return {"threshold": float(threshold), "table": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            "accuracy": rate(tp + tn, tp + tn + fp + fn), "sensitivity": rate(tp, tp + fn),
            "specificity": rate(tn, tn + fp), "ppv": rate(tp, tp + fp), "npv": rate(tn, tn + fn),
            "ci_method": "Clopper-Pearson exact"}
