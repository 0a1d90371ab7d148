"""Validation statistics for the nomogram, written to give the same numbers as R's rms and pROC.

Every function here has an R counterpart that tests/test_stats_vs_r.py runs on the same data:
  roc_auc / delong_ci            pROC::auc, pROC::ci.auc(method = "delong")
  delong_paired_test             pROC::roc.test(method = "delong", paired = TRUE)
  fit_logistic                   rms::lrm  (unpenalised ML, SEs from the inverse information matrix)
  bootstrap_validate             rms::validate(fit, B = 200)   (Harrell's optimism bootstrap)
  calibration_curve              rms::calibrate(fit, B = 200)  (apparent + bias-corrected lowess curves)
  binomial_ci                    binom.test(x, n)$conf.int     (Clopper–Pearson exact interval)
Only numpy and scipy (the host's [train] extra): no pandas, no statsmodels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

Z975 = 1.959963984540054  # qnorm(0.975)


class ModelInputError(ValueError):
    """The design matrix or outcome cannot give a meaningful logistic fit (message says why)."""


class SeparationError(ModelInputError):
    """Perfect or quasi-complete separation: maximum-likelihood coefficients are infinite."""


def _norm_sf(z):
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
    """AUC with DeLong variance and the normal CI pROC::ci.auc(method = "delong") gives (clipped to 0–1)."""
    auc, v10, v01 = delong_placements(y, score)
    m, n = len(v10), len(v01)
    var = np.sum((v10 - auc) ** 2) / (m - 1) / m + np.sum((v01 - auc) ** 2) / (n - 1) / n
    se = math.sqrt(var)
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    return {"auc": auc, "se": se, "ci": [max(0.0, auc - z * se), min(1.0, auc + z * se)],
            "n_cases": m, "n_controls": n, "method": "DeLong"}


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
    p = float(2 * _norm_sf(abs(z)))
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
        return 2 * _norm_sf(np.abs(self.wald_z))

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
                raise ModelInputError(f"predictor '{name}' has {int((~np.isfinite(col)).sum())} missing/non-finite values")
            if np.ptp(col) == 0:
                raise ModelInputError(f"predictor '{name}' has no variance (every row = {col[0]:g}): it cannot be estimated")
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
    for it in range(1, max_iter + 1):
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
            step = np.stack([np.linalg.lstsq(h, g, rcond=None)[0] for h, g in zip(H, grad)])
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


def bootstrap_validate(X, y, B: int = 200, seed: int = 0, clusters=None, fit: LogisticFit | None = None,
                       calibration_grid: int = 50) -> dict:
    """Harrell's optimism bootstrap (rms::validate.lrm, method = "boot"), plus rms::calibrate curves.

    For each of B resamples: refit, compute the indexes on the resample (training) and on the original
    rows with the resample's model (test); optimism = mean(training − test); corrected = apparent −
    optimism. Replicates that diverge (separation in the resample) are dropped and counted, as rms does."""
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    y = np.asarray(y).astype(float)
    n = len(y)
    X1 = np.column_stack([np.ones(n), X])
    fit = fit or fit_logistic(X, y)
    lp_app = X1 @ fit.coef
    apparent = _indexes(y, lp_app, np.ones(n))

    samples = bootstrap_samples(n, B, seed, clusters)
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
    optimism = {k: float(np.mean([tr[k] - te[k] for tr, te in zip(train, test)])) for k in INDEX_NAMES}
    table = {k: {"apparent": apparent[k], "training": float(np.mean([t[k] for t in train])),
                 "test": float(np.mean([t[k] for t in test])), "optimism": optimism[k],
                 "corrected": apparent[k] - optimism[k]} for k in INDEX_NAMES}
    # rms reports C through Dxy: corrected C = 0.5 + corrected Dxy / 2 (identical here)
    out = {"B": B, "B_used": int(ok.sum()), "B_failed": int((~ok).sum()), "seed": seed,
           "resampling": "patients (cluster bootstrap)" if clusters is not None else "rows",
           "indexes": table}
    if calibration_grid:
        out["calibration"] = _calibration_from_replicates(y, lp_app, lp_orig[ok],
                                                          [samples[b] for b in np.flatnonzero(ok)], calibration_grid)
    return out


# ------------------------------------------------------------------------------- calibration
def lowess_at(x: np.ndarray, y: np.ndarray, at: np.ndarray, frac: float = 2 / 3) -> np.ndarray:
    """Cleveland's local-linear tricube smoother without robustness iterations (R lowess(iter = 0)),
    evaluated at the points `at` directly (R interpolates between anchor points with `delta`)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    at = np.asarray(at, float)
    n = len(x)
    k = max(min(int(math.floor(frac * n + 1e-7)), n), 2)      # clowess: ns = floor(f*n)
    d = np.abs(x[None, :] - at[:, None])                      # (g, n)
    h = np.partition(d, k - 1, axis=1)[:, k - 1][:, None]    # distance to the k-th nearest point
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(d <= 0.999 * h, (1 - np.clip(d / h, 0, 1) ** 3) ** 3, 0.0)
    w = np.where(d <= 0.001 * h, 1.0, w)
    sw = w.sum(1)
    xm = (w * x).sum(1) / sw
    ym = (w * y).sum(1) / sw
    sxx = (w * (x - xm[:, None]) ** 2).sum(1)
    sxy = (w * (x - xm[:, None]) * (y - ym[:, None])).sum(1)
    linear = np.sqrt(sxx) > 0.001 * np.ptp(x)               # clowess falls back to a local mean
    slope = np.where(linear, sxy / np.where(sxx > 0, sxx, 1), 0.0)
    return ym + slope * (at - xm)


