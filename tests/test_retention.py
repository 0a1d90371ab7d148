"""Retention (edge/retention.py): each limit deletes oldest first, an exam not pushed to the configured PACS is
never deleted, each deletion is whole, and a real daemon runs it at start with the result in /metrics, the log
and a clear 404 for an open page of a deleted exam (held frames untouched)."""

from __future__ import annotations

import io
import shutil
from datetime import datetime, timedelta, timezone

import cv2
import httpx
import numpy as np
import pytest

from conftest import DaemonProcess, free_port, poll
from edge.imaging import jpeg_bytes, png_bytes
from edge.retention import RetentionConfigError, RetentionPolicy, RetentionStats, RetentionWorker, run_once
from edge.store import ExamStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)
PACS = "PACS@127.0.0.1:11112"


def _frame(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (120, 160), dtype=np.uint8), (5, 5), 0)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _fill(store: ExamStore, ages_days: list[float], now: datetime = NOW) -> list[int]:
    """One exam per age (days before `now`), oldest first in the list order given; returns their ids."""
    ids = []
    for i, age in enumerate(ages_days):
        created = (now - timedelta(days=age)).isoformat(timespec="milliseconds")
        exam = {"roi": [10, 20, 40, 30], "frame_size": [160, 120], "dl_probability": 0.5, "label": "NOA",
                "bundle": {"sha256": "x"}, "created": created}
        frame = _frame(i)
        ids.append(store.add_exam(exam, png_bytes(frame), None, jpeg_bytes(frame))["id"])
    return ids


def _left(store: ExamStore) -> list[int]:
    return sorted(e["id"] for e in store.list_exams(limit=1000))


def test_keep_days_deletes_only_older_exams(tmp_path):
    with_store = ExamStore(tmp_path)
    try:
        ids = _fill(with_store, [30, 20, 8, 6, 1])
        stats = RetentionStats()
        deleted, freed, kept = run_once(with_store, RetentionPolicy(keep_days=7), stats, now=NOW)
        assert (deleted, kept) == (3, 0) and freed > 0
        assert _left(with_store) == ids[3:]
        assert "older than 7 days (--keep-days)" in with_store.missing(ids[0])
        assert "deleted on" in with_store.missing(ids[0]) and "retention policy" in with_store.missing(ids[0])
        assert with_store.missing(99999) == "exam 99999 not found"
        assert stats.report()["deleted_total"] == 3 and stats.report()["bytes_freed_total"] == freed
        assert with_store.integrity_problems() == []
    finally:
        with_store.close()


def test_max_exams_keeps_the_newest(tmp_path):
    store = ExamStore(tmp_path)
    try:
        ids = _fill(store, [5, 4, 3, 2, 1])
        assert run_once(store, RetentionPolicy(max_exams=2), RetentionStats(), now=NOW)[0] == 3
        assert _left(store) == ids[3:]
        assert run_once(store, RetentionPolicy(max_exams=2), RetentionStats(), now=NOW)[0] == 0  # within the limit
    finally:
        store.close()


def test_max_disk_mb_deletes_oldest_until_under(tmp_path):
    store = ExamStore(tmp_path)
    try:
        ids = _fill(store, [5, 4, 3, 2, 1])
        sizes = {r[0]: r[2] for r in store.retention_rows()}
        limit_bytes = sizes[ids[3]] + sizes[ids[4]] + 1  # room for the two newest only
        deleted, freed, _ = run_once(store, RetentionPolicy(max_disk_mb=limit_bytes / 1e6), RetentionStats(), now=NOW)
        assert deleted == 3 and freed == sum(sizes[i] for i in ids[:3])
        assert _left(store) == ids[3:]
    finally:
        store.close()


def test_unpushed_exams_are_never_deleted(tmp_path):
    """With a PACS configured, only exams pushed THERE may go; the unpushed still count toward the limits, so
    newer pushed ones go first, and the kept ones are reported."""
    store = ExamStore(tmp_path)
    try:
        ids = _fill(store, [30, 20, 10, 2, 1])
        store.record_push(ids[1], PACS)
        store.record_push(ids[2], "OTHER@10.0.0.9:104")  # another PACS does not count
        store.record_push(ids[3], PACS)
        stats = RetentionStats()
        deleted, _, kept = run_once(store, RetentionPolicy(keep_days=7, pacs=PACS), stats, now=NOW)
        assert deleted == 1 and _left(store) == [ids[0], ids[2], ids[3], ids[4]]
        assert kept == 2 and stats.report()["kept_unpushed"] == 2  # ids[0] and ids[2]: old but not pushed
        deleted, _, kept = run_once(store, RetentionPolicy(max_exams=1, pacs=PACS), RetentionStats(), now=NOW)
        assert deleted == 1 and _left(store) == [ids[0], ids[2], ids[4]]  # ids[3] was pushed: it goes
        assert kept == 3
        # without a PACS configured every exam is fair game
        assert run_once(store, RetentionPolicy(max_exams=1), RetentionStats(), now=NOW)[0] == 2
        assert _left(store) == [ids[4]]
        assert store.retention_rows()[0][3] == []  # push records go with their exam
    finally:
        store.close()


