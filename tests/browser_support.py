"""What the Chromium tests share (helpers; the fixtures are in browser_fixtures.py): axe-core injection, the
pixel hash the daemon stores with each exam, waits on the page's state, screenshots."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from conftest import ROOT

AXE = ROOT / ".npm" / "node_modules" / "axe-core" / "axe.min.js"   # `make axe` (part of `make test`)
ARTIFACTS = ROOT / "test-artifacts"
SAMPLES = ROOT / "docs" / "samples"
UPDATE_DOCS = bool(os.environ.get("NOA_EDGE_UPDATE_DOCS_SCREENSHOT"))


def docs_bundle(test_bundle: Path) -> Path:
    """NOA_EDGE_UPDATE_DOCS_SCREENSHOT=1 runs the pages on the shipped demo bundle for the docs/ screenshots."""
    return ROOT / "firmware_assets" / "demo-phantom" if UPDATE_DOCS else test_bundle


def axe_violations(page) -> list[dict]:
    """axe-core's violations on the page as it is now: [{id, impact, nodes, targets}] (needs bypass_csp=True
    on the context: the script is injected inline)."""
    assert AXE.is_file(), f"{AXE} missing: run `make axe`"
    page.add_script_tag(path=str(AXE))
    return page.evaluate("""async () => {
        const r = await axe.run(document, { resultTypes: ["violations"] });
        return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length,
                                          targets: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
    }""")


def frame_sha256(png: bytes) -> str:
    """The daemon's frame hash: sha256 of the uint8 RGB pixels (H, W, 3), C-order."""
    rgb = np.ascontiguousarray(np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8))
    return hashlib.sha256(rgb.tobytes()).hexdigest()


def roi_on_screen(page) -> list[int]:
    return [int(v) for v in page.locator("#roi-text").inner_text().split(",")]


def wait_roi(page, roi) -> None:
    """Until the page shows exactly this ROI."""
    page.wait_for_function("(want) => document.getElementById('roi-text').textContent === want",
                           arg=", ".join(map(str, roi)))


def wait_result(page, previous: str | None = None) -> int:
    """Until the result panel shows an exam other than `previous`; its id."""
    page.wait_for_function("(prev) => { const r = document.getElementById('result');"
                           " return !r.hidden && r.dataset.examId && r.dataset.examId !== prev; }",
                           arg=previous or "", timeout=60000)
    return int(page.locator("#result").get_attribute("data-exam-id"))


def exam_total(url: str) -> int:
    return httpx.get(f"{url}/api/exams?limit=1").json()["total"]


def wait_live_moved_on(url: str, seq: int, by: int = 3, timeout: float = 30.0) -> int:
    """Poll /live.jpg until the source is `by` frames past `seq`; the new sequence number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/live.jpg")
        if r.status_code == 200 and int(r.headers["X-Frame-Seq"]) >= seq + by:
            return int(r.headers["X-Frame-Seq"])
        time.sleep(0.1)
    raise AssertionError(f"the live source did not move past frame {seq} within {timeout} s")


def shot(page, name: str, docs_name: str | None = None, full_page: bool = True) -> Path:
    """Screenshot to test-artifacts/ (and docs/ when NOA_EDGE_UPDATE_DOCS_SCREENSHOT is set)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=full_page)
    if UPDATE_DOCS and docs_name:
        (ROOT / "docs" / docs_name).write_bytes(path.read_bytes())
    return path
