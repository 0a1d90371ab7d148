"""The bench beyond the bare model: the daemon's whole frame-to-result path, stage by stage, and a
sustained live feed through the real capture thread.

Both run the real parts (Analyzer, SQLite store, FastAPI page, FrameGrabber + FreezeDetector) on frames of
the shipped phantom cine (or --cine), so the numbers are the ones a cart would see, and the end-to-end
time is set against a bare invoke of the same ROI in the same rounds (end_to_end_over_invoke).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from ..capture import DEMO_CINE, FrameGrabber, FreezeDetector, Source
from ..daemon import DaemonConfig
from ..pipeline import Analyzer
from ..preprocess import crop_roi, to_rgb_uint8
from ..roi import find_image_area, propose_roi
from ..store import ExamStore
from .stats import BenchError, ms_since, progress, rss_mb, summarize

PIPELINE_STAGES = ("decode", "image_area", "roi", "preprocess", "invoke", "cam", "nomogram", "encode", "store",
                   "render")
# edge.pipeline.Analyzer timing keys -> bench stage names (the vocabulary)
ANALYZER_STAGE_NAMES = {"image_area": "image_area", "roi": "roi", "crop": "preprocess", "invoke": "invoke",
                        "cam_overlay": "cam", "nomogram": "nomogram", "encode": "encode", "store": "store"}
DEMO_CLINICAL = {"fsh": 18.0, "volume_ml": 9.0, "edv_cm_s": 2.5}


class _CineFrames:
    """Frames of the phantom cine (decoded once, decode time per frame kept), with its frozen ranges."""

    def __init__(self, path: Path | None = None, limit: int = 120):
        self.path = Path(path) if path else DEMO_CINE
        if not self.path.is_file():
            raise BenchError(f"phantom cine not found: {self.path} (pass --cine PATH to a video)")
        cap = cv2.VideoCapture(str(self.path))
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 15.0
        self.frames: list[np.ndarray] = []
        self.decode_ms: list[float] = []
        while len(self.frames) < limit:
            t0 = time.perf_counter()
            ok, frame = cap.read()
            if not ok:
                break
            rgb = to_rgb_uint8(frame)
            self.decode_ms.append(ms_since(t0))
            self.frames.append(rgb)
        cap.release()
        if not self.frames:
            raise BenchError(f"{self.path}: no decodable frames")
        sidecar = Path(str(self.path) + ".json")
        frozen = json.loads(sidecar.read_text()).get("frozen", []) if sidecar.is_file() else []
        self.frozen = ([self.frames[a] for a, b in frozen if a < len(self.frames)]
                       or [self.frames[len(self.frames) // 2]])


def _make_analyzer(bundle_path: Path, variant: str, threads: int, data_dir: Path):
    store = ExamStore(data_dir)
    return Analyzer(bundle_path, variant=variant, threads=threads, store=store), store


def _page_renderer(bundle_path: Path, variant: str, threads: int, data_dir: Path):
    """GET /exams/{id} on the real FastAPI app (in-process, no socket), sharing the SQLite store."""
    # lazy: the web app costs ~0.4 s of imports (FastAPI, uvicorn, Jinja2) that every other `noa-edge`
    # command would pay, and TestClient needs httpx (a dev extra): a failure here only skips this stage
    from fastapi.testclient import TestClient

    from ..web import create_app

    app = create_app(DaemonConfig(bundle=str(bundle_path), source=None, data_dir=str(data_dir), variant=variant,
                                  threads=threads))
    client = TestClient(app, base_url="http://127.0.0.1")  # a loopback Host: the daemon refuses others
    client.__enter__()

    def render(exam_id: int) -> None:
        r = client.get(f"/exams/{exam_id}")
        if r.status_code != 200:
            raise BenchError(f"result page answered {r.status_code}: {r.text[:200]}")
        r = client.get(f"/api/exams/{exam_id}/nomogram.svg")
        r.raise_for_status()
    return render, client


def bench_pipeline(bundle_path: Path, variant: str, threads: int, runs: int, warmup: int,
                   cine: Path | None = None, quiet: bool = False) -> tuple[dict, list[dict]]:
    """Frozen cine frame → image area + ROI → crop → invoke → CAM → nomogram → encode → store (end to end),
    interleaved with a bare invoke of the same ROI each round; decode and page render timed beside it."""
    skipped = []
    frames = _CineFrames(cine)
    with tempfile.TemporaryDirectory(prefix="noa-bench-") as tmp:
        analyzer, store = _make_analyzer(bundle_path, variant, threads, Path(tmp))
        render, client = None, None
        try:
            render, client = _page_renderer(bundle_path, variant, threads, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - the page needs fastapi/httpx; the rest does not
            skipped.append({"stage": "render", "reason": f"{type(exc).__name__}: {exc}"})
        rois = []
        for f in frames.frozen:
            roi = propose_roi(f, find_image_area(f))
            rois.append(crop_roi(f, roi, analyzer.input_size))
        stages: dict[str, list[float]] = {s: [] for s in PIPELINE_STAGES}
        stages["decode"] = list(frames.decode_ms)
        total, bare, with_render = [], [], []
        bar = progress(runs + warmup, "pipeline", quiet)
        try:
            for i in range(warmup + runs):
                k = i % len(frames.frozen)
                t0 = time.perf_counter()
                analyzer.runner.run(rois[k])
                bare_ms = ms_since(t0)
                exam = analyzer.analyze(frames.frozen[k], clinical=dict(DEMO_CLINICAL), trigger="freeze",
                                        source="bench")
                render_ms = None
                if render is not None:
                    t0 = time.perf_counter()
                    render(exam["id"])
                    render_ms = ms_since(t0)
                bar.update(1)
                if i < warmup:
                    continue
                bare.append(bare_ms)
                timings = exam["timings"]
                for key, name in ANALYZER_STAGE_NAMES.items():
                    if key in timings:
                        stages[name].append(float(timings[key]))
                total.append(float(timings["total"]))
                if render_ms is not None:
                    stages["render"].append(render_ms)
                    with_render.append(float(timings["total"]) + render_ms)
        finally:
            bar.close()
            if client is not None:
                client.__exit__(None, None, None)
            store.close()
    out = {"variant": analyzer.variant, "threads": threads, "runs": len(total),
           "frame_size": list(frames.frozen[0].shape[1::-1]), "input_size": analyzer.input_size,
           "stages": {}, "notes": ["decode: video frame → RGB on the capture thread, not part of end_to_end",
                                   "end_to_end: frozen frame → stored exam (Analyzer.analyze total)",
                                   "render: GET /exams/{id} + nomogram.svg after the result is stored"]}
    for name, vals in stages.items():
        if vals:
            s = summarize(vals)
            out["stages"][name] = {"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "mean_ms": s["mean_ms"],
                                   "min_ms": s["min_ms"], "max_ms": s["max_ms"]}
    e2e = summarize(total)
    out["end_to_end"] = {k: e2e[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")}
    if with_render:
        r = summarize(with_render)
        out["end_to_end_with_render"] = {"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]}
    b = summarize(bare)
    out["invoke_p50_ms"] = b["p50_ms"]
    out["invoke_p99_ms"] = b["p99_ms"]
    out["end_to_end_over_invoke"] = e2e["p50_ms"] / b["p50_ms"]
    return out, skipped


class _PacedCine(Source):
    """The cine as a live card delivers it: one frame per 1/fps; a frame whose slot has passed is lost.
    `delivered_at` maps id(frame) -> delivery time, to measure freeze → result latency."""

    kind = "video"

    def __init__(self, frames: list[np.ndarray], fps: float):
        self.frames, self.fps, self.describe = frames, fps, f"bench cine at {fps:g} fps"
        self.delivered_at: dict[int, float] = {}
        self.t0, self.i, self.dropped, self.delivered = None, 0, 0, 0

    def read(self):
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = int((now - self.t0) * self.fps)
        if due > self.i:          # slots passed while we were busy: those frames never reached us
            self.dropped += due - self.i
            self.i = due
        wait = self.t0 + self.i / self.fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        frame = self.frames[self.i % len(self.frames)]
        self.i += 1
        self.delivered += 1
        frame = frame.copy()  # a new buffer per frame, like a real capture
        self.delivered_at[id(frame)] = time.monotonic()
        if len(self.delivered_at) > 4 * len(self.frames):
            for k in list(self.delivered_at)[: len(self.frames)]:
                self.delivered_at.pop(k, None)
        return frame


def bench_sustained(bundle_path: Path, variant: str, threads: int, seconds: float, fps: float,
                    cine: Path | None = None, quiet: bool = False) -> dict:
    """Feed the cine at `fps` through the real FrameGrabber + FreezeDetector + Analyzer for `seconds`:
    frames dropped by the feed (capture fell behind), freezes lost (analysis too slow), CPU use,
    latency from the frame that completed a freeze to the stored result, and RSS over time."""
    if seconds <= 0 or fps <= 0:
        raise BenchError("--sustained SECONDS and --fps N must be positive")
    source = _PacedCine(_CineFrames(cine, limit=10_000).frames, fps)
    delivered_at = source.delivered_at
    with tempfile.TemporaryDirectory(prefix="noa-bench-") as tmp:
        analyzer, store = _make_analyzer(bundle_path, variant, threads, Path(tmp))
        latencies, analyses, invoke = [], [], []

        def on_still(frame, trigger, info):
            t_freeze = delivered_at.get(id(frame))
            exam = analyzer.analyze(frame, clinical=dict(DEMO_CLINICAL), trigger=trigger, source="bench")
            if t_freeze is not None:
                latencies.append((time.monotonic() - t_freeze) * 1000.0)
            analyses.append(exam["timings"]["total"])
            invoke.append(exam["timings"]["invoke"])

        proc = psutil.Process()
        grabber = FrameGrabber(source, on_still=on_still, freeze=FreezeDetector())
        cpu0, wall0 = os.times(), time.monotonic()
        memory = [[0.0, rss_mb()]]
        grabber.start()
        try:
            while time.monotonic() - wall0 < seconds:
                time.sleep(min(0.5, max(0.0, seconds - (time.monotonic() - wall0))))
                memory.append([round(time.monotonic() - wall0, 2), rss_mb()])
        finally:
            grabber.stop()
        cpu1, wall = os.times(), time.monotonic() - wall0
        store.close()
    cpu_s = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out = {"variant": analyzer.variant, "threads": threads, "seconds": round(wall, 2), "fps_requested": fps,
           "frames_delivered": source.delivered, "frames_dropped": source.dropped,
           "fps_achieved": source.delivered / wall if wall else 0.0,
           "freezes_detected": grabber.freezes, "analyses": len(analyses),
           "freezes_lost": max(0, grabber.freezes - len(analyses)),
           "cpu_percent_of_one_core": 100.0 * cpu_s / wall if wall else 0.0,
           "cpu_percent_of_machine": 100.0 * cpu_s / wall / cores if wall else 0.0,
           "rss_mb": {"start": memory[0][1], "end": memory[-1][1], "max": max(m[1] for m in memory)},
           "memory_over_time": [[t, round(m, 1)] for t, m in memory],
           "notes": ["frames_dropped: frame slots that passed while the capture thread was busy",
                     "latency: the frame that completed a freeze → exam stored"]}
    if latencies:
        s = summarize(latencies)
        out["freeze_to_result"] = {k: s[k] for k in ("p50_ms", "p99_ms", "mean_ms", "max_ms")}
    if analyses:
        out["analysis_p50_ms"] = float(np.percentile(analyses, 50))
        out["invoke_p50_ms"] = float(np.percentile(invoke, 50))
    out["threads_in_process"] = proc.num_threads()
    return out
