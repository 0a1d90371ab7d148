"""Every file of a bundle is hashed and checked, whatever its kind.

The test bundle is extended to every kind a converted bundle holds (fp32/fp16/int8 models, ONNX, model card,
README, fidelity report, Edge TPU preflight) and finalised by the real writer. Then, in a fresh copy each time,
one byte of one file is changed without changing its size (so only the sha256 can tell), and the bundle must
be refused with a message that names that file. Hashes are recomputed here with hashlib, not with the code
under test. A file the manifest does not list is refused too: the device would read it unchecked.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from edge.bundle import BundleError, finalize_manifest, load, verify

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "firmware_assets" / "demo-phantom"
KINDS = ["model_fp32.tflite", "model_fp16.tflite", "model_int8.tflite", "model.onnx", "MODEL_CARD.md",
         "README.md", "fidelity.json", "edgetpu_preflight.json"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def full_bundle(test_bundle, tmp_path_factory) -> Path:
    """The test bundle with every kind of file, finalised by edge.bundle.finalize_manifest."""
    out = tmp_path_factory.mktemp("full") / "bundle"
    shutil.copytree(test_bundle, out)
    fp32 = (out / "model_fp32.tflite").read_bytes()
    (out / "model_fp16.tflite").write_bytes(fp32)          # stand-ins: only the bytes matter here
    (out / "model_int8.tflite").write_bytes(fp32[::-1])
    (out / "model.onnx").write_bytes(b"onnx stand-in " * 64)
    (out / "README.md").write_text("# test bundle\nHow to run it.\n")
    (out / "fidelity.json").write_text(json.dumps({"n_rois": 3, "variants": {"fp32": {"auc": 0.9}}}) + "\n")
    (out / "edgetpu_preflight.json").write_text(json.dumps({"verdict": "maps", "passes": True}) + "\n")
    manifest = json.loads((out / "manifest.json").read_text())
    for name, file, target, dtype in (("fp16", "model_fp16.tflite", "cpu", "float16"),
                                      ("int8", "model_int8.tflite", "coral", "int8"),
                                      ("onnx", "model.onnx", "jetson", "float32")):
        manifest["variants"][name] = {"file": file, "target": target, "dtype": dtype}
    finalize_manifest(out, manifest)
    return out


@pytest.fixture
def bundle_copy(full_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(full_bundle, dst)
    return dst


def test_the_writer_hashes_every_file_of_every_kind(full_bundle):
    manifest = json.loads((full_bundle / "manifest.json").read_text())
    hashed = dict(manifest["files"])
    hashed.update({spec["file"]: spec["sha256"] for spec in manifest["variants"].values()})
    on_disk = {p.name for p in full_bundle.iterdir() if p.is_file() and p.name != "manifest.json"}
    assert set(KINDS) <= on_disk and set(hashed) == on_disk
    for name in on_disk:
        assert hashed[name] == _sha(full_bundle / name), name
    for spec in manifest["variants"].values():
        assert spec["size"] == (full_bundle / spec["file"]).stat().st_size
    assert verify(full_bundle) == []


@pytest.mark.parametrize("name", KINDS)
def test_one_changed_byte_in_any_file_is_refused_naming_it(bundle_copy, name):
    path = bundle_copy / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20                        # same size: only the hash can tell
    path.write_bytes(bytes(data))
    problems = verify(bundle_copy)
    assert any(p.startswith(f"{name}: sha256 mismatch") for p in problems), problems
    assert len(problems) == 1, problems                 # and nothing else is blamed
    with pytest.raises(BundleError, match=f"{name}: sha256 mismatch"):
        load(bundle_copy)


@pytest.mark.parametrize("name", KINDS)
def test_a_missing_file_of_any_kind_is_refused_naming_it(bundle_copy, name):
    (bundle_copy / name).unlink()
    assert [p for p in verify(bundle_copy) if p.startswith(f"{name}: missing")], verify(bundle_copy)


@pytest.mark.parametrize("name", ["fidelity.json", "edgetpu_preflight.json", "MODEL_CARD.md", "notes.txt"])
def test_a_file_the_manifest_does_not_list_is_refused(test_bundle, tmp_path, name):
    """The plain test bundle lists no fidelity.json: one dropped in beside it would be read, unchecked."""
    dst = tmp_path / "bundle"
    shutil.copytree(test_bundle, dst)
    (dst / "MODEL_CARD.md").unlink()
    manifest = json.loads((dst / "manifest.json").read_text())
    finalize_manifest(dst, manifest)                    # a valid bundle without a model card
    assert verify(dst) == []
    (dst / name).write_text("{}\n")
    assert verify(dst) == [f"{name}: not listed in manifest.json (not part of this build: remove it or "
                           "rebuild the bundle)"]


@pytest.mark.skipif(not (DEMO / "manifest.json").is_file(), reason="demo bundle not built")
def test_demo_bundle_hashes_match_an_independent_sha256():
    manifest = json.loads((DEMO / "manifest.json").read_text())
    hashed = dict(manifest["files"])
    hashed.update({spec["file"]: spec["sha256"] for spec in manifest["variants"].values()})
    assert {"MODEL_CARD.md", "README.md", "fidelity.json", "edgetpu_preflight.json"} <= set(hashed)
    for name, digest in hashed.items():
        assert digest == _sha(DEMO / name), name
    assert verify(DEMO) == []
