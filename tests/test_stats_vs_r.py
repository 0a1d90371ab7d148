"""converters.stats against R: pROC (AUC, DeLong CI, paired DeLong test), rms (lrm, validate), binom.test,
lowess. R runs in a subprocess on the very same CSV. Fails — never skips — when Rscript or the R packages
rms/pROC are missing (the Makefile's `sysdeps` target installs them)."""

from __future__ import annotations

import csv
import shutil
import subprocess

import numpy as np
import pytest

from converters import stats

R_SCRIPT = r"""
suppressMessages({library(rms); library(pROC)})
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
out <- function(key, v) cat(key, paste(format(v, digits = 17), collapse = " "), "\n")
for (s in c("s_dl", "s_nomo", "s_rule", "s_tied")) {
  r <- roc(d$y, d[[s]], direction = "<", levels = c(0, 1), quiet = TRUE)
  out(paste0("auc_", s), as.numeric(auc(r)))
  out(paste0("ci_", s), as.numeric(ci.auc(r, method = "delong"))[c(1, 3)])
}
r_nomo <- roc(d$y, d$s_nomo, direction = "<", levels = c(0, 1), quiet = TRUE)
for (s in c("s_dl", "s_rule", "s_tied")) {
  r <- roc(d$y, d[[s]], direction = "<", levels = c(0, 1), quiet = TRUE)
  t <- roc.test(r_nomo, r, method = "delong", paired = TRUE)
  out(paste0("test_", s), c(t$statistic, t$p.value))
}
f <- lrm(y ~ x1 + x2 + x3 + x4, data = d, x = TRUE, y = TRUE)
out("lrm_coef", coef(f))
out("lrm_se", sqrt(diag(vcov(f))))
out("lrm_lr", f$stats["Model L.R."])
B <- as.integer(args[2])
set.seed(20240601); v <- validate(f, B = B)
out("val_dxy", v["Dxy", c("index.orig", "index.corrected")])
out("val_slope", v["Slope", "index.corrected"])
out("val_brier", v["B", "index.corrected"])
out("binom", c(binom.test(17, 40)$conf.int, binom.test(0, 12)$conf.int, binom.test(12, 12)$conf.int))
out("lowess", lowess(d$x2, d$y, iter = 0, delta = 0)$y[order(order(d$x2))])
"""


def _require_r() -> str:
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.fail("Rscript not found: R is the reference for these statistics. Install it with "
                    "`make sysdeps` (apt: r-base-core r-cran-rms r-cran-proc)")
    return rscript


def make_data(n: int = 1000, seed: int = 7) -> dict[str, np.ndarray]:
    """A cohort shaped like the nomogram's (DL logit, log-normal FSH, volume, EDV; C ~0.76, no separation).

    n = 1000 rows keeps the Monte-Carlo SD of a B = 200 optimism estimate near 0.002 (Dxy) and 0.004
    (slope), so the 0.02 agreement with R holds for any pair of seeds, not just these."""
    rng = np.random.default_rng(seed)
    severity = rng.normal(size=n)
    x1 = 0.8 * severity + rng.normal(scale=1.0, size=n)                 # DL logit
    x2 = np.exp(1.8 + 0.35 * severity + rng.normal(scale=0.5, size=n))  # FSH
    x3 = 16 - 2.0 * severity + rng.normal(scale=3, size=n)              # volume
    x4 = 3.0 - 0.3 * severity + rng.normal(scale=0.8, size=n)           # EDV
    y = (rng.random(n) < 1 / (1 + np.exp(-(0.6 + 2.0 * severity)))).astype(int)
    fit = stats.fit_logistic(np.column_stack([x1, x2, x3, x4]), y, check=False)
    return {"y": y, "x1": x1, "x2": x2, "x3": x3, "x4": x4,
            "s_dl": 1 / (1 + np.exp(-x1)),
            "s_nomo": fit.linear_predictor(np.column_stack([x1, x2, x3, x4])),
            "s_rule": ((x2 > 7.6) | (x3 <= 12)).astype(float),
            "s_tied": np.round(x2)}


