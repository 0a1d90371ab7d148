"""`noa-edge recalibrate BUNDLE DATASET --out firmware_assets/NAME`: update a frozen bundle's nomogram on a site's
own patients, with the evidence. The CNN is not touched: its files are copied byte for byte.

A model moved to another site (another scanner, another case mix) usually still ranks patients well but is
miscalibrated there. The usual updates of a logistic prediction model, in increasing extent (Steyerberg,
Clinical Prediction Models, ch. 20; Vergouwe et al. 2017, Stat Med 36:4529):
  intercept  recalibration in the large: glm(y ~ offset(lp)); only the intercept moves
  slope      logistic recalibration: glm(y ~ lp); intercept a and slope b, every coefficient times b
  refit      the nomogram's coefficients re-estimated on the site's data, the CNN output still a predictor
  auto       Vergouwe's closed testing procedure: likelihood-ratio tests, the smallest update the data support
The DL probability comes from the bundle's own CPU variant through the device runtime, with the scoring
function of `noa-edge evaluate` (converters.evaluate.score_images_with_bundle). The new bundle is built in a
temporary folder next to OUT and renamed at the end: on any failure nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from converters.errors import ConvertersError, ModelInputError
from converters.nomogram import jsonable
from edge.bundle import MANIFEST, BundleError, finalize_manifest, load, sha256_file, verify
from edge.nomogram import Nomogram, NomogramError, points_scaling, transform

METHODS = ("auto", "intercept", "slope", "refit")
ALPHA = 0.05                 # level of each likelihood-ratio test of the closed procedure
MIN_EVENTS = 10              # below this, refused: fewer events than one parameter needs (Peduzzi et al. 1996)
RECOMMENDED_EVENTS = 100     # below this, a warning: 100 events and 100 non-events for a reliable calibration
SAMPLE_SIZE_RULE = ("at least 100 events and 100 non-events for a reliable calibration estimate (Vergouwe et al. "
                    "2005, J Clin Epidemiol 58:475; Collins, Ogundimu & Altman 2016, Stat Med 35:214); fewer than "
                    f"{MIN_EVENTS} of either class is refused")
REPORT_JSON, REPORT_HTML = "recalibration.json", "recalibration_report.html"
REGENERATED = ("MODEL_CARD.md", "README.md", REPORT_JSON, REPORT_HTML)  # not copied from the parent


class RecalibrationError(ConvertersError, ValueError):
    """A bundle, site dataset or option recalibration cannot use; the message says which and why."""


@dataclass
class SiteData:
    """The site's scored images: outcome, the parent's linear predictor, the nomogram's transformed inputs."""

    y: np.ndarray
    lp: np.ndarray
    X: np.ndarray               # (n, k) transformed predictor values, columns in the nomogram's order
    names: list[str]
    patient_ids: list[str]
    excluded: dict[str, int] = field(default_factory=dict)


