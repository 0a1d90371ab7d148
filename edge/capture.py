"""Frame capture: one thread per source keeps only the newest frame; freeze detection triggers analysis.

Sources (`--source`):
  video:PATH            a video file, looped at its own frame rate (cine loops, tests)
  v4l2:N | /dev/videoN  an HDMI/SDI capture card (V4L2)
  rtsp://... http://... a network stream (OpenCV/FFmpeg)
  folder:PATH           new PNG/JPEG/DICOM files as they arrive (each file = one still to analyse)
  dicom:AE_TITLE@PORT   a DICOM C-STORE SCP (edge.dicom_scp) for carts that push images
  demo                  the phantom cine loop shipped in edge/static/demo_cine.mp4

Two kinds, two rules:
- Live video (video, v4l2, stream, demo) keeps the NEWEST FRAME ONLY, by design: a slow consumer sees the
  newest frame and the rest are counted as dropped; a freeze is analysed from the frame it froze on, and
  if an analysis is still running when the next freeze fires, the pending freeze is replaced by the newer
  one (the screen has moved on; nothing was acknowledged to anyone).
- Pushed stills (folder, dicom) are never dropped: each one is written to the durable inbox
  (edge/inbox.py) before it is acknowledged (C-STORE Success) or taken (folder), and the inbox worker
  analyses every one, in order, after a restart too. The grabber only keeps such a source open and shows
  its state; the worker publishes each still as the newest frame for the live view.

Just over ~450 lines: the sources, the grabber and the freeze detector share one frame/state model; the
DICOM server and the inbox already live in their own modules.

A lost source is reopened with exponential backoff and its state is shown on the page.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .decode_limits import raster_kind
from .dicom_io import DicomConfigError, header_identifiers, parse_dicom_source
from .dicom_scp import DicomStoreSCP, ScpAccess
from .errors import EdgeError
from .imaging import decode_image
from .inbox import Inbox
from .preprocess import to_rgb_uint8

log = logging.getLogger("noa_edge.capture")

DEMO_CINE = Path(__file__).parent / "static" / "demo_cine.mp4"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DICOM_SUFFIXES = {".dcm", ".dicom", ""}


class SourceError(EdgeError, ValueError):
    """A --source value that cannot be understood or opened."""


# ---------------------------------------------------------------------------------------------- sources
class Source:
    """Base: open() may raise; read() returns an RGB frame, None (nothing new yet) or raises (lost)."""

    kind = "source"
    discrete = False          # True: stills go to the inbox (folder, DICOM); read() returns None; no freeze detection
    describe = ""

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None: ...


class OpenCVSource(Source):
    """Video file (looped, paced to its fps), V4L2 device or network stream through cv2.VideoCapture."""

    def __init__(self, target, kind: str, loop: bool = False, describe: str = ""):
        self.target, self.kind, self.loop = target, kind, loop
        self.describe = describe or str(target)
        self._cap: cv2.VideoCapture | None = None
        self._period = 0.0
        self._next_due = 0.0

    def open(self) -> None:
        if self.kind == "video" and not Path(self.target).is_file():
            raise SourceError(f"video file not found: {self.target}")
        cap = cv2.VideoCapture(self.target)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.kind} source {self.describe}")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        self._period = 1.0 / fps if self.kind == "video" and 1.0 <= fps <= 240.0 else 0.0
        self._next_due = time.monotonic()
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError("source not open")
        if self._period:  # play files in real time, like a cart would show them
            delay = self._next_due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next_due = max(self._next_due + self._period, time.monotonic() - self._period)
        ok, frame = self._cap.read()
        if not ok and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
        if not ok or frame is None:
            raise SourceError(f"{self.kind} source {self.describe} stopped delivering frames")
        return to_rgb_uint8(frame)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def read_image_file(path: Path) -> np.ndarray:
    """PNG/JPEG/DICOM file -> uint8 RGB (DICOM multi-frame: its middle frame), bounded like an upload."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path.name}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, path.name).frame


def decode_still(data: bytes, name: str) -> tuple[np.ndarray, dict]:
    """The inbox worker's decoder: (frame, what to add to the still's info)."""
    decoded = decode_image(data, name)
    return decoded.frame, {"n_frames": decoded.n_frames, "frame_index": decoded.frame_index}


