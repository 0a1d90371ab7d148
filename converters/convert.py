"""`noa-edge convert RUN --out firmware_assets/NAME`: trained Keras model -> verified firmware bundle.

Variants per target (docs/CONTRACTS.md, issue 5):
  cpu     fp32 and fp16 TFLite (XNNPACK), batch 1, static shapes; fp16 keeps the stem conv fp32
          (converters/fp16_weights.py says why)
  coral   full-integer int8 TFLite (uint8 pixels in), Edge TPU preflight, `_edgetpu` variant when the
          compiler is on PATH
  jetson  fp16 TFLite and ONNX opset 17 (tf2onnx) for TensorRT

This module reads the run, splits calibration / held-out ROIs by patient and packs the bundle
(manifest, fidelity.json, README.md, MODEL_CARD.md). The conversions themselves, and why int8 starts
from a float-input copy of the graph, are in converters/tflite_export.py; fidelity is measured with the
device's own wrapper (edge.runtime.ModelRunner, converters/fidelity.py) on held-out ROIs from patients not
used for calibration; the bundle's text files come from converters/bundle_docs.py.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from converters import require_train_extra
from converters.bundle_docs import code_version, model_card, readme
from converters.errors import ConvertError
from converters.fidelity import (
    TARGETS_FIDELITY,
    auc_or_none,
    fidelity_metrics,
    meets_targets,
    nomogram_decisions,
    predict_keras,
    predict_onnx,
    predict_tflite,
)
from converters.fp16_weights import choose_fp16_keep
from converters.ood_fit import add_ood
from converters.tflite_export import convert_onnx, convert_tflite, finalize_tflite, float_input_model, frozen_function

TARGETS = ("cpu", "coral", "jetson")
TARGET_VARIANTS = {"cpu": ("fp32", "fp16"), "coral": ("int8",), "jetson": ("fp16", "onnx")}
VARIANT_FILES = {"fp32": "model_fp32.tflite", "fp16": "model_fp16.tflite", "int8": "model_int8.tflite",
                 "edgetpu": "model_int8_edgetpu.tflite", "onnx": "model.onnx"}
VARIANT_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8", "edgetpu": "int8", "onnx": "float32"}
PLACEHOLDER_THRESHOLD = 0.5
FP16_CHOICE_ROIS = 64  # calibration ROIs used to choose which leading tensors stay fp32 (converters/fp16_weights.py)
INTENDED_USE = ("Research and demonstration of point-of-care NOA-vs-OA prediction from a testicular ultrasound "
                "ROI plus FSH, testicular volume and EDV. Decision support for a clinician, not a diagnosis.")


@dataclass
class ConvertConfig:
    """Everything `convert` takes besides RUN and OUT; the defaults are `noa-edge convert`'s."""

    targets: str | tuple[str, ...] = TARGETS  # "cpu,coral" or a sequence of cpu / coral / jetson
    name: str | None = None                   # bundle name (default: OUT's folder name)
    dataset: str | Path | None = None         # default: run.json's "dataset"
    calibration_size: int = 200               # int8 calibration ROIs (stratified by class, whole patients)
    seed: int = 0                             # calibration / held-out split
    synthetic_demo: bool | None = None        # None: flag the bundle if the dataset is a phantom
    max_fidelity_rois: int | None = None      # cap on held-out ROIs for the fidelity report
    int8_retry: bool = True                   # if int8 misses a target, try per-tensor and more calibration data
    overwrite: bool = False                   # replace an existing bundle in OUT
    progress: bool = True


