"""The cart workflow (issue 12) in Debian's Chromium: a result belongs to exactly the frame, ROI, values and
patient on screen. Freeze holds the frame (its stored pixels hash equal after the live source moved on);
files open through the picker and drag-and-drop (PNG, multi-frame DICOM); the ROI is proposed afresh per
image and moves from the keyboard; decimal commas in de-DE/fr-FR; an automatic result never replaces the
result being read; both testes and the patient-level result; axe-core on the main, history and exam pages.
Every request leaving the loopback interface is blocked and fails the test (browser_support.open_page)."""

from __future__ import annotations

import base64
import json
import shutil

import httpx
import pytest
from playwright.sync_api import expect
from pydicom.data import get_testdata_file

from browser_support import (
    ARTIFACTS,
    SAMPLES,
    axe_violations,
    docs_bundle,
    exam_total,
    frame_sha256,
    roi_on_screen,
    shot,
    wait_live_moved_on,
    wait_result,
    wait_roi,
)
from conftest import DaemonProcess

pytest_plugins = ["browser_fixtures"]   # the browser and open_page fixtures

PNG = SAMPLES / "oa.png"
DICOM_MULTIFRAME = get_testdata_file("examples_ybr_color.dcm")   # US, 30 frames


@pytest.fixture(scope="module")
def live_daemon(test_bundle, demo_cine, tmp_path_factory):
    d = DaemonProcess(docs_bundle(test_bundle), tmp_path_factory.mktemp("data"), source=f"video:{demo_cine}",
                      extra=["--no-auto"]).wait_ready()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def folder_daemon(test_bundle, tmp_path_factory):
    """A watched folder with automatic analysis: every file dropped in is analysed by the daemon itself."""
    inbox = tmp_path_factory.mktemp("inbox")
    d = DaemonProcess(docs_bundle(test_bundle), tmp_path_factory.mktemp("data"), source=f"folder:{inbox}").wait_ready()
    d.inbox = inbox
    yield d
    d.stop()


def open_file(page, path, url_part="/api/frames") -> dict:
    """Choose a file in the picker; the daemon's held-frame answer."""
    with page.expect_response(lambda r: url_part in r.url and r.request.method == "POST") as info:
        page.set_input_files("#file", str(path))
    body = info.value.json()
    assert info.value.ok, body
    wait_roi(page, body["roi"])
    return body


def test_freeze_then_analyze_scores_the_held_pixels(live_daemon, open_page):
    url = live_daemon.url
    page = open_page(timezone_id="Asia/Tokyo", locale="en-US")
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('view').naturalWidth > 0", timeout=20000)
    with page.expect_response("**/api/freeze") as info:
        page.click("#freeze")
    held = info.value.json()
    wait_roi(page, held["roi"])
    assert page.locator("#stage").get_attribute("data-frame-id") == held["frame_id"]
    png = httpx.get(f"{url}/frames/{held['frame_id']}.png").content
    assert frame_sha256(png) == held["frame_sha256"]

    seq = int(httpx.get(f"{url}/live.jpg").headers["X-Frame-Seq"])
    wait_live_moved_on(url, seq)                                     # the live picture is now a later frame
    assert page.locator("#view").get_attribute("src") == f"/frames/{held['frame_id']}.png"

    page.click("#analyze")
    exam_id = wait_result(page)
    exam = httpx.get(f"{url}/api/exams/{exam_id}").json()
    assert exam["frame_id"] == held["frame_id"]
    assert exam["frame_sha256"] == held["frame_sha256"]
    assert frame_sha256(httpx.get(url + exam["links"]["frame"]).content) == held["frame_sha256"]  # stored pixels
    assert exam["roi"] == held["roi"] and exam["roi_method"] == "auto"
    assert page.evaluate("document.activeElement.id") == "result"
    expect(page.locator("#result-meta")).to_contain_text("GMT+9")   # local time with its zone

    # Live returns to the stream; a second freeze holds a new frame with its own proposed ROI
    page.click("#go-live")
    expect(page.locator("#view-mode")).to_have_text("live view")
    expect(page.locator("#roi")).to_be_hidden()
    page.wait_for_function("() => document.getElementById('view').src.startsWith('blob:')")
    page.locator("#freeze").click()
    page.wait_for_function("(old) => (document.getElementById('stage').dataset.frameId || old) !== old",
                           arg=held["frame_id"])


