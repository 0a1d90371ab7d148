"""Exam store: one SQLite file (WAL) in the daemon's data directory.

Every exam is written in ONE transaction (images as BLOBs next to the numbers), so a result is stored
whole or not at all, and a kill -9 mid-write leaves the previous state; readers (the page) never block the
writer. Durability trade-off: the writer runs WAL with synchronous=NORMAL, so a commit does not wait for an
fsync (the fsync cost 3–50 ms on the analysis path here). A committed exam survives a process crash or
kill -9 at once (the WAL is in the OS page cache), and the database is never corrupted; against power loss or
an OS crash an exam is safe once the background checkpoint that follows every commit (its own connection,
synchronous=FULL: WAL fsync, copy, db fsync) has finished, normally tens of ms after analyze() returned.
A power cut inside that window can lose the newest exam(s), not damage older ones.
The daemon stores the frame as an uncompressed PNG (fast on the analysis path); the same background thread
recompresses it losslessly (deflate level 1, ~4× smaller) once no exam was written for RECOMPRESS_IDLE_S, one
frame at a time, each in its own UPDATE (a frame is always one whole valid PNG, before or after).
The ROI image is not stored (roi_png is left empty): it is the stored frame cropped to the stored ROI, so
get_image/get_exam derive it on request (rows written before this still hold their own ROI PNG). The
overlay_png column holds the CAM overlay as the daemon encoded it (JPEG since the pipeline levers, PNG
before): readers decode by content, `image_media_type` names it for HTTP.
Space: new databases use auto_vacuum=INCREMENTAL (an old one is converted once at open when small), and
the background thread runs `PRAGMA incremental_vacuum` after recompressing frames, so the file shrinks.
Below `min_free_bytes` free on the data directory's filesystem (and after SQLite's own "database or disk is
full") add_exam refuses with StoreFullError before writing; `storage_status()` says so for /api/health.
Exam ids are SQLite integers: an id outside 1..MAX_ID is simply not found (never an OverflowError).
Patient identifiers are optional and stay in this file only (never logged).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
import uuid
from collections import deque
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from .cam import roi_view
from .errors import EdgeError
from .exam import Exam
from .imaging import decode_png_rgb, image_media_type, png_bytes
from .roi import box_problem

__all__ = ["MAX_ID", "ExamStore", "StoreError", "StoreFullError", "image_media_type", "utc_now"]

log = logging.getLogger("noa_edge.store")

SCHEMA_VERSION = 1
IMAGE_KINDS = ("frame", "roi", "overlay")
RECOMPRESS_IDLE_S = 2.0  # quiet time before uncompressed frames are recompressed (never during a burst)
MAX_ID = 2**63 - 1  # SQLite's INTEGER range: ids and offsets beyond it are refused, never an OverflowError
CONVERT_VACUUM_MAX_BYTES = 256 * 2**20  # an older database up to this size is VACUUMed once to incremental mode
VACUUM_EVERY = 16  # recompressed frames between two incremental vacuums (and once the queue is empty)
_SQLITE_FULL = 13  # SQLite's result code; the sqlite3.SQLITE_FULL constant only exists from Python 3.11

_SCHEMA = """
CREATE TABLE IF NOT EXISTS exams (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    uid           TEXT NOT NULL UNIQUE,
    created       TEXT NOT NULL,          -- ISO-8601 UTC
    trigger       TEXT NOT NULL,          -- upload | button | freeze | folder | dicom
    patient_id    TEXT,                   -- optional, local only
    bundle_sha256 TEXT NOT NULL,
    exam_json     TEXT NOT NULL,          -- the exam as the API returns it (inputs, outputs, timings, roi...)
    frame_png     BLOB NOT NULL,
    roi_png       BLOB NOT NULL,          -- empty: derived from frame_png + exam_json.roi on read
    overlay_png   BLOB NOT NULL,
    frame_pending INTEGER NOT NULL DEFAULT 0  -- 1: frame_png stored uncompressed, recompress when idle
);
CREATE INDEX IF NOT EXISTS exams_created ON exams(created);
CREATE TABLE IF NOT EXISTS pacs_pushes (   -- successful C-STOREs: retention never deletes an unpushed exam
    exam_id INTEGER NOT NULL, pacs TEXT NOT NULL, pushed TEXT NOT NULL, PRIMARY KEY (exam_id, pacs)
);
CREATE TABLE IF NOT EXISTS deleted_exams (  -- tombstones: an open page of a deleted exam says why it is gone
    id INTEGER PRIMARY KEY, deleted TEXT NOT NULL, reason TEXT NOT NULL
);
"""

class StoreError(EdgeError, RuntimeError):
    """The exam database cannot be opened or written."""


class StoreFullError(StoreError):
    """No room: free space under the watermark, or SQLite said "database or disk is full". Nothing stored."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ExamStore:
    """Thread-safe exam store; one connection guarded by a lock (the daemon writes a few exams a minute)."""

    def __init__(self, data_dir: str | Path, min_free_bytes: int = 0):
        self.min_free_bytes = int(min_free_bytes)
        self.full_error = ""  # SQLite's last "disk full" refusal, cleared by the next successful write
        self.data_dir = Path(data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {self.data_dir}: {exc}") from exc
        self.path = self.data_dir / "exams.sqlite3"
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new database only
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against kill -9; power loss: see above
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(exams)")}
            if "frame_pending" not in columns:  # database from before the recompression lever
                self._db.execute("ALTER TABLE exams ADD COLUMN frame_pending INTEGER NOT NULL DEFAULT 0")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._ensure_incremental_vacuum()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open exam database {self.path}: {exc}") from exc
        self.recompress_idle_s = RECOMPRESS_IDLE_S
        self._last_write = time.monotonic()
        self._pending: deque[int] = deque(self._uncompressed_frames())  # left over from a previous run
        self._work = threading.Event()
        self._closing = False
        self._background = threading.Thread(target=self._background_loop, name="noa-store", daemon=True)
        self._background.start()

    def _ensure_incremental_vacuum(self) -> None:
        """A database made before auto_vacuum=INCREMENTAL: convert it once (VACUUM rewrites the whole file,
        so only when small), else say how to do it offline."""
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        size = self.path.stat().st_size
        if size > CONVERT_VACUUM_MAX_BYTES:
            log.warning("exam database is %.0f MB and not in incremental-vacuum mode: it will not shrink after "
                        "recompression; convert it offline with sqlite3 exams.sqlite3 "
                        "'PRAGMA auto_vacuum=INCREMENTAL; VACUUM;'", size / 1e6)
            return
        self._db.execute("VACUUM")  # applies the auto_vacuum=INCREMENTAL set above
        log.info("exam database converted to incremental vacuum (%.1f MB)", size / 1e6)

    def free_bytes(self) -> int | None:
        """Free space for this database on its filesystem (None if it cannot be read)."""
        try:
            return int(shutil.disk_usage(self.data_dir).free)
        except OSError:
            return None

    def storage_status(self) -> dict:
        """Free space, the watermark and whether writes are refused now (low space or SQLite full)."""
        free = self.free_bytes()
        if free is not None and free < self.min_free_bytes:
            problem = f"free space {free / 1e6:.0f} MB is under the {self.min_free_bytes / 1e6:.0f} MB watermark"
        else:
            problem = self.full_error
        return {"free_bytes": free, "min_free_bytes": self.min_free_bytes, "ok": not problem,
                "problem": problem, "db_bytes": self.db_bytes()}

    def db_bytes(self) -> int:
        """The database file plus its WAL, on disk."""
        return sum(p.stat().st_size for p in (self.path, self.path.with_name(self.path.name + "-wal"))
                   if p.exists())

    def check_space(self) -> None:
        """Refuse (StoreFullError) when free space is under the watermark, before anything is written."""
        free = self.free_bytes()
        if free is not None and free < self.min_free_bytes:
            raise StoreFullError(f"not enough free disk space for the exam store: {free / 1e6:.0f} MB free, "
                                 f"{self.min_free_bytes / 1e6:.0f} MB required (--min-free-mb); free space "
                                 "or move --data-dir; nothing stored")

    def _uncompressed_frames(self) -> list[int]:
        """Exams whose frame was stored uncompressed and not yet recompressed (e.g. by a previous run)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM exams WHERE frame_pending = 1 ORDER BY id")]

    def _background_loop(self) -> None:
        """Off the analysis path, on its own FULL-sync connection: after each commit a PASSIVE checkpoint
        (WAL fsync, copy, db fsync: the newest exam reaches the disk, see the module docstring); when idle,
        recompress pending frames one at a time (a new commit comes first)."""
        db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        recompressed = 0
        try:
            db.execute("PRAGMA synchronous=FULL")
            while not self._closing:
                idle_left = (None if not self._pending
                             else max(0.0, self.recompress_idle_s - (time.monotonic() - self._last_write)))
                if self._work.wait(idle_left):
                    self._work.clear()
                elif self._pending:
                    recompressed += self._recompress_frame(db, self._pending.popleft())
                    if recompressed and (recompressed >= VACUUM_EVERY or not self._pending):
                        self._incremental_vacuum(db)
                        recompressed = 0
                if not self._closing:
                    self._checkpoint(db)
        finally:
            db.close()

    @staticmethod
    def _checkpoint(db: sqlite3.Connection) -> None:
        try:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("background checkpoint failed (exams stay in the WAL until the next one): %s", exc)

    @staticmethod
    def _incremental_vacuum(db: sqlite3.Connection) -> None:
        """Give the pages freed by recompression back to the filesystem; the next TRUNCATE checkpoint
        shrinks the database file and its WAL."""
        try:
            db.executescript("PRAGMA incremental_vacuum;")  # run to completion (execute() frees one page)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning("incremental vacuum failed (the file shrinks at the next one): %s", exc)

    @staticmethod
    def _recompress_frame(db: sqlite3.Connection, exam_id: int) -> int:
        """1 when the frame was recompressed."""
        try:
            row = db.execute("SELECT frame_png FROM exams WHERE id = ?", (exam_id,)).fetchone()
            if row is not None:
                db.execute("UPDATE exams SET frame_png = ?, frame_pending = 0 WHERE id = ?",
                           (_recompressed_png(bytes(row[0])), exam_id))
                return 1
        except Exception as exc:  # noqa: BLE001 - the uncompressed frame is valid; keep it and say why
            log.warning("exam %s: frame left uncompressed (%s: %s)", exam_id, type(exc).__name__, exc)
        return 0

    def close(self) -> None:
        """Stops the background thread (frames still pending stay uncompressed; the next open queues them)."""
        self._closing = True
        self._work.set()
        self._background.join(timeout=30)
        with self._lock:
            self._db.close()

    def add_exam(self, exam: Exam, frame_png: bytes, roi_png: bytes | None, overlay_png: bytes, *,
                 recompress_frame: bool = False) -> Exam:
        """Insert one exam (JSON-able dict) and its images atomically; returns it with id/uid/created.
        roi_png None (what the daemon passes) stores no ROI image: it is derived from frame + exam["roi"].
        recompress_frame: frame_png was written uncompressed; recompress it losslessly when idle."""
        for name, blob in (("frame_png", frame_png), ("overlay_png", overlay_png)):
            if not isinstance(blob, (bytes, bytearray)) or not blob:
                raise StoreError(f"exam image {name} is empty; nothing stored")
        if roi_png is None:
            roi = exam.get("roi")
            if not (isinstance(roi, (list, tuple)) and len(roi) == 4):
                raise StoreError(f"exam has no roi [x, y, w, h] (got {roi!r}) to derive its ROI image from; "
                                 "nothing stored")
            size = exam.get("frame_size") or [1 << 30, 1 << 30]  # bounds checked when the frame size is known
            problem = box_problem(roi, int(size[0]), int(size[1]))
            if problem:
                raise StoreError(f"{problem}; nothing stored")
            roi_png = b""
        elif not isinstance(roi_png, (bytes, bytearray)) or not roi_png:
            raise StoreError("exam image roi_png is empty; nothing stored")
        exam = Exam(**exam)
        exam.setdefault("uid", uuid.uuid4().hex)
        exam.setdefault("created", utc_now())
        exam.pop("id", None)
        try:
            exam_json = json.dumps(exam, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"exam not stored: not serialisable ({exc})") from exc
        self.check_space()
        row = (exam["uid"], exam["created"], exam.get("trigger", "upload"), exam.get("patient_id") or None,
               str((exam.get("bundle") or {}).get("sha256", "")), exam_json,
               bytes(frame_png), bytes(roi_png), bytes(overlay_png), int(bool(recompress_frame)))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO exams (uid, created, trigger, patient_id, bundle_sha256, exam_json, frame_png, "
                    "roi_png, overlay_png, frame_pending) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc):
                    self.full_error = f"the exam database could not grow ({exc})"
                    raise StoreFullError(f"exam not stored: {exc}; free disk space or move --data-dir") from exc
                raise StoreError(f"exam not stored: {exc}") from exc
            self._last_write = time.monotonic()
            self.full_error = ""
        exam_id = cur.lastrowid
        assert exam_id is not None  # set by the INSERT just committed
        if recompress_frame:
            self._pending.append(exam_id)
        self._work.set()
        return {"id": exam_id, **exam}

    def get_exam(self, exam_id: int, with_images: bool = False) -> Exam | None:
        """The exam dict (as stored) plus `id`; with_images adds frame_png/overlay_png bytes (the ROI image
        is derived on demand by get_image(id, "roi"): reports and exports never read it)."""
        cols = "id, exam_json" + (", frame_png, overlay_png" if with_images else "")
        if not _valid_id(exam_id):
            return None
        with self._lock:
            row = self._db.execute(f"SELECT {cols} FROM exams WHERE id = ?", (int(exam_id),)).fetchone()
        if row is None:
            return None
        exam = Exam(id=row[0], **json.loads(row[1]))
        if with_images:
            exam["frame_png"], exam["overlay_png"] = bytes(row[2]), bytes(row[3])
        return exam

    def list_exams(self, limit: int = 50, offset: int = 0, *, patient_id: str | None = None,
                   since_id: int | None = None, day: date | None = None) -> list[Exam]:
        """Newest first; with since_id the exams after it, oldest first. Filters: patient_id, day (a local date)."""
        limit, offset = min(max(int(limit), 0), MAX_ID), min(max(int(offset), 0), MAX_ID)
        where, params = _filters(patient_id, since_id, day)
        order = "ASC" if since_id is not None else "DESC"
        with self._lock:
            rows = self._db.execute(f"SELECT id, exam_json FROM exams{where} ORDER BY id {order} LIMIT ? OFFSET ?",
                                    (*params, int(limit), int(offset))).fetchall()
        return [Exam(id=r[0], **json.loads(r[1])) for r in rows]

    def count(self, *, patient_id: str | None = None, since_id: int | None = None, day: date | None = None) -> int:
        where, params = _filters(patient_id, since_id, day)
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM exams{where}", params).fetchone()[0])

    def get_image(self, exam_id: int, kind: str) -> bytes | None:
        if kind not in IMAGE_KINDS:
            raise ValueError(f"unknown image kind {kind!r}; one of {', '.join(IMAGE_KINDS)}")
        if not _valid_id(exam_id):
            return None
        if kind == "roi":
            with self._lock:
                row = self._db.execute("SELECT roi_png, frame_png, exam_json FROM exams WHERE id = ?",
                                       (int(exam_id),)).fetchone()
            if row is None:
                return None
            return bytes(row[0]) or _derived_roi_png(bytes(row[1]), json.loads(row[2])["roi"])
        with self._lock:
            row = self._db.execute(f"SELECT {kind}_png FROM exams WHERE id = ?", (int(exam_id),)).fetchone()
        return bytes(row[0]) if row else None

    # ------------------------------------------------------------------ retention (edge/retention.py)
    def record_push(self, exam_id: int, pacs: str) -> None:
        """Remember that every object of this exam reached `pacs` (the retention rule reads it)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pacs_pushes (exam_id, pacs, pushed) VALUES (?, ?, ?)",
                             (int(exam_id), pacs, utc_now()))

    def retention_rows(self) -> list[tuple[int, str, int, list[str]]]:
        """(id, created, bytes, PACS it was pushed to) of every exam, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT e.id, e.created, length(e.frame_png) + length(e.roi_png) + length(e.overlay_png) "
                "+ length(e.exam_json), (SELECT group_concat(p.pacs, char(10)) FROM pacs_pushes p "
                "WHERE p.exam_id = e.id) FROM exams e ORDER BY e.created, e.id").fetchall()
        return [(r[0], r[1], int(r[2]), r[3].split("\n") if r[3] else []) for r in rows]

    def delete_exam(self, exam_id: int, reason: str) -> bool:
        """Delete one exam, its push records, and leave a tombstone, in ONE transaction (all or nothing)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute("DELETE FROM exams WHERE id = ?", (int(exam_id),))
                self._db.execute("DELETE FROM pacs_pushes WHERE exam_id = ?", (int(exam_id),))
                if cur.rowcount:
                    self._db.execute("INSERT OR REPLACE INTO deleted_exams (id, deleted, reason) VALUES (?, ?, ?)",
                                     (int(exam_id), utc_now(), reason))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"exam {exam_id} not deleted: {exc}") from exc
        self._work.set()  # the background thread checkpoints; freed pages go back at the next vacuum
        return cur.rowcount > 0

    def shrink(self) -> None:
        """Give pages freed by deletions back to the filesystem (incremental vacuum, then a TRUNCATE checkpoint)."""
        with self._lock:
            self._incremental_vacuum(self._db)

    def missing(self, exam_id) -> str:
        """Why an exam id has no exam: deleted by retention (when, why) or never stored."""
        row = None
        if _valid_id(exam_id):
            with self._lock:
                row = self._db.execute("SELECT deleted, reason FROM deleted_exams WHERE id = ?",
                                       (int(exam_id),)).fetchone()
        if row is None:
            return f"exam {exam_id} not found"
        return f"exam {exam_id} was deleted on {row[0][:10]} by the retention policy ({row[1]})"

    def integrity_problems(self) -> list[str]:
        """Rows with a missing part (should never exist: every insert is one transaction)."""
        with self._lock:
            ok = self._db.execute("PRAGMA integrity_check").fetchone()[0]
            bad = self._db.execute(
                "SELECT id FROM exams WHERE length(frame_png) = 0 OR length(overlay_png) = 0 "
                "OR NOT json_valid(exam_json) "
                "OR (length(roi_png) = 0 AND json_array_length(exam_json, '$.roi') IS NOT 4)").fetchall()
        problems = [] if ok == "ok" else [f"sqlite integrity_check: {ok}"]
        return problems + [f"exam {r[0]} is incomplete" for r in bad]