def _calibration_from_replicates(y, lp_app, lp_orig_ok, samples_ok, grid: int) -> dict:
    """rms::calibrate: apparent lowess of y on predicted p, and the curve corrected by the mean
    bootstrap optimism at 50 predicted values between the 5th smallest and 5th largest prediction."""
    p_app = 1 / (1 + np.exp(-lp_app))
    ps = np.sort(p_app)
    lo, hi = ps[min(4, len(ps) - 1)], ps[max(len(ps) - 5, 0)]
    predy = np.linspace(lo, hi, grid)
    apparent = lowess_at(p_app, y, predy)
    opt = np.zeros(grid)
    for lp_b, idx in zip(lp_orig_ok, samples_ok):
        p_b = 1 / (1 + np.exp(-lp_b))
        opt += lowess_at(p_b[idx], y[idx], predy) - lowess_at(p_b, y, predy)
    opt /= max(len(samples_ok), 1)
    corrected = np.clip(apparent - opt, 0, 1)
    return {"predicted": predy.tolist(), "apparent": np.clip(apparent, 0, 1).tolist(),
            "bias_corrected": corrected.tolist(),
            "mean_absolute_error": float(np.mean(np.abs(corrected - predy))),
            "smoother": "lowess, span 2/3, no robustness iterations", "B": len(samples_ok)}


def calibration_in_the_large_and_slope(y, lp) -> dict:
    """External calibration: intercept with lp as offset (calibration-in-the-large) and the slope of
    logit(p) on lp. Perfect calibration = 0 and 1."""
    y = np.asarray(y).astype(float)
    lp = np.asarray(lp, float)
    citl = fit_logistic(np.zeros((len(y), 0)), y, names=[], offset=lp, check=False)
    slope_fit = fit_logistic(lp[:, None], y, names=["lp"], check=False)
    return {"calibration_in_the_large": float(citl.coef[0]), "citl_ci": _wald_ci(citl, 0),
            "calibration_slope": float(slope_fit.coef[1]), "slope_ci": _wald_ci(slope_fit, 1),
            "calibration_intercept": float(slope_fit.coef[0]),
            "observed_rate": float(y.mean()), "mean_predicted": float(np.mean(1 / (1 + np.exp(-lp))))}


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


# ----------------------------------------------------------------------------------- Table 1
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
                r = sps.ttest_ind(*arrays, equal_var=False) if normal else sps.mannwhitneyu(*arrays, alternative="two-sided")
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
    res = {"levels": levels, "counts": {g: dict(zip(levels, map(int, row))) for g, row in zip(groups, table)},
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