def parent_sha256(bundle_dir: Path) -> str:
    """The parent bundle's identity: sha256 of its manifest.json bytes (the manifest pins every other file)."""
    return hashlib.sha256((Path(bundle_dir) / MANIFEST).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ site data
def check_site_rows(rows: list[dict], nomo: Nomogram, root: Path) -> None:
    """Refuse a site dataset recalibration cannot use, before any image is scored."""
    clinical = [p.source for p in nomo.predictors if p.source != "dl_probability"]
    if not rows:
        raise RecalibrationError(f"{root}: no OA or NOA image (controls are not part of the NOA-vs-OA model)")
    complete = [r for r in rows if all(r.get(s) is not None for s in clinical)]
    if clinical and not complete:
        empty = [s for s in clinical if all(r.get(s) is None for r in rows)]
        raise RecalibrationError(
            f"{root}: no image has every clinical value the nomogram needs ({', '.join(clinical)}); "
            f"empty column(s): {', '.join(empty) or 'none, but no row is complete'}. Recalibration updates the "
            "nomogram, so the site's data must carry these values")
    check_events(np.array([r["label"] for r in complete]), root, "images with complete clinical values")


def check_events(y: np.ndarray, root: Path, what: str) -> list[str]:
    """Raise on one class or too few events; return the sample-size warnings."""
    events, n = int(y.sum()), len(y)
    if events in (0, n):
        raise RecalibrationError(f"{root}: the {n} {what} are all {'NOA' if events else 'OA'}: one class, "
                                 "nothing to calibrate against")
    smaller = min(events, n - events)
    if smaller < MIN_EVENTS:
        raise RecalibrationError(f"{root}: too few events: {events} NOA and {n - events} OA {what}; recalibration "
                                 f"needs at least {MIN_EVENTS} of each ({SAMPLE_SIZE_RULE})")
    if smaller < RECOMMENDED_EVENTS:
        return [f"small sample: {events} NOA and {n - events} OA images, below the recommended minimum "
                f"({SAMPLE_SIZE_RULE}); the update is uncertain, read its confidence intervals"]
    return []


def score_site(bundle_dir: Path, nomo: Nomogram, ds, variant: str | None, progress: bool) -> SiteData:
    """Run the bundle's CNN on the site's ROIs (the device runtime, as `evaluate` does) and the parent nomogram."""
    from converters.evaluate import score_images_with_bundle

    rows = ds.labelled_images(include_controls=False)
    check_site_rows(rows, nomo, ds.root)
    probs = score_images_with_bundle(bundle_dir, ds, rows, variant, progress)
    ys, lps, xs, pids, excluded = [], [], [], [], {}
    for r in rows:
        try:
            res = nomo.predict({**r, "dl_probability": probs[r["image_id"]]})
        except NomogramError as exc:
            reason = "missing input" if "missing" in str(exc) else "input outside plausible range"
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        ys.append(r["label"])
        lps.append(res["lp"])
        xs.append([float(transform(p.transform, res["inputs"][p.source])) for p in nomo.predictors])
        pids.append(r["patient_id"])
    return SiteData(np.array(ys, int), np.array(lps), np.array(xs, float).reshape(len(ys), len(nomo.predictors)),
                    [p.name for p in nomo.predictors], pids, excluded)


# ---------------------------------------------------------------------------------------- the updates
def loglik(y: np.ndarray, lp: np.ndarray) -> float:
    return float(np.sum(y * lp - np.logaddexp(0.0, lp)))


def fit_updates(site: SiteData, need_refit: bool = True) -> dict:
    """Maximum-likelihood fits of the three updates (converters.stats.fit_logistic = rms::lrm / glm)."""
    from converters import stats

    y, lp = site.y, site.lp
    fits: dict = {"original": {"loglik": loglik(y, lp), "n_parameters": 0}}
    try:
        f = stats.fit_logistic(np.zeros((len(y), 0)), y, names=[], offset=lp, check=False)
        fits["intercept"] = {"fit": f, "loglik": f.loglik, "n_parameters": 1}
        if stats.check_separation(np.column_stack([np.ones(len(y)), lp]), y):
            raise RecalibrationError("the parent's linear predictor separates NOA from OA perfectly on this site's "
                                     "data: the calibration slope has no finite estimate; use --method intercept")
        f = stats.fit_logistic(lp[:, None], y, names=["lp"], check=False)
        fits["slope"] = {"fit": f, "loglik": f.loglik, "n_parameters": 2}
        if need_refit:
            f = stats.fit_logistic(site.X, y, names=site.names, check=True)
            fits["refit"] = {"fit": f, "loglik": f.loglik, "n_parameters": len(site.names) + 1}
    except ModelInputError as exc:
        raise RecalibrationError(f"refitting the nomogram on this site's data failed: {exc}; use --method slope or "
                                 "--method intercept") from None
    except np.linalg.LinAlgError:
        raise RecalibrationError("the update's information matrix is singular on this site's data") from None
    return fits


def lr_test(fits: dict, bigger: str, smaller: str) -> dict:
    from scipy.stats import chi2

    stat = 2 * (fits[bigger]["loglik"] - fits[smaller]["loglik"])
    df = fits[bigger]["n_parameters"] - fits[smaller]["n_parameters"]
    p = float(chi2.sf(max(stat, 0.0), df))
    return {"test": f"{bigger} vs {smaller}", "lr_chi2": stat, "df": df, "p": p, "significant": p < ALPHA}


def closed_test(fits: dict) -> dict:
    """Vergouwe et al. 2017: the most extensive update against no update first (keeps the type I error near
    ALPHA), then step down: refit vs slope, slope vs intercept, intercept vs original."""
    tests = [lr_test(fits, "refit", "original")]
    if not tests[0]["significant"]:
        return {"chosen": "none", "tests": tests, "reason": (
            f"refit vs original not significant (LR chi2 {tests[0]['lr_chi2']:.2f}, df {tests[0]['df']}, "
            f"p {tests[0]['p']:.3g} >= {ALPHA}): the site's data show no need to update the nomogram")}
    for bigger, smaller in (("refit", "slope"), ("slope", "intercept"), ("intercept", "original")):
        t = lr_test(fits, bigger, smaller)
        tests.append(t)
        if t["significant"]:
            return {"chosen": bigger, "tests": tests, "reason": (
                f"{bigger} vs {smaller} significant (LR chi2 {t['lr_chi2']:.2f}, df {t['df']}, p {t['p']:.3g} "
                f"< {ALPHA}) after every more extensive step was not: {bigger} is the smallest update the data "
                "support")}
    return {"chosen": "none", "tests": tests, "reason": (
        "refit vs original was significant but no single step was (intercept vs original p "
        f"{tests[-1]['p']:.3g}): the original nomogram is kept")}


def updated_coefficients(spec: dict, method: str, fits: dict) -> tuple[float, list[float]]:
    """(intercept, coefficients) of the updated nomogram."""
    b0, coefs = float(spec["intercept"]), [float(p["coef"]) for p in spec["predictors"]]
    if method == "intercept":
        return b0 + float(fits["intercept"]["fit"].coef[0]), coefs
    if method == "slope":
        a, b = (float(v) for v in fits["slope"]["fit"].coef)
        return a + b * b0, [b * c for c in coefs]
    if method == "refit":
        c = fits["refit"]["fit"].coef
        return float(c[0]), [float(v) for v in c[1:]]
    return b0, coefs


def updated_spec(spec: dict, method: str, fits: dict, threshold: float, threshold_method: str, n: int,
                 events: int) -> dict:
    """The parent's nomogram.json with new coefficients, points rescaled on the same axes (rms::nomogram)."""
    intercept, coefs = updated_coefficients(spec, method, fits)
    new = json.loads(json.dumps(spec))
    new["intercept"] = intercept
    for p, c in zip(new["predictors"], coefs, strict=True):
        p["coef"] = c
    limits = {a["name"]: (a["min"], a["max"]) for a in spec["points"]["axes"]}
    new["points"] = points_scaling(new["predictors"], limits)
    new.update(threshold=threshold, threshold_method=threshold_method, recalibration=method,
               n_recalibration=n, events_recalibration=events)
    Nomogram(new)  # the device's own checks, before anything is written
    return new


# ------------------------------------------------------------------------------------------ the command
def recalibrate(bundle: str | Path, dataset, out: str | Path, method: str = "auto", threshold: str = "youden",
                seed: int = 0, variant: str | None = None, progress: bool = True,
                sign_key: str | Path | None = None) -> dict:
    """The whole `noa-edge recalibrate`; returns the report (also written into the new bundle). With `sign_key`
    (the site's Ed25519 key, edge/bundle_signing.py) the new bundle is signed before it appears."""
    from converters.dataset import load_dataset
    from converters.operating_point import parse_threshold, resolve_threshold
    from converters.recalibrate_report import build_report, write_bundle_docs

    bundle_dir, out = Path(bundle), Path(out)
    if method not in METHODS:
        raise RecalibrationError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    rule = parse_threshold(threshold)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RecalibrationError(f"--out {out}: exists and is not empty; choose a new bundle folder")
    if sign_key is not None and not Path(sign_key).is_file():
        raise RecalibrationError(f"--sign-key {sign_key}: no such file")
    if out.resolve() == bundle_dir.resolve() or out.resolve().is_relative_to(bundle_dir.resolve()):
        raise RecalibrationError(f"--out {out}: must not be the parent bundle or inside it")
    try:
        parent = load(bundle_dir)
    except BundleError as exc:
        raise RecalibrationError(str(exc)) from None
    parent_hash = parent_sha256(bundle_dir)
    nomo = Nomogram(parent.nomogram)
    if nomo.placeholder:
        raise RecalibrationError(f"{bundle_dir}: its nomogram is a placeholder (not fitted): nothing to recalibrate")
    ds = dataset if hasattr(dataset, "labelled_images") else load_dataset(Path(dataset), check_images=True)
    site = score_site(bundle_dir, nomo, ds, variant, progress)
    warnings = check_events(site.y, ds.root, "scored images")
    fits = fit_updates(site, need_refit=method in ("auto", "refit"))
    choice = closed_test(fits) if method == "auto" else {"chosen": method, "tests": [], "reason": "requested"}
    chosen = choice["chosen"]
    intercept, coefs = updated_coefficients(parent.nomogram, chosen, fits)
    lp_new = intercept + site.X @ np.array(coefs)
    p_new = 1 / (1 + np.exp(-lp_new))
    thr = resolve_threshold(rule, site.y, p_new)
    n, events = len(site.y), int(site.y.sum())
    spec = updated_spec(parent.nomogram, chosen, fits, thr["threshold"], f"{thr['rule']} (site recalibration)",
                        n, events)
    if chosen == "refit":
        warnings += fits["refit"]["fit"].warnings
    report = build_report(parent, parent_hash, ds, site, fits, choice, method, lp_new, thr, rule, seed, warnings)
    manifest = new_manifest(parent.manifest, out.name, spec, report)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.recalibrating-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle folder is readable like any other
        copy_parent_files(parent, tmp)
        write_bundle_docs(tmp, manifest, parent, report)
        finalize_manifest(tmp, manifest)
        problems = verify(tmp)
        if problems:
            raise RecalibrationError("the new bundle does not verify: " + "; ".join(problems))
        if sign_key is not None:
            from edge.bundle_signing import SignatureError, sign

            try:
                sign(tmp, sign_key)
            except SignatureError as exc:
                raise RecalibrationError(str(exc)) from None
        if parent_sha256(bundle_dir) != parent_hash:
            raise RecalibrationError(f"{bundle_dir / MANIFEST}: changed during the run; run again")
        if out.exists():
            out.rmdir()  # checked empty above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report["bundle"] = str(out)
    return report


def new_manifest(parent: dict, name: str, spec: dict, report: dict) -> dict:
    """The parent's manifest with the updated nomogram, its threshold and the lineage (hashes are recomputed by
    edge.bundle.finalize_manifest)."""
    from converters.bundle_docs import code_version

    m = {k: v for k, v in json.loads(json.dumps(parent)).items()
         if k not in ("files", "nomogram_sha256", "manifest_sha256")}
    m["name"] = name
    m["created"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    m["synthetic_demo"] = bool(parent["synthetic_demo"]) or bool(report["cohort"]["synthetic"])
    m["nomogram"] = spec
    m["threshold"] = spec["threshold"]
    m["threshold_source"] = f"site recalibration ({spec['threshold_method']}, {report['cohort']['dataset']})"
    m["lineage"] = {"kind": "site_recalibration", "tool": "noa-edge recalibrate",
                    "parent_name": parent["name"], "parent_sha256": report["parent_sha256"],
                    "parent_sha256_of": "the bytes of the parent's manifest.json",
                    "parent_nomogram_sha256": parent["nomogram_sha256"],
                    "method": report["method"], "method_requested": report["method_requested"],
                    "method_reason": report["method_reason"], "closed_test": report["closed_test"],
                    "cohort": report["cohort"], "threshold_rule": report["threshold_rule"],
                    "seed": report["seed"], "code_version": code_version(),
                    "parent_lineage": parent.get("lineage")}
    return jsonable(m)


def copy_parent_files(parent, dest: Path) -> None:
    """Every file of the parent except the ones rewritten here, byte for byte (the CNN variants included), each
    checked against the sha256 the parent's manifest records: a parent changed on disk since it was loaded
    stops the run instead of giving a bundle whose lineage names other bytes."""
    expected = {spec["file"]: spec["sha256"] for spec in parent.variants.values()} | dict(parent.manifest["files"])
    for rel in sorted(set(expected) - set(REGENERATED)):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(parent.path / rel, target)
        if sha256_file(target) != expected[rel]:
            raise RecalibrationError(f"{parent.path / rel}: changed since the parent bundle was verified; run again")

