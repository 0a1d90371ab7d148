"""One decoder for host and device: the dataset loader, the training input (ROI crops before augmentation) and
the daemon's own decode (inbox/folder, upload, C-STORE) give byte-identical pixels for the same file.

Files: the ultrasound DICOM objects inside the pydicom wheel (RGB, palette, YBR JPEG multi-frame, JPEG 2000,
RGB big endian) and objects made here with known values (MONOCHROME1, a 16-bit VOI window, a multi-frame grey
cine), plus a PNG and a JPEG. For the made ones the expected pixels are also written out, so "host equals
device" cannot pass by both being wrong. A static check keeps pixel access to edge/dicom_io.py alone.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import examples
from pydicom.data import get_testdata_file
from pydicom.uid import UltrasoundImageStorage

from conftest import us_dicom_bytes
from converters.dataset import load_dataset
from converters.image_files import image_size, read_image_file
from converters.train_data import load_rois
from edge.capture import decode_still
from edge.dicom_io import decode_dataset_frame, decode_dicom_path, default_frame_index, read_dataset
from edge.held_frames import make_held_frame
from edge.imaging import decode_upload
from edge.preprocess import crop_roi

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
ROWS, COLS = 48, 64

PYDICOM_US = {  # the ultrasound objects in the pydicom wheel
    "us_rgb.dcm": examples.get_path("rgb_color"),                # RGB, explicit VR little endian
    "us_palette.dcm": examples.get_path("palette_color"),        # PALETTE COLOR
    "us_ybr_jpeg_cine.dcm": examples.get_path("ybr_color"),      # YBR_FULL_422, JPEG baseline, 30 frames
    "us_jpeg2k.dcm": examples.get_path("jpeg2k"),                # YBR_RCT, JPEG 2000 lossless
    "us_rgb_big_endian.dcm": Path(get_testdata_file("ExplVR_BigEnd.dcm")),
}


_dicom_bytes = us_dicom_bytes


RAMP = np.tile(np.linspace(10, 240, COLS).round().astype(np.uint8), (ROWS, 1))
RAW16 = np.tile(np.linspace(0, 4000, COLS).round().astype(np.uint16), (ROWS, 1))
CINE = np.stack([np.clip(RAMP.astype(int) + 3 * k, 0, 255).astype(np.uint8) for k in range(5)])
CINE[:, :4, :4] = np.arange(5, dtype=np.uint8)[:, None, None] * 40  # each frame's corner says its index


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 linear window to 0..65535 (pydicom's output for 16-bit data), then the
    decoder's 8-bit step (edge.preprocess.to_rgb_uint8: min-max to 0..255)."""
    x = x.astype(np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 65535.0
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, np.where(x > center - 0.5 + (width - 1) / 2, 65535.0, y))
    y = y.astype(np.float32)
    return np.rint((y - y.min()) * (255.0 / (y.max() - y.min()))).astype(np.uint8)


