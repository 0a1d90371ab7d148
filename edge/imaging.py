"""Image bytes in and out: decode an upload (PNG/JPEG/BMP/TIFF/DICOM) to uint8 RGB, encode the stored
frame (lossless PNG) and pictures (JPEG), and name a stored image's media type.

Decoding is bounded (edge/decode_limits.py): sizes come from the header first, only known formats reach
a decoder, and only the used frame of a DICOM object is decoded.

Hot-path choices (benchmarks/levers_pipeline.py, benchmarks/RESULTS.md "## Pipeline"): the frame is
written as a PNG directly with zlib (no RGB→BGR copy, zlib releases the GIL), 1-channel when the frame is
grayscale; pictures (the CAM overlay) are JPEG q90.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

from .decode_limits import ImageTooLarge, check_dimensions, current_limits, raster_kind, raster_size
from .dicom_io import DicomDecodeError, DicomLimitError, check_sop_class, decode_dataset_frame, read_dataset
from .errors import InputError
from .preprocess import to_rgb_uint8

MIN_SIDE = 32  # smaller images cannot hold a testis ROI
# The one decoder of host and device (converters/image_files.py calls decode_image too). Raise it whenever a
# rule that changes pixels changes (frame choice, LUTs, colour conversion): the host's ROI cache is keyed by it.
DECODER_VERSION = 2
FORMATS = "PNG, JPEG, BMP, TIFF or DICOM"


@dataclass
class DecodedImage:
    frame: np.ndarray   # uint8 RGB (H, W, 3)
    kind: str           # png | jpeg | tiff | bmp | dicom
    n_frames: int = 1
    frame_index: int = 0


def decode_image(data: bytes, name: str = "upload", frame_index: int | None = None) -> DecodedImage:
    """PNG/JPEG/BMP/TIFF or DICOM bytes -> one uint8 RGB frame (DICOM: `frame_index`, default the middle
    one; only that frame is decoded). The size is read from the header and checked against the decode
    limits (edge/decode_limits.py) before any pixel is decoded; DICOM objects must be of an accepted
    image SOP class (the SCP's list). Every refusal is an InputError (field "image", or "frame_index")
    naming the file and the reason; no decoder error escapes as anything else."""
    if not data:
        raise InputError("image", f"{name}: the file is empty")
    kind = raster_kind(data)
    if kind is None:
        return _decode_dicom(data, name, frame_index)
    if frame_index not in (None, 0):
        raise InputError("frame_index", f"{name}: a {kind.upper()} image has one frame; frame_index must be 0")
    width, height = raster_size(data, kind, name)
    check_dimensions(name, width, height)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InputError("image", f"{name}: the {kind.upper()} decoder refused it ({_cv2_reason(exc)})") from None
    if img is None:
        raise InputError("image", f"{name}: not a readable image (the {kind.upper()} data is truncated or corrupt)")
    if img.shape[0] * img.shape[1] > current_limits().max_pixels:  # a header that lied
        raise InputError("image", f"{name}: decoded size {img.shape[1]}×{img.shape[0]} differs from its header")
    _check_min_side(img.shape[1], img.shape[0], name)
    try:
        return DecodedImage(to_rgb_uint8(img), kind)
    except ValueError as exc:
        raise InputError("image", f"{name}: {exc}") from None


def decode_upload(data: bytes, name: str, frame_index: str | int | None = None) -> tuple[np.ndarray, int, int]:
    """An upload with its form field frame_index (text; empty = default) -> (frame, n_frames, frame_index)."""
    index = None
    if frame_index is not None and str(frame_index).strip():
        text = str(frame_index).strip()
        if not text.isdigit() or len(text) > 9:
            raise InputError("frame_index", f"frame_index {text[:20]!r} must be a whole number ≥ 0")
        index = int(text)
    decoded = decode_image(data, name, index)
    return decoded.frame, decoded.n_frames, decoded.frame_index


def decode_image_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """The frame of `decode_image` (a DICOM multi-frame: its middle frame)."""
    return decode_image(data, name).frame


def _decode_dicom(data: bytes, name: str, frame_index: int | None) -> DecodedImage:
    is_dicom = len(data) > 132 and data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom"))
    try:
        ds = read_dataset(data, name)
        check_sop_class(ds, name)
        decoded = decode_dataset_frame(ds, name, frame_index)
    except InputError:
        raise
    except DicomDecodeError as exc:
        reason = str(exc).removeprefix(f"{name}: ")
        if not is_dicom and reason.startswith("not a DICOM file"):
            raise InputError("image", f"{name}: not a readable image ({FORMATS} expected)") from None
        field = "frame_index" if "frame index" in reason else "image"
        if isinstance(exc, DicomLimitError):
            raise ImageTooLarge(str(exc)) from None
        raise InputError(field, f"{name}: not a usable DICOM image ({reason})") from None
    h, w = decoded.frame.shape[:2]
    _check_min_side(w, h, name)
    return DecodedImage(decoded.frame, "dicom", decoded.n_frames, decoded.index)


def _check_min_side(width: int, height: int, name: str) -> None:
    if height < MIN_SIDE or width < MIN_SIDE:
        raise InputError("image", f"{name}: image is {width}×{height} pixels; at least {MIN_SIDE}×{MIN_SIDE} needed")


def _cv2_reason(exc: cv2.error) -> str:
    text = str(exc).strip().splitlines()
    return (text[-1] if text else type(exc).__name__)[:200]


def decode_png_rgb(png: bytes) -> np.ndarray | None:
    """A stored PNG back to uint8 gray (H, W) or RGB (H, W, 3); None when it is not a readable image."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is not None and img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def _png_chunk(tag: bytes, data: bytes) -> list[bytes]:
    """The chunk's parts, joined once by the caller (the IDAT of a stored frame is ~1.4 MB: no extra copies)."""
    return [struct.pack(">I", len(data)), tag, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))]