def test_roi_keyboard_and_never_carried_over(live_daemon, open_page):
    url = live_daemon.url
    page = open_page()
    page.goto(url + "/")
    first = open_file(page, PNG)
    page.focus("#roi")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Shift+ArrowRight")
    page.keyboard.press("Shift+ArrowUp")
    x, y, w, h = first["roi"]
    want = [x + 8, y + 4, w + 4, h - 4]
    wait_roi(page, want)
    expect(page.locator("#roi")).to_have_attribute("aria-label", f"Region of interest (moved by you): x {want[0]}, "
                                                   f"y {want[1]}, {want[2]} by {want[3]} pixels. Arrow keys move it, "
                                                   "Shift with arrow keys resizes it.")
    page.click("#analyze")
    exam = httpx.get(f"{url}/api/exams/{wait_result(page)}").json()
    assert exam["roi"] == want and exam["roi_method"] == "manual"
    assert exam["frame_sha256"] == first["frame_sha256"]

    # a new image (multi-frame DICOM): its own proposed ROI, not the moved box; frame chooser
    dcm = open_file(page, DICOM_MULTIFRAME)
    assert dcm["n_frames"] == 30 and dcm["frame_id"] != first["frame_id"]
    assert roi_on_screen(page) == dcm["roi"] != want
    expect(page.locator("#frame-chooser")).to_be_visible()
    expect(page.locator("#frame-index option")).to_have_count(30)
    expect(page.locator("#frame-index")).to_have_value(str(dcm["frame_index"]))
    with page.expect_response("**/api/frames") as info:
        page.select_option("#frame-index", index=3)  # the 4th frame (value 3, label "4")
    third = info.value.json()
    assert third["frame_index"] == 3 and third["frame_id"] != dcm["frame_id"]
    wait_roi(page, third["roi"])
    page.click("#analyze")
    exam = httpx.get(f"{url}/api/exams/{wait_result(page, str(exam['id']))}").json()
    assert exam["frame_sha256"] == third["frame_sha256"] and exam["roi_method"] == "auto"

    # drag-and-drop a PNG onto the picture: held, with its own proposed ROI
    page.focus("#roi")
    page.keyboard.press("Shift+ArrowDown")
    data = base64.b64encode(PNG.read_bytes()).decode()
    transfer = page.evaluate_handle("""(b64) => { const bin = atob(b64), bytes = new Uint8Array(bin.length);
        for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
        const dt = new DataTransfer(); dt.items.add(new File([bytes], 'dropped.png', { type: 'image/png' }));
        return dt; }""", data)
    with page.expect_response("**/api/frames") as info:
        page.dispatch_event("#stage", "drop", {"dataTransfer": transfer})
    dropped = info.value.json()
    wait_roi(page, dropped["roi"])
    assert dropped["frame_sha256"] == first["frame_sha256"]   # the same file, the same pixels
    expect(page.locator("#roi-method")).to_have_text("(proposed for this image)")
    expect(page.locator("#frame-chooser")).to_be_hidden()


