"""`noa-edge bundle-ood BUNDLE DATASET` on a bundle built before the OOD guard (the shipped demo bundle with the
`features` output and the description taken out): every variant gains `features`, `prob` and `cam` stay
bit-identical, the description is written, listed, hashed and recorded in the provenance, and the bundle
verifies. The dataset is a small phantom cohort with the demo's dataset name (same generator, seed 0)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from conftest import ROOT
from converters.simulate import simulate
from edge.bundle import MANIFEST, finalize_manifest, verify
from test_ood_features import rois, without_features

DEMO = ROOT / "firmware_assets" / "demo-phantom"


def answers(path) -> list[dict]:
    runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner("serving_default")
    return [runner(image=x[None]) for x in rois(224)]


@pytest.fixture(scope="module")
def old_bundle(tmp_path_factory):
    """The demo bundle as a bundle built before the guard, and a small cohort of its dataset."""
    base = tmp_path_factory.mktemp("retrofit")
    bundle = base / "old"
    shutil.copytree(DEMO, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    (bundle / manifest.pop("ood")["file"]).unlink()
    manifest["outputs"].pop("features")
    manifest["provenance"].pop("ood")
    for name in [n for n, spec in manifest["variants"].items() if not spec["file"].endswith(".tflite")]:
        (bundle / manifest["variants"].pop(name)["file"]).unlink()  # the ONNX variant came after the guard
    for spec in manifest["variants"].values():
        path = bundle / spec["file"]
        path.write_bytes(without_features(path.read_bytes()))
    finalize_manifest(bundle, manifest)
    (bundle / "manifest.sig").write_text("a signature of the old manifest")  # must not survive the edit
    dataset = base / "dataset"
    simulate(dataset, n_oa=8, n_noa=8, n_controls=0, seed=0, external=0, progress=False)
    return bundle, dataset


def test_bundle_ood_retrofits_an_old_bundle(old_bundle):
    bundle, dataset = old_bundle
    assert verify(bundle) == []
    before = {v: answers(bundle / f"model_{v}.tflite") for v in ("fp32", "fp16", "int8")}
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "bundle-ood", str(bundle), str(dataset)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert verify(bundle) == []
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["outputs"] == {"prob": "prob", "cam": "cam", "features": "features"}
    assert manifest["ood"]["file"] == "ood.npz" and "ood.npz" in manifest["files"]
    assert set(manifest["ood"]["thresholds"]) == {"fp32", "fp16", "int8"}
    step = manifest["provenance"]["ood"]
    assert step["tool"] == "noa-edge bundle-ood" and step["code_version"].startswith("noa-edge ")
    assert step["features_added_to"] == ["fp32", "fp16", "int8"]
    assert not (bundle / "manifest.sig").exists()
    assert "## Out-of-distribution guard" in (bundle / "MODEL_CARD.md").read_text()
    assert not any(p.name.startswith(".old.ood-") for p in bundle.parent.iterdir())  # staging copy removed
    for variant, old in before.items():
        new = answers(bundle / f"model_{variant}.tflite")
        for a, b in zip(old, new, strict=True):
            assert np.array_equal(a["prob"], b["prob"]) and np.array_equal(a["cam"], b["cam"])
            assert b["features"].shape == (1, 1056)


def test_bundle_ood_refuses_another_dataset(old_bundle, tmp_path):
    bundle, _ = old_bundle
    other = tmp_path / "other"
    simulate(other, n_oa=2, n_noa=2, n_controls=0, seed=7, external=0, progress=False)
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "bundle-ood", str(bundle), str(other)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "phantom-development-seed7" in proc.stderr and "trained on" in proc.stderr
