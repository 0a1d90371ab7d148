"""The cross-validation report of `noa-edge train`: metrics, OOF table, Grad-CAM figures, JSON and HTML.

Metrics (`binary_metrics`, `evaluate`): AUC with DeLong 95% CI and Youden-threshold rates, at image and
patient level. Outputs: RUN/oof_predictions.csv (`write_oof`), RUN/gradcam/*.png (`gradcam_overlays`),
the cv_report dict (`build_report`, written as RUN/cv_report.json by converters.train) and the
self-contained RUN/cv_report.html (`html_report`: tables, pooled ROC curves, training curves).
matplotlib is imported inside the figure functions.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from converters.backbone_trainer import EARLY_STOP_MONITOR, EARLY_STOP_WARMUP
from edge.patient import patient_probability

OOF_COLUMNS = ["image_id", "patient_id", "group", "label", "backbone", "fold", "prob"]
GRADCAM_PER_CATEGORY = 3


# ------------------------------------------------------------------------------------------ metrics
def binary_metrics(y, prob) -> dict:
    """AUC with DeLong 95% CI; accuracy, sensitivity, specificity at the Youden threshold of these data."""
    from converters.stats import classification_metrics, delong_ci, youden_threshold

    y = np.asarray(y).astype(int)
    prob = np.asarray(prob, dtype=float)
    out = {"n": int(len(y)), "n_noa": int(y.sum()), "n_oa": int(len(y) - y.sum())}
    if out["n_noa"] == 0 or out["n_oa"] == 0:
        return {**out, "auc": None, "auc_ci": None, "note": "one class only: no AUC"}
    if min(out["n_noa"], out["n_oa"]) >= 2:
        d = delong_ci(y, prob)
        out.update(auc=d["auc"], auc_ci=d["ci"], auc_se=d["se"])
    else:
        from converters.stats import roc_auc

        out.update(auc=roc_auc(y, prob), auc_ci=None, auc_se=None)
    thr = youden_threshold(y, prob)["threshold"]
    cm = classification_metrics(y, prob, thr)
    if not math.isfinite(thr):  # constant predictions: "everything NOA" is the only cut-off
        out["note"] = "all probabilities equal: no finite threshold"
    out.update(threshold=thr if math.isfinite(thr) else None, accuracy=cm["accuracy"]["value"],
               sensitivity=cm["sensitivity"]["value"], specificity=cm["specificity"]["value"], table=cm["table"])
    return out


def patient_level(patient_ids, y, prob) -> tuple[list[str], np.ndarray, np.ndarray]:
    """One row per patient, by the cart's patient-level rule (edge.patient.patient_probability: the mean
    probability of the patient's testes), so the CV statistics and the cart aggregate the same way."""
    ids = list(dict.fromkeys(patient_ids))
    index = {p: i for i, p in enumerate(ids)}
    probs: list[list[float]] = [[] for _ in ids]
    labels = np.zeros(len(ids), dtype=int)
    for p, yy, pr in zip(patient_ids, y, prob, strict=False):
        probs[index[p]].append(float(pr))
        labels[index[p]] = yy
    return ids, labels, np.array([patient_probability(ps) for ps in probs])


def evaluate(patient_ids, y, prob) -> dict:
    _, py, pp = patient_level(patient_ids, y, prob)
    return {"image": binary_metrics(y, prob), "patient": binary_metrics(py, pp)}


MULTIPLICITY_NOTE = ("Paired DeLong tests (pROC::roc.test, paired) between every pair of backbones on the same "
                     "out-of-fold images. With k backbones there are k(k-1)/2 tests: read p_holm (Holm's step-down "
                     "adjustment, family-wise error 5 %), not the raw p, and remember that image-level tests treat a "
                     "patient's two testes as independent (too small p).")


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (R: p.adjust(p, "holm")), in the input order."""
    k = len(pvalues)
    order = sorted(range(k), key=lambda i: pvalues[i])
    out, running = [0.0] * k, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * pvalues[i]))
        out[i] = running
    return out


def paired_backbone_tests(y, probs: dict[str, np.ndarray]) -> dict:
    """DeLong's paired test for every pair of backbones on the same images, with Holm-adjusted p."""
    from converters.stats import delong_paired_test

    names = list(probs)
    tests = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            t = delong_paired_test(y, probs[a], probs[b])
            tests.append({"a": a, "b": b, "auc_a": t["auc1"], "auc_b": t["auc2"], "difference": t["difference"],
                          "difference_ci": t["difference_ci"], "z": t["z"], "p": t["p"]})
    for t, adj in zip(tests, holm([t["p"] for t in tests]), strict=True):
        t["p_holm"] = adj
    return {"level": "image", "method": "DeLong paired (pROC::roc.test)", "adjustment": "Holm",
            "tests": tests, "note": MULTIPLICITY_NOTE}