@pytest.mark.parametrize("locale", ["de-DE", "fr-FR"])
def test_decimal_comma_and_refused_numbers(live_daemon, open_page, locale):
    url = live_daemon.url
    page = open_page(locale=locale)
    page.goto(url + "/")
    open_file(page, PNG)
    page.fill("#fsh", "4,5")
    page.fill("#volume_ml", "12,5")
    page.fill("#edv", "3.1")
    page.click("#analyze")
    exam = httpx.get(f"{url}/api/exams/{wait_result(page)}").json()
    assert exam["inputs"]["fsh"] == 4.5 and exam["inputs"]["volume_ml"] == 12.5   # never 45 or 125
    assert exam["inputs_raw"]["fsh"] == "4,5"

    for bad in ("1,000", "abc", "1_5", "1e3", "4,5,6"):
        page.goto(url + "/")
        open_file(page, PNG)
        page.fill("#fsh", bad)
        page.locator("#fsh").blur()
        expect(page.locator("#fsh-msg")).to_be_visible()
        assert page.locator("#fsh-msg").inner_text().strip(), bad
        assert page.locator("#fsh").get_attribute("aria-describedby").split()[-1] == "fsh-msg"
        total = exam_total(url)
        page.click("#analyze")
        expect(page.locator("#form-error")).to_contain_text("Nothing was analysed")
        expect(page.locator("#analyze")).to_be_enabled()
        assert exam_total(url) == total, bad                   # no exam stored
        assert page.locator("#fsh").input_value() == bad        # the typed value stays, never silently dropped


def test_automatic_result_never_replaces_the_panel(folder_daemon, open_page):
    url, inbox = folder_daemon.url, folder_daemon.inbox
    page = open_page()
    page.goto(url + "/")
    page.fill("#patient_id", "P-AUTO")
    page.fill("#fsh", "22")
    page.fill("#volume_ml", "6")
    page.fill("#edv", "2,5")
    page.click("#open-patient")
    expect(page.locator("#context-status")).to_contain_text("Patient P-AUTO open")
    assert httpx.get(url + "/api/context").json()["values"]["edv_cm_s"] == 2.5

    open_file(page, PNG)
    page.check("input[name=side][value=L]")
    page.click("#analyze")
    mine = wait_result(page)

    shutil.copy(SAMPLES / "noa_severe.png", inbox / "incoming.png")          # the cart sends an image
    notice = page.locator("#notice-list li", has_text="New automatic result")
    expect(notice).to_have_count(1, timeout=60000)
    auto_id = int(notice.get_attribute("data-exam"))
    assert auto_id > mine
    assert page.locator("#result").get_attribute("data-exam-id") == str(mine)   # still the result being read
    expect(page.locator("#result-meta")).to_contain_text(f"exam #{mine}")
    auto = httpx.get(f"{url}/api/exams/{auto_id}").json()
    assert auto["context"] == "patient_context" and auto["patient_id"] == "P-AUTO"
    assert auto["inputs"]["fsh"] == 22.0

    notice.locator("button").click()
    assert wait_result(page, str(mine)) == auto_id
    assert page.evaluate("document.activeElement.id") == "result"
    expect(page.locator("#notice-list li")).to_have_count(0)

    page.reload()                                                            # the latest result is listed
    expect(page.locator("#notice-list li", has_text=f"Latest result #{auto_id}")).to_have_count(1)
    expect(page.locator("#context-status")).to_contain_text("Patient P-AUTO open")
    expect(page.locator("#fsh")).to_have_value("22")

    page.click("#new-patient")                                               # clears form, context, result
    expect(page.locator("#context-status")).to_contain_text("No patient open")
    assert page.locator("#fsh").input_value() == "" and page.locator("#patient_id").input_value() == ""
    assert httpx.get(url + "/api/context").json()["patient_id"] is None


