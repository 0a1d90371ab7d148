"""Site recalibration (converters/recalibrate.py, `noa-edge recalibrate`): a frozen bundle's nomogram updated on a
site's own phantom cohort from the OTHER scanner, the CNN run through the device runtime and copied unchanged.

Cohorts: two independent external-scanner phantom cohorts (different seeds), made the way `noa-edge simulate`
makes its external cohort (converters.phantom.sample_cohort(..., "external") + converters.simulate.write_cohort).
The parent is the shipped demo bundle, read only. The calibration test also uses a parent derived from it (a
copy in tmp with its nomogram deliberately miscalibrated, coefficients × 0.4) so that a small cohort can see the
miscalibration and its repair. R (glm) is the reference for the three fits; the test fails, never skips, without
Rscript.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converters import stats
from converters.dataset import load_dataset
from converters.evaluate import evaluate
from converters.phantom import sample_cohort
from converters.recalibrate import (
    RecalibrationError,
    closed_test,
    fit_updates,
    lr_test,
    parent_sha256,
    recalibrate,
    score_site,
)
from converters.simulate import write_cohort
from edge.bundle import MANIFEST, describe, finalize_manifest, load, verify
from edge.nomogram import Nomogram, points_scaling

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "firmware_assets" / "demo-phantom"


def _cohort(root: Path, seed: int, n_oa: int, n_noa: int) -> Path:
    return write_cohort(sample_cohort(n_oa, n_noa, 0, seed, "external", id_prefix="X"), root, progress=False)


class _Cohorts:
    """Site cohort A (recalibration) and B (independent check), both from the external scanner; each rendered
    on first use, so a test that needs only A does not pay for B."""

    def __init__(self, root: Path):
        self.root, self.made = root, {}

    def __getitem__(self, key: str) -> Path:
        if key not in self.made:
            seed, n_oa, n_noa = {"A": (1701, 30, 50), "B": (1702, 25, 45)}[key]
            self.made[key] = _cohort(self.root / key, seed, n_oa, n_noa)
        return self.made[key]


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> _Cohorts:
    return _Cohorts(tmp_path_factory.mktemp("cohorts"))


@pytest.fixture(scope="module")
def site_a(cohorts):
    """Cohort A scored once by the demo bundle (device runtime) and its nomogram."""
    bundle = load(DEMO)
    return score_site(DEMO, Nomogram(bundle.nomogram), load_dataset(cohorts["A"]), None, progress=False)


@pytest.fixture(scope="module")
def miscalibrated_parent(tmp_path_factory) -> Path:
    """A copy of the demo bundle whose nomogram is too flat (coefficients × 0.4, intercept shifted): a site
    miscalibration large enough to see on ~150 images. Built with the writer's own finalize_manifest."""
    dest = tmp_path_factory.mktemp("parent") / "flat-demo"
    shutil.copytree(DEMO, dest, ignore=shutil.ignore_patterns("manifest.sig"))
    manifest = json.loads((dest / MANIFEST).read_text())
    nomo = manifest["nomogram"]
    nomo["intercept"] = 0.4 * nomo["intercept"] + 0.5
    for p in nomo["predictors"]:
        p["coef"] *= 0.4
    limits = {a["name"]: (a["min"], a["max"]) for a in nomo["points"]["axes"]}
    nomo["points"] = points_scaling(nomo["predictors"], limits)
    finalize_manifest(dest, manifest)
    assert verify(dest) == []
    return dest


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------- the calibration it buys
def test_slope_recalibration_brings_the_slope_to_one_on_an_independent_cohort(cohorts, miscalibrated_parent, tmp_path):
    before = evaluate(miscalibrated_parent, cohorts["B"], progress=False)
    lo, hi = before["slope_ci"]
    assert lo > 1, f"the flattened parent should be visibly miscalibrated on B: slope CI {lo:.2f}-{hi:.2f}"
    rep = recalibrate(miscalibrated_parent, cohorts["A"], tmp_path / "site", method="slope", progress=False)
    assert rep["method"] == "slope"
    after = evaluate(tmp_path / "site", cohorts["B"], progress=False)
    lo, hi = after["slope_ci"]
    assert lo <= 1 <= hi, f"after slope recalibration on A, the slope on B is {after['calibration_slope']:.2f} " \
                          f"({lo:.2f}-{hi:.2f})"
    assert abs(after["calibration_slope"] - 1) < abs(before["calibration_slope"] - 1)
    assert after["auc"] == pytest.approx(before["auc"], abs=1e-12)  # monotone update: same ranking on B


