"""The out-of-distribution guard end to end: `noa-edge serve` on the shipped demo bundle (real LiteRT), uploads
through /api/analyze, the exam page, the PDF (pdftotext), the DICOM SR, /metrics and /api/health, and the live
page's banner in Debian's Chromium. A bundle without a description (the small test bundle) still serves."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import httpx
import pydicom
import pytest
from playwright.sync_api import expect
from pydicom import examples

from browser_support import axe_violations, wait_result, wait_roi
from conftest import ROOT, DaemonProcess
from edge.wording import OOD_WARNING

pytest_plugins = ["browser_fixtures"]   # the browser and open_page fixtures

DEMO = ROOT / "firmware_assets" / "demo-phantom"
PHANTOM = ROOT / "docs" / "samples" / "oa.png"
US_EXAMPLE = examples.get_path("palette_color")   # real ultrasound, not a testis
US_CINE = examples.get_path("ybr_color")          # ditto, 30 frames: the page opens the middle one
PDFTOTEXT = shutil.which("pdftotext")


@pytest.fixture(scope="module")
def ood_daemon(tmp_path_factory):
    d = DaemonProcess(DEMO, tmp_path_factory.mktemp("data"), extra=["--no-auto"]).wait_ready()
    yield d
    d.stop()


def upload(url: str, path) -> dict:
    kind = "application/dicom" if str(path).endswith(".dcm") else "image/png"
    r = httpx.post(f"{url}/api/analyze", files={"image": (path.name, path.read_bytes(), kind)}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def ood_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^noa_edge_ood_exams_total (\S+)$", text, re.M).group(1))


def test_health_says_the_guard_is_active(ood_daemon):
    ood = httpx.get(f"{ood_daemon.url}/api/health").json()["ood"]
    assert ood["active"] is True and ood["threshold"] > 0 and ood["message"].startswith("active")


@pytest.mark.skipif(PDFTOTEXT is None, reason="poppler-utils not installed (apt install poppler-utils)")
def test_ultrasound_of_another_organ_is_flagged_on_every_surface(ood_daemon):
    url = ood_daemon.url
    before = ood_total(url)
    exam = upload(url, US_EXAMPLE)
    assert exam["ood"] is True and exam["ood_score"] > exam["ood_threshold"]
    assert exam["display"]["sentence"].startswith("Image unlike the training data — result not reliable.")
    stored = httpx.get(f"{url}/api/exams/{exam['id']}").json()
    assert stored["ood"] is True and stored["dl_probability"] == exam["dl_probability"]
    page = httpx.get(url + exam["links"]["page"]).text
    assert OOD_WARNING in page and 'class="unreliable"' in page
    pdf = httpx.get(url + exam["links"]["report_pdf"]).content
    text = " ".join(subprocess.run([PDFTOTEXT, "-", "-"], input=pdf, capture_output=True, check=True)
                    .stdout.decode().split())
    assert OOD_WARNING.upper() in text and "(not reliable)" in text
    sr = pydicom.dcmread(io.BytesIO(httpx.get(url + exam["links"]["dicom_sr"]).content))
    items = {i.ConceptNameCodeSequence[0].CodeValue: i for i in sr.ContentSequence}
    assert items["OOD"].TextValue.startswith("image unlike the training data - result not reliable.")
    assert items["SENTENCE"].TextValue.startswith("Image unlike the training data - result not reliable.")
    assert ood_total(url) == before + 1


def test_phantom_image_is_not_flagged(ood_daemon):
    before = ood_total(ood_daemon.url)
    exam = upload(ood_daemon.url, PHANTOM)
    assert exam["ood"] is False and "not reliable" not in exam["display"]["sentence"]
    assert ood_total(ood_daemon.url) == before


def test_live_page_shows_the_warning_first(ood_daemon, open_page):
    page = open_page(bypass_csp=True)  # axe-core is injected inline
    page.goto(ood_daemon.url + "/")
    for path, flagged in ((US_CINE, True), (PHANTOM, False)):
        with page.expect_response(lambda r: "/api/frames" in r.url and r.request.method == "POST") as info:
            page.set_input_files("#file", str(path))
        wait_roi(page, info.value.json()["roi"])
        previous = page.locator("#result").get_attribute("data-exam-id")
        page.click("#analyze")
        wait_result(page, previous)
        banner = page.locator("#result-ood")
        if flagged:
            expect(banner).to_be_visible()
            expect(banner).to_contain_text(OOD_WARNING)
            expect(page.locator("#result")).to_have_class(re.compile(r"\bunreliable\b"))
            serious = [v for v in axe_violations(page) if v["impact"] in ("serious", "critical")]
            assert serious == [], serious  # the banner's colours and role are readable
            exam_id = page.locator("#result").get_attribute("data-exam-id")
        else:
            expect(banner).to_be_hidden()
            expect(page.locator("#result")).not_to_have_class(re.compile(r"\bunreliable\b"))
    page.goto(f"{ood_daemon.url}/exams/{exam_id}")  # the flagged exam's own page
    expect(page.locator("#exam-ood")).to_be_visible()
    expect(page.locator("#exam-ood")).to_contain_text(OOD_WARNING)
    serious = [v for v in axe_violations(page) if v["impact"] in ("serious", "critical")]
    assert serious == [], serious


def test_bundle_without_description_still_serves(test_bundle, tmp_path):
    d = DaemonProcess(test_bundle, tmp_path / "data", extra=["--no-auto"]).wait_ready()
    try:
        ood = httpx.get(f"{d.url}/api/health").json()["ood"]
        assert ood["active"] is False and ood["message"] == "inactive: no OOD description in this bundle"
        exam = upload(d.url, PHANTOM)
        assert exam["ood"] is None and exam["label"] in ("NOA", "OA")
        assert "Not checked against the training data" in exam["display"]["ood_detail"]
    finally:
        d.stop()