def test_both_testes_and_the_patient_level_result(live_daemon, open_page):
    """Left testis from a file (the samples are left-testis screens), right testis frozen from the cine."""
    url = live_daemon.url
    page = open_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)   # axe is injected inline
    page.goto(url + "/")
    page.fill("#patient_id", "P-BOTH")
    page.fill("#fsh", "19,5")
    page.fill("#volume_ml", "7")
    page.fill("#edv", "2.2")
    page.click("#open-patient")
    expect(page.locator("#context-status")).to_contain_text("Patient P-BOTH open")
    open_file(page, SAMPLES / "noa_mild.png")
    page.check("input[name=side][value=L]")
    page.click("#analyze")
    left = str(wait_result(page))
    page.click("#go-live")
    with page.expect_response("**/api/freeze") as info:
        page.click("#freeze")
    wait_roi(page, info.value.json()["roi"])
    page.check("input[name=side][value=R]")
    page.click("#analyze")
    wait_result(page, left)
    expect(page.locator("#patient-summary")).to_be_visible()
    expect(page.locator("#summary-sides .side-card")).to_have_count(2)
    summary = httpx.get(f"{url}/api/patients/P-BOTH/summary").json()
    expect(page.locator("#summary-rule")).to_have_text(summary["patient"]["rule"])
    expect(page.locator("#summary-label")).to_have_text(summary["patient"]["label"])
    shot(page, "cart-both-testes.png", "screenshot-both-testes.png")
    serious = [v for v in axe_violations(page) if v["impact"] in ("serious", "critical")]
    assert serious == [], serious
    page.click("#new-patient")
    expect(page.locator("#patient-summary")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()


def test_axe_main_history_exam_pages(live_daemon, open_page):
    """No serious or critical axe-core violations; counts per page to test-artifacts/axe-counts.json."""
    url = live_daemon.url
    page = open_page(bypass_csp=True)          # axe is injected as an inline script
    page.goto(url + "/")
    open_file(page, PNG)
    page.fill("#fsh", "21")
    page.fill("#volume_ml", "8")
    page.fill("#edv", "2")
    page.click("#analyze")
    exam_id = wait_result(page)
    page.wait_for_selector("#nomogram svg")
    page.fill("#edv", "abc")                  # a field message on screen too
    page.locator("#edv").blur()
    expect(page.locator("#edv-msg")).to_be_visible()
    found = {"main": axe_violations(page)}
    for name, path in (("history", "/history"), ("exam", f"/exams/{exam_id}")):
        page.goto(url + path)
        found[name] = axe_violations(page)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "axe-counts.json").write_text(json.dumps(found, indent=1))
    bad = {name: [v for v in vs if v["impact"] in ("serious", "critical")] for name, vs in found.items()}
    assert all(not v for v in bad.values()), bad


def test_history_search_by_patient_and_date(live_daemon, open_page):
    url = live_daemon.url
    page = open_page()
    page.goto(url + "/")
    open_file(page, PNG)
    page.fill("#patient_id", "P-HIST-1")
    page.click("#analyze")
    exam_id = wait_result(page)
    created = httpx.get(f"{url}/api/exams/{exam_id}").json()["created"]
    page.goto(url + "/history")
    page.fill("#search-patient", "P-HIST-1")
    page.click("#search")
    expect(page.locator("table#history tbody tr")).to_have_count(1)
    expect(page.locator("table#history tbody tr a").first).to_have_text(str(exam_id))
    assert "patient_id=P-HIST-1" in page.url
    page.fill("#search-patient", "nobody-has-this-id")
    page.click("#search")
    expect(page.locator("table#history tbody")).to_contain_text("no exams match")
    day = page.evaluate("(iso) => { const d = new Date(iso); return d.getFullYear() + '-' + "
                        "String(d.getMonth() + 1).padStart(2, '0') + '-' + String(d.getDate()).padStart(2, '0'); }",
                        created)
    page.goto(f"{url}/history?patient_id=P-HIST-1&date={day}")
    expect(page.locator("table#history tbody tr")).to_have_count(1)
    expect(page.locator("#search-date")).to_have_value(day)
    page.goto(f"{url}/history?patient_id=&date=2024-13-45")             # a bad date: said on the page
    expect(page.locator("#filter-error")).to_contain_text("YYYY-MM-DD")


def test_api_docs_work_offline(live_daemon, open_page):
    """/docs renders with every non-loopback request blocked; /redoc is either gone (404) or renders too."""
    page = open_page()
    assert page.goto(live_daemon.url + "/docs").ok
    page.wait_for_selector(".swagger-ui .info", timeout=20000)
    r = page.goto(live_daemon.url + "/redoc")
    if r.status != 404:
        page.wait_for_selector(".redoc-wrap", timeout=20000)
