"""Golden geometry: the pixels the model sees and the pictures a clinician sees, checked against expectations
written here, not against the code under test.

A frame is non-square and every mark sits at a known, asymmetric place, so an x/y swap, a crop a few pixels
off, a wrong resize, swapped colour channels, a transposed CAM or a CAM of the wrong sign all fail. The
expected model input comes from tests/reference_image.py (plain numpy); OpenCV's fixed-point rounding is
allowed 1 grey level.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edge.cam import CAM_SIZE_MIN, cam_overlay, roi_view
from edge.export import overlay_on_frame, report_image, secondary_capture
from edge.imaging import decode_image_bytes, png_bytes
from edge.preprocess import crop_roi, to_rgb_uint8
from edge.roi import parse_roi
from edge.store import ExamStore
from reference_image import assert_close_pixels, expected_model_input, resize_gray

H, W = 300, 400                      # frame rows, columns (non-square)
ROI = (100, 60, 160, 120)            # x, y, w, h: 4 columns and 3 rows per output pixel at SIZE
SIZE = 40
YELLOW = (255, 214, 0)               # the ROI outline on the report and the SC


def golden_frame(seed: int = 0) -> np.ndarray:
    """Textured grey frame (values 0..200) with marks at known places:
    a white 12×9 block at x 140..151, y 90..98 (output pixels rows 10..12, columns 10..12),
    a white 4×3 block in the ROI's top-left corner (output pixel 0, 0),
    pure red / green / blue 12×9 blocks at x 200 / 220 / 240, y 150 (output row 30..32, columns 25 / 30 / 35)."""
    rng = np.random.default_rng(seed)
    gray = rng.integers(0, 201, (H, W), dtype=np.uint8)
    frame = np.repeat(gray[:, :, None], 3, axis=2)
    frame[90:99, 140:152] = 255
    frame[60:63, 100:104] = 255
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        frame[150:159, 200 + 20 * i:212 + 20 * i] = colour
    return frame


def _png(rgb: np.ndarray) -> bytes:
    """PNG written by Pillow from RGB (an encoder independent of OpenCV's BGR convention)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------- model input
def test_crop_roi_takes_rows_y_and_columns_x_and_squashes_to_size():
    frame = golden_frame()
    got = crop_roi(frame, ROI, SIZE)
    assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8 and got.flags.c_contiguous
    assert_close_pixels(got, expected_model_input(frame, ROI, SIZE))
    # readable landmarks: the white block and the corner mark land where the arithmetic says
    assert (got[10:13, 10:13] == 255).all()
    assert got[0, 0, 0] == 255 and got[0, 1, 0] < 255 and got[1, 0, 0] < 255


@pytest.mark.parametrize("shift", [(3, 0), (0, 3), (-3, 0), (0, -3)])
def test_a_crop_three_pixels_off_is_a_different_input(shift):
    """The reference is sharp enough to tell a 3 px shift (so the test above would catch one)."""
    frame = golden_frame()
    x, y, w, h = ROI
    shifted = expected_model_input(frame, (x + shift[0], y + shift[1], w, h), SIZE)
    right = expected_model_input(frame, ROI, SIZE)
    assert np.abs(shifted.astype(int) - right.astype(int)).max() > 20


def test_small_roi_is_enlarged_bilinearly():
    frame = golden_frame(1)
    roi = (212, 41, 20, 10)           # smaller than SIZE on both axes: INTER_LINEAR
    assert_close_pixels(crop_roi(frame, roi, SIZE), expected_model_input(frame, roi, SIZE))


def test_roi_at_the_frame_edges_and_outside():
    frame = golden_frame(2)
    corner = (W - 80, H - 60, 80, 60)
    assert_close_pixels(crop_roi(frame, corner, SIZE), expected_model_input(frame, corner, SIZE))
    for bad in [(W - 79, 0, 80, 60), (0, H - 59, 80, 60), (-1, 0, 80, 60), (0, 0, 0, 60)]:
        with pytest.raises(ValueError, match="outside|empty"):
            crop_roi(frame, bad, SIZE)


def test_colour_inside_the_roi_is_folded_to_bt601_luma():
    got = crop_roi(golden_frame(), ROI, SIZE)
    # red 0.299·255 = 76, green 0.587·255 = 150, blue 0.114·255 = 29: a BGR/RGB swap trades red and blue
    assert (got[30:33, 25:28] == 76).all() and (got[30:33, 30:33] == 150).all() and (got[30:33, 35:38] == 29).all()
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 0], got[..., 2])


