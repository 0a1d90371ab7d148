"""Print a training run's cross-validation results as the Markdown table RESULTS.md uses.

    python benchmarks/cv_table.py runs/full-cv/run-64

One row per backbone: pooled out-of-fold AUC (image and patient level, DeLong 95% CI), mean and range of
the per-fold AUCs, best epochs, and the wall time of its folds; the selected backbone in bold. Then the
paired DeLong test between every pair of backbones on the same out-of-fold images, Holm-adjusted.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np


def _auc(block: dict) -> str:
    lo, hi = block["auc_ci"]
    return f"{block['auc']:.3f} ({lo:.3f}–{hi:.3f})"


def paired_table(run: Path, backbones: list[str]) -> list[str]:
    """Paired DeLong between every pair of backbones, recomputed from RUN/oof_predictions.csv (so runs made
    before cv_report.json carried the tests get them too), with Holm-adjusted p."""
    from converters.cv_report import paired_backbone_tests

    probs: dict[str, dict[str, float]] = {b: {} for b in backbones}
    labels: dict[str, int] = {}
    with (run / "oof_predictions.csv").open(newline="") as fh:
        for r in csv.DictReader(fh):
            if r["backbone"] in probs:
                probs[r["backbone"]][r["image_id"]] = float(r["prob"])
                labels[r["image_id"]] = int(r["label"])
    common = sorted(set.intersection(*(set(p) for p in probs.values()))) if probs else []
    if len(backbones) < 2 or not common:
        return []
    res = paired_backbone_tests(np.array([labels[i] for i in common]),
                                {b: np.array([probs[b][i] for i in common]) for b in backbones})
    lines = [f"Paired DeLong tests on the same {len(common)} out-of-fold images (image level):", "",
             "| A | B | AUC A − B (95% CI) | p | p (Holm) |", "|---|---|---|---|---|"]
    for t in res["tests"]:
        lo, hi = t["difference_ci"]
        lines.append(f"| {t['a']} | {t['b']} | {t['difference']:+.3f} ({lo:+.3f} to {hi:+.3f}) | {t['p']:.3g} | "
                     f"{t['p_holm']:.3g} |")
    return [*lines, "", res["note"]]


def cv_table(run: Path) -> str:
    report = json.loads((run / "cv_report.json").read_text())
    lines = [f"input {report['input_size']} px, {report['folds']} folds, seed {report['seed']}; "
             f"selected: **{report['selected_backbone']}** ({report['selection']})", "",
             "| backbone | pooled OOF AUC, image | pooled OOF AUC, patient | fold AUCs (mean, min–max) | "
             "best epochs | fold wall |",
             "|---|---|---|---|---|---|"]
    for name, entry in report["backbones"].items():
        folds = [f["metrics"]["image"]["auc"] for f in entry["folds"]]
        epochs = "/".join(str(f["best_epoch"]) for f in entry["folds"])
        label = f"**{name}**" if name == report["selected_backbone"] else name
        minutes, seconds = divmod(round(entry["fold_wall_s"]), 60)
        lines.append(f"| {label} | {_auc(entry['pooled']['image'])} | {_auc(entry['pooled']['patient'])} | "
                     f"{sum(folds) / len(folds):.3f} ({min(folds):.3f}–{max(folds):.3f}) | {epochs} | "
                     f"{minutes} min {seconds:02d} s |")
    lines += ["", *paired_table(run, list(report["backbones"]))]
    final = report.get("final_model") or {}
    if final.get("wall_s"):
        lines += ["", f"Final model ({final['backbone']}, all images, {final['epochs']} epochs): "
                      f"{final['wall_s']:.0f} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "cv_report.json").is_file():
        sys.exit("usage: python benchmarks/cv_table.py RUN   (RUN holds cv_report.json from `noa-edge train`)")
    print(cv_table(Path(sys.argv[1])))