def test_intercept_only_leaves_the_auc_unchanged(site_a, monkeypatch, cohorts, tmp_path):
    monkeypatch.setattr("converters.recalibrate.score_site", lambda *a, **k: site_a)
    for method in ("intercept", "slope"):
        rep = recalibrate(DEMO, cohorts["A"], tmp_path / method, method=method, progress=False)
        assert rep["method"] == method and rep["auc_unchanged"]
        assert abs(rep["after"]["auc"] - rep["before"]["auc"]) < 1e-12
        assert abs(rep["after"]["patient"]["auc"] - rep["before"]["patient"]["auc"]) < 1e-12
    # the intercept update moves calibration-in-the-large to 0 on the data it was fitted on, slope untouched
    rep = json.loads((tmp_path / "intercept" / "recalibration.json").read_text())
    assert abs(rep["after"]["calibration_in_the_large"]) < 1e-6
    assert rep["after"]["calibration_slope"] == pytest.approx(rep["before"]["calibration_slope"], abs=1e-9)


# ------------------------------------------------------------------------------------ R parity
R_GLM = r"""
d <- read.csv(commandArgs(trailingOnly = TRUE)[1])
ctl <- glm.control(epsilon = 1e-14, maxit = 100)
out <- function(key, v) cat(key, paste(format(v, digits = 17), collapse = " "), "\n")
ll0 <- sum(dbinom(d$y, 1, plogis(d$lp), log = TRUE))
fits <- list(intercept = glm(y ~ offset(lp), family = binomial, data = d, control = ctl),
             slope = glm(y ~ lp, family = binomial, data = d, control = ctl),
             refit = glm(y ~ x1 + x2 + x3 + x4, family = binomial, data = d, control = ctl))
out("original_ll", ll0)
for (k in names(fits)) {
  f <- fits[[k]]
  out(paste0(k, "_coef"), coef(f)); out(paste0(k, "_se"), sqrt(diag(vcov(f)))); out(paste0(k, "_ll"), logLik(f))
}
lr <- function(a, b, df) { s <- 2 * (a - b); c(s, pchisq(s, df, lower.tail = FALSE)) }
out("lr_refit_original", lr(logLik(fits$refit), ll0, 5))
out("lr_refit_slope", lr(logLik(fits$refit), logLik(fits$slope), 3))
out("lr_slope_intercept", lr(logLik(fits$slope), logLik(fits$intercept), 1))
out("lr_intercept_original", lr(logLik(fits$intercept), ll0, 1))
"""