def test_decoded_images_are_rgb_in_channel_order():
    rgb = golden_frame()[:64, :96].copy()
    rgb[0:8, 0:8] = (255, 0, 0)                      # red top-left
    rgb[0:8, -8:] = (0, 0, 255)                      # blue top-right
    decoded = decode_image_bytes(_png(rgb), "golden.png")
    assert np.array_equal(decoded, rgb)
    assert tuple(decoded[0, 0]) == (255, 0, 0) and tuple(decoded[0, -1]) == (0, 0, 255)
    # the converter itself, from what OpenCV hands over (BGR, BGRA, grey)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    assert np.array_equal(to_rgb_uint8(bgr), rgb)
    assert np.array_equal(to_rgb_uint8(np.dstack([bgr, np.full(rgb.shape[:2], 255, np.uint8)])), rgb)
    grey = rgb[..., 1]
    assert np.array_equal(to_rgb_uint8(grey), np.repeat(grey[:, :, None], 3, axis=2))


def test_a_typed_roi_is_x_y_w_h_in_that_order():
    frame = golden_frame()
    assert parse_roi("100,60,160,120", frame.shape) == ROI
    assert parse_roi(" 300 , 10 , 90 , 250 ", frame.shape) == (300, 10, 90, 250)  # valid only as x, y, w, h
    with pytest.raises(ValueError):
        parse_roi("10,300,250,90", frame.shape)                                   # y + h beyond 300 rows


