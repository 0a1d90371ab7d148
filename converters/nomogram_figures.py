"""The nomogram stage's figures: the nomogram itself (rms::nomogram layout) and ROC, calibration and
decision curves, as PNG/SVG files next to RUN/report.html. matplotlib is imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.nomogram import Nomogram


def draw_nomogram(nomo: Nomogram, path_png: Path, path_svg: Path) -> None:
    """rms::nomogram layout with matplotlib, from the same geometry the device SVG uses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lay = nomo.layout()
    rows = lay["rows"]
    total_max = lay["total_max"] or 1.0
    fig, ax = plt.subplots(figsize=(9, 0.62 * len(rows) + 0.6))
    for i, row in enumerate(rows):
        yv = len(rows) - i
        scale = 100.0 / total_max if row["kind"] in ("total", "probability") else 1.0
        xs = [tp * scale for tp, _ in row["ticks"]]
        if "span" in row:
            x0, x1 = (v * scale for v in row["span"])
        else:
            x0, x1 = (min(xs), max(xs)) if xs else (0, 0)
        ax.plot([x0, x1], [yv, yv], color="black", lw=1)
        for x, (_, text) in zip(xs, row["ticks"], strict=False):
            ax.plot([x, x], [yv, yv + 0.12], color="black", lw=0.8)
            ax.text(x, yv + 0.17, text, ha="center", va="bottom", fontsize=7)
        ax.text(-3, yv, row["label"], ha="right", va="center", fontsize=8.5, fontweight="bold")
    ax.set_xlim(-48, 104)
    ax.set_ylim(0.4, len(rows) + 0.7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path_png, dpi=150)
    fig.savefig(path_svg)
    plt.close(fig)


def make_figures(run_dir: Path, report: dict, y, scores: dict, spec: dict) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from converters import stats

    figdir = run_dir / "figures"
    figdir.mkdir(exist_ok=True)
    out = {"nomogram_png": run_dir / "nomogram.png", "nomogram_svg": run_dir / "nomogram.svg"}
    draw_nomogram(Nomogram(spec), out["nomogram_png"], out["nomogram_svg"])

    fig, ax = plt.subplots(figsize=(5.2, 5))
    for k, s in scores.items():
        rc = stats.roc_curve(y, s)
        auc = report["discrimination"][k]
        ax.plot(1 - rc["specificity"], rc["sensitivity"], lw=1.6,
                label=f"{report['labels'][k]}: AUC {auc['auc']:.3f} ({auc['ci'][0]:.3f}-{auc['ci'][1]:.3f})")
    sch = report.get("schoor_rule")
    if sch:
        m = sch["metrics"]
        ax.plot(1 - m["specificity"]["value"], m["sensitivity"]["value"], "ks", label="Schoor 2002 rule")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("Sensitivity")
    ax.legend(fontsize=6.5, loc="lower right")
    ax.set_title("ROC (development, apparent; DL out-of-fold)", fontsize=9)
    fig.tight_layout()
    out["roc_png"] = figdir / "roc.png"
    fig.savefig(out["roc_png"], dpi=130)
    plt.close(fig)

    val = report.get("validation")
    if val and "calibration" in val:
        cal = val["calibration"]
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], color="grey", ls=":", label="Ideal")
        ax.plot(cal["predicted"], cal["apparent"], lw=1.5, label="Apparent")
        ax.plot(cal["predicted"], cal["bias_corrected"], lw=1.5, label=f"Bias-corrected (B = {cal['B']})")
        ax.set_xlabel("Predicted probability of NOA")
        ax.set_ylabel("Observed proportion")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title(f"Calibration (mean absolute error {cal['mean_absolute_error']:.3f})", fontsize=9)
        fig.tight_layout()
        out["calibration_png"] = figdir / "calibration.png"
        fig.savefig(out["calibration_png"], dpi=130)
        plt.close(fig)

    dca = report["decision_curve"]
    fig, ax = plt.subplots(figsize=(6, 4.2))
    pt = dca["thresholds"]
    for k, nb in dca["models"].items():
        ax.plot(pt, nb, lw=1.5, label=report["labels"][k])
    ax.plot(pt, dca["treat_all"], color="grey", lw=1, label="Treat all")
    ax.plot(pt, dca["treat_none"], color="black", lw=1, label="Treat none")
    prev = float(np.mean(y))
    ax.set_ylim(-0.05, prev + 0.05)
    ax.set_xlabel("Threshold probability")
    ax.set_ylabel("Net benefit")
    ax.legend(fontsize=7)
    ax.set_title("Decision curve", fontsize=9)
    fig.tight_layout()
    out["dca_png"] = figdir / "decision_curve.png"
    fig.savefig(out["dca_png"], dpi=130)
    plt.close(fig)
    return out
