"""Calibration curves exactly as rms::calibrate draws them for a logistic model (re-exported by converters.stats).

rms::calibrate smooths the outcome on the predicted probability with R's lowess(x, y, iter = 0): Cleveland's
local-linear tricube fit (span 2/3), computed only at "anchor" points spaced by delta = 1 % of the x range and
joined linearly in between (clowess), then read at 50 predicted values with approx() (NA outside the data).
The bias-corrected curve subtracts the mean bootstrap optimism (curve on the resample minus curve on the
original rows, per grid point, over the replicates where both are defined: predab.resample's `num`).
Reproducing the anchors matters: evaluating the smoother directly at the grid differs from R by ~1e-4.
numpy only; tests/test_stats_vs_r.py compares every number with rms::calibrate on the same resamples.
"""

from __future__ import annotations

import math

import numpy as np


def lowess_at(x: np.ndarray, y: np.ndarray, at: np.ndarray, frac: float = 2 / 3) -> np.ndarray:
    """Cleveland's local-linear tricube smoother without robustness iterations (R lowess(iter = 0)),
    evaluated at the points `at` directly (no anchor interpolation: see lowess_r for that)."""
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


def _anchors(xs: np.ndarray, delta: float) -> np.ndarray:
    """Indices of sorted x where clowess fits (others are interpolated or copy a tied anchor): after an
    anchor a, ties of x[a] are absorbed and the next anchor is the last point within x[a] + delta."""
    n = len(xs)
    out = []
    i = 0
    while True:
        out.append(i)
        last = int(np.searchsorted(xs, xs[i], "right")) - 1           # ties of x[i] copy its fit
        if last >= n - 1:
            break
        within = int(np.searchsorted(xs, xs[i] + delta, "right")) - 1  # last point <= x[i] + delta
        i = max(last + 1, within)
    return np.asarray(out)


def lowess_r(x, y, frac: float = 2 / 3, delta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """R's lowess(x, y, f = frac, iter = 0, delta) as the knots (x, fit) of its piecewise-linear curve:
    the fitted values R returns at every data point lie on the lines joining these knots."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    order = np.argsort(x, kind="mergesort")
    xs, ys = x[order], y[order]
    if delta is None:
        delta = 0.01 * float(xs[-1] - xs[0])
    idx = _anchors(xs, delta)
    return xs[idx], lowess_at(xs, ys, xs[idx], frac)


def lowess_r_at(x, y, at) -> np.ndarray:
    """approx(lowess(x, y, iter = 0), xout = at)$y: nan outside the range of x (approx's rule = 1)."""
    kx, ky = lowess_r(x, y)
    return np.interp(at, kx, ky, left=np.nan, right=np.nan)


def calibration_curve(y, p_app, boot_p=(), samples=(), grid: int = 50) -> dict:
    """rms::calibrate(fit, method = "boot") for a logistic model, number for number.

    y: 0/1 outcome; p_app: the fitted model's probabilities; boot_p: each kept replicate's probabilities on
    the original rows; samples: that replicate's resampled row indices. Curves are read at `grid` values
    from the 5th smallest to the 5th largest p_app. Returns raw (unclipped) arrays with nan where R has NA."""
    y = np.asarray(y, float)
    p_app = np.asarray(p_app, float)
    ps = np.sort(p_app)
    predy = np.linspace(ps[min(4, len(ps) - 1)], ps[max(len(ps) - 5, 0)], grid)
    apparent = lowess_r_at(p_app, y, predy)
    train, test, num = np.zeros(grid), np.zeros(grid), np.zeros(grid)
    for p_b, idx in zip(boot_p, samples, strict=True):
        p_b = np.asarray(p_b, float)
        tr = lowess_r_at(p_b[idx], y[idx], predy) - predy
        te = lowess_r_at(p_b, y, predy) - predy
        ok = np.isfinite(tr + te)                      # predab.resample: NA in either -> not counted here
        train += np.where(ok, tr, 0)
        test += np.where(ok, te, 0)
        num += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        optimism = (train - test) / num
    corrected = apparent - optimism
    # print.calibrate: error of each observation's prediction against the corrected curve, inside the grid
    s = np.isfinite(corrected)
    err = np.abs(p_app - np.interp(p_app, predy[s], corrected[s], left=np.nan, right=np.nan)) if s.any() \
        else np.full(len(p_app), np.nan)
    err = err[np.isfinite(err)]
    return {"predicted": predy, "apparent": apparent, "optimism": optimism, "bias_corrected": corrected,
            "n_replicates": num, "mean_absolute_error": float(err.mean()) if len(err) else float("nan"),
            "q90_absolute_error": float(np.quantile(err, 0.9)) if len(err) else float("nan")}
