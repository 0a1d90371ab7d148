"""Golden DICOM pixels: a 16-bit grey ultrasound object with a VOI window decodes to the window the sonographer
set (DICOM PS3.3 C.11.2.1.2, linear function, written out here), and a multi-frame object gives its middle
frame unless asked otherwise. The objects are built here with known values, so the expectation is arithmetic,
not the decoder's own output."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from conftest import us_dicom_bytes
from edge.imaging import decode_image, decode_image_bytes

ROWS, COLS = 40, 48


def _dicom(pixels: np.ndarray, sop_class, **attrs) -> bytes:
    return us_dicom_bytes(pixels, sop_class=sop_class, **attrs)


def _linear_voi(x: np.ndarray, center: float, width: float, y_max: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1: below the window 0, above it y_max, linear in between."""
    x = x.astype(np.float64)
    lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * y_max
    return np.where(x <= lo, 0.0, np.where(x > hi, y_max, y))


def test_voi_window_of_a_16_bit_object_is_applied():
    """Raw values 0..4000 in a ramp; the sonographer's window is centre 1000, width 400. Without the window the
    image would be a dim ramp over the whole range; with it, 800..1200 spans black to white."""
    ramp = np.linspace(0, 4000, COLS).round().astype(np.uint16)
    pixels = np.tile(ramp, (ROWS, 1))
    data = _dicom(pixels, UltrasoundImageStorage, WindowCenter=1000, WindowWidth=400)
    got = decode_image_bytes(data, "window.dcm")
    assert got.shape == (ROWS, COLS, 3) and got.dtype == np.uint8
    windowed = _linear_voi(pixels, 1000, 400, 65535.0)
    expected = np.rint(windowed * (255.0 / windowed.max())).astype(np.uint8)
    assert np.abs(got[..., 0].astype(int) - expected.astype(int)).max() <= 1
    assert (got[:, ramp <= 790] == 0).all() and (got[:, ramp >= 1210] == 255).all()


def test_without_a_window_the_full_range_is_scaled():
    ramp = np.linspace(0, 4000, COLS).round().astype(np.uint16)
    got = decode_image_bytes(_dicom(np.tile(ramp, (ROWS, 1)), UltrasoundImageStorage), "plain.dcm")
    expected = np.rint(ramp * (255.0 / 4000)).astype(np.uint8)
    assert np.abs(got[0, :, 0].astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("n_frames", [1, 4, 5])
def test_a_multi_frame_object_gives_its_middle_frame(n_frames):
    frames = np.stack([np.full((ROWS, COLS), 10 * (i + 1), np.uint8) for i in range(n_frames)])
    data = _dicom(frames if n_frames > 1 else frames[0], UltrasoundMultiFrameImageStorage)
    decoded = decode_image(data, "cine.dcm")
    assert (decoded.n_frames, decoded.frame_index) == (n_frames, n_frames // 2)
    assert (decoded.frame == 10 * (n_frames // 2 + 1)).all()
    if n_frames > 1:
        assert (decode_image(data, "cine.dcm", 0).frame == 10).all()