def png_bytes(image: np.ndarray, level: int = 1) -> bytes:
    """uint8 RGB (H, W, 3) or gray (H, W) -> lossless PNG bytes.

    Written directly with zlib (row filter "none", deflate `level`): on an 800×600 cine frame ~3× faster
    than cv2.imencode at level 1 for ~7 % more bytes, no RGB→BGR copy, and zlib releases the GIL, so it
    can run beside the model invoke."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
        raise ValueError(f"png_bytes needs uint8 gray (H, W) or RGB (H, W, 3), got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    channels = 1 if img.ndim == 2 else 3
    raw = np.empty((h, w * channels + 1), np.uint8)
    raw[:, 0] = 0  # filter type "none" on every row
    raw[:, 1:] = img.reshape(h, w * channels)
    header = struct.pack(">IIBBBBB", w, h, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return b"".join([b"\x89PNG\r\n\x1a\n", *_png_chunk(b"IHDR", header),
                     *_png_chunk(b"IDAT", zlib.compress(raw.data, level)), *_png_chunk(b"IEND", b"")])


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """uint8 RGB -> JPEG bytes (for pictures only, never for the stored frame: that stays lossless)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def gray_if_gray(rgb: np.ndarray, gray: np.ndarray | None = None) -> np.ndarray:
    """The 1-channel frame when all three channels are equal (a true grayscale frame: DICOM, PNG export),
    else the RGB frame unchanged. A sparse sample is checked first so colour frames exit at once.
    `gray`: the frame's cv2 RGB2GRAY if the caller has it (that conversion returns the channel value
    exactly when R = G = B, so one comparison against it decides)."""
    if rgb.ndim == 2:
        return rgb
    sample = rgb[::31, ::31]
    if not (np.array_equal(sample[..., 0], sample[..., 1]) and np.array_equal(sample[..., 1], sample[..., 2])):
        return rgb
    if gray is None:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if cv2.norm(rgb, cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB), cv2.NORM_INF) == 0:
        return gray
    return rgb


def frame_png_bytes(frame_rgb: np.ndarray, level: int = 1, gray: np.ndarray | None = None) -> bytes:
    """The stored frame: lossless PNG, 1-channel when the frame is grayscale (a third of the bytes and
    time; PNG readers give RGB back: Pillow .convert("RGB"), cv2.IMREAD_COLOR, browsers)."""
    return png_bytes(gray_if_gray(frame_rgb, gray), level)


def image_media_type(data: bytes) -> str:
    """Content type of a stored image by its signature (PNG or JPEG)."""
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