def test_limits_are_checked():
    for kwargs in ({"keep_days": 0}, {"max_exams": 0}, {"max_disk_mb": -1}):
        with pytest.raises(RetentionConfigError):
            RetentionPolicy(**kwargs)
    assert not RetentionPolicy(pacs=PACS).active


def test_worker_runs_at_start_and_periodically(tmp_path):
    store = ExamStore(tmp_path)
    worker = RetentionWorker(store, RetentionPolicy(max_exams=1), every_s=0.2)
    try:
        _fill(store, [3, 2, 1], now=datetime.now(timezone.utc))
        worker.start()
        assert poll(lambda: store.count() == 1, timeout=10), "retention did not run at start"
        _fill(store, [0.5], now=datetime.now(timezone.utc))
        assert poll(lambda: store.count() == 1 and worker.stats.report()["runs"] >= 2, timeout=10)
    finally:
        worker.stop()
        store.close()


def test_daemon_runs_retention_at_start_metrics_log_and_404(tmp_path, test_bundle):
    data = tmp_path / "data"
    store = ExamStore(data)
    now = datetime.now(timezone.utc)
    ids = _fill(store, [40, 35, 30, 1], now=now)
    store.record_push(ids[0], PACS)
    store.record_push(ids[2], PACS)
    store.close()
    d = DaemonProcess(test_bundle, data, extra=["--keep-days", "7", "--pacs", PACS])
    try:
        d.wait_ready()
        c = httpx.Client(base_url=d.url, timeout=60)
        assert poll(lambda: "noa_edge_retention_runs_total 1" in c.get("/metrics").text, timeout=30)
        metrics = c.get("/metrics").text
        assert "noa_edge_retention_deleted_exams_total 2" in metrics
        assert "noa_edge_retention_kept_unpushed 1" in metrics  # ids[1]: old, never pushed
        assert "noa_edge_retention_freed_bytes_total 0" not in metrics
        assert sorted(e["id"] for e in c.get("/api/exams").json()["exams"]) == [ids[1], ids[3]]
        for url in (f"/api/exams/{ids[0]}", f"/exams/{ids[0]}", f"/exams/{ids[0]}/frame.png",
                    f"/exams/{ids[0]}/report.pdf"):
            r = c.get(url)
            assert r.status_code == 404, url
            assert "deleted on" in r.json()["detail"] and "older than 7 days" in r.json()["detail"], url
        assert "retention: deleted 2 exam(s)" in d.log() and "1 kept because not yet pushed" in d.log()
        # held frames and analyses are untouched by a deletion
        ok, png = cv2.imencode(".png", _frame(7))
        held = c.post("/api/frames", files={"image": ("f.png", io.BytesIO(png.tobytes()), "image/png")})
        assert held.status_code == 200, held.text
        exam = c.post("/api/analyze", data={"frame_id": held.json()["frame_id"]})
        assert exam.status_code == 200, exam.text
        assert c.get(f"/api/exams/{exam.json()['id']}").status_code == 200
    finally:
        d.stop()


@pytest.mark.skipif(shutil.which("storescp") is None, reason="dcmtk storescp not installed (make sysdeps)")
def test_a_real_push_makes_an_exam_deletable(tmp_path, test_bundle):
    """POST /api/exams/ID/push to a real dcmtk storescp records the push; after a restart with --max-exams 1 the
    pushed (older) exam goes and the unpushed newer one stays. Without the record nothing could go."""
    from test_export import _start_storescp

    port = free_port()
    (tmp_path / "pacs-in").mkdir()
    scp = _start_storescp(port, tmp_path / "pacs-in")
    pacs = f"PACS@127.0.0.1:{port}"
    data = tmp_path / "data"
    ok, png = cv2.imencode(".png", _frame(3))
    d = DaemonProcess(test_bundle, data, extra=["--pacs", pacs])
    try:
        d.wait_ready()
        c = httpx.Client(base_url=d.url, timeout=60)
        ids = [c.post("/api/analyze", files={"image": ("f.png", png.tobytes(), "image/png")}).json()["id"]
               for _ in range(2)]
        pushed = c.post(f"/api/exams/{ids[0]}/push")
        assert pushed.status_code == 200 and pushed.json()["ok"] is True, pushed.text
    finally:
        d.stop()
        scp.terminate()
        scp.wait(10)
    d = DaemonProcess(test_bundle, data, extra=["--pacs", pacs, "--max-exams", "1"])
    try:
        d.wait_ready()
        c = httpx.Client(base_url=d.url, timeout=60)
        assert poll(lambda: "noa_edge_retention_runs_total 1" in c.get("/metrics").text, timeout=30)
        assert [e["id"] for e in c.get("/api/exams").json()["exams"]] == [ids[1]]
        assert "more than 1 exams (--max-exams)" in c.get(f"/api/exams/{ids[0]}").json()["detail"]
    finally:
        d.stop()
