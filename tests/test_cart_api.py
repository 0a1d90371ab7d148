"""The cart workflow's server side (issue 12), for real: `noa-edge serve` in a subprocess (tests/conftest.py
DaemonProcess), real LiteRT on the small test bundle, the shipped phantom cine as the live source.

Every result belongs to one held frame (its pixels hashed), one ROI drawn on exactly those pixels, the
values as typed (one parser), one patient and side; automatic results use the open patient context."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from conftest import ROOT, DaemonProcess, cine_rgb, free_port, wait_until
from edge.daemon import Daemon, DaemonConfig
from edge.held_frames import frame_sha256
from edge.wording import result_sentence

CLINICAL = {"fsh": "18,5", "volume_ml": "9.2", "edv": "2,1"}
PDFTOTEXT = "pdftotext"



def png_of(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def decoded_sha(png: bytes) -> str:
    """sha256 of a PNG's pixels as RGB (H, W, 3), the frame_sha256 definition."""
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return frame_sha256(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))




@pytest.fixture(scope="module")
def daemon(test_bundle, demo_cine, tmp_path_factory):
    d = DaemonProcess(test_bundle, tmp_path_factory.mktemp("cart"), source=f"video:{demo_cine}",
                      extra=["--no-auto"]).wait_ready()
    yield d
    d.stop()



def upload(client, png: bytes, name: str = "frame.png", **form) -> dict:
    r = client.post("/api/frames", files={"image": (name, png, "image/png")}, data=form)
    assert r.status_code == 200, r.text
    return r.json()


def analyze(client, status: int = 200, **form) -> dict:
    r = client.post("/api/analyze", data=form)
    assert r.status_code == status, r.text
    return r.json()


def total(client, **params) -> int:
    return client.get("/api/exams", params={"limit": 1, **params}).json()["total"]


# ------------------------------------------------------------------------------------------ held frames
def test_freeze_analyses_exactly_the_held_pixels_after_the_live_source_moved_on(client):
    held = client.post("/api/freeze").json()
    assert set(held) >= {"frame_id", "frame_sha256", "frame_size", "image_area", "roi", "roi_method", "held_at"}
    assert held["trigger"] == "user" and held["roi_method"] == "auto"

    def newest_differs():
        seq = int(client.get("/live.jpg").headers["X-Frame-Seq"])
        if seq < held["frame_seq"] + 20:  # the cine's frozen stretches are 15 frames
            return None
        newest = client.post("/api/freeze").json()
        return newest if newest["frame_sha256"] != held["frame_sha256"] else None

    newest = wait_until(newest_differs, "the live source to move on")
    exam = analyze(client, frame_id=held["frame_id"], **CLINICAL)
    stored = client.get(exam["links"]["frame"])
    assert stored.headers["content-type"] == "image/png"
    assert decoded_sha(stored.content) == exam["frame_sha256"] == held["frame_sha256"] != newest["frame_sha256"]
    assert exam["frame_id"] == held["frame_id"] and exam["trigger"] == "button"
    assert exam["roi"] == held["roi"] and exam["image_area"] == held["image_area"] and exam["roi_method"] == "auto"
    held_png = client.get(f"/frames/{held['frame_id']}.png")
    assert held_png.headers["x-frame-sha256"] == held["frame_sha256"] == decoded_sha(held_png.content)
    # without a frame_id the API keeps today's behaviour: the newest live frame, held first
    button = analyze(client, **CLINICAL)
    assert button["trigger"] == "button" and len(button["frame_sha256"]) == 64 and button["frame_id"]


