"""Exam store: one SQLite file (WAL) in the daemon's data directory.

Every exam is written in ONE transaction (images as BLOBs next to the numbers), so a result is stored
whole or not at all, and a kill -9 mid-write leaves the previous state. WAL with synchronous=FULL makes a
committed exam survive a crash or power cut; readers (the page) never block the writer.
Patient identifiers are optional and stay in this file only (never logged).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

SCHEMA_VERSION = 1
IMAGE_KINDS = ("frame", "roi", "overlay")

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
    roi_png       BLOB NOT NULL,
    overlay_png   BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS exams_created ON exams(created);
"""

class StoreError(RuntimeError):
    """The exam database cannot be opened or written."""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ExamStore:
    """Thread-safe exam store; one connection guarded by a lock (the daemon writes a few exams a minute)."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create data directory {self.data_dir}: {exc}") from exc
        self.path = self.data_dir / "exams.sqlite3"
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open exam database {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_exam(self, exam: dict, frame_png: bytes, roi_png: bytes, overlay_png: bytes) -> dict:
        """Insert one exam (JSON-able dict) and its three PNGs atomically; returns it with id/uid/created."""
        for name, blob in (("frame_png", frame_png), ("roi_png", roi_png), ("overlay_png", overlay_png)):
            if not isinstance(blob, (bytes, bytearray)) or not blob:
                raise StoreError(f"exam image {name} is empty; nothing stored")
        exam = dict(exam)
        exam.setdefault("uid", uuid.uuid4().hex)
        exam.setdefault("created", utc_now())
        exam.pop("id", None)
        try:
            exam_json = json.dumps(exam, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"exam not stored: not serialisable ({exc})") from exc
        row = (exam["uid"], exam["created"], exam.get("trigger", "upload"), exam.get("patient_id") or None,
               str((exam.get("bundle") or {}).get("sha256", "")), exam_json,
               bytes(frame_png), bytes(roi_png), bytes(overlay_png))
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO exams (uid, created, trigger, patient_id, bundle_sha256, exam_json, frame_png, "
                    "roi_png, overlay_png) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"exam not stored: {exc}") from exc
        return {"id": cur.lastrowid, **exam}

    def get_exam(self, exam_id: int, with_images: bool = False) -> dict | None:
        """The exam dict (as stored) plus `id`; with_images adds frame_png/roi_png/overlay_png bytes."""
        cols = "id, exam_json" + (", frame_png, roi_png, overlay_png" if with_images else "")
        with self._lock:
            row = self._db.execute(f"SELECT {cols} FROM exams WHERE id = ?", (int(exam_id),)).fetchone()
        if row is None:
            return None
        exam = {"id": row[0], **json.loads(row[1])}
        if with_images:
            exam.update(frame_png=bytes(row[2]), roi_png=bytes(row[3]), overlay_png=bytes(row[4]))
        return exam

    def list_exams(self, limit: int = 50, offset: int = 0) -> list[dict]:
        with self._lock:
            rows = self._db.execute("SELECT id, exam_json FROM exams ORDER BY id DESC LIMIT ? OFFSET ?",
                                    (int(limit), int(offset))).fetchall()
        return [{"id": r[0], **json.loads(r[1])} for r in rows]

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM exams").fetchone()[0])

    def get_image(self, exam_id: int, kind: str) -> bytes | None:
        if kind not in IMAGE_KINDS:
            raise ValueError(f"unknown image kind {kind!r}; one of {', '.join(IMAGE_KINDS)}")
        with self._lock:
            row = self._db.execute(f"SELECT {kind}_png FROM exams WHERE id = ?", (int(exam_id),)).fetchone()
        return bytes(row[0]) if row else None

    def integrity_problems(self) -> list[str]:
        """Rows with a missing part (should never exist: every insert is one transaction)."""
        with self._lock:
            ok = self._db.execute("PRAGMA integrity_check").fetchone()[0]
            bad = self._db.execute(
                "SELECT id FROM exams WHERE length(frame_png) = 0 OR length(roi_png) = 0 "
                "OR length(overlay_png) = 0 OR NOT json_valid(exam_json)").fetchall()
        problems = [] if ok == "ok" else [f"sqlite integrity_check: {ok}"]
        return problems + [f"exam {r[0]} is incomplete" for r in bad]

