"""`noa-edge bundle-onnx BUNDLE`: add an ONNX variant to a finished bundle, converted from its fp32 .tflite.

For bundles whose Keras model is gone (the shipped demo): tf2onnx reads the fp32 TFLite flatbuffer
(`tf2onnx.convert.from_tflite`), so the ONNX graph is the same graph with the same weights, the same raw
uint8 input (the CAST and the in-graph normalisation come along) and the same outputs. Outputs are named
by the TFLite signature's keys (`prob`, `cam`, and `features` when the model has it), the input `image`.

Fidelity is measured through the device's own runners (edge.runtime.ModelRunner on LiteRT against
edge.runtime_onnx.OnnxRunner on ONNX Runtime), on ROIs cropped from the shipped phantom cine by the device's
ROI proposal plus random speckle ROIs: max/mean |Δprob|, CAM max |Δ| and r, and every other output's max |Δ|.
The variant is written only if max |Δprob| ≤ ONNX_MAX_DPROB (the fp16 limit); fidelity.json gains
variants.onnx (reference: fp32 TFLite) with that check under `targets`, which `--runtime auto` reads.
When the bundle has an OOD guard (manifest `ood`, edge/ood.py) and the ONNX `features` output equals fp32's
within ONNX_MAX_FEATURES_DIFF, `ood.thresholds.onnx` = fp32's, so the guard stays on under ONNX Runtime.
The manifest is rewritten by edge.bundle.finalize_manifest, which drops a signature (sign again).
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import numpy as np

from converters import require_train_extra
from converters.bundle_docs import code_version
from converters.errors import ConvertError

ONNX_FILE = "model.onnx"
ONNX_OPSET = 17
ONNX_MAX_DPROB = 1e-3  # same limit as fp16 (converters.fidelity.TARGETS_FIDELITY): a float32 re-export
ONNX_MAX_FEATURES_DIFF = 1e-3  # features this close to fp32's: the OOD guard keeps fp32's threshold for onnx
N_CINE_ROIS, N_NOISE_ROIS = 24, 8


def fidelity_rois(size: int, n_cine: int = N_CINE_ROIS, n_noise: int = N_NOISE_ROIS, seed: int = 0) -> np.ndarray:
    """uint8 (N, size, size, 3) model inputs: the device's own auto ROI on frames of the phantom cine, then
    speckle noise (inputs far from the training data must agree too)."""
    import cv2

    from edge.capture import demo_cine_path
    from edge.held_frames import make_held_frame
    from edge.preprocess import crop_roi

    rois = []
    cap = cv2.VideoCapture(str(demo_cine_path()))
    total = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 1)
    for index in np.linspace(0, total - 1, n_cine).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = cap.read()
        if not ok:
            continue
        held = make_held_frame(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), "freeze")
        rois.append(crop_roi(held.gray, held.roi, size))
    cap.release()
    rng = np.random.default_rng(seed)
    for _ in range(n_noise):
        gray = rng.integers(0, 256, (size, size), dtype=np.uint8)
        rois.append(np.repeat(gray[:, :, None], 3, axis=2))
    return np.ascontiguousarray(np.stack(rois))


def tflite_output_names(path: Path) -> dict[str, str]:
    """{tensor name: signature key} of the serving signature's outputs (what the ONNX outputs are renamed to)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    names: dict[str, str] = {}
    try:
        full = interp._get_full_signature_list()  # noqa: SLF001 - the only place LiteRT gives key -> tensor index
    except AttributeError:
        full = {}
    details = {d["index"]: d["name"] for d in interp.get_tensor_details()}
    for sig in full.values():
        for key, index in sig.get("outputs", {}).items():
            names[details.get(index, key)] = key
    return names


