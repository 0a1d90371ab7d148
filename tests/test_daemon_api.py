"""The daemon's JSON API for real: `noa-edge serve` in a subprocess on a free port, real LiteRT on a small
real bundle (tests/conftest.py), the shipped phantom cine as the live source, SQLite store on disk."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pydicom
import pytest

from conftest import ROOT, DaemonProcess

CLINICAL = {"fsh": "18.5", "volume_ml": "9.2", "edv": "2.1"}


def cine_frame_png(cine: Path, index: int = 30) -> bytes:
    cap = cv2.VideoCapture(str(cine))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok
    return cv2.imencode(".png", frame)[1].tobytes()


@pytest.fixture(scope="module")
def daemon(test_bundle, demo_cine, tmp_path_factory):
    d = DaemonProcess(test_bundle, tmp_path_factory.mktemp("data"), source=f"video:{demo_cine}",
                      extra=["--no-auto", "--max-upload-mb", "2"]).wait_ready()
    yield d
    d.stop()



def analyze(client, png: bytes | None, **form):
    files = {"image": ("frame.png", png, "image/png")} if png is not None else None
    return client.post("/api/analyze", files=files, data=form)


def test_analyze_with_and_without_clinical_values(client, demo_cine):
    png = cine_frame_png(demo_cine)
    full = analyze(client, png, **CLINICAL)
    assert full.status_code == 200, full.text
    exam = full.json()
    assert 0.0 <= exam["dl_probability"] <= 1.0
    assert 0.0 <= exam["nomogram_probability"] <= 1.0
    assert exam["basis"] == "nomogram" and exam["label"] in ("NOA", "OA")
    assert exam["label"] == ("NOA" if exam["nomogram_probability"] >= exam["threshold"] else "OA")
    assert set(exam["points"]) == {"dl_logit", "fsh", "volume_ml", "edv_cm_s"}
    assert exam["inputs"]["fsh"] == 18.5 and exam["inputs"]["edv_cm_s"] == 2.1
    for stage in ("image_area", "roi", "crop", "invoke", "cam_overlay", "nomogram", "encode", "store", "total"):
        assert exam["timings"][stage] >= 0.0, stage
    assert exam["roi_method"] == "auto" and len(exam["roi"]) == 4
    assert exam["bundle"]["synthetic_demo"] is True and len(exam["bundle"]["sha256"]) == 64

    dl_only = analyze(client, png, roi="200,150,300,200").json()
    assert dl_only["nomogram_probability"] is None and dl_only["basis"] == "dl_only"
    assert dl_only["roi"] == [200, 150, 300, 200] and dl_only["roi_method"] == "manual"
    assert any("DL-only" in n for n in dl_only["notes"])

    dims = analyze(client, png, fsh="5", edv="4", length_cm="4.5", width_cm="3", height_cm="2.5").json()
    assert dims["inputs"]["volume_ml"] == pytest.approx(0.71 * 4.5 * 3 * 2.5, abs=1e-3)
    assert dims["inputs"]["volume_formula"] == "lambert_0.71"
    assert dims["nomogram_probability"] is not None

    listed = client.get("/api/exams").json()
    assert [e["id"] for e in listed["exams"][:3]] == [dims["id"], dl_only["id"], exam["id"]]
    again = client.get(f"/api/exams/{exam['id']}").json()
    assert again["nomogram_probability"] == exam["nomogram_probability"]

    svg = client.get(exam["links"]["nomogram_svg"])
    assert svg.status_code == 200 and svg.text.startswith("<svg") and "#c0392b" in svg.text  # patient marked
    for kind, media in (("frame", "image/png"), ("roi", "image/png"), ("overlay", "image/jpeg")):
        r = client.get(exam["links"][kind])
        assert r.headers["content-type"] == media, kind  # the overlay is a JPEG picture; frame and ROI lossless
        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 32, kind
    frame = cv2.imdecode(np.frombuffer(client.get(exam["links"]["frame"]).content, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(frame, cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR))  # lossless


def test_exports(client, demo_cine):
    exam = analyze(client, cine_frame_png(demo_cine), **CLINICAL).json()
    pdf = client.get(exam["links"]["report_pdf"])
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    png = client.get(exam["links"]["report_png"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    sc = pydicom.dcmread(io.BytesIO(client.get(exam["links"]["dicom_sc"]).content))
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    sr = pydicom.dcmread(io.BytesIO(client.get(exam["links"]["dicom_sr"]).content))
    assert sr.VerificationFlag == "UNVERIFIED"
    push = client.post(f"/api/exams/{exam['id']}/push")
    assert push.status_code == 409 and "--pacs" in push.json()["detail"]


def test_live_source_health_metrics_openapi(client):
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    assert health["source"]["state"] in ("live", "connecting")
    assert health["bundle"]["name"] == "test-bundle" and health["bundle"]["synthetic_demo"] is True
    assert health["runtime"]["runtime"] == "ai_edge_litert" and health["runtime"]["variant"] == "fp32"
    assert "delegate" in health
    live = client.get("/live.jpg")
    assert live.status_code == 200 and live.headers["content-type"] == "image/jpeg"
    assert live.headers["X-Frame-Size"] == "800x600"
    roi = client.get("/api/roi").json()
    x, y, w, h = roi["roi"]
    assert w > 100 and h > 50
    button = client.post("/api/analyze", data=CLINICAL)  # no image: the newest live frame
    assert button.status_code == 200 and button.json()["trigger"] == "button"
    metrics = client.get("/metrics").text
    assert "noa_edge_analyses_total{outcome=\"ok\"}" in metrics
    assert "noa_edge_stage_seconds_sum{stage=\"invoke\"}" in metrics
    assert "process_resident_memory_bytes" in metrics
    spec = client.get("/openapi.json").json()
    assert {"/api/analyze", "/api/exams", "/api/exams/{exam_id}", "/api/health", "/metrics"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "synthetic demo model — not for diagnosis" in page.text
    assert "http://" not in page.text.replace(str(client.base_url), "") and "https://" not in page.text  # no CDN
    assert client.get("/history").status_code == 200


BAD_REQUESTS = [
    # (name, files, form, status, field, words in the reason)
    ("corrupt png", {"image": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50, "image/png")}, {}, 422, "image",
     "not a readable image"),
    ("text file", {"image": ("notes.txt", b"patient notes, not an image\n" * 10, "text/plain")}, {}, 422, "image",
     "not a readable image"),
    ("empty file", {"image": ("empty.png", b"", "image/png")}, {}, 422, "image", "empty"),
    ("truncated dicom",
     {"image": ("us.dcm", b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00", "application/dicom")},
     {}, 422, "image", "DICOM"),
    ("negative fsh", None, {"fsh": "-3"}, 422, "fsh", "outside the plausible range"),
    ("absurd edv", None, {"edv": "500"}, 422, "edv", "outside the plausible range 0–50 cm/s"),
    ("absurd volume", None, {"volume_ml": "900"}, 422, "volume_ml", "Testicular volume"),
    ("fsh not a number", None, {"fsh": "high"}, 422, "fsh", "not a number"),
    ("fsh nan", None, {"fsh": "nan"}, 422, "fsh", "finite"),
    ("two of three dims", None, {"length_cm": "4", "width_cm": "3"}, 422, "height_cm", "height_cm missing"),
    ("roi outside", None, {"roi": "700,500,300,300"}, 422, "roi", "outside"),
    ("roi garbage", None, {"roi": "left half"}, 422, "roi", "x,y,w,h"),
]


@pytest.mark.parametrize("name,files,form,status,field,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_is_refused_with_a_reason(client, demo_cine, name, files, form, status, field, words):
    before = client.get("/api/exams?limit=1").json()["total"]
    if files is None:
        files = {"image": ("frame.png", cine_frame_png(demo_cine), "image/png")}
    r = client.post("/api/analyze", files=files, data=form)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and words in body["detail"], body
    assert client.get("/api/health").json()["status"] == "ok"  # still up
    assert client.get("/api/exams?limit=1").json()["total"] == before  # nothing stored


def test_oversize_upload_and_unknown_exam(client, daemon):
    before = client.get("/api/exams?limit=1").json()["total"]
    big = os.urandom(3 * 1024 * 1024)  # limit is 2 MB for this daemon
    r = client.post("/api/analyze", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    for path in ("/api/exams/999999", "/exams/999999/report.pdf", "/exams/999999/frame.png",
                 "/api/exams/999999/nomogram.svg"):
        r = client.get(path)
        assert r.status_code == 404 and "exam 999999 not found" in r.json()["detail"], path
    assert client.get("/api/exams/not-a-number").status_code == 422
    assert client.get("/api/exams?limit=1").json()["total"] == before
    assert not client.get("/api/health").json()["data_dir"].startswith("/")  # answers show no absolute paths
    db = sqlite3.connect(Path(daemon.args[daemon.args.index("--data-dir") + 1]) / "exams.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_token_and_bind_rules(test_bundle, tmp_path):
    import subprocess
    import sys

    refused = subprocess.run([sys.executable, "-m", "edge.cli", "serve", "--bundle", str(test_bundle),
                              "--host", "0.0.0.0", "--source", "none", "--data-dir", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert refused.returncode == 2 and "--token" in refused.stderr and "Traceback" not in refused.stderr
    bad_bundle = subprocess.run([sys.executable, "-m", "edge.cli", "serve", "--bundle", str(tmp_path / "nope"),
                                 "--source", "none", "--data-dir", str(tmp_path)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert bad_bundle.returncode == 2 and "manifest.json" in bad_bundle.stderr and "Traceback" not in bad_bundle.stderr

    d = DaemonProcess(test_bundle, tmp_path / "data", extra=["--token", "s3cret-token"]).wait_ready()
    try:
        assert httpx.get(d.url + "/api/health").status_code == 401
        assert httpx.get(d.url + "/static/app.js").status_code == 401
        assert httpx.get(d.url + "/api/health", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert httpx.get(d.url + "/api/health", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        with httpx.Client(base_url=d.url) as c:  # the page opened once with ?token= sets a cookie
            assert c.get("/?token=s3cret-token").status_code == 200
            assert c.get("/api/health").status_code == 200
    finally:
        d.stop()


def test_restart_after_kill9_keeps_exams(test_bundle, demo_cine, tmp_path):
    data = tmp_path / "data"
    d = DaemonProcess(test_bundle, data).wait_ready()
    png = cine_frame_png(demo_cine)
    ids = []
    try:
        with httpx.Client(base_url=d.url, timeout=30) as c:
            for _ in range(2):
                ids.append(analyze(c, png, **CLINICAL).json()["id"])
        os.kill(d.proc.pid, signal.SIGKILL)
        d.proc.wait(10)
    finally:
        d.stop()
    d2 = DaemonProcess(test_bundle, data).wait_ready()
    try:
        with httpx.Client(base_url=d2.url, timeout=30) as c:
            listed = [e["id"] for e in c.get("/api/exams").json()["exams"]]
            assert set(ids) <= set(listed)
            assert c.get(f"/api/exams/{ids[0]}").json()["nomogram_probability"] is not None
            assert c.get(f"/exams/{ids[1]}/overlay.png").status_code == 200
            assert c.get("/history").text.count("/report.pdf") >= 2
    finally:
        d2.stop()


# ------------------------------------------------------------------------------------- storage faults
def test_disk_watermark_degrades_health_and_refuses_analysis(test_bundle, demo_cine, tmp_path):
    """--min-free-mb above the real free space (100 TB): the state of a nearly full disk, without filling one."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = DaemonProcess(test_bundle, tmp_path / "data", source=f"folder:{inbox}",
                      extra=["--min-free-mb", "100000000"]).wait_ready()
    try:
        with httpx.Client(base_url=d.url, timeout=60) as c:
            health = c.get("/api/health").json()
            assert health["status"] == "degraded" and health["storage"]["ok"] is False
            assert health["storage"]["free_bytes"] > 0 and "watermark" in health["storage"]["problem"]
            r = analyze(c, cine_frame_png(demo_cine), **CLINICAL)
            assert r.status_code == 507 and "free disk space" in r.json()["detail"], r.text
            assert "noa_edge_disk_free_bytes" in c.get("/metrics").text
            (inbox / "scan.png").write_bytes(cine_frame_png(demo_cine))  # an automatic analysis: refused too
            def refused():  # the automatic path says so in the log (and keeps the file for later)
                log = d.log()
                return "free disk space" in log or ("scan.png" in log and "StoreFullError" in log)

            deadline = time.monotonic() + 60
            while not refused() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert refused(), d.log()
            assert c.get("/api/exams").json()["total"] == 0
    finally:
        d.stop()


