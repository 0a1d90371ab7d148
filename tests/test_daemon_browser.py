"""The result page in a real browser: Debian's Chromium driven by Playwright against `noa-edge serve`
(real LiteRT, the phantom cine as the live source). Freezes a frame, moves the ROI with the mouse, enters
FSH / volume / EDV, sees the result in words and the nomogram; the lost-source banner and the offline state.
Every request leaving the loopback interface is blocked and fails the test (browser_support.open_page).
Saves screenshots to test-artifacts/ (and docs/ with NOA_EDGE_UPDATE_DOCS_SCREENSHOT=1)."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from browser_support import docs_bundle, roi_on_screen, shot, wait_result
from conftest import DaemonProcess

pytest_plugins = ["browser_fixtures"]   # the browser and open_page fixtures


@pytest.fixture(scope="module")
def daemon(test_bundle, demo_cine, tmp_path_factory):
    d = DaemonProcess(docs_bundle(test_bundle), tmp_path_factory.mktemp("data"), source=f"video:{demo_cine}",
                      extra=["--no-auto"]).wait_ready()
    yield d
    d.stop()


def test_page_roi_form_result_nomogram(daemon, open_page):
    page = open_page(viewport={"width": 1280, "height": 800})
    page.goto(daemon.url + "/")
    assert page.locator("#demo-banner").inner_text().strip() == "synthetic demo model — not for diagnosis"
    expect(page.locator("h1")).to_have_count(1)
    page.wait_for_function("() => document.getElementById('view').naturalWidth === 800", timeout=20000)
    assert page.locator("#roi").is_hidden()          # no box on a moving picture: the ROI belongs to a held frame

    page.click("#freeze")
    expect(page.locator("#view-mode")).to_have_text("held frame")
    page.wait_for_function("() => document.getElementById('roi-text').textContent.split(',').length === 4",
                           timeout=20000)
    before = roi_on_screen(page)
    assert page.locator("#roi-method").inner_text() == "(proposed for this image)"

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
    moved = roi_on_screen(page)
    assert moved[0] > before[0] and moved[1] > before[1], (before, moved)
    assert moved[2] > before[2] and moved[3] > before[3], (before, moved)
    assert page.locator("#roi-method").inner_text() == "(moved by you)"

    # an out-of-range value: the daemon's message next to the field, Analyze refused, nothing stored
    total = httpx.get(f"{daemon.url}/api/exams?limit=1").json()["total"]
    page.fill("#fsh", "-4")
    page.locator("#fsh").blur()
    expect(page.locator("#fsh-msg")).to_contain_text("outside the plausible range")
    expect(page.locator("#fsh")).to_have_attribute("aria-invalid", "true")
    page.click("#analyze")
    expect(page.locator("#form-error")).to_contain_text("Nothing was analysed")
    assert page.locator("#result").is_hidden()
    assert httpx.get(f"{daemon.url}/api/exams?limit=1").json()["total"] == total

    page.fill("#fsh", "21.5")
    page.fill("#volume_ml", "8,4")
    page.fill("#edv", "1.9")
    expect(page.locator("#fsh-msg")).to_be_hidden()
    expect(page.locator("#form-error")).to_be_hidden()                 # the refusal goes once the field is fixed
    shot(page, "daemon-held-frame.png", "screenshot-held-frame.png", full_page=False)
    page.click("#analyze")
    exam_id = wait_result(page)
    page.wait_for_selector("#nomogram svg", timeout=30000)
    assert page.evaluate("document.activeElement.id") == "result"     # focus moves to the result
    label = page.locator("#result-label").inner_text()
    assert label in ("NOA", "OA")
    stored = httpx.get(f"{daemon.url}/api/exams/{exam_id}").json()
    words = stored["display"]
    expect(page.locator("#result-sentence")).to_have_text(words["sentence"])
    expect(page.locator("#result-prob")).to_have_text(words["probability_text"])
    expect(page.locator("#result-threshold")).to_have_text(words["threshold_text"])
    assert "1.000" not in page.locator("#result").inner_text()
    for key in ("dl_logit", "edv_cm_s", "volume_ml"):                  # human labels, never internal keys
        assert key not in page.locator("#result").inner_text()
    assert page.locator("#inputs-table tr").count() == len(words["inputs"])
    assert page.locator("#nomogram svg circle").count() >= 4          # this patient's values marked
    expect(page.locator("#timings")).to_be_hidden()                     # engineer timings behind a toggle
    page.click("details.timings summary")
    expect(page.locator("#timings")).to_contain_text("ms")
    page.wait_for_function("() => document.getElementById('result-overlay').naturalWidth > 0")
    expect(page.locator("#cam-legend-call")).to_contain_text(f"This is an {label} call")
    # the nomogram's 11 px text renders at ≥ 11 px at 1280 px
    smallest = page.evaluate("""() => { const svg = document.querySelector('#nomogram svg');
        const k = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
        const sizes = [...svg.querySelectorAll('text')].map((t) => parseFloat(getComputedStyle(t).fontSize) * k);
        return Math.min(...sizes); }""")
    assert smallest >= 11, smallest

    assert stored["roi"] == moved and stored["roi_method"] == "manual"  # the ROI the user set is recorded
    assert stored["inputs"]["fsh"] == 21.5 and stored["inputs"]["volume_ml"] == 8.4
    shot(page, "daemon-result.png", "screenshot-result.png")

    # DL-only when the clinical values are missing, said in words
    for field in ("#fsh", "#volume_ml", "#edv"):
        page.fill(field, "")
    page.click("#analyze")
    dl_only = wait_result(page, str(exam_id))
    expect(page.locator("#result-basis")).to_have_text(httpx.get(f"{daemon.url}/api/exams/{dl_only}").json()["display"]["basis_text"])
    expect(page.locator("#nomogram-panel")).to_be_hidden()

    page.goto(daemon.url + "/history")
    assert page.locator("table#history tbody tr").count() >= 2
    page.goto(f"{daemon.url}/exams/{exam_id}")
    assert page.locator(".nomogram svg").count() == 1
    expect(page.locator("h1")).to_have_count(1)


def test_lost_source_banner(test_bundle, open_page, tmp_path):
    """One sentence from one place: the server-rendered banner, the page's updates and /api/health agree."""
    d = DaemonProcess(test_bundle, tmp_path / "data", source=f"video:{tmp_path / 'unplugged.mp4'}").wait_ready()
    try:
        page = open_page()
        page.goto(d.url + "/")
        page.wait_for_selector("#source-banner:not([hidden])", timeout=10000)
        banner = httpx.get(d.url + "/api/health").json()["source"]["banner"]
        assert "not found" in banner
        expect(page.locator("#source-banner")).to_have_text(banner)            # after the page's own update
        static = open_page(java_script_enabled=False)
        static.goto(d.url + "/")
        assert static.locator("#source-banner").inner_text().strip() == banner  # as the server renders it
        assert static.locator("#source-banner").is_visible()
    finally:
        d.stop()


def test_offline_pill_and_messages_in_words(test_bundle, open_page, tmp_path):
    d = DaemonProcess(test_bundle, tmp_path / "data", source="none").wait_ready()
    page = open_page()
    try:
        page.goto(d.url + "/")
        expect(page.locator("#source-state")).to_have_text("none")
        expect(page.locator("#no-frame")).to_contain_text("Open or drop an image file")
    finally:
        d.stop()
    expect(page.locator("#source-state")).to_have_text("offline", timeout=15000)
    expect(page.locator("#offline-banner")).to_contain_text("not answering")
    page.click("#analyze")
    expect(page.locator("#form-error")).to_contain_text("not answering")
    text = page.locator("body").inner_text()
    assert "Failed to fetch" not in text and "TypeError" not in text
