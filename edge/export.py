"""Exporting one exam: a one-page PNG/PDF report, DICOM Secondary Capture + Structured Report, and
C-STORE to a PACS.

Everything is drawn locally with Pillow and its bundled font (the cart is offline). Every output says
"unverified - not for diagnostic use", and "synthetic demo model - not for diagnosis" when the bundle
is the synthetic demo. DICOM UIDs are derived from the exam, so exporting the same exam twice gives the
same instances (a PACS replaces rather than duplicates them).

An exam is the store's dict: id, created (ISO), dl_probability, nomogram_probability (or None), label,
threshold, inputs {fsh, volume_ml, edv_cm_s}, points {predictor: points}, roi [x, y, w, h],
bundle {name, sha256, synthetic_demo}, timings {stage: ms}, frame_png, overlay_png, patient_id (optional),
study_instance_uid (optional: the study the frame came from, e.g. over DICOM).

Every surface uses the same words (edge.wording): percentages, the result sentence, human labels with
units, local time with zone. The PDF is a real text PDF in edge/report_pdf.py (it reuses the helpers here).
Over ~450 lines on purpose: the PNG report, the SC and the SR share the field checks (_clear_errors), fonts
and the report image.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import logging
import socket
import uuid as uuid_mod
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from . import __version__
from .clinical import FIELDS as CLINICAL_FIELDS
from .dicom_io import parse_pacs
from .errors import EdgeError
from .exam import Exam
from .wording import display, percent, point_label

log = logging.getLogger("noa_edge.export")

UNVERIFIED = "Unverified - not for diagnostic use"
SYNTHETIC = "Synthetic demo model - not for diagnosis"
MANUFACTURER = "noa-edge"
CODING_SCHEME = "99NOAEDGE"  # local coding scheme (the "99" prefix is reserved for private schemes)



class ExportError(EdgeError, ValueError):
    """The exam cannot be exported (missing or unreadable field); the message says which."""


class PacsError(EdgeError, RuntimeError):
    """The PACS could not be reached or refused the association."""


# ---------------------------------------------------------------------------------------------
# Helpers


def _clear_errors(fn):
    """A malformed exam field (text where a number belongs, ...) becomes an ExportError, not a 500."""

    @functools.wraps(fn)
    def wrapper(exam, *args, **kwargs):
        try:
            return fn(exam, *args, **kwargs)
        except ExportError:
            raise
        except (TypeError, ValueError, KeyError) as exc:
            exam_id = exam.get("id") if isinstance(exam, dict) else None
            raise ExportError(f"exam {exam_id}: malformed field for {fn.__name__}: {exc}") from None

    return wrapper


def _png_to_image(data: bytes | None, field: str, exam_id) -> Image.Image:
    if not data:
        raise ExportError(f"exam {exam_id}: {field} is missing")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not a readable image"; said so
        raise ExportError(f"exam {exam_id}: {field} is not a readable image ({exc})") from None
    return img.convert("RGB")


def _created(exam) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(str(exam["created"]))
    except (KeyError, ValueError):
        raise ExportError(f"exam {exam.get('id')}: 'created' must be an ISO-8601 timestamp") from None


FONT_DIRS = (Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/TTF"), Path("/usr/share/fonts/dejavu"))


@functools.cache
def dejavu_files() -> tuple[Path, Path] | None:
    """DejaVu Sans regular + bold when installed (Debian fonts-dejavu-core: it has →, ≥, ×)."""
    for folder in FONT_DIRS:
        regular, bold = folder / "DejaVuSans.ttf", folder / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans when installed, else Pillow's bundled font (nothing is fetched either way)."""
    files = dejavu_files()
    return ImageFont.truetype(str(files[0]), size) if files else ImageFont.load_default(size=size)


def _drawable(text: str) -> str:
    """Pillow's bundled font has no arrow: spell it out when DejaVu is missing."""
    return text if dejavu_files() else text.replace("→", "->")


def _fit(img: Image.Image, box_w: int, box_h: int) -> Image.Image:
    scale = min(box_w / img.width, box_h / img.height)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------
# Report (A4 portrait at 150 dpi)

PAGE_W, PAGE_H, DPI = 1240, 1754, 150
MARGIN = 70


