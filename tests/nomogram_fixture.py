"""A synthetic training run for the nomogram tests: a dataset directory (CSVs only, no image files; load it
with check_images=False) and RUN/ with run.json + oof_predictions.csv holding simulated DL probabilities.
Clinical values follow the literature table in DESIGN.md, driven by one latent severity per patient."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def make_run(root: Path, n_oa: int = 95, n_noa: int = 180, n_controls: int = 30, seed: int = 0,
             kind: str = "phantom", dl_strength: float = 1.6, fsh_missing: int = 3,
             name: str = "fixture") -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    ds = root / f"dataset_{name}"
    run = root / f"run_{name}"
    ds.mkdir(parents=True)
    run.mkdir(parents=True)
    (ds / "dataset.json").write_text(json.dumps({
        "name": name, "source": {"kind": kind, "seed": seed}, "positive_class": "NOA",
        "created": "2024-05-01T09:30:00Z", "volume_formula": "lambert_0.71"}))
    patients, images, oof = [], [], []
    groups = ["OA"] * n_oa + ["NOA"] * n_noa + ["control"] * n_controls
    for i, g in enumerate(groups):
        pid = f"P{i:04d}"
        s = rng.normal(1.0 if g == "NOA" else -1.0 if g == "OA" else -1.2, 0.8)
        fsh = float(np.exp(1.6 + 0.55 * s + rng.normal(0, 0.35)))
        row = {"patient_id": pid, "group": g, "age": round(float(rng.normal(32, 5)), 1),
               "fsh": round(fsh, 2), "lh": round(float(np.exp(1.8 + 0.3 * s + rng.normal(0, 0.3))), 2),
               "testosterone": round(float(max(0.5, rng.normal(4.5 - 0.4 * s, 1.2))), 2),
               "inhibin_b": round(float(max(5, rng.normal(140 - 50 * s, 40))), 1)}
        if i < fsh_missing:
            row["fsh"] = None
        patients.append(row)
        for side in "LR":
            L = float(np.clip(rng.normal(4.6 - 0.45 * s, 0.35), 2.0, 6.5))
            W = float(np.clip(rng.normal(2.8 - 0.25 * s, 0.25), 1.2, 4.0))
            H = float(np.clip(rng.normal(2.2 - 0.2 * s, 0.2), 1.0, 3.5))
            psv = float(np.clip(rng.normal(9 - 1.2 * s, 1.5), 3, 20))
            edv = float(np.clip(rng.normal(3.2 - 0.6 * s, 0.6), 0.5, psv - 0.5))
            iid = f"{pid}_{side}"
            images.append({"image_id": iid, "patient_id": pid, "side": side, "file": f"images/{iid}.png",
                           "roi_x": 10, "roi_y": 10, "roi_w": 100, "roi_h": 80,
                           "length_cm": round(L, 2), "width_cm": round(W, 2), "height_cm": round(H, 2),
                           "volume_ml": round(0.71 * round(L, 2) * round(W, 2) * round(H, 2), 2),
                           "psv_cm_s": round(psv, 2), "edv_cm_s": round(edv, 2), "ri": round((psv - edv) / psv, 3)})
            if g != "control":
                logit = dl_strength * s + rng.normal(0, 1.0)
                for bb, extra in (("NASNetMobile", 0.0), ("MobileNetV2", 0.8)):
                    p = 1 / (1 + np.exp(-(logit + rng.normal(0, extra))))
                    oof.append({"image_id": iid, "patient_id": pid, "group": g, "label": int(g == "NOA"),
                                "backbone": bb, "fold": i % 5, "prob": f"{p:.6f}"})
    _write(ds / "patients.csv", patients)
    _write(ds / "images.csv", images)
    _write(run / "oof_predictions.csv", oof)
    (run / "run.json").write_text(json.dumps({"dataset": str(ds), "selected_backbone": "NASNetMobile",
                                              "backbones": ["NASNetMobile", "MobileNetV2"], "seed": seed}))
    return ds, run


def _write(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
