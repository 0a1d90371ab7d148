"""The live view: the newest frame as JPEG, the MJPEG stream, and the automatic ROI on the newest frame.

The stream is an async generator: while no new frame arrives it waits on the event loop (no worker
thread held), it ends as soon as the client disconnects, and at most MAX_STREAMS run at once (503 beyond),
so aborted or idle viewers can never starve the API. Only the JPEG encoding of a new frame runs in a thread.
"""

from __future__ import annotations

import asyncio
import time

import cv2
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..roi import find_image_area, propose_roi
from .common import WebContext, declare, error

MAX_STREAMS = 4
STREAM_PERIOD_S = 0.1  # ≈10 fps at most
BOUNDARY = "frame"


def _jpeg(frame, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else b""


class _CountedStream(StreamingResponse):
    """Gives its slot back however the stream ends (finished, client gone, cancelled, never started)."""

    def __init__(self, counter: dict, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._counter = counter

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._counter["open"] -= 1


def build(ctx: WebContext) -> APIRouter:
    router = APIRouter()
    d = ctx.daemon
    streams = {"open": 0}

    def no_frame():
        st = d.source_status()
        why = f"{st['state']}: {st['error']}" if st["error"] else st["state"]
        return error(503, f"no frame from the source yet (state: {why})")

    @router.get("/live.jpg", summary="Newest frame of the source as JPEG", response_class=Response,
                responses=declare(503, jpeg="image/jpeg"))
    def live_jpg():
        frame, seq = d.latest_frame()
        if frame is None:
            return no_frame()
        return Response(_jpeg(frame, 85), media_type="image/jpeg",
                        headers={"X-Frame-Seq": str(seq), "X-Frame-Size": f"{frame.shape[1]}x{frame.shape[0]}"})

    @router.get("/live.mjpg", summary="The source as an MJPEG stream (≈10 fps)", response_class=StreamingResponse,
                description=f"Ends when the client disconnects; at most {MAX_STREAMS} at once (503 beyond). "
                            "503 at once when the daemon has no source.",
                responses=declare(503, mjpeg=f"multipart/x-mixed-replace; boundary={BOUNDARY}"))
    async def live_mjpg(request: Request):
        if d.grabber is None:
            return no_frame()
        if streams["open"] >= MAX_STREAMS:
            return error(503, f"too many live streams open (at most {MAX_STREAMS}); close another viewer",
                         headers={"Retry-After": "5"})

        async def frames():
            last = -1
            while not await request.is_disconnected():
                frame, seq = d.latest_frame()
                if frame is not None and seq != last:
                    last = seq
                    jpeg = await run_in_threadpool(_jpeg, frame, 80)
                    yield b"--" + BOUNDARY.encode() + b"\r\nContent-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n"
                await asyncio.sleep(STREAM_PERIOD_S)

        streams["open"] += 1  # the event loop is single-threaded: no lock needed
        return _CountedStream(streams, frames(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}")

    @router.get("/api/roi", summary="Automatic image area and testis ROI on the newest frame",
                responses=declare(503))
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
