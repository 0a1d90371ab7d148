"""The result page in a real browser: Debian's Chromium driven by Playwright against `noa-edge serve`
(real LiteRT, the phantom cine as the live source). Opens the page, moves the ROI, enters FSH / volume /
EDV, sees the result and the nomogram; saves a screenshot to test-artifacts/ (and docs/ when asked)."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from conftest import ROOT, DaemonProcess

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def daemon(test_bundle, demo_cine, tmp_path_factory):
    # NOA_EDGE_UPDATE_DOCS_SCREENSHOT=1 runs the page on the shipped demo bundle for docs/screenshot-result.png
    bundle = ROOT / "firmware_assets" / "demo-phantom" if os.environ.get("NOA_EDGE_UPDATE_DOCS_SCREENSHOT") else test_bundle
    d = DaemonProcess(bundle, tmp_path_factory.mktemp("data"), source=f"video:{demo_cine}",
                      extra=["--no-auto"]).wait_ready()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is required (make sysdeps)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_page_roi_form_result_nomogram(daemon, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    requests_outside = []
    page.on("request", lambda r: requests_outside.append(r.url) if not r.url.startswith(daemon.url) and
            not r.url.startswith(("blob:", "data:")) else None)
    page.goto(daemon.url + "/")
    assert page.locator("#demo-banner").inner_text().strip() == "synthetic demo model — not for diagnosis"
    page.wait_for_function("document.getElementById('live').naturalWidth === 800", timeout=20000)
    page.wait_for_function("document.getElementById('roi-text').textContent.split(',').length === 4", timeout=20000)
    before = [int(v) for v in page.locator("#roi-text").inner_text().split(",")]

    # move the ROI box 40 screen pixels right and 20 down, then enlarge it from the corner handle
    box = page.locator("#roi").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2 + 20, steps=5)
    page.mouse.up()
    handle = page.locator("#roi-handle").bounding_box()
    page.mouse.move(handle["x"] + 7, handle["y"] + 7)
    page.mouse.down()
    page.mouse.move(handle["x"] + 27, handle["y"] + 17, steps=5)
    page.mouse.up()
    moved = [int(v) for v in page.locator("#roi-text").inner_text().split(",")]
    assert moved[0] > before[0] and moved[1] > before[1], (before, moved)
    assert moved[2] > before[2] and moved[3] > before[3], (before, moved)

    # an out-of-range value is refused with a clear message before anything is sent
    page.fill("#fsh", "-4")
    page.click("#analyze")
    assert "outside the plausible range" in page.locator("#form-error").inner_text()
    assert page.locator("#result").is_hidden()

    page.fill("#fsh", "21.5")
    page.fill("#volume_ml", "8.4")
    page.fill("#edv", "1.9")
    page.click("#analyze")
    page.wait_for_selector("#nomogram svg", timeout=30000)
    label = page.locator("#result-label").inner_text()
    assert label in ("NOA", "OA")
    assert page.locator("#result-nomo").inner_text() != "–"
    assert "nomogram" in page.locator("#result-basis").inner_text()
    assert page.locator("#points-table tr").count() == 5  # 4 predictors + total
    assert page.locator("#nomogram svg circle").count() >= 4  # this patient's values marked
    page.wait_for_function("document.getElementById('result-overlay').naturalWidth > 0")

    exam_id = int(page.locator("#result").get_attribute("data-exam-id"))
    stored = httpx.get(f"{daemon.url}/api/exams/{exam_id}").json()
    assert stored["roi"] == moved and stored["roi_method"] == "manual"  # the ROI the user set is recorded
    assert stored["inputs"]["fsh"] == 21.5

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "daemon-result.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20000
    if os.environ.get("NOA_EDGE_UPDATE_DOCS_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "screenshot-result.png")

    # DL-only when the clinical values are missing, labelled as such
    for field in ("#fsh", "#volume_ml", "#edv"):
        page.fill(field, "")
    page.click("#analyze")
    page.wait_for_function("document.getElementById('result-basis').textContent.includes('DL-only')", timeout=30000)
    assert page.locator("#result-nomo").inner_text() == "–"

    page.goto(daemon.url + "/history")
    assert page.locator("table#history tbody tr").count() >= 2
    page.goto(f"{daemon.url}/exams/{exam_id}")
    assert page.locator(".nomogram svg").count() == 1
    assert requests_outside == []  # everything local, no CDN
    page.close()


def test_lost_source_banner(test_bundle, browser, tmp_path):
    d = DaemonProcess(test_bundle, tmp_path / "data", source=f"video:{tmp_path / 'unplugged.mp4'}").wait_ready()
    try:
        page = browser.new_page()
        page.goto(d.url + "/")
        page.wait_for_selector("#source-banner:not([hidden])", timeout=10000)
        assert "Source lost" in page.locator("#source-banner").inner_text()
        assert "not found" in page.locator("#source-banner").inner_text()
        page.close()
    finally:
        d.stop()
