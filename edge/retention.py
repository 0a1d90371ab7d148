"""Retention: the cart keeps exams within --keep-days, --max-exams and --max-disk-mb, oldest first.

The demo stores ~0.5 GB an hour; a cart left running fills its disk. Each pass (at start, then every
RETENTION_EVERY_S) walks the exams oldest first and deletes one while any limit is exceeded: older than
keep_days, more than max_exams left, or more than max_disk_mb of exam data left (images and JSON as
stored; the database file follows after the incremental vacuum). An exam NOT yet pushed to the configured
--pacs is never deleted: it is counted as kept-because-unpushed (in /metrics and the log) and still counts
toward the limits, so the pushed exams after it go first. Without --pacs there is nowhere an exam could
also live, and the limits apply to every exam. Each deletion is one store transaction; an open page of a
deleted exam answers 404 saying it was deleted by retention and why.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from .errors import EdgeError
from .store import ExamStore, StoreError

log = logging.getLogger("noa_edge.retention")

RETENTION_EVERY_S = 600.0


class RetentionConfigError(EdgeError, ValueError):
    """A retention limit that cannot work."""


@dataclass(frozen=True)
class RetentionPolicy:
    keep_days: float | None = None
    max_exams: int | None = None
    max_disk_mb: float | None = None
    pacs: str | None = None  # the configured PACS: an exam not pushed there is never deleted

    def __post_init__(self) -> None:
        if self.keep_days is not None and self.keep_days <= 0:
            raise RetentionConfigError("--keep-days must be > 0 (omit it to keep exams of any age)")
        if self.max_exams is not None and self.max_exams < 1:
            raise RetentionConfigError("--max-exams must be ≥ 1 (omit it for no limit)")
        if self.max_disk_mb is not None and self.max_disk_mb <= 0:
            raise RetentionConfigError("--max-disk-mb must be > 0 (omit it for no limit)")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.keep_days, self.max_exams, self.max_disk_mb))


@dataclass
class Deletion:
    exam_id: int
    bytes: int
    reason: str


def plan(rows: list[tuple[int, str, int, list[str]]], policy: RetentionPolicy,
         now: datetime | None = None) -> tuple[list[Deletion], list[int]]:
    """(exams to delete, exams a limit wanted but kept because not pushed) from store.retention_rows()."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=policy.keep_days) if policy.keep_days is not None else None
    left_n, left_bytes = len(rows), sum(r[2] for r in rows)
    max_bytes = policy.max_disk_mb * 1e6 if policy.max_disk_mb is not None else None
    delete, kept = [], []
    for exam_id, created, size, pushed_to in rows:
        if cutoff is not None and datetime.fromisoformat(created) < cutoff:
            reason = f"older than {policy.keep_days:g} days (--keep-days)"
        elif policy.max_exams is not None and left_n > policy.max_exams:
            reason = f"more than {policy.max_exams} exams (--max-exams)"
        elif max_bytes is not None and left_bytes > max_bytes:
            reason = f"more than {policy.max_disk_mb:g} MB of exams (--max-disk-mb)"
        else:
            continue
        if policy.pacs and policy.pacs not in pushed_to:
            kept.append(exam_id)
            continue
        delete.append(Deletion(exam_id, size, reason))
        left_n -= 1
        left_bytes -= size
    return delete, kept


@dataclass
class RetentionStats:
    runs: int = 0
    deleted_total: int = 0
    bytes_freed_total: int = 0
    kept_unpushed: int = 0          # at the last run
    last_run: str = ""
    last_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report(self) -> dict:
        with self.lock:
            return {"runs": self.runs, "deleted_total": self.deleted_total,
                    "bytes_freed_total": self.bytes_freed_total, "kept_unpushed": self.kept_unpushed,
                    "last_run": self.last_run, "last_error": self.last_error}


def run_once(store: ExamStore, policy: RetentionPolicy, stats: RetentionStats,
             now: datetime | None = None) -> tuple[int, int, int]:
    """One pass: (deleted, bytes freed, kept because unpushed). Each exam is deleted in its own transaction,
    so a failure halfway leaves every exam whole (deleted or not)."""
    deleted = freed = 0
    error = ""
    kept: list[int] = []
    if policy.active:
        todo, kept = plan(store.retention_rows(), policy, now)
        try:
            for d in todo:
                if store.delete_exam(d.exam_id, d.reason):
                    deleted += 1
                    freed += d.bytes
            if deleted:
                store.shrink()
        except StoreError as exc:
            error = str(exc)
            log.error("retention stopped after %d deletion(s): %s", deleted, exc)
    with stats.lock:
        stats.runs += 1
        stats.deleted_total += deleted
        stats.bytes_freed_total += freed
        stats.kept_unpushed = len(kept)
        stats.last_run = datetime.now(timezone.utc).isoformat(timespec="seconds")
        stats.last_error = error
    if deleted or kept:
        log.info("retention: deleted %d exam(s), %.1f MB freed; %d kept because not yet pushed to PACS %s",
                 deleted, freed / 1e6, len(kept), policy.pacs or "-")
    return deleted, freed, len(kept)


class RetentionWorker:
    """run_once at start, then every `every_s` seconds, in one thread."""

    def __init__(self, store: ExamStore, policy: RetentionPolicy, every_s: float = RETENTION_EVERY_S):
        self.store, self.policy, self.every_s = store, policy, every_s
        self.stats = RetentionStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="noa-retention", daemon=True)

    def start(self) -> RetentionWorker:
        if self.policy.active:
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                run_once(self.store, self.policy, self.stats)
            except Exception as exc:  # noqa: BLE001 - the next pass tries again; the daemon keeps serving
                log.exception("retention pass failed")
                with self.stats.lock:
                    self.stats.last_error = str(exc)
            if self._stop.wait(self.every_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
