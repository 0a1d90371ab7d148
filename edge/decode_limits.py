"""How big an image may be before anything decodes it: sizes read from headers, checked against limits.

A 389 kB PNG can claim 20000×20000 pixels (1.2 GB of RGB once decoded) and a 3 MB DICOM cine can claim
thousands of frames, so every decoder on the device (uploads, the watched folder, DICOM C-STORE) first
reads the dimensions from the header (PNG IHDR, JPEG SOF, TIFF first IFD, BMP info header, DICOM
Rows/Columns/NumberOfFrames) and refuses what is over the limits, then decodes only the frame it uses.

Limits (`noa-edge serve --max-image-mp N --max-frames N`): pixels per frame (Rows × Columns, default 40
MP: a 4K screen grab is 8.3 MP; the decoded uint8 RGB frame of the limit is 120 MB) and frames per DICOM
object (default 1,000; only one of them is decoded). The daemon sets them once at start (`set_limits`);
decoders read `current_limits()`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import InputError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = 40_000_000   # per frame (width × height)
    max_frames: int = 1000         # frames in one DICOM object


DEFAULT_LIMITS = DecodeLimits()
_limits = DEFAULT_LIMITS


def set_limits(limits: DecodeLimits) -> None:
    """The daemon's serve options; applies to every decoder in this process."""
    global _limits
    if limits.max_pixels < 1 or limits.max_frames < 1:
        raise ValueError("decode limits must be at least 1 pixel and 1 frame")
    _limits = limits


def current_limits() -> DecodeLimits:
    return _limits


class ImageTooLarge(InputError):
    """An image whose header announces more pixels or frames than the limits allow (nothing decoded)."""

    def __init__(self, message: str):
        super().__init__("image", message)


def check_dimensions(name: str, width: int, height: int, frames: int = 1,
                     limits: DecodeLimits | None = None) -> None:
    """Raise ImageTooLarge (naming the file, the size and the limit) when over the limits."""
    limits = limits or _limits
    if width <= 0 or height <= 0:
        raise InputError("image", f"{name}: the header says {width}×{height} pixels (empty image)")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"{name}: {width}×{height} pixels ({width * height / 1e6:.1f} MP) exceeds the limit of "
                            f"{limits.max_pixels / 1e6:g} MP per frame (serve --max-image-mp); nothing was decoded")
    if frames > limits.max_frames:
        raise ImageTooLarge(f"{name}: {frames} frames exceeds the limit of {limits.max_frames} frames per object "
                            "(serve --max-frames); nothing was decoded")


# ------------------------------------------------------------------------------------------- headers
def raster_kind(data: bytes) -> str | None:
    """'png' | 'jpeg' | 'tiff' | 'bmp' by signature; None for anything else (DICOM is checked elsewhere).
    A DICOM Part 10 file ('DICM' at 128) is never taken for a raster: its preamble may hold a TIFF header."""
    if data[128:132] == b"DICM":
        return None
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    return None


def raster_size(data: bytes, kind: str, name: str) -> tuple[int, int]:
    """(width, height) from the header of a PNG/JPEG/TIFF/BMP; InputError when the header is broken."""
    try:
        size = {"png": _png_size, "jpeg": _jpeg_size, "tiff": _tiff_size, "bmp": _bmp_size}[kind](data)
    except (struct.error, IndexError, KeyError, ValueError):
        size = None
    if size is None:
        raise InputError("image", f"{name}: not a readable image: broken {kind.upper()} header (no image size found)")
    return size


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker in (0xDA, 0xD9):  # scan or end before any frame header
            return None
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd:ifd + 2])
    found = {}
    for k in range(count):
        entry = data[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        tag, kind, _n = struct.unpack(order + "HHI", entry[:8])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10 if kind == 3 else 12])[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    (header,) = struct.unpack("<I", data[14:18])
    if header == 12:  # OS/2 core header: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)