def _run_r(site, tmp_path: Path) -> dict[str, np.ndarray]:
    rscript = shutil.which("Rscript")
    assert rscript, "Rscript not found: R is the reference for the recalibration fits (make sysdeps)"
    data = tmp_path / "site.csv"
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["y", "lp", "x1", "x2", "x3", "x4"])
        for y, lp, x in zip(site.y, site.lp, site.X, strict=True):
            w.writerow([int(y), repr(float(lp)), *(repr(float(v)) for v in x)])
    (tmp_path / "glm.R").write_text(R_GLM)
    res = subprocess.run([rscript, str(tmp_path / "glm.R"), str(data)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return {ln.split()[0]: np.array([float(v) for v in ln.split()[1:]]) for ln in res.stdout.splitlines() if ln.strip()}


def test_updates_match_r_glm(site_a, tmp_path):
    assert site_a.X.shape[1] == 4, "the demo nomogram has four predictors (dl_logit, fsh, volume_ml, edv_cm_s)"
    r = _run_r(site_a, tmp_path)
    fits = fit_updates(site_a)
    assert fits["original"]["loglik"] == pytest.approx(r["original_ll"][0], rel=1e-12)
    for name in ("intercept", "slope", "refit"):
        f = fits[name]["fit"]
        np.testing.assert_allclose(f.coef, r[f"{name}_coef"], rtol=1e-7, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(f.se, r[f"{name}_se"], rtol=1e-6, err_msg=name)
        assert f.loglik == pytest.approx(r[f"{name}_ll"][0], rel=1e-10), name
    # a glm(y ~ offset(lp)) intercept, not a free slope: the intercept update keeps lp's coefficient at 1
    assert len(fits["intercept"]["fit"].coef) == 1
    for bigger, smaller in (("refit", "original"), ("refit", "slope"), ("slope", "intercept"),
                            ("intercept", "original")):
        t = lr_test(fits, bigger, smaller)
        assert t["lr_chi2"] == pytest.approx(r[f"lr_{bigger}_{smaller}"][0], rel=1e-8, abs=1e-8)
        assert t["p"] == pytest.approx(r[f"lr_{bigger}_{smaller}"][1], rel=1e-6, abs=1e-12)
    assert closed_test(fits)["tests"][0] == lr_test(fits, "refit", "original")


def test_closed_test_picks_the_smallest_supported_update():
    def fits(ll):
        return {"original": {"loglik": ll[0], "n_parameters": 0}, "intercept": {"loglik": ll[1], "n_parameters": 1},
                "slope": {"loglik": ll[2], "n_parameters": 2}, "refit": {"loglik": ll[3], "n_parameters": 5}}

    assert closed_test(fits([-100, -99.9, -99.8, -99]))["chosen"] == "none"          # refit vs original: p > 0.05
    assert closed_test(fits([-100, -90, -89.9, -89.5]))["chosen"] == "intercept"     # only the intercept matters
    assert closed_test(fits([-100, -99, -90, -89.5]))["chosen"] == "slope"
    chosen = closed_test(fits([-100, -99, -98, -80]))
    assert chosen["chosen"] == "refit" and [t["df"] for t in chosen["tests"]] == [5, 3]


# ----------------------------------------------------------------------- the new bundle, end to end
def test_cli_writes_a_verified_bundle_with_lineage_and_the_cnn_unchanged(cohorts, tmp_path):
    out = tmp_path / "fw" / "site-a"
    parent_before = {p.name: _sha(p) for p in DEMO.iterdir()}
    res = subprocess.run([sys.executable, "-m", "edge.cli", "recalibrate", str(DEMO), str(cohorts["A"]), "--out",
                          str(out), "--json", str(tmp_path / "rep.json"), "--quiet"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert verify(out) == []
    parent, child = load(DEMO), load(out)
    for name, spec in parent.variants.items():
        assert _sha(out / spec["file"]) == _sha(DEMO / spec["file"]) == child.variants[name]["sha256"]
    lineage = child.manifest["lineage"]
    assert lineage["parent_sha256"] == hashlib.sha256((DEMO / MANIFEST).read_bytes()).hexdigest() \
        == parent_sha256(DEMO)
    assert lineage["parent_name"] == "demo-phantom"
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert lineage["method"] == rep["method"] and rep["method"] in ("none", "intercept", "slope", "refit")
    assert rep["method_requested"] == "auto" and rep["closed_test"][0]["test"] == "refit vs original"
    cohort = lineage["cohort"]
    labelled = load_dataset(cohorts["A"]).labelled_images()
    assert cohort["n_images"] + sum(cohort["excluded"].values()) == len(labelled) == 160
    scored = {r["patient_id"] for r in labelled} if not cohort["excluded"] else None
    assert 75 <= cohort["n_patients"] <= 80 and (scored is None or cohort["n_patients"] == len(scored))
    assert 45 <= cohort["events_patients"] <= 50 and cohort == rep["cohort"]
    assert cohort["events_images"] + cohort["non_events_images"] == cohort["n_images"]
    assert child.synthetic_demo and parent.synthetic_demo
    assert child.nomogram["threshold"] == child.threshold
    assert [p["name"] for p in child.nomogram["predictors"]] == [p["name"] for p in parent.nomogram["predictors"]]
    info = "\n".join(describe(child))
    assert "lineage" in info and lineage["parent_sha256"] in info and "SYNTHETIC DEMO" in info
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Lineage" in card and lineage["parent_sha256"] in card and "not for diagnosis" in card
    html = (out / "recalibration_report.html").read_text()
    assert "synthetic demo model — not for diagnosis" in html and "refit vs original" in html
    assert "data:image/png;base64," in html
    assert {p.name: _sha(p) for p in DEMO.iterdir()} == parent_before, "the parent bundle must not change"
    assert _listing(out.parent) == ["site-a"], "no temporary folder left behind"


# -------------------------------------------------------------------------- refusals write nothing
def _derived(src: Path, dest: Path, keep_patient=None, blank: str | None = None) -> Path:
    """A copy of a dataset's CSVs (images linked) with some patients dropped or one column emptied."""
    dest.mkdir(parents=True)
    shutil.copy(src / "dataset.json", dest / "dataset.json")
    os.symlink(src / "images", dest / "images")
    with (src / "patients.csv").open(newline="") as fh:
        patients = list(csv.DictReader(fh))
    keep = {p["patient_id"] for p in patients if keep_patient is None or keep_patient(p)}
    for name, rows in (("patients.csv", patients), ("images.csv", None)):
        if rows is None:
            with (src / name).open(newline="") as fh:
                rows = list(csv.DictReader(fh))
        rows = [r for r in rows if r["patient_id"] in keep]
        for r in rows:
            if blank in r:
                r[blank] = ""
        with (dest / name).open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return dest


def _first_oa(n):
    seen = []

    def keep(p):
        if p["group"] != "OA":
            return True
        if len(seen) < n:
            seen.append(p["patient_id"])
            return True
        return False
    return keep


@pytest.mark.parametrize("case, match", [
    ("no_clinical", r"no image has every clinical value.*empty column\(s\): fsh"),
    ("one_class", r"all NOA: one class"),
    ("few_events", r"too few events: \d+ NOA and [0-9] OA"),
])
def test_bad_site_datasets_are_refused_and_nothing_is_written(cohorts, tmp_path, case, match):
    src = cohorts["A"]
    data = {"no_clinical": lambda d: _derived(src, d, blank="fsh"),
            "one_class": lambda d: _derived(src, d, keep_patient=lambda p: p["group"] == "NOA"),
            "few_events": lambda d: _derived(src, d, keep_patient=_first_oa(4))}[case](tmp_path / "data")
    fw = tmp_path / "fw"
    fw.mkdir()
    with pytest.raises(RecalibrationError, match=match):
        recalibrate(DEMO, data, fw / "site", progress=False)
    assert _listing(fw) == []
    res = subprocess.run([sys.executable, "-m", "edge.cli", "recalibrate", str(DEMO), str(data), "--out",
                          str(fw / "site"), "--quiet"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and "error:" in res.stderr and "Traceback" not in res.stderr
    assert _listing(fw) == []


def test_a_failure_while_writing_leaves_nothing(site_a, cohorts, tmp_path, monkeypatch):
    monkeypatch.setattr("converters.recalibrate.score_site", lambda *a, **k: site_a)
    monkeypatch.setattr("converters.recalibrate.verify", lambda path: ["MODEL_CARD.md: simulated failure"])
    fw = tmp_path / "fw"
    with pytest.raises(RecalibrationError, match="does not verify"):
        recalibrate(DEMO, cohorts["A"], fw / "site", method="intercept", progress=False)
    assert _listing(fw) == []


def test_an_existing_out_folder_is_refused(cohorts, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(RecalibrationError, match="not empty"):
        recalibrate(DEMO, cohorts["A"], out, progress=False)
    assert _listing(out) == ["keep.txt"]


def test_the_update_rules_on_the_nomogram(site_a):
    """lp after = a + lp (intercept), a + b·lp (slope): the stored nomogram reproduces them."""
    from converters.recalibrate import updated_spec

    spec = load(DEMO).nomogram
    fits = fit_updates(site_a)
    a = fits["intercept"]["fit"].coef[0]
    a2, b2 = fits["slope"]["fit"].coef
    for method, expect in (("intercept", a + site_a.lp), ("slope", a2 + b2 * site_a.lp)):
        nomo = Nomogram(updated_spec(spec, method, fits, 0.5, "fixed", len(site_a.y), int(site_a.y.sum())))
        lp = nomo.intercept + site_a.X @ np.array([p.coef for p in nomo.predictors])
        np.testing.assert_allclose(lp, expect, rtol=1e-12, atol=1e-12)
    assert stats.roc_auc(site_a.y, site_a.lp) > 0.8


def test_with_a_site_key_the_new_bundle_is_signed(site_a, cohorts, tmp_path, monkeypatch):
    from edge.bundle_signing import check_signature, keygen

    monkeypatch.setattr("converters.recalibrate.score_site", lambda *a, **k: site_a)
    private, public = keygen(tmp_path / "keys")
    out = tmp_path / "fw" / "signed"
    recalibrate(DEMO, cohorts["A"], out, method="intercept", sign_key=private, progress=False)
    assert verify(out) == []
    check_signature(out, public)  # raises SignatureError when unsigned or signed over other bytes
    readme = (out / "README.md").read_text()
    assert "Site recalibration" in readme and parent_sha256(DEMO) in readme
    with pytest.raises(RecalibrationError, match="--sign-key"):
        recalibrate(DEMO, cohorts["A"], tmp_path / "fw" / "nokey", sign_key=tmp_path / "missing.key", progress=False)
    assert _listing(tmp_path / "fw") == ["signed"]


def test_a_parent_changed_during_the_run_is_refused(site_a, cohorts, tmp_path, monkeypatch):
    """The copied CNN must be the bytes the parent's manifest pins (what the lineage's hash names)."""
    monkeypatch.setattr("converters.recalibrate.score_site", lambda *a, **k: site_a)
    real_copy = shutil.copyfile

    def copy_then_flip(src, dst):
        real_copy(src, dst)
        if str(dst).endswith("model_fp32.tflite"):
            with open(dst, "r+b") as fh:
                fh.seek(1000)
                byte = fh.read(1)
                fh.seek(1000)
                fh.write(bytes([byte[0] ^ 1]))
    monkeypatch.setattr("converters.recalibrate.shutil.copyfile", copy_then_flip)
    fw = tmp_path / "fw"
    with pytest.raises(RecalibrationError, match="model_fp32.tflite: changed since"):
        recalibrate(DEMO, cohorts["A"], fw / "site", method="intercept", progress=False)
    assert _listing(fw) == []