def convert_tflite_to_onnx(tflite: Path, out: Path) -> list[str]:
    """tf2onnx on the .tflite; input renamed `image`, outputs renamed to their signature keys. Returns the
    output names."""
    tf2onnx = require_train_extra("tf2onnx")
    onnx = require_train_extra("onnx")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            tf2onnx.convert.from_tflite(str(tflite), opset=ONNX_OPSET, output_path=str(raw))
        except Exception as exc:  # noqa: BLE001 - tf2onnx raises many kinds; one line names the file
            raise ConvertError(f"{tflite}: tf2onnx could not convert it ({type(exc).__name__}: {exc})") from exc
        model = onnx.load(str(raw))
    keys = tflite_output_names(tflite)
    renames = {o.name: keys.get(o.name, o.name) for o in model.graph.output}
    renames[model.graph.input[0].name] = "image"
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(model.graph.input) + list(model.graph.output):
        value.name = renames.get(value.name, value.name)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return [o.name for o in model.graph.output]


def measure(tflite: Path, onnx_path: Path, x: np.ndarray) -> dict:
    """ONNX Runtime vs LiteRT (fp32) through the device runners, every output by name."""
    from edge.runtime import ModelRunner
    from edge.runtime_onnx import OnnxRunner

    ref, var = ModelRunner(tflite, variant="fp32", num_threads=2), OnnxRunner(onnx_path, num_threads=2)
    if sorted(ref.output_names) != sorted(var.output_names):
        raise ConvertError(f"{onnx_path.name}: outputs {var.output_names} differ from the TFLite model's "
                           f"{ref.output_names}")
    a = [ref.run_all(roi) for roi in x]
    b = [var.run_all(roi) for roi in x]
    dprob = np.array([abs(float(p["prob"].reshape(-1)[0]) - float(q["prob"].reshape(-1)[0])) for p, q in zip(a, b,
                                                                                                         strict=True)])
    cam_a = np.stack([p["cam"].reshape(-1) for p in a])
    cam_b = np.stack([q["cam"].reshape(-1) for q in b])
    out = {"reference": "fp32 TFLite (LiteRT) through edge.runtime.ModelRunner", "n_rois": int(len(x)),
           "rois": f"{len(x) - N_NOISE_ROIS} phantom-cine frames (device auto ROI) + {N_NOISE_ROIS} speckle ROIs",
           "max_abs_dprob": float(dprob.max()), "mean_abs_dprob": float(dprob.mean()),
           "cam_max_abs_diff": float(np.abs(cam_a - cam_b).max()),
           "cam_r": float(np.corrcoef(cam_a.ravel(), cam_b.ravel())[0, 1]),
           "outputs_max_abs_diff": {name: float(max(np.abs(p[name] - q[name]).max() for p, q in zip(a, b,
                                                                                                   strict=True)))
                                    for name in sorted(ref.output_names)},
           "runtime": var.info()["runtime"] + " " + str(var.info()["runtime_version"]),
           "execution_provider": var.providers[0]}
    out["targets"] = {"max_abs_dprob": {"value": out["max_abs_dprob"], "limit": ONNX_MAX_DPROB,
                                        "ok": out["max_abs_dprob"] <= ONNX_MAX_DPROB}}
    return out


