"""Capture for real: the shipped phantom cine played from file through OpenCV, a watched folder, a lost
source that comes back, and freeze detection that triggers exactly one stored analysis per freeze.
Only the capture card is simulated (a Source subclass delivering exactly the frames a test releases)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import poll
from edge.capture import (
    FolderSource,
    FrameGrabber,
    FreezeDetector,
    OpenCVSource,
    Source,
    SourceError,
    decode_still,
    open_source,
)
from edge.inbox import Inbox, InboxWorker


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
    for i, (start, end) in zip(fired, sidecar["frozen"], strict=True):
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
        assert poll(lambda: grabber.frames_captured >= sidecar["frames"], timeout=30)
        st = grabber.status()
        assert st["state"] == "live" and st["frame_size"] == [800, 600]
    finally:
        grabber.stop()
    assert grabber.freezes == 2
    assert poll(lambda: store.count() == 2, timeout=10)
    exams = store.list_exams()
    assert {e["trigger"] for e in exams} == {"freeze"}
    assert all(e["roi_method"] == "auto" for e in exams)
    assert store.integrity_problems() == []


class CountedSource(Source):
    """Stands in for a capture card (none on this machine): delivers exactly the frames the test releases,
    each numbered in its pixels, so the counts below are exact whatever the machine's load."""

    kind = "fake-card"

    def __init__(self):
        self.n = 0
        self.describe = "fake capture card"
        self.allowed = threading.Semaphore(0)

    def read(self):
        if not self.allowed.acquire(timeout=0.05):
            return None  # no frame yet (the grabber polls again)
        self.n += 1
        frame = np.zeros((48, 64, 3), np.uint8)
        frame[:, :, 0] = self.n % 256
        frame[0, 0, 1] = self.n // 256
        return frame


def _number(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])


def test_only_the_newest_frame_is_kept():
    source = CountedSource()
    grabber = FrameGrabber(source).start()
    try:
        for _ in range(300):  # a slow consumer: 300 frames arrive while nobody looks
            source.allowed.release()
        assert poll(lambda: grabber.frames_captured == 300, timeout=30)
        frame, seq = grabber.latest()
        assert frame.shape == (48, 64, 3) and seq == 300 and _number(frame) == 300  # exactly the newest
        assert grabber.status()["frames_dropped"] == 299  # every older one dropped, never queued
        for _ in range(5):  # looked at: the next frames drop all but the newest again
            source.allowed.release()
        assert poll(lambda: grabber.frames_captured == 305, timeout=30)
        frame, seq = grabber.latest()
        assert seq == 305 and _number(frame) == 305 and grabber.status()["frames_dropped"] == 299 + 4
        frame_again, seq_again = grabber.latest()  # nothing new: the same frame, nothing dropped
        assert seq_again == 305 and frame_again is frame and grabber.status()["frames_dropped"] == 303
    finally:
        grabber.stop()


def test_folder_source_new_files_only(tmp_path, demo_cine, caplog):
    """New files go through the durable inbox to the worker, each once; a broken file is logged and the
    watch goes on; the newest still is also the grabber's newest frame (the live view)."""
    from pydicom import examples

    folder = tmp_path / "incoming"
    folder.mkdir()
    frame = read_all_frames(demo_cine)[10]
    cv2.imwrite(str(folder / "old.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))  # already there: history
    inbox = Inbox(tmp_path / "data")
    seen = []
    grabber = FrameGrabber(FolderSource(folder, inbox, poll_s=0.05, settle_s=0.1)).start()
    worker = InboxWorker(inbox, decode_still, on_still=lambda f, trigger, info: seen.append((f.shape, trigger)),
                         on_frame=grabber.publish).start()
    try:
        assert poll(lambda: grabber.state == "live", timeout=5)
        cv2.imwrite(str(folder / "new.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        assert poll(lambda: len(seen) == 1, timeout=5)
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # failed item, watch goes on
        shutil.copy(examples.get_path("ybr_color"), folder / "us_ybr.dcm")  # US multi-frame, JPEG baseline
        assert poll(lambda: len(seen) == 2 and inbox.stats()["depth"] == 0, timeout=15)
        assert grabber.state == "live"
        assert grabber.latest()[0].shape == (240, 320, 3)  # the newest still is on the live view
    finally:
        worker.stop()
        grabber.stop()
    assert seen[0] == ((600, 800, 3), "folder")
    assert seen[1] == ((240, 320, 3), "folder")
    assert inbox.stats()["done"] == 2 and inbox.stats()["failed"] == 1  # old.png was never taken
    assert "broken.png): failed, not analysed: cannot decode" in caplog.text
    inbox.close()


def test_lost_source_shows_state_and_reconnects_with_backoff(tmp_path, demo_cine):
    video = tmp_path / "cart.mp4"
    grabber = FrameGrabber(OpenCVSource(str(video), "video", loop=True), backoff_initial_s=0.1,
                           backoff_max_s=0.4).start()
    try:
        assert poll(lambda: grabber.state == "lost", timeout=5)
        assert "not found" in grabber.status()["error"]
        assert poll(lambda: grabber.reconnects >= 3, timeout=5)
        shutil.copy(demo_cine, video)  # the cable is plugged back in
        assert poll(lambda: grabber.state == "live" and grabber.frames_captured > 3, timeout=10)
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
        assert poll(lambda: httpx.get(d.url + "/api/health").json()["source"]["state"] == "live", timeout=10)
        for f in files:
            syntax = str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            propose = {"1.2.840.10008.1.2.4.50": ["-xy"], "1.2.840.10008.1.2.4.90": ["-xv"],
                       "1.2.840.10008.1.2.4.91": ["-xw"]}.get(syntax, [])  # send compressed files as they are
            proc = subprocess.run([storescu, "-aec", "NOAEDGE", *propose, "127.0.0.1", str(port), str(f)],
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
        assert poll(lambda: httpx.get(d.url + "/api/exams").json()["total"] == len(files), timeout=60), d.log()
        exams = httpx.get(d.url + "/api/exams").json()["exams"]
        assert {e["trigger"] for e in exams} == {"dicom"}
        assert all(e.get("study_instance_uid") for e in exams)
    finally:
        d.stop()
