"""The daemon's configuration and lifecycle: what `noa-edge serve` owns besides the web layer.

DaemonConfig holds the serve options and check_config refuses the ones that cannot work (one clear line
each). Daemon holds what every route shares: the exam store, the Analyzer (bundle + runtime + nomogram),
the capture thread with freeze detection, and the counters /metrics reports. The web layer (edge/web)
builds on a Daemon; nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from .bundle_signing import SignatureError, check_signature
from .capture import FrameGrabber, FreezeDetector, SourceError, decode_still, open_source
from .decode_limits import DecodeLimits, set_limits
from .dicom_io import DicomConfigError, parse_pacs
from .dicom_scp import ScpAccess, check_access, is_loopback_host
from .errors import EdgeError
from .held_frames import TRIGGERS, HeldFrame, HeldFrames
from .imaging import decode_upload
from .inbox import Inbox, InboxWorker, exam_stored_for
from .patient import PatientContext, clean_patient_id
from .pipeline import Analyzer
from .retention import RetentionConfigError, RetentionPolicy, RetentionWorker
from .runtime import RuntimeChoiceError, normalize_runtime
from .service_notify import ServiceNotifier
from .store import ExamStore, StoreError

HERE = Path(__file__).parent
log = logging.getLogger("noa_edge.daemon")
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
    runtime: str = "auto"                  # edge.runtime.RUNTIME_CHOICES; auto = probed (edge/runtime_select.py)
    trust_key: str | None = None           # Ed25519 public key (PEM): only bundles signed by it load
    threads: int | None = None
    max_upload_mb: float = 20.0
    freeze_threshold: float = 0.5
    freeze_frames: int = 8
    auto_analyze: bool = True
    min_free_mb: float = 500.0   # below this free on --data-dir: health "degraded", analyses refused (507)
    allow_hosts: list[str] = field(default_factory=list)  # Host header names accepted besides loopback/--host
    dicom_host: str = "127.0.0.1"          # the C-STORE SCP's own bind address (edge/dicom_scp.py)
    dicom_allow: list[str] = field(default_factory=list)  # calling AE titles allowed (needed off loopback)
    dicom_max_associations: int = 10
    dicom_tls_cert: str | None = None
    dicom_tls_key: str | None = None
    dicom_tls_ca: str | None = None
    inbox_max_items: int = 1000            # waiting pushed images before the SCP answers Out of Resources
    inbox_max_mb: float = 2048.0
    max_image_mp: float = 40.0             # decode limits (edge/decode_limits.py)
    max_frames: int = 1000
    keep_days: float | None = None         # retention (edge/retention.py): never an exam not pushed to --pacs
    max_exams: int | None = None
    max_disk_mb: float | None = None
    extra: dict = field(default_factory=dict)


class ConfigError(EdgeError, ValueError):
    """A serve option that cannot work; the message says which and why."""


def check_config(cfg: DaemonConfig) -> None:
    if not is_loopback_host(cfg.host) and not cfg.token:
        raise ConfigError(f"--host {cfg.host} is reachable from the network: pass --token SECRET "
                          "(checked on every request) or bind 127.0.0.1")
    if cfg.token is not None and len(cfg.token) < 8:
        raise ConfigError("--token must be at least 8 characters")
    if cfg.variant not in VARIANTS:
        raise ConfigError(f"--variant {cfg.variant!r}: choose one of {', '.join(VARIANTS)}")
    try:
        normalize_runtime(cfg.runtime)
    except RuntimeChoiceError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.min_free_mb < 0:
        raise ConfigError("--min-free-mb must be ≥ 0")
    try:
        retention_policy(cfg)
    except RetentionConfigError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError("--threads must be ≥ 1")
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"--port {cfg.port} must be 1–65535")
    if cfg.max_image_mp <= 0 or cfg.max_frames < 1 or cfg.inbox_max_items < 1 or cfg.inbox_max_mb <= 0:
        raise ConfigError("--max-image-mp, --max-frames, --inbox-max-items and --inbox-max-mb must be positive")
    try:
        check_access(dicom_access(cfg))
    except DicomConfigError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.pacs:
        try:
            parse_pacs(cfg.pacs)
        except DicomConfigError as exc:
            raise ConfigError(str(exc)) from None
    if not (resolve_bundle(cfg.bundle) / "manifest.json").is_file():
        raise ConfigError(f"--bundle {cfg.bundle}: no manifest.json there (build one with `noa-edge convert`, "
                          "or `make firmware` for the demo bundle)")
    if cfg.trust_key:
        try:
            check_signature(resolve_bundle(cfg.bundle), cfg.trust_key)
        except SignatureError as exc:
            raise ConfigError(f"--trust-key: {exc}") from None


def retention_policy(cfg: DaemonConfig) -> RetentionPolicy:
    return RetentionPolicy(keep_days=cfg.keep_days, max_exams=cfg.max_exams, max_disk_mb=cfg.max_disk_mb,
                           pacs=cfg.pacs)


def dicom_access(cfg: DaemonConfig) -> ScpAccess:
    return ScpAccess(host=cfg.dicom_host, allow=tuple(cfg.dicom_allow), max_associations=cfg.dicom_max_associations,
                     tls_cert=cfg.dicom_tls_cert, tls_key=cfg.dicom_tls_key, tls_ca=cfg.dicom_tls_ca)


def check_source(cfg: DaemonConfig) -> None:
    """Open the --source once before serving, so a typo fails at start with one line, not in a thread."""
    if cfg.source:
        try:
            open_source(cfg.source)
        except SourceError as exc:
            raise ConfigError(f"--source: {exc}") from None


_DIRS = re.compile(r"(?<![\w/.])(?:/[^/\s'\"]+)+/")


def without_paths(text: str) -> str:
    """'video:/home/u/cine.mp4' → 'video:…/cine.mp4': answers never show where files live (URLs are kept)."""
    return _DIRS.sub("…/", text)


def resident_memory_bytes() -> int | None:
    try:
        return int(psutil.Process().memory_info().rss)
    except psutil.Error:
        return None


def source_banner(status: dict) -> str:
    """One sentence about a lost source, "" while it is live (or connecting for the first time)."""
    if status.get("state") not in ("lost", "reconnecting") or not status.get("error"):
        return ""
    return f"Source {status.get('source') or ''} lost: {status['error']} — reconnecting…"


class NoFrameError(EdgeError, RuntimeError):
    """The source has no frame to freeze (yet, or at all)."""


class Daemon:
    """Everything the routes share: store, analyzer, capture thread, held frames, the open patient
    context, counters."""

    def __init__(self, cfg: DaemonConfig):
        self.cfg = cfg
        self.started = time.time()
        self.data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
        self.store = ExamStore(self.data_dir, min_free_bytes=int(cfg.min_free_mb * 1e6))
        self.analyzer = self._load_analyzer()
        self._reload_lock = threading.Lock()
        self.bundle_reloads: dict[str, Any] = {"ok": 0, "failed": 0, "last_error": ""}  # SIGHUP reloads
        set_limits(DecodeLimits(max_pixels=int(cfg.max_image_mp * 1e6), max_frames=cfg.max_frames))
        self.inbox = Inbox(self.data_dir, max_items=cfg.inbox_max_items, max_bytes=int(cfg.inbox_max_mb * 1024**2))
        self.inbox_worker: InboxWorker | None = None
        self.grabber: FrameGrabber | None = None
        self.held = HeldFrames()          # the frames results are computed from (edge.held_frames)
        self.context = PatientContext()   # the open patient context: automatic analyses use it
        self.counters = {"requests": 0, "analyses_ok": 0, "analyses_rejected": 0, "analyses_failed": 0,
                         "auto_analyses": 0, "uploads_too_large": 0, "auth_failures": 0}
        self._lock = threading.Lock()
        self.retention = RetentionWorker(self.store, retention_policy(cfg))
        self.service = ServiceNotifier(self.healthy)  # systemd READY/WATCHDOG (edge/service_notify.py)
        self._loop: Any = None  # the web server's event loop, for the watchdog's liveness probe

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def _load_analyzer(self) -> Analyzer:
        """The bundle --bundle names now: a symlink (bundles/current) resolved once, so every file comes from
        one A/B slot; its signature checked first when a trust key is configured."""
        path = resolve_bundle(self.cfg.bundle).resolve()
        if self.cfg.trust_key:
            check_signature(path, self.cfg.trust_key)
        return Analyzer(path, variant=self.cfg.variant, threads=self.cfg.threads, store=self.store,
                        runtime=self.cfg.runtime)

    def reload_bundle(self) -> bool:
        """SIGHUP (after `noa-edge bundle install`/`rollback`): load the bundle again and swap it in. An analysis
        in flight finishes on the old Analyzer (it holds it); the next one uses the new. A bundle that fails to
        load (or to verify) leaves the old one serving, and the log says why."""
        with self._reload_lock:
            old = self.analyzer
            try:
                new = self._load_analyzer()
            except Exception as exc:  # noqa: BLE001 - whatever the new bundle does, the old one keeps serving
                self.bundle_reloads["failed"] += 1
                self.bundle_reloads["last_error"] = str(exc)
                log.error("bundle reload failed, still serving %s (%s): %s", old.manifest.get("name"),
                          old.sha256[:12], exc)
                return False
            new.analyses, new.stage_totals_ms = old.analyses, old.stage_totals_ms  # /metrics counts on
            self.analyzer = new
            self.bundle_reloads["ok"] += 1
            log.info("bundle reloaded: %s (%s) -> %s (%s), runtime %s", old.manifest.get("name"), old.sha256[:12],
                     new.manifest.get("name"), new.sha256[:12], new.selection.runtime)
            return True

    def reload_on_sighup(self) -> None:
        """SIGHUP reloads the bundle in a thread (the handler returns at once; requests keep being served)."""
        if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGHUP, lambda signum, frame: threading.Thread(
                target=self.reload_bundle, name="bundle-reload", daemon=True).start())

    def start_capture(self) -> None:
        self.reload_on_sighup()
        if self.cfg.source:
            source = open_source(self.cfg.source, inbox=self.inbox, dicom_access=dicom_access(self.cfg))
            freeze = FreezeDetector(self.cfg.freeze_threshold, self.cfg.freeze_frames)
            self.grabber = FrameGrabber(source, on_still=self._on_still if self.cfg.auto_analyze else None,
                                        freeze=freeze).start()
        # pushed images (folder, DICOM) are analysed from the durable inbox, also those left by a previous run
        self.inbox_worker = InboxWorker(self.inbox, decode_still, self._on_still if self.cfg.auto_analyze else None,
                                        on_frame=self.grabber.publish if self.grabber is not None else None,
                                        already_done=lambda item: exam_stored_for(self.store.list_exams, item),
                                        transient=(StoreError,)).start()
        self.retention.start()  # a pass now, then every RETENTION_EVERY_S

    def announce_ready(self, loop: Any = None) -> None:
        """Serving: READY=1 to systemd, then WATCHDOG=1 while healthy(). `loop`: the server's asyncio loop."""
        self._loop = loop
        self.service.ready()

    def healthy(self, timeout: float = 5.0) -> bool:
        """The analysis workers run and the web loop answers (a callback scheduled on it runs in time)."""
        if self.inbox_worker is None or not self.inbox_worker.is_alive():
            return False
        if self.grabber is not None and not self.grabber.is_alive():
            return False
        if self._loop is not None:
            answered = threading.Event()
            try:
                self._loop.call_soon_threadsafe(answered.set)
            except RuntimeError:  # the loop is closed
                return False
            return answered.wait(timeout)
        return True

    def stop(self) -> None:
        self.service.stop()
        self.retention.stop()
        if self.grabber is not None:
            self.grabber.stop()
        if self.inbox_worker is not None:
            self.inbox_worker.stop()
        self.inbox.close()
        self.store.close()

    def latest_frame(self) -> tuple[np.ndarray | None, int]:
        """The newest frame of the source and its sequence number ((None, 0) without a source)."""
        if self.grabber is None:
            return None, 0
        return self.grabber.latest()

    def source_description(self) -> str:
        """The source as answers and exams show it: no directories (a file path keeps its name only)."""
        return without_paths(self.grabber.source.describe) if self.grabber is not None else ""

    def freeze(self, trigger: str = "user") -> HeldFrame:
        """Hold the newest live frame (a freeze is an object: its pixels never change afterwards)."""
        frame, seq = self.latest_frame()
        if frame is None:
            st = self.source_status()
            raise NoFrameError(f"no frame from the source to freeze (state: {st['state']}"
                               f"{': ' + st['error'] if st.get('error') else ''})")
        return self.held.hold(frame, trigger, self.source_description(), {"frame_seq": seq})

    def hold_upload(self, data: bytes, name: str, frame_index: str | None = None) -> HeldFrame:
        """An uploaded PNG/JPEG/DICOM becomes a held frame (InputError names "image" or "frame_index")."""
        frame, n_frames, index = decode_upload(data, name, frame_index)
        return self.held.hold(frame, "upload", "upload", {"n_frames": n_frames, "frame_index": index})

    def auto_context(self, image_patient_id: str | None) -> dict:
        """What an automatic analysis uses: the open context's values and patient ID (and says so), or
        nothing (DL-only). An image that names another patient (DICOM PatientID) never gets this
        context's values."""
        ctx = self.context.get()
        try:
            image_pid = clean_patient_id(image_patient_id)
        except EdgeError:
            image_pid = None
        if ctx is None:
            return {"patient_id": image_pid, "clinical": {}, "notes": [], "context": None, "inputs_raw": {}}
        if image_pid and image_pid != ctx.patient_id:
            return {"patient_id": image_pid, "clinical": {}, "context": None, "inputs_raw": {},
                    "notes": [f"the image's patient ID ({image_pid}) differs from the open patient context "
                              f"(ID {ctx.patient_id}): the context's values were not used"]}
        return {"patient_id": ctx.patient_id, "clinical": dict(ctx.values), "notes": [ctx.note()],
                "context": "patient_context", "inputs_raw": dict(ctx.raw)}

    def _on_still(self, frame: np.ndarray, trigger: str, info: dict) -> None:
        """Every automatic image (freeze detector, folder, DICOM; called by the capture worker) is held,
        then analysed with the open patient context, if any."""
        extra = {k: info[k] for k in ("study_instance_uid", "sop_instance_uid", "modality") if info.get(k)}
        try:
            self.store.check_space()  # refused before the model runs, as on the HTTP path
        except StoreError:
            self.count("analyses_refused_disk")
            raise
        try:
            held = self.held.hold(frame, trigger if trigger in TRIGGERS else "freeze", self.source_description(),
                                  {k: info[k] for k in ("frame_seq", "n_frames", "frame_index") if k in info})
            use = self.auto_context(info.get("patient_id"))
            laterality = str(info.get("laterality") or "").upper()
            extra.update(side=laterality if laterality in ("L", "R") else None, context=use["context"],
                         inputs_raw=use["inputs_raw"])
            self.analyzer.analyze(held=held, clinical=use["clinical"], patient_id=use["patient_id"],
                                  trigger=trigger, source=held.source, extra=extra,
                                  notes=use["notes"] + list(info.get("identifier_notes") or []))
            self.count("auto_analyses")
            self.count("analyses_ok")
        except Exception:
            self.count("analyses_failed")
            raise

    def source_status(self) -> dict:
        """The capture state; `banner` is THE sentence a page shows about a lost source ("" when fine):
        the server-rendered page, the page's updates and /api/health all show this one text."""
        if self.grabber is None:
            return {"source": None, "state": "none", "error": "", "frozen": False, "banner": ""}
        status = self.grabber.status()
        status = dict(status, source=without_paths(status.get("source") or ""),
                      error=without_paths(status.get("error") or ""))
        return dict(status, banner=source_banner(status))
