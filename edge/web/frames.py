"""Held frames over HTTP: freeze the live frame, upload a file as a held frame, list them, get one's pixels.

A freeze is an object (issue 12): the page shows /frames/{frame_id}.png (the exact pixels, lossless) and
analyses by frame_id, so the result is always about the image on screen.
"""

from __future__ import annotations

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import Response

from ..daemon import NoFrameError
from ..errors import InputError
from ..held_frames import FrameNotHeld
from ..imaging import gray_if_gray, png_bytes
from .common import WebContext, declare, error


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon
    max_upload = ctx.max_upload

    @router.post("/api/freeze", summary="Hold the newest live frame (frame_id, sha256, image area, its own ROI)",
                 responses=declare(503))
    def freeze():
        try:
            return d.freeze("user").public()
        except NoFrameError as exc:
            return error(503, str(exc))

    @router.post("/api/frames", summary="Upload a PNG/JPEG/DICOM as a held frame",
                 description="multipart: image (PNG/JPEG/DICOM), frame_index (multi-frame DICOM; default the "
                             "middle frame). Same body as /api/freeze plus n_frames and frame_index.",
                 responses=declare(413, 422))
    def upload(image: UploadFile | None = File(None), frame_index: str | None = Form(None)):
        if image is None or not (image.filename or image.size):
            return error(422, "no image file in the upload (field 'image')", "image")
        data = image.file.read(max_upload + 1)
        if len(data) > max_upload:
            d.count("uploads_too_large")
            return error(413, f"image exceeds the upload limit of {max_upload / 1e6:.1f} MB", "image")
        try:
            return d.hold_upload(data, image.filename or "upload", frame_index).public()
        except InputError as exc:
            return error(422, str(exc), exc.field)

    @router.get("/api/frames", summary="The held frames, newest first")
    def list_frames():
        return {"frames": [h.public() for h in d.held.newest()]}

    @router.get("/api/frames/{frame_id}", summary="One held frame", responses=declare(404))
    def get_frame(frame_id: str):
        try:
            return d.held.get(frame_id).public()
        except FrameNotHeld as exc:
            return error(404, str(exc), exc.field)

    @router.get("/frames/{frame_id}.png", summary="A held frame's exact pixels (lossless PNG)",
                response_class=Response, responses=declare(404, png="image/png"))
    def frame_png(frame_id: str):
        try:
            held = d.held.get(frame_id)
        except FrameNotHeld as exc:
            return error(404, str(exc), exc.field)
        return Response(png_bytes(gray_if_gray(held.frame, held.gray), level=1), media_type="image/png",
                        headers={"X-Frame-Sha256": held.sha256})

    return router