class FolderSource(Source):
    """Watches a folder; every new PNG/JPEG/DICOM file becomes one inbox item (see edge/inbox.py for
    what "taken" means: the file stays where it is, its identity is remembered in the inbox). Files there
    when the folder is first watched are history, not exams."""

    kind, discrete = "folder", True

    def __init__(self, folder: Path, inbox: Inbox | None = None, poll_s: float = 0.25, settle_s: float = 0.3):
        self.folder, self.inbox, self.poll_s, self.settle_s = Path(folder), inbox, poll_s, settle_s
        self.describe = f"folder:{self.folder}"
        self._key = str(self.folder.resolve())
        self._seen: set[tuple[str, int, int]] = set()  # (name, size, mtime_ns) taken or refused this run
        self._full_logged = False

    def _candidates(self) -> list[tuple[Path, os.stat_result]]:
        out = []
        for entry in os.scandir(self.folder):
            if entry.name.startswith("."):
                continue
            suffix = Path(entry.name).suffix.lower()
            if suffix not in IMAGE_SUFFIXES and suffix not in DICOM_SUFFIXES:
                continue
            try:
                if entry.is_file():
                    out.append((Path(entry.path), entry.stat()))
            except FileNotFoundError:
                continue
        return sorted(out, key=lambda p: (p[1].st_mtime_ns, p[0].name))

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"folder not found: {self.folder}")
        if self.inbox is None:
            raise SourceError("folder source needs the daemon's inbox")
        existing = [(self._key, p.name, st.st_size, st.st_mtime_ns) for p, st in self._candidates()]
        if self.inbox.watch_folder(self._key, existing):  # files already there are history, not new exams
            log.info("folder source: first watch of %s; %d file(s) already there are not analysed",
                     self.folder, len(existing))

    def read(self) -> np.ndarray | None:
        if not self.folder.is_dir():
            raise SourceError(f"folder disappeared: {self.folder}")
        now = time.time_ns()
        for path, st in self._candidates():
            ident = (path.name, st.st_size, st.st_mtime_ns)
            if ident in self._seen or now - st.st_mtime_ns < self.settle_s * 1e9:  # known, or still being written
                continue
            if not self._take(path, ident):
                break  # inbox full: the file stays untaken, the next poll tries again
        time.sleep(self.poll_s)
        return None

    def _take(self, path: Path, ident: tuple[str, int, int]) -> bool:
        inbox = self.inbox
        if inbox is None:
            raise SourceError("folder source needs the daemon's inbox")
        key = (self._key, *ident)
        if inbox.file_taken(key):
            self._seen.add(ident)
            return True
        if ident[1] > inbox.max_bytes:
            log.warning("folder source: skipped %s: %d bytes exceeds the inbox limit", path.name, ident[1])
            self._seen.add(ident)
            return True
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("folder source: cannot read %s yet: %s", path.name, exc.strerror or exc)
            return True
        if len(data) != ident[1]:
            return True  # changed while reading: next poll
        ids = header_identifiers(data) if raster_kind(data) is None else None
        result = inbox.put(data, kind="folder", name=path.name, info={"file": path.name, **(ids or {})},
                                sop_instance_uid=(ids or {}).get("sop_instance_uid"), file=key)
        if result.status == "full":
            if not self._full_logged:
                log.warning("folder source: inbox full (%s); %s and later files wait in the folder",
                            result.detail, path.name)
                self._full_logged = True
            return False
        self._full_logged = False
        self._seen.add(ident)
        if result.status == "duplicate":
            log.info("folder source: %s is a repeat (%s): taken, not analysed again", path.name, result.detail)
        return True


class DicomSource(Source):
    """DICOM C-STORE SCP (edge.dicom_scp.DicomStoreSCP); each received object becomes one inbox item."""

    kind, discrete = "dicom", True

    def __init__(self, ae_title: str, port: int, access: ScpAccess | None = None, inbox: Inbox | None = None):
        self.ae_title, self.port, self.access, self.inbox = ae_title, port, access or ScpAccess(), inbox
        self.describe = f"dicom:{ae_title}@{port}"
        self._scp: DicomStoreSCP | None = None

    def _on_object(self, data: bytes, info: dict) -> str:
        name = f"C-STORE from {info.get('calling_ae')} (SOP instance {info.get('sop_instance_uid')})"
        if self.inbox is None:
            raise SourceError("dicom source needs the daemon's inbox")
        return self.inbox.put(data, kind="dicom", name=name, info=info,
                              sop_instance_uid=info.get("sop_instance_uid")).status

    def open(self) -> None:
        if self.inbox is None:
            raise SourceError("dicom source needs the daemon's inbox")
        if self._scp is None:
            self._scp = DicomStoreSCP(self.ae_title, self.port, self._on_object, access=self.access).start()

    def read(self) -> np.ndarray | None:
        time.sleep(0.25)  # the SCP's threads do the work; stills reach the view through the inbox worker
        return None

    def close(self) -> None:
        if self._scp is not None:
            self._scp.stop()
            self._scp = None


