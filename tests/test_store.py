"""Exam store: whole-or-nothing inserts, the idle-time lossless frame recompression, derived ROI images."""


import cv2
import numpy as np
import pytest

from conftest import poll
from edge.cam import roi_view
from edge.capture import demo_cine_path
from edge.imaging import frame_png_bytes, jpeg_bytes, png_bytes
from edge.store import ExamStore, StoreError, StoreFullError


def _frame(seed=0, colour=False):
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (120, 160), dtype=np.uint8), (5, 5), 0)
    frame = np.repeat(gray[:, :, None], 3, axis=2)
    if colour:  # channels differ, so a swapped RGB/BGR anywhere in the store shows
        frame[..., 0] //= 2
    return frame


def _exam(roi=(10, 20, 40, 30)):
    return {"roi": list(roi), "frame_size": [160, 120], "dl_probability": 0.7, "label": "NOA",
            "bundle": {"sha256": "x"}}


def _decode(png: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)




@pytest.mark.parametrize("colour", [False, True], ids=["gray", "colour"])
def test_uncompressed_frame_is_recompressed_losslessly_when_idle(tmp_path, colour):
    frame = _frame(colour=colour)
    raw = frame_png_bytes(frame, level=0)
    store = ExamStore(tmp_path)
    store.recompress_idle_s = 0.1
    try:
        exam = store.add_exam(_exam(), raw, None, jpeg_bytes(frame), recompress_frame=True)
        assert poll(lambda: len(store.get_image(exam["id"], "frame")) < len(raw) * 0.9), \
            "frame was not recompressed"
        assert np.array_equal(_decode(store.get_image(exam["id"], "frame")), frame)
        roi = _decode(store.get_image(exam["id"], "roi"))  # derived from frame + roi, never stored
        assert np.array_equal(roi, roi_view(frame, (10, 20, 40, 30)))
    finally:
        store.close()


def test_frames_left_uncompressed_by_a_previous_run_are_queued_on_reopen(tmp_path):
    frame = _frame(1)
    raw = frame_png_bytes(frame, level=0)
    store = ExamStore(tmp_path)
    store.recompress_idle_s = 3600  # never idle long enough in this process
    exam = store.add_exam(_exam(), raw, None, jpeg_bytes(frame), recompress_frame=True)
    assert store.get_image(exam["id"], "frame") == raw  # still uncompressed when this process stops
    store.close()
    reopened = ExamStore(tmp_path)
    reopened.recompress_idle_s = 0.1
    try:
        assert poll(lambda: len(reopened.get_image(exam["id"], "frame")) < len(raw) * 0.9)
        assert np.array_equal(_decode(reopened.get_image(exam["id"], "frame")), frame)
    finally:
        reopened.close()


def test_bad_exam_stores_nothing(tmp_path):
    store = ExamStore(tmp_path)
    try:
        with pytest.raises(StoreError, match="frame_png is empty"):
            store.add_exam(_exam(), b"", None, b"x")
        with pytest.raises(StoreError, match="no roi"):
            store.add_exam({"frame_size": [160, 120]}, png_bytes(_frame()), None, b"x")
        with pytest.raises(StoreError, match="lies outside the 160×120 image"):
            store.add_exam(_exam(roi=(150, 110, 40, 30)), png_bytes(_frame()), None, b"x")
        with pytest.raises(StoreError, match="lies outside"):
            store.add_exam(_exam(roi=(-10, 20, 40, 30)), png_bytes(_frame()), None, b"x")
        with pytest.raises(StoreError, match="4 integers"):
            store.add_exam(_exam(roi=(10.5, 20, 40, 30)), png_bytes(_frame()), None, b"x")
        with pytest.raises(StoreError, match="not serialisable"):
            store.add_exam(dict(_exam(), bad=float("nan")), png_bytes(_frame()), None, b"x")
        assert store.count() == 0 and store.integrity_problems() == []
    finally:
        store.close()


