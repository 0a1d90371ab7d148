"""Phantom cohort: synthetic azoospermia patients with B-mode testicular ultrasound screens.

No testicular ultrasound data set is public, so `noa-edge simulate OUT` (converters/simulate.py) writes a
dataset directory (docs/CONTRACTS.md) that stands in for a clinic's export. The model is documented in docs/PHANTOM.md:
one latent severity per patient drives labs, testis size, Doppler and the image; B-mode frames are made
the physical way (scatterers -> RF point-spread function -> Hilbert envelope -> TGC -> log compression ->
scan conversion onto a whole cart screen, converters/bmode.py), so speckle and ROI cropping are real work
downstream. This module holds the clinical sampler and the row -> scene -> screen step (`render_image`).

The clinical table is sampled without rendering (`sample_cohort`), so calibration checks are instant;
each image has its own RNG seeded from (seed, cohort, image index), so rendering is parallel and
byte-for-byte deterministic whatever the worker count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from converters.bmode import SCANNERS, Scanner, Scene, acquire, compose_screen
from converters.errors import PhantomError

# ---------------------------------------------------------------------------------------------------
# Clinical model. Every constant below is documented (with its source or reason) in docs/PHANTOM.md.
# ---------------------------------------------------------------------------------------------------

DEFAULT_COUNTS = {"OA": 95, "NOA": 180, "control": 113}  # the paper's cohort
EXTERNAL_FRACTION_NOA = 180 / 275  # the external cohort keeps the paper's NOA:OA mix, no controls
DEFAULT_IMAGE_SIGNAL = 1.0  # the one image-difficulty knob (docs/PHANTOM.md, "Image signal")

# Latent severity s (spermatogenic failure, arbitrary units): mean, sd per group.
SEVERITY = {"control": (-0.2, 0.8), "OA": (0.0, 1.0), "NOA": (3.0, 1.2)}

CLINICAL_PARAMETERS = {
    "severity": SEVERITY,
    # FSH (IU/L), log-normal around a hinge in s: FSH only rises once spermatogenesis collapses
    # (loss of inhibin-B feedback), which gives NOA the long right tail seen in Liu 2006.
    "fsh": {"median_normal": 4.0, "log_sd": 0.52, "rise_per_s": 0.55, "hinge": 0.8, "hinge_width": 0.6},
    "lh": {"median_normal": 4.8, "log_sd": 0.40, "rise_per_s": 0.30, "hinge": 0.8, "hinge_width": 0.6},
    "testosterone": {"median_azoospermic": 4.0, "log_sd": 0.33, "per_s": -0.075, "control_offset_log": 0.36},
    "inhibin_b": {"median_normal": 145.0, "log_sd": 0.45, "per_s": -0.42, "control_offset_log": 0.38},
    # Testis volume (mL, Lambert 0.71·L·W·H): log-normal, shrinking with s.
    "volume": {"median_normal": 17.5, "log_sd_patient": 0.18, "log_sd_side": 0.07, "per_s": -0.12},
    # Shape: W/L and H/L ratios; long axis measured with caliper error (cm).
    "shape": {"w_over_l": (0.56, 0.04), "h_over_l": (0.42, 0.04), "caliper_sd_cm": 0.08},
    # Intratesticular Doppler: PSV log-normal, RI normal; EDV = PSV·(1 − RI).
    "psv": {"median_normal": 8.0, "log_sd": 0.22, "per_s": -0.07},
    "ri": {"mean_normal": 0.54, "sd": 0.05, "per_s": 0.022},
    "age": {"mean": 32.0, "sd": 5.5, "min": 20, "max": 55},
    # Missing-completely-at-random cells (fraction of patients / images).
    "missing": {"fsh": 0.01, "lh": 0.04, "testosterone": 0.04, "inhibin_b": 0.05, "doppler": 0.01},
}


_STREAM_CLINICAL, _STREAM_MISSING, _STREAM_IMAGE = 1, 2, 3
_COHORT_TAG = {"development": 0, "external": 1}


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _hinge(s: np.ndarray, p: dict) -> np.ndarray:
    """Smooth hinge: ~0 below p['hinge'], slope 1 above it."""
    w = p["hinge_width"]
    return w * _softplus((s - p["hinge"]) / w)


@dataclass
class Cohort:
    """Clinical table of one cohort. `patients`/`images` hold the CSV fields (None = missing);
    image rows also carry the hidden render inputs under keys starting with '_'."""

    name: str
    seed: int
    patients: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)


def sample_cohort(n_oa: int = 95, n_noa: int = 180, n_controls: int = 113, seed: int = 0,
                  cohort: str = "development", id_prefix: str = "P") -> Cohort:
    """Sample patients and per-testis measures (no images). Vectorised; deterministic in `seed`."""
    for name, n in (("oa", n_oa), ("noa", n_noa), ("controls", n_controls)):
        if int(n) < 0:
            raise PhantomError(f"--{name} must be >= 0, got {n}")
    if n_oa + n_noa + n_controls == 0:
        raise PhantomError("the cohort is empty: --oa, --noa and --controls are all 0")
    tag = _COHORT_TAG[cohort]
    rng = np.random.default_rng(np.random.SeedSequence([seed, tag, _STREAM_CLINICAL]))
    miss_rng = np.random.default_rng(np.random.SeedSequence([seed, tag, _STREAM_MISSING]))
    P = CLINICAL_PARAMETERS

    groups = np.array(["OA"] * n_oa + ["NOA"] * n_noa + ["control"] * n_controls)
    groups = groups[rng.permutation(len(groups))]  # ids carry no group information
    n = len(groups)
    mu = np.array([SEVERITY[g][0] for g in groups])
    sd = np.array([SEVERITY[g][1] for g in groups])
    s = mu + sd * rng.standard_normal(n)
    is_control = groups == "control"

    age = np.clip(P["age"]["mean"] + P["age"]["sd"] * rng.standard_normal(n), P["age"]["min"], P["age"]["max"])
    p = P["fsh"]
    fsh = p["median_normal"] * np.exp(p["rise_per_s"] * _hinge(s, p) + p["log_sd"] * rng.standard_normal(n))
    p = P["lh"]
    lh = p["median_normal"] * np.exp(p["rise_per_s"] * _hinge(s, p) + p["log_sd"] * rng.standard_normal(n))
    p = P["testosterone"]
    testo = p["median_azoospermic"] * np.exp(p["per_s"] * s + p["control_offset_log"] * is_control
                                             + p["log_sd"] * rng.standard_normal(n))
    p = P["inhibin_b"]
    inhib = p["median_normal"] * np.exp(p["per_s"] * s + p["control_offset_log"] * is_control
                                        + p["log_sd"] * rng.standard_normal(n))
    inhib = np.clip(inhib, 5.0, 600.0)  # 5 pg/mL ~ assay detection limit

    # Per testis (L then R): volume -> dimensions -> Doppler.
    p = P["volume"]
    log_v_patient = math.log(p["median_normal"]) + p["per_s"] * s + p["log_sd_patient"] * rng.standard_normal(n)
    side_noise = p["log_sd_side"] * rng.standard_normal((n, 2))
    volume_true = np.exp(log_v_patient[:, None] + side_noise)
    sh = P["shape"]
    w_over_l = np.clip(sh["w_over_l"][0] + sh["w_over_l"][1] * rng.standard_normal((n, 2)), 0.4, 0.8)
    h_over_l = np.clip(sh["h_over_l"][0] + sh["h_over_l"][1] * rng.standard_normal((n, 2)), 0.3, 0.65)
    length_true = np.cbrt(volume_true / (0.71 * w_over_l * h_over_l))
    length = np.round(length_true + sh["caliper_sd_cm"] * rng.standard_normal((n, 2)), 2)
    width = np.round(length_true * w_over_l + sh["caliper_sd_cm"] * rng.standard_normal((n, 2)), 2)
    height = np.round(length_true * h_over_l + sh["caliper_sd_cm"] * rng.standard_normal((n, 2)), 2)
    volume = np.round(0.71 * length * width * height, 2)  # what the sonographer's formula reports

    p = P["psv"]
    psv = p["median_normal"] * np.exp(p["per_s"] * s[:, None] + p["log_sd"] * rng.standard_normal((n, 2)))
    p = P["ri"]
    ri = np.clip(p["mean_normal"] + p["per_s"] * s[:, None] + p["sd"] * rng.standard_normal((n, 2)), 0.3, 0.95)
    psv = np.round(psv, 2)
    ri = np.round(ri, 3)
    edv = np.round(psv * (1.0 - ri), 2)
    # The image reads the patient's severity with its own per-testis noise (docs/PHANTOM.md).
    image_severity = s[:, None] + 0.35 * rng.standard_normal((n, 2))

    miss = P["missing"]
    m_fsh, m_lh, m_t, m_inh = (miss_rng.random(n) < miss[k] for k in ("fsh", "lh", "testosterone", "inhibin_b"))
    m_dop = miss_rng.random((n, 2)) < miss["doppler"]

    out = Cohort(name=cohort, seed=seed)
    width_id = max(4, len(str(n)))
    for i in range(n):
        pid = f"{id_prefix}{i + 1:0{width_id}d}"
        out.patients.append({
            "patient_id": pid, "group": str(groups[i]), "age": float(round(age[i])),
            "fsh": None if m_fsh[i] else float(fsh[i]), "lh": None if m_lh[i] else float(lh[i]),
            "testosterone": None if m_t[i] else float(testo[i]),
            "inhibin_b": None if m_inh[i] else float(inhib[i]), "_severity": float(s[i]),
        })
        for j, side in enumerate("LR"):
            iid = f"{pid}_{side}"
            out.images.append({
                "image_id": iid, "patient_id": pid, "side": side, "file": f"images/{iid}.png",
                "roi_x": None, "roi_y": None, "roi_w": None, "roi_h": None,
                "length_cm": float(length[i, j]), "width_cm": float(width[i, j]),
                "height_cm": float(height[i, j]), "volume_ml": float(volume[i, j]),
                "psv_cm_s": None if m_dop[i, j] else float(psv[i, j]),
                "edv_cm_s": None if m_dop[i, j] else float(edv[i, j]),
                "ri": None if m_dop[i, j] else float(ri[i, j]),
                "_group": str(groups[i]), "_image_severity": float(image_severity[i, j]),
                "_index": 2 * i + j,
            })
    return out


def labelled_marker(cohort: Cohort, column: str, level: str = "patient") -> tuple[np.ndarray, np.ndarray]:
    """(y, x) for NOA (1) vs OA (0) of one column, missing cells dropped. `level`='patient' uses
    patient rows (labs); 'image' uses one value per testis image (size, Doppler)."""
    group = {p["patient_id"]: p["group"] for p in cohort.patients}
    rows = cohort.patients if level == "patient" else cohort.images
    y, x = [], []
    for r in rows:
        g = group[r["patient_id"]]
        if g in ("OA", "NOA") and r[column] is not None:
            y.append(1 if g == "NOA" else 0)
            x.append(r[column])
    return np.array(y), np.array(x, dtype=float)


# ---------------------------------------------------------------------------------------------------
# From a clinical row to a scene and a screen.
# ---------------------------------------------------------------------------------------------------


def scene_for_image(row: dict, scanner: Scanner, image_signal: float, rng: np.random.Generator) -> Scene:
    """Testis geometry from the measured dimensions; texture from the image severity (scaled by the
    image-signal knob). Normal testes also get a few faint patches so a patch alone is no give-away."""
    k = image_signal
    t = row["_image_severity"]
    tpos = max(t, 0.0)
    L = row["length_cm"] * 10.0
    H = row["height_cm"] * 10.0
    a, b = L / 2.0, H / 2.0
    tilt = math.radians(rng.normal(0.0, 5.0))
    half_w = abs(a * math.cos(tilt)) + abs(b * math.sin(tilt))  # keep the testis in the field if it fits
    room = max(0.0, scanner.width_mm / 2.0 - half_w - 1.5)
    cx = scanner.width_mm / 2.0 + float(np.clip(rng.normal(0.0, 2.0), -room, room))
    cz = 4.5 + b + rng.uniform(0.5, 3.0)
    patches = []
    n_patch = rng.poisson(0.6 + k * 1.4 * max(t - 0.6, 0.0))
    for _ in range(n_patch):
        pu, pv = rng.uniform(-0.7, 0.7), rng.uniform(-0.6, 0.6)
        rad = rng.uniform(1.5, 4.5)
        contrast = min(0.85, rng.uniform(0.15, 0.3) + k * 0.1 * tpos * rng.uniform(0.5, 1.0))
        patches.append((pu, pv, rad / a, rad * rng.uniform(0.6, 1.0) / b, contrast))
    n_lith = rng.poisson(0.03 + k * 0.9 * max(t - 1.8, 0.0))
    microliths = [(rng.uniform(-0.75, 0.75), rng.uniform(-0.6, 0.6)) for _ in range(min(n_lith, 12))]
    dilated = 0.0
    if row["_group"] == "OA" and rng.random() < 0.5:
        dilated = min(1.0, k * rng.uniform(0.5, 1.0))
    return Scene(cx=cx, cz=cz, a=a, b=b, tilt=tilt,
                 echogenicity=math.exp(-k * 0.09 * t + rng.normal(0.0, 0.06)),
                 texture=0.03 + k * 0.035 * tpos, patches=patches, microliths=microliths,
                 epididymis_dilated=dilated, epididymis_pole=-1 if rng.random() < 0.5 else 1)


def render_image(row: dict, seed: int, cohort: str = "development",
                 image_signal: float = DEFAULT_IMAGE_SIGNAL) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One testis image (whole cart screen, RGB uint8) and its ROI. Own RNG per (seed, cohort, index)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _COHORT_TAG[cohort], _STREAM_IMAGE, row["_index"]]))
    scanner = SCANNERS[cohort]
    scene = scene_for_image(row, scanner, image_signal, rng)
    gain = float(rng.normal(0.0, 1.5))  # sonographer's gain setting
    bmode = acquire(scene, scanner, rng, gain_db=gain)
    return compose_screen(bmode, scene, scanner, row["side"], gain, caliper=bool(rng.random() < 0.6))
