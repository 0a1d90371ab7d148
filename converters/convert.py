"""`noa-edge convert RUN --out firmware_assets/NAME`: trained Keras model -> verified firmware bundle.

Variants per target (docs/CONTRACTS.md, issue 5):
  cpu     fp32 and fp16 TFLite (XNNPACK), batch 1, static shapes; fp16 keeps the stem conv fp32
          (converters/fp16_weights.py says why)
  coral   full-integer int8 TFLite (uint8 pixels in), Edge TPU preflight, `_edgetpu` variant when the
          compiler is on PATH
  jetson  fp16 TFLite and ONNX opset 17 (tf2onnx) for TensorRT

Why the int8 model is converted from a float-input copy of the graph: with the Keras uint8 input
the converter keeps a CAST (uint8 -> float32) as the first op; CAST is not an Edge TPU op and the
compiler partitions once, so *every* op would run on the Coral's CPU. Feeding the same graph (minus
its cast layer) float pixels and asking for a uint8 input gives a graph that starts with QUANTIZE
(an Edge TPU op). Its input quantization is then set to exactly scale 1, zero point 0 (the QUANTIZE
op requantizes to the calibrated range, so this is exact), so the device feeds raw pixels to every
variant. Output tensors are renamed `prob` and `cam` in every .tflite, so outputs are found by name
even where a runtime or the Edge TPU compiler drops the signature.

Fidelity is measured with the device's own wrapper (edge.runtime.ModelRunner) on held-out ROIs from
patients not used for calibration.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import require_train_extra
from .fp16_weights import choose_fp16_keep

TARGETS = ("cpu", "coral", "jetson")
TARGET_VARIANTS = {"cpu": ("fp32", "fp16"), "coral": ("int8",), "jetson": ("fp16", "onnx")}
VARIANT_FILES = {"fp32": "model_fp32.tflite", "fp16": "model_fp16.tflite", "int8": "model_int8.tflite",
                 "edgetpu": "model_int8_edgetpu.tflite", "onnx": "model.onnx"}
VARIANT_DTYPES = {"fp32": "float32", "fp16": "float16", "int8": "int8", "edgetpu": "int8", "onnx": "float32"}
TARGETS_FIDELITY = {"fp16": {"max_abs_dprob": 1e-3},
                    "int8": {"abs_delta_auc": 0.01, "agreement": 0.98, "mean_abs_dprob": 0.02}}
PLACEHOLDER_THRESHOLD = 0.5
ONNX_OPSET = 17
FP16_CHOICE_ROIS = 64  # calibration ROIs used to choose which leading tensors stay fp32 (converters/fp16_weights.py)
INTENDED_USE = ("Research and demonstration of point-of-care NOA-vs-OA prediction from a testicular ultrasound "
                "ROI plus FSH, testicular volume and EDV. Decision support for a clinician, not a diagnosis.")


class ConvertError(ValueError):
    """A run folder, dataset or option that cannot be converted; the message names the file and why."""


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
# Conversion


def float_input_model(model):
    """The same graph and weights, fed float pixels instead of uint8 (no CAST op: see module docstring)."""
    keras = require_train_extra("keras")
    try:
        start = model.get_layer("to_float").output
    except ValueError as exc:
        raise ConvertError("model.keras has no 'to_float' layer: it was not built by converters.models."
                           "build_cam_model") from exc
    return keras.Model(start, model.output, name=f"{model.name}_float_in")


def frozen_function(model, size: int, dtype: str):
    """The model as one concrete function, image (1, S, S, 3) -> {"prob", "cam"}, variables folded to
    constants. Converting this is ~10x faster here than a SavedModel round trip and gives the same graph;
    finalize_tflite() then adds the serving signature the SavedModel path would have written."""
    tf = require_train_extra("tensorflow")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], getattr(tf, dtype), name="image")])
    def serve(image):
        out = model(image, training=False)
        return {"prob": out["prob"], "cam": out["cam"]}

    return convert_variables_to_constants_v2(serve.get_concrete_function())


def convert_tflite(function, kind: str, calibration: np.ndarray | None = None, per_channel: bool = True) -> bytes:
    """The TFLite converter's own fp32 / fp16 / int8. The bundle's fp16 is built by converters.fp16_weights
    from the fp32 one instead (same format, stem kept fp32); "fp16" here is its reference in the tests."""
    tf = require_train_extra("tensorflow")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
    if kind == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "int8":
        if calibration is None or len(calibration) == 0:
            raise ConvertError("int8 needs a representative (calibration) set")

        def representative():
            for roi in calibration:
                yield [roi[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.float32
        if not per_channel:
            converter._experimental_disable_per_channel = True
    return converter.convert()


def finalize_tflite(buf: bytes, raw_pixel_input: bool) -> tuple[bytes, dict]:
    """Name the input `image` and the outputs `prob` and `cam` (tensor names and a serving_default
    signature), and, for a quantized uint8 input feeding only QUANTIZE ops, set its quantization to
    scale 1 / zero point 0 (raw pixels; exact, see the module docstring).
    Returns the new flatbuffer and the input spec {dtype, scale, zero_point}."""
    import flatbuffers

    from converters.edgetpu_preflight import _schema

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(buf), 0)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 2:
        raise ConvertError(f"converted graph has {len(graph.inputs)} inputs / {len(graph.outputs)} outputs, "
                           "expected 1 / 2")
    # prob is (1, 1), cam is (1, h, w): rank tells them apart whatever order the converter chose
    names = {}
    for index in graph.outputs:
        rank = len(graph.tensors[index].shape)
        names[index] = "prob" if rank == 2 else "cam"
    if sorted(names.values()) != ["cam", "prob"]:
        raise ConvertError(f"cannot tell prob from cam by shape: {[list(graph.tensors[i].shape) for i in graph.outputs]}")
    for index, name in names.items():
        graph.tensors[index].name = name
    graph.tensors[graph.inputs[0]].name = "image"
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs = [_tensor_map(schema, "image", graph.inputs[0])]
    signature.outputs = [_tensor_map(schema, name, index) for index, name in sorted(names.items(), key=lambda kv: kv[1])]
    model.signatureDefs = [signature]

    tensor = graph.tensors[graph.inputs[0]]
    q = tensor.quantization
    dtype = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}[tensor.type].lower()
    spec = {"dtype": dtype, "scale": 1.0, "zero_point": 0}
    quantized = q is not None and q.scale is not None and len(q.scale) > 0 and float(q.scale[0]) != 0.0
    if quantized:
        consumers = [op for op in graph.operators if graph.inputs[0] in list(op.inputs)]
        quantize_code = schema.BuiltinOperator.QUANTIZE
        only_quantize = all(max(model.operatorCodes[op.opcodeIndex].builtinCode,
                                model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode) == quantize_code
                            for op in consumers)
        if raw_pixel_input and dtype == "uint8" and only_quantize:
            q.scale, q.zeroPoint = [1.0], [0]
        spec = {"dtype": dtype, "scale": float(q.scale[0]), "zero_point": int(q.zeroPoint[0])}
    builder = flatbuffers.Builder(len(buf) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), spec


def _tensor_map(schema, name: str, index: int):
    entry = schema.TensorMapT()
    entry.name, entry.tensorIndex = name, index
    return entry


def convert_onnx(model, size: int, path: Path) -> None:
    tf = require_train_extra("tensorflow")
    tf2onnx = require_train_extra("tf2onnx")
    spec = [tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")]

    @tf.function(input_signature=spec)
    def serve(image):
        out = model(image, training=False)
        return {"prob": out["prob"], "cam": out["cam"]}

    tf2onnx.convert.from_function(serve, input_signature=spec, opset=ONNX_OPSET, output_path=str(path))


# --------------------------------------------------------------------------------------------
# Predictions and fidelity


def predict_keras(model, x: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    probs, cams = [], []
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch], training=False)
        probs.append(np.asarray(out["prob"]).reshape(-1))
        cams.append(np.asarray(out["cam"]))
    return np.concatenate(probs).astype(np.float64), np.concatenate(cams).astype(np.float32)


def predict_tflite(path: Path, variant: str, x: np.ndarray, progress: bool = True):
    """Through the device wrapper, so fidelity covers the code that runs on the cart."""
    from tqdm import tqdm

    from edge.runtime import ModelRunner

    runner = ModelRunner(path, variant=variant, num_threads=2)
    probs = np.empty(len(x))
    cams = np.empty((len(x),) + runner.cam_shape, dtype=np.float32)
    for i, roi in enumerate(tqdm(x, desc=f"fidelity {variant}", disable=not progress, leave=False)):
        probs[i], cams[i] = runner.run(roi)
    return probs, cams, runner.info()


def predict_onnx(path: Path, x: np.ndarray):
    ort = require_train_extra("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    if set(names) != {"prob", "cam"}:
        raise ConvertError(f"{path}: ONNX outputs are {names}, expected prob and cam")
    input_name = session.get_inputs()[0].name
    probs, cams = [], []
    for roi in x:
        out = dict(zip(names, session.run(None, {input_name: roi[None]})))
        probs.append(float(out["prob"].reshape(-1)[0]))
        cams.append(out["cam"][0])
    return np.asarray(probs), np.asarray(cams, dtype=np.float32)


def nomogram_decisions(nomogram: dict, probs: np.ndarray, rows: list[dict]) -> np.ndarray | None:
    """Nomogram positive/negative per ROI with its clinical values (None if any ROI lacks one)."""
    from edge.nomogram import transform

    lp = np.full(len(probs), float(nomogram["intercept"]))
    for p in nomogram["predictors"]:
        if p["source"] == "dl_probability":
            values = probs
        else:
            values = np.array([np.nan if r.get(p["source"]) is None else r[p["source"]] for r in rows], float)
            if np.isnan(values).any():
                return None
        lo, hi = p.get("range", [-np.inf, np.inf])
        lp += float(p["coef"]) * np.asarray(transform(p["transform"], np.clip(values, lo, hi)), float)
    return 1.0 / (1.0 + np.exp(-lp)) >= float(nomogram["threshold"])


def fidelity_metrics(labels: np.ndarray, ref: tuple, var: tuple, decide) -> dict:
    """max/mean |Δprob|, AUC and ΔAUC vs Keras, decision agreement, CAM Pearson r (mean per ROI)."""
    from sklearn.metrics import roc_auc_score

    p_ref, cam_ref = ref
    p_var, cam_var = var
    d = np.abs(p_var - p_ref)
    two_classes = len(set(labels.tolist())) == 2
    auc = float(roc_auc_score(labels, p_var)) if two_classes else None
    auc_ref = float(roc_auc_score(labels, p_ref)) if two_classes else None
    a, b = cam_ref.reshape(len(cam_ref), -1), cam_var.reshape(len(cam_var), -1)
    if a.shape[1] > 1:
        rs = [_pearson(x, y) for x, y in zip(a, b)]
        rs = [r for r in rs if r is not None]
        cam_r = float(np.mean(rs)) if rs else None
    else:
        cam_r = _pearson(a.ravel(), b.ravel())
    return {"auc": auc, "delta_auc": None if auc is None else auc - auc_ref,
            "agreement": float(np.mean(decide(p_var) == decide(p_ref))),
            "mean_abs_dprob": float(d.mean()), "max_abs_dprob": float(d.max()),
            "cam_r": cam_r, "cam_r_pooled": _pearson(a.ravel(), b.ravel())}


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if x.std() == 0 or y.std() == 0:
        return 1.0 if np.allclose(x, y) else None
    return float(np.corrcoef(x, y)[0, 1])


def meets_targets(variant: str, metrics: dict) -> dict:
    checks = {}
    for key, limit in TARGETS_FIDELITY.get(variant, {}).items():
        if key == "abs_delta_auc":
            value = None if metrics["delta_auc"] is None else abs(metrics["delta_auc"])
            checks[key] = {"value": value, "limit": limit, "ok": value is not None and value <= limit}
        elif key == "agreement":
            checks[key] = {"value": metrics[key], "limit": limit, "ok": metrics[key] >= limit}
        else:
            checks[key] = {"value": metrics[key], "limit": limit, "ok": metrics[key] <= limit}
    return checks


# --------------------------------------------------------------------------------------------
# The whole conversion


def convert(run_dir: str | Path, out_dir: str | Path, targets=TARGETS, name: str | None = None,
            dataset: str | Path | None = None, calibration_size: int = 200, seed: int = 0,
            synthetic_demo: bool | None = None, max_fidelity_rois: int | None = None, int8_retry: bool = True,
            overwrite: bool = False, progress: bool = True) -> dict:
    """Convert RUN into a bundle in OUT; returns the manifest. See the module docstring."""
    targets = _parse_targets(targets)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ConvertError(f"{out} is not empty; choose a new folder or pass --overwrite")
        if not (out / "manifest.json").is_file():
            raise ConvertError(f"{out} is not empty and is not a bundle; refusing to overwrite it")
        shutil.rmtree(out)
    if calibration_size < 1:
        raise ConvertError(f"--calibration-size must be >= 1, got {calibration_size}")
    run = read_run(run_dir, dataset)
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
    if max_fidelity_rois and len(held_rows) > max_fidelity_rois:
        held_rows = random.Random(seed + 1).sample(held_rows, max_fidelity_rois)
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
                                      decide, int8_retry, progress)
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

    keras_auc = _auc(labels, reference[0])
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
    name = name or out.name
    is_synthetic = (data.meta.get("source", {}).get("kind") == "phantom") if synthetic_demo is None else synthetic_demo
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
                       "cv_auc": run["cv_auc"], "seed": run["meta"].get("seed"), "code_version": _code_version()},
        "conversion": {"tool": "noa-edge convert", "targets": list(targets), "seed": seed,
                       "calibration_rois": len(calib_rows), "times_s": {k: round(v, 2) for k, v in times.items()},
                       "tensorflow": require_train_extra("tensorflow").__version__},
    }
    if preflight:
        manifest["edgetpu_preflight"] = {"verdict": preflight["verdict"], "passes": preflight["passes"],
                                         "compiler": {k: preflight["compiler"].get(k)
                                                      for k in ("available", "command", "subgraphs", "ops_tpu",
                                                                "ops_cpu", "on_chip_memory", "off_chip_memory")}}
    (out / "README.md").write_text(_readme(manifest, size))
    (out / "MODEL_CARD.md").write_text(_model_card(manifest, fidelity_doc, data))
    from edge.bundle import finalize_manifest

    manifest = finalize_manifest(out, manifest)
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


def _auc(labels, probs):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, probs)) if len(set(labels.tolist())) == 2 else None


def _parse_targets(targets) -> tuple[str, ...]:
    items = [t.strip().lower() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    bad = [t for t in items if t not in TARGETS]
    if bad or not items:
        raise ConvertError(f"--targets {','.join(items) or '(empty)'}: choose from {', '.join(TARGETS)}")
    return tuple(dict.fromkeys(items))


def _code_version() -> str:
    from edge import __version__

    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"noa-edge {__version__} git {sha}{'+dirty' if dirty else ''}" if sha else f"noa-edge {__version__}"
    except (OSError, subprocess.SubprocessError):
        return f"noa-edge {__version__}"


def _readme(manifest: dict, size: int) -> str:
    lines = [f"# Firmware bundle `{manifest['name']}`", ""]
    if manifest["synthetic_demo"]:
        lines += ["**SYNTHETIC DEMO** — trained on a phantom cohort. Not for diagnosis.", ""]
    lines += ["Check it before use: `noa-edge bundle verify .` (sizes and sha256 of every file).", "",
              "| variant | file | target | dtype |", "|---|---|---|---|"]
    for name, v in manifest["variants"].items():
        lines.append(f"| {name} | `{v['file']}` | {v['target']} | {v['dtype']} |")
    kept = manifest["variants"].get("fp16", {}).get("kept_fp32")
    if kept and kept["kept_tensors"]:
        lines += ["", f"fp16 keeps its first {kept['kept_tensors']} weight tensors ({kept['kept_weights']} numbers, "
                      "the stem conv with the pixel scaling folded in) in fp32: rounding them cost most of the "
                      "fp16 error (fidelity.json `fp16_choice`)."]
    lines += ["", f"Input: uint8 RGB `(1, {size}, {size}, 3)` raw pixels (ROI from `edge.preprocess.crop_roi`); "
              "outputs by name: `prob` (1,) and `cam` (h, w).", "",
              "## Jetson (TensorRT)", "",
              "```",
              "trtexec --onnx=model.onnx --fp16 --saveEngine=model_fp16.engine",
              "```",
              "The ONNX graph takes uint8 pixels and casts in-graph (TensorRT ≥ 8.6 accepts uint8 inputs); "
              "`model_fp16.tflite` runs on the CPU or the TFLite GPU delegate as a fallback.", "",
              "## Coral (Edge TPU)", ""]
    pre = manifest.get("edgetpu_preflight")
    if pre:
        lines += [f"Preflight: {pre['verdict']}", ""]
        if not pre["compiler"].get("available"):
            lines += ["Compile on an x86-64 Debian/Ubuntu host with the `edgetpu-compiler` package:", "", "```",
                      "edgetpu_compiler -s -o . model_int8.tflite", "```",
                      "then add `model_int8_edgetpu.tflite` by converting again with the compiler on PATH "
                      "(the manifest pins every file's sha256).", ""]
    return "\n".join(lines) + "\n"


def _model_card(manifest: dict, fidelity: dict, data) -> str:
    prov = manifest["provenance"]
    nomo = manifest["nomogram"]
    lines = [f"# Model card: {manifest['name']}", "",
             "## What it is",
             f"{prov.get('backbone')} with a CAM head: a uint8 testicular-ultrasound ROI in, the probability "
             "of non-obstructive azoospermia (NOA, positive) vs obstructive (OA) and a class-activation map out. "
             "The probability feeds a nomogram with serum FSH, testicular volume and EDV.", "",
             "## Intended use", manifest["intended_use"], ""]
    if manifest["synthetic_demo"]:
        lines += ["**SYNTHETIC DEMO.** Trained on a simulated (phantom) cohort whose images and clinical values "
                  "are generated from literature distributions. Its numbers say nothing about real patients.", ""]
    lines += ["## Training data",
              f"Dataset `{prov.get('dataset')}` (sha256 {prov.get('dataset_sha256')}), run `{prov.get('run')}`, "
              f"source kind {data.meta.get('source', {}).get('kind')}. Cross-validated AUC (patient-grouped 5-fold): "
              f"{_fmt(prov.get('cv_auc'))}.", "",
              "## Nomogram",
              ("PLACEHOLDER — no fitted nomogram was available at conversion; the DL probability alone at 0.5."
               if nomo.get("placeholder") else
               f"Fitted logistic nomogram, threshold {_fmt(nomo.get('threshold'))} ({nomo.get('threshold_method')})."), "",
              "## Fidelity of the device variants vs the Keras model",
              f"{fidelity['n_rois']} held-out ROIs from {fidelity['n_patients']} patients not used for calibration; "
              f"agreement basis: {fidelity['threshold_basis']}. Keras AUC on these ROIs: {_fmt(fidelity['keras']['auc'])}.",
              "", "| variant | AUC | ΔAUC | agreement | mean abs Δprob | max abs Δprob | CAM r |",
              "|---|---|---|---|---|---|---|"]
    for name, f in fidelity["variants"].items():
        lines.append(f"| {name} | {_fmt(f['auc'])} | {_fmt(f['delta_auc'])} | {_fmt(f['agreement'])} | "
                     f"{_fmt(f['mean_abs_dprob'], 5)} | {_fmt(f['max_abs_dprob'], 5)} | {_fmt(f['cam_r'])} |")
    if fidelity.get("int8_attempts"):
        lines += ["", "int8 calibration attempts: " + "; ".join(
            f"{a['method']} → mean abs Δprob {a['mean_abs_dprob']:.4f}, agreement {a['agreement']:.3f}"
            for a in fidelity["int8_attempts"])]
    lines += ["", "## Limits",
              "- One ROI per image, drawn or confirmed by the operator; the model never sees the whole frame.",
              "- Probabilities are calibrated to the training cohort's prevalence (OA:NOA), not to a new clinic's.",
              "- Grayscale B-mode only; Doppler colour inside the ROI is folded to luminance.",
              "- Not validated on patients: performance on a real cohort must be measured before any clinical use.",
              ""]
    return "\n".join(lines)


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)


# --------------------------------------------------------------------------------------------
# CLI


def register(app) -> None:
    import typer

    @app.command("convert")
    def convert_command(
        run: Path = typer.Argument(..., help="Training run folder (RUN/model.keras, run.json, nomogram.json)."),
        out: Path = typer.Option(..., "--out", help="Bundle folder to write, e.g. firmware_assets/NAME."),
        targets: str = typer.Option("cpu,coral,jetson", help="Comma-separated: cpu, coral, jetson."),
        name: str = typer.Option(None, help="Bundle name (default: the folder name)."),
        dataset: Path = typer.Option(None, help="Dataset folder (default: run.json's 'dataset')."),
        calibration_size: int = typer.Option(200, help="int8 calibration ROIs (stratified by class, whole patients)."),
        seed: int = typer.Option(0, help="Seed of the calibration / held-out split."),
        synthetic_demo: bool = typer.Option(None, "--synthetic-demo/--no-synthetic-demo",
                                            help="Flag the bundle as a synthetic demo (default: if the dataset is a phantom)."),
        max_fidelity_rois: int = typer.Option(None, help="Cap on held-out ROIs for the fidelity report."),
        int8_retry: bool = typer.Option(True, "--int8-retry/--no-int8-retry",
                                        help="If int8 misses a target, try per-tensor and more calibration data."),
        overwrite: bool = typer.Option(False, help="Replace an existing bundle in OUT."),
    ) -> None:
        """Convert a trained model into a firmware bundle: TFLite fp32/fp16/int8, ONNX, fidelity, Edge TPU preflight."""
        from converters import TrainExtraMissing

        try:
            convert(run, out, targets, name=name, dataset=dataset, calibration_size=calibration_size, seed=seed,
                    synthetic_demo=synthetic_demo, max_fidelity_rois=max_fidelity_rois, int8_retry=int8_retry,
                    overwrite=overwrite)
        except (ConvertError, TrainExtraMissing) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