def _filters(patient_id: str | None, since_id: int | None, day: date | None) -> tuple[str, list]:
    """SQL WHERE clause + parameters for list_exams/count. `day` is a local calendar day: its UTC range
    (created is stored in UTC), so "today" on the cart means the cart's today."""
    clauses: list[str] = []
    params: list[str | int] = []
    if patient_id is not None:
        clauses.append("patient_id = ?")
        params.append(str(patient_id))
    if since_id is not None:
        clauses.append("id > ?")
        params.append(min(max(int(since_id), 0), MAX_ID))
    if day is not None:
        start, end = (datetime.combine(d, datetime.min.time()).astimezone(timezone.utc)  # naive = local time
                      for d in (day, day + timedelta(days=1)))
        clauses.append("created >= ? AND created < ?")
        params += [start.isoformat(timespec="milliseconds"), end.isoformat(timespec="milliseconds")]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _valid_id(exam_id) -> bool:
    try:
        return 1 <= int(exam_id) <= MAX_ID
    except (TypeError, ValueError, OverflowError):
        return False


def _derived_roi_png(frame_png: bytes, roi) -> bytes:
    """The ROI image of an exam stored without one: its frame cropped to its ROI, as the pipeline shows it."""
    frame = decode_png_rgb(frame_png)
    if frame is None:
        raise StoreError("stored frame is not a readable PNG; cannot derive the ROI image")
    return png_bytes(roi_view(frame, roi))


def _recompressed_png(png: bytes) -> bytes:
    """The same pixels as a level-1 PNG (gray stays gray)."""
    img = decode_png_rgb(png)
    if img is None or img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise StoreError("stored frame is not an 8-bit gray or RGB PNG")
    return png_bytes(img, level=1)
