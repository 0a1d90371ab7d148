"""Safe bundle updates (edge/bundle_install.py) and the daemon's SIGHUP reload, for real: the CLI installs into
A/B slots and switches `current` by rename; a process killed between copy and switch leaves the old bundle
current; a running `noa-edge serve` reloads on SIGHUP while a stream of analyses goes on (none fails, results
switch to the new bundle's name and sha), keeps the old model when the reload fails, and follows a rollback."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import httpx
import pytest

from conftest import ROOT, DaemonProcess, cine_rgb, wait_until
from edge.bundle import MANIFEST, finalize_manifest, verify
from edge.bundle_install import InstallError, install, rollback, status
from edge.bundle_signing import keygen, sign


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _named_copy(src: Path, dst: Path, name: str) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest["name"] = name
    finalize_manifest(dst, manifest)
    return dst


@pytest.fixture
def two(test_bundle, tmp_path) -> dict:
    return {"a": _named_copy(test_bundle, tmp_path / "a", "bundle-a"),
            "b": _named_copy(test_bundle, tmp_path / "b", "bundle-b"), "data": tmp_path / "data"}


def _current_name(data: Path) -> str:
    current = data / "bundles" / "current"
    assert verify(current) == [], "current must always be a complete, verified bundle"
    return json.loads((current / MANIFEST).read_text())["name"]


def test_install_switches_atomically_and_rollback_goes_back(two):
    data = two["data"]
    proc = _cli("bundle", "install", str(two["a"]), "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert _current_name(data) == "bundle-a" and os.readlink(data / "bundles" / "current") == "slot-a"
    proc = _cli("bundle", "install", str(two["b"]), "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert _current_name(data) == "bundle-b"
    assert status(data) == {"current": "slot-b", "current_name": "bundle-b", "previous": "slot-a",
                            "previous_name": "bundle-a"}
    proc = _cli("bundle", "rollback", "--data-dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert _current_name(data) == "bundle-a" and status(data)["previous_name"] == "bundle-b"
    rollback(data)  # a second rollback undoes the first
    assert _current_name(data) == "bundle-b"
    # a third install replaces the slot before last, never the running one
    install(two["a"], data)
    assert status(data)["current"] == "slot-a" and status(data)["previous_name"] == "bundle-b"


def test_refused_installs_change_nothing(two, tmp_path):
    data = two["data"]
    with pytest.raises(InstallError, match="no previous bundle"):
        rollback(data)
    install(two["a"], data)
    (two["b"] / "MODEL_CARD.md").write_text("changed")  # not what the manifest hashes
    proc = _cli("bundle", "install", str(two["b"]), "--data-dir", str(data))
    assert proc.returncode == 1 and "MODEL_CARD.md: sha256 mismatch" in proc.stderr and "nothing changed" in proc.stderr
    assert _current_name(data) == "bundle-a" and status(data)["previous"] is None
    # with a trust key (here from the device config's [serve] table): unsigned is refused, signed goes in
    private, public = keygen(tmp_path / "keys")
    config = tmp_path / "noa-edge.toml"
    config.write_text(f'[serve]\ndata_dir = "{data}"\ntrust_key = "{public}"\n')
    fresh = _named_copy(two["a"], tmp_path / "c", "bundle-c")
    proc = _cli("bundle", "install", str(fresh), "--config", str(config))
    assert proc.returncode == 1 and "is not signed" in proc.stderr and _current_name(data) == "bundle-a"
    sign(fresh, private)
    proc = _cli("bundle", "install", str(fresh), "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert _current_name(data) == "bundle-c"


_KILL_BEFORE_SWITCH = """
import os, signal, sys
from edge import bundle_install
bundle_install._before_switch = lambda: os.kill(os.getpid(), signal.SIGKILL)
bundle_install.install(sys.argv[1], sys.argv[2])
"""


def test_a_kill_between_copy_and_switch_leaves_the_old_bundle_current(two):
    data = two["data"]
    install(two["a"], data)
    (data / "bundles" / ".incoming-999").mkdir()  # what a copy cut short by a power cut leaves
    proc = subprocess.run([sys.executable, "-c", _KILL_BEFORE_SWITCH, str(two["b"]), str(data)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _current_name(data) == "bundle-a"  # the copy was complete, the switch never happened
    assert not (data / "bundles" / ".incoming-999").exists()
    install(two["b"], data)  # the next install goes through
    assert _current_name(data) == "bundle-b" and status(data)["previous_name"] == "bundle-a"


# ------------------------------------------------------------------------------------------ SIGHUP reload
class _Stream(threading.Thread):
    """Analyses one after another until stopped; records (status, bundle name, bundle sha256) of each."""

    def __init__(self, url: str, png: bytes):
        super().__init__(daemon=True)
        self.url, self.png, self.results = url, png, []
        self.stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=120) as c:
            while not self.stop_event.is_set():
                r = c.post("/api/analyze", files={"image": ("f.png", self.png, "image/png")})
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                bundle = body.get("bundle") or {}
                self.results.append((r.status_code, bundle.get("name"), bundle.get("sha256")))

    def names(self) -> list:
        return [n for _, n, _ in list(self.results)]


def _sha(bundle: Path) -> str:
    return hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()


def test_sighup_reloads_during_a_stream_of_analyses(two, demo_cine):
    data = two["data"]
    install(two["a"], data)
    png = cv2.imencode(".png", cv2.cvtColor(cine_rgb(demo_cine, 30), cv2.COLOR_RGB2BGR))[1].tobytes()
    d = DaemonProcess(data / "bundles" / "current", data, extra=["--no-auto"]).wait_ready()
    stream = _Stream(d.url, png)
    try:
        stream.start()
        wait_until(lambda: stream.names().count("bundle-a") >= 3, "analyses on bundle A")
        install(two["b"], data)
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: stream.names().count("bundle-b") >= 3, "analyses on bundle B after SIGHUP")
        # a reload that fails (the current slot damaged on the card) keeps the model that is running
        # A new, truncated file in place of the model (rename, as an install writes): truncating the running
        # model's own file would pull pages from under the interpreter's mmap of it (SIGBUS), a different test.
        model = data / "bundles" / "current" / "model_fp32.tflite"
        damaged = model.with_name("damaged.tmp")
        damaged.write_bytes(model.read_bytes()[:-100])
        os.replace(damaged, model)
        d.proc.send_signal(signal.SIGHUP)
        health = wait_until(lambda: (h := httpx.get(d.url + "/api/health").json())["bundle_reloads"]["failed"] == 1
                            and h, "the failed reload in /api/health")
        assert health["bundle"]["name"] == "bundle-b" and health["bundle_reloads"]["ok"] == 1
        assert "truncated" in health["bundle_reloads"]["last_error"]
        n = len(stream.results)
        wait_until(lambda: len(stream.results) >= n + 2, "analyses after the failed reload")
        rollback(data)
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: stream.names()[-1] == "bundle-a", "analyses on bundle A after rollback + SIGHUP")
    finally:
        stream.stop_event.set()
        stream.join(150)
        log = d.log()
        d.stop()
    assert stream.results and all(status == 200 for status, _, _ in stream.results), stream.results
    names = stream.names()
    first_b, last_b = names.index("bundle-b"), len(names) - 1 - names[::-1].index("bundle-b")
    assert set(names[:first_b]) == {"bundle-a"} and set(names[first_b:last_b + 1]) == {"bundle-b"}
    assert {sha for _, n, sha in stream.results if n == "bundle-b"} == {_sha(two["b"])}
    assert {sha for _, n, sha in stream.results[:first_b]} == {_sha(two["a"])}
    assert "bundle reloaded: bundle-a" in log and "bundle reload failed, still serving bundle-b" in log


def test_a_daemon_with_a_trust_key_never_reloads_an_unsigned_bundle(two, tmp_path):
    data = two["data"]
    private, public = keygen(tmp_path / "keys")
    sign(two["a"], private)
    install(two["a"], data, trust_key=public)
    d = DaemonProcess(data / "bundles" / "current", data, extra=["--no-auto", "--trust-key", str(public)]).wait_ready()
    try:
        install(two["b"], data)  # someone installs an unsigned bundle without the key
        d.proc.send_signal(signal.SIGHUP)
        health = wait_until(lambda: (h := httpx.get(d.url + "/api/health").json())["bundle_reloads"]["failed"] == 1
                            and h, "the refused reload")
        assert health["bundle"]["name"] == "bundle-a" and "is not signed" in health["bundle_reloads"]["last_error"]
    finally:
        d.stop()
