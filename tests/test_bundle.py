"""Bundle verification (tampered, truncated, missing, wrong schema refused, naming the file), the
`noa-edge bundle verify/info` CLI, and the device runtime wrapper on a real bundle in real LiteRT.

The Coral is not on this machine: the Edge TPU test only checks that asking for the edgetpu variant
without libedgetpu gives a clear error instead of a crash."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import bundle as bundle_mod
from edge.bundle import BundleError, finalize_manifest, load, verify
from edge.runtime import ModelError, ModelRunner, RuntimeUnavailable, find_runtime

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bundle_copy(test_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(test_bundle, dst)
    return dst


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_intact_bundle_loads(bundle_copy):
    b = load(bundle_copy)
    assert b.name == "test-bundle" and b.synthetic_demo and b.threshold == 0.5
    assert verify(bundle_copy) == []
    assert b.choose_variant("cpu") == "fp32"
    assert b.manifest["files"]["MODEL_CARD.md"] == bundle_mod.sha256_file(bundle_copy / "MODEL_CARD.md")


def test_one_flipped_byte_is_refused_naming_the_file(bundle_copy):
    model = bundle_copy / "model_fp32.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load(bundle_copy)
    assert "model_fp32.tflite: sha256 mismatch" in str(err.value)


def test_truncated_file_is_refused(bundle_copy):
    model = bundle_copy / "model_fp32.tflite"
    model.write_bytes(model.read_bytes()[:-100])
    with pytest.raises(BundleError, match=r"model_fp32.tflite: truncated: \d+ bytes, manifest says \d+"):
        load(bundle_copy)


def test_missing_file_is_refused(bundle_copy):
    (bundle_copy / "MODEL_CARD.md").unlink()
    with pytest.raises(BundleError, match="MODEL_CARD.md: missing"):
        load(bundle_copy)


def test_wrong_schema_version_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["schema_version"] = 2
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest.json: schema_version 2 is not supported"):
        load(bundle_copy)


def test_edited_manifest_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["threshold"] = 0.1  # a hand edit that no file hash would catch
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="manifest_sha256 mismatch"):
        load(bundle_copy)


def test_edited_nomogram_is_refused_even_with_a_recomputed_manifest_digest(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["nomogram"]["intercept"] += 1.0
    manifest["manifest_sha256"] = bundle_mod.manifest_digest(manifest)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert verify(bundle_copy) == ["manifest.json: embedded nomogram does not match nomogram_sha256"]


def test_missing_or_broken_manifest(tmp_path, bundle_copy):
    assert verify(tmp_path / "nope") == [f"{tmp_path / 'nope'}: not a folder (a bundle is a folder with manifest.json)"]
    (bundle_copy / "manifest.json").write_text("{not json")
    assert verify(bundle_copy)[0].startswith("manifest.json: not valid JSON")
    (bundle_copy / "manifest.json").unlink()
    assert verify(bundle_copy) == [f"manifest.json: missing in {bundle_copy}"]


def test_path_outside_bundle_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["../evil"] = "0" * 64
    finalize = {k: v for k, v in manifest.items()}
    finalize["manifest_sha256"] = bundle_mod.manifest_digest(finalize)
    (bundle_copy / "manifest.json").write_text(json.dumps(finalize))
    assert any("../evil: points outside the bundle" in p for p in verify(bundle_copy))


def test_finalize_manifest_lists_every_file(bundle_copy):
    (bundle_copy / "extra.txt").write_text("x")
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    finalize_manifest(bundle_copy, manifest)
    assert "extra.txt" in load(bundle_copy).manifest["files"]


def test_cli_verify_ok_and_refused(bundle_copy):
    ok = _cli("bundle", "verify", str(bundle_copy))
    assert ok.returncode == 0 and ok.stdout.startswith("OK test-bundle")
    model = bundle_copy / "model_fp32.tflite"
    model.write_bytes(model.read_bytes()[:1000])
    bad = _cli("bundle", "verify", str(bundle_copy))
    assert bad.returncode == 1 and "model_fp32.tflite: truncated" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_info_shows_variants_nomogram_and_fidelity(bundle_copy):
    fidelity = {"n_rois": 10, "threshold": 0.5, "variants": {"fp32": {
        "auc": 0.9, "delta_auc": 0.0, "agreement": 1.0, "mean_abs_dprob": 1e-6, "max_abs_dprob": 2e-6, "cam_r": 1.0}}}
    (bundle_copy / "fidelity.json").write_text(json.dumps(fidelity))
    finalize_manifest(bundle_copy, json.loads((bundle_copy / "manifest.json").read_text()))
    proc = _cli("bundle", "info", str(bundle_copy))
    assert proc.returncode == 0, proc.stderr
    assert "SYNTHETIC DEMO" in proc.stdout and "model_fp32.tflite" in proc.stdout
    assert "nomogram    fitted" in proc.stdout and "fidelity vs Keras on 10 held-out ROIs" in proc.stdout
    as_json = json.loads(_cli("bundle", "info", str(bundle_copy), "--json").stdout)
    assert as_json["fidelity"]["n_rois"] == 10


def test_runner_runs_in_real_litert_and_records_what_runs(test_bundle):
    runner = load(test_bundle).runner()
    size = runner.input_shape[1]
    roi = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    prob, cam = runner.run(roi)
    assert 0.0 <= prob <= 1.0 and cam.dtype == np.float32 and cam.shape == runner.cam_shape
    assert runner.run(roi)[0] == prob  # deterministic
    info = runner.info()
    assert info["runtime"] == "ai_edge_litert" and info["variant"] == "fp32" and "delegate" in info
    with pytest.raises(ValueError, match="ROI must be uint8"):
        runner.run(roi.astype(np.float32))


def test_edgetpu_variant_without_the_coral_is_a_clear_error(test_bundle):
    # no libedgetpu on this machine (that is what is mocked away: the device)
    with pytest.raises(RuntimeUnavailable, match="Edge TPU delegate libedgetpu"):
        ModelRunner(test_bundle / "model_fp32.tflite", variant="edgetpu")


def test_model_errors_are_clear(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        ModelRunner(tmp_path / "missing.tflite")
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        ModelRunner(junk)


def test_unknown_runtime_and_absent_runtime():
    with pytest.raises(ValueError, match="unknown runtime"):
        find_runtime("onnx")
    with pytest.raises(RuntimeUnavailable, match="no TFLite runtime found"):
        find_runtime("tflite_runtime")  # not installed in the main env (it lives in .venv-tflite)