# ------------------------------------------------------------------------------ space: vacuum, disk full, ids
def _big_frame(index: int) -> np.ndarray:
    """Frame `index` of the shipped phantom cine (800×600 RGB): level-1 PNG is ~4× smaller than level 0."""
    cap = cv2.VideoCapture(str(demo_cine_path()))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok, index
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def test_file_shrinks_after_recompressing_many_frames(tmp_path):
    store = ExamStore(tmp_path)
    store.recompress_idle_s = 3600  # write them all first, as a burst would
    try:
        assert store._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, from creation
        for i in range(40):
            frame = _big_frame(i)
            store.add_exam(_exam(), frame_png_bytes(frame, level=0), None, jpeg_bytes(frame), recompress_frame=True)
        assert poll(lambda: store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0)
        before = store.db_bytes()
        store.recompress_idle_s = 0.05
        store._work.set()
        pending = "SELECT COUNT(*) FROM exams WHERE frame_pending = 1"
        assert poll(lambda: store._db.execute(pending).fetchone()[0] == 0, timeout=120), "not recompressed"
        assert poll(lambda: store.db_bytes() < before * 0.5, timeout=60), (before, store.db_bytes())
        # pages given back, not kept; waited for: the last vacuum runs just after the last frame's UPDATE
        freelist = "PRAGMA freelist_count"
        assert poll(lambda: store._db.execute(freelist).fetchone()[0] < 64, timeout=60), \
            store._db.execute(freelist).fetchone()[0]
        after = store.db_bytes()
        print(f"\nDB before recompression {before / 1e6:.1f} MB, after (incremental vacuum) {after / 1e6:.1f} MB")
        assert store.integrity_problems() == [] and store.count() == 40
        assert np.array_equal(_decode(store.get_image(40, "frame")), _big_frame(39))  # still lossless
    finally:
        store.close()


def test_old_database_is_converted_to_incremental_vacuum_once(tmp_path, monkeypatch, caplog):
    import sqlite3

    import edge.store as store_module

    for name, limit in (("small", store_module.CONVERT_VACUUM_MAX_BYTES), ("large", 0)):
        folder = tmp_path / name
        folder.mkdir()
        old = sqlite3.connect(folder / "exams.sqlite3")  # as an earlier version made it: auto_vacuum NONE
        old.executescript(store_module._SCHEMA)
        old.close()
        monkeypatch.setattr(store_module, "CONVERT_VACUUM_MAX_BYTES", limit)
        store = ExamStore(folder)
        try:
            mode = store._db.execute("PRAGMA auto_vacuum").fetchone()[0]
            assert mode == (2 if name == "small" else 0), name
        finally:
            store.close()
    assert "not in incremental-vacuum mode" in caplog.text  # the large one is left, with a line saying how


def test_sqlite_disk_full_is_store_full_and_reported(tmp_path):
    store = ExamStore(tmp_path)
    try:
        frame = _frame()
        store.add_exam(_exam(), png_bytes(frame), None, jpeg_bytes(frame))
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 2}")  # SQLite's own SQLITE_FULL, no mount needed
        big = frame_png_bytes(_big_frame(1), level=0)
        with pytest.raises(StoreFullError, match="database or disk is full"):
            store.add_exam(_exam(), big, None, jpeg_bytes(frame))
        status = store.storage_status()
        assert status["ok"] is False and "could not grow" in status["problem"]
        assert store.count() == 1 and store.integrity_problems() == []
        store._db.execute("PRAGMA max_page_count = 1073741823")  # room again
        store.add_exam(_exam(), big, None, jpeg_bytes(frame))
        assert store.storage_status()["ok"] is True and store.count() == 2
    finally:
        store.close()


def test_free_space_watermark_refuses_before_writing(tmp_path):
    store = ExamStore(tmp_path, min_free_bytes=2**62)  # more than any disk has
    try:
        frame = _frame()
        with pytest.raises(StoreFullError, match="free disk space"):
            store.add_exam(_exam(), png_bytes(frame), None, jpeg_bytes(frame))
        status = store.storage_status()
        assert status["ok"] is False and status["free_bytes"] > 0 and "watermark" in status["problem"]
        assert store.count() == 0
    finally:
        store.close()


def test_ids_and_offsets_outside_sqlite_range_are_not_found(tmp_path):
    store = ExamStore(tmp_path)
    try:
        frame = _frame()
        store.add_exam(_exam(), png_bytes(frame), None, jpeg_bytes(frame))
        for bad in (2**63, 2**64, -1, 0, -(2**70)):
            assert store.get_exam(bad) is None and store.get_exam(bad, with_images=True) is None
            for kind in ("frame", "roi", "overlay"):
                assert store.get_image(bad, kind) is None
        assert store.list_exams(offset=2**70) == [] and store.list_exams(limit=2**70)[0]["id"] == 1
    finally:
        store.close()
