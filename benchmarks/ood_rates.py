"""Out-of-distribution guard: false-alarm and detection rates per variant (issue 15).

    .venv/bin/python benchmarks/ood_rates.py        # -> benchmarks/results/issue15/ood_rates.json

Scores every set below with the bundle's own description (edge/ood.py) and the threshold of the variant
that ran (the daemon's rule), through the device runtime, cropped as on the cart:
- in distribution (false alarms): the training ROIs out of fold (~1 % by construction; computed when the
  description was fitted, read from the manifest), a new phantom cohort from the same scanner (`noa-edge
  simulate --seed 1`, unseen patients: the internal test set), and the development cohort's controls (same
  scanner, normal testes the model was not trained on);
- the same organ on another scanner: the external phantom cohort (Site B: other probe, gain, dynamic range,
  gamma); flagging it is not required, the number says how far the guard reacts to a scanner change;
- not testis ultrasound (detection): pydicom's ultrasound examples (daemon path: middle frame, automatic
  ROI), every frame of its 30-frame cine, its CT and MR examples, and the training ROIs of one patient fold
  (110) inverted, rotated 90 degrees, replaced by uniform noise, black or mid-gray.
For int8 it also reports the rate with the fp32 threshold, which is why each variant has its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from pydicom import examples
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from converters.convert import split_rois  # noqa: E402
from converters.dataset import load_dataset  # noqa: E402
from converters.fidelity import auc_or_none  # noqa: E402
from converters.ood_fit import patient_folds  # noqa: E402
from edge.bundle import load as load_bundle  # noqa: E402
from edge.dicom_io import decode_dataset_frame, read_dataset  # noqa: E402
from edge.held_frames import make_held_frame  # noqa: E402
from edge.imaging import decode_image  # noqa: E402
from edge.ood import load_guard, scores  # noqa: E402
from edge.preprocess import crop_roi  # noqa: E402
from edge.runtime import ModelRunner  # noqa: E402

US_FILES = {"rgb_color": examples.get_path("rgb_color"), "palette_color": examples.get_path("palette_color"),
            "ybr_color_cine": examples.get_path("ybr_color"), "jpeg2k": examples.get_path("jpeg2k"),
            "explicit_vr_big_endian": Path(get_testdata_file("ExplVR_BigEnd.dcm"))}
OTHER_MODALITIES = {"ct": examples.get_path("ct"), "mr": examples.get_path("mr")}


def run_all(runner: ModelRunner, rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats, probs = [], []
    for roi in rois:
        prob, _ = runner.run(np.ascontiguousarray(roi))
        feats.append(runner.last_features.copy())
        probs.append(prob)
    return np.stack(feats), np.asarray(probs)


def dataset_rois(ds, rows, size) -> np.ndarray:
    return np.stack([crop_roi(ds.read_image(r), r["roi"], size) for r in rows])


def cart_roi(frame: np.ndarray, size: int) -> np.ndarray:
    """As the daemon does it: hold the frame, propose its ROI, crop from the gray copy."""
    held = make_held_frame(frame, "upload", "benchmark")
    return crop_roi(held.gray, held.roi, size)


def dicom_rois(paths: dict, size: int, every_frame: bool = False) -> tuple[list[str], np.ndarray]:
    names, rois = [], []
    for name, path in paths.items():
        data = Path(path).read_bytes()
        first = decode_image(data, name)
        indices = range(first.n_frames) if every_frame and first.n_frames > 1 else [first.frame_index]
        for i in indices:
            frame = first.frame if i == first.frame_index else decode_image(data, name, i).frame
            names.append(f"{name}[{i}]")
            rois.append(cart_roi(frame, size))
    return names, np.stack(rois)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", default="firmware_assets/demo-phantom")
    ap.add_argument("--dataset", default="runs/demo-phantom/dataset")
    ap.add_argument("--internal", default="runs/ood/internal-test-seed1")
    ap.add_argument("--variants", default="fp32,int8")
    ap.add_argument("--out", default="benchmarks/results/issue15/ood_rates.json")
    args = ap.parse_args()
    bundle = load_bundle(ROOT / args.bundle)
    guard = load_guard(bundle.path, bundle.manifest)
    if guard is None:
        raise SystemExit(f"{args.bundle}: no OOD description (run noa-edge bundle-ood first)")
    internal = ROOT / args.internal
    simulate = [str(ROOT / ".venv/bin/noa-edge"), "simulate", str(internal), "--oa", "30", "--noa", "30",
                "--controls", "0", "--external", "0", "--seed", "1", "--quiet"]
    if not (internal / "dataset.json").is_file():
        subprocess.run(simulate, check=True)
    size = bundle.input_size
    dev = load_dataset(ROOT / args.dataset, check_images=False)
    rows = dev.labelled_images(include_controls=False)
    fold = patient_folds(rows, seed=bundle.manifest["ood"].get("split_seed", 0))
    held_rows = [r for r, f in zip(rows, fold, strict=True) if f == 0]
    controls = [r for r in dev.labelled_images(include_controls=True) if r["group"] == "control"]
    ext = load_dataset(ROOT / args.dataset / "external", check_images=False)
    test = load_dataset(internal, check_images=False)

    held = dataset_rois(dev, held_rows, size)
    rng = np.random.default_rng(0)
    sets: dict[str, dict] = {
        "internal_test_new_patients": {"kind": "in distribution (unseen patients, same scanner)",
                                       "x": dataset_rois(test, test.labelled_images(), size)},
        "controls_same_scanner": {"kind": "in distribution (normal testes, not trained on)",
                                  "x": dataset_rois(dev, controls, size)},
        "external_other_scanner": {"kind": "same organ, other scanner",
                                   "x": dataset_rois(ext, ext.labelled_images(), size)},
    }
    names, x = dicom_rois(US_FILES, size)
    sets["pydicom_ultrasound_files"] = {"kind": "not testis ultrasound", "x": x, "names": names}
    names, x = dicom_rois({"ybr_color_cine": US_FILES["ybr_color_cine"]}, size, every_frame=True)
    sets["pydicom_ultrasound_cine_frames"] = {"kind": "not testis ultrasound (30 frames of one cine)", "x": x}
    # the daemon refuses CT/MR objects by SOP class; their pixels stand for a screenshot of them
    names = list(OTHER_MODALITIES)
    x = np.stack([cart_roi(decode_dataset_frame(read_dataset(Path(p).read_bytes(), n), n).frame, size)
                  for n, p in OTHER_MODALITIES.items()])
    sets["pydicom_ct_mr"] = {"kind": "not ultrasound (pixels of a CT and an MR slice)", "x": x, "names": names}
    sets["inverted"] = {"kind": "not testis ultrasound (the 110 ROIs of patient fold 0, 255 - pixels)", "x": 255 - held}
    sets["rotated_90"] = {"kind": "not testis ultrasound (the 110 ROIs of patient fold 0 rotated 90 degrees)",
                          "x": np.ascontiguousarray(np.rot90(held, 1, axes=(1, 2)))}
    sets["uniform_noise"] = {"kind": "not an image", "x": rng.integers(0, 256, held.shape[:1] + (size, size, 3),
                                                                       dtype=np.uint8)}
    sets["black"] = {"kind": "blank", "x": np.zeros((1, size, size, 3), np.uint8)}
    sets["mid_gray"] = {"kind": "blank", "x": np.full((1, size, size, 3), 128, np.uint8)}

    variants = [v for v in args.variants.split(",") if v in bundle.variants]
    result = {"bundle": bundle.name, "bundle_manifest_sha256": bundle.manifest.get("manifest_sha256"),
              "method": guard.method, "quantile": guard.quantile, "thresholds": guard.thresholds,
              "internal_test_command": " ".join(simulate[1:]).replace(str(ROOT) + "/", ""),
              "command": "python benchmarks/ood_rates.py " + " ".join(sys.argv[1:]), "variants": {},
              "training_rois_out_of_fold": bundle.manifest["ood"].get("out_of_fold"),
              "training_rois": bundle.manifest["ood"].get("fit")}
    for variant in variants:
        runner = ModelRunner(bundle.path / bundle.variants[variant]["file"], variant=variant)
        threshold = guard.threshold_for(variant)
        out = {}
        for name, spec in sets.items():
            feats, probs = run_all(runner, spec["x"])
            s = scores(guard, feats)
            entry = {"kind": spec["kind"], "n": int(len(s)), "flag_rate": float(np.mean(s > threshold)),
                     "flagged": int(np.sum(s > threshold)), "median_score": float(np.median(s)),
                     "median_score_over_threshold": float(np.median(s) / threshold),
                     "mean_dl_probability": float(np.mean(probs))}
            if variant != "fp32":
                entry["flag_rate_with_fp32_threshold"] = float(np.mean(s > guard.thresholds["fp32"]))
            if "names" in spec:
                entry["per_item"] = {n: {"score": float(v), "flagged": bool(v > threshold), "dl_probability": float(p)}
                                     for n, v, p in zip(spec["names"], s, probs, strict=True)}
            out[name] = entry
            print(f"{variant:5s} {name:32s} n={entry['n']:4d} flagged {entry['flag_rate']:.3f} "
                  f"median score/threshold {entry['median_score_over_threshold']:.2f}", flush=True)
        result["variants"][variant] = out
    # the dataset is the one the bundle was converted from: fp32 AUC on the conversion's held-out split
    # (same seed and calibration size as make_demo_bundle.sh) reproduces fidelity.json
    _, fid_rows = split_rois(rows, 200, bundle.manifest.get("conversion", {}).get("seed", 0))
    runner = ModelRunner(bundle.path / bundle.variants["fp32"]["file"], variant="fp32")
    _, probs = run_all(runner, dataset_rois(dev, fid_rows, size))
    fidelity = bundle.fidelity() or {}
    result["dataset_check"] = {"fp32_auc_now": auc_or_none(np.array([r["label"] for r in fid_rows]), probs),
                               "fp32_auc_fidelity_json": fidelity.get("variants", {}).get("fp32", {}).get("auc"),
                               "n_rois": len(fid_rows), "n_rois_fidelity_json": fidelity.get("n_rois")}
    print("dataset check", result["dataset_check"])
    path = ROOT / args.out
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