def test_roi_is_proposed_per_frame_and_never_carried_over(client, demo_cine):
    a = upload(client, png_of(cine_rgb(demo_cine, 0)), "a.png")
    b = upload(client, png_of(cine_rgb(demo_cine, 23)), "b.png")  # the probe has moved: another ROI
    assert a["roi"] != b["roi"] and a["trigger"] == b["trigger"] == "upload"
    assert a["n_frames"] == 1 and a["frame_index"] == 0
    auto = analyze(client, frame_id=b["frame_id"], roi_method="auto")
    assert auto["roi"] == b["roi"] and auto["roi_method"] == "auto" and auto["frame_sha256"] == b["frame_sha256"]
    assert auto["trigger"] == "upload"
    stale = ",".join(map(str, a["roi"]))  # the previous image's box, sent as "auto"
    before = total(client)
    r = client.post("/api/analyze", data={"frame_id": b["frame_id"], "roi": stale, "roi_method": "auto"})
    assert r.status_code == 422 and r.json()["field"] == "roi" and "not this frame's proposed ROI" in r.json()["detail"]
    assert total(client) == before
    manual = analyze(client, frame_id=b["frame_id"], roi="200,150,300,200", roi_method="manual")
    assert manual["roi"] == [200, 150, 300, 200] and manual["roi_method"] == "manual"
    assert analyze(client, frame_id=b["frame_id"], roi="200,150,300,200")["roi_method"] == "manual"
    for form, field in (({"roi_method": "manual"}, "roi"), ({"roi_method": "sideways"}, "roi_method"),
                        ({"side": "left"}, "side"), ({"patient_id": "x" * 65}, "patient_id")):
        r = client.post("/api/analyze", data={"frame_id": b["frame_id"], **form})
        assert r.status_code == 422 and r.json()["field"] == field, (form, r.text)
    assert total(client) == before + 2


def test_unknown_evicted_and_conflicting_frames(client, demo_cine):
    first = client.post("/api/freeze").json()
    for _ in range(16):  # the ring keeps the newest 16
        client.post("/api/freeze")
    before = total(client)
    r = client.post("/api/analyze", data={"frame_id": first["frame_id"]})
    assert r.status_code == 404 and r.json()["field"] == "frame_id" and "no longer held" in r.json()["detail"]
    assert client.get(f"/frames/{first['frame_id']}.png").status_code == 404
    r = client.post("/api/analyze", data={"frame_id": "feedfacefeedface"})
    assert r.status_code == 404 and "not a held frame" in r.json()["detail"]
    newest = client.get("/api/frames").json()["frames"][0]
    r = client.post("/api/analyze", data={"frame_id": newest["frame_id"]},
                    files={"image": ("x.png", png_of(cine_rgb(demo_cine, 5)), "image/png")})
    assert r.status_code == 422 and r.json()["field"] == "image" and "not both" in r.json()["detail"]
    assert total(client) == before


def _multiframe_dicom(frames: np.ndarray) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.UltrasoundMultiFrameImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "US"
    ds.NumberOfFrames, ds.Rows, ds.Columns = frames.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = frames.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_multiframe_dicom_upload_chooses_the_frame(client, demo_cine):
    frames = np.stack([cv2.cvtColor(cine_rgb(demo_cine, i), cv2.COLOR_RGB2GRAY) for i in (0, 12, 23)])
    data = _multiframe_dicom(frames)
    files = {"image": ("cine.dcm", data, "application/dicom")}
    middle = client.post("/api/frames", files=files).json()
    assert middle["n_frames"] == 3 and middle["frame_index"] == 1
    assert middle["frame_sha256"] == frame_sha256(frames[1])
    last = client.post("/api/frames", files=files, data={"frame_index": "2"}).json()
    assert last["frame_index"] == 2 and last["frame_sha256"] == frame_sha256(frames[2])
    for bad in ("3", "-1", "one"):
        r = client.post("/api/frames", files=files, data={"frame_index": bad})
        assert r.status_code == 422 and r.json()["field"] == "frame_index", bad
    exam = client.post("/api/analyze", files=files, data={"frame_index": "0"}).json()  # upload → held → analysed
    assert exam["frame_sha256"] == frame_sha256(frames[0]) and exam["trigger"] == "upload"
    assert decoded_sha(client.get(exam["links"]["frame"]).content) == exam["frame_sha256"]


# ------------------------------------------------------------------------------------------ numbers
BAD_NUMBERS = ["1,000", "1.000", "4,5,6", "1_5", "abc", "1e3", "inf", "nan", "4.5.6", "+-3", "4 5", "4,"]


@pytest.fixture(scope="module")
def held_frame(client, demo_cine):
    return upload(client, png_of(cine_rgb(demo_cine, 30)))


@pytest.mark.parametrize("typed", BAD_NUMBERS)
@pytest.mark.parametrize("field", ["fsh", "edv_cm_s"])
def test_bad_numbers_are_refused_naming_the_field_and_nothing_is_stored(client, held_frame, typed, field):
    before = total(client)
    r = client.post("/api/analyze", data={"frame_id": held_frame["frame_id"], field: typed})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and repr(typed) in r.json()["detail"]
    assert total(client) == before


