"""Measure the device (base) install as `make demo` does it, and the offline wheelhouse install.

    .venv/bin/python benchmarks/device_install.py [--wheelhouse DIR] [--out FILE.json]

online: a fresh venv, pip upgraded, `pip install -e .` from this checkout (no extras, no pip cache), then
`noa-edge demo` on a free port until /api/health answers; the venv's size (du) and whether TensorFlow,
scikit-learn and matplotlib are absent. wheelhouse (with --wheelhouse, built by `make wheelhouse`): its
install.sh into a fresh venv without network (in a network namespace when `unshare -rn` works).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST_ONLY = ("tensorflow", "sklearn", "matplotlib")


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def start_demo(venv: Path, env: dict) -> float:
    """Seconds from `noa-edge demo` to the first 200 from /api/health."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(venv / "bin" / "noa-edge"), "demo", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
    try:
        while time.perf_counter() - t0 < 300:
            if proc.poll() is not None:
                raise SystemExit(f"noa-edge demo exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.2)
        raise SystemExit("noa-edge demo did not answer within 300 s")
    finally:
        proc.terminate()
        proc.wait(30)


def absent(venv: Path) -> dict:
    return {m: subprocess.run([str(venv / "bin" / "python"), "-c", f"import {m}"], capture_output=True).returncode != 0
            for m in HOST_ONLY}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheelhouse", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/issue16/device_install.json")
    args = ap.parse_args()
    env = dict(os.environ, PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}"
    command = "benchmarks/device_install.py" + (f" --wheelhouse {args.wheelhouse}" if args.wheelhouse else "")
    result: dict = {"measured": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
                    "command": command}
    with tempfile.TemporaryDirectory(prefix="noa-edge-base-") as tmp:
        venv = Path(tmp) / "venv"
        t_venv = timed([sys.executable, "-m", "venv", str(venv)])
        t_pip = timed([str(venv / "bin/pip"), "install", "--quiet", "--upgrade", "pip"], env)
        t_install = timed([str(venv / "bin/pip"), "install", "--quiet", "-e", str(ROOT)], env)
        t_start = start_demo(venv, env)
        result["make_demo_online"] = {
            "what": "python -m venv; pip install --upgrade pip; pip install -e . (base, no cache); noa-edge demo "
                    "until /api/health answers (the steps of `make demo`)",
            "venv_s": round(t_venv, 1), "pip_upgrade_s": round(t_pip, 1), "install_s": round(t_install, 1),
            "demo_start_s": round(t_start, 1), "total_s": round(t_venv + t_pip + t_install + t_start, 1),
            "venv_bytes": du_bytes(venv), "venv_mb": round(du_bytes(venv) / 1e6), "host_packages_absent": absent(venv)}
    if args.wheelhouse:
        wh = args.wheelhouse.resolve()
        with tempfile.TemporaryDirectory(prefix="noa-edge-wh-") as tmp:
            venv = Path(tmp) / "venv"
            offline = subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0
            cmd = (["unshare", "-rn"] if offline else []) + [str(wh / "install.sh"), str(venv)]
            t = timed(cmd)
            result["wheelhouse_offline"] = {
                "wheelhouse": wh.name, "wheels": len(list(wh.glob("*.whl"))), "wheelhouse_bytes": du_bytes(wh),
                "no_network_namespace": offline, "install_s": round(t, 1), "venv_bytes": du_bytes(venv),
                "host_packages_absent": absent(venv)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