@pytest.fixture(scope="module")
def data_and_r(tmp_path_factory):
    rscript = _require_r()
    d = make_data()
    path = tmp_path_factory.mktemp("r") / "d.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(d))
        for row in zip(*d.values(), strict=False):
            w.writerow([repr(float(v)) for v in row])
    script = path.parent / "ref.R"
    script.write_text(R_SCRIPT)
    proc = subprocess.run([rscript, str(script), str(path), "200"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"R failed (are r-cran-rms and r-cran-proc installed?):\n{proc.stderr[-3000:]}"
    ref = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts:
            ref[parts[0]] = np.array([float(v) for v in parts[1:]])
    return d, ref


@pytest.mark.parametrize("score", ["s_dl", "s_nomo", "s_rule", "s_tied"])
def test_auc_and_delong_ci_equal_proc(data_and_r, score):
    d, ref = data_and_r
    ci = stats.delong_ci(d["y"], d[score])
    assert abs(ci["auc"] - ref[f"auc_{score}"][0]) < 1e-9
    assert stats.roc_auc(d["y"], d[score]) == pytest.approx(ref[f"auc_{score}"][0], abs=1e-9)
    np.testing.assert_allclose(ci["ci"], ref[f"ci_{score}"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("score", ["s_dl", "s_rule", "s_tied"])
def test_paired_delong_equals_roc_test(data_and_r, score):
    d, ref = data_and_r
    t = stats.delong_paired_test(d["y"], d["s_nomo"], d[score])
    z_r, p_r = ref[f"test_{score}"]
    assert t["z"] == pytest.approx(z_r, abs=1e-6)
    assert abs(t["p"] - p_r) < 1e-6
    assert t["p"] < 0.05 or score == "s_tied"  # the comparison is not trivially null


def test_logistic_equals_lrm(data_and_r):
    d, ref = data_and_r
    X = np.column_stack([d["x1"], d["x2"], d["x3"], d["x4"]])
    fit = stats.fit_logistic(X, d["y"], names=["x1", "x2", "x3", "x4"])
    np.testing.assert_allclose(fit.coef, ref["lrm_coef"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(fit.se, ref["lrm_se"], atol=1e-6, rtol=0)
    assert fit.lr_chi2 == pytest.approx(ref["lrm_lr"][0], abs=1e-5)


def test_bootstrap_validation_agrees_with_rms_validate(data_and_r):
    """Same B = 200, different random streams: optimism-corrected indexes agree within 0.02."""
    d, ref = data_and_r
    X = np.column_stack([d["x1"], d["x2"], d["x3"], d["x4"]])
    v = stats.bootstrap_validate(X, d["y"], B=200, seed=3)
    idx = v["indexes"]
    assert v["B_used"] == 200
    assert idx["Dxy"]["apparent"] == pytest.approx(ref["val_dxy"][0], abs=1e-9)
    assert abs(idx["Dxy"]["corrected"] - ref["val_dxy"][1]) < 0.02
    assert abs(idx["Slope"]["corrected"] - ref["val_slope"][0]) < 0.02
    assert abs(idx["Brier"]["corrected"] - ref["val_brier"][0]) < 0.005
    assert idx["Dxy"]["optimism"] > 0 and idx["Slope"]["corrected"] < 1  # optimism is really estimated


def test_clopper_pearson_equals_binom_test(data_and_r):
    _, ref = data_and_r
    got = stats.binomial_ci(17, 40) + stats.binomial_ci(0, 12) + stats.binomial_ci(12, 12)
    np.testing.assert_allclose(got, ref["binom"], atol=1e-9)


def test_lowess_equals_r_lowess(data_and_r):
    d, ref = data_and_r
    got = stats.lowess_at(d["x2"], d["y"].astype(float), d["x2"])
    np.testing.assert_allclose(got, ref["lowess"], atol=1e-6)
