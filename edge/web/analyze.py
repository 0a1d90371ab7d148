"""POST /api/analyze: one image (uploaded, or the live frame) with its ROI and clinical values → a stored exam."""

from __future__ import annotations

import logging

from fastapi import APIRouter, File, Form, UploadFile

from ..clinical import parse_clinical
from ..errors import InputError
from ..imaging import decode_image_bytes
from ..roi import parse_roi
from .common import WebContext, error, public_exam

log = logging.getLogger("noa_edge.server")


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon
    max_upload = ctx.max_upload

    @router.post("/api/analyze", summary="Analyse an uploaded image (or the newest live frame)",
                 description="multipart: image (PNG/JPEG/DICOM; omit to use the live frame), roi 'x,y,w,h' "
                             "(omit for the automatic ROI), fsh (IU/L), volume_ml (mL) or length_cm/width_cm/"
                             "height_cm (Lambert 0.71), edv (cm/s), patient_id (optional, stored locally only). "
                             "Returns the stored exam; nomogram_probability is null without all clinical values.")
    def analyze(image: UploadFile | None = File(None), roi: str | None = Form(None),
                fsh: str | None = Form(None), volume_ml: str | None = Form(None), edv: str | None = Form(None),
                length_cm: str | None = Form(None), width_cm: str | None = Form(None),
                height_cm: str | None = Form(None), patient_id: str | None = Form(None)):
        try:
            if image is not None and (image.filename or image.size):
                data = image.file.read(max_upload + 1)
                if len(data) > max_upload:
                    d.count("uploads_too_large")
                    return error(413, f"image exceeds the upload limit of {max_upload / 1e6:.1f} MB", "image")
                frame = decode_image_bytes(data, image.filename or "upload")
                trigger, source = "upload", "upload"
            else:
                frame, _ = d.latest_frame()
                if frame is None:
                    raise InputError("image", "no image uploaded and no live frame available from the source")
                trigger, source = "button", d.source_description()
            box = parse_roi(roi, frame.shape) if roi and roi.strip() else None
            clinical = parse_clinical({"fsh": fsh, "volume_ml": volume_ml, "edv": edv, "length_cm": length_cm,
                                       "width_cm": width_cm, "height_cm": height_cm},
                                      d.analyzer.clinical_ranges())
            pid = (patient_id or "").strip()[:64] or None
        except InputError as exc:
            d.count("analyses_rejected")
            return error(422, str(exc), exc.field)
        except ValueError as exc:  # ROI
            d.count("analyses_rejected")
            return error(422, str(exc), "roi")
        try:
            exam = d.analyzer.analyze(frame, roi=box, clinical=clinical, patient_id=pid, trigger=trigger,
                                      source=source)
        except Exception as exc:
            d.count("analyses_failed")
            log.exception("analysis failed")
            return error(500, f"analysis failed: {type(exc).__name__}: {exc}")
        d.count("analyses_ok")
        return public_exam(exam)

    return router
