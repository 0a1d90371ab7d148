"""/openapi.json tells the truth: schemathesis (bounded budget) against the real daemon checks that every
status code, content type and response body it gets is the one the schema declares, and that no request
makes a 5xx. Counts go to test-artifacts/schemathesis.txt."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, DaemonProcess
from test_daemon_api import CLINICAL, cine_frame_png

ARTIFACTS = ROOT / "test-artifacts"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
BINARY = {"/live.jpg": "image/jpeg", "/exams/{exam_id}/{kind}.png": "image/png",
          "/exams/{exam_id}/report.pdf": "application/pdf", "/exams/{exam_id}/sc.dcm": "application/dicom",
          "/exams/{exam_id}/sr.dcm": "application/dicom", "/api/exams/{exam_id}/nomogram.svg": "image/svg+xml",
          "/metrics": "text/plain"}


@pytest.fixture(scope="module")
def daemon(test_bundle, demo_cine, tmp_path_factory):
    d = DaemonProcess(test_bundle, tmp_path_factory.mktemp("openapi"), source=f"video:{demo_cine}",
                      extra=["--no-auto"]).wait_ready()
    with httpx.Client(base_url=d.url, timeout=60) as c:  # exam 1 exists: the schema's example id reaches 200s
        r = c.post("/api/analyze", files={"image": ("f.png", cine_frame_png(demo_cine), "image/png")}, data=CLINICAL)
        assert r.status_code == 200 and r.json()["id"] == 1, r.text
    yield d
    d.stop()


def test_schema_declares_media_types_and_one_error_body(daemon):
    spec = httpx.get(daemon.url + "/openapi.json").json()
    for path, media in BINARY.items():
        assert media in spec["paths"][path]["get"]["responses"]["200"]["content"], path
    assert "image/jpeg" in spec["paths"]["/exams/{exam_id}/{kind}.png"]["get"]["responses"]["200"]["content"]
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert resp["content"]["application/json"]["schema"] == error_ref, (method, path, status)
            assert {"401", "421", "500"} <= set(op["responses"]), (method, path)
            if method != "get":
                assert {"403", "413"} <= set(op["responses"]), (method, path)
    assert "HTTPValidationError" not in spec["components"]["schemas"]


@pytest.mark.timeout(300)
def test_schemathesis_conformance(daemon, tmp_path):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis is a [dev] dependency: pip install -e '.[dev]'"
    # /live.mjpg never ends by design (its media type is checked above); everything else is exercised
    cmd = [st, "run", daemon.url + "/openapi.json", "--checks", CHECKS, "--max-examples", "5", "--seed", "7",
           "--workers", "1", "--request-timeout", "30", "--exclude-path", "/live.mjpg", "--no-color"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=280)
    out = proc.stdout + proc.stderr
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.txt").write_text(out)
    cases = re.search(r"(\d+) generated", out)
    print(f"\nschemathesis: {cases.group(0) if cases else '?'} cases, exit {proc.returncode}")
    assert proc.returncode == 0, out[-6000:]
    assert cases and int(cases.group(1)) > 100, out[-2000:]
    assert httpx.get(daemon.url + "/api/health").json()["status"] == "ok"  # still up after the fuzzing