def open_source(spec: str, inbox: Inbox | None = None, dicom_access: ScpAccess | None = None) -> Source:
    """Parse a --source value into a Source (not opened yet); raises SourceError with the reason."""
    spec = (spec or "").strip()
    if spec == "demo":
        return OpenCVSource(str(demo_cine_path()), "video", loop=True, describe="demo (phantom cine)")
    if spec.startswith("video:"):
        path = spec[len("video:"):]
        if not path:
            raise SourceError("video: needs a file path, e.g. video:/data/cine.mp4")
        return OpenCVSource(path, "video", loop=True, describe=spec)
    m = re.fullmatch(r"(?:v4l2:(\d+)|/dev/video(\d+))", spec)
    if m:
        index = int(m.group(1) or m.group(2))
        return OpenCVSource(index, "v4l2", describe=f"/dev/video{index}")
    if re.match(r"^(rtsp|rtsps|http|https)://", spec):
        return OpenCVSource(spec, "stream", describe=re.sub(r"//[^/@]*@", "//***@", spec))  # hide credentials
    if spec.startswith("folder:"):
        path = spec[len("folder:"):]
        if not path:
            raise SourceError("folder: needs a directory, e.g. folder:/data/incoming")
        return FolderSource(Path(path), inbox)
    if spec.startswith("dicom:"):
        try:
            ae_title, port = parse_dicom_source(spec)
        except DicomConfigError as exc:
            raise SourceError(str(exc)) from None
        return DicomSource(ae_title, port, dicom_access, inbox)
    raise SourceError(
        f"unknown source {spec!r}: use demo, video:PATH, v4l2:N, /dev/videoN, rtsp://..., http://..., "
        "folder:PATH or dicom:AE_TITLE@PORT")


def demo_cine_path() -> Path:
    """The phantom cine shipped with the package (6 s, 15 fps, two frozen stretches; sidecar JSON with
    the frozen ranges and per-frame ROIs). It is rendered on the host (converters/phantom_cine.py) and
    shipped as package data: the device never runs the generator."""
    if DEMO_CINE.is_file():
        return DEMO_CINE
    raise SourceError(f"demo cine missing ({DEMO_CINE}): the installed package is incomplete; reinstall noa-edge")


# ----------------------------------------------------------------------------------------- freeze
@dataclass
class FreezeDetector:
    """Fires once when `frames` consecutive frames differ from their predecessor by less than `threshold`
    (mean absolute difference, gray levels, on a 64×64 downsample that averages speckle and codec noise).
    Re-arms only after motion is seen again, so one freeze = one analysis.

    On the phantom cine (mp4v, 15 fps) frozen stretches measure 0.0–0.21, live scanning 0.3–3.4 with the
    slowest frames at the probe's turnaround (~0.3 for ≤ 4 frames): 0.5 for 8 frames (≈ 0.5 s) separates them."""

    threshold: float = 0.5
    frames: int = 8
    _prev: np.ndarray | None = field(default=None, repr=False)
    _still: int = 0
    _fired: bool = False
    last_diff: float = float("nan")

    def update(self, frame_rgb: np.ndarray) -> bool:
        small = cv2.resize(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2GRAY), (64, 64),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
        prev, self._prev = self._prev, small
        if prev is None:
            return False
        self.last_diff = float(np.mean(np.abs(small - prev)))
        if self.last_diff >= self.threshold:
            self._still, self._fired = 0, False
            return False
        self._still += 1
        if self._still >= self.frames and not self._fired:
            self._fired = True
            return True
        return False

    @property
    def frozen(self) -> bool:
        return self._fired


