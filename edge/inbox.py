"""Durable intake for pushed images: stored first, acknowledged second, analysed in order by one worker.

A C-STORE object (edge/dicom_scp.py) or a new file of a watched folder (edge/capture.py FolderSource)
is written to `inbox.sqlite3` in the data directory (WAL, synchronous=FULL: the commit is fsync'd)
BEFORE the cart gets Success or the file counts as taken. One worker thread (InboxWorker) takes the
items oldest first, decodes the frame the daemon uses, hands it to `on_still` (Daemon._on_still: the one
entry point of automatic analyses) and marks it done; items still queued when the daemon stops (or is
killed) are analysed after the restart. Nothing is replaced by a newer item: live video alone keeps
newest-frame-only (edge/capture.py), by design.

- Duplicates: an object whose SOP Instance UID (DICOM) or, without one, whose content (sha256) is already
  in the inbox (queued or done; a failed one may be sent again) is not queued again: put() answers
  "duplicate" (the SCP answers Success, since the object is stored) and the caller logs the repeat. Done
  items keep their identity (not their bytes) for this.
- Full: when `max_items` items or `max_bytes` bytes wait, put() answers "full" and nothing is written;
  the SCP answers 0xA700 Out of Resources, the folder leaves the file for a later poll.
- Folder "taken": a file is taken once its row is committed here, identified by (folder, name, size,
  mtime); the file stays where the cart put it (read-only shares work) and is never taken twice. The
  first time a folder is watched, the files already in it are recorded as history, not analysed; files
  that arrive while the daemon is down are new at the next start.
- A failed decode (bad file) marks the item failed with the reason, logged, its bytes dropped. A failed
  analysis is retried (up to `max_attempts`, `retry_s` apart) before it is marked failed (bytes kept for
  inspection); a transient one (the store out of disk space) is retried without limit, the queue waits. An item that
  was being analysed when the process died is analysed again after the restart, unless `already_done`
  finds its exam (DICOM: by SOP Instance UID among the newest exams).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EdgeError

log = logging.getLogger("noa_edge.inbox")

DEFAULT_MAX_ITEMS = 1000
DEFAULT_MAX_BYTES = 2 * 1024**3
KEEP_FINISHED = 20_000  # finished items remembered (identity only) for duplicate detection

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    received         REAL NOT NULL,        -- unix time
    kind             TEXT NOT NULL,        -- dicom | folder (the exam's trigger)
    name             TEXT NOT NULL,        -- file name or "C-STORE from AE (SOP instance …)"; no patient data
    sop_instance_uid TEXT,
    sha256           TEXT NOT NULL,
    info             TEXT NOT NULL,        -- JSON: identifiers for the exam (may hold the patient ID)
    data             BLOB,                 -- the object as received; NULL once finished
    nbytes           INTEGER NOT NULL,
    state            TEXT NOT NULL,        -- queued | done | failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    finished         REAL
);
CREATE INDEX IF NOT EXISTS items_state ON items(state, id);
CREATE INDEX IF NOT EXISTS items_sop ON items(sop_instance_uid);
CREATE INDEX IF NOT EXISTS items_sha ON items(sha256);
CREATE TABLE IF NOT EXISTS files (          -- files of watched folders already taken, or there before
    folder   TEXT NOT NULL,
    name     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    item_id  INTEGER,                       -- NULL: history (there when the folder was first watched)
    PRIMARY KEY (folder, name, size, mtime_ns)
);
CREATE TABLE IF NOT EXISTS folders (folder TEXT PRIMARY KEY, first_watched REAL NOT NULL);
"""


class InboxError(EdgeError, RuntimeError):
    """The inbox database cannot be opened or written."""


@dataclass
class Item:
    id: int
    received: float
    kind: str
    name: str
    sop_instance_uid: str | None
    info: dict
    data: bytes
    attempts: int


@dataclass
class PutResult:
    status: str          # queued | duplicate | full
    item_id: int | None
    detail: str = ""


FileKey = tuple[str, str, int, int]  # folder, name, size, mtime_ns


