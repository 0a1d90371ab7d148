"""Held frames: a freeze is an object (issue 12).

Every frame a result can be computed from (a user freeze of the live source, an uploaded file, an
automatic freeze/folder/DICOM image) is first *held* here: an immutable copy of its pixels, their sha256,
its image area and its own proposed ROI, under a random frame_id. Analyses take a frame_id, so a result is
always computed from exactly the pixels the user saw, with a ROI proposed on exactly those pixels (never
carried over from another image). The ring is bounded (newest 16 frames, and a byte budget) and in memory:
a held frame is a working copy; the stored exam keeps the analysed frame for good.

frame_sha256 is the sha256 of the frame's uint8 pixels, C order, RGB (H, W, 3) (docs: cart contract), so
anyone can check a stored frame PNG against it after decoding it to RGB.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

import cv2
import numpy as np

from .errors import InputError
from .roi import Box, find_image_area, propose_roi

CAPACITY = 16
MAX_BYTES = 256 * 1024 * 1024  # also bounded by size: 16 large DICOM frames could be ~200 MB
TRIGGERS = ("user", "upload", "freeze", "folder", "dicom", "button")


class FrameNotHeld(InputError):
    """A frame_id that is not (or no longer) held; `evicted` tells which, for a clear 404."""

    def __init__(self, frame_id: str, evicted: bool):
        why = (f"frame {frame_id} is no longer held (only the newest {CAPACITY} frames are kept): "
               "freeze or upload it again" if evicted else f"frame {frame_id} is not a held frame")
        super().__init__("frame_id", why)
        self.evicted = evicted


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3), C-contiguous: the one pixel layout the hash is defined on."""
    img = np.asarray(frame)
    if img.dtype != np.uint8:
        raise ValueError(f"a held frame must be uint8, got {img.dtype}")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif not (img.ndim == 3 and img.shape[2] == 3):
        raise ValueError(f"a held frame must be (H, W) or (H, W, 3), got {img.shape}")
    return np.ascontiguousarray(img)


def frame_sha256(frame: np.ndarray) -> str:
    """sha256 (hex) of the frame's uint8 pixels, C order, RGB (H, W, 3)."""
    return hashlib.sha256(as_rgb(frame).data).hexdigest()


def local_now() -> str:
    """ISO-8601 local time with its UTC offset (what a clinician reads, unambiguous for a machine)."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class HeldFrame:
    frame_id: str
    frame: np.ndarray          # uint8 RGB (H, W, 3), read-only copy
    gray: np.ndarray           # its gray version (ROI proposal, model crop, stored PNG)
    sha256: str
    area: Box                  # B-mode image area
    roi: Box                   # the ROI proposed on exactly these pixels
    held_at: str
    trigger: str               # user | upload | freeze | folder | dicom | button
    source: str
    info: dict = field(default_factory=dict)      # n_frames, frame_index, DICOM UIDs, patient_id, frame_seq
    timings: dict = field(default_factory=dict)   # ms: copy+hash, image_area, roi (paid once, at hold)

    @property
    def nbytes(self) -> int:
        return int(self.frame.nbytes + self.gray.nbytes)

    def public(self) -> dict:
        """The API body (cart contract: /api/freeze, /api/frames)."""
        out = {"frame_id": self.frame_id, "frame_sha256": self.sha256,
               "frame_size": [int(self.frame.shape[1]), int(self.frame.shape[0])],
               "image_area": [int(v) for v in self.area], "roi": [int(v) for v in self.roi],
               "roi_method": "auto", "held_at": self.held_at, "trigger": self.trigger, "source": self.source,
               "url": f"/frames/{self.frame_id}.png"}
        for key in ("n_frames", "frame_index", "frame_seq"):
            if key in self.info:
                out[key] = self.info[key]
        return out


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000.0, 3)


def _box(box) -> Box:
    x, y, w, h = (int(v) for v in box)
    return (x, y, w, h)


def make_held_frame(frame: np.ndarray, trigger: str, source: str = "", info: dict | None = None) -> HeldFrame:
    """Copy, hash once, find the image area and propose this frame's own ROI."""
    if trigger not in TRIGGERS:
        raise ValueError(f"unknown trigger {trigger!r}")
    timings = {}
    t0 = time.perf_counter()
    rgb = np.array(as_rgb(frame), copy=True)  # the source may reuse its buffer; the held copy never changes
    rgb.setflags(write=False)
    sha = hashlib.sha256(rgb.data).hexdigest()
    timings["hash"] = _ms(t0)
    t0 = time.perf_counter()
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gray.setflags(write=False)
    area = find_image_area(gray)
    timings["image_area"] = _ms(t0)
    t0 = time.perf_counter()
    roi = propose_roi(gray, area)
    timings["roi"] = _ms(t0)
    return HeldFrame(frame_id=secrets.token_hex(8), frame=rgb, gray=gray, sha256=sha,
                     area=_box(area), roi=_box(roi), held_at=local_now(),
                     trigger=trigger, source=source, info=dict(info or {}), timings=timings)


class HeldFrames:
    """The bounded ring of held frames (thread-safe): newest `capacity` frames within `max_bytes`."""

    def __init__(self, capacity: int = CAPACITY, max_bytes: int = MAX_BYTES):
        self.capacity, self.max_bytes = capacity, max_bytes
        self._frames: OrderedDict[str, HeldFrame] = OrderedDict()
        self._evicted: OrderedDict[str, None] = OrderedDict()  # recent ids, to say "evicted" not "unknown"
        self._lock = threading.Lock()

    def hold(self, frame: np.ndarray, trigger: str, source: str = "", info: dict | None = None) -> HeldFrame:
        held = make_held_frame(frame, trigger, source, info)  # outside the lock: hashing takes ~1 ms
        with self._lock:
            self._frames[held.frame_id] = held
            total = sum(h.nbytes for h in self._frames.values())
            while len(self._frames) > self.capacity or (total > self.max_bytes and len(self._frames) > 1):
                old_id, old = self._frames.popitem(last=False)
                total -= old.nbytes
                self._evicted[old_id] = None
                while len(self._evicted) > 4096:
                    self._evicted.popitem(last=False)
        return held

    def get(self, frame_id: str) -> HeldFrame:
        key = str(frame_id).strip().lower()
        with self._lock:
            held = self._frames.get(key)
            if held is None:
                raise FrameNotHeld(key[:64], evicted=key in self._evicted)
            return held

    def newest(self, limit: int = CAPACITY) -> list[HeldFrame]:
        with self._lock:
            return list(reversed(self._frames.values()))[:limit]

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