def add_onnx(bundle_dir: str | Path, progress=print) -> dict:
    """Convert BUNDLE's fp32 TFLite to ONNX, check it, write model.onnx + variants.onnx + fidelity; returns
    the new manifest. Refuses (ConvertError) a bundle that does not verify or an ONNX model that misses the
    fidelity target (the bundle is then unchanged)."""
    from edge.bundle import FIDELITY, MANIFEST, SIGNATURE, finalize_manifest, verify

    root = Path(bundle_dir)
    problems = verify(root)
    if problems:
        raise ConvertError(f"bundle {root} does not verify, not changing it:\n  " + "\n  ".join(problems))
    manifest = json.loads((root / MANIFEST).read_text())
    fp32 = manifest["variants"].get("fp32")
    if not fp32:
        raise ConvertError(f"bundle {root}: no fp32 variant to convert (variants: {', '.join(manifest['variants'])})")
    tflite = root / fp32["file"]
    size = int(manifest["input"]["shape"][1])
    with tempfile.TemporaryDirectory() as tmp:
        candidate = Path(tmp) / ONNX_FILE
        progress(f"converting {tflite.name} to ONNX (opset {ONNX_OPSET}, tf2onnx.from_tflite)")
        names = convert_tflite_to_onnx(tflite, candidate)
        progress(f"outputs {', '.join(names)}; measuring against LiteRT fp32")
        metrics = measure(tflite, candidate, fidelity_rois(size))
        if not metrics["targets"]["max_abs_dprob"]["ok"]:
            raise ConvertError(f"{ONNX_FILE}: max |Δprob| {metrics['max_abs_dprob']:.2e} vs fp32 TFLite exceeds "
                               f"{ONNX_MAX_DPROB}: not added")
        (root / ONNX_FILE).write_bytes(candidate.read_bytes())
    fidelity_path = root / FIDELITY
    fidelity = json.loads(fidelity_path.read_text()) if fidelity_path.is_file() else {
        "note": "fidelity of variants added after conversion (noa-edge bundle-onnx)"}
    fidelity.setdefault("variants", {})["onnx"] = metrics
    fidelity_path.write_text(json.dumps(fidelity, indent=2) + "\n")
    manifest["variants"]["onnx"] = {"file": ONNX_FILE, "target": "jetson", "dtype": "float32",
                                    "input": {"dtype": "uint8", "scale": 1.0, "zero_point": 0},
                                    "source": f"{fp32['file']} via tf2onnx.from_tflite, opset {ONNX_OPSET}",
                                    "outputs": names}
    manifest.setdefault("provenance", {})["onnx"] = {  # which code added the variant, as bundle-ood records
        "tool": "noa-edge bundle-onnx", "code_version": code_version(), "tf2onnx": version("tf2onnx"),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    ood = manifest.get("ood")
    features_diff = metrics["outputs_max_abs_diff"].get("features")
    if isinstance(ood, dict) and "fp32" in (ood.get("thresholds") or {}) and features_diff is not None:
        if features_diff <= ONNX_MAX_FEATURES_DIFF:  # the same features as fp32: the same OOD threshold applies
            ood["thresholds"]["onnx"] = ood["thresholds"]["fp32"]
            metrics["ood_threshold"] = f"fp32's (features max |Δ| {features_diff:.1e} ≤ {ONNX_MAX_FEATURES_DIFF})"
        else:
            progress(f"warning: features differ from fp32 by {features_diff:.2e}: no OOD threshold for onnx (the "
                     "guard stays off under --runtime onnxruntime)")
        fidelity_path.write_text(json.dumps(fidelity, indent=2) + "\n")
    signed = (root / SIGNATURE).is_file()
    manifest = finalize_manifest(root, manifest)
    if signed:
        progress(f"{SIGNATURE} removed: it signed the old manifest; sign the bundle again")
    return manifest


def register(app) -> None:
    """`noa-edge bundle-onnx BUNDLE` (added by converters/cli.py)."""
    import typer

    @app.command("bundle-onnx")
    def bundle_onnx_command(bundle: Path = typer.Argument(..., help="Bundle folder with an fp32 .tflite variant")
                            ) -> None:
        """Add an ONNX variant (for --runtime onnxruntime) converted from the bundle's fp32 TFLite, checked
        against it through the device runners; fidelity in fidelity.json, the manifest re-hashed."""
        try:
            manifest = add_onnx(bundle, progress=typer.echo)
        except ConvertError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        fid = json.loads((Path(bundle) / "fidelity.json").read_text())["variants"]["onnx"]
        total = sum(p.stat().st_size for p in Path(bundle).rglob("*") if p.is_file())
        typer.echo(f"{bundle}: {ONNX_FILE} added ({manifest['variants']['onnx']['size'] / 1e6:.1f} MB; bundle "
                   f"{total / 1e6:.1f} MB); vs fp32 TFLite on {fid['n_rois']} ROIs: max |Δprob| "
                   f"{fid['max_abs_dprob']:.2e}, CAM max |Δ| {fid['cam_max_abs_diff']:.2e}")
