"""The device install alone. One fresh venv, installed OFFLINE from the x86_64 wheelhouse `make wheelhouse`
builds (no index, no network: in a network namespace when `unshare -rn` is allowed), serves the demo bundle and
analyses an image, and has no TensorFlow, scikit-learn or matplotlib. For aarch64 (Jetson: Python 3.10,
Raspberry Pi OS: 3.11) every base requirement must resolve to a binary wheel (`deploy/wheelhouse.sh --check`:
uv resolves for the target, pip checks each wheel's tags with --dry-run --report, nothing installed)."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys

import cv2
import httpx
import pytest

from conftest import ROOT, DaemonProcess, cine_rgb
from edge.capture import demo_cine_path
from edge.config_file import tomllib

SCRIPT = ROOT / "deploy" / "wheelhouse.sh"
DEMO_BUNDLE = ROOT / "firmware_assets" / "demo-phantom"
HOST_ONLY = ("tensorflow", "sklearn", "matplotlib")
THIS_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def base_requirements() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _pip_env() -> dict:
    import os

    return dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86_64 wheelhouse installs on an x86_64 machine")
def test_offline_wheelhouse_install_serves_the_demo_bundle(tmp_path):
    house = tmp_path / "wheelhouse"
    build = subprocess.run(["bash", str(SCRIPT), "x86_64", THIS_PYTHON, str(house)], cwd=ROOT, text=True,
                           capture_output=True, timeout=900, env=dict(_pip_env(), PIP=f"{sys.executable} -m pip"))
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    wheels = sorted(p.name for p in house.glob("*.whl"))
    assert any(w.startswith("noa_edge-") for w in wheels) and (house / "install.sh").is_file()
    assert not [w for w in wheels if re.match(r"(tensorflow|scikit_learn|matplotlib)", w)], wheels
    assert all(w.endswith(".whl") for w in wheels)  # binary only: no sdist was fetched

    venv = tmp_path / "venv"
    offline = shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"]).returncode == 0
    cmd = (["unshare", "-rn"] if offline else []) + [str(house / "install.sh"), str(venv)]
    # PIP_NO_INDEX as well: even without a network namespace pip may only read the wheelhouse
    inst = subprocess.run(cmd, cwd=tmp_path, text=True, capture_output=True, timeout=900,
                          env=dict(_pip_env(), PIP_NO_INDEX="1", PYTHON=sys.executable))
    assert inst.returncode == 0, inst.stdout[-3000:] + inst.stderr[-3000:]

    python = venv / "bin" / "python"
    where = subprocess.run([str(python), "-c", "import edge; print(edge.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert str(venv) in where.stdout, where  # the installed package, not this checkout
    for module in HOST_ONLY:
        r = subprocess.run([str(python), "-c", f"import {module}"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, f"{module} is in the device install"

    d = DaemonProcess(DEMO_BUNDLE, tmp_path / "data", program=[str(venv / "bin" / "noa-edge")], threads=None)
    try:
        d.wait_ready(timeout=180)
        health = httpx.get(d.url + "/api/health", timeout=30).json()
        assert health["bundle"]["name"] == "demo-phantom"
        ok, png = cv2.imencode(".png", cv2.cvtColor(cine_rgb(demo_cine_path(), 10), cv2.COLOR_RGB2BGR))
        r = httpx.post(d.url + "/api/analyze", files={"image": ("frame.png", png.tobytes(), "image/png")},
                       data={"fsh": "20", "volume_ml": "8", "edv": "3"}, timeout=180)
        assert r.status_code == 200, r.text
        exam = r.json()
        assert 0.0 <= exam["dl_probability"] <= 1.0 and exam["nomogram_probability"] is not None
        assert httpx.get(f"{d.url}/api/exams/{exam['id']}", timeout=30).status_code == 200
    finally:
        d.stop()


@pytest.mark.slow  # network: ~25 s each here (the index offers no metadata files, so pip fetches each wheel)
@pytest.mark.parametrize("python", ["3.10", "3.11"])
def test_aarch64_requirements_resolve_to_binary_wheels(tmp_path, python):
    """deploy/wheelhouse.sh --check: uv resolves the base requirements for aarch64 and the TARGET Python
    (markers such as tomli's python_version<'3.11' evaluated for it, which pip does not do), then pip finds a
    wheel with a matching tag for every pin without installing (--dry-run --report). A requirement without a
    wheel fails the script naming it."""
    out = tmp_path / "check"
    r = subprocess.run(["bash", str(SCRIPT), "aarch64", python, str(out), "--check"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900, env=dict(_pip_env(), PIP=f"{sys.executable} -m pip"))
    assert r.returncode == 0, f"aarch64 / Python {python}: {r.stderr[-3000:]}"
    pins = [line for line in (out / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    pinned = {re.split(r"[=<> ]", line, maxsplit=1)[0].lower() for line in pins}
    wanted = {re.split(r"[<>=;!~ \[]", req, maxsplit=1)[0].lower().replace("_", "-") for req in base_requirements()
              if "python_version<'3.11'" not in req.replace(" ", "").replace('"', "'") or python == "3.10"}
    assert wanted <= pinned, f"not resolved: {wanted - pinned}"
    if python == "3.10":
        assert {"tomli", "exceptiongroup"} <= pinned  # the Python 3.10 markers were evaluated for 3.10
    assert not pinned & {"tensorflow", "tensorflow-cpu", "scikit-learn", "matplotlib"}
    urls = (out / "resolved.txt").read_text().split()
    assert len(urls) == len(pins), (urls, pins)  # one wheel for every pin
    assert all(u.endswith(".whl") for u in urls) and not [u for u in urls if "x86_64" in u]
    tag = f"cp{python.replace('.', '')}"
    assert any("aarch64" in u for u in urls) and all(
        "-none-any.whl" in u or "aarch64" in u for u in urls), urls
    assert any(f"{tag}-{tag}" in u or "abi3" in u for u in urls)
    assert not (out / ".target").exists()  # nothing installed
