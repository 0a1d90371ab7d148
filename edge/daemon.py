"""The daemon's configuration and lifecycle: what `noa-edge serve` owns besides the web layer.

DaemonConfig holds the serve options and check_config refuses the ones that cannot work (one clear line
each). Daemon holds what every route shares: the exam store, the Analyzer (bundle + runtime + nomogram),
the capture thread with freeze detection, and the counters /metrics reports. The web layer (edge/web)
builds on a Daemon; nothing here knows about HTTP.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from .capture import FrameGrabber, FreezeDetector, SourceError, open_source
from .dicom_io import DicomConfigError, parse_pacs
from .errors import EdgeError
from .pipeline import Analyzer
from .store import ExamStore

HERE = Path(__file__).parent
DEFAULT_BUNDLE = "firmware_assets/demo-phantom"
VARIANTS = ("auto", "fp32", "fp16", "int8", "edgetpu")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "noa-edge"


def resolve_bundle(bundle: str | Path) -> Path:
    """A bundle path as given, else relative to the checkout (so `noa-edge serve` works from anywhere)."""
    path = Path(bundle)
    if path.is_dir() or path.is_absolute():
        return path
    alt = HERE.parent / path
    return alt if alt.is_dir() else path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class DaemonConfig:
    bundle: str = DEFAULT_BUNDLE
    source: str | None = "demo"
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    data_dir: str | None = None
    pacs: str | None = None
    variant: str = "auto"
    threads: int | None = None
    max_upload_mb: float = 20.0
    freeze_threshold: float = 0.5
    freeze_frames: int = 8
    auto_analyze: bool = True
    extra: dict = field(default_factory=dict)


class ConfigError(EdgeError, ValueError):
    """A serve option that cannot work; the message says which and why."""


def check_config(cfg: DaemonConfig) -> None:
    if not is_loopback(cfg.host) and not cfg.token:
        raise ConfigError(f"--host {cfg.host} is reachable from the network: pass --token SECRET "
                          "(checked on every request) or bind 127.0.0.1")
    if cfg.token is not None and len(cfg.token) < 8:
        raise ConfigError("--token must be at least 8 characters")
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"--variant {cfg.variant!r}: choose one of {', '.join(VARIANTS)}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError("--threads must be ≥ 1")
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"--port {cfg.port} must be 1–65535")
    if cfg.pacs:
        try:
            parse_pacs(cfg.pacs)
        except DicomConfigError as exc:
            raise ConfigError(str(exc)) from None
    if not (resolve_bundle(cfg.bundle) / "manifest.json").is_file():
        raise ConfigError(f"--bundle {cfg.bundle}: no manifest.json there (build one with `noa-edge convert`, "
                          "or `make firmware` for the demo bundle)")


def check_source(cfg: DaemonConfig) -> None:
    """Open the --source once before serving, so a typo fails at start with one line, not in a thread."""
    if cfg.source:
        try:
            open_source(cfg.source)
        except SourceError as exc:
            raise ConfigError(f"--source: {exc}") from None


def resident_memory_bytes() -> int | None:
    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:
        return None


class Daemon:
    """Everything the routes share: store, analyzer, capture thread, counters."""

    def __init__(self, cfg: DaemonConfig):
        self.cfg = cfg
        self.started = time.time()
        self.data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
        self.store = ExamStore(self.data_dir)
        self.analyzer = Analyzer(resolve_bundle(cfg.bundle), variant=cfg.variant, threads=cfg.threads,
                                 store=self.store)
        self.grabber: FrameGrabber | None = None
        self.counters = {"requests": 0, "analyses_ok": 0, "analyses_rejected": 0, "analyses_failed": 0,
                         "auto_analyses": 0, "uploads_too_large": 0, "auth_failures": 0}
        self._lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def start_capture(self) -> None:
        if not self.cfg.source:
            return
        source = open_source(self.cfg.source, listen_host=self.cfg.host)
        self.grabber = FrameGrabber(source, on_still=self._on_still if self.cfg.auto_analyze else None,
                                    freeze=FreezeDetector(self.cfg.freeze_threshold, self.cfg.freeze_frames)).start()

    def stop(self) -> None:
        if self.grabber is not None:
            self.grabber.stop()
        self.store.close()

    def latest_frame(self) -> tuple[np.ndarray | None, int]:
        """The newest frame of the source and its sequence number ((None, 0) without a source)."""
        if self.grabber is None:
            return None, 0
        return self.grabber.latest()

    def source_description(self) -> str:
        return self.grabber.source.describe if self.grabber is not None else ""

    def _on_still(self, frame: np.ndarray, trigger: str, info: dict) -> None:
        extra = {k: info[k] for k in ("study_instance_uid", "sop_instance_uid", "modality") if info.get(k)}
        try:
            self.analyzer.analyze(frame, trigger=trigger, source=self.source_description(),
                                  patient_id=info.get("patient_id"), extra=extra)
            self.count("auto_analyses")
            self.count("analyses_ok")
        except Exception:
            self.count("analyses_failed")
            raise

    def source_status(self) -> dict:
        if self.grabber is None:
            return {"source": None, "state": "none", "error": "", "frozen": False}
        return self.grabber.status()
