"""Capture for real: the shipped phantom cine played from file through OpenCV, a watched folder, a lost
source that comes back, and freeze detection that triggers exactly one stored analysis per freeze.
Only the capture card is simulated (a Source subclass producing frames as fast as it can)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.capture import (FolderSource, FrameGrabber, FreezeDetector, OpenCVSource, Source, SourceError,
                          open_source)


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def read_all_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames


def test_freeze_detector_fires_once_inside_each_frozen_stretch(demo_cine):
    sidecar = json.loads(Path(str(demo_cine) + ".json").read_text())
    frames = read_all_frames(demo_cine)
    assert len(frames) == sidecar["frames"]
    det = FreezeDetector()
    fired = [i for i, f in enumerate(frames) if det.update(f)]
    assert len(fired) == len(sidecar["frozen"]) == 2
    for i, (start, end) in zip(fired, sidecar["frozen"]):
        assert start <= i < end, (fired, sidecar["frozen"])
    # the same loop again: each freeze fires again exactly once (re-armed by the motion in between)
    fired_again = [i for i, f in enumerate(frames) if det.update(f)]
    assert fired_again == fired


def test_cine_from_file_frozen_stretches_trigger_exactly_one_analysis_each(demo_cine, test_bundle, tmp_path):
    from edge.pipeline import Analyzer
    from edge.store import ExamStore

    store = ExamStore(tmp_path / "data")
    analyzer = Analyzer(test_bundle, store=store, threads=1)
    sidecar = json.loads(Path(str(demo_cine) + ".json").read_text())
    grabber = FrameGrabber(open_source(f"video:{demo_cine}"),
                           on_still=lambda frame, trigger, info: analyzer.analyze(frame, trigger=trigger)).start()
    try:  # one loop of the cine at its own frame rate (6 s), plus the last analysis
        assert wait_for(lambda: grabber.frames_captured >= sidecar["frames"], timeout=30)
        st = grabber.status()
        assert st["state"] == "live" and st["frame_size"] == [800, 600]
    finally:
        grabber.stop()
    assert grabber.freezes == 2
    assert wait_for(lambda: store.count() == 2, timeout=10)
    exams = store.list_exams()
    assert {e["trigger"] for e in exams} == {"freeze"}
    assert all(e["roi_method"] == "auto" for e in exams)
    assert store.integrity_problems() == []


class FastSource(Source):
    """Stands in for a capture card (none on this machine): a new frame every ~2 ms."""

    kind = "fake-card"

    def __init__(self):
        self.n = 0
        self.describe = "fake capture card"

    def read(self):
        time.sleep(0.002)
        self.n += 1
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 0] = self.n % 256
        frame[0, 0, 1] = self.n // 256
        return frame


def test_only_the_newest_frame_is_kept():
    grabber = FrameGrabber(FastSource()).start()
    try:
        assert wait_for(lambda: grabber.frames_captured > 50, timeout=10)
        time.sleep(0.2)  # a slow consumer
        frame, seq = grabber.latest()
        st = grabber.status()
    finally:
        grabber.stop()
    assert frame.shape == (48, 64, 3)
    assert seq >= 50 and st["frames_dropped"] >= 40  # stale frames were dropped, never queued
    assert int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1]) >= seq - 5  # it is (nearly) the newest


def test_folder_source_new_files_only(tmp_path, demo_cine):
    from pydicom import examples

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    frame = read_all_frames(demo_cine)[10]
    cv2.imwrite(str(inbox / "old.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))  # already there: history
    seen = []
    grabber = FrameGrabber(FolderSource(inbox, poll_s=0.05, settle_s=0.1),
                           on_still=lambda f, trigger, info: seen.append((f.shape, trigger))).start()
    try:
        assert wait_for(lambda: grabber.state == "live", timeout=5)
        time.sleep(0.3)
        assert seen == []
        cv2.imwrite(str(inbox / "new.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        assert wait_for(lambda: len(seen) == 1, timeout=5)
        (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # skipped, watch goes on
        shutil.copy(examples.get_path("ybr_color"), inbox / "us_ybr.dcm")  # US multi-frame, JPEG baseline
        assert wait_for(lambda: len(seen) == 2, timeout=15)
        time.sleep(0.3)
        assert grabber.state == "live"
    finally:
        grabber.stop()
    assert seen[0] == ((600, 800, 3), "folder")
    assert seen[1][1] == "folder" and seen[1][0][2] == 3
    assert len(seen) == 2


def test_lost_source_shows_state_and_reconnects_with_backoff(tmp_path, demo_cine):
    video = tmp_path / "cart.mp4"
    grabber = FrameGrabber(OpenCVSource(str(video), "video", loop=True), backoff_initial_s=0.1,
                           backoff_max_s=0.4).start()
    try:
        assert wait_for(lambda: grabber.state == "lost", timeout=5)
        assert "not found" in grabber.status()["error"]
        assert wait_for(lambda: grabber.reconnects >= 3, timeout=5)
        shutil.copy(demo_cine, video)  # the cable is plugged back in
        assert wait_for(lambda: grabber.state == "live" and grabber.frames_captured > 3, timeout=10)
        assert grabber.status()["error"] == ""
    finally:
        grabber.stop()
    assert grabber.state == "stopped"


@pytest.mark.parametrize("spec,kind", [("demo", "video"), ("video:/tmp/x.mp4", "video"), ("v4l2:0", "v4l2"),
                                       ("/dev/video2", "v4l2"), ("rtsp://user:pw@cam/stream", "stream"),
                                       ("http://10.0.0.5/mjpg", "stream"), ("folder:/tmp", "folder"),
                                       ("dicom:NOAEDGE@11112", "dicom")])
def test_source_specs(spec, kind):
    src = open_source(spec)
    assert src.kind == kind
    assert "pw" not in src.describe  # stream credentials never shown


@pytest.mark.parametrize("spec,words", [("webcam", "unknown source"), ("video:", "needs a file path"),
                                        ("folder:", "needs a directory"), ("dicom:NOAEDGE", "AE_TITLE@PORT"),
                                        ("dicom:NOAEDGE@99999", "port")])
def test_bad_source_specs(spec, words):
    with pytest.raises(SourceError, match=words):
        open_source(spec)


def test_dicom_source_each_pushed_image_becomes_an_exam(test_bundle, tmp_path):
    """dcmtk's storescu (a real DICOM peer) pushes the ultrasound files shipped in pydicom to the daemon's
    dicom: source; each becomes one stored exam (trigger "dicom")."""
    import subprocess

    import httpx
    import pydicom
    from pydicom import examples

    from conftest import DaemonProcess, free_port

    storescu = shutil.which("storescu")
    assert storescu, "dcmtk's storescu is required (make sysdeps)"
    port = free_port()
    d = DaemonProcess(test_bundle, tmp_path / "data", source=f"dicom:NOAEDGE@{port}").wait_ready()
    files = [examples.get_path(n) for n in ("ybr_color", "palette_color", "jpeg2k")]
    try:
        assert wait_for(lambda: httpx.get(d.url + "/api/health").json()["source"]["state"] == "live", timeout=10)
        for f in files:
            syntax = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            propose = {"1.2.840.10008.1.2.4.50": ["-xy"], "1.2.840.10008.1.2.4.90": ["-xv"],
                       "1.2.840.10008.1.2.4.91": ["-xw"]}.get(syntax, [])  # send compressed files as they are
            proc = subprocess.run([storescu, "-aec", "NOAEDGE", *propose, "127.0.0.1", str(port), str(f)],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
        assert wait_for(lambda: httpx.get(d.url + "/api/exams").json()["total"] == len(files), timeout=60), d.log()
        exams = httpx.get(d.url + "/api/exams").json()["exams"]
        assert {e["trigger"] for e in exams} == {"dicom"}
        assert all(e.get("study_instance_uid") for e in exams)
    finally:
        d.stop()
