"""Signed bundles (edge/bundle_signing.py) through the real CLI: keygen, sign, verify --trust (good, tampered
file, re-hashed manifest, wrong key, unsigned), and `serve --trust-key` refusing unsigned or wrongly signed
bundles with exit code 2 and one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, free_port
from edge.bundle import MANIFEST, SIGNATURE, finalize_manifest
from edge.bundle_signing import SignatureError, check_signature, keygen, sign


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("keys")
    proc = _cli("bundle", "keygen", "--out", str(root / "good"))
    assert proc.returncode == 0, proc.stderr
    private, public = keygen(root / "other")
    return {"key": root / "good" / "bundle-signing.key", "pub": root / "good" / "bundle-signing.pub",
            "other_key": private, "other_pub": public}


@pytest.fixture
def bundle(test_bundle, tmp_path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(test_bundle, out)
    return out


def test_keygen_writes_pem_files_and_never_overwrites(keys):
    assert keys["key"].read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert keys["pub"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert keys["key"].stat().st_mode & 0o777 == 0o600
    proc = _cli("bundle", "keygen", "--out", str(keys["key"].parent))
    assert proc.returncode == 2 and "never overwrites" in proc.stderr


def test_sign_then_verify_with_the_trusted_key(bundle, keys):
    proc = _cli("bundle", "sign", str(bundle), "--key", str(keys["key"]))
    assert proc.returncode == 0, proc.stderr
    assert (bundle / SIGNATURE).is_file()
    proc = _cli("bundle", "verify", str(bundle), "--trust", str(keys["pub"]))
    assert proc.returncode == 0, proc.stderr
    assert "signature by the trusted key" in proc.stdout
    assert _cli("bundle", "verify", str(bundle)).returncode == 0  # manifest.sig is not an unlisted file


def test_tampered_file_is_refused_even_when_the_manifest_is_rehashed(bundle, keys):
    sign(bundle, keys["key"])
    model = bundle / "model_fp32.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    proc = _cli("bundle", "verify", str(bundle), "--trust", str(keys["pub"]))
    assert proc.returncode == 1 and "model_fp32.tflite: sha256 mismatch" in proc.stderr
    # an attacker re-hashes every file: the hashes agree again, the signature does not
    sig = (bundle / SIGNATURE).read_bytes()
    finalize_manifest(bundle, json.loads((bundle / MANIFEST).read_text()))
    (bundle / SIGNATURE).write_bytes(sig)  # keeps the old signature next to the new manifest
    assert _cli("bundle", "verify", str(bundle)).returncode == 0  # hashes alone cannot tell
    proc = _cli("bundle", "verify", str(bundle), "--trust", str(keys["pub"]))
    assert proc.returncode == 1
    assert "signature does not verify (manifest.json changed after it was signed)" in proc.stderr


def test_wrong_key_and_unsigned_are_refused(bundle, keys):
    with pytest.raises(SignatureError, match="is not signed"):
        check_signature(bundle, keys["pub"])
    sign(bundle, keys["other_key"])
    with pytest.raises(SignatureError, match="signed by key [0-9a-f]{16}, not by the trusted key"):
        check_signature(bundle, keys["pub"])
    proc = _cli("bundle", "verify", str(bundle), "--trust", str(keys["pub"]))
    assert proc.returncode == 1 and "not by the trusted key" in proc.stderr
    (bundle / SIGNATURE).write_text("ed25519 0000\nnot-base64!\n")
    with pytest.raises(SignatureError, match="unreadable signature file"):
        check_signature(bundle, keys["pub"])


def test_sign_refuses_a_damaged_bundle_and_a_bad_key(bundle, keys, tmp_path):
    (bundle / "MODEL_CARD.md").write_text("edited")
    proc = _cli("bundle", "sign", str(bundle), "--key", str(keys["key"]))
    assert proc.returncode == 1 and "does not verify, not signing it" in proc.stderr
    assert not (bundle / SIGNATURE).exists()
    with pytest.raises(SignatureError, match="not a PEM public key"):
        check_signature(bundle, keys["key"])  # the private key given where the public one belongs


@pytest.mark.parametrize("case", ["unsigned", "wrong_key"])
def test_serve_with_a_trust_key_refuses_unsigned_or_wrongly_signed_bundles(bundle, keys, tmp_path, case):
    if case == "wrong_key":
        sign(bundle, keys["other_key"])
    proc = _cli("serve", "--bundle", str(bundle), "--data-dir", str(tmp_path / "data"), "--source", "none",
                "--port", str(free_port()), "--trust-key", str(keys["pub"]))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    expected = "is not signed" if case == "unsigned" else "not by the trusted key"
    assert proc.stderr.startswith("error: --trust-key: bundle") and expected in proc.stderr
    assert "Traceback" not in proc.stderr
