"""Durable intake (issue 18): nothing acknowledged to a cart is lost. The inbox itself (SQLite, real
files), and the daemon fed by dcmtk's real `storescu` and a real watched folder: 50 objects in one
association → 50 exams, a repeated SOP Instance UID → one exam and a log line, kill -9 at random points
of the intake → every acknowledged object becomes an exam after the restart, 10 files at once → 10 exams."""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom import examples
from pydicom.uid import generate_uid

from conftest import DaemonProcess, free_port, poll
from edge.inbox import Inbox, InboxWorker, exam_stored_for

STORESCU = shutil.which("storescu")
needs_dcmtk = pytest.mark.skipif(STORESCU is None, reason="dcmtk storescu not installed (make sysdeps)")




def make_us_files(folder: Path, n: int, prefix: str = "us") -> list[tuple[Path, str]]:
    """n distinct ultrasound objects (pydicom's rgb_color example, each its own SOP Instance UID and a
    slightly different picture) → [(path, sop_instance_uid)]."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(examples.get_path("rgb_color"))
    pixels = base.pixel_array.copy()
    out = []
    for i in range(n):
        ds = base.copy()
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        px = pixels.copy()
        px[10:20, 10 + i % 200: 20 + i % 200] = 255
        ds.PixelData = px.tobytes()
        path = folder / f"{prefix}{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, uid))
    return out


def exams_of(d: DaemonProcess) -> list[dict]:
    return httpx.get(d.url + "/api/exams", params={"limit": 500}, timeout=10).json()["exams"]


def inbox_of(d: DaemonProcess) -> dict:
    return httpx.get(d.url + "/api/health", timeout=10).json()["inbox"]


def storescu(port: int, files: list[Path], timeout: float = 120) -> subprocess.CompletedProcess:
    """All files in ONE association (one storescu call)."""
    return subprocess.run([STORESCU, "-v", "-aet", "CART", "-aec", "NOAEDGE", "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout)


def acknowledged(storescu_log: str) -> list[str]:
    """The files storescu saw answered Success, in order (a 'Sending file' line, later its response)."""
    done, current = [], None
    for line in storescu_log.splitlines():
        m = re.search(r"Sending file: (\S+)", line)
        if m:
            current = m.group(1)
        elif "Received Store Response (Success)" in line and current:
            done.append(current)
            current = None
    return done


# ------------------------------------------------------------------------------------------ the inbox
def _decode(data, name):
    return np.frombuffer(data, np.uint8).reshape(2, 2, 3).copy(), {"n_frames": 1}


def test_put_is_durable_ordered_deduplicated_and_bounded(tmp_path):
    inbox = Inbox(tmp_path, max_items=3, max_bytes=1000)
    assert inbox.put(bytes(12), kind="dicom", name="a", sop_instance_uid="1.2.3").status == "queued"
    dup = inbox.put(bytes([1] * 12), kind="dicom", name="a again", sop_instance_uid="1.2.3")
    assert dup.status == "duplicate" and "SOP Instance UID" in dup.detail
    assert inbox.put(bytes([2] * 12), kind="folder", name="b.png").status == "queued"
    assert inbox.put(bytes([2] * 12), kind="folder", name="b copy.png").status == "duplicate"  # same content
    assert inbox.put(bytes(2000), kind="folder", name="big.png").status == "full"  # bytes limit
    assert inbox.put(bytes([3] * 12), kind="folder", name="c.png").status == "queued"
    assert inbox.put(bytes([4] * 12), kind="folder", name="d.png").status == "full"  # count limit
    stats = inbox.stats()
    assert stats["depth"] == 3 and stats["duplicates"] == 2 and stats["refused_full"] == 2
    assert stats["oldest_age_s"] is not None
    inbox.close()

    # another process (a restart) finds the same items, oldest first
    again = Inbox(tmp_path, max_items=3, max_bytes=1000)
    seen = []
    worker = InboxWorker(again, _decode, on_still=lambda f, kind, info: seen.append((kind, info["inbox_item"])))
    worker.start()
    try:
        assert poll(lambda: again.stats()["depth"] == 0, timeout=10)
    finally:
        worker.stop()
    assert seen == [("dicom", 1), ("folder", 2), ("folder", 3)]
    assert again.stats()["done"] == 3
    # finished items keep their identity: the same object later is still a repeat
    assert again.put(bytes(12), kind="dicom", name="a", sop_instance_uid="1.2.3").status == "duplicate"
    again.close()


def test_worker_failures_bad_item_fails_analysis_retries_transient_waits(tmp_path, caplog):
    class DiskFull(Exception):
        pass

    inbox = Inbox(tmp_path)
    inbox.put(b"not an image", kind="folder", name="broken.png")
    inbox.put(bytes(12), kind="folder", name="ok.png")
    calls = {"n": 0}

    def decode(data, name):
        if name == "broken.png":
            raise ValueError("broken.png: not a readable PNG image")
        return _decode(data, name)

    def on_still(frame, kind, info):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise DiskFull()  # transient: waits, does not count
        if calls["n"] == 3:
            raise RuntimeError("model hiccup")  # counted, retried

    worker = InboxWorker(inbox, decode, on_still, transient=(DiskFull,), retry_s=0.05).start()
    try:
        assert poll(lambda: inbox.stats()["depth"] == 0, timeout=10)
    finally:
        worker.stop()
    assert calls["n"] == 4
    assert inbox.stats()["failed"] == 1 and inbox.stats()["done"] == 1
    assert "broken.png): failed, not analysed: cannot decode" in caplog.text
    inbox.close()


def test_item_interrupted_mid_analysis_is_not_analysed_twice_when_its_exam_exists(tmp_path):
    inbox = Inbox(tmp_path)
    inbox.put(bytes(12), kind="dicom", name="x", sop_instance_uid="1.2.9", info={"sop_instance_uid": "1.2.9"})
    inbox.put(bytes([1] * 12), kind="dicom", name="y", sop_instance_uid="1.2.10", info={"sop_instance_uid": "1.2.10"})
    inbox.begin(1)  # the process died while analysing both: x's exam was stored, y's not
    inbox.begin(2)
    exams = [{"sop_instance_uid": "1.2.9"}]
    seen = []
    worker = InboxWorker(inbox, _decode, on_still=lambda f, k, info: seen.append(info["sop_instance_uid"]),
                         already_done=lambda item: exam_stored_for(lambda limit: exams, item)).start()
    try:
        assert poll(lambda: inbox.stats()["depth"] == 0, timeout=10)
    finally:
        worker.stop()
    assert seen == ["1.2.10"] and inbox.stats()["done"] == 2
    inbox.close()


# ------------------------------------------------------------------------------------------ daemon
@needs_dcmtk
def test_fifty_objects_in_one_association_become_fifty_exams_and_repeats_one(test_bundle, tmp_path):
    files = make_us_files(tmp_path / "cart", 50)
    port = free_port()
    d = DaemonProcess(test_bundle, tmp_path / "data", source=f"dicom:NOAEDGE@{port}").wait_ready()
    try:
        assert poll(lambda: httpx.get(d.url + "/api/health").json()["source"]["state"] == "live", timeout=20)
        result = storescu(port, [p for p, _ in files])
        assert result.returncode == 0, result.stderr[-2000:]
        assert len(acknowledged(result.stderr)) == 50
        assert poll(lambda: len(exams_of(d)) == 50 and inbox_of(d)["depth"] == 0, timeout=300), d.log()
        assert {e["sop_instance_uid"] for e in exams_of(d)} == {uid for _, uid in files}
        assert all(e["trigger"] == "dicom" for e in exams_of(d))

        # the same SOP Instance UID three times: stored once, answered Success, repeats logged
        same = make_us_files(tmp_path / "again", 1, "same")[0][0]
        for _ in range(3):
            result = storescu(port, [same])
            assert result.returncode == 0 and "Received Store Response (Success)" in result.stderr
        assert poll(lambda: len(exams_of(d)) == 51 and inbox_of(d)["depth"] == 0, timeout=60), d.log()
        assert poll(lambda: d.log().count("already received (same SOP Instance UID)") == 2, timeout=10), d.log()
        assert inbox_of(d)["duplicates"] == 2
        metrics = httpx.get(d.url + "/metrics").text
        assert "noa_edge_inbox_depth 0" in metrics and 'noa_edge_inbox_items_total{outcome="duplicates"} 2' in metrics
    finally:
        d.stop()


@needs_dcmtk
def test_kill_9_during_intake_loses_nothing_acknowledged(test_bundle, tmp_path):
    """Rounds of: storescu pushes 12 objects in one association, the daemon is killed with SIGKILL at a
    random moment, restarted on the same data dir; every object storescu saw acknowledged must become an
    exam (and none twice)."""
    rng = random.Random(18)
    port = free_port()
    data = tmp_path / "data"
    sent_ok: dict[str, str] = {}
    uid_of = {}
    rounds = 3
    for r in range(rounds):
        files = make_us_files(tmp_path / f"round{r}", 12, f"r{r}_")
        uid_of.update({str(p): uid for p, uid in files})
        d = DaemonProcess(test_bundle, data, source=f"dicom:NOAEDGE@{port}").wait_ready()
        assert poll(lambda url=d.url: httpx.get(url + "/api/health").json()["source"]["state"] == "live",
                        timeout=20)
        proc = subprocess.Popen([STORESCU, "-v", "-aet", "CART", "-aec", "NOAEDGE", "127.0.0.1", str(port),
                                 *(str(p) for p, _ in files)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                text=True)
        time.sleep(rng.uniform(0.05, 1.5))  # a random point of the intake (or of the analyses after it)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(10)
        d.stop()
        _, err = proc.communicate(timeout=60)
        for path in acknowledged(err):
            sent_ok[uid_of[path]] = path
    d = DaemonProcess(test_bundle, data, source=f"dicom:NOAEDGE@{port}").wait_ready()
    try:
        assert poll(lambda: inbox_of(d)["depth"] == 0, timeout=300), d.log()
        stored = [e["sop_instance_uid"] for e in exams_of(d)]
    finally:
        d.stop()
    print(f"kill -9 x{rounds}: {len(sent_ok)} objects acknowledged, {len(set(stored) & set(sent_ok))} of them "
          f"stored as exams, {len(stored)} exams in all")
    assert set(sent_ok) <= set(stored)
    assert len(stored) == len(set(stored))  # no exam twice


def test_folder_ten_files_at_once_ten_exams_and_restart_keeps_taken(test_bundle, tmp_path):
    cart = tmp_path / "cart"
    cart.mkdir()
    make_us_files(tmp_path / "history", 1, "old")[0][0].rename(cart / "old.dcm")  # there before: history
    d = DaemonProcess(test_bundle, tmp_path / "data", source=f"folder:{cart}").wait_ready()
    try:
        assert poll(lambda: httpx.get(d.url + "/api/health").json()["source"]["state"] == "live", timeout=20)
        staged = make_us_files(tmp_path / "staging", 10, "f")
        for path, _ in staged:  # ten files arrive at once (rename: each appears whole)
            path.rename(cart / path.name)
        assert poll(lambda: len(exams_of(d)) == 10 and inbox_of(d)["depth"] == 0, timeout=180), d.log()
        assert {e["sop_instance_uid"] for e in exams_of(d)} == {uid for _, uid in staged}
        assert {e["trigger"] for e in exams_of(d)} == {"folder"}
    finally:
        d.stop()
    # restarted: the taken files and the history are not analysed again; a file that came while down is
    extra = make_us_files(tmp_path / "late", 1, "late")[0]
    extra[0].rename(cart / extra[0].name)
    d = DaemonProcess(test_bundle, tmp_path / "data", source=f"folder:{cart}").wait_ready()
    try:
        assert poll(lambda: len(exams_of(d)) == 11, timeout=120), d.log()
        assert poll(lambda: inbox_of(d)["depth"] == 0, timeout=30)
        time.sleep(1.0)  # a few polls of the folder: nothing else may appear
        assert len(exams_of(d)) == 11
    finally:
        d.stop()