def _log(msg: str) -> None:
    print(f"[convert] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# The run folder


def read_run(run_dir: str | Path, dataset: str | Path | None = None) -> dict:
    """run.json, model path, nomogram (or a marked placeholder), dataset path and CV AUC of a RUN."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ConvertError(f"{run}: run folder not found")
    model = run / "model.keras"
    if not model.is_file():
        raise ConvertError(f"{model}: missing (train first: noa-edge train DATASET --out {run})")
    meta = {}
    if (run / "run.json").is_file():
        try:
            meta = json.loads((run / "run.json").read_text())
        except json.JSONDecodeError as exc:
            raise ConvertError(f"{run / 'run.json'}: not valid JSON ({exc})") from exc
    data = Path(dataset) if dataset else (Path(meta["dataset"]) if meta.get("dataset") else None)
    if data is None:
        raise ConvertError(f"{run / 'run.json'}: no 'dataset' entry; pass --dataset PATH")
    if not data.is_absolute() and not data.exists():
        data = (run / data) if (run / data).exists() else data
    nomogram_path = run / "nomogram.json"
    if nomogram_path.is_file():
        try:
            nomogram = json.loads(nomogram_path.read_text())
        except json.JSONDecodeError as exc:
            raise ConvertError(f"{nomogram_path}: not valid JSON ({exc})") from exc
        if nomogram.get("schema") != "noa-edge.nomogram/1":
            raise ConvertError(f"{nomogram_path}: schema {nomogram.get('schema')!r} is not noa-edge.nomogram/1")
    else:
        nomogram = placeholder_nomogram()
    cv_auc = meta.get("cv_auc")
    if cv_auc is None and (run / "cv_report.json").is_file():
        try:
            report = json.loads((run / "cv_report.json").read_text())
            selected = meta.get("selected_backbone")
            cv_auc = _find_cv_auc(report, selected)
        except (json.JSONDecodeError, TypeError, KeyError):
            cv_auc = None
    return {"dir": run, "model": model, "meta": meta, "dataset": data, "nomogram": nomogram,
            "nomogram_file": nomogram_path if nomogram_path.is_file() else None, "cv_auc": cv_auc}


def _find_cv_auc(report: dict, backbone: str | None):
    """Best effort: cv_report.json layouts differ; look for the selected backbone's AUC."""
    if isinstance(report.get("selected"), dict) and "auc" in report["selected"]:
        return report["selected"]["auc"]
    backbones = report.get("backbones")
    if isinstance(backbones, dict) and backbone in backbones:
        entry = backbones[backbone]
        auc = entry.get("auc") if isinstance(entry, dict) else None
        return auc.get("mean") if isinstance(auc, dict) else auc
    return report.get("cv_auc")


def placeholder_nomogram() -> dict:
    """Used only until RUN/nomogram.json exists: DL probability alone, threshold 0.5, marked as such."""
    return {"schema": "noa-edge.nomogram/1", "placeholder": True,
            "note": "PLACEHOLDER: no RUN/nomogram.json was found at conversion time; this is the DL probability "
                    "alone (logit with coefficient 1), not a fitted nomogram",
            "intercept": 0.0,
            "predictors": [{"name": "dl_logit", "source": "dl_probability", "transform": "logit", "coef": 1.0,
                            "label": "DL probability", "unit": "", "range": [0.001, 0.999]}],
            "points": {"scale_per_unit_lp": 0.0, "axes": []},
            "threshold": PLACEHOLDER_THRESHOLD, "threshold_method": "placeholder_0.5"}


# --------------------------------------------------------------------------------------------
# ROIs: calibration set and held-out fidelity set, split by patient


def split_rois(rows: list[dict], calibration_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Whole patients, class by class in a seeded order, go to calibration until each class has its
    share of `calibration_size` ROIs; everything else is held out for fidelity."""
    by_class: dict[int, dict[str, list[dict]]] = {}
    for row in rows:
        by_class.setdefault(row["label"], {}).setdefault(row["patient_id"], []).append(row)
    total = len(rows)
    rng = random.Random(seed)
    calibration, held_out = [], []
    for label in sorted(by_class):
        patients = sorted(by_class[label])
        rng.shuffle(patients)
        n_class = sum(len(v) for v in by_class[label].values())
        want = math.ceil(calibration_size * n_class / total)
        taken = 0
        for pid in patients:
            target = calibration if taken < want else held_out
            target.extend(by_class[label][pid])
            if target is calibration:
                taken += len(by_class[label][pid])
    return calibration, held_out


def crop_rows(dataset, rows: list[dict], size: int, desc: str, progress: bool = True) -> np.ndarray:
    from tqdm import tqdm

    from edge.preprocess import crop_roi

    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    for i, row in enumerate(tqdm(rows, desc=desc, disable=not progress, leave=False)):
        out[i] = crop_roi(dataset.read_image(row), row["roi"], size)
    return out


# --------------------------------------------------------------------------------------------
# The whole conversion


def convert(run_dir: str | Path, out_dir: str | Path, cfg: ConvertConfig | None = None) -> dict:
    """Convert RUN into a bundle in OUT with the options in `cfg` (default ConvertConfig()); returns the
    manifest. See the module docstring."""
    cfg = ConvertConfig() if cfg is None else cfg
    targets = _parse_targets(cfg.targets)
    calibration_size, seed, progress = cfg.calibration_size, cfg.seed, cfg.progress
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ConvertError(f"{out} is not empty; choose a new folder or pass --overwrite")
        if not (out / "manifest.json").is_file():
            raise ConvertError(f"{out} is not empty and is not a bundle; refusing to overwrite it")
        shutil.rmtree(out)
    if calibration_size < 1:
        raise ConvertError(f"--calibration-size must be >= 1, got {calibration_size}")
    run = read_run(run_dir, cfg.dataset)
    from converters.dataset import DatasetError, load_dataset

    try:
        data = load_dataset(run["dataset"], check_images=False)
    except DatasetError as exc:
        raise ConvertError(f"dataset {run['dataset']}: {exc}") from exc
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    keras = require_train_extra("keras")
    require_train_extra("tensorflow")
    model = keras.models.load_model(run["model"], compile=False)
    size = int(model.inputs[0].shape[1])
    if "uint8" not in str(model.inputs[0].dtype):
        raise ConvertError(f"{run['model']}: input dtype {model.inputs[0].dtype}, expected uint8 pixels")
    if not isinstance(model.output, dict) or set(model.output) != {"prob", "cam"}:
        raise ConvertError(f"{run['model']}: outputs must be a dict with 'prob' and 'cam'")
    times["load_model_s"] = time.perf_counter() - t0

    rows = data.labelled_images(include_controls=False)
    if len({r["label"] for r in rows}) < 2:
        raise ConvertError(f"dataset {run['dataset']}: needs OA and NOA images for calibration and fidelity")
    calib_rows, held_rows = split_rois(rows, calibration_size, seed)
    if not held_rows:
        raise ConvertError(f"dataset {run['dataset']}: {len(rows)} ROIs leave none held out after "
                           f"{calibration_size} for calibration; lower --calibration-size")
    if cfg.max_fidelity_rois and len(held_rows) > cfg.max_fidelity_rois:
        held_rows = random.Random(seed + 1).sample(held_rows, cfg.max_fidelity_rois)
    _log(f"{len(calib_rows)} calibration ROIs, {len(held_rows)} held-out ROIs "
         f"(patients disjoint, seed {seed}); input {size} px")
    t = time.perf_counter()
    x_cal = crop_rows(data, calib_rows, size, "crop calibration ROIs", progress)
    x_held = crop_rows(data, held_rows, size, "crop held-out ROIs", progress)
    labels = np.array([r["label"] for r in held_rows])
    times["crop_rois_s"] = time.perf_counter() - t
    t = time.perf_counter()
    reference = predict_keras(model, x_held)
    times["keras_predict_s"] = time.perf_counter() - t

    nomogram = run["nomogram"]
    decisions = nomogram_decisions(nomogram, reference[0], held_rows) if not nomogram.get("placeholder") else None
    if decisions is not None:
        threshold_basis = "nomogram decision (DL probability + clinical values) at the nomogram threshold"
        decide = lambda p: nomogram_decisions(nomogram, p, held_rows)  # noqa: E731
    else:
        threshold_basis = ("DL probability at the PLACEHOLDER threshold 0.5 (no fitted nomogram)"
                           if nomogram.get("placeholder") else
                           "DL probability at the nomogram threshold (clinical values missing on some ROIs)")
        decide = lambda p: p >= float(nomogram["threshold"])  # noqa: E731

    out.mkdir(parents=True, exist_ok=True)
    variants: dict[str, dict] = {}
    fidelity: dict[str, dict] = {}
    runtimes: dict[str, dict] = {}
    wanted = [v for v in ("fp32", "fp16", "int8", "onnx") if any(v in TARGET_VARIANTS[t] for t in targets)]
    fp32_buf, fp16_choice = None, None
    t = time.perf_counter()
    _log("freezing the graph (uint8 input)")
    frozen_u8 = frozen_function(model, size, "uint8")
    times["freeze_graph_s"] = time.perf_counter() - t
    for variant in wanted:
        t = time.perf_counter()
        path = out / VARIANT_FILES[variant]
        if variant in ("fp32", "fp16"):
            if fp32_buf is None:
                _log("converting fp32 TFLite")
                fp32_buf, fp32_spec = finalize_tflite(convert_tflite(frozen_u8, "fp32"), raw_pixel_input=True)
            buf, in_spec = fp32_buf, fp32_spec
            if variant == "fp16":
                _log("fp16 weights: choosing the leading tensors kept in fp32 on calibration ROIs")
                pick = np.random.default_rng(seed).permutation(len(x_cal))[:FP16_CHOICE_ROIS]
                buf, fp16_choice = choose_fp16_keep(fp32_buf, x_cal[np.sort(pick)],
                                                    TARGETS_FIDELITY["fp16"]["max_abs_dprob"])
            path.write_bytes(buf)
            times[f"convert_{variant}_s"] = time.perf_counter() - t
            probs, cams, info = predict_tflite(path, variant, x_held, progress)
            runtimes[variant] = info
        elif variant == "int8":
            frozen_f = frozen_function(float_input_model(model), size, "float32")
            attempts = _int8_attempts(frozen_f, x_cal, data, size, path, x_held, labels, reference,
                                      decide, cfg.int8_retry, progress)
            best = attempts["chosen"]
            in_spec = best["input"]
            times["convert_int8_s"] = time.perf_counter() - t
            probs, cams = best.pop("_probs"), best.pop("_cams")
            runtimes[variant] = best.pop("_runtime")
            fidelity["_int8_attempts"] = attempts["tried"]
        else:
            _log("converting ONNX (opset 17, tf2onnx)")
            convert_onnx(model, size, path)
            in_spec = {"dtype": "uint8", "scale": 1.0, "zero_point": 0}
            times["convert_onnx_s"] = time.perf_counter() - t
            probs, cams = predict_onnx(path, x_held)
            runtimes[variant] = {"runtime": "onnxruntime", "delegate": "CPUExecutionProvider"}
        metrics = fidelity_metrics(labels, reference, (probs, cams), decide)
        metrics["targets"] = meets_targets(variant, metrics)
        fidelity[variant] = metrics
        target = "jetson" if variant == "onnx" else ("coral" if variant == "int8" else "cpu")
        variants[variant] = {"file": path.name, "target": target, "dtype": VARIANT_DTYPES[variant],
                             "input": in_spec}
        if variant == "fp16":
            variants[variant]["kept_fp32"] = {k: fp16_choice[k] for k in ("kept_tensors", "kept_weights")}
        _log(f"{variant}: {path.stat().st_size / 1e6:.2f} MB, max|Δprob| {metrics['max_abs_dprob']:.2e}, "
             f"mean|Δprob| {metrics['mean_abs_dprob']:.2e}, agreement {metrics['agreement']:.4f} "
             f"({time.perf_counter() - t:.0f} s)")

    preflight = None
    if "int8" in variants:
        from converters.edgetpu_preflight import preflight as run_preflight
        from converters.edgetpu_preflight import run_compiler

        t = time.perf_counter()
        preflight = run_preflight(out / VARIANT_FILES["int8"])
        preflight["model"] = VARIANT_FILES["int8"]
        preflight["compiler"] = run_compiler(out / VARIANT_FILES["int8"], out)
        times["edgetpu_preflight_s"] = time.perf_counter() - t
        if preflight["compiler"].get("output"):
            variants["edgetpu"] = {"file": VARIANT_FILES["edgetpu"], "target": "coral", "dtype": "int8",
                                   "input": variants["int8"]["input"]}
        (out / "edgetpu_preflight.json").write_text(json.dumps(preflight, separators=(",", ":")) + "\n")
        _log(f"Edge TPU preflight: {preflight['verdict']}")
        if not preflight["compiler"].get("available"):
            _log(preflight["compiler"]["note"])

    keras_auc = auc_or_none(labels, reference[0])
    fidelity_doc = {
        "n_rois": int(len(held_rows)), "n_patients": len({r["patient_id"] for r in held_rows}),
        "n_calibration_rois": int(len(calib_rows)), "seed": seed,
        "threshold": float(nomogram["threshold"]), "threshold_basis": threshold_basis,
        "keras": {"auc": keras_auc},
        "targets": TARGETS_FIDELITY,
        "variants": {k: v for k, v in fidelity.items() if not k.startswith("_")},
        "int8_attempts": fidelity.get("_int8_attempts", []),
        "fp16_choice": fp16_choice,
        "runtimes": runtimes,
        "note": "every variant vs the Keras model on ROIs of patients not used for int8 calibration",
    }
    (out / "fidelity.json").write_text(json.dumps(fidelity_doc, indent=2) + "\n")
    times["total_s"] = time.perf_counter() - t0
    name = cfg.name or out.name
    is_synthetic = ((data.meta.get("source", {}).get("kind") == "phantom") if cfg.synthetic_demo is None
                    else cfg.synthetic_demo)
    defaults = {}
    if "cpu" in targets:
        defaults["cpu"] = "fp32"
    if "coral" in targets:
        defaults["coral"] = "edgetpu" if "edgetpu" in variants else "int8"
    if "jetson" in targets:
        defaults["jetson"] = "fp16"
    manifest = {
        "schema_version": 1, "name": name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "synthetic_demo": bool(is_synthetic),
        "intended_use": INTENDED_USE + (" SYNTHETIC DEMO: trained on a phantom cohort; not for any patient."
                                        if is_synthetic else ""),
        "labels": {"positive": "NOA", "negative": "OA"},
        "input": {"shape": [1, size, size, 3], "dtype": "uint8", "layout": "NHWC RGB raw pixels 0..255",
                  "preprocess": "edge.preprocess.crop_roi"},
        "outputs": {"prob": "prob", "cam": "cam"},
        "cam_shape": list(reference[1].shape[1:]),
        "variants": variants,
        "default_variant": defaults,
        "nomogram": nomogram,
        "threshold": float(nomogram["threshold"]),
        "threshold_source": "PLACEHOLDER 0.5 (no fitted nomogram)" if nomogram.get("placeholder")
                            else f"nomogram.json ({nomogram.get('threshold_method')})",
        "provenance": {"dataset": data.meta.get("name"), "dataset_sha256": run["meta"].get("dataset_sha256"),
                       "run": str(run["dir"]), "backbone": run["meta"].get("selected_backbone", model.name),
                       "cv_auc": run["cv_auc"], "seed": run["meta"].get("seed"), "code_version": code_version()},
        "conversion": {"tool": "noa-edge convert", "targets": list(targets), "seed": seed,
                       "calibration_rois": len(calib_rows), "times_s": {k: round(v, 2) for k, v in times.items()},
                       "tensorflow": require_train_extra("tensorflow").__version__},
    }
    if preflight:
        manifest["edgetpu_preflight"] = {"verdict": preflight["verdict"], "passes": preflight["passes"],
                                         "compiler": {k: preflight["compiler"].get(k)
                                                      for k in ("available", "command", "subgraphs", "ops_tpu",
                                                                "ops_cpu", "on_chip_memory", "off_chip_memory")}}
    (out / "README.md").write_text(readme(manifest, size))
    (out / "MODEL_CARD.md").write_text(model_card(manifest, fidelity_doc, data))
    from edge.bundle import finalize_manifest

    manifest = finalize_manifest(out, manifest)
    if "fp32" in variants:  # the out-of-distribution description (converters/ood_fit.py), fitted on fp32 features
        manifest = add_ood(out, run["dataset"], seed=seed, tool="noa-edge convert")
    else:
        _log("no fp32 variant (target cpu): the bundle gets no out-of-distribution description")
    _log(f"bundle written to {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB) "
         f"in {times['total_s']:.0f} s")
    return manifest


def _int8_attempts(frozen_f, x_cal, data, size, path, x_held, labels, reference, decide, retry: bool,
                   progress: bool) -> dict:
    """Per-channel int8 on the calibration set; if it misses a target, try per-tensor weights and more
    calibration data (never from held-out patients), keep the best, and report every try."""
    tried, best = [], None
    plans = [("per-channel, calibration set", True, x_cal)]
    if retry:
        plans.append(("per-tensor weights, calibration set", False, x_cal))
        # More calibration data without touching held-out patients: the control group's ROIs (same
        # scanner, same crop, never part of the NOA-vs-OA fidelity set), else horizontal flips.
        controls = [r for r in data.labelled_images(include_controls=True) if r["group"] == "control"]
        if controls:
            more = f"calibration set + {len(controls)} control ROIs"
            x_more = np.concatenate([x_cal, crop_rows(data, controls, size, "crop control ROIs", progress)])
        else:
            more, x_more = "calibration set + horizontal flips", np.concatenate([x_cal, x_cal[:, :, ::-1]])
        plans += [(f"per-channel, {more}", True, x_more), (f"per-tensor weights, {more}", False, x_more)]
    for label, per_channel, x in plans:
        t = time.perf_counter()
        _log(f"converting int8 ({label}, {len(x)} ROIs)")
        buf, spec = finalize_tflite(convert_tflite(frozen_f, "int8", x, per_channel), raw_pixel_input=True)
        trial = path.with_suffix(".trial.tflite")
        trial.write_bytes(buf)
        probs, cams, info = predict_tflite(trial, "int8", x_held, progress)
        metrics = fidelity_metrics(labels, reference, (probs, cams), decide)
        checks = meets_targets("int8", metrics)
        ok = all(c["ok"] for c in checks.values())
        entry = {"method": label, "calibration_rois": int(len(x)), "convert_s": round(time.perf_counter() - t, 1),
                 "passes_targets": ok, **{k: metrics[k] for k in ("auc", "delta_auc", "agreement",
                                                                  "mean_abs_dprob", "max_abs_dprob", "cam_r")}}
        tried.append(entry)
        _log(f"int8 {label}: mean|Δprob| {metrics['mean_abs_dprob']:.4f}, agreement {metrics['agreement']:.4f}, "
             f"ΔAUC {metrics['delta_auc']}, {'meets' if ok else 'misses'} targets")
        score = (ok, -metrics["mean_abs_dprob"])
        if best is None or score > best[0]:
            best = (score, {"input": spec, "_probs": probs, "_cams": cams, "_runtime": info, "method": label})
            trial.replace(path)
        else:
            trial.unlink()
        if ok:
            break
    return {"chosen": best[1], "tried": tried}


def _parse_targets(targets) -> tuple[str, ...]:
    items = [t.strip().lower() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    bad = [t for t in items if t not in TARGETS]
    if bad or not items:
        raise ConvertError(f"--targets {','.join(items) or '(empty)'}: choose from {', '.join(TARGETS)}")
    return tuple(dict.fromkeys(items))
