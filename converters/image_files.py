"""Image files of a dataset: format and size from the header (fast, no decoding), and decoding.

PNG (IHDR), JPEG (SOF) and DICOM (Rows/Columns) sizes are read from headers plus a cheap end-of-file
check for truncation, so `noa-edge validate` can check thousands of files quickly; pixels are decoded
only by `read_image_file`, the one decoder host and device share (uint8 RGB, stored pixel grid).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from converters.errors import ConvertersError

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
    if kind == "png":
        return _png_size(path)
    if kind == "jpeg":
        return _jpeg_size(path)
    return _dicom_size(path)


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
    import pydicom
    from pydicom.pixels import get_decoder

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
    return int(ds.Columns), int(ds.Rows)


def read_image_file(path: str | Path) -> np.ndarray:
    """PNG/JPEG/DICOM file -> uint8 RGB (H, W, 3). Multi-frame DICOM: the first frame.

    Pixels stay in the stored grid (no EXIF rotation), because ROIs are given in that grid.
    """
    import cv2

    from edge.preprocess import to_rgb_uint8

    path = Path(path)
    kind = image_format(path)
    if kind in ("png", "jpeg"):
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # BGR(A), gray, or uint16; no EXIF turn
        if img is None:
            raise ImageProblem("OpenCV could not decode the file")
        return to_rgb_uint8(img)
    return _read_dicom(path)


def _read_dicom(path: Path) -> np.ndarray:
    from pydicom import Dataset as DicomDataset
    from pydicom.pixels import apply_color_lut, pixel_array

    from edge.preprocess import to_rgb_uint8

    info = DicomDataset()
    # index=0: first frame only (cine loops can hold hundreds); YBR is converted to RGB by pydicom
    arr = pixel_array(str(path), ds_out=info, index=0)
    photometric = str(info.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, info)
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = np.ascontiguousarray(arr[:, :, ::-1])  # RGB -> BGR, the order to_rgb_uint8 expects
    rgb = to_rgb_uint8(arr)
    if photometric == "MONOCHROME1":  # 0 = white
        rgb = 255 - rgb
    return rgb
