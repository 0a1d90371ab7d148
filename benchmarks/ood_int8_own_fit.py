"""Would int8 detect more with a description fitted on its own features? (issue 15, the next step for Coral)

    .venv/bin/python benchmarks/ood_int8_own_fit.py   # -> benchmarks/results/issue15/ood_int8_own_fit.json

The shipped bundle fits one description on fp32 features and gives int8 its own threshold (converters/ood_fit.py).
Here the same method (same transform, 32 directions, 5 patient folds, 99th percentile out of fold) is fitted on
the int8 model's own features of the same 550 training ROIs, and scored on the sets of benchmarks/ood_rates.py
(new phantom patients, other scanner, pydicom ultrasound files and cine frames, inverted ROIs of fold 0).
Nothing in the bundle changes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.ood_rates import US_FILES, dataset_rois, dicom_rois, run_all  # noqa: E402
from converters.dataset import load_dataset  # noqa: E402
from converters.ood_fit import fit_description, guard_of, patient_folds, threshold_of  # noqa: E402
from edge.bundle import load as load_bundle  # noqa: E402
from edge.ood import load_guard, scores  # noqa: E402
from edge.runtime import ModelRunner  # noqa: E402


def main() -> None:
    bundle = load_bundle(ROOT / "firmware_assets/demo-phantom")
    size = bundle.input_size
    dev = load_dataset(ROOT / "runs/demo-phantom/dataset", check_images=False)
    rows = dev.labelled_images(include_controls=False)
    labels = np.array([r["label"] for r in rows])
    fold = patient_folds(rows)
    x = dataset_rois(dev, rows, size)
    test = load_dataset(ROOT / "runs/ood/internal-test-seed1", check_images=False)
    ext = load_dataset(ROOT / "runs/demo-phantom/dataset/external", check_images=False)
    sets = {"internal_test_new_patients": dataset_rois(test, test.labelled_images(), size),
            "external_other_scanner": dataset_rois(ext, ext.labelled_images(), size),
            "pydicom_ultrasound_files": dicom_rois(US_FILES, size)[1],
            "pydicom_ultrasound_cine_frames": dicom_rois({"cine": US_FILES["ybr_color_cine"]}, size, True)[1],
            "inverted": 255 - x[fold == 0]}
    runner = ModelRunner(bundle.path / bundle.variants["int8"]["file"], variant="int8")
    train, _ = run_all(runner, x)
    feats = {name: run_all(runner, rois)[0] for name, rois in sets.items()}
    oof = np.zeros(len(rows))
    for k in range(5):
        oof[fold == k] = scores(guard_of(fit_description(train[fold != k], labels[fold != k])), train[fold == k])
    own, own_threshold = guard_of(fit_description(train, labels)), threshold_of(oof)
    shipped = load_guard(bundle.path, bundle.manifest)
    result = {"command": "python benchmarks/ood_int8_own_fit.py", "bundle": bundle.name,
              "own_fit_threshold": own_threshold, "shipped_int8_threshold": shipped.thresholds["int8"],
              "own_fit_training_out_of_fold_flag_rate": float(np.mean(oof > own_threshold)), "sets": {}}
    for name, f in feats.items():
        result["sets"][name] = {"n": len(f), "own_fit_flag_rate": float(np.mean(scores(own, f) > own_threshold)),
                                "shipped_fp32_fit_flag_rate": float(np.mean(scores(shipped, f) >
                                                                            shipped.thresholds["int8"]))}
        print(name, result["sets"][name], flush=True)
    out = ROOT / "benchmarks/results/issue15/ood_int8_own_fit.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