def write_oof(path: Path, backbones: list[str], results: dict, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(OOF_COLUMNS)
        for b in backbones:
            oof = results[b]["oof"]
            for r, p, k in zip(rows, oof["prob"], oof["fold"], strict=False):
                w.writerow([r["image_id"], r["patient_id"], r["group"], r["label"], b, k, f"{p:.6f}"])
    os.replace(tmp, path)


def gradcam_overlays(run: Path, backbone: str, result: dict, rows: list[dict], rois) -> list[dict]:
    """Out-of-fold Grad-CAM (= CAM for this head) of the most confident right and wrong calls per class."""
    from converters.gradcam import write_overlay

    out_dir = run / "gradcam"
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    prob = np.array(result["oof"]["prob"])
    fold = result["oof"]["fold"]
    y = np.array([r["label"] for r in rows])
    thr = result["pooled"]["image"].get("threshold")
    thr = 0.5 if thr is None else thr
    pred = (prob >= thr).astype(int)
    cams, bias = {}, {}
    for f in result["folds"]:
        with np.load(run / "folds" / backbone / f"fold{f['fold']}.npz") as z:
            cams.update(zip(z["image_ids"].tolist(), z["cam"], strict=False))
        bias[f["fold"]] = f["head_bias"]
    written = []
    for label, name in ((1, "NOA"), (0, "OA")):
        for correct in (True, False):
            idx = np.flatnonzero((y == label) & ((pred == label) == correct))
            confidence = np.where(pred[idx] == 1, prob[idx], 1 - prob[idx])
            for rank, i in enumerate(idx[np.argsort(-confidence, kind="stable")][:GRADCAM_PER_CATEGORY]):
                r = rows[i]
                shown = "NOA" if pred[i] else "OA"
                cat = f"{name}_{'correct' if correct else 'wrong'}"
                path = out_dir / f"{cat}_{rank + 1}_{r['image_id']}.png"
                write_overlay(path, rois[i], cams[r["image_id"]], bias[fold[i]], bool(pred[i]),
                              [f"{r['image_id']} {r['group']} fold {fold[i]}",
                               f"p(NOA)={prob[i]:.2f} thr {thr:.2f} -> {shown}", f"evidence for {shown}"])
                written.append({"file": f"gradcam/{path.name}", "category": cat, "image_id": r["image_id"],
                                "group": r["group"], "prob": float(prob[i]), "fold": fold[i]})
    return written


# ------------------------------------------------------------------------------------------ report
def build_report(cfg, dsha: str, rows: list[dict], labels: np.ndarray, n_pat: dict, best_name: str, results: dict,
                 final: dict, gradcams: list[dict]) -> dict:
    """The cv_report dict (schema noa-edge.cv_report/1); `cfg` is the run's converters.train.TrainConfig."""
    return {
        "schema": "noa-edge.cv_report/1", "task": "NOA (label 1) vs OA (label 0), one prediction per testis image",
        "dataset": str(cfg.dataset), "dataset_sha256": dsha, "folds": cfg.folds, "seed": cfg.seed,
        "input_size": cfg.input_size, "cohort": {
            "images": len(rows), "images_noa": int(labels.sum()), "images_oa": int(len(labels) - labels.sum()),
            "patients": int(n_pat[0] + n_pat[1]), "patients_noa": int(n_pat[1]), "patients_oa": int(n_pat[0]),
            "include_controls": cfg.include_controls, "subsampled_to": cfg.max_images},
        "selection": "highest pooled out-of-fold image-level AUC", "selected_backbone": best_name,
        "backbones": results, "final_model": final, "gradcam": gradcams,
        "paired_backbone_tests": paired_backbone_tests(labels, {k: np.asarray(r["oof"]["prob"])
                                                                for k, r in results.items()}),
        "notes": [
            "Every probability is out-of-fold: predicted by the fold model that never saw that patient.",
            "Accuracy, sensitivity and specificity use the Youden threshold of the same predictions "
            "(optimistic; the nomogram step chooses its own threshold).",
            "Image-level DeLong CIs treat a patient's two testes as independent and are too narrow; "
            "patient level (mean of the patient's testes) is the unit of splitting.",
            f"Early stopping monitors the AUC ({EARLY_STOP_MONITOR}) of an inner validation split of the training "
            f"patients, from epoch {EARLY_STOP_WARMUP + 1} on, and restores the best epoch.",
        ],
    }


def fmt(x, d=3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def ci_text(m: dict) -> str:
    ci = m.get("auc_ci")
    return f"(95% CI {fmt(ci[0])}–{fmt(ci[1])})" if ci else "(no CI)"  # a bound is None/nan: not estimable


def _figure_png(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _roc_figure(report: dict, level: str, labels: np.ndarray, groups: np.ndarray) -> str:
    """Every backbone's pooled OOF ROC; its probabilities are in the cohort's row order, like labels/groups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from converters.stats import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, res in report["backbones"].items():
        y, p = labels, np.array(res["oof"]["prob"])
        if level == "patient":
            _, y, p = patient_level(groups, y, p)
        rc = roc_curve(y, p)
        auc = res["pooled"][level]["auc"]
        ax.plot(1 - rc["specificity"], rc["sensitivity"], label=f"{name} (AUC {fmt(auc)})")
    ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls="--")
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"Pooled out-of-fold ROC, {level} level")
    ax.legend(loc="lower right", fontsize=8)
    return _figure_png(fig)


def _curves_figure(name: str, res: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for f in res["folds"]:
        h = f["history"]
        ep = np.arange(1, len(h.get("loss", [])) + 1)
        line, = axes[0].plot(ep, h.get("loss", []), marker="o", ms=2, label=f"fold {f['fold']} train")
        if "val_loss" in h:
            axes[0].plot(ep, h["val_loss"], ls="--", marker="o", ms=2, color=line.get_color(),
                         label=f"fold {f['fold']} val")
            axes[0].axvline(f["best_epoch"], color=line.get_color(), lw=0.6, alpha=0.5)
        if "val_auc" in h:
            axes[1].plot(ep, h["val_auc"], marker="o", ms=2, color=line.get_color(), label=f"fold {f['fold']}")
    axes[0].set_title(f"{name}: loss (dashed = inner validation)")
    axes[0].set_xlabel("epoch")
    axes[1].set_title("inner-validation AUC")
    axes[1].set_xlabel("epoch")
    axes[0].legend(fontsize=6, ncol=2)
    return _figure_png(fig)


def html_report(report: dict, run: Path, labels: np.ndarray, groups: np.ndarray) -> str:
    import base64
    from html import escape

    def metric_cells(m):
        ci = m.get("auc_ci")
        ci_txt = f" [{fmt(ci[0])}–{fmt(ci[1])}]" if ci else ""
        return (f"<td>{m['n']} ({m['n_noa']}/{m['n_oa']})</td><td>{fmt(m.get('auc'))}{ci_txt}</td>"
                f"<td>{fmt(m.get('accuracy'))}</td><td>{fmt(m.get('sensitivity'))}</td>"
                f"<td>{fmt(m.get('specificity'))}</td><td>{fmt(m.get('threshold'))}</td>")

    head = ("<tr><th></th><th>n (NOA/OA)</th><th>AUC [DeLong 95% CI]</th><th>accuracy</th><th>sensitivity</th>"
            "<th>specificity</th><th>Youden threshold</th>")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>noa-edge CV report</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>Cross-validation report: NOA vs OA</h1>",
             f"<p class='method'>Dataset {escape(report['dataset'])} (sha256 {report['dataset_sha256'][:16]}…); "
             f"{report['cohort']['images']} images ({report['cohort']['images_noa']} NOA / "
             f"{report['cohort']['images_oa']} OA) of {report['cohort']['patients']} patients; "
             f"{report['folds']}-fold StratifiedGroupKFold by patient, seed {report['seed']}; "
             f"input {report['input_size']} px.</p>",
             f"<p><b>Selected backbone: {escape(report['selected_backbone'])}</b> ({escape(report['selection'])}); "
             f"final model retrained on all patients for {report['final_model']['epochs']} epochs.</p>",
             "<h2>Summary (pooled out-of-fold)</h2><table>",
             "<tr><th>backbone</th><th>image AUC [95% CI]</th><th>patient AUC [95% CI]</th><th>image accuracy</th>"
             "<th>sensitivity</th><th>specificity</th><th>fold wall time</th></tr>"]
    for name, res in report["backbones"].items():
        im, pa = res["pooled"]["image"], res["pooled"]["patient"]
        parts.append(f"<tr><td>{escape(name)}</td><td>{fmt(im['auc'])} {ci_text(im)}</td>"
                     f"<td>{fmt(pa['auc'])} {ci_text(pa)}</td><td>{fmt(im.get('accuracy'))}</td>"
                     f"<td>{fmt(im.get('sensitivity'))}</td><td>{fmt(im.get('specificity'))}</td>"
                     f"<td>{res['fold_wall_s']:.0f} s</td></tr>")
    parts.append("</table>")
    paired = report.get("paired_backbone_tests") or {"tests": []}
    if paired["tests"]:
        parts.append("<h2>Paired comparisons (DeLong, same out-of-fold images)</h2><table><tr><th>backbone A</th>"
                     "<th>backbone B</th><th>AUC A − B [95% CI]</th><th>p</th><th>p (Holm)</th></tr>")
        for t in paired["tests"]:
            lo, hi = t["difference_ci"]
            parts.append(f"<tr><td>{escape(t['a'])}</td><td>{escape(t['b'])}</td><td>{fmt(t['difference'])} "
                         f"[{fmt(lo)}–{fmt(hi)}]</td><td>{fmt(t['p'], 4)}</td><td>{fmt(t['p_holm'], 4)}</td></tr>")
        parts.append(f"</table><p class='method'>{escape(paired['note'])}</p>")
    parts.append("<img alt='ROC image level' "
                 f"src='data:image/png;base64,{_roc_figure(report, 'image', labels, groups)}'>")
    parts.append("<img alt='ROC patient level' "
                 f"src='data:image/png;base64,{_roc_figure(report, 'patient', labels, groups)}'>")
    for name, res in report["backbones"].items():
        parts.append(f"<h2>{escape(name)}</h2>")
        for level in ("image", "patient"):
            parts.append(f"<h3>{level} level</h3><table>{head}<th>best epoch</th><th>wall</th></tr>")
            for f in res["folds"]:
                parts.append(f"<tr><td>fold {f['fold']}</td>{metric_cells(f['metrics'][level])}"
                             f"<td>{f['best_epoch']}/{f['epochs_run']}</td><td>{f['wall_s']:.0f} s</td></tr>")
            parts.append(f"<tr><td><b>pooled</b></td>{metric_cells(res['pooled'][level])}<td></td><td></td></tr>"
                         "</table>")
        parts.append(f"<img alt='training curves {escape(name)}' "
                     f"src='data:image/png;base64,{_curves_figure(name, res)}'>")
    parts.append("<h2>Grad-CAM (out-of-fold models, selected backbone)</h2><p class='method'>For this head "
                 "Grad-CAM equals the in-graph CAM up to a positive scale; each map shows the evidence for the "
                 "predicted class, normalised to its own maximum.</p><div>")
    for g in report["gradcam"]:
        data = base64.b64encode((run / g["file"]).read_bytes()).decode()
        parts.append(f"<figure style='display:inline-block;margin:4px'><img src='data:image/png;base64,{data}'>"
                     f"<figcaption>{escape(g['category'])}</figcaption></figure>")
    parts.append("</div><h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report["notes"]) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


_CSS = """body{font-family:'DejaVu Sans',Arial,sans-serif;max-width:1050px;margin:24px auto;padding:0 16px;color:#222;
font-size:14px}h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
h3{font-size:15px}table{border-collapse:collapse;margin:8px 0 16px;font-size:12.5px}th,td{border:1px solid #ccc;
padding:3px 7px;text-align:right}th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
.method{color:#555;font-size:12.5px}img{max-width:100%}figcaption{font-size:11px;text-align:center}"""
