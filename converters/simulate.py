"""`noa-edge simulate OUT`: write a phantom cohort as a dataset directory (docs/CONTRACTS.md).

Samples the development cohort (and an external one, other scanner, in OUT/external) with
converters.phantom, renders every image (in parallel: each image has its own RNG, so the output is
byte-for-byte the same whatever the worker count), and writes dataset.json, patients.csv and
images.csv with fixed decimals; optionally a scan video (converters.phantom_cine).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from converters.errors import PhantomError
from converters.phantom import (
    CLINICAL_PARAMETERS,
    DEFAULT_IMAGE_SIGNAL,
    EXTERNAL_FRACTION_NOA,
    SCANNERS,
    Cohort,
    render_image,
    sample_cohort,
)

PATIENT_COLUMNS = ["patient_id", "group", "age", "fsh", "lh", "testosterone", "inhibin_b"]
IMAGE_COLUMNS = ["image_id", "patient_id", "side", "file", "roi_x", "roi_y", "roi_w", "roi_h",
                 "length_cm", "width_cm", "height_cm", "volume_ml", "psv_cm_s", "edv_cm_s", "ri"]
# Fixed decimals so the same seed gives byte-identical CSVs.
DECIMALS = {"age": 0, "fsh": 2, "lh": 2, "testosterone": 2, "inhibin_b": 1, "length_cm": 2,
            "width_cm": 2, "height_cm": 2, "volume_ml": 2, "psv_cm_s": 2, "edv_cm_s": 2, "ri": 3}


def _fmt(col: str, value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    d = DECIMALS.get(col)
    if d is None:
        return str(int(value))
    return f"{value:.{d}f}" if d > 0 else str(int(round(value)))


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(c, r[c]) for c in columns])
    path.write_text(buf.getvalue(), encoding="utf-8")


def _render_job(job: tuple) -> tuple[int, tuple[int, int, int, int]]:
    import cv2

    row, seed, cohort, image_signal, path = job
    screen, roi = render_image(row, seed, cohort, image_signal)
    ok = cv2.imwrite(str(path), cv2.cvtColor(screen, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError(f"could not write {path}")
    return row["_index"], roi


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return when.replace(microsecond=0).isoformat()


def write_cohort(cohort: Cohort, out: Path, image_signal: float = DEFAULT_IMAGE_SIGNAL, workers: int = 1,
                 progress: bool = True, extra_source: dict | None = None) -> Path:
    """Render every image of `cohort` into `out` and write dataset.json, patients.csv, images.csv."""
    from tqdm import tqdm

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(row, cohort.seed, cohort.name, image_signal, out / row["file"]) for row in cohort.images]
    rois: dict[int, tuple] = {}
    bar = tqdm(total=len(jobs), desc=f"simulate {cohort.name}", unit="img", disable=not progress)
    if workers <= 1:
        for job in jobs:
            idx, roi = _render_job(job)
            rois[idx] = roi
            bar.update(1)
    else:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers) as pool:
            for idx, roi in pool.map(_render_job, jobs, chunksize=4):
                rois[idx] = roi
                bar.update(1)
    bar.close()
    for row in cohort.images:
        row["roi_x"], row["roi_y"], row["roi_w"], row["roi_h"] = rois[row["_index"]]

    scanner = SCANNERS[cohort.name]
    counts = {g: sum(1 for p in cohort.patients if p["group"] == g) for g in ("OA", "NOA", "control")}
    meta = {
        "name": f"phantom-{cohort.name}-seed{cohort.seed}",
        "source": {
            "kind": "phantom", "generator": "noa-edge simulate", "cohort": cohort.name, "seed": cohort.seed,
            "counts": counts, "images": len(cohort.images), "image_signal": image_signal,
            "scanner": {k: v for k, v in scanner.__dict__.items()},
            "parameters": CLINICAL_PARAMETERS, "model_doc": "docs/PHANTOM.md", **(extra_source or {}),
        },
        "positive_class": "NOA",
        "created": _created(),
        "volume_formula": "lambert_0.71",
        "synthetic": True,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2, default=list) + "\n", encoding="utf-8")
    _write_csv(out / "patients.csv", PATIENT_COLUMNS, cohort.patients)
    _write_csv(out / "images.csv", IMAGE_COLUMNS, cohort.images)
    return out


def simulate(out: Path, n_oa: int = 95, n_noa: int = 180, n_controls: int = 113, seed: int = 0,
             external: int = 100, image_signal: float = DEFAULT_IMAGE_SIGNAL, workers: int = 1,
             cine: Path | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    """The whole `noa-edge simulate`: development cohort in OUT, external cohort in OUT/external."""
    out = Path(out)
    if image_signal < 0 or not math.isfinite(image_signal):
        raise PhantomError(f"--image-signal must be a finite number >= 0, got {image_signal}")
    if external < 0:
        raise PhantomError(f"--external must be >= 0, got {external}")
    if workers < 1:
        raise PhantomError(f"--workers must be >= 1, got {workers}")
    if cine is not None and Path(cine).suffix.lower() not in (".avi", ".mp4"):
        raise PhantomError(f"--cine {cine}: use a .avi (MJPG) or .mp4 (mp4v) file name")
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise PhantomError(f"{out} is not empty; choose a new directory or pass --overwrite")
        if not (out / "dataset.json").exists():
            raise PhantomError(f"{out} is not empty and holds no dataset.json; refusing to overwrite it")
        shutil.rmtree(out)
    dev = sample_cohort(n_oa, n_noa, n_controls, seed, "development", id_prefix="P")
    write_cohort(dev, out, image_signal, workers, progress)
    result = {"development": str(out), "images": len(dev.images)}
    if external > 0:
        n_noa_ext = int(round(external * EXTERNAL_FRACTION_NOA))
        ext = sample_cohort(external - n_noa_ext, n_noa_ext, 0, seed, "external", id_prefix="X")
        write_cohort(ext, out / "external", image_signal, workers, progress,
                     extra_source={"external_of": str(out.name)})
        result["external"] = str(out / "external")
        result["external_images"] = len(ext.images)
    if cine is not None:
        from converters.phantom_cine import write_cine

        result["cine"] = str(write_cine(Path(cine), seed=seed, image_signal=image_signal, progress=progress))
    return result