def test_decimal_comma_is_stored_as_the_value_with_what_was_typed(client, held_frame):
    exam = analyze(client, frame_id=held_frame["frame_id"], fsh="4,5", volume_ml="9,2", edv_cm_s="2,1",
                   patient_id=" PID-1 ", side="r")
    assert exam["inputs"]["fsh"] == 4.5 and exam["inputs"]["volume_ml"] == 9.2 and exam["inputs"]["edv_cm_s"] == 2.1
    assert exam["inputs_raw"] == {"fsh": "4,5", "volume_ml": "9,2", "edv_cm_s": "2,1"}
    assert exam["basis"] == "nomogram" and exam["context"] == "form"
    assert exam["patient_id"] == "PID-1" and exam["side"] == "R"
    again = client.get(f"/api/exams/{exam['id']}").json()
    assert again["inputs"]["fsh"] == 4.5 and again["display"]["sentence"] == result_sentence(again)
    assert [i["value_text"] for i in again["display"]["inputs"]] == ["4.5 IU/L", "9.2 mL", "2.1 cm/s"]


def test_parse_endpoint_is_the_same_parser(client):
    before = (total(client), len(client.get("/api/frames").json()["frames"]))
    r = client.post("/api/parse", data={"fsh": "4,5", "edv": "1,000", "volume_ml": ""}).json()
    assert r["values"] == {"fsh": 4.5} and set(r["errors"]) == {"edv"} and "ambiguous" in r["errors"]["edv"]
    r = client.post("/api/parse", json={"fsh": "1_5", "side": "X", "edv_cm_s": 2}).json()
    assert set(r["errors"]) == {"fsh", "side"} and r["values"] == {"edv_cm_s": 2.0}
    r = client.post("/api/parse", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "body"
    assert (total(client), len(client.get("/api/frames").json()["frames"])) == before  # nothing stored or held


# ------------------------------------------------------------------------------------------ patient
def test_context_put_get_delete_and_refusals(client):
    assert client.delete("/api/context").status_code == 200
    assert client.get("/api/context").json() == {"patient_id": None, "values": {}}
    opened = client.put("/api/context", json={"patient_id": "CTX-1", "fsh": "21,3", "length_cm": "4",
                                              "width_cm": "3", "height_cm": "2,5", "edv": 2.1})
    assert opened.status_code == 200, opened.text
    ctx = opened.json()
    assert ctx["values"]["fsh"] == 21.3 and ctx["values"]["volume_formula"] == "lambert_0.71"
    assert ctx["raw"]["fsh"] == "21,3" and dt.datetime.fromisoformat(ctx["opened_at"]).tzinfo is not None
    for body, field in (({"patient_id": "CTX-2", "fsh": "1,000"}, "fsh"), ({"fsh": "5"}, "patient_id")):
        r = client.put("/api/context", json=body)
        assert r.status_code == 422 and r.json()["field"] == field
    r = client.put("/api/context", data={"patient_id": "CTX-3", "edv": "abc"})  # a form, too
    assert r.status_code == 422 and r.json()["field"] == "edv"
    assert client.get("/api/context").json()["patient_id"] == "CTX-1"  # refusals changed nothing
    assert client.delete("/api/context").json()["closed"] == "CTX-1"
    assert client.get("/api/context").json() == {"patient_id": None, "values": {}}


def test_patient_summary_with_both_testes(client, demo_cine):
    pid = "BOTH-7"
    left = analyze(client, frame_id=upload(client, png_of(cine_rgb(demo_cine, 10)))["frame_id"], side="L",
                   patient_id=pid, **CLINICAL)
    right = analyze(client, frame_id=upload(client, png_of(cine_rgb(demo_cine, 50)))["frame_id"], side="R",
                    patient_id=pid, fsh="18,5", volume_ml="12", edv="3")
    s = client.get(f"/api/patients/{pid}/summary").json()
    assert s["sides"]["L"]["id"] == left["id"] and s["sides"]["R"]["id"] == right["id"]
    p = s["patient"]
    assert p["basis"] == "nomogram" and p["sides_used"] == ["L", "R"]
    assert p["probability"] == pytest.approx((left["nomogram_probability"] + right["nomogram_probability"]) / 2)
    assert p["label"] == ("NOA" if p["probability"] >= p["threshold"] else "OA")
    assert "mean" in s["rule"] and p["sentence"].startswith("Patient: ") and "mean of left and right" in p["sentence"]
    newer = analyze(client, frame_id=upload(client, png_of(cine_rgb(demo_cine, 60)))["frame_id"], side="R",
                    patient_id=pid)  # DL-only: the patient level falls back to DL probabilities on both sides
    p = client.get(f"/api/patients/{pid}/summary").json()["patient"]
    assert p["basis"] == "dl_only" and p["exam_ids"] == [left["id"], newer["id"]]
    assert p["probability"] == pytest.approx((left["dl_probability"] + newer["dl_probability"]) / 2)
    listed = client.get("/api/exams", params={"patient_id": pid}).json()
    assert listed["total"] == 3 and {e["patient_id"] for e in listed["exams"]} == {pid}
    since = client.get("/api/exams", params={"since_id": left["id"]}).json()["exams"]
    assert [e["id"] for e in since][:2] == [right["id"], newer["id"]]  # oldest first
    today = dt.date.today().isoformat()
    assert client.get("/api/exams", params={"patient_id": pid, "date": today}).json()["total"] == 3
    assert client.get("/api/exams", params={"date": "2001-02-03"}).json()["total"] == 0
    r = client.get("/api/exams", params={"date": "yesterday"})
    assert r.status_code == 422 and r.json()["field"] == "date"
    assert client.get("/history", params={"patient_id": pid}).status_code == 200
    r = client.get("/api/patients/NOBODY-0/summary")
    assert r.status_code == 404 and r.json()["field"] == "patient_id"


# ------------------------------------------------------------------------------------------ words, PDF
def test_pdf_report_has_the_sentence_as_text_and_the_nomogram(client, held_frame):
    exam = analyze(client, frame_id=held_frame["frame_id"], side="L", patient_id="PDF-1", **CLINICAL)
    pdf = client.get(exam["links"]["report_pdf"])
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    text = subprocess.run([PDFTOTEXT, "-", "-"], input=pdf.content, capture_output=True, check=True).stdout.decode()
    flat = " ".join(text.split())
    assert exam["display"]["sentence"] in flat, flat[:800]
    assert "%" in exam["display"]["sentence"] and "→" in exam["display"]["sentence"]
    assert "Nomogram (this patient's values in red)" in flat and "Total points" in flat and "Probability of NOA" in flat
    assert "Serum FSH" in flat and "18.5 IU/L" in flat and "Left testis" in flat and "PDF-1" in flat
    assert "Synthetic demo model - not for diagnosis" in flat
    for key in ("dl_logit", "edv_cm_s", "volume_ml", "dl_probability"):
        assert key not in flat, key
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(UTC[+-]\d\d:\d\d\)", flat)  # local time with zone


def test_docs_work_offline(client):
    page = client.get("/docs")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert len(urls) >= 2
    for url in urls:
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url
    for url in re.findall(r"https?://[^\s\"'<>]+", page.text):
        assert re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", url), url
    assert "<script>" not in page.text and "<style" not in page.text  # nothing inline: the CSP allows 'self' only
    init = client.get("/docs-assets/init.js").text
    assert client.get(re.search(r'url: "([^"]+)"', init).group(1)).json()["paths"]
    assert client.get("/redoc").status_code == 404


# ------------------------------------------------------------------------------------------ automatic
@pytest.fixture(scope="module")
def auto_client(test_bundle, demo_cine, tmp_path_factory):
    d = DaemonProcess(test_bundle, tmp_path_factory.mktemp("auto"), source=f"video:{demo_cine}").wait_ready()
    with httpx.Client(base_url=d.url, timeout=30) as c:
        yield c
    d.stop()


def _auto_exam_held_after(client, after: dt.datetime) -> dict:
    """The first automatic (freeze) exam whose frame was held after `after` (so it read the context then)."""
    def check():
        for e in client.get("/api/exams", params={"limit": 20}).json()["exams"]:
            if e["trigger"] == "freeze" and dt.datetime.fromisoformat(e["held_at"]) > after:
                return e
        return None
    return wait_until(check, "an automatic exam")


def test_automatic_exams_use_the_open_context_and_new_patient_makes_them_dl_only(auto_client):
    c = auto_client
    ctx = c.put("/api/context", json={"patient_id": "AUTO-7", "fsh": "21,3", "volume_ml": "8,2", "edv": "2,1"}).json()
    exam = _auto_exam_held_after(c, dt.datetime.fromisoformat(ctx["opened_at"]))
    assert exam["patient_id"] == "AUTO-7" and exam["context"] == "patient_context"
    assert exam["inputs"]["fsh"] == 21.3 and exam["inputs"]["volume_ml"] == 8.2 and exam["inputs"]["edv_cm_s"] == 2.1
    assert exam["inputs_raw"]["fsh"] == "21,3" and exam["nomogram_probability"] is not None
    assert "clinical values from the open patient context (ID AUTO-7)" in exam["notes"]
    assert exam["frame_id"] and decoded_sha(c.get(exam["links"]["frame"]).content) == exam["frame_sha256"]
    assert c.delete("/api/context").status_code == 200
    closed = dt.datetime.now().astimezone()
    exam = _auto_exam_held_after(c, closed)
    assert exam["context"] is None and exam["patient_id"] is None
    assert exam["nomogram_probability"] is None and exam["basis"] == "dl_only"
    assert "image model alone" in exam["display"]["sentence"]


def test_an_image_of_another_patient_never_gets_the_context(test_bundle, tmp_path):
    d = Daemon(DaemonConfig(bundle=str(test_bundle), source=None, data_dir=str(tmp_path)))
    try:
        d.context.open({"patient_id": "P-1", "fsh": "20", "volume_ml": "8", "edv": "2"})
        assert d.auto_context(None)["context"] == "patient_context"
        assert d.auto_context("P-1")["clinical"]["fsh"] == 20.0
        other = d.auto_context("P-2")
        assert other["context"] is None and other["clinical"] == {} and other["patient_id"] == "P-2"
        assert "differs from the open patient context" in other["notes"][0]
    finally:
        d.stop()


def test_freeze_without_a_source_is_503_and_uploads_still_work(test_bundle, tmp_path, demo_cine):
    from fastapi.testclient import TestClient

    from edge.web import create_app

    app = create_app(DaemonConfig(bundle=str(test_bundle), source=None, data_dir=str(tmp_path)))
    with TestClient(app, base_url="http://127.0.0.1") as c:
        r = c.post("/api/freeze")
        assert r.status_code == 503 and "no frame from the source" in r.json()["detail"]
        r = c.post("/api/analyze", data={"fsh": "4,5"})
        assert r.status_code == 422 and r.json()["field"] == "image"
        held = c.post("/api/frames", files={"image": ("f.png", png_of(cine_rgb(demo_cine, 3)), "image/png")}).json()
        exam = c.post("/api/analyze", data={"frame_id": held["frame_id"]}).json()
        assert exam["frame_sha256"] == held["frame_sha256"] and exam["context"] is None
        assert c.post("/api/frames").json()["field"] == "image"


# ------------------------------------------------------------------------------------------ CLI
def test_port_in_use_is_one_line_exit_2_and_no_url(test_bundle, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = {"NOA_EDGE_BUNDLE": str(test_bundle), "PATH": "/usr/bin:/bin"}
        for args in (["demo", "--port", str(port)],
                     ["serve", "--bundle", str(test_bundle), "--source", "none", "--data-dir", str(tmp_path),
                      "--port", str(port)]):
            r = subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, cwd=ROOT,
                               env=env, timeout=120)
            assert r.returncode == 2, (args, r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and f"port {port} is in use" in lines[0] and "--port" in lines[0], r.stderr
            assert "http://" not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_demo_keeps_exams_in_a_temporary_folder(test_bundle):
    port = free_port()
    env = {"NOA_EDGE_BUNDLE": str(test_bundle), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "demo", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert f"http://127.0.0.1:{port}/" in lines[0]
        folder = re.search(r"exams are kept in (\S+) \(temporary", lines[1]).group(1)
        assert "noa-edge-demo-" in folder

        def ready():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).json()
            except httpx.HTTPError:
                return None
        health = wait_until(ready, "the demo daemon")
        assert health["data_dir"] == folder.rsplit("/", 1)[1]
        assert (Path(folder) / "exams.sqlite3").exists()
    finally:
        proc.terminate()
        proc.wait(30)
    assert not Path(folder).exists()  # deleted when the demo stops


def test_hash_is_of_the_frame_not_of_its_encoding(client, demo_cine):
    """The same pixels uploaded as PNG and as lossless BMP are one frame_sha256."""
    rgb = cine_rgb(demo_cine, 44)
    bmp = cv2.imencode(".bmp", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    a = upload(client, png_of(rgb))
    b = client.post("/api/frames", files={"image": ("f.bmp", bmp, "image/bmp")}).json()
    assert a["frame_sha256"] == b["frame_sha256"] == hashlib.sha256(rgb.tobytes()).hexdigest()
    assert a["frame_id"] != b["frame_id"]