@_clear_errors
def report_image(exam: Exam) -> Image.Image:
    """The one-page report as a Pillow RGB image."""
    exam_id = exam.get("id")
    frame = _png_to_image(exam.get("frame_png"), "frame_png", exam_id)
    overlay = _png_to_image(exam.get("overlay_png"), "overlay_png", exam_id)
    bundle = exam.get("bundle") or {}
    page = Image.new("RGB", (PAGE_W, PAGE_H), "white")
    draw = ImageDraw.Draw(page)
    f_title, f_big, f_text, f_small = _font(40), _font(34), _font(24), _font(19)
    y = MARGIN

    draw.text((MARGIN, y), "noa-edge - testicular ultrasound: NOA vs OA", font=f_title, fill="black")
    y += 58
    _created(exam)  # a malformed time is an ExportError
    words = display(exam)
    side = {"L": "   Left testis", "R": "   Right testis"}.get(str(exam.get("side") or ""), "")
    who = f"   patient {exam['patient_id']}" if exam.get("patient_id") else ""
    draw.text((MARGIN, y), f"exam {exam_id}   {words['created_local']}{who}{side}", font=f_text, fill=(60, 60, 60))
    y += 44

    banners: list[tuple[str, tuple[int, int, int], tuple[int, int, int] | str]] = [
        (UNVERIFIED.upper(), (255, 236, 179), (120, 70, 0))]
    if bundle.get("synthetic_demo"):
        banners.insert(0, (SYNTHETIC.upper(), (198, 40, 40), "white"))
    for text, bg, fg in banners:
        draw.rectangle([MARGIN, y, PAGE_W - MARGIN, y + 52], fill=bg)
        draw.text((PAGE_W // 2, y + 26), text, font=f_text, fill=fg, anchor="mm")
        y += 62
    y += 10

    # Images: the frame with the ROI used, and the CAM overlay on the ROI.
    box_w, box_h = (PAGE_W - 2 * MARGIN - 30) // 2, 440
    shown = _fit(frame, box_w, box_h)
    roi = exam.get("roi")
    if roi:
        s = shown.width / frame.width
        x, yy, w, h = (float(v) for v in roi)
        ImageDraw.Draw(shown).rectangle(
            [x * s, yy * s, (x + w) * s - 1, (yy + h) * s - 1], outline=(255, 214, 0), width=3
        )
    cam = _fit(overlay, box_w, box_h)
    page.paste(shown, (MARGIN, y))
    page.paste(cam, (MARGIN + box_w + 30, y))
    draw.text((MARGIN, y + shown.height + 8), f"Frame, ROI {_roi_text(roi)} ({exam.get('roi_method', 'auto')})",
              font=f_small, fill="black")
    draw.text((MARGIN + box_w + 30, y + cam.height + 8), "Class activation map on the ROI",
              font=f_small, fill="black")
    y += max(shown.height, cam.height) + 50

    # Result: the label, the sentence every surface shows, and why this threshold.
    label = str(exam.get("label", "-"))
    draw.text((MARGIN, y), f"Result: {label}", font=f_big, fill=(150, 0, 0) if label == "NOA" else (0, 90, 0))
    y += 50
    for line in _wrap(draw, _drawable(words["sentence"]), f_text, PAGE_W - 2 * MARGIN):
        draw.text((MARGIN, y), line, font=f_text, fill="black")
        y += 32
    for line in _wrap(draw, words["threshold_explanation"], f_small, PAGE_W - 2 * MARGIN):
        draw.text((MARGIN, y), line, font=f_small, fill=(60, 60, 60))
        y += 26
    y += 14
    positive = (exam.get("labels") or {}).get("positive", "NOA")
    rows = [(f"Image model probability of {positive}", words["dl_probability_text"])]
    if exam.get("nomogram_probability") is None:
        rows.append(("Nomogram probability", "not computed - clinical values missing; image model alone"))
    else:
        rows.append((f"Nomogram probability of {positive}", percent(exam["nomogram_probability"])))
    rows += [(r["label"] + (f" ({r['unit']})" if r["unit"] else ""), r["value_text"]) for r in words["inputs"]]
    y = _table(draw, y, rows, f_text)

    points = exam.get("points") or {}
    if points:
        y += 16
        draw.text((MARGIN, y), "Nomogram points", font=f_text, fill="black")
        y += 36
        prow = [(point_label(str(k)), f"{float(v):.1f}") for k, v in points.items() if v is not None]
        prow.append(("Total", f"{sum(float(v) for v in points.values() if v is not None):.1f}"))
        y = _table(draw, y, prow, f_small, line=30)

    y += 16
    sha = str(bundle.get("sha256", "-"))
    timings = exam.get("timings") or {}
    meta = [
        ("Model bundle", f"{bundle.get('name', '-')}" + ("  (synthetic demo)" if bundle.get("synthetic_demo") else "")),
        ("Bundle sha256", sha),
        ("Timings (ms)", ", ".join(f"{k} {float(v):.1f}" for k, v in timings.items()) or "-"),
        ("Software", f"noa-edge {__version__}"),
    ]
    y = _table(draw, y, meta, f_small, line=30, key_w=220)

    foot = f"{UNVERIFIED}." + (f" {SYNTHETIC}." if bundle.get("synthetic_demo") else "") + \
        " Research software; the result must be confirmed by a physician."
    foot_lines = _wrap(draw, foot, f_small, PAGE_W - 2 * MARGIN)
    top = PAGE_H - MARGIN - 28 * len(foot_lines) - 12
    draw.line([MARGIN, top, PAGE_W - MARGIN, top], fill=(150, 150, 150))
    for i, text in enumerate(foot_lines):
        draw.text((MARGIN, top + 12 + 28 * i), text, font=f_small, fill=(90, 90, 90))
    return page


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels."""
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + ([current] if current else [])


def _roi_text(roi) -> str:
    return "-" if not roi else "x,y,w,h = " + ",".join(str(int(v)) for v in roi)


def _table(draw, y, rows, font, line: int = 36, key_w: int = 420) -> int:
    for key, value in rows:
        draw.text((MARGIN, y), key, font=font, fill=(70, 70, 70))
        draw.text((MARGIN + key_w, y), value, font=font, fill="black")
        y += line
    return y


def report_png(exam: Exam) -> bytes:
    """The one-page report as PNG bytes."""
    buf = io.BytesIO()
    report_image(exam).save(buf, format="PNG", dpi=(DPI, DPI), compress_level=3)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# DICOM


def _uid(exam, kind: str) -> str:
    """A stable UID per exam and object kind: 2.25.<128-bit hash> (the UUID-derived form, PS3.5 B.2)."""
    seed = "\x1f".join(["noa-edge", str(exam.get("id")), str(exam.get("created")), kind])
    uuid = uuid_mod.UUID(bytes=hashlib.sha256(seed.encode()).digest()[:16], version=5)
    return f"2.25.{uuid.int}"


def _base_dataset(exam: Exam, sop_class: str, kind: str, modality: str, series_number: int,
                  series_description: str) -> Dataset:
    created = _created(exam)
    now = dt.datetime.now()
    ds = Dataset()
    patient_id = str(exam.get("patient_id") or "")
    try:  # Latin-1 unless the patient id needs more (dcmtk's checkers prefer a single-byte set)
        patient_id.encode("latin-1")
        ds.SpecificCharacterSet = "ISO_IR 100"
    except UnicodeEncodeError:
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _uid(exam, kind)
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Patient (type 2: present, empty when unknown).
    ds.PatientName = ""
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # Study: the source study when known, else one study per exam.
    ds.StudyInstanceUID = str(exam.get("study_instance_uid") or _uid(exam, "study"))
    ds.StudyDate = created.strftime("%Y%m%d")
    ds.StudyTime = created.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = str(exam.get("id", ""))[:16]
    ds.AccessionNumber = ""
    # Series and equipment.
    ds.Modality = modality
    ds.SeriesInstanceUID = _uid(exam, f"series-{kind}")
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series_description[:64]
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "noa-edge"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = 1
    ds.ContentDate = created.strftime("%Y%m%d")
    ds.ContentTime = created.strftime("%H%M%S")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = dicom_uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = dicom_uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"NOAEDGE_{__version__}"[:16]
    ds.file_meta = meta
    return ds


@_clear_errors
def secondary_capture(exam: Exam, content: str = "report") -> Dataset:
    """DICOM Secondary Capture Image (RGB) of the report page (`content="report"`, default: the PACS
    viewer then shows frame, ROI, CAM, numbers and disclaimers) or of the frame with the CAM overlay
    pasted into the ROI (`content="overlay"`). All text is burned in, so BurnedInAnnotation = YES."""
    if content == "report":
        img = report_image(exam)
    elif content == "overlay":
        img = overlay_on_frame(exam)
    else:
        raise ExportError(f"secondary capture content must be 'report' or 'overlay', not {content!r}")
    synthetic = bool((exam.get("bundle") or {}).get("synthetic_demo"))
    desc = "noa-edge result UNVERIFIED not for diagnostic use" + (" SYNTHETIC DEMO" if synthetic else "")
    ds = _base_dataset(exam, dicom_uid.SecondaryCaptureImageStorage, f"sc-{content}", "OT", 901, desc)
    ds.ConversionType = "WSD"  # workstation
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = ("noa-edge " + ("report page" if content == "report" else "CAM overlay on ROI")
                                + ", " + UNVERIFIED)[:1024]
    ds.BurnedInAnnotation = "YES"
    ds.RecognizableVisualFeatures = "NO"
    ds.PatientOrientation = ""
    # Type 2C for a paired organ: the side when the exam knows it, else empty (= unknown).
    ds.Laterality = str(exam.get("side") or "") if str(exam.get("side") or "") in ("L", "R", "") else ""
    ds.ImageComments = UNVERIFIED + (f". {SYNTHETIC}." if synthetic else ".")
    pixels = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.PixelData = pixels.tobytes()
    return ds


@_clear_errors
def overlay_on_frame(exam: Exam) -> Image.Image:
    """The frame with the CAM overlay pasted into the ROI, the ROI outlined, and a burned-in warning."""
    exam_id = exam.get("id")
    frame = _png_to_image(exam.get("frame_png"), "frame_png", exam_id)
    overlay = _png_to_image(exam.get("overlay_png"), "overlay_png", exam_id)
    roi = exam.get("roi")
    if roi:
        x, y, w, h = (int(v) for v in roi)
        frame.paste(overlay.resize((max(1, w), max(1, h)), Image.Resampling.BILINEAR), (x, y))
        ImageDraw.Draw(frame).rectangle([x, y, x + w - 1, y + h - 1], outline=(255, 214, 0), width=2)
    synthetic = bool((exam.get("bundle") or {}).get("synthetic_demo"))
    text = f"noa-edge {exam.get('label', '')} - {UNVERIFIED}" + (f". {SYNTHETIC}" if synthetic else "")
    size = max(11, frame.width // 45)
    font = _font(size)
    line_h = int(size * 1.3)  # font.size: _font(size) is a FreeTypeFont of that size
    lines = _wrap(ImageDraw.Draw(frame), text, font, frame.width - 12)
    strip_h = line_h * len(lines) + 8
    out = Image.new("RGB", (frame.width, frame.height + strip_h), "black")
    out.paste(frame, (0, strip_h))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, 4 + i * line_h), line, font=font, fill=(255, 214, 0))
    return out


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning[:64]
    return item


def _content_item(value_type: str, concept: Dataset, relationship: str = "CONTAINS") -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([concept])
    return item


def _text(concept: Dataset, text: str) -> Dataset:
    item = _content_item("TEXT", concept)
    item.TextValue = text
    return item


def _num(concept: Dataset, value: float, unit: Dataset) -> Dataset:
    item = _content_item("NUM", concept)
    measured = Dataset()
    measured.NumericValue = f"{float(value):.6g}"
    measured.FloatingPointValue = float(value)
    measured.MeasurementUnitsCodeSequence = Sequence([unit])
    item.MeasuredValueSequence = Sequence([measured])
    return item


def _local(value: str, meaning: str) -> Dataset:
    return _code(value, CODING_SCHEME, meaning)


@_clear_errors
def structured_report(exam: Exam) -> Dataset:
    """DICOM Comprehensive SR of the result: DL and nomogram probability, label, threshold, inputs,
    nomogram points, ROI, bundle and its sha256. VerificationFlag UNVERIFIED, CompletionFlag COMPLETE,
    and a comment that it is not for diagnostic use."""
    bundle = exam.get("bundle") or {}
    synthetic = bool(bundle.get("synthetic_demo"))
    if exam.get("dl_probability") is None:
        raise ExportError(f"exam {exam.get('id')}: dl_probability is missing")
    desc = "noa-edge result SR UNVERIFIED not for diagnostic use" + (" SYNTHETIC DEMO" if synthetic else "")
    ds = _base_dataset(exam, dicom_uid.ComprehensiveSRStorage, "sr", "SR", 902, desc)
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.PreliminaryFlag = "PRELIMINARY"

    scheme = Dataset()
    scheme.CodingSchemeDesignator = CODING_SCHEME
    scheme.CodingSchemeName = "noa-edge local codes"
    scheme.CodingSchemeResponsibleOrganization = "noa-edge"
    ds.CodingSchemeIdentificationSequence = Sequence([scheme])

    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.ContinuityOfContent = "SEPARATE"

    ratio = _code("1", "UCUM", "no units")
    items = [
        _text(_code("121106", "DCM", "Comment"),
              f"{UNVERIFIED}. Produced automatically by noa-edge {__version__}; not reviewed by a physician."
              + (f" {SYNTHETIC}: the model was trained on phantom data." if synthetic else "")),
        _num(_local("DLPROB", "Deep learning probability of NOA"), exam["dl_probability"], ratio),
    ]
    nomogram_probability = exam.get("nomogram_probability")
    if nomogram_probability is None:
        items.append(_text(_local("NOMOPROB", "Nomogram probability of NOA"),
                           "not computed: clinical values missing; the DL result is shown alone"))
    else:
        items.append(_num(_local("NOMOPROB", "Nomogram probability of NOA"), nomogram_probability, ratio))
    if exam.get("threshold") is not None:
        items.append(_num(_local("THRESH", "Decision threshold"), exam["threshold"], ratio))
    label = str(exam.get("label", ""))
    if label not in ("NOA", "OA"):
        raise ExportError(f"exam {exam.get('id')}: label must be NOA or OA, not {label!r}")
    label_item = _content_item("CODE", _local("LABEL", "Predicted class"))
    label_item.ConceptCodeSequence = Sequence([
        _local("NOA", "Non-obstructive azoospermia") if label == "NOA" else _local("OA", "Obstructive azoospermia")
    ])
    items.append(label_item)

    inputs = exam.get("inputs") or {}
    missing = []
    for f in CLINICAL_FIELDS:
        if inputs.get(f.source) is None:
            missing.append(f.label)
        else:
            items.append(_num(_local(f.source.upper()[:16], f.label), inputs[f.source],
                              _code(f.ucum, "UCUM", f.ucum_meaning)))
    if missing:
        items.append(_text(_local("MISSING", "Clinical inputs not given"), ", ".join(missing)))
    for predictor, pts in (exam.get("points") or {}).items():
        if pts is not None:
            items.append(_num(_local(f"PTS_{predictor}"[:16], f"Nomogram points: {point_label(predictor)}"), pts,
                              _code("{points}", "UCUM", "points")))
    # the page's sentence; the arrow spelled out (the SR stays in the single-byte Latin-1 character set)
    words = display(exam)
    items.append(_text(_local("SENTENCE", "Result in words"), words["sentence"].replace("→", "->").replace("—", "-")))
    # the out-of-distribution check (edge/ood.py): flagged, within the threshold, or not checked
    ood_text = (words["ood_text"] + ". " if words.get("ood") else "") + words.get("ood_detail", "")
    items.append(_text(_local("OOD", "Out-of-distribution check"), ood_text.replace("—", "-")))
    if exam.get("roi"):
        items.append(_text(_local("ROI", "Region of interest x,y,w,h (pixels)"),
                           ",".join(str(int(v)) for v in exam["roi"])))
    items.append(_text(_local("BUNDLE", "Model bundle"),
                       f"{bundle.get('name', '-')}" + (" (synthetic demo)" if synthetic else "")))
    items.append(_text(_local("BUNDLESHA", "Model bundle sha256"), str(bundle.get("sha256", "-"))))
    ds.ContentSequence = Sequence(items)
    return ds


def to_dicom_bytes(ds: Dataset) -> bytes:
    """A DICOM Part 10 file (preamble, file meta) of `ds`, e.g. for a download endpoint."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# PACS


def push_to_pacs(datasets: list[Dataset], pacs: str, calling_ae: str = "NOAEDGE",
                 timeout_s: float = 10.0) -> list[dict]:
    """C-STORE each dataset to `pacs` ("AE@host:port"). Returns one status per dataset:
    {"sop_instance_uid", "sop_class_uid", "status" (int, 0 = success), "ok" (bool)}.
    Raises PacsError if the peer cannot be reached or refuses the association."""
    from pynetdicom import AE

    called_ae, host, port = parse_pacs(pacs)
    try:  # pynetdicom only logs why a connection failed; probe first for a clear message
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise PacsError(f"PACS {pacs} unreachable: {exc.strerror or exc}") from None

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [dicom_uid.ExplicitVRLittleEndian, dicom_uid.ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "aborted or did not answer"
        raise PacsError(f"PACS {pacs} {why} (called AE {called_ae!r}, calling AE {calling_ae!r})")
    results = []
    try:
        for ds in datasets:
            entry: dict[str, Any] = {"sop_instance_uid": str(ds.SOPInstanceUID),
                                     "sop_class_uid": str(ds.SOPClassUID)}
            try:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status is not None and "Status" in status else -1
            except Exception as exc:  # noqa: BLE001 - one failed object is reported, the others still go
                log.warning("C-STORE of %s to %s failed: %s", entry["sop_instance_uid"], pacs, exc)
                code = -1
            entry.update(status=code, ok=code == 0x0000 or code in (0xB000, 0xB007, 0xB006))
            results.append(entry)
    finally:
        assoc.release()
    log.info("pushed %d/%d object(s) to %s", sum(r["ok"] for r in results), len(results), pacs)
    return results