class Inbox:
    """Thread-safe: the SCP's association threads, the folder watcher and the worker share one connection."""

    def __init__(self, data_dir: str | Path, max_items: int = DEFAULT_MAX_ITEMS, max_bytes: int = DEFAULT_MAX_BYTES):
        self.path = Path(data_dir) / "inbox.sqlite3"
        self.max_items, self.max_bytes = int(max_items), int(max_bytes)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.duplicates = 0
        self.refused_full = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the cart hears Success
            self._db.executescript(_SCHEMA)
            self._prune()
        except (OSError, sqlite3.Error) as exc:
            raise InboxError(f"cannot open the inbox {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- intake
    def put(self, data: bytes, *, kind: str, name: str, info: dict | None = None,
            sop_instance_uid: str | None = None, file: FileKey | None = None) -> PutResult:
        """Store one object durably (or recognise it as a repeat, or refuse it: inbox full)."""
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = self._put_locked(data, sha, kind, name, info or {}, sop_instance_uid, file)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # disk full, I/O error: not stored, say so
                log.error("inbox: %s not stored: %s", name, exc)
                self.refused_full += 1
                return PutResult("full", None, f"inbox not writable: {exc}")
        if result.status == "queued":
            self._wake.set()
        elif result.status == "duplicate":
            self.duplicates += 1
        else:
            self.refused_full += 1
        return result

    def _put_locked(self, data, sha, kind, name, info, sop_uid, file) -> PutResult:
        if sop_uid:
            row = self._db.execute("SELECT id FROM items WHERE sop_instance_uid = ? AND state != 'failed' LIMIT 1",
                                   (sop_uid,)).fetchone()
        else:
            row = self._db.execute("SELECT id FROM items WHERE sha256 = ? AND sop_instance_uid IS NULL "
                                   "AND state != 'failed' LIMIT 1",
                                   (sha,)).fetchone()
        if row is not None:
            self._record_file(file, row[0])
            return PutResult("duplicate", row[0], f"same {'SOP Instance UID' if sop_uid else 'content'} as "
                                                  f"inbox item {row[0]}")
        n, nbytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM items "
                                     "WHERE state = 'queued'").fetchone()
        if n + 1 > self.max_items or nbytes + len(data) > self.max_bytes:
            return PutResult("full", None, f"{n} items / {nbytes / 1e6:.1f} MB waiting (limits {self.max_items} "
                                           f"items / {self.max_bytes / 1e6:.0f} MB)")
        cur = self._db.execute(
            "INSERT INTO items (received, kind, name, sop_instance_uid, sha256, info, data, nbytes, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued')",
            (time.time(), kind, name, sop_uid, sha, json.dumps(info), sqlite3.Binary(data), len(data)))
        self._record_file(file, cur.lastrowid)
        return PutResult("queued", cur.lastrowid)

    def _record_file(self, file: FileKey | None, item_id: int | None) -> None:
        if file is not None:
            self._db.execute("INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, ?)", (*file, item_id))

    # -- watched folders
    def watch_folder(self, folder: str, existing: list[FileKey]) -> bool:
        """The first time `folder` is watched, record the files already there as history (not analysed).
        True when this was the first time."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM folders WHERE folder = ?", (folder,)).fetchone():
                    self._db.execute("COMMIT")
                    return False
                self._db.execute("INSERT INTO folders VALUES (?, ?)", (folder, time.time()))
                self._db.executemany("INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, NULL)", existing)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def file_taken(self, file: FileKey) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM files WHERE folder = ? AND name = ? AND size = ? AND mtime_ns = ?",
                                    file).fetchone() is not None

    # -- worker side
    def next_item(self) -> Item | None:
        """The oldest queued item."""
        with self._lock:
            row = self._db.execute("SELECT id, received, kind, name, sop_instance_uid, info, data, attempts "
                                   "FROM items WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return Item(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]), bytes(row[6] or b""), row[7])

    def begin(self, item_id: int) -> None:
        """Count an attempt before analysing (a crash mid-analysis shows as attempts > 0 after restart)."""
        with self._lock:
            self._db.execute("UPDATE items SET attempts = attempts + 1 WHERE id = ?", (item_id,))

    def finish(self, item_id: int, error: str | None = None, keep_data: bool = False) -> None:
        """done (error None) or failed; the bytes are dropped (kept with keep_data: an object that could
        not be analysed stays for inspection), the identity kept for duplicate detection."""
        with self._lock:
            self._db.execute("UPDATE items SET state = ?, error = ?, data = CASE WHEN ? THEN data END, "
                             "finished = ? WHERE id = ?",
                             ("failed" if error else "done", error, keep_data, time.time(), item_id))

    def uncount_attempt(self, item_id: int) -> None:
        """A transient failure (e.g. disk space) does not count towards giving up."""
        with self._lock:
            self._db.execute("UPDATE items SET attempts = MAX(attempts - 1, 0) WHERE id = ?", (item_id,))

    def wait(self, timeout: float) -> None:
        self._wake.wait(timeout)
        self._wake.clear()

    def stats(self) -> dict:
        with self._lock:
            depth, nbytes, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(nbytes), 0), MIN(received) FROM items WHERE state = 'queued'").fetchone()
            counts = dict(self._db.execute("SELECT state, COUNT(*) FROM items WHERE state != 'queued' GROUP BY state"))
        age = None if oldest is None else round(time.time() - oldest, 1)
        return {"depth": depth, "bytes": nbytes, "oldest_age_s": age,
                "done": counts.get("done", 0), "failed": counts.get("failed", 0), "duplicates": self.duplicates,
                "refused_full": self.refused_full, "max_items": self.max_items, "max_bytes": self.max_bytes}

    def _prune(self) -> None:
        """Forget all but the newest KEEP_FINISHED finished items (their identities only)."""
        self._db.execute("DELETE FROM items WHERE state != 'queued' AND id <= "
                         "(SELECT id FROM items WHERE state != 'queued' ORDER BY id DESC LIMIT 1 OFFSET ?)",
                         (KEEP_FINISHED,))


class InboxWorker:
    """One thread: oldest item first → decode → on_frame(frame) (the live view) → on_still(frame, kind,
    info) → done. `decode(data, name)` returns (uint8 RGB frame, dict added to the still's info, e.g.
    n_frames/frame_index) or raises (a bad item fails at once)."""

    def __init__(self, inbox: Inbox, decode: Callable[[bytes, str], tuple[np.ndarray, dict]],
                 on_still: Callable[[np.ndarray, str, dict], None] | None = None,
                 on_frame: Callable[[np.ndarray], None] | None = None,
                 already_done: Callable[[Item], bool] | None = None, transient: tuple[type, ...] = (),
                 max_attempts: int = 3, retry_s: float = 5.0):
        self.inbox, self.decode, self.on_still, self.on_frame = inbox, decode, on_still, on_frame
        self.already_done, self.max_attempts, self.retry_s = already_done, max_attempts, retry_s
        self.transient = transient  # analysis errors retried without limit (the item waits, in order)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="noa-inbox-worker", daemon=True)
        self._tried: set[int] = set()  # items attempted by this process (others with attempts > 0: a crash)
        self.processed = 0

    def start(self) -> InboxWorker:
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.inbox._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.inbox.next_item()
            except sqlite3.Error as exc:
                log.error("inbox: cannot read the next item: %s", exc)
                item = None
            if item is None:
                self.inbox.wait(1.0)
                continue
            self._process(item)

    def _process(self, item: Item) -> None:
        if item.attempts >= self.max_attempts:
            self._fail(item, f"gave up after {item.attempts} attempts")
            return
        interrupted = item.attempts > 0 and item.id not in self._tried
        if interrupted and self.already_done is not None and self.already_done(item):
            log.info("inbox item %d (%s): its exam was stored before the restart; marked done", item.id, item.name)
            self.inbox.finish(item.id)
            return
        if interrupted:
            log.info("inbox item %d (%s): was being analysed when the daemon stopped; analysing again",
                     item.id, item.name)
        self._tried.add(item.id)
        self.inbox.begin(item.id)
        try:
            frame, decoded_info = self.decode(item.data, item.name)
        except Exception as exc:  # noqa: BLE001 - a bad object: nothing to retry
            self._fail(item, f"cannot decode: {exc}")
            return
        if self.on_frame is not None:
            self.on_frame(frame)
        if self.on_still is not None:
            try:
                self.on_still(frame, item.kind, {**item.info, **decoded_info, "inbox_item": item.id})
            except Exception as exc:  # noqa: BLE001 - type only: a downstream message could carry patient data
                if isinstance(exc, self.transient):
                    self.inbox.uncount_attempt(item.id)
                    log.warning("inbox item %d (%s): cannot be analysed now (%s); it waits, retry in %.0f s",
                                item.id, item.name, type(exc).__name__, self.retry_s)
                    self._stop.wait(self.retry_s)
                elif item.attempts + 1 >= self.max_attempts:
                    self._fail(item, f"analysis failed {item.attempts + 1} times ({type(exc).__name__})",
                               keep_data=True)
                else:
                    log.warning("inbox item %d (%s): analysis failed (%s); retry in %.0f s", item.id, item.name,
                                type(exc).__name__, self.retry_s)
                    self._stop.wait(self.retry_s)
                return
        self.inbox.finish(item.id)
        self.processed += 1

    def _fail(self, item: Item, reason: str, keep_data: bool = False) -> None:
        log.warning("inbox item %d (%s): failed, not analysed: %s", item.id, item.name, reason)
        self.inbox.finish(item.id, reason, keep_data)


def exam_stored_for(list_exams: Callable[..., list], item: Item, recent: int = 20) -> bool:
    """`already_done` for the daemon: is there an exam for this DICOM object among the newest `recent`
    exams (matched by SOP Instance UID)? Objects without one (folder PNG/JPEG) are analysed again."""
    uid = item.info.get("sop_instance_uid")
    return bool(uid) and any(e.get("sop_instance_uid") == uid for e in list_exams(limit=recent))
