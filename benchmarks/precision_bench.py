"""Training precision on this host: epoch time and fold AUC, fp32 vs bf16 (Keras mixed_bfloat16), same folds.

The real training path (converters.backbone_trainer.BackboneTrainer: one compiled model per precision, reset
per fold, the tf.data batches, early stopping as in `noa-edge train`) on a class-balanced patient subsample of
a phantom cohort, ROIs decoded and cropped once. Order per fold alternates (fold 1: fp32 then bf16; fold 2:
bf16 then fp32) so a drift in machine load does not favour one precision. Epoch times come from the trainer's
own per-epoch log lines; the first epoch of each precision also traces the graph and is excluded from the
median. Then `--interleave` rounds of one epoch per precision (order alternating) on the traced models, a
timing less exposed to drift in the shared machine's load. Fold AUC: image level on the fold's held-out
patients.

    .venv/bin/python benchmarks/precision_bench.py [--dataset runs/phantom-default] [--size 224]
        [--max-images 120] [--folds 2] [--epochs 3] [--out benchmarks/results/issue15/precision.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"epoch (\d+)/(\d+) .*\(([\d.]+) s\)$")


class EpochTimes(logging.Handler):
    """Collects the trainer's 'DESC epoch i/n ... (X s)' lines."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def emit(self, record):
        m = EPOCH_LINE.search(record.getMessage())
        if m:
            self.seconds.append(float(m.group(3)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=str(ROOT / "runs" / "phantom-default"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--max-images", type=int, default=120)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--backbone", default="NASNetMobile")
    ap.add_argument("--interleave", type=int, default=3,
                    help="after the folds: rounds of one fp32 and one bf16 epoch (order alternating) on fold 1")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "issue15" / "precision.json"))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from converters import cv_report
    from converters.backbone_trainer import BackboneTrainer
    from converters.dataset import load_dataset
    from converters.precision import cpu_bf16_flags
    from converters.train import make_config
    from converters.train_data import dataset_sha256, inner_validation_split, load_rois, make_folds, select_images

    log = logging.getLogger("precision_bench")
    log.setLevel(logging.INFO)
    times = EpochTimes()
    log.addHandler(times)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(console)

    cache = ROOT / "runs" / "issue15" / "precision_cache"  # ROI crops (git-ignored)
    ds = load_dataset(args.dataset)
    cfgs = {p: make_config(args.dataset, cache / "unused", args.backbone, folds=args.folds, epochs=args.epochs,
                           input_size=args.size, max_images=args.max_images, progress=False, precision=p)
            for p in ("fp32", "bf16")}
    cfg0 = cfgs["fp32"]
    rows = select_images(ds, False, cfg0.max_images, cfg0.seed)
    labels = np.array([r["label"] for r in rows])
    groups = np.array([r["patient_id"] for r in rows])
    fold_of = make_folds(labels, groups, cfg0.folds, cfg0.seed)
    t0 = time.perf_counter()
    rois = load_rois(ds, rows, cfg0.input_size, cache, dataset_sha256(ds), False, log)
    log.info("%d ROIs at %d px in %.0f s", len(rois), args.size, time.perf_counter() - t0)

    trainers: dict[str, BackboneTrainer] = {}
    results: dict[str, dict] = {"fp32": {"folds": []}, "bf16": {"folds": []}}
    for k in range(cfg0.folds):
        order = ("fp32", "bf16") if k % 2 == 0 else ("bf16", "fp32")
        test = np.flatnonzero(fold_of == k)
        fit, val = inner_validation_split(np.flatnonzero(fold_of != k), labels, groups, cfg0.seed, k + 1)
        for precision in order:
            if precision not in trainers:
                t_build = time.perf_counter()
                trainers[precision] = BackboneTrainer(args.backbone, cfgs[precision], log)
                results[precision]["build_s"] = round(time.perf_counter() - t_build, 1)
            trainer = trainers[precision]
            trainer.reset()
            first_fit = not results[precision]["folds"]
            times.seconds = []
            t_fit = time.perf_counter()
            out = trainer.fit(rois[fit], labels[fit], k + 1, cfg0.epochs, f"{precision} fold {k + 1}",
                              validation=(rois[val], labels[val]))
            fit_s = time.perf_counter() - t_fit
            t_pred = time.perf_counter()
            prob, _ = trainer.predict(rois[test])
            metrics = cv_report.evaluate(groups[test], labels[test], prob)
            results[precision]["folds"].append({
                "fold": k + 1, "epoch_s": list(times.seconds), "first_epoch_traces": first_fit,
                "fit_s": round(fit_s, 1), "predict_s": round(time.perf_counter() - t_pred, 1),
                "epochs_run": out["epochs_run"], "best_epoch": out["best_epoch"],
                "n_fit": int(len(fit)), "n_val": int(len(val)), "n_test": int(len(test)),
                "test_auc": metrics["image"]["auc"], "prob": [round(float(p), 5) for p in prob]})
            log.info("%s fold %d: epochs %s s, test AUC %s", precision, k + 1,
                     [round(s, 1) for s in times.seconds], cv_report.fmt(metrics["image"]["auc"]))

    # Interleaved single epochs on the traced models: load drift hits both precisions alike.
    fit1, val1 = inner_validation_split(np.flatnonzero(fold_of != 0), labels, groups, cfg0.seed, 1)
    for r in range(args.interleave):
        for precision in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            times.seconds = []
            trainers[precision].fit(rois[fit1], labels[fit1], 1, 1, f"{precision} interleaved {r + 1}")
            results[precision].setdefault("interleaved_epoch_s", []).extend(times.seconds)
    for res in results.values():
        res["median_interleaved_epoch_s"] = (round(statistics.median(res["interleaved_epoch_s"]), 2)
                                             if res.get("interleaved_epoch_s") else None)
        steady = [s for f in res["folds"] for i, s in enumerate(f["epoch_s"])
                  if not (f["first_epoch_traces"] and i == 0)]
        res["median_epoch_s_excluding_tracing"] = round(statistics.median(steady), 2) if steady else None
        res["steady_epochs"] = len(steady)
        aucs = [f["test_auc"] for f in res["folds"] if f["test_auc"] is not None]
        res["mean_fold_auc"] = round(float(np.mean(aucs)), 4) if aucs else None
    fp32, bf16 = results["fp32"], results["bf16"]
    summary = {
        "epoch_time_ratio_bf16_over_fp32": (round(bf16["median_epoch_s_excluding_tracing"]
                                                  / fp32["median_epoch_s_excluding_tracing"], 3)
                                            if fp32["median_epoch_s_excluding_tracing"] else None),
        "interleaved_epoch_time_ratio_bf16_over_fp32": (
            round(bf16["median_interleaved_epoch_s"] / fp32["median_interleaved_epoch_s"], 3)
            if bf16.get("median_interleaved_epoch_s") and fp32.get("median_interleaved_epoch_s") else None),
        "mean_fold_auc_bf16_minus_fp32": (round(bf16["mean_fold_auc"] - fp32["mean_fold_auc"], 4)
                                          if None not in (bf16["mean_fold_auc"], fp32["mean_fold_auc"]) else None),
        "per_fold_auc": [{"fold": a["fold"], "fp32": a["test_auc"], "bf16": b["test_auc"]}
                         for a, b in zip(fp32["folds"], bf16["folds"], strict=True)],
    }
    record = {
        "what": "epoch time and fold AUC, fp32 vs bf16 (Keras mixed_bfloat16), same folds, same batches",
        "command": "python benchmarks/precision_bench.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "setting": {"backbone": args.backbone, "input_size": args.size, "dataset": args.dataset,
                    "images": len(rows), "patients": int(len(set(groups))), "folds": args.folds,
                    "epochs": args.epochs, "batch_size": cfg0.batch_size, "seed": cfg0.seed,
                    "weights": "from scratch", "order": "fold 1: fp32 then bf16; fold 2: bf16 then fp32"},
        "host": {"cpu_count": os.cpu_count(), "cpu_bf16_flags": cpu_bf16_flags(), "platform": platform.platform(),
                 "note": "2 shared cores; other engineers' jobs and a background training run shared them"},
        "summary": summary, "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    log.info("summary %s -> %s", json.dumps(summary), args.out)


if __name__ == "__main__":
    main()
