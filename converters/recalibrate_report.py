"""The evidence of a site recalibration (converters/recalibrate.py): the numbers before and after the update
(recalibration.json), the page a clinician reads (recalibration_report.html, with the nomogram report's helpers
and CSS) and the bundle's README and MODEL_CARD (with its lineage section). Statistics: converters.stats.
"""

from __future__ import annotations

import json
import tempfile
from html import escape
from pathlib import Path

import numpy as np

from converters import stats
from converters.bundle_docs import lineage_section, readme
from converters.nomogram import jsonable
from converters.operating_point import patient_block
from converters.recalibrate import ALPHA, REPORT_HTML, REPORT_JSON, SAMPLE_SIZE_RULE
from converters.report_html import CSS, _ci, _f, _img, _p, _table

AUC_NOTE = ("Recalibration in the large and logistic recalibration (slope > 0) are monotone in the linear "
            "predictor: they leave the ranking of the images, hence the AUC, unchanged. Only a refit can change it.")


def _sigmoid(lp):
    return 1 / (1 + np.exp(-np.asarray(lp, float)))


def performance(y, lp, threshold: float, patient_ids) -> dict:
    """Image- and patient-level numbers of one nomogram (before or after) on the site's images."""
    p = _sigmoid(lp)
    auc = stats.delong_ci(y, p)
    at = stats.classification_metrics(y, p, threshold)
    cal = stats.calibration_in_the_large_and_slope(y, lp)
    out = {"auc": auc["auc"], "auc_ci": auc["ci"], "brier": stats.brier_score(y, p), "threshold": threshold,
           **{k: cal[k] for k in ("calibration_in_the_large", "citl_ci", "calibration_slope", "slope_ci",
                                  "calibration_intercept", "observed_rate", "mean_predicted")},
           "calibration_notes": cal["calibration_notes"] + ([auc["note"]] if auc.get("note") else []),
           "patient": patient_block(patient_ids, y, p, threshold)}
    for k in ("sensitivity", "specificity", "accuracy"):
        out[k], out[f"{k}_ci"] = at[k]["value"], at[k]["ci"]
    return out


def fit_summary(fits: dict) -> dict:
    out = {"original": {"loglik": fits["original"]["loglik"], "n_parameters": 0}}
    for name in ("intercept", "slope", "refit"):
        if name in fits:
            f = fits[name]["fit"]
            names = ["intercept (a)"] if name == "intercept" else (
                ["intercept (a)", "slope (b)"] if name == "slope" else f.names)
            out[name] = {"loglik": f.loglik, "n_parameters": fits[name]["n_parameters"],
                         "coefficients": [{"name": nm, "coef": float(f.coef[i]), "se": float(f.se[i]),
                                           "ci": [float(f.coef[i] - stats.Z975 * f.se[i]),
                                                  float(f.coef[i] + stats.Z975 * f.se[i])]}
                                          for i, nm in enumerate(names)],
                         "warnings": list(f.warnings)}
    return out


def build_report(parent, parent_hash: str, ds, site, fits: dict, choice: dict, requested: str, lp_new, thr: dict,
                 rule: dict, seed: int, warnings: list[str]) -> dict:
    from converters.train_data import dataset_sha256

    y = site.y
    source = ds.meta.get("source") or {}
    before = performance(y, site.lp, parent.threshold, site.patient_ids)
    after = performance(y, lp_new, thr["threshold"], site.patient_ids)
    chosen = choice["chosen"]
    notes = list(warnings)
    if chosen == "slope" and fits["slope"]["fit"].coef[1] <= 0:
        notes.append("the calibration slope is <= 0: the parent model ranks this site's patients the wrong way round; "
                     "do not use it here")
    cohort = {"dataset": ds.meta.get("name") or ds.root.name, "path": str(ds.root),
              "dataset_sha256": dataset_sha256(ds),
              "source_kind": source.get("kind"), "synthetic": source.get("kind") == "phantom",
              "n_images": int(len(y)), "n_patients": len(set(site.patient_ids)), "events_images": int(y.sum()),
              "non_events_images": int(len(y) - y.sum()), "events_patients": before["patient"]["n_events"],
              "excluded": site.excluded}
    return jsonable({
        "schema": "noa-edge.recalibration/1", "parent": parent.name, "parent_path": str(parent.path),
        "parent_sha256": parent_hash, "parent_sha256_of": "the bytes of the parent's manifest.json",
        "synthetic_demo": bool(parent.synthetic_demo) or cohort["synthetic"],
        "method": chosen, "method_requested": requested, "method_reason": choice["reason"],
        "closed_test": choice["tests"], "alpha": ALPHA if choice["tests"] else None,
        "updates": fit_summary(fits), "cohort": cohort,
        "sample_size_rule": SAMPLE_SIZE_RULE,
        "threshold_rule": thr["rule"], "threshold": thr["threshold"], "parent_threshold": parent.threshold,
        "before": before, "after": after, "auc_unchanged": chosen in ("none", "intercept", "slope"),
        "auc_note": AUC_NOTE, "seed": seed, "notes": notes, "unit_of_analysis": "testis image",
        "calibration_curve": curves(y, site.lp, lp_new),
        "limitations": ["'after' is apparent: the update is fitted and assessed on the same images; check it on "
                        "an independent cohort from the site (noa-edge evaluate NEW_BUNDLE OTHER_DATASET).",
                        "The two testes of a patient are correlated; the likelihood-ratio tests and Wald CIs treat "
                        "images as independent (slightly optimistic)."],
    })


