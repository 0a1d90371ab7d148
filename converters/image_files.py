"""Image files of a dataset: format and size from the header (fast, no decoding), and decoding.

PNG (IHDR), JPEG (SOF) and DICOM (Rows/Columns) sizes are read from headers plus a cheap end-of-file
check for truncation, so `noa-edge validate` can check thousands of files quickly; pixels are decoded
only by `read_image_file`, which calls the device's decoder (edge/imaging.py, edge/dicom_io.py): one decoder
for host and device (uint8 RGB, stored pixel grid, the middle frame of a multi-frame DICOM object).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import get_decoder

from converters.errors import ConvertersError
from edge.dicom_io import DicomDecodeError, check_sop_class, frame_count
from edge.errors import EdgeError
from edge.imaging import MIN_SIDE, decode_image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class ImageProblem(ConvertersError):
    """An image file that cannot be used (message says why); raised by the header checks and the decoder."""


def image_format(path: Path) -> str:
    """'png' | 'jpeg' | 'dicom' from the file's first bytes (not its extension)."""
    with open(path, "rb") as f:
        head = f.read(132)
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    raise ImageProblem("not a PNG, JPEG or DICOM (Part 10) file")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, without decoding pixels; raises ImageProblem."""
    kind = image_format(path)
    width, height = {"png": _png_size, "jpeg": _jpeg_size, "dicom": _dicom_size}[kind](path)
    if width < MIN_SIDE or height < MIN_SIDE:  # the decoder refuses these (edge.imaging.MIN_SIDE)
        raise ImageProblem(f"image is {width}x{height} pixels; at least {MIN_SIDE}x{MIN_SIDE} needed")
    return width, height


def _png_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
        f.seek(0, 2)
        end = f.tell()
        f.seek(max(0, end - 12))
        tail = f.read(12)
    if len(head) < 24 or head[12:16] != b"IHDR":
        raise ImageProblem("broken PNG header")
    width, height = struct.unpack(">II", head[16:24])
    if tail[4:8] != b"IEND":
        raise ImageProblem("truncated PNG (no IEND chunk at the end)")
    if width == 0 or height == 0:
        raise ImageProblem(f"PNG has zero size {width}x{height}")
    return width, height


def _jpeg_size(path: Path) -> tuple[int, int]:
    with open(path, "rb") as f:
        f.seek(0, 2)
        end = f.tell()
        f.seek(max(0, end - 4096))
        if b"\xff\xd9" not in f.read():
            raise ImageProblem("truncated JPEG (no end-of-image marker)")
        f.seek(2)
        while True:
            byte = f.read(1)
            if not byte:
                break
            if byte != b"\xff":
                continue
            marker = f.read(1)
            while marker == b"\xff":  # fill bytes
                marker = f.read(1)
            if not marker:
                break
            m = marker[0]
            if m == 0x01 or 0xD0 <= m <= 0xD8:  # markers without a length
                continue
            if m in (0xD9, 0xDA):  # end of image / start of scan before any frame header
                break
            length_bytes = f.read(2)
            if len(length_bytes) < 2:
                break
            length = struct.unpack(">H", length_bytes)[0]
            if m in JPEG_SOF:
                sof = f.read(5)
                if len(sof) < 5:
                    break
                height, width = struct.unpack(">HH", sof[1:5])
                if width == 0 or height == 0:
                    raise ImageProblem(f"JPEG has zero size {width}x{height}")
                return width, height
            f.seek(length - 2, 1)
    raise ImageProblem("broken JPEG (no frame header)")


def _dicom_size(path: Path) -> tuple[int, int]:
    try:
        # defer_size: read every element's header but leave big values (Pixel Data) on disk
        ds = pydicom.dcmread(path, defer_size=1024)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed files; all mean unreadable
        raise ImageProblem(f"unreadable DICOM ({exc})") from None
    if "PixelData" not in ds:
        raise ImageProblem("DICOM has no Pixel Data (an SR or other non-image object?)")
    if "Rows" not in ds or "Columns" not in ds:
        raise ImageProblem("DICOM has no Rows/Columns")
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise ImageProblem(f"DICOM transfer syntax {ts.name} cannot be decoded") from None
        if not decoder.is_available:
            raise ImageProblem(f"no decoder installed for DICOM transfer syntax {ts.name} "
                                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg)")
    elif ts is not None:
        raw = ds.get_item("PixelData")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsAllocated", 8))
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames * bits // 8
        length = getattr(raw, "length", None)
        if length is None:
            length = len(ds.PixelData)
        if length < expected:
            raise ImageProblem(f"DICOM Pixel Data is {length} bytes, expected {expected} (truncated?)")
    if int(ds.Rows) == 0 or int(ds.Columns) == 0:
        raise ImageProblem("DICOM has zero Rows/Columns")
    try:  # the device's checks, from the header: SOP class, samples per pixel, pixel and frame limits
        check_sop_class(ds, path.name)
        frame_count(ds, path.name)
    except DicomDecodeError as exc:
        raise ImageProblem(str(exc).removeprefix(f"{path.name}: ")) from None
    return int(ds.Columns), int(ds.Rows)


def read_image_file(path: str | Path) -> np.ndarray:
    """PNG/JPEG/DICOM file -> uint8 RGB (H, W, 3), decoded by the device's own decoder
    (`edge.imaging.decode_image`: the same function the daemon's upload, folder and C-STORE inputs use), so
    training and the cart see the same pixels for the same file. Multi-frame DICOM: the middle frame
    (`edge.dicom_io.default_frame_index`); grey DICOM through its modality and VOI LUT (window); pixels
    stay in the stored grid (no EXIF rotation), because ROIs are given in that grid. Raises ImageProblem.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageProblem(f"cannot read: {exc.strerror or exc}") from None
    try:
        return decode_image(data, path.name).frame
    except EdgeError as exc:
        raise ImageProblem(str(exc).removeprefix(f"{path.name}: ")) from None
