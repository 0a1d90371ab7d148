"""The live view: the newest frame as JPEG, the MJPEG stream, and the automatic ROI on the newest frame."""

from __future__ import annotations

import time

import cv2
from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from ..roi import find_image_area, propose_roi
from .common import WebContext, error


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon

    @router.get("/live.jpg", summary="Newest frame of the source as JPEG")
    def live_jpg():
        frame, seq = d.latest_frame()
        if frame is None:
            st = d.source_status()
            return error(503, f"no frame from the source yet (state: {st['state']}{': ' + st['error'] if st['error'] else ''})")
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        return Response(buf.tobytes(), media_type="image/jpeg",
                        headers={"X-Frame-Seq": str(seq), "X-Frame-Size": f"{frame.shape[1]}x{frame.shape[0]}"})

    @router.get("/live.mjpg", summary="The source as an MJPEG stream (≈10 fps)")
    def live_mjpg():
        def frames():
            last = -1
            while True:
                frame, seq = d.latest_frame()
                if frame is not None and seq != last:
                    last = seq
                    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
                    yield b"--frame\r\nContent-Type: image/jpeg\r\n\r\n" + buf.tobytes() + b"\r\n"
                time.sleep(0.1)
        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame")

    @router.get("/api/roi", summary="Automatic image area and testis ROI on the newest frame")
    def auto_roi():
        frame, seq = d.latest_frame()
        if frame is None:
            return error(503, "no frame from the source yet")
        t0 = time.perf_counter()
        area = find_image_area(frame)
        roi = propose_roi(frame, area)
        return {"frame_seq": seq, "frame_size": [frame.shape[1], frame.shape[0]], "image_area": list(area),
                "roi": list(roi), "ms": round((time.perf_counter() - t0) * 1000, 2)}

    return router