MADE = {  # name -> (bytes, expected grey pixels)
    "made_mono1.dcm": (_dicom_bytes(RAMP, "MONOCHROME1"), 255 - RAMP),
    "made_voi_window.dcm": (_dicom_bytes(RAW16, WindowCenter=1000, WindowWidth=400), _window(RAW16, 1000, 400)),
    "made_cine.dcm": (_dicom_bytes(CINE), CINE[default_frame_index(len(CINE))]),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset whose images are every file above (one patient each, ROIs inside each image)."""
    root = tmp_path_factory.mktemp("one_decoder") / "ds"
    (root / "images").mkdir(parents=True)
    for name, src in PYDICOM_US.items():
        shutil.copyfile(src, root / "images" / name)
    for name, (data, _) in MADE.items():
        (root / "images" / name).write_bytes(data)
    grey = cv2.resize(RAMP, (200, 150))
    cv2.imwrite(str(root / "images" / "still.png"), grey)
    cv2.imwrite(str(root / "images" / "still.jpg"), grey, [cv2.IMWRITE_JPEG_QUALITY, 90])
    files = sorted(p.name for p in (root / "images").iterdir())
    (root / "dataset.json").write_text(json.dumps({"name": "one-decoder", "source": {"kind": "clinic"},
                                                   "positive_class": "NOA", "created": "2026-12-01T00:00:00Z"}))
    with open(root / "patients.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient_id", "group", "age", "fsh", "lh", "testosterone", "inhibin_b"])
        w.writerows([[f"P{i}", "NOA" if i % 2 else "OA", "", "", "", "", ""] for i in range(len(files))])
    with open(root / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "patient_id", "side", "file", "roi_x", "roi_y", "roi_w", "roi_h", "length_cm",
                    "width_cm", "height_cm", "volume_ml", "psv_cm_s", "edv_cm_s", "ri"])
        for i, name in enumerate(files):
            width, height = image_size(root / "images" / name)
            roi = (width // 5, height // 6, width // 2, height // 2)
            w.writerow([f"I{i}", f"P{i}", "L", f"images/{name}", *roi, "", "", "", "", "", "", ""])
    return load_dataset(root)


def _daemon_frames(data: bytes, name: str) -> dict[str, np.ndarray]:
    """The frame of every daemon input for these bytes: inbox/folder worker, upload, C-STORE SCP."""
    scp = decode_dataset_frame(read_dataset(data, name), name).frame if name.endswith(".dcm") else None
    frames = {"inbox": decode_still(data, name)[0], "upload": decode_upload(data, name)[0]}
    if scp is not None:
        frames["scp"] = scp
    return frames


def test_every_path_gives_the_same_pixels_for_the_same_file(dataset, tmp_path):
    assert len(dataset.images) == len(PYDICOM_US) + len(MADE) + 2
    rois = load_rois(dataset, dataset.images, SIZE, tmp_path / "cache", "sha", False, logging.getLogger("t"))
    cached = load_rois(dataset, dataset.images, SIZE, tmp_path / "cache", "sha", False, logging.getLogger("t"))
    for row, roi_train, roi_cached in zip(dataset.images, rois, cached, strict=True):
        path = dataset.image_path(row)
        host = dataset.read_image(row)                                # the dataset loader
        assert host.dtype == np.uint8 and host.ndim == 3 and host.shape[2] == 3, row["file"]
        assert image_size(path) == (host.shape[1], host.shape[0]), row["file"]  # validation's header size
        for where, frame in _daemon_frames(path.read_bytes(), path.name).items():
            assert frame.dtype == host.dtype and frame.shape == host.shape, (row["file"], where)
            assert frame.tobytes() == host.tobytes(), (row["file"], where)
        # the Analyzer's model input (gray of the held frame, cropped) == the training input before augmentation
        held = make_held_frame(decode_still(path.read_bytes(), path.name)[0], "upload", "test")
        analyzer_input = crop_roi(held.gray, row["roi"], SIZE)
        assert roi_train.tobytes() == analyzer_input.tobytes(), row["file"]
        assert roi_cached.tobytes() == roi_train.tobytes(), row["file"]


@pytest.mark.parametrize("name", sorted(MADE))
def test_made_objects_decode_to_the_values_written_out(dataset, name):
    """MONOCHROME1 is inverted, the VOI window is applied, a cine gives its middle frame — on the host."""
    row = next(r for r in dataset.images if r["file"].endswith(name))
    got = dataset.read_image(row)
    expected = MADE[name][1]
    assert np.array_equal(got, np.repeat(expected[:, :, None], 3, axis=2))


def test_multi_frame_rule_is_the_middle_frame_on_every_path(dataset):
    """The frame rule: n // 2 (edge.dicom_io.default_frame_index), for the pydicom 30-frame YBR JPEG cine too."""
    assert [default_frame_index(n) for n in (1, 2, 3, 5, 30)] == [0, 1, 1, 2, 15]
    row = next(r for r in dataset.images if r["file"].endswith("us_ybr_jpeg_cine.dcm"))
    every = decode_dicom_path(dataset.image_path(row))
    assert len(every) == 30
    assert np.array_equal(dataset.read_image(row), every[15])
    assert not np.array_equal(every[0], every[15])  # the rule is observable on this object
    made = next(r for r in dataset.images if r["file"].endswith("made_cine.dcm"))
    assert int(dataset.read_image(made)[0, 0, 0]) == 2 * 40  # the corner says frame 2 of 0..4


def test_validation_refuses_what_the_device_refuses(tmp_path):
    """A DICOM class the daemon does not analyse, and an image too small for the decoder, fail validation
    already (header only), with the device's reason."""
    from pydicom.uid import CTImageStorage

    data = bytearray(_dicom_bytes(RAMP))
    ct = data.replace(str(UltrasoundImageStorage).encode(), str(CTImageStorage).encode().ljust(
        len(str(UltrasoundImageStorage)), b"\0"))
    (tmp_path / "ct.dcm").write_bytes(bytes(ct))
    from converters.image_files import ImageProblem

    with pytest.raises(ImageProblem, match="not an ultrasound or secondary-capture image"):
        image_size(tmp_path / "ct.dcm")
    with pytest.raises(ImageProblem, match="not an ultrasound or secondary-capture image"):
        read_image_file(tmp_path / "ct.dcm")
    cv2.imwrite(str(tmp_path / "tiny.png"), RAMP[:20, :20])
    with pytest.raises(ImageProblem, match="at least 32x32"):
        image_size(tmp_path / "tiny.png")


# pydicom functions and attributes that turn Pixel Data into pixels: only the one decoder may use them
PIXEL_ACCESS = {"pixel_array", "iter_pixels", "as_array", "apply_color_lut", "apply_modality_lut", "apply_voi_lut",
                "apply_windowing", "apply_voi", "convert_color_space", "decompress", "pixel_data_handlers"}
ONE_DECODER = Path("edge/dicom_io.py")


def test_only_edge_dicom_io_decodes_dicom_pixels():
    """A second DICOM reader (the old host one decoded the first frame without the VOI LUT) fails here."""
    offenders = []
    for package in ("edge", "converters"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel == ONE_DECODER:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.Attribute):
                    names.append(node.attr)
                elif isinstance(node, ast.Name):
                    names.append(node.id)
                elif isinstance(node, ast.ImportFrom):
                    names.extend(a.name for a in node.names)
                    names.extend((node.module or "").split("."))
                offenders += [f"{rel}:{node.lineno} {n}" for n in names if n in PIXEL_ACCESS]
    assert offenders == [], "DICOM pixels decoded outside edge/dicom_io.py: " + ", ".join(offenders)