# ------------------------------------------------------------------------------------------ CAM
def _hot_spot(img: np.ndarray, base: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel the overlay changed most."""
    dev = np.abs(img.astype(int) - base.astype(int)).sum(axis=2)
    y, x = np.unravel_index(int(np.argmax(dev)), dev.shape)
    return int(x), int(y)


def _cell_box(row: int, col: int, h: int, w: int, n: int = 7) -> tuple[float, float, float, float]:
    return col * w / n, row * h / n, (col + 1) * w / n, (row + 1) * h / n


@pytest.mark.parametrize("positive", [True, False], ids=["NOA", "OA"])
def test_cam_hot_cell_lands_on_its_place_in_the_overlay(positive):
    """7×7 CAM: +1 at row 1, column 5 (evidence for NOA), −1 at row 5, column 2 (evidence for OA).
    NOA lights the first, OA (map negated) the second; nothing else is tinted."""
    h, w = 140, 210                                   # non-square ROI view
    base = np.full((h, w, 3), 100, np.uint8)
    cam = np.zeros((7, 7), np.float32)
    cam[1, 5], cam[5, 2] = 1.0, -1.0
    out = cam_overlay(base, cam, positive=positive)
    assert out.shape == base.shape and out.dtype == np.uint8
    row, col = (1, 5) if positive else (5, 2)
    x0, y0, x1, y1 = _cell_box(row, col, h, w)
    x, y = _hot_spot(out, base)
    assert x0 <= x < x1 and y0 <= y < y1, f"hottest pixel at x={x}, y={y}, expected inside cell {row},{col}"
    assert out[y, x, 0] > out[y, x, 2]                # JET top = red end
    other_row, other_col = (5, 2) if positive else (1, 5)
    ox0, oy0, ox1, oy1 = (int(round(v)) for v in _cell_box(other_row, other_col, h, w))
    assert np.array_equal(out[oy0:oy1, ox0:ox1], base[oy0:oy1, ox0:ox1]), "the other class' evidence is tinted"
    assert np.array_equal(out[-5:, :5], base[-5:, :5])  # a cold corner stays the plain image


def test_cam_with_no_evidence_for_the_call_leaves_the_roi_plain():
    base = np.full((60, 90, 3), 80, np.uint8)
    assert np.array_equal(cam_overlay(base, -np.ones((7, 7), np.float32), positive=True), base)
    assert np.array_equal(cam_overlay(base, np.ones((7, 7), np.float32), positive=False), base)


def test_roi_view_is_the_roi_of_the_frame():
    frame = golden_frame(3)
    x, y, w, h = 90, 40, 260, 230                     # both sides >= CAM_SIZE_MIN: no resize
    assert np.array_equal(roi_view(frame, (x, y, w, h)), frame[y:y + h, x:x + w])
    small = roi_view(frame, ROI)                      # enlarged so its short side is CAM_SIZE_MIN
    scale = CAM_SIZE_MIN / min(ROI[2], ROI[3])
    assert small.shape == (round(ROI[3] * scale), round(ROI[2] * scale), 3)
    x, y, w, h = ROI
    expected = np.dstack([resize_gray(frame[y:y + h, x:x + w, c], small.shape[1], small.shape[0]) for c in range(3)])
    assert_close_pixels(small, np.rint(expected).astype(np.uint8))


def test_stored_roi_image_is_the_frame_at_the_stored_roi(tmp_path):
    frame = golden_frame(4)
    x, y, w, h = 120, 50, 240, 230
    store = ExamStore(tmp_path)
    try:
        exam = store.add_exam({"roi": [x, y, w, h], "frame_size": [W, H], "label": "NOA"}, png_bytes(frame),
                              None, png_bytes(frame[:10, :10]))
        roi = decode_image_bytes(store.get_image(exam["id"], "roi"), "roi.png")
    finally:
        store.close()
    assert np.array_equal(roi, frame[y:y + h, x:x + w])


# ------------------------------------------------------------------------- report, SC, overlay
def _exam(frame: np.ndarray, overlay: np.ndarray, roi) -> dict:
    return {"id": 5, "created": "2025-05-01T10:11:12+00:00", "dl_probability": 0.8, "nomogram_probability": None,
            "label": "NOA", "threshold": 0.5, "inputs": {}, "points": {}, "roi": list(roi),
            "bundle": {"name": "golden", "sha256": "ab" * 32, "synthetic_demo": True},
            "timings": {}, "frame_png": _png(frame), "overlay_png": _png(overlay)}


def _yellow(img: np.ndarray) -> np.ndarray:
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return (r > 200) & (np.abs(g - 214) < 40) & (b < 90)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    assert xs.size, "nothing found"
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_overlay_on_frame_puts_the_cam_and_the_box_on_the_roi():
    frame = np.full((H, W, 3), 30, np.uint8)
    x, y, w, h = ROI
    overlay = np.full((h, w, 3), (0, 0, 200), np.uint8)       # solid blue stands for the CAM picture
    out = np.asarray(overlay_on_frame(_exam(frame, overlay, ROI)))
    strip = out.shape[0] - H                                  # warning strip on top, frame below it
    assert strip > 0 and out.shape[1] == W
    shown = out[strip:]
    assert _bbox(_yellow(shown)) == (x, y, x + w - 1, y + h - 1)
    inner = shown[y + 2:y + h - 2, x + 2:x + w - 2]
    assert (inner == (0, 0, 200)).all()                       # the CAM fills exactly the ROI
    outside = np.ones((H, W), bool)
    outside[y:y + h, x:x + w] = False
    assert (shown[outside] == 30).all()


def test_secondary_capture_overlay_shows_the_box_where_the_roi_is():
    frame = np.full((H, W, 3), 30, np.uint8)
    x, y, w, h = ROI
    ds = secondary_capture(_exam(frame, np.full((h, w, 3), (0, 0, 200), np.uint8), ROI), content="overlay")
    pixels = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns, 3)
    shown = pixels[ds.Rows - H:]
    assert _bbox(_yellow(shown)) == (x, y, x + w - 1, y + h - 1)


def test_report_draws_the_roi_box_at_the_scaled_roi():
    teal = (40, 120, 170)                                      # a colour nothing else on the page uses
    frame = np.full((H, W, 3), teal, np.uint8)
    x, y, w, h = ROI
    page = np.asarray(report_image(_exam(frame, np.full((h, w, 3), (0, 0, 200), np.uint8), ROI)))
    left = page[:, : page.shape[1] // 2]
    shown = np.all(np.abs(left.astype(int) - teal) <= 3, axis=2)  # the frame as pasted (scaled) on the page
    fx0, fy0, fx1, fy1 = _bbox(shown)
    s = (fx1 - fx0 + 1) / W
    assert (fy1 - fy0 + 1) == pytest.approx(H * s, abs=2)      # aspect kept
    bx0, by0, bx1, by1 = _bbox(_yellow(left[fy0:fy1 + 1, fx0:fx1 + 1]))
    for got, want in ((bx0, x * s), (by0, y * s), (bx1, (x + w) * s - 1), (by1, (y + h) * s - 1)):
        assert got == pytest.approx(want, abs=2), ((bx0, by0, bx1, by1), (x * s, y * s, (x + w) * s, (y + h) * s))
