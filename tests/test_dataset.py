"""Dataset format: a good dataset loads with the right counts; each malformed one fails with a
message naming file, row, column and reason; `noa-edge validate` exits 0 / 2 and never tracebacks.

All fixtures are generated here in tmp dirs (PNG and JPEG via OpenCV, DICOM via pydicom).
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from converters import dataset as dsmod
from converters.cli import register as register_host_commands
from converters.dataset import DatasetError, load_dataset
from converters.image_files import read_image_file

PATIENT_HEADER = ["patient_id", "group", "age", "fsh", "lh", "testosterone", "inhibin_b"]
IMAGE_HEADER = ["image_id", "patient_id", "side", "file", "roi_x", "roi_y", "roi_w", "roi_h",
                "length_cm", "width_cm", "height_cm", "volume_ml", "psv_cm_s", "edv_cm_s", "ri"]

GOOD_PATIENTS = [
    ["P1", "NOA", "31", "22.5", "11", "3.1", "40"],
    ["P2", "OA", "35", "4.1", "5.0", "4.5", "170"],
    ["P3", "control", "33", "4.0", "", "6.0", "230"],
    ["P4", "NOA", "", "", "", "", ""],  # all labs missing
]
# L*W*H*0.71: 3.5*2.2*1.8*0.71 = 9.84; 4.6*3.0*2.4*0.71 = 23.5; 4.5*2.9*2.3*0.71 = 21.3
GOOD_IMAGES = [
    ["I1", "P1", "L", "images/p1_l.png", "100", "80", "200", "150", "3.5", "2.2", "1.8", "9.8", "6.0", "1.8", "0.70"],
    ["I2", "P1", "R", "images/p1_r.jpg", "90", "70", "210", "160", "3.5", "2.2", "1.8", "9.8", "", "", ""],
    ["I3", "P2", "L", "images/p2_l.dcm", "10", "10", "100", "80", "4.6", "3.0", "2.4", "23.5", "9.0", "3.5", "0.61"],
    ["I4", "P2", "R", "images/p2_r.png", "0", "0", "320", "240", "4.6", "3.0", "2.4", "", "9.0", "3.5", "0.61"],
    ["I5", "P3", "L", "images/p3_l.png", "5", "5", "50", "50", "4.5", "2.9", "2.3", "21.3", "10", "4.6", "0.54"],
    ["I6", "P4", "R", "images/p1_l.png", "300", "200", "20", "40", "", "", "", "", "", "", ""],
]
GOOD_META = {"name": "tiny-test", "source": {"kind": "clinic", "site": "test"},
             "positive_class": "NOA", "created": "2024-05-01T09:30:00Z", "volume_formula": "lambert_0.71"}


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", frames: int = 1) -> None:
    """Uncompressed Secondary Capture DICOM of `pixels` (H, W) or (H, W, 3), uint8 or uint16."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    data = pixels.tobytes()
    if frames > 1:
        ds.NumberOfFrames = frames
        # later frames differ, so reading "the first frame" is checkable
        data = data + b"".join((255 - pixels if bits == 8 else pixels // 2).tobytes() for _ in range(frames - 1))
    ds.PixelData = data
    ds.save_as(path, enforce_file_format=True)


def gray_test_image(width: int, height: int) -> np.ndarray:
    """A horizontal ramp: distinct values make orientation and inversion checkable."""
    ramp = np.tile(np.linspace(10, 240, width).astype(np.uint8), (height, 1))
    return ramp


def make_dataset(root: Path, patients=None, images=None, meta=None) -> Path:
    """The good tiny dataset, with optional replacements for any part."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images/p1_l.png"), gray_test_image(400, 300))
    cv2.imwrite(str(root / "images/p2_r.png"), gray_test_image(320, 240))
    color = np.zeros((60, 80, 3), np.uint8)
    color[:, :, 2] = 200  # BGR: red
    cv2.imwrite(str(root / "images/p3_l.png"), color)
    cv2.imwrite(str(root / "images/p1_r.jpg"), gray_test_image(320, 240), [cv2.IMWRITE_JPEG_QUALITY, 95])
    write_dicom(root / "images/p2_l.dcm", gray_test_image(128, 96))
    (root / "dataset.json").write_text(json.dumps(GOOD_META if meta is None else meta))
    write_csv(root / "patients.csv", PATIENT_HEADER, GOOD_PATIENTS if patients is None else patients)
    write_csv(root / "images.csv", IMAGE_HEADER, GOOD_IMAGES if images is None else images)
    return root


def replaced(rows, row_index, column, value, header):
    out = [list(r) for r in rows]
    out[row_index][header.index(column)] = value
    return out


def problems_of(root: Path, check_images=True) -> list[str]:
    with pytest.raises(DatasetError) as info:
        load_dataset(root, check_images=check_images)
    return [str(p) for p in info.value.problems]


def assert_problem(problems: list[str], *parts: str) -> None:
    assert any(all(part in p for part in parts) for p in problems), (parts, problems)


# ------------------------------------------------------------------------------------------
# The good dataset


def test_good_dataset_loads_with_counts_missingness_and_labels(tmp_path):
    ds = load_dataset(make_dataset(tmp_path))
    assert len(ds.patients) == 4 and len(ds.images) == 6
    assert ds.volume_formula == "lambert_0.71"
    assert ds.patient("P2")["group"] == "OA" and ds.patient("P2")["fsh"] == pytest.approx(4.1)
    assert ds.patient("P4")["fsh"] is None
    assert ds.images[0]["roi"] == (100, 80, 200, 150) and isinstance(ds.images[0]["roi"][0], int)
    assert ds.images[1]["psv_cm_s"] is None
    assert ds.warnings == []

    s = ds.summary()
    assert s["groups"] == {"OA": {"patients": 1, "images": 2}, "NOA": {"patients": 2, "images": 3},
                           "control": {"patients": 1, "images": 1}}
    miss = ds.missing_counts()
    assert miss["patients.csv"] == {"age": 1, "fsh": 1, "lh": 2, "testosterone": 1, "inhibin_b": 1}
    assert miss["images.csv"]["volume_ml"] == 2 and miss["images.csv"]["ri"] == 2
    assert s["missing"]["patients.csv"]["lh"] == {"missing": 2, "percent": 50.0}

    labelled = ds.labelled_images()
    assert [(r["image_id"], r["label"]) for r in labelled] == [
        ("I1", 1), ("I2", 1), ("I3", 0), ("I4", 0), ("I6", 1)]
    assert labelled[0]["fsh"] == pytest.approx(22.5) and labelled[0]["group"] == "NOA"
    with_controls = ds.labelled_images(include_controls=True)
    assert [r["label"] for r in with_controls if r["group"] == "control"] == [0]
    assert len(with_controls) == 6


def test_read_image_png_jpeg_dicom_are_uint8_rgb_in_the_roi_grid(tmp_path):
    ds = load_dataset(make_dataset(tmp_path))
    by_id = {r["image_id"]: r for r in ds.images}
    png = ds.read_image(by_id["I1"])
    jpg = ds.read_image(by_id["I2"])
    dcm = ds.read_image(by_id["I3"])
    red = ds.read_image(by_id["I5"])
    assert png.shape == (300, 400, 3) and jpg.shape == (240, 320, 3) and dcm.shape == (96, 128, 3)
    for img in (png, jpg, dcm, red):
        assert img.dtype == np.uint8
    assert np.array_equal(png[:, :, 0], gray_test_image(400, 300))
    assert np.abs(jpg[:, :, 0].astype(int) - gray_test_image(320, 240)).max() < 8
    assert np.array_equal(dcm[:, :, 1], gray_test_image(128, 96))
    assert tuple(red[0, 0]) == (200, 0, 0)  # RGB order, not BGR


def test_dicom_monochrome1_ybr_rgb_multiframe_and_16bit(tmp_path):
    ramp = gray_test_image(64, 48)
    write_dicom(tmp_path / "mono1.dcm", ramp, "MONOCHROME1")
    assert np.array_equal(read_image_file(tmp_path / "mono1.dcm")[:, :, 0], 255 - ramp)

    rgb = np.zeros((32, 32, 3), np.uint8)  # 32 px: the smallest side the one decoder accepts (edge.imaging)
    rgb[..., 0] = 200  # red
    write_dicom(tmp_path / "rgb.dcm", rgb, "RGB")
    assert tuple(read_image_file(tmp_path / "rgb.dcm")[3, 3]) == (200, 0, 0)

    # YCbCr of pure red (200, 0, 0), full range (BT.601): Y=60, Cb=94, Cr=228
    ybr = np.zeros((32, 32, 3), np.uint8)
    ybr[...] = (60, 94, 228)
    write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL")
    r, g, b = (int(v) for v in read_image_file(tmp_path / "ybr.dcm")[5, 5])
    assert r > 190 and g < 10 and b < 10, (r, g, b)

    write_dicom(tmp_path / "cine.dcm", ramp, frames=4)
    assert dsmod.image_size(tmp_path / "cine.dcm") == (64, 48)
    # the middle frame (index 4 // 2 = 2: 255 - ramp), the device's rule (edge.dicom_io.default_frame_index)
    assert np.array_equal(read_image_file(tmp_path / "cine.dcm")[:, :, 2], 255 - ramp)

    deep = (np.tile(np.arange(64, dtype=np.uint16) * 64, (32, 1)))  # 12-bit values in 16 bits
    write_dicom(tmp_path / "deep.dcm", deep)
    out = read_image_file(tmp_path / "deep.dcm")
    # min-max stretched to the full range (to_rgb_uint8 truncates, so the top is 254 or 255)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 0 and out[0, -1, 0] >= 254


def test_header_sizes_match_decoded_sizes(tmp_path):
    make_dataset(tmp_path)
    for name in ("p1_l.png", "p1_r.jpg", "p2_l.dcm", "p3_l.png"):
        path = tmp_path / "images" / name
        h, w = read_image_file(path).shape[:2]
        assert dsmod.image_size(path) == (w, h), name
    # progressive JPEG: size comes from SOF2
    cv2.imwrite(str(tmp_path / "prog.jpg"), gray_test_image(90, 70), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert dsmod.image_size(tmp_path / "prog.jpg") == (90, 70)


def test_volume_mismatch_and_missing_images_are_warnings_not_errors(tmp_path):
    patients = GOOD_PATIENTS + [["P5", "OA", "40", "3", "4", "5", "150"]]
    images = replaced(GOOD_IMAGES, 2, "volume_ml", "17.3", IMAGE_HEADER)  # 0.52*4.6*3.0*2.4 = 17.2
    ds = load_dataset(make_dataset(tmp_path, patients=patients, images=images))
    warnings = [str(w) for w in ds.warnings]
    assert_problem(warnings, "images.csv:4: volume_ml:", "26%", "matches ellipsoid_0.52")
    assert_problem(warnings, "patients.csv:6: patient_id:", "'P5' has no images")
    assert len(warnings) == 2


def test_ellipsoid_formula_is_used_when_declared(tmp_path):
    meta = dict(GOOD_META, volume_formula="ellipsoid_0.52")
    ds = load_dataset(make_dataset(tmp_path, meta=meta))
    # the Lambert volumes in GOOD_IMAGES are 0.71/0.52 - 1 = 37% (36% after rounding) above 0.52*L*W*H
    assert all(w.column == "volume_ml" and "differs by 36%" in w.reason and "matches lambert_0.71" in w.reason
               for w in ds.warnings) and [w.row for w in ds.warnings] == [2, 3, 4, 6]


def test_several_frames_per_side_are_fine(tmp_path):
    images = GOOD_IMAGES + [["I7", "P1", "L", "images/p1_l.png", "1", "1", "10", "10"] + [""] * 7,
                            ["I8", "P1", "L", "images/p1_l.png", "2", "2", "10", "10"] + [""] * 7]
    ds = load_dataset(make_dataset(tmp_path, images=images))
    assert len(ds.images) == 8 and ds.warnings == []


# ------------------------------------------------------------------------------------------
# Malformed datasets: each names file, row, column and reason


def test_missing_dataset_json(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "dataset.json").unlink()
    assert_problem(problems_of(tmp_path), "dataset.json", "missing")


def test_dataset_json_not_json_names_its_line(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{\n  "name": "x",\n  "source": {"kind": "clinic"},\n}\n')
    assert_problem(problems_of(tmp_path), "dataset.json:4:", "not valid JSON", "property name")


def test_dataset_json_bad_fields_all_reported(tmp_path):
    meta = {"name": "", "source": {"kind": "hospital"}, "positive_class": "OA",
            "created": "yesterday", "volume_formula": "cube"}
    problems = problems_of(make_dataset(tmp_path, meta=meta))
    assert_problem(problems, "dataset.json: name:", "non-empty string")
    assert_problem(problems, "dataset.json: source.kind:", "'hospital'", "clinic, phantom")
    assert_problem(problems, "dataset.json: positive_class:", "must be \"NOA\"")
    assert_problem(problems, "dataset.json: created:", "'yesterday'", "ISO-8601")
    assert_problem(problems, "dataset.json: volume_formula:", "'cube'", "lambert_0.71")
    assert len(problems) == 5


def test_missing_and_unknown_columns(tmp_path):
    make_dataset(tmp_path)
    header = [c if c != "fsh" else "FSH" for c in PATIENT_HEADER if c != "lh"]
    write_csv(tmp_path / "patients.csv", header, [r[:4] + r[5:] for r in GOOD_PATIENTS])
    problems = problems_of(tmp_path)
    assert_problem(problems, "patients.csv:1: FSH:", "unknown column", "did you mean 'fsh'")
    assert_problem(problems, "patients.csv:1: fsh:", "missing column")
    assert_problem(problems, "patients.csv:1: lh:", "missing column")
    assert len(problems) == 3  # absent columns are not reported again on every row


def test_unknown_group(tmp_path):
    patients = replaced(GOOD_PATIENTS, 1, "group", "noa", PATIENT_HEADER)
    assert_problem(problems_of(make_dataset(tmp_path, patients=patients)),
                   "patients.csv:3: group:", "'noa' is not one of OA, NOA, control", "write 'NOA'")


def test_duplicate_patient_and_image_ids(tmp_path):
    patients = GOOD_PATIENTS + [["P2", "OA", "30", "", "", "", ""]]
    images = replaced(GOOD_IMAGES, 4, "image_id", "I2", IMAGE_HEADER)
    problems = problems_of(make_dataset(tmp_path, patients=patients, images=images))
    assert_problem(problems, "patients.csv:6: patient_id:", "duplicate 'P2'", "first on line 3")
    assert_problem(problems, "images.csv:6: image_id:", "duplicate 'I2'", "first on line 3")


def test_image_of_unknown_patient(tmp_path):
    images = replaced(GOOD_IMAGES, 3, "patient_id", "P9", IMAGE_HEADER)
    assert_problem(problems_of(make_dataset(tmp_path, images=images)),
                   "images.csv:5: patient_id:", "unknown patient 'P9'")


def test_side_not_l_or_r(tmp_path):
    images = replaced(GOOD_IMAGES, 0, "side", "left", IMAGE_HEADER)
    assert_problem(problems_of(make_dataset(tmp_path, images=images)),
                   "images.csv:2: side:", "'left' is not L or R")


def test_missing_and_unreadable_image_files(tmp_path):
    images = replaced(GOOD_IMAGES, 1, "file", "images/nope.jpg", IMAGE_HEADER)
    images = replaced(images, 2, "file", "images/garbage.dcm", IMAGE_HEADER)
    images = replaced(images, 3, "file", "images/cut.png", IMAGE_HEADER)
    images = replaced(images, 4, "file", "images/cut.jpg", IMAGE_HEADER)
    make_dataset(tmp_path, images=images)
    (tmp_path / "images/garbage.dcm").write_bytes(b"this is not an image" * 20)
    png = (tmp_path / "images/p2_r.png").read_bytes()
    (tmp_path / "images/cut.png").write_bytes(png[: len(png) // 2])
    jpg = (tmp_path / "images/p1_r.jpg").read_bytes()
    (tmp_path / "images/cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    problems = problems_of(tmp_path)
    assert_problem(problems, "images.csv:3: file:", "images/nope.jpg", "file not found")
    assert_problem(problems, "images.csv:4: file:", "images/garbage.dcm", "not a PNG, JPEG or DICOM")
    assert_problem(problems, "images.csv:5: file:", "images/cut.png", "truncated PNG")
    assert_problem(problems, "images.csv:6: file:", "images/cut.jpg", "truncated JPEG")
    assert len(problems) == 4
    # the same rows pass when images are not checked
    assert len(load_dataset(tmp_path, check_images=False).images) == 6


def test_truncated_dicom_and_dicom_without_pixels(tmp_path):
    images = replaced(GOOD_IMAGES, 2, "file", "images/cut.dcm", IMAGE_HEADER)
    images = replaced(images, 0, "file", "images/sr.dcm", IMAGE_HEADER)
    make_dataset(tmp_path, images=images)
    data = (tmp_path / "images/p2_l.dcm").read_bytes()
    (tmp_path / "images/cut.dcm").write_bytes(data[:-2000])
    import pydicom
    ds = pydicom.dcmread(tmp_path / "images/p2_l.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "images/sr.dcm")
    problems = problems_of(tmp_path)
    assert_problem(problems, "images.csv:4: file:", "images/cut.dcm", "DICOM")
    assert_problem(problems, "images.csv:2: file:", "images/sr.dcm", "no Pixel Data")


def test_roi_outside_image_empty_or_negative(tmp_path):
    images = replaced(GOOD_IMAGES, 0, "roi_w", "350", IMAGE_HEADER)   # 100+350 > 400
    images = replaced(images, 3, "roi_h", "0", IMAGE_HEADER)
    images = replaced(images, 4, "roi_y", "-3", IMAGE_HEADER)
    images = replaced(images, 5, "roi_x", "12.5", IMAGE_HEADER)
    problems = problems_of(make_dataset(tmp_path, images=images))
    assert_problem(problems, "images.csv:2: roi_x:", "reaches (450, 230)", "outside the 400x300 image")
    assert_problem(problems, "images.csv:5: roi_h:", "ROI is empty")
    assert_problem(problems, "images.csv:6: roi_y:", "y=-3")
    assert_problem(problems, "images.csv:7: roi_x:", "'12.5' is not a whole number of pixels")
    assert len(problems) == 4


def test_non_numeric_values(tmp_path):
    patients = replaced(GOOD_PATIENTS, 0, "fsh", "abc", PATIENT_HEADER)
    patients = replaced(patients, 1, "lh", "5,3", PATIENT_HEADER)
    patients = replaced(patients, 2, "testosterone", "NA", PATIENT_HEADER)
    images = replaced(GOOD_IMAGES, 0, "ri", "nan", IMAGE_HEADER)
    problems = problems_of(make_dataset(tmp_path, patients=patients, images=images))
    assert_problem(problems, "patients.csv:2: fsh:", "'abc' is not a number")
    assert_problem(problems, "patients.csv:3: lh:", "'5,3'", "'.' as the decimal separator")
    assert_problem(problems, "patients.csv:4: testosterone:", "'NA' is not a number", "leave the cell empty")
    assert_problem(problems, "images.csv:2: ri:", "'nan' is not a finite number")


def test_implausible_values(tmp_path):
    patients = replaced(GOOD_PATIENTS, 0, "fsh", "250", PATIENT_HEADER)
    patients = replaced(patients, 1, "testosterone", "15.2", PATIENT_HEADER)  # plausible
    patients = replaced(patients, 2, "age", "7", PATIENT_HEADER)
    patients = replaced(patients, 3, "testosterone", "60", PATIENT_HEADER)
    images = replaced(GOOD_IMAGES, 0, "volume_ml", "80", IMAGE_HEADER)
    images = replaced(images, 1, "edv_cm_s", "60", IMAGE_HEADER)
    images = replaced(images, 2, "ri", "1.5", IMAGE_HEADER)
    images = replaced(images, 3, "length_cm", "46", IMAGE_HEADER)
    problems = problems_of(make_dataset(tmp_path, patients=patients, images=images))
    assert_problem(problems, "patients.csv:2: fsh:", "250 is outside the plausible range 0-200 IU/L")
    assert_problem(problems, "patients.csv:4: age:", "7 is outside", "10-100 years")
    assert_problem(problems, "patients.csv:5: testosterone:", "0-50 ng/mL", "nmol/L")
    assert_problem(problems, "images.csv:2: volume_ml:", "0.5-60 mL")
    assert_problem(problems, "images.csv:3: edv_cm_s:", "0-50 cm/s")
    assert_problem(problems, "images.csv:4: ri:", "1.5 is outside the plausible range 0-1")
    assert_problem(problems, "images.csv:5: length_cm:", "mm? use cm")
    assert len(problems) == 7


def test_wrong_cell_count_and_semicolon_csv(tmp_path):
    make_dataset(tmp_path)
    lines = (tmp_path / "images.csv").read_text().splitlines()
    lines[2] = lines[2] + ",extra"
    (tmp_path / "images.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "patients.csv").write_text(
        ";".join(PATIENT_HEADER) + "\n" + "\n".join(";".join(r) for r in GOOD_PATIENTS) + "\n")
    problems = problems_of(tmp_path)
    assert_problem(problems, "images.csv:3:", "row has 16 cells but the header has 15")
    assert_problem(problems, "patients.csv:1:", "separated by ';'", "comma-separated")


def test_empty_and_missing_csv_and_not_a_directory(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "patients.csv").write_text("")
    (tmp_path / "images.csv").unlink()
    problems = problems_of(tmp_path)
    assert_problem(problems, "patients.csv:1:", "empty file", "patient_id, group")
    assert_problem(problems, "images.csv:", "missing")
    assert_problem(problems_of(tmp_path / "nowhere"), "nowhere", "does not exist")


def test_paths_must_stay_inside_the_dataset(tmp_path):
    images = replaced(GOOD_IMAGES, 0, "file", "/etc/passwd", IMAGE_HEADER)
    images = replaced(images, 1, "file", "../outside.png", IMAGE_HEADER)
    images = replaced(images, 2, "file", "images\\p2_l.dcm", IMAGE_HEADER)
    problems = problems_of(make_dataset(tmp_path, images=images))
    assert_problem(problems, "images.csv:2: file:", "'/etc/passwd' must be a relative path")
    assert_problem(problems, "images.csv:3: file:", "'../outside.png' must be a relative path")
    assert_problem(problems, "images.csv:4: file:", "use '/' as the path separator")


def test_every_problem_is_collected_and_the_message_is_capped(tmp_path):
    patients = [[f"P{i}", "NOA", "30", "999", "", "", ""] for i in range(60)]
    images = [[f"I{i}", f"P{i}", "L", "images/p1_l.png", "0", "0", "10", "10"] + [""] * 7 for i in range(60)]
    with pytest.raises(DatasetError) as info:
        load_dataset(make_dataset(tmp_path, patients=patients, images=images))
    err = info.value
    assert len(err.problems) == 60 and all(p.column == "fsh" for p in err.problems)
    assert [p.row for p in err.problems] == list(range(2, 62))
    message = str(err)
    assert message.startswith("60 problems in ") and "... and 30 more" in message
    assert "patients.csv:31: fsh:" in message and "patients.csv:32: fsh:" not in message


# ------------------------------------------------------------------------------------------
# CLI


@pytest.fixture()
def cli():
    app = typer.Typer()

    @app.callback()
    def _main() -> None:  # a group, so the command is invoked by name as in noa-edge
        pass

    register_host_commands(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["validate", *map(str, args)])


def test_cli_good_dataset_prints_summary_and_exits_0(cli, tmp_path):
    result = cli(make_dataset(tmp_path / "ds"), "--json", tmp_path / "report.json")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "NOA                2         3" in out and "total              4         6" in out
    assert re.search(r"patients\.csv lh +2 +50\.0", out)
    assert "OK:" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True and report["errors"] == [] and report["summary"]["images"] == 6


def test_cli_errors_exit_2_one_line_per_problem_no_traceback(cli, tmp_path):
    patients = replaced(GOOD_PATIENTS, 1, "group", "XX", PATIENT_HEADER)
    images = replaced(GOOD_IMAGES, 0, "file", "images/missing.png", IMAGE_HEADER)
    result = cli(make_dataset(tmp_path / "ds", patients=patients, images=images), "--json",
                 tmp_path / "r.json")
    assert result.exit_code == 2
    assert "patients.csv:3: group: 'XX' is not one of OA, NOA, control" in result.output
    assert "images.csv:2: file: images/missing.png: file not found" in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False and len(report["errors"]) == 2
    assert report["errors"][0]["row"] == 3 and report["errors"][0]["column"] == "group"


def test_cli_no_images_skips_image_files(cli, tmp_path):
    root = make_dataset(tmp_path / "ds")
    shutil.rmtree(root / "images")
    assert cli(root).exit_code == 2
    result = cli(root, "--no-images")
    assert result.exit_code == 0, result.output


def test_cli_unexpected_exception_becomes_a_problem(cli, tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(dsmod, "load_dataset", broken)
    result = cli(make_dataset(tmp_path / "ds"))
    assert result.exit_code == 2
    assert "unexpected error while validating: RuntimeError: disk on fire" in result.output
    assert "Traceback" not in result.output


def test_broken_image_decoder_becomes_a_problem(tmp_path, monkeypatch):
    def broken(_path):
        raise MemoryError("decoder blew up")

    monkeypatch.setattr(dsmod, "image_size", broken)
    assert_problem(problems_of(make_dataset(tmp_path)), "images.csv:2: file:", "MemoryError")


def test_installed_noa_edge_validate_exits_2_without_traceback(tmp_path):
    """The real console entry point, in a fresh interpreter."""
    root = make_dataset(tmp_path / "ds", images=replaced(GOOD_IMAGES, 2, "side", "X", IMAGE_HEADER))
    exe = Path(sys.executable).with_name("noa-edge")
    proc = subprocess.run([str(exe), "validate", str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "images.csv:4: side: 'X' is not L or R" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