# ---------------------------------------------------------------------------------------- grabber
class FrameGrabber:
    """One capture thread: newest frame only, reconnect with backoff, freeze events.

    `on_still(frame_rgb, "freeze", {})` is called from a separate worker thread (so a slow analysis never
    blocks capture) for each freeze of a live source; if the worker is busy, the newest pending freeze
    replaces the older one (live video is newest-only by design). Discrete sources (folder, dicom) emit
    nothing here: their stills go through the durable inbox (edge/inbox.py), whose worker calls
    `publish` so the newest still is also the newest frame of the live view.
    """

    def __init__(self, source: Source, on_still: Callable[[np.ndarray, str, dict], None] | None = None,
                 freeze: FreezeDetector | None = None, backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0):
        self.source = source
        self.on_still = on_still
        self.freeze = freeze or FreezeDetector()
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._frame_seq = 0
        self._frame_time = 0.0
        self._consumed_seq = 0
        self.frames_captured = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.freezes = 0
        self.state = "starting"
        self.error = ""
        self._stop = threading.Event()
        self._events: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="noa-capture", daemon=True)
        self._worker = threading.Thread(target=self._work, name="noa-still-worker", daemon=True)

    # -- public
    def start(self) -> FrameGrabber:
        self._thread.start()
        self._worker.start()
        return self

    def is_alive(self) -> bool:
        """The capture thread and the still worker both run (the service watchdog asks)."""
        return self._thread.is_alive() and self._worker.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._worker.join(timeout)

    def latest(self) -> tuple[np.ndarray | None, int]:
        """(newest frame, its sequence number); marks it consumed for the dropped-frame count."""
        with self._lock:
            self._consumed_seq = self._frame_seq
            return self._frame, self._frame_seq

    def status(self) -> dict:
        with self._lock:
            age = time.monotonic() - self._frame_time if self._frame is not None else None
            shape = list(self._frame.shape[:2][::-1]) if self._frame is not None else None
        return {"source": self.source.describe, "kind": self.source.kind, "state": self.state,
                "error": self.error, "frames_captured": self.frames_captured,
                "frames_dropped": self.frames_dropped, "reconnects": self.reconnects,
                "freezes": self.freezes, "frozen": self.freeze.frozen and not self.source.discrete,
                "frame_age_s": None if age is None else round(age, 3), "frame_size": shape}

    def publish(self, frame: np.ndarray) -> None:
        """Make `frame` the newest frame (capture thread; the inbox worker for discrete sources)."""
        with self._lock:
            if self._frame_seq > self._consumed_seq and self._frame is not None and not self.source.discrete:
                self.frames_dropped += 1  # overwritten before anyone looked: stale, dropped
            self._frame = frame
            self._frame_seq += 1
            self._frame_time = time.monotonic()
        self.frames_captured += 1

    def _emit(self, frame: np.ndarray, trigger: str, info: dict | None = None) -> None:
        if self.on_still is None:
            return
        event = (frame, trigger, dict(info or {}))
        try:
            self._events.put_nowait(event)
        except queue.Full:  # replace the pending event by the newer one
            try:
                self._events.get_nowait()
            except queue.Empty:
                pass
            self._events.put_nowait(event)

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            try:
                self.state = "connecting" if self.reconnects == 0 else "reconnecting"
                self.source.open()
                self.state, self.error = "live", ""
                backoff = self.backoff_initial_s
                while not self._stop.is_set():
                    frame = self.source.read()
                    if frame is None:
                        continue
                    self.publish(frame)
                    if self.freeze.update(frame):
                        self.freezes += 1
                        self._emit(frame, "freeze")
            except Exception as exc:  # noqa: BLE001 - lost source (any error): show it, back off, reopen
                self.state, self.error = "lost", str(exc)
                log.warning("capture: %s: %s (retry in %.1f s)", self.source.describe, exc, backoff)
            try:
                self.source.close()
            except Exception:  # noqa: BLE001 - closing a lost source must not stop the loop
                pass
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.backoff_max_s)
            self.reconnects += 1
        self.state = "stopped"
        try:
            self.source.close()
        except Exception:  # noqa: BLE001 - closing a lost source must not stop the loop
            pass

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                frame, trigger, info = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            if self.on_still is None:
                continue
            try:
                self.on_still(frame, trigger, info)
            except Exception as exc:  # noqa: BLE001 - an analysis failure is logged; the worker goes on
                log.warning("automatic analysis (%s) failed: %s", trigger, exc)
