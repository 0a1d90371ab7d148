"""POST /api/analyze: one held frame (or an upload, held first) with its ROI and clinical values → a stored exam.

A result is tied to exactly what produced it (issue 12): the held frame's pixels (frame_id, sha256), the ROI
drawn on exactly those pixels (its own proposal unless the user moved it), the values as typed (the one
parser: ambiguous numbers refused with the field named, nothing analysed), the patient and the side.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, File, Form, UploadFile

from ..clinical import parse_clinical, raw_inputs
from ..daemon import NoFrameError
from ..errors import InputError
from ..held_frames import FrameNotHeld, HeldFrame
from ..patient import clean_patient_id, clean_side
from ..roi import parse_roi
from .common import WebContext, declare, error, internal_error, public_exam

log = logging.getLogger("noa_edge.server")

ROI_METHODS = ("auto", "manual")


def resolve_roi(roi: str | None, roi_method: str | None, held: HeldFrame):
    """(box or None for the proposal, roi_method). "auto" must be this frame's own proposal: a box from
    another image is refused, never analysed as if it belonged to this one."""
    method = (roi_method or "").strip().lower() or None
    if method is not None and method not in ROI_METHODS:
        raise InputError("roi_method", f"roi_method must be auto or manual, not {roi_method!r}")
    box = parse_roi(roi, held.frame.shape) if roi and roi.strip() else None  # ValueError → field roi
    if method == "manual" and box is None:
        raise InputError("roi", "roi_method manual needs the roi 'x,y,w,h' the user drew")
    if method == "auto":
        if box is not None and tuple(box) != tuple(held.roi):
            raise InputError("roi", f"roi {','.join(map(str, box))} is not this frame's proposed ROI "
                                    f"{','.join(map(str, held.roi))}: send roi_method manual if the user moved it")
        return None, "auto"
    return box, ("manual" if box is not None else "auto")


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon
    max_upload = ctx.max_upload

    @router.post("/api/analyze", summary="Analyse a held frame (frame_id), an uploaded image, or the live frame",
                 description="multipart: frame_id (a held frame: POST /api/freeze or /api/frames) OR image "
                             "(PNG/JPEG/DICOM, held first; frame_index picks a multi-frame DICOM's frame); "
                             "neither: the newest live frame is held and analysed. roi 'x,y,w,h' in that "
                             "frame's pixels (omit for the frame's own proposal), roi_method auto|manual, "
                             "side L|R, patient_id (stored locally only), fsh (IU/L), volume_ml (mL) or "
                             "length_cm/width_cm/height_cm (Lambert 0.71), edv or edv_cm_s (cm/s). Numbers: "
                             "'4,5' = '4.5'; ambiguous or odd forms ('1,000', '1e3', '1_5') → 422 naming the "
                             "field. Returns the stored exam; nomogram_probability is null without all "
                             "clinical values.",
                 responses=declare(404, 413, 422, 503, 507))
    def analyze(image: UploadFile | None = File(None), frame_id: str | None = Form(None),
                frame_index: str | None = Form(None), roi: str | None = Form(None),
                roi_method: str | None = Form(None), side: str | None = Form(None),
                fsh: str | None = Form(None), volume_ml: str | None = Form(None), edv: str | None = Form(None),
                edv_cm_s: str | None = Form(None), length_cm: str | None = Form(None),
                width_cm: str | None = Form(None), height_cm: str | None = Form(None),
                patient_id: str | None = Form(None)):
        form = {"fsh": fsh, "volume_ml": volume_ml, "edv": edv, "edv_cm_s": edv_cm_s, "length_cm": length_cm,
                "width_cm": width_cm, "height_cm": height_cm}
        upload = image if image is not None and (image.filename or image.size) else None
        try:
            # everything typed is checked before anything is held or run
            clinical = parse_clinical(form, d.analyzer.clinical_ranges())
            pid, side_ = clean_patient_id(patient_id), clean_side(side)
            if frame_id and frame_id.strip():
                if upload is not None:
                    raise InputError("image", "send either frame_id or image, not both")
                held = d.held.get(frame_id)
                trigger = "upload" if held.trigger == "upload" else "button"
            elif upload is not None:
                data = upload.file.read(max_upload + 1)
                if len(data) > max_upload:
                    d.count("uploads_too_large")
                    return error(413, f"image exceeds the upload limit of {max_upload / 1e6:.1f} MB", "image")
                held, trigger = d.hold_upload(data, upload.filename or "upload", frame_index), "upload"
            else:  # the API without a frame: hold the newest live frame now, then analyse exactly that
                try:
                    held, trigger = d.freeze("button"), "button"
                except NoFrameError:
                    raise InputError("image", "no image uploaded, no frame_id and no live frame available "
                                              "from the source") from None
            box, method = resolve_roi(roi, roi_method, held)
        except FrameNotHeld as exc:
            d.count("analyses_rejected")
            return error(404, str(exc), exc.field)
        except InputError as exc:
            d.count("analyses_rejected")
            return error(422, str(exc), exc.field)
        except ValueError as exc:  # ROI
            d.count("analyses_rejected")
            return error(422, str(exc), "roi")
        raw = raw_inputs(form)
        extra = {"side": side_, "context": "form" if raw else None, "inputs_raw": raw,
                 "frame_trigger": held.trigger}
        try:
            d.store.check_space()  # 507 before the model runs when the disk is under the watermark
            exam = d.analyzer.analyze(held=held, roi=box, roi_method=method, clinical=clinical, patient_id=pid,
                                      trigger=trigger, source=held.source, extra=extra)
        except Exception as exc:  # noqa: BLE001 - a full disk → 507; anything else → 500 with a log reference
            d.count("analyses_failed")
            return internal_error("analysis failed", exc)
        d.count("analyses_ok")
        return public_exam(exam)

    return router
