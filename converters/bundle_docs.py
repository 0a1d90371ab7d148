"""The human-readable files of a firmware bundle: README.md and MODEL_CARD.md, from the manifest and
fidelity.json that `noa-edge convert` writes (and the code version stamped into the manifest).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_version() -> str:
    """`noa-edge VERSION git SHA`, `+dirty` when a tracked file of the code differs from that commit. The
    bundles under firmware_assets/ are outputs, not code: a tool that edits a committed bundle in place must
    not call its own tree dirty (pathspec `:!firmware_assets`)."""
    from edge import __version__

    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!firmware_assets"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"noa-edge {__version__} git {sha}{'+dirty' if dirty else ''}" if sha else f"noa-edge {__version__}"
    except (OSError, subprocess.SubprocessError):
        return f"noa-edge {__version__}"


def readme(manifest: dict, size: int) -> str:
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


def model_card(manifest: dict, fidelity: dict, data) -> str:
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
              f"{fmt(prov.get('cv_auc'))}.", "",
              "## Nomogram",
              ("PLACEHOLDER — no fitted nomogram was available at conversion; the DL probability alone at 0.5."
               if nomo.get("placeholder") else
               f"Fitted logistic nomogram, threshold {fmt(nomo.get('threshold'))} "
               f"({nomo.get('threshold_method')})."), "",
              "## Fidelity of the device variants vs the Keras model",
              f"{fidelity['n_rois']} held-out ROIs from {fidelity['n_patients']} patients not used for calibration; "
              f"agreement basis: {fidelity['threshold_basis']}. "
              f"Keras AUC on these ROIs: {fmt(fidelity['keras']['auc'])}.",
              "", "| variant | AUC | ΔAUC | agreement | mean abs Δprob | max abs Δprob | CAM r |",
              "|---|---|---|---|---|---|---|"]
    for name, f in fidelity["variants"].items():
        lines.append(f"| {name} | {fmt(f['auc'])} | {fmt(f['delta_auc'])} | {fmt(f['agreement'])} | "
                     f"{fmt(f['mean_abs_dprob'], 5)} | {fmt(f['max_abs_dprob'], 5)} | {fmt(f['cam_r'])} |")
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
    if manifest.get("lineage"):
        lines += lineage_section(manifest)
    return "\n".join(lines)


def lineage_section(manifest: dict) -> list[str]:
    """MODEL_CARD.md lines on where this bundle comes from when `noa-edge recalibrate` made it from a parent."""
    lin = manifest["lineage"]
    c = lin["cohort"]
    nomo = manifest["nomogram"]
    lines = [f"## Lineage: site recalibration ({manifest['name']})",
             f"Made by `{lin['tool']}` from bundle `{lin['parent_name']}` (sha256 of its manifest.json "
             f"{lin['parent_sha256']}). The CNN files are the parent's, byte for byte; only the nomogram changed.",
             f"- Method: **{lin['method']}** (requested: {lin['method_requested']}); {lin['method_reason']}.",
             f"- Site cohort `{c['dataset']}` (sha256 {c.get('dataset_sha256')}, source kind {c.get('source_kind')}): "
             f"{c['n_images']} images of {c['n_patients']} patients, {c['events_images']} NOA images "
             f"({c['events_patients']} NOA patients).",
             f"- New nomogram: intercept {fmt(nomo['intercept'])}, coefficients "
             + ", ".join(f"{p['name']} {fmt(p['coef'])}" for p in nomo["predictors"])
             + f"; threshold {fmt(manifest['threshold'])} ({nomo.get('threshold_method')}).",
             "- Evidence: recalibration_report.html / recalibration.json in this bundle.",
             "- The sections above describe the parent's training and the CNN; its probabilities are now "
             "calibrated to this site's cohort, not the training cohort."]
    if manifest["synthetic_demo"]:
        lines.append("- synthetic demo model — not for diagnosis.")
    return lines + [""]


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else str(value)
