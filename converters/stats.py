"""Validation statistics for the nomogram, written to give the same numbers as R's rms and pROC.

Every function here has an R counterpart that tests/test_stats_vs_r.py runs on the same data. This module
is the statistics API: the ROC/binomial part lives in converters/roc.py and Table 1's group tests in
converters/table1.py; both are re-exported here, so `from converters import stats` gives all of them.
  roc_auc / delong_ci            pROC::auc, pROC::ci.auc(method = "delong")
  delong_paired_test             pROC::roc.test(method = "delong", paired = TRUE)
  fit_logistic                   rms::lrm  (unpenalised ML, SEs from the inverse information matrix)
  bootstrap_validate             rms::validate(fit, B = 200)   (Harrell's optimism bootstrap)
  calibration_curve              rms::calibrate(fit, B = 200)  (apparent + bias-corrected lowess curves;
                                 converters/calibration.py)
  calibration_in_the_large_and_slope   rms::val.prob "Intercept"/"Slope"; glm(y ~ offset(lp)) for the CITL
  decision_curve                 net benefit as the dcurves package (Vickers & Elkin 2006)
  binomial_ci                    binom.test(x, n)$conf.int     (Clopper–Pearson exact interval)
Only numpy and scipy (the host's [train] extra): no pandas, no statsmodels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from converters.calibration import calibration_curve, lowess_at, lowess_r  # noqa: F401 (re-exported)
from converters.errors import ModelInputError, SeparationError  # noqa: F401 (re-exported)
from converters.roc import (  # noqa: F401 (re-exported: converters.stats is the statistics API)
    Z975,
    binomial_ci,
    classification_metrics,
    delong_ci,
    delong_paired_test,
    delong_placements,
    norm_sf,
    roc_auc,
    roc_curve,
    youden_threshold,
)
from converters.table1 import compare_categorical, compare_continuous  # noqa: F401 (re-exported)


# ------------------------------------------------------------------------------ logistic model
@dataclass
class LogisticFit:
    names: list[str]                 # "Intercept" first
    coef: np.ndarray
    se: np.ndarray
    cov: np.ndarray
    loglik: float
    loglik_null: float
    n: int
    events: int
    iterations: int
    warnings: list[str] = field(default_factory=list)

    @property
    def lr_chi2(self) -> float:
        return 2 * (self.loglik - self.loglik_null)

    @property
    def df(self) -> int:
        return len(self.coef) - 1

    @property
    def lr_p(self) -> float:
        from scipy.stats import chi2

        return float(chi2.sf(self.lr_chi2, self.df)) if self.df else float("nan")

    @property
    def wald_z(self) -> np.ndarray:
        return self.coef / self.se

    @property
    def wald_p(self) -> np.ndarray:
        return 2 * norm_sf(np.abs(self.wald_z))

    def linear_predictor(self, X: np.ndarray) -> np.ndarray:
        """X without the intercept column."""
        return self.coef[0] + np.asarray(X, dtype=float) @ self.coef[1:]

    def table(self) -> list[dict]:
        """One row per coefficient: beta, SE, Wald z and p, odds ratio with Wald 95% CI."""
        rows = []
        for i, name in enumerate(self.names):
            b, s = float(self.coef[i]), float(self.se[i])
            row = {"name": name, "coef": b, "se": s, "z": b / s, "p": float(self.wald_p[i])}
            if i:
                row.update({"odds_ratio": math.exp(b), "or_ci": [math.exp(b - Z975 * s), math.exp(b + Z975 * s)]})
            rows.append(row)
        return rows

    def summary(self) -> dict:
        return {"n": self.n, "events": self.events, "loglik": self.loglik, "lr_chi2": self.lr_chi2,
                "df": self.df, "lr_p": self.lr_p, "coefficients": self.table(), "warnings": list(self.warnings),
                "iterations": self.iterations}


def _loglik(eta: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Bernoulli log-likelihood, stable for large |eta|; works on a trailing row axis."""
    ll = y * eta - np.logaddexp(0.0, eta)
    return ll.sum(-1) if w is None else (w * ll).sum(-1)


