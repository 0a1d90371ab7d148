"""Print a training run's cross-validation results as the Markdown table RESULTS.md uses.

    python benchmarks/cv_table.py runs/full-cv/run-64

One row per backbone: pooled out-of-fold AUC (image and patient level, DeLong 95% CI), mean and range of
the per-fold AUCs, best epochs, and the wall time of its folds; the selected backbone in bold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _auc(block: dict) -> str:
    lo, hi = block["auc_ci"]
    return f"{block['auc']:.3f} ({lo:.3f}–{hi:.3f})"


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
    final = report.get("final_model") or {}
    if final.get("wall_s"):
        lines += ["", f"Final model ({final['backbone']}, all images, {final['epochs']} epochs): "
                      f"{final['wall_s']:.0f} s."]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "cv_report.json").is_file():
        sys.exit("usage: python benchmarks/cv_table.py RUN   (RUN holds cv_report.json from `noa-edge train`)")
    print(cv_table(Path(sys.argv[1])))