def test_disk_full_on_a_tiny_tmpfs_is_507_never_500(test_bundle, demo_cine, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); SQLite's own 'disk is full' "
                    "is covered by test_store.py (max_page_count)")
    d = None
    try:
        d = DaemonProcess(test_bundle, small / "data", extra=["--min-free-mb", "0"],  # let SQLite hit the wall
                          log_path=tmp_path / "daemon.log").wait_ready()
        png = cine_frame_png(demo_cine)
        with httpx.Client(base_url=d.url, timeout=60) as c:
            statuses = []
            while 507 not in statuses and len(statuses) < 12:
                r = analyze(c, png, **CLINICAL)
                statuses.append(r.status_code)
                assert r.status_code in (200, 507), (statuses, r.text)
                if r.status_code == 507:
                    assert "disk is full" in r.json()["detail"], r.text
            assert statuses[-1] == 507 and statuses[0] == 200, statuses
            health = c.get("/api/health").json()
            assert health["status"] == "degraded" and "could not grow" in health["storage"]["problem"]
            stored = c.get("/api/exams").json()["total"]
            assert stored == statuses.count(200)  # every acknowledged exam is there, nothing half-stored
            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
            assert analyze(c, png, **CLINICAL).status_code == 200  # room again: the daemon carries on
            assert c.get("/api/health").json()["status"] == "ok"
        d.stop()
        db = sqlite3.connect(small / "data" / "exams.sqlite3")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM exams").fetchone()[0] == stored + 1
        db.close()
    finally:
        if d is not None:
            d.stop()
        subprocess.run(["umount", str(small)], capture_output=True)

