"""Exam store: whole-or-nothing inserts, the idle-time lossless frame recompression, derived ROI images."""

import time

import cv2
import numpy as np
import pytest

from edge.cam import roi_view
from edge.imaging import frame_png_bytes, jpeg_bytes, png_bytes
from edge.store import ExamStore, StoreError


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


def _wait_for(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("colour", [False, True], ids=["gray", "colour"])
def test_uncompressed_frame_is_recompressed_losslessly_when_idle(tmp_path, colour):
    frame = _frame(colour=colour)
    raw = frame_png_bytes(frame, level=0)
    store = ExamStore(tmp_path)
    store.recompress_idle_s = 0.1
    try:
        exam = store.add_exam(_exam(), raw, None, jpeg_bytes(frame), recompress_frame=True)
        assert _wait_for(lambda: len(store.get_image(exam["id"], "frame")) < len(raw) * 0.9), \
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
        assert _wait_for(lambda: len(reopened.get_image(exam["id"], "frame")) < len(raw) * 0.9)
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
