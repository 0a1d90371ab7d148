"""Bounded decoding (issue 18): sizes read from headers before any pixel is decoded, limits on pixels per
frame and frames per object, every decoder failure a clear InputError (HTTP 4xx), never a 500 or a raw
cv2.error. Bombs are made at test time: a 20000×20000 PNG of a few hundred kB, a 40000×30000 PNG (once an
uncaught cv2.error), a JPEG/TIFF/BMP whose header claims 60000² pixels, a DICOM with 1,500 frames."""

from __future__ import annotations

import struct
import zlib

import cv2
import httpx
import numpy as np
import pydicom
import pytest
from pydicom import examples
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from conftest import DaemonProcess
from edge.decode_limits import (
    DEFAULT_LIMITS,
    DecodeLimits,
    ImageTooLarge,
    check_dimensions,
    raster_kind,
    raster_size,
    set_limits,
)
from edge.errors import InputError
from edge.imaging import decode_image, decode_upload


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit gray PNG of width×height black pixels, compressed as one zlib stream of zeros
    (20000×20000 → about 400 kB)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))

    total = height * (width + 1)  # filter byte 0 + zero pixels per row: the raw stream is all zeros
    block = bytes(1 << 22)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; after a full flush each block compresses alike
    unit = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    n_blocks, rest = divmod(total, len(block))
    deflate = unit * n_blocks + comp.compress(block[:rest]) + comp.flush()
    adler = ((total % 65521) << 16) | 1  # Adler-32 of `total` zero bytes
    idat = b"\x78\xda" + deflate + struct.pack(">I", adler)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real 64×64 JPEG whose frame header (SOF0) is patched to claim width×height."""
    data = bytearray(cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + bytes(4)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + bytes(64)


def bmp_claiming(width: int, height: int) -> bytes:
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHH", 40, width, height, 1, 24) + bytes(64)


def many_frame_dicom(frames: int, size: int = 32) -> bytes:
    """A native US Multi-frame object with `frames` frames of size×size (a cine far past the limit)."""
    import io

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.3.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.Modality = generate_uid(), "US"
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.random.default_rng(0).integers(0, 255, (frames, size, size), np.uint8).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb_20k() -> bytes:
    return png_bomb(20000, 20000)


@pytest.fixture(autouse=True)
def default_limits():
    set_limits(DEFAULT_LIMITS)
    yield
    set_limits(DEFAULT_LIMITS)


# ------------------------------------------------------------------------------------------- headers
@pytest.mark.parametrize("ext", [".png", ".jpg", ".tiff", ".bmp"])
def test_header_size_is_the_decoded_size(ext):
    img = np.random.default_rng(1).integers(0, 255, (77, 123, 3), np.uint8)
    data = cv2.imencode(ext, img)[1].tobytes()
    kind = raster_kind(data)
    assert kind == {".png": "png", ".jpg": "jpeg", ".tiff": "tiff", ".bmp": "bmp"}[ext]
    assert raster_size(data, kind, "x") == (123, 77)
    assert decode_image(data, "x" + ext).frame.shape == (77, 123, 3)


def test_png_bomb_is_refused_from_its_header(bomb_20k):
    assert len(bomb_20k) < 1_000_000  # a few hundred kB on the wire ...
    with pytest.raises(ImageTooLarge, match=r"bomb\.png: 20000×20000 pixels \(400\.0 MP\) exceeds the limit of 40 MP"):
        decode_image(bomb_20k, "bomb.png")  # ... 400 MP once decoded: refused before decoding


@pytest.mark.parametrize("maker,kind", [(jpeg_claiming, "JPEG"), (tiff_claiming, "TIFF"), (bmp_claiming, "BMP")])
def test_other_formats_claiming_huge_sizes_are_refused(maker, kind):
    with pytest.raises(ImageTooLarge, match=r"60000×60000 pixels"):
        decode_image(maker(60000, 60000), f"claim.{kind.lower()}")


def test_decoder_errors_are_input_errors_never_cv2_errors():
    """40000×30000 (1.2 gigapixels) once escaped as cv2.error (HTTP 500). With the limit raised past it,
    OpenCV itself refuses: still an InputError naming the file."""
    set_limits(DecodeLimits(max_pixels=2_000_000_000))
    with pytest.raises(InputError, match=r"huge\.png: .*PNG") as info:
        decode_image(png_bomb(40000, 30000), "huge.png")
    assert info.value.field == "image"
    for data, why in [(b"\x89PNG\r\n\x1a\n" + bytes(40), "broken PNG header"),
                      (jpeg_claiming(64, 64)[:200], r"\(the JPEG data is truncated or corrupt\)"),
                      (b"GIF89a" + bytes(100), r"not a readable image \(PNG, JPEG, BMP, TIFF or DICOM expected\)")]:
        with pytest.raises(InputError, match=why):
            decode_image(data, "bad")


def test_limits_are_configurable():
    img = cv2.imencode(".png", np.zeros((1000, 1200), np.uint8))[1].tobytes()
    assert decode_image(img, "ok.png").frame.shape == (1000, 1200, 3)
    set_limits(DecodeLimits(max_pixels=1_000_000, max_frames=10))
    with pytest.raises(ImageTooLarge, match="exceeds the limit of 1 MP"):
        decode_image(img, "ok.png")
    with pytest.raises(ImageTooLarge, match="20 frames exceeds the limit of 10 frames"):
        decode_image(many_frame_dicom(20), "cine.dcm")
    with pytest.raises(ValueError):
        set_limits(DecodeLimits(max_pixels=0))


def test_many_frame_dicom_refused_and_one_frame_decoded_when_allowed():
    with pytest.raises(ImageTooLarge, match="1500 frames exceeds the limit of 1000 frames"):
        decode_image(many_frame_dicom(1500), "cine.dcm")
    cine = many_frame_dicom(200)
    frame, n_frames, index = decode_upload(cine, "cine.dcm")
    assert (n_frames, index, frame.shape) == (200, 100, (32, 32, 3))
    expected = np.frombuffer(pydicom.dcmread(pydicom.filebase.DicomBytesIO(cine)).PixelData, np.uint8)
    assert np.array_equal(frame[..., 0], expected.reshape(200, 32, 32)[100])
    assert decode_upload(cine, "cine.dcm", "7")[2] == 7
    for bad in ("200", "-1", "x", "1.5"):
        with pytest.raises(InputError) as info:
            decode_upload(cine, "cine.dcm", bad)
        assert info.value.field == "frame_index"


def test_check_dimensions_names_file_and_limit():
    check_dimensions("a.png", 6000, 6000)  # 36 MP: allowed by default
    with pytest.raises(ImageTooLarge, match=r"a\.png: 8000×6000"):
        check_dimensions("a.png", 8000, 6000)
    with pytest.raises(InputError, match="empty image"):
        check_dimensions("a.png", 0, 10)


def test_non_ultrasound_sop_class_is_refused_on_upload():
    for name, sop in (("CT_small.dcm", "CT Image Storage"), ("MR_small.dcm", "MR Image Storage")):
        data = open(get_testdata_file(name), "rb").read()
        with pytest.raises(InputError, match=f"SOP class {sop}"):
            decode_image(data, name)
    assert decode_image(open(examples.get_path("rgb_color"), "rb").read(), "us.dcm").kind == "dicom"


# ------------------------------------------------------------------------------------------- HTTP
def test_http_bombs_and_foreign_objects_get_4xx_and_the_daemon_keeps_serving(test_bundle, tmp_path, bomb_20k):
    d = DaemonProcess(test_bundle, tmp_path / "data", extra=["--max-frames", "100"]).wait_ready()
    try:
        cases = [("bomb.png", bomb_20k, "20000×20000"), ("claim.jpg", jpeg_claiming(60000, 60000), "60000×60000"),
                 ("huge.png", png_bomb(40000, 30000), "40000×30000"),
                 ("cine.dcm", many_frame_dicom(150), "150 frames exceeds the limit of 100"),
                 ("ct.dcm", open(get_testdata_file("CT_small.dcm"), "rb").read(), "SOP class CT Image Storage"),
                 ("junk.bin", b"GIF89a" + bytes(500), "PNG, JPEG, BMP, TIFF or DICOM expected")]
        for name, data, why in cases:
            r = httpx.post(d.url + "/api/analyze", files={"image": (name, data)}, timeout=60)
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
            body = r.json()
            assert body.get("field") == "image" and why in body["detail"], (name, body)
        assert httpx.get(d.url + "/api/health", timeout=10).status_code == 200
        assert httpx.get(d.url + "/api/exams", timeout=10).json()["total"] == 0  # nothing stored
    finally:
        d.stop()