def curves(y, lp_before, lp_after, grid: int = 40) -> dict:
    """Lowess calibration curves (as rms::calibrate's apparent curve) before and after, on a common grid."""
    out = {}
    for name, lp in (("before", lp_before), ("after", lp_after)):
        p = _sigmoid(lp)
        ps = np.sort(p)
        at = np.linspace(ps[min(4, len(ps) - 1)], ps[max(len(ps) - 5, 0)], grid)
        out[name] = {"predicted": at.tolist(), "observed": np.clip(stats.lowess_at(p, y, at), 0, 1).tolist()}
    return out


def calibration_png(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="ideal")
    for name, colour, style in (("before", "#b00020", "-"), ("after", "#1f5fa8", "-.")):
        c, r = report["calibration_curve"][name], report[name]
        ax.plot(c["predicted"], c["observed"], color=colour, lw=2, ls=style,
                label=f"{name}: slope {_f(r['calibration_slope'], 2)}, "
                      f"in-the-large {_f(r['calibration_in_the_large'], 2)}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability of NOA")
    ax.set_ylabel("observed proportion NOA (lowess)")
    method = "no update" if report["method"] == "none" else report["method"]
    ax.set_title(f"Calibration on the site's images ({method}; after = apparent)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(rep: dict, png: Path | None) -> str:
    b, a, c = rep["before"], rep["after"], rep["cohort"]
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>noa-edge site recalibration</title>"
           f"<style>{CSS}</style></head><body>"]
    if rep["synthetic_demo"]:
        out.append("<div class='banner'>synthetic demo model — not for diagnosis (phantom cohort)</div>")
    out.append(f"<h1>Site recalibration of <b>{escape(rep['parent'])}</b></h1>"
               f"<p>Parent bundle {escape(rep['parent_path'])}"
               f" (sha256 of its manifest.json <code>{rep['parent_sha256']}</code>); site dataset "
               f"<b>{escape(str(c['dataset']))}</b> ({escape(c['path'])}). The CNN files are copied unchanged; only "
               "the nomogram is updated. DL probabilities from the bundle's CPU variant through the device runtime. "
               f"Unit of analysis: {escape(rep['unit_of_analysis'])}.</p>")
    for note in rep["notes"]:
        out.append(f"<div class='note'>⚠ {escape(note)}</div>")
    out.append("<h2>1. Site cohort (sample size)</h2>")
    out.append(_table(["", "Images", "Patients"], [
        ["Analysed", str(c["n_images"]), str(c["n_patients"])],
        ["&nbsp;&nbsp;NOA (events)", str(c["events_images"]), str(c["events_patients"])],
        ["&nbsp;&nbsp;OA", str(c["non_events_images"]), str(c["n_patients"] - c["events_patients"])],
        ["Excluded (" + escape(", ".join(f"{k} {v}" for k, v in c["excluded"].items()) or "none") + ")",
         str(sum(c["excluded"].values())), ""]]))
    out.append(f"<p class='method'>Sample-size rule: {escape(rep['sample_size_rule'])}.</p>")
    out.append(f"<h2>2. Update method: {escape(rep['method'])}</h2><p>Requested: {escape(rep['method_requested'])}. "
               f"{escape(rep['method_reason'])}.</p>")
    if rep["closed_test"]:
        out.append(_table(["Likelihood-ratio test", "LR χ²", "df", "p", f"significant at {rep['alpha']}"],
                          [[escape(t["test"]), _f(t["lr_chi2"], 2), str(t["df"]), _p(t["p"]),
                            "yes" if t["significant"] else "no"] for t in rep["closed_test"]]))
        out.append("<p class='method'>Closed testing procedure (Vergouwe et al. 2017, Stat Med 36:4529): refit vs "
                   "original first, then step down (refit vs slope, slope vs intercept, intercept vs original); the "
                   "first significant step is the smallest update the data support.</p>")
    rows = []
    for name, u in rep["updates"].items():
        for k in u.get("coefficients", []):
            rows.append([escape(name), escape(k["name"]), _f(k["coef"], 4), _f(k["se"], 4), _ci(k["ci"]),
                         _f(u["loglik"], 2)])
        if name == "original":
            rows.append(["original", "(no parameter)", "", "", "", _f(u["loglik"], 2)])
    out.append(_table(["Update", "Parameter", "Estimate", "SE", "95% CI (Wald)", "log-likelihood"], rows))
    out.append("<p class='method'>intercept: glm(y ~ offset(lp), binomial); slope: glm(y ~ lp, binomial), new "
               "coefficients = b × old, new intercept = a + b × old intercept; refit: every nomogram coefficient "
               "re-estimated (rms::lrm) with the CNN's logit as a predictor. lp = the parent's linear predictor.</p>")
    out.append("<h2>3. Calibration and discrimination, before and after (image level)</h2>")
    rows = [[name, _f(r["calibration_in_the_large"]), _ci(r["citl_ci"]), _f(r["calibration_slope"]),
             _ci(r["slope_ci"]), _f(r["auc"]), _ci(r["auc_ci"]), _f(r["brier"])] for name, r in (("before", b),
                                                                                                ("after", a))]
    out.append(_table(["", "Calibration in the large", "95% CI", "Calibration slope", "95% CI", "AUC",
                       "95% CI (DeLong)", "Brier"], rows))
    out.append(f"<p>{escape(rep['auc_note'])} Here: AUC {'unchanged' if rep['auc_unchanged'] else 'may change'} "
               f"({_f(b['auc'], 4)} → {_f(a['auc'], 4)}).</p>")
    if png is not None:
        out.append(_img(png, "calibration before and after"))
    out.append("<h2>4. Classification</h2>")
    rows = []
    for name, r, rule in (("before", b, "parent's frozen threshold"), ("after", a, rep["threshold_rule"])):
        rows.append([f"{name} (image)", f"{r['threshold']:.3f} ({escape(rule)})", _f(r["sensitivity"]),
                     _ci(r["sensitivity_ci"]), _f(r["specificity"]), _ci(r["specificity_ci"])])
        pt = r["patient"]
        rows.append([f"{name} (patient, {pt['n_patients']} patients)", f"{pt['threshold']:.3f}",
                     _f(pt["sensitivity"]), _ci(pt["sensitivity_ci"]), _f(pt["specificity"]),
                     _ci(pt["specificity_ci"])])
    out.append(_table(["", "Threshold", "Sensitivity", "95% CI", "Specificity", "95% CI"], rows))
    out.append(f"<p>Patient-level AUC before {_f(b['patient']['auc'])} ({_ci(b['patient']['auc_ci'])}), after "
               f"{_f(a['patient']['auc'])} ({_ci(a['patient']['auc_ci'])}). "
               f"<span class='method'>{escape(a['patient']['rule'])} Clopper–Pearson CIs. The threshold after the "
               f"update is chosen on these images ({escape(rep['threshold_rule'])}).</span></p>")
    out.append("<h2>Limitations</h2><ul>" + "".join(f"<li>{escape(x)}</li>" for x in rep["limitations"]) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def write_bundle_docs(folder: Path, manifest: dict, parent, report: dict) -> None:
    """README.md, MODEL_CARD.md (the parent's card + a lineage section), recalibration.json and its page."""
    folder = Path(folder)
    report = {**report, "bundle_name": manifest["name"]}
    lin = manifest["lineage"]
    parent_readme = parent.path / "README.md"
    text = (parent_readme.read_text().rstrip() if parent_readme.is_file()
            else readme(manifest, int(manifest["input"]["shape"][1])).rstrip())
    (folder / "README.md").write_text(
        f"{text}\n\n## Site recalibration: `{manifest['name']}`\n\nThis bundle is `{lin['parent_name']}` (sha256 of "
        f"its manifest.json {lin['parent_sha256']}) with its nomogram updated by `noa-edge recalibrate` "
        f"(method {lin['method']}) on `{lin['cohort']['dataset']}`; the model files are the parent's, byte for byte. "
        f"Evidence: {REPORT_HTML}; lineage: MODEL_CARD.md and `noa-edge bundle info .`.\n"
        + ("\nsynthetic demo model — not for diagnosis.\n" if manifest["synthetic_demo"] else ""))
    card = parent.path / "MODEL_CARD.md"
    head = card.read_text().rstrip() + "\n\n" if card.is_file() else f"# Model card: {manifest['name']}\n\n"
    (folder / "MODEL_CARD.md").write_text(head + "\n".join(lineage_section(manifest)))
    (folder / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        png = calibration_png(report, Path(tmp) / "calibration.png")
        (folder / REPORT_HTML).write_text(render(report, png))

