"""`noa-edge doctor`: one line per check, --json shape, and exit 1 when a check fails (port taken by another
program, broken bundle, data folder unusable, missing capture device, implausible clock, wrong signature)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from conftest import ROOT, free_port
from edge import doctor

CHECKS = {"runtime litert", "runtime tflite-runtime", "runtime onnxruntime", "delegate libedgetpu", "coral usb",
          "capture", "bundle", "signature", "port", "disk", "clock", "data folder"}


def _doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", "doctor", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def _config(tmp_path, test_bundle, **extra) -> str:
    values = {"bundle": str(test_bundle), "data_dir": str(tmp_path / "data"), "port": free_port(), "source": "none",
              **extra}
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    cfg = tmp_path / "noa-edge.toml"
    cfg.write_text("[serve]\n" + "\n".join(lines) + "\n")
    (tmp_path / "data").mkdir(exist_ok=True)
    return str(cfg)


def test_healthy_device_json_shape(tmp_path, test_bundle):
    r = _doctor("--json", "--config", _config(tmp_path, test_bundle))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["config"].endswith("noa-edge.toml")
    assert {c["name"] for c in report["checks"]} == CHECKS
    assert all(set(c) == {"name", "status", "detail"} and c["status"] in ("ok", "warn", "info", "fail")
               for c in report["checks"])
    by = {c["name"]: c for c in report["checks"]}
    assert by["runtime litert"]["status"] == "ok"  # the tests' own runtime
    assert by["bundle"]["status"] == "ok" and by["data folder"]["status"] == "ok"
    assert by["signature"]["status"] in ("warn", "ok")  # the test bundle is unsigned: a warning, not a failure
    # the text form: one line per check
    text = _doctor("--config", _config(tmp_path, test_bundle))
    assert text.returncode == 0 and len(text.stdout.strip().splitlines()) == len(CHECKS)


def test_port_taken_by_another_program_fails(tmp_path, test_bundle):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        taken = s.getsockname()[1]
        r = _doctor("--json", "--config", _config(tmp_path, test_bundle), "--port", str(taken))
    assert r.returncode == 1, r.stdout
    report = json.loads(r.stdout)
    port = next(c for c in report["checks"] if c["name"] == "port")
    assert report["ok"] is False and port["status"] == "fail" and "in use by another program" in port["detail"]


def test_broken_bundle_and_bad_data_folder_fail(tmp_path, test_bundle):
    bad = tmp_path / "bundle"
    shutil.copytree(test_bundle, bad)
    model = bad / "model_fp32.tflite"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    r = _doctor("--config", _config(tmp_path, test_bundle), "--bundle", str(bad), "--data-dir", str(not_a_folder))
    assert r.returncode == 1
    lines = {line.split()[1] if line.startswith(("FAIL", "OK", "WARN", "INFO")) else "": line
             for line in r.stdout.splitlines()}
    assert lines["bundle"].startswith("FAIL") and "model_fp32.tflite" in lines["bundle"]
    assert any(line.startswith("FAIL") and "is not a folder" in line for line in r.stdout.splitlines())


def test_missing_capture_device_fails(tmp_path, test_bundle):
    r = _doctor("--json", "--config", _config(tmp_path, test_bundle, source="v4l2:97"))
    assert r.returncode == 1
    capture = next(c for c in json.loads(r.stdout)["checks"] if c["name"] == "capture")
    assert capture["status"] == "fail" and "/dev/video97 does not exist" in capture["detail"]


def test_config_errors_are_reported(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[serve]\nprot = 1\n")
    r = _doctor("--config", str(cfg))
    assert r.returncode == 2 and "unknown key 'prot'" in r.stderr


def test_clock_sanity():
    assert doctor.clock(datetime(2026, 5, 1, tzinfo=timezone.utc)).status == "ok"
    assert doctor.clock(datetime(1970, 1, 1, tzinfo=timezone.utc)).status == "fail"
    assert doctor.clock(datetime(2207, 1, 1, tzinfo=timezone.utc)).status == "fail"


def test_coral_seen_in_sysfs(tmp_path):
    for name, vendor, product in (("1-1", "18d1", "9302"), ("1-2", "046d", "c52b")):
        dev = tmp_path / name
        dev.mkdir()
        (dev / "idVendor").write_text(vendor + "\n")
        (dev / "idProduct").write_text(product + "\n")
    _, usb = doctor.edgetpu(sysfs=tmp_path)
    assert usb.status == "ok" and "1-1 (18d1:9302)" in usb.detail and "046d" not in usb.detail
    _, none = doctor.edgetpu(sysfs=tmp_path / "absent", wanted=True)
    assert none.status == "fail"  # the configured variant needs the Coral


def test_signature_checked_with_trust_key(tmp_path, test_bundle):
    signing = pytest.importorskip("edge.bundle_signing")
    bundle = tmp_path / "b"
    shutil.copytree(test_bundle, bundle)
    private, public = signing.keygen(tmp_path / "keys")
    assert {c.name: c.status for c in doctor.bundle(str(bundle), str(public))}["signature"] == "fail"  # unsigned
    signing.sign(bundle, private)
    assert {c.name: c.status for c in doctor.bundle(str(bundle), str(public))}["signature"] == "ok"
    _, other = signing.keygen(tmp_path / "other")
    assert {c.name: c.status for c in doctor.bundle(str(bundle), str(other))}["signature"] == "fail"
