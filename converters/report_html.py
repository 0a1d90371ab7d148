"""RUN/report.html: one self-contained page (figures embedded as base64) a clinician can read.

Laid out along the TRIPOD+AI results items: participant flow, characteristics, model specification,
performance (discrimination, classification, calibration, clinical utility), how to use the nomogram, and the
TRIPOD+AI checklist (converters/tripod.py) whose html pointers are the section ids here.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

CSS = """
body{font-family:'DejaVu Sans',Arial,sans-serif;max-width:1000px;margin:24px auto;\
padding:0 16px;color:#222;font-size:14px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:12.5px}\
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.banner{background:#b00020;color:#fff;font-weight:bold;padding:10px 14px;font-size:16px;text-align:center}
.note{background:#fff6d6;border-left:4px solid #e0b400;padding:6px 10px;margin:6px 0}
.method{color:#555;font-size:12.5px}img{max-width:100%}.tripod td{text-align:left}
"""


def _f(x, d=3):
    if x is None:
        return "–"
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    try:
        return f"{float(x):.{d}f}"
    except (TypeError, ValueError):
        return escape(str(x))


def _p(p):
    if p is None:
        return "–"
    return "&lt;0.001" if p < 0.001 else f"{p:.3f}"


def _ci(ci, d=3):
    return f"{_f(ci[0], d)}–{_f(ci[1], d)}" if ci else "–"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table(head: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{c}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{b}</table>"


def _summary_cell(g: dict) -> str:
    if not g or not g.get("n"):
        return "–"
    return (f"{g['mean']:.2f} ± {g['sd']:.2f}<br>{g['median']:.2f} [{g['q1']:.2f}, {g['q3']:.2f}]"
            + (f"<br><small>missing {g['missing']}</small>" if g.get("missing") else ""))


def render(rep: dict, figures: dict[str, Path]) -> str:
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>noa-edge nomogram report</title>"
           f"<style>{CSS}</style></head><body>"]
    if rep.get("synthetic_demo"):
        out.append("<div class='banner'>synthetic demo model — not for diagnosis (phantom cohort)</div>")
    out.append(f"<h1>NOA vs OA nomogram — development report</h1>"
               f"<p id='data'>Dataset <b>{escape(str(rep.get('dataset_name')))}</b> ({escape(str(rep['dataset']))}), "
               f"source: {escape(str(rep.get('source_kind')))}; DL backbone <b>{escape(rep['backbone'])}</b> "
               f"(out-of-fold probabilities from patient-grouped cross-validation). "
               f"Unit of analysis: {escape(rep['unit_of_analysis'])}. Missing data: {escape(rep['missing_data'])}.</p>")
    for note in rep.get("notes", []):
        out.append(f"<div class='note'>⚠ {escape(note)}</div>")

    # 1. flow
    fl = rep["flow"]
    g = fl["groups"]
    out.append("<h2 id='flow'>1. Participants (flow)</h2>")
    out.append(_table(["Step", "Patients", "Images (testes)"], [
        ["Dataset", str(fl["patients"]), str(fl["images"])],
        *[[f"&nbsp;&nbsp;{k}", str(v["patients"]), str(v["images"])] for k, v in g.items()],
        ["Controls excluded from the NOA-vs-OA model", str(g["control"]["patients"]), str(g["control"]["images"])],
        ["OA + NOA images", "", str(fl["oa_noa_images"])],
        ["&nbsp;&nbsp;without an out-of-fold DL prediction", "", str(fl["images_without_dl_prediction"])],
        ["&nbsp;&nbsp;excluded: missing model predictor (complete case)", "", str(fl["excluded_missing"])],
        ["Analysed", str(fl["analysed_patients"]), f"{fl['analysed_images']} ({fl['analysed_events']} NOA)"],
    ]))
    miss = ", ".join(f"{escape(k)} {v}" for k, v in fl["missing_by_predictor"].items())
    out.append("<p class='method'>Missing values among OA/NOA images with a DL prediction, per model predictor: "
               f"{miss}.</p>")

    # 2. characteristics
    t1 = rep["table1"]
    groups = list(t1["counts"])
    out.append("<h2 id='characteristics'>2. Characteristics (Table 1)</h2>")
    head = ["Variable (level)"] + [f"{escape(k)}<br>patients {v['patients']}, images {v['images']}"
                                   for k, v in t1["counts"].items()] + ["p (all groups)", "p (OA vs NOA)"]
    rows = []
    for r in t1["continuous"]:
        unit = f" ({escape(r['unit'])})" if r["unit"] else ""
        rows.append([f"{escape(r['label'])}{unit} <small>per {r['level']}</small>"]
                    + [_summary_cell(r["groups"].get(gr)) for gr in groups]
                    + [f"{_p(r['p_all_groups'])}<br><small>{escape(str(r['test_all_groups'] or ''))}</small>",
                       f"{_p(r['p_oa_vs_noa'])}<br><small>{escape(str(r['test_oa_vs_noa'] or ''))}</small>"])
    for c in t1["categorical"]:
        rows.append([escape(c["label"])] + [", ".join(f"{k}: {v}" for k, v in c["counts"].get(gr, {}).items())
                                            for gr in groups]
                    + [f"{_p(c['p'])}<br><small>{escape(str(c['test']))}</small>", ""])
    out.append(_table(head, rows))
    out.append(f"<p class='method'>Cells: mean ± SD, then median [IQR]. {escape(rep['methods']['table1'])}</p>")

    # 3. model
    m = rep["model"]
    out.append("<h2 id='model'>3. Model specification</h2>"
               "<h3 id='univariable'>Univariable logistic regression (NOA vs OA)</h3>")
    rows = []
    for u in rep["univariable"]:
        if "error" in u:
            rows.append([escape(u["label"]), str(u["n"]), str(u["missing"]), f"not estimable: {escape(u['error'])}",
                         "", "", ""])
        else:
            rows.append([escape(u["label"]), str(u["n"]), str(u["missing"]), _f(u["odds_ratio"]), _ci(u["or_ci"]),
                         _p(u["p"]), _f(u.get("auc"))])
    out.append(_table(["Candidate", "n images", "missing", "OR per " + "unit", "95% CI", "p", "AUC"], rows))
    out.append("<p class='method'>OR per unit of the variable (DL probability: per unit of its logit). "
               f"Univariable p &lt; 0.05: {escape(', '.join(rep['univariable_significant']) or 'none')}.</p>")
    out.append("<h3 id='multivariable'>Multivariable model (the nomogram)</h3>")
    rows = [[escape(c["name"]), _f(c["coef"], 4), _f(c["se"], 4), _f(c.get("odds_ratio")), _ci(c.get("or_ci")),
             _p(c["p"])] for c in m["coefficients"]]
    out.append(_table(["Term", "β", "SE", "OR", "95% CI", "Wald p"], rows))
    out.append(f"<p>n = {m['n']} images, {m['events']} NOA; likelihood-ratio χ² = {m['lr_chi2']:.2f} on {m['df']} df "
               f"(p {_p(m['lr_p'])}); events per variable {m['epv']:.1f}.</p>")
    terms = " + ".join(f"{c['coef']:.4f}·{escape(c['name'])}" for c in m["coefficients"][1:])
    out.append(f"<p>Linear predictor = {m['coefficients'][0]['coef']:.4f} + {terms}; dl_logit = ln(p/(1−p)) of the DL "
               "probability; probability = 1/(1+e<sup>−lp</sup>).</p>"
               f"<p class='method'>{escape(rep['methods']['model'])}</p>")

    # 4. performance
    out.append("<h2 id='performance'>4. Performance</h2><h3 id='discrimination'>Discrimination</h3>")
    rows = [[escape(rep["labels"][k]), _f(d["auc"]), _ci(d["ci"]),
             _p(rep["comparisons"][k]["p"]) if k in rep["comparisons"] else "reference"]
            for k, d in rep["discrimination"].items()]
    sch = rep.get("schoor_rule")
    if sch and "auc" in sch:
        rows.append([f"Schoor 2002 rule ({escape(sch['rule'])}); n = {sch['n_images']}", _f(sch["auc"]["auc"]),
                     _ci(sch["auc"]["ci"]), _p(sch["vs_nomogram"]["p"])])
    out.append(_table(["Model", "AUC", "95% CI (DeLong)", "p vs nomogram (paired DeLong)"], rows))
    out.append(f"<p class='method'>{escape(rep['methods']['auc'])} Apparent performance on the development data: "
               "the DL "
               f"probability is out-of-fold, the logistic models are fitted and assessed on the same images — see the "
               f"bootstrap below for optimism. {escape(rep['methods']['clustering'])}</p>")
    if "roc_png" in figures:
        out.append(_img(figures["roc_png"], "ROC curves"))
    perf = rep["performance"]
    at = perf["at_threshold"]
    t = at["table"]
    rule = rep.get("threshold_rule", "youden")
    out.append(f"<h3 id='classification'>Classification at the threshold {at['threshold']:.3f} (threshold rule: "
               f"<code class='threshold-rule'>{escape(rule)}</code>, development)</h3>")
    out.append(_table(["", "NOA (observed)", "OA (observed)"],
                      [["Predicted NOA", str(t["tp"]), str(t["fp"])], ["Predicted OA", str(t["fn"]), str(t["tn"])]]))
    rows = [[k.upper() if k in ("ppv", "npv") else k.capitalize(), _f(at[k]["value"]), _ci(at[k]["ci"]),
             f"{at[k]['k']}/{at[k]['n']}"] for k in ("accuracy", "sensitivity", "specificity", "ppv", "npv")]
    out.append(_table(["Measure", "Value", "95% CI", "k/n"], rows))
    out.append(f"<p class='method'>{escape(rep['methods']['threshold'])} {escape(rep['methods']['proportions'])}</p>")
    pat = rep.get("patient")
    if pat:
        out.append(f"<h3 id='patient-level'>Patient level ({pat['n_patients']} patients, {pat['n_events']} NOA)</h3>")
        rows = [["AUC", _f(pat["auc"]), _ci(pat["auc_ci"])]]
        rows += [[k.capitalize(), _f(pat[k]), _ci(pat[f"{k}_ci"])] for k in ("sensitivity", "specificity", "accuracy")]
        out.append(_table(["Measure (patient)", "Value", "95% CI"], rows))
        out.append(f"<p class='method'>{escape(pat['rule'])} Threshold {pat['threshold']:.3f} "
                   f"({escape(rule)}).</p>")
    v = rep.get("validation")
    if v:
        out.append(f"<h3 id='validation'>Internal validation (bootstrap, B = {v['B']}, {v['B_used']} used; "
                   f"resampling {escape(v['resampling'])})</h3>")
        rows = [[k, _f(x["apparent"], 4), _f(x["training"], 4), _f(x["test"], 4), _f(x["optimism"], 4),
                 _f(x["corrected"], 4)] for k, x in v["indexes"].items()]
        out.append(_table(["Index", "Apparent", "Training", "Test", "Optimism", "Corrected"], rows))
        out.append(f"<p class='method'>{escape(rep['methods']['validation'])} C = 0.5 + Dxy/2; "
                   "Brier = mean squared error "
                   f"of the predicted probability; perfect calibration: intercept 0, slope 1.</p>")
        if "calibration_png" in figures:
            out.append(_img(figures["calibration_png"], "calibration curves"))
    out.append("<h3 id='decision-curve'>Clinical utility (decision curve)</h3>")
    if "dca_png" in figures:
        out.append(_img(figures["dca_png"], "decision curve"))
    out.append(f"<p class='method'>{escape(rep['methods']['dca'])}</p>")

    # 5. how to use
    nomo = rep["nomogram"]
    out.append("<h2 id='how-to-use'>5. How to use the nomogram</h2>")
    if "nomogram_png" in figures:
        out.append(_img(figures["nomogram_png"], "nomogram"))
    rows = [[escape(p["label"]), escape(p["unit"] or "–"), escape(p["transform"]),
             f"{p['range'][0]:g}–{p['range'][1]:g}"] for p in nomo["predictors"]]
    out.append("<ol><li>Image one testis and draw its ROI; the device gives the DL probability for that image.</li>"
               "<li>For each predictor, find the value on its axis and read the points on the top <i>Points</i> axis "
               "(DL probability uses the probability of that image; testicular volume and EDV of the same testis; FSH "
               "of the patient).</li><li>Add the points; find the sum on <i>Total points</i> and read the probability "
               "of NOA below it.</li>"
               f"<li>Probability ≥ {nomo['threshold']:.3f} → NOA, otherwise OA (threshold fixed on the "
               "development data).</li></ol>")
    out.append(_table(["Predictor", "Unit", "Transform", "Accepted range"], rows))
    out.append(f"<p class='method'>Points: {nomo['points']['scale_per_unit_lp']:.3f} points per unit of "
               "linear predictor "
               "(the widest-ranging predictor spans 0–100, as rms::nomogram). The device uses RUN/nomogram.json and "
               "refuses values outside the accepted range.</p>")
    if rep.get("tripod_ai"):
        out.append(_tripod(rep["tripod_ai"]))
    out.append("</body></html>")
    return "\n".join(out)


def _pointer(p: dict) -> str:
    ref = escape(p["ref"])
    if p["kind"] == "html":
        return f"<a href='{ref}'>{ref}</a>"
    return f"<code>{'report.json: ' if p['kind'] == 'json' else ''}{ref}</code>"


def _tripod(check: dict) -> str:
    """Section 6: the TRIPOD+AI checklist (converters/tripod.py), one row per item."""
    rows = [[escape(i["item"]), escape(i["topic"]), escape(i["status"]),
             "<br>".join(_pointer(p) for p in i["where"]) or "–", escape(i["note"])] for i in check["items"]]
    table = _table(["Item", "Topic", "Status", "Where", "Note"], rows).replace("<table>", "<table class='tripod'>", 1)
    return (f"<h2 id='tripod'>6. {escape(check['guideline'])} checklist</h2>"
            f"<p class='method'>Scope: {escape(check['scope'])}. Where each item is answered: a section of this "
            "page, a key of report.json, or a documentation file.</p>"
            + table)
