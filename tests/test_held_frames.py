"""Held frames (edge/held_frames.py): the hash definition, an immutable copy, each frame's own ROI, the
bounded ring and its "no longer held" answer, and the lossless PNG round trip the exam relies on."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from conftest import cine_rgb
from edge.held_frames import CAPACITY, FrameNotHeld, HeldFrames, frame_sha256, make_held_frame
from edge.imaging import decode_png_rgb, gray_if_gray, png_bytes
from edge.roi import find_image_area, propose_roi


def test_sha256_is_of_rgb_pixels_in_c_order():
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert frame_sha256(rgb) == hashlib.sha256(rgb.tobytes(order="C")).hexdigest()
    assert frame_sha256(np.asfortranarray(rgb)) == frame_sha256(rgb)  # layout in memory does not matter
    gray = rgb[..., 0].copy()
    as_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    assert frame_sha256(gray) == hashlib.sha256(as_rgb.tobytes()).hexdigest()  # gray is hashed as RGB
    with pytest.raises(ValueError, match="uint8"):
        frame_sha256(rgb.astype(np.float32))


def test_held_copy_is_immutable_and_independent_of_the_source_buffer(demo_cine):
    frame = cine_rgb(demo_cine, 10)
    before = frame_sha256(frame)
    held = make_held_frame(frame, "user", "test")
    frame[:] = 0  # the source reuses its buffer
    assert held.sha256 == before == frame_sha256(held.frame)
    with pytest.raises(ValueError):
        held.frame[0, 0, 0] = 1
    body = held.public()
    assert body["frame_sha256"] == before and body["roi_method"] == "auto" and body["trigger"] == "user"
    assert body["frame_size"] == [800, 600] and body["url"] == f"/frames/{held.frame_id}.png"
    assert body["held_at"][-6] in "+-"  # ISO-8601 with its UTC offset


def test_each_held_frame_gets_its_own_roi(demo_cine):
    a, b = cine_rgb(demo_cine, 0), cine_rgb(demo_cine, 23)  # the probe has moved: the testis is elsewhere
    ha, hb = make_held_frame(a, "upload"), make_held_frame(b, "upload")
    assert ha.roi != hb.roi
    for frame, held in ((a, ha), (b, hb)):
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        assert held.area == find_image_area(gray) and held.roi == propose_roi(gray, held.area)


def test_ring_is_bounded_and_says_evicted():
    ring = HeldFrames()
    frames = [np.full((64, 64, 3), i, np.uint8) for i in range(CAPACITY + 1)]
    held = [ring.hold(f, "user") for f in frames]
    assert len(ring) == CAPACITY
    with pytest.raises(FrameNotHeld, match="no longer held") as err:
        ring.get(held[0].frame_id)
    assert err.value.field == "frame_id" and err.value.evicted
    with pytest.raises(FrameNotHeld, match="not a held frame") as err:
        ring.get("0123456789abcdef")
    assert not err.value.evicted
    assert ring.get(held[-1].frame_id.upper()).sha256 == held[-1].sha256  # ids are case-insensitive hex
    assert [h.frame_id for h in ring.newest(3)] == [h.frame_id for h in held[:-4:-1]]


def test_ring_is_bounded_by_bytes_too():
    one = make_held_frame(np.zeros((100, 100, 3), np.uint8), "user").nbytes
    ring = HeldFrames(capacity=16, max_bytes=3 * one)
    held = [ring.hold(np.full((100, 100, 3), i, np.uint8), "user") for i in range(5)]
    assert len(ring) == 3
    with pytest.raises(FrameNotHeld):
        ring.get(held[1].frame_id)


@pytest.mark.parametrize("gray", [False, True], ids=["colour", "gray"])
def test_lossless_png_decodes_to_the_same_hash(demo_cine, gray):
    frame = cine_rgb(demo_cine, 40)
    if gray:
        frame = cv2.cvtColor(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    held = make_held_frame(frame, "user")
    png = png_bytes(gray_if_gray(held.frame, held.gray), level=1)
    back = decode_png_rgb(png)
    assert back.ndim == (2 if gray else 3)  # a gray frame is stored 1-channel
    assert frame_sha256(back) == held.sha256
