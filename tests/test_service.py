"""The systemd service: deploy/noa-edge.service passes `systemd-analyze verify` with the hardening the issue
asks for, and a real daemon sends READY=1 then WATCHDOG=1 to $NOTIFY_SOCKET (a socket this test binds);
the watchdog stays silent while the daemon is unhealthy."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading

import httpx
import pytest

from conftest import ROOT, DaemonProcess, poll
from edge import service_notify
from edge.service_notify import ServiceNotifier

UNIT = ROOT / "deploy" / "noa-edge.service"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_has_the_hardening_and_notify_settings():
    s = _unit_settings()
    expected = {"Type": "notify", "User": "noa-edge", "StateDirectory": "noa-edge",
                "ConfigurationDirectory": "noa-edge", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
                "PrivateTmp": "yes", "Restart": "on-failure", "WatchdogSec": "30"}
    for key, value in expected.items():
        assert s.get(key) == [value], f"{key}={s.get(key)}"
    assert s["ExecStart"][0].endswith("noa-edge serve --config /etc/noa-edge/noa-edge.toml")
    assert "--token" not in s["ExecStart"][0]


def test_systemd_analyze_verify(tmp_path):
    """systemd-analyze checks that ExecStart's binary exists, so the unit is verified as installed: the same
    file with ExecStart pointing at this checkout's real noa-edge. Unknown keys and bad values are only
    warnings for systemd (exit 0), so any output naming the unit fails the test too."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: `make sysdeps` installs Debian's systemd package"
    exe = shutil.which("noa-edge") or str(ROOT / ".venv" / "bin" / "noa-edge")
    text = UNIT.read_text().replace("/opt/noa-edge/venv/bin/noa-edge", exe)
    assert exe in text
    unit = tmp_path / "noa-edge.service"
    unit.write_text(text)
    proc = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert not [line for line in output.splitlines() if "noa-edge" in line], output
    # the check is real: a misspelt key is reported
    bad = tmp_path / "bad" / "noa-edge.service"
    bad.parent.mkdir()
    bad.write_text(text.replace("WatchdogSec=", "WatchdgSec="))
    proc = subprocess.run([analyze, "verify", str(bad)], capture_output=True, text=True, timeout=120)
    assert "WatchdgSec" in proc.stdout + proc.stderr


@pytest.fixture
def notify_socket(tmp_path, monkeypatch):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(120)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_daemon_sends_ready_then_watchdog(tmp_path, test_bundle, notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # 1 s: WATCHDOG=1 every 0.5 s
    d = DaemonProcess(test_bundle, tmp_path / "data")
    try:
        first = notify_socket.recv(4096).decode()
        assert first == "READY=1", first
        assert httpx.get(d.url + "/api/health", timeout=30).status_code == 200  # serving once READY=1 is sent
        assert notify_socket.recv(4096).decode() == "WATCHDOG=1"
        assert notify_socket.recv(4096).decode() == "WATCHDOG=1"
    finally:
        d.stop()


def test_watchdog_silent_while_unhealthy(notify_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # every 0.05 s
    healthy, asked = threading.Event(), []

    def check() -> bool:
        asked.append(1)
        return healthy.is_set()

    notifier = ServiceNotifier(check)
    notifier.ready()
    try:
        assert notify_socket.recv(4096) == b"READY=1"
        assert poll(lambda: len(asked) >= 5, timeout=30), "the watchdog thread never asked"
        notify_socket.setblocking(False)
        with pytest.raises(BlockingIOError):
            notify_socket.recv(4096)  # five periods unhealthy: nothing sent
        notify_socket.setblocking(True)
        notify_socket.settimeout(30)
        healthy.set()
        assert notify_socket.recv(4096) == b"WATCHDOG=1"
    finally:
        notifier.stop()


def test_notify_without_systemd_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert service_notify.notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process's watchdog
    assert service_notify.watchdog_seconds() is None
    monkeypatch.delenv("WATCHDOG_PID")
    assert service_notify.watchdog_seconds() == 30.0
