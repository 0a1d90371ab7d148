"""Exam export: PNG/PDF report, DICOM Secondary Capture + Comprehensive SR (checked by pydicom round
trip, dcmtk's dcmdump/dsrdump and, when Debian's dicom3tools is installed, dciodvfy), and C-STORE to a
real dcmtk `storescp` standing in for the PACS."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import examples

from edge.dicom_io import DicomConfigError, decode_dicom_bytes, decode_dicom_path
from edge.export import (
    ExportError,
    PacsError,
    push_to_pacs,
    report_png,
    secondary_capture,
    structured_report,
    to_dicom_bytes,
)
from edge.report_pdf import report_pdf

DCMDUMP = shutil.which("dcmdump")
DSRDUMP = shutil.which("dsrdump")
STORESCP = shutil.which("storescp")
DCIODVFY = shutil.which("dciodvfy")
needs_dcmtk = pytest.mark.skipif(DCMDUMP is None, reason="dcmtk not installed (apt install dcmtk)")


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _exam(**changes) -> dict:
    frame = decode_dicom_path(examples.get_path("rgb_color"))[0]
    x, y, w, h = 100, 60, 120, 90
    ramp = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    heat = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)[:, :, ::-1]
    overlay = (0.5 * frame[y : y + h, x : x + w] + 0.5 * heat).astype(np.uint8)
    exam = {
        "id": 17,
        "created": "2025-05-01T10:11:12+00:00",
        "dl_probability": 0.8731,
        "nomogram_probability": 0.912,
        "label": "NOA",
        "threshold": 0.5,
        "inputs": {"fsh": 21.3, "volume_ml": 8.2, "edv_cm_s": 2.1},
        "points": {"dl_logit": 45.2, "fsh": 60.1, "volume_ml": 30.0, "edv_cm_s": 12.5},
        "roi": [x, y, w, h],
        "bundle": {"name": "demo", "sha256": "ab12" * 16, "synthetic_demo": True},
        "timings": {"roi": 1.2, "infer": 14.3, "nomogram": 0.1},
        "frame_png": _png(frame),
        "overlay_png": _png(overlay),
        "patient_id": "PID-4711",
    }
    exam.update(changes)
    return exam


# --------------------------------------------------------------------------------------------- report


def test_report_png_renders_a4_page_with_frame_and_banner():
    data = report_png(_exam())
    img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert img.shape == (1754, 1240, 3)
    assert 20_000 < len(data) < 5_000_000
    # the red synthetic-demo banner is drawn, and not when the model is real
    red = np.all(img == (198, 40, 40), axis=2).sum()
    assert red > 20_000
    real = np.asarray(Image.open(io.BytesIO(report_png(_exam(bundle={"name": "clinic", "sha256": "0" * 64,
                                                                            "synthetic_demo": False})))))
    assert np.all(real[..., :3] == (198, 40, 40), axis=2).sum() == 0


def test_report_pdf_is_a_one_page_pdf():
    data = report_pdf(_exam(nomogram_probability=None, inputs={"fsh": None, "volume_ml": None, "edv_cm_s": None},
                            points={}))
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    assert data.count(b"/Type /Page\n") + data.count(b"/Type /Page ") + data.count(b"/Type /Page/") >= 1
    assert b"/Count 1" in data
    assert 20_000 < len(data) < 5_000_000


PDFTOTEXT = shutil.which("pdftotext")


def _pdf_text(data: bytes) -> str:
    out = subprocess.run([PDFTOTEXT, "-", "-"], input=data, capture_output=True, check=True).stdout.decode()
    return " ".join(out.split())


@pytest.mark.skipif(PDFTOTEXT is None, reason="poppler-utils not installed (apt install poppler-utils)")
def test_report_pdf_is_text_with_the_sentence_and_the_nomogram():
    from edge.nomogram import load_nomogram
    from edge.wording import result_sentence

    manifest = json.loads((Path(__file__).parent.parent / "firmware_assets/demo-phantom/manifest.json").read_text())
    exam = _exam(side="R", frame_sha256="ab" * 32, thresholds={"nomogram": 0.5, "dl_only": 0.5})
    svg = load_nomogram(manifest).render_svg({"dl_probability": 0.8731, "fsh": 21.3, "volume_ml": 8.2, "edv_cm_s": 2.1})
    data = report_pdf(exam, svg)
    text = _pdf_text(data)
    assert result_sentence(exam) in text  # "91.2 % probability of NOA (nomogram); above the 50 % threshold → NOA."
    assert "Total points" in text and "Probability of NOA" in text  # the nomogram, as text
    assert "Serum FSH" in text and "21.3 IU/L" in text and "Right testis" in text and "PID-4711" in text
    assert "0.912" not in text and "1.000" not in text  # percentages, never raw probabilities
    for key in ("dl_logit", "edv_cm_s", "volume_ml"):
        assert key not in text
    assert b"/Count 1" in data  # still one page
    dl_only = _pdf_text(report_pdf(_exam(nomogram_probability=None, points={}), svg))
    assert "Total points" not in dl_only and "image model alone" in dl_only  # no empty nomogram for DL-only


def test_report_of_broken_exam_is_a_clear_error():
    with pytest.raises(ExportError, match="exam 17: frame_png is not a readable image"):
        report_png(_exam(frame_png=b"not a png"))
    with pytest.raises(ExportError, match="exam 17: overlay_png is missing"):
        report_pdf(_exam(overlay_png=None))
    with pytest.raises(ExportError, match="created"):
        report_png(_exam(created="yesterday"))
    with pytest.raises(ExportError, match="exam 17: malformed field"):
        report_png(_exam(timings={"infer": "fast"}))
    with pytest.raises(ExportError, match="exam 17: malformed field"):
        structured_report(_exam(inputs={"fsh": "high", "volume_ml": None, "edv_cm_s": None}))


# --------------------------------------------------------------------------------------------- DICOM


def _roundtrip(ds):
    data = to_dicom_bytes(ds)
    assert data[128:132] == b"DICM"
    return pydicom.dcmread(io.BytesIO(data)), data


def test_secondary_capture_roundtrip_and_pixels(tmp_path):
    exam = _exam()
    sc = secondary_capture(exam)
    back, data = _roundtrip(sc)
    assert back.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert back.BurnedInAnnotation == "YES"
    assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
    assert "UNVERIFIED" in back.SeriesDescription and "not for diagnostic use" in back.SeriesDescription
    assert back.PatientID == "PID-4711"
    assert pydicom.uid.UID(back.SOPInstanceUID).is_valid
    assert back.SOPInstanceUID != back.SeriesInstanceUID != back.StudyInstanceUID
    # our own decoder reads what we wrote, and it is the report page
    page = decode_dicom_bytes(data, "sc.dcm")[0]
    assert np.array_equal(page, np.asarray(Image.open(io.BytesIO(report_png(exam))).convert("RGB")))
    # same exam -> same UIDs (re-push replaces instead of duplicating); other exam -> other UIDs
    assert secondary_capture(exam).SOPInstanceUID == sc.SOPInstanceUID
    assert secondary_capture(_exam(id=18)).SOPInstanceUID != sc.SOPInstanceUID
    overlay = secondary_capture(exam, content="overlay")
    assert overlay.SOPInstanceUID != sc.SOPInstanceUID
    assert overlay.Columns == 320 and overlay.Rows > 240  # frame + burned-in warning strip
    with pytest.raises(ExportError, match="content"):
        secondary_capture(exam, content="banana")


def test_patient_id_is_optional_and_source_study_is_kept():
    sc = secondary_capture(_exam(patient_id=None, study_instance_uid="1.2.3.4.5"))
    assert sc.PatientID == "" and sc.StudyInstanceUID == "1.2.3.4.5"


def _sr_items(ds) -> dict:
    out = {}
    for item in ds.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            out[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "TEXT":
            out[name] = item.TextValue
        elif item.ValueType == "CODE":
            out[name] = item.ConceptCodeSequence[0].CodeValue
    return out


def test_structured_report_roundtrip_and_content():
    sr = structured_report(_exam())
    back, _ = _roundtrip(sr)
    assert back.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert back.Modality == "SR"
    assert back.VerificationFlag == "UNVERIFIED" and back.CompletionFlag == "COMPLETE"
    items = _sr_items(back)
    assert items["Deep learning probability of NOA"] == pytest.approx(0.8731)
    assert items["Nomogram probability of NOA"] == pytest.approx(0.912)
    assert items["Decision threshold"] == pytest.approx(0.5)
    assert items["Predicted class"] == "NOA"
    assert items["Serum FSH"] == pytest.approx(21.3)
    assert items["Testicular volume"] == pytest.approx(8.2)
    assert items["EDV"] == pytest.approx(2.1)
    assert items["Nomogram points: Serum FSH (IU/L)"] == pytest.approx(60.1)  # human labels, not keys (issue 12)
    assert not any(key in name for name in items for key in ("dl_logit", "edv_cm_s", "volume_ml"))
    assert items["Result in words"] == "91.2 % probability of NOA (nomogram); above the 50 % threshold -> NOA."
    assert items["Model bundle sha256"] == "ab12" * 16
    assert "not for diagnostic use" in items["Comment"] and "Synthetic demo" in items["Comment"]


def test_structured_report_without_clinical_values():
    sr = structured_report(_exam(nomogram_probability=None, label="OA", points={},
                                 inputs={"fsh": None, "volume_ml": 7.0, "edv_cm_s": None}))
    items = _sr_items(sr)
    assert "not computed" in items["Nomogram probability of NOA"]
    assert items["Predicted class"] == "OA"
    assert items["Clinical inputs not given"] == "Serum FSH, EDV"
    assert "Serum FSH" not in items and items["Testicular volume"] == 7.0
    with pytest.raises(ExportError, match="label must be NOA or OA"):
        structured_report(_exam(label="maybe"))


@needs_dcmtk
def test_dcmtk_parses_sc_and_sr(tmp_path):
    exam = _exam()
    sc_path, sr_path = tmp_path / "sc.dcm", tmp_path / "sr.dcm"
    sc_path.write_bytes(to_dicom_bytes(secondary_capture(exam)))
    sr_path.write_bytes(to_dicom_bytes(structured_report(exam)))
    for path in (sc_path, sr_path):
        out = subprocess.run([DCMDUMP, "-q", "+E", str(path)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "(0008,0018)" in out.stdout
    out = subprocess.run([DCMDUMP, "-q", str(sc_path)], capture_output=True, text=True)
    assert "(0028,0301) CS [YES]" in out.stdout  # BurnedInAnnotation
    # dsrdump checks the SR document structure (value types, relationships) against the IOD
    out = subprocess.run([DSRDUMP, str(sr_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Verification Flag   : UNVERIFIED" in out.stdout
    assert '"Deep learning probability of NOA")="0.8731"' in out.stdout
    assert "E:" not in out.stderr and "W:" not in out.stderr, out.stderr


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (apt install dicom3tools)")
def test_dciodvfy_finds_no_errors(tmp_path):
    exam = _exam()
    for name, ds in [("sc", secondary_capture(exam)), ("sco", secondary_capture(exam, content="overlay")),
                     ("sr", structured_report(exam))]:
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(to_dicom_bytes(ds))
        out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], (name, errors)


# --------------------------------------------------------------------------------------------- PACS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_storescp(port: int, out_dir, *extra) -> subprocess.Popen:
    proc = subprocess.Popen([STORESCP, "-aet", "PACS", *extra, "-od", str(out_dir), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("storescp did not start")


@pytest.mark.skipif(STORESCP is None, reason="dcmtk storescp not installed")
def test_push_to_real_storescp(tmp_path):
    exam = _exam()
    sc, sr = secondary_capture(exam), structured_report(exam)
    port = _free_port()
    proc = _start_storescp(port, tmp_path)
    try:
        statuses = push_to_pacs([sc, sr], f"PACS@127.0.0.1:{port}", calling_ae="NOAEDGE")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [s["ok"] for s in statuses] == [True, True]
    assert [s["status"] for s in statuses] == [0, 0]
    stored = sorted(p for p in tmp_path.iterdir() if p.is_file())
    assert len(stored) == 2
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in stored}
    assert uids == {sc.SOPInstanceUID, sr.SOPInstanceUID}
    received_sr = next(pydicom.dcmread(p) for p in stored if pydicom.dcmread(p).Modality == "SR")
    assert received_sr.VerificationFlag == "UNVERIFIED"


@pytest.mark.skipif(STORESCP is None, reason="dcmtk storescp not installed")
def test_pacs_refusing_association_is_a_clear_error(tmp_path):
    port = _free_port()
    proc = _start_storescp(port, tmp_path, "--refuse")
    try:
        with pytest.raises(PacsError, match=f"PACS@127.0.0.1:{port} rejected the association"):
            push_to_pacs([structured_report(_exam())], f"PACS@127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_unreachable_pacs_is_a_clear_error():
    port = _free_port()  # nothing listens there
    with pytest.raises(PacsError, match=f"PACS PACS@127.0.0.1:{port} unreachable: Connection refused"):
        push_to_pacs([structured_report(_exam())], f"PACS@127.0.0.1:{port}")
    with pytest.raises(DicomConfigError, match="AE_TITLE@host:port"):
        push_to_pacs([], "127.0.0.1:104")
