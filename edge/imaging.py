"""Image bytes in and out: decode an upload (PNG/JPEG/BMP/TIFF/DICOM) to uint8 RGB, encode the stored
frame (lossless PNG) and pictures (JPEG), and name a stored image's media type.

Hot-path choices (benchmarks/levers_pipeline.py, benchmarks/RESULTS.md "## Pipeline"): the frame is
written as a PNG directly with zlib (no RGB→BGR copy, zlib releases the GIL), 1-channel when the frame is
grayscale; pictures (the CAM overlay) are JPEG q90.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np

from .dicom_io import decode_dicom_bytes
from .errors import InputError
from .preprocess import to_rgb_uint8

MIN_SIDE = 32  # smaller images cannot hold a testis ROI


def decode_image_bytes(data: bytes, name: str = "upload") -> np.ndarray:
    """PNG/JPEG/BMP/TIFF or DICOM bytes -> uint8 RGB; InputError says why not."""
    if not data:
        raise InputError("image", f"{name}: the file is empty")
    if len(data) > 132 and data[128:132] == b"DICM" or name.lower().endswith((".dcm", ".dicom")):
        try:
            frames = decode_dicom_bytes(data, name)
        except Exception as exc:
            raise InputError("image", f"{name}: not a decodable DICOM image ({exc})") from None
        if not frames:
            raise InputError("image", f"{name}: DICOM file holds no image frames")
        return frames[len(frames) // 2]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError("image", f"{name}: not a readable image (PNG, JPEG or DICOM expected)")
    if img.shape[0] < MIN_SIDE or img.shape[1] < MIN_SIDE:
        raise InputError("image", f"{name}: image is {img.shape[1]}×{img.shape[0]} pixels; "
                                  f"at least {MIN_SIDE}×{MIN_SIDE} needed")
    return to_rgb_uint8(img)


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