def check_separation(X1: np.ndarray, y: np.ndarray) -> bool:
    """Linear-programming test for (quasi-)complete separation (Konis 2007, safeBinaryRegression).

    Looks for a direction b with s_i·x_i·b >= 0 for every row (s = ±1 from the outcome) and > 0 for
    some; one exists exactly when the ML estimate does not (Albert & Anderson 1984)."""
    from scipy.optimize import linprog

    A = X1 * np.where(y == 1, 1.0, -1.0)[:, None]
    res = linprog(-A.sum(0), A_ub=-A, b_ub=np.zeros(len(y)), bounds=[(-1, 1)] * X1.shape[1], method="highs")
    return bool(res.status == 0 and -res.fun > 1e-7 * max(1.0, np.abs(A).sum()) / len(y))


def fit_logistic(X, y, names: list[str] | None = None, offset=None, tol: float = 1e-10,
                 max_iter: int = 100, check: bool = True) -> LogisticFit:
    """Unpenalised maximum-likelihood logistic regression by Newton–Raphson (rms::lrm).

    X: (n, p) without the intercept column. SEs come from the inverse observed information at the MLE,
    exactly what lrm reports. `offset` adds a fixed term to the linear predictor (for calibration-in-
    the-large). With check=True, bad designs raise ModelInputError with the column named."""
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(y)
    n, p = X.shape
    names = list(names) if names is not None else [f"x{i + 1}" for i in range(p)]
    if len(names) != p:
        raise ModelInputError(f"{len(names)} names for {p} columns")
    notes: list[str] = []
    if check:
        if y.shape != (n,) or not np.all((y == 0) | (y == 1)):
            raise ModelInputError("outcome must be 0/1 with one value per row")
        events = int(y.sum())
        if events == 0 or events == n:
            raise ModelInputError(f"outcome has a single class ({n} rows, {events} events)")
        for j, name in enumerate(names):
            col = X[:, j]
            if not np.all(np.isfinite(col)):
                raise ModelInputError(f"predictor '{name}' has {int((~np.isfinite(col)).sum())} "
                                      "missing/non-finite values")
            if np.ptp(col) == 0:
                raise ModelInputError(f"predictor '{name}' has no variance (every row = {col[0]:g}): "
                                      "it cannot be estimated")
        X1 = np.column_stack([np.ones(n), X])
        if np.linalg.matrix_rank(X1) < p + 1:
            raise ModelInputError(f"predictors {names} are collinear (design matrix rank "
                                  f"{np.linalg.matrix_rank(X1)} < {p + 1})")
        if check_separation(X1, y.astype(int)):
            raise SeparationError(
                f"perfect or quasi-complete separation: a combination of {names} predicts the outcome "
                "exactly for some rows, so maximum-likelihood coefficients are infinite; drop or combine "
                "predictors, or collect more data")
        epv = min(events, n - events) / max(p, 1)
        if epv < 10:
            notes.append(f"only {epv:.1f} events per variable (min({events} events, {n - events} non-events) / "
                         f"{p} predictors) < 10: coefficients may be unstable and optimistic")
    y = y.astype(float)
    X1 = np.column_stack([np.ones(n), X])
    off = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    ybar = y.mean()
    beta = np.zeros(p + 1)
    if offset is None:
        beta[0] = math.log(ybar / (1 - ybar))
    ll = float(_loglik(X1 @ beta + off, y))
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` (iterations used) is read after the loop
        eta = X1 @ beta + off
        mu = 1 / (1 + np.exp(-eta))
        grad = X1.T @ (y - mu)
        H = (X1 * (mu * (1 - mu))[:, None]).T @ X1
        step = np.linalg.solve(H, grad)
        t = 1.0
        while True:  # step-halving keeps the log-likelihood monotone
            cand = beta + t * step
            ll_new = float(_loglik(X1 @ cand + off, y))
            if ll_new >= ll - 1e-12 or t < 1e-8:
                break
            t /= 2
        beta, ll_old, ll = cand, ll, ll_new
        if np.max(np.abs(t * step)) < tol and abs(ll - ll_old) < 1e-9:
            break
    else:
        notes.append(f"Newton–Raphson did not converge in {max_iter} iterations")
    mu = 1 / (1 + np.exp(-(X1 @ beta + off)))
    H = (X1 * (mu * (1 - mu))[:, None]).T @ X1
    cov = np.linalg.inv(H)
    if offset is None:
        ll0 = float(_loglik(np.full(n, math.log(ybar / (1 - ybar))), y))
    else:
        ll0 = float(_loglik(off, y))
    return LogisticFit(["Intercept", *names], beta, np.sqrt(np.diag(cov)), cov, ll, ll0, n, int(y.sum()), it, notes)


def fit_logistic_batch(X1: np.ndarray, y: np.ndarray, weights: np.ndarray, tol: float = 1e-8,
                       max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """B weighted logistic fits at once (vectorised Newton–Raphson) for the bootstrap.

    X1: (n, k) with the intercept column, or (B, n, k); weights: (B, n) bootstrap counts, so a fit
    equals the fit on the resampled rows. Returns (coefs (B, k), ok (B,)); ok is False where a
    replicate diverged (separation in that sample) or its information matrix is singular."""
    B = weights.shape[0]
    shared = X1.ndim == 2
    k = X1.shape[-1]
    beta = np.zeros((B, k))
    ybar = np.clip((weights * y).sum(1) / weights.sum(1), 1e-6, 1 - 1e-6)
    beta[:, 0] = np.log(ybar / (1 - ybar))
    ok = np.ones(B, bool)
    done = np.zeros(B, bool)
    for _ in range(max_iter):
        eta = X1 @ beta.T if shared else np.einsum("bnk,bk->bn", X1, beta)
        if shared:
            eta = eta.T
        mu = 1 / (1 + np.exp(-eta))
        r = weights * (y - mu)
        wv = weights * mu * (1 - mu)
        if shared:
            grad = r @ X1
            H = np.einsum("bn,ni,nj->bij", wv, X1, X1, optimize=True)
        else:
            grad = np.einsum("bn,bnk->bk", r, X1)
            H = np.einsum("bn,bni,bnj->bij", wv, X1, X1, optimize=True)
        H += np.eye(k) * 1e-12
        try:
            step = np.linalg.solve(H, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:
            step = np.stack([np.linalg.lstsq(h, g, rcond=None)[0] for h, g in zip(H, grad, strict=True)])
        step[done] = 0
        beta += step
        done |= np.max(np.abs(step), 1) < tol
        if done.all():
            break
    ok &= done & np.all(np.isfinite(beta), 1) & (np.max(np.abs(beta), 1) < 1e4)
    return beta, ok


# ------------------------------------------------------------------------ bootstrap validation
def _weighted_auc(y: np.ndarray, score: np.ndarray, w: np.ndarray) -> float:
    """AUC on a sample where row i appears w[i] times (ties ½)."""
    order = np.argsort(score, kind="mergesort")
    s, yy, ww = score[order], y[order], w[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    wc = np.add.reduceat(ww * (yy == 1), starts)   # case weight per distinct score
    wn = np.add.reduceat(ww * (yy == 0), starts)
    below = np.cumsum(wn) - wn
    num = np.sum(wc * (below + 0.5 * wn))
    den = wc.sum() * wn.sum()
    return float(num / den) if den else float("nan")


def _indexes(y, lp, w, slope_intercept=None) -> dict:
    """rms validate indexes on one sample: Dxy, C, calibration intercept & slope, Brier."""
    c = _weighted_auc(y, lp, w)
    p = 1 / (1 + np.exp(-lp))
    brier = float(np.sum(w * (p - y) ** 2) / w.sum())
    out = {"Dxy": 2 * c - 1, "C": c, "Brier": brier}
    if slope_intercept is None:
        out.update({"Intercept": 0.0, "Slope": 1.0})
    else:
        out.update({"Intercept": slope_intercept[0], "Slope": slope_intercept[1]})
    return out


INDEX_NAMES = ["Dxy", "C", "Intercept", "Slope", "Brier"]


def bootstrap_samples(n: int, B: int, seed: int, clusters=None) -> np.ndarray:
    """(B, n) row indices. With `clusters`, whole clusters (patients) are resampled, as
    rms::predab.resample(cluster=) does, because two testes of one patient are not independent."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        return rng.integers(0, n, size=(B, n))
    clusters = np.asarray(clusters)
    uniq, inv = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(inv == c) for c in range(len(uniq))]
    draws = rng.integers(0, len(uniq), size=(B, len(uniq)))
    return [np.concatenate([members[c] for c in row]) for row in draws]


BOOTSTRAP_MAX_FAILED = 0.10  # above this fraction of dropped refits the corrected indexes are flagged


def bootstrap_warning(B: int, failed: int) -> str | None:
    """A sentence when more than BOOTSTRAP_MAX_FAILED of the refits were dropped, else None: the survivors are
    the resamples without separation, so the optimism estimate is biased towards them."""
    if B <= 0 or failed / B <= BOOTSTRAP_MAX_FAILED:
        return None
    return (f"{failed} of {B} bootstrap refits ({failed / B:.0%}) diverged and were dropped, more than "
            f"{BOOTSTRAP_MAX_FAILED:.0%}: the optimism-corrected indexes come from the surviving resamples only "
            "and are likely biased (too few events for this model)")


def bootstrap_validate(X, y, B: int = 200, seed: int = 0, clusters=None, fit: LogisticFit | None = None,
                       calibration_grid: int = 50, samples=None) -> dict:
    """Harrell's optimism bootstrap (rms::validate.lrm, method = "boot"), plus rms::calibrate curves.

    For each of B resamples: refit, compute the indexes on the resample (training) and on the original
    rows with the resample's model (test); optimism = mean(training − test); corrected = apparent −
    optimism. Replicates that diverge (separation in the resample) are dropped and counted, as rms does.
    `samples` (B row-index arrays) replaces the drawn resamples: R's own, to compare number for number."""
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(y).astype(float)
    n = len(y)
    X1 = np.column_stack([np.ones(n), X])
    fit = fit or fit_logistic(X, y)
    lp_app = X1 @ fit.coef
    apparent = _indexes(y, lp_app, np.ones(n))

    if samples is None:
        samples = bootstrap_samples(n, B, seed, clusters)
    else:
        samples = [np.asarray(s, dtype=int) for s in samples]
        B = len(samples)
    W = np.zeros((B, n))
    for b, idx in enumerate(samples):
        W[b] = np.bincount(idx, minlength=n)
    coefs, ok = fit_logistic_batch(X1, y, W)
    lp_orig = coefs @ X1.T  # (B, n): each replicate's model on the original rows
    # calibration intercept/slope of each replicate's lp on the original rows: 2-parameter fits, batched
    Z = np.stack([np.ones((B, n)), lp_orig], axis=-1)
    Z[~ok] = 0
    Z[~ok, :, 0] = 1
    cal, cal_ok = fit_logistic_batch(Z, y, np.ones((B, n)))
    ok &= cal_ok
    train, test = [], []
    for b in np.flatnonzero(ok):
        train.append(_indexes(y, lp_orig[b], W[b]))
        test.append(_indexes(y, lp_orig[b], np.ones(n), cal[b]))
    optimism = {k: float(np.mean([tr[k] - te[k] for tr, te in zip(train, test, strict=True)])) for k in INDEX_NAMES}
    table = {k: {"apparent": apparent[k], "training": float(np.mean([t[k] for t in train])),
                 "test": float(np.mean([t[k] for t in test])), "optimism": optimism[k],
                 "corrected": apparent[k] - optimism[k]} for k in INDEX_NAMES}
    # rms reports C through Dxy: corrected C = 0.5 + corrected Dxy / 2 (identical here)
    out = {"B": B, "B_used": int(ok.sum()), "B_failed": int((~ok).sum()), "seed": seed,
           "warning": bootstrap_warning(B, int((~ok).sum())),
           "resampling": "patients (cluster bootstrap)" if clusters is not None else "rows",
           "indexes": table}
    if calibration_grid:
        out["calibration"] = _calibration_from_replicates(y, lp_app, lp_orig[ok],
                                                          [samples[b] for b in np.flatnonzero(ok)], calibration_grid)
    return out


# ------------------------------------------------------------------------------- calibration
def _calibration_from_replicates(y, lp_app, lp_orig_ok, samples_ok, grid: int) -> dict:
    """rms::calibrate curves (converters.calibration) for the report: probabilities clipped to [0, 1]."""
    cal = calibration_curve(y, 1 / (1 + np.exp(-lp_app)), 1 / (1 + np.exp(-np.asarray(lp_orig_ok))), samples_ok, grid)
    return {"predicted": cal["predicted"].tolist(), "apparent": np.clip(cal["apparent"], 0, 1).tolist(),
            "bias_corrected": np.clip(cal["bias_corrected"], 0, 1).tolist(),
            "mean_absolute_error": cal["mean_absolute_error"], "q90_absolute_error": cal["q90_absolute_error"],
            "smoother": "lowess, span 2/3, no robustness iterations, delta 1% of the range (R lowess), as "
                        "rms::calibrate", "B": len(samples_ok)}


def calibration_in_the_large_and_slope(y, lp) -> dict:
    """External calibration: intercept with lp as offset (calibration-in-the-large) and the slope of
    logit(p) on lp. Perfect calibration = 0 and 1.

    When the cohort is perfectly separated by lp the slope has no finite ML estimate: slope, intercept and
    their CIs are nan and "calibration_notes" says why; whatever is still defined is returned."""
    y = np.asarray(y).astype(float)
    lp = np.asarray(lp, float)
    nan2 = [float("nan"), float("nan")]
    out = {"calibration_in_the_large": float("nan"), "citl_ci": nan2, "calibration_slope": float("nan"),
           "slope_ci": nan2, "calibration_intercept": float("nan"), "calibration_notes": [],
           "observed_rate": float(y.mean()), "mean_predicted": float(np.mean(1 / (1 + np.exp(-lp))))}
    try:
        citl = fit_logistic(np.zeros((len(y), 0)), y, names=[], offset=lp, check=False)
        if np.all(np.isfinite(citl.coef)) and not citl.warnings:
            out.update(calibration_in_the_large=float(citl.coef[0]), citl_ci=_wald_ci(citl, 0))
        else:
            out["calibration_notes"].append("calibration-in-the-large not estimable: the fit did not converge")
    except np.linalg.LinAlgError:
        out["calibration_notes"].append("calibration-in-the-large not estimable: singular information matrix")
    if check_separation(np.column_stack([np.ones(len(y)), lp]), y.astype(int)):
        out["calibration_notes"].append("calibration slope not estimable: perfect separation (the model's linear "
                                        "predictor separates the outcomes in this cohort)")
        return out
    try:
        slope_fit = fit_logistic(lp[:, None], y, names=["lp"], check=False)
    except np.linalg.LinAlgError:
        out["calibration_notes"].append("calibration slope not estimable: singular information matrix")
        return out
    out.update(calibration_slope=float(slope_fit.coef[1]), slope_ci=_wald_ci(slope_fit, 1),
               calibration_intercept=float(slope_fit.coef[0]))
    return out


def _wald_ci(fit: LogisticFit, i: int) -> list[float]:
    return [float(fit.coef[i] - Z975 * fit.se[i]), float(fit.coef[i] + Z975 * fit.se[i])]


def brier_score(y, prob) -> float:
    return float(np.mean((np.asarray(prob, float) - np.asarray(y, float)) ** 2))


# ----------------------------------------------------------------------------- decision curves
def decision_curve(y, probs: dict[str, np.ndarray], thresholds=None) -> dict:
    """Net benefit = TP/n − FP/n · pt/(1 − pt) (Vickers & Elkin 2006), plus treat-all and treat-none."""
    y = np.asarray(y).astype(int)
    n = len(y)
    pt = np.round(np.arange(0.01, 1.0, 0.01), 2) if thresholds is None else np.asarray(thresholds, float)
    odds = pt / (1 - pt)
    prev = y.mean()
    out = {"thresholds": pt.tolist(), "treat_none": [0.0] * len(pt),
           "treat_all": (prev - (1 - prev) * odds).tolist(), "models": {}}
    for name, p in probs.items():
        pos = np.asarray(p, float)[None, :] >= pt[:, None]
        tp = (pos & (y == 1)).sum(1) / n
        fp = (pos & (y == 0)).sum(1) / n
        out["models"][name] = (tp - fp * odds).tolist()
    return out
