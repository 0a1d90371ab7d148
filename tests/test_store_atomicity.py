"""The exam store under faults: whole-or-nothing, and nothing acknowledged is ever lost.

1. A failure injected before each statement of one exam write in turn (a "disk I/O error" raised by a
   connection wrapper, the way a full or failing disk shows up): the write is refused as a StoreError, no
   partial row is left, and the next exam is stored normally.
2. A writer process killed with SIGKILL at random moments, round after round on the same database: every
   exam it printed as acknowledged is there with its images byte for byte, no row is partial (the exam a
   kill interrupted is either whole or absent), and SQLite's integrity_check is ok.

Only the public ExamStore API is used, plus a read-only sqlite3 connection for integrity_check.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.imaging import png_bytes
from edge.store import ExamStore, StoreError

ROOT = Path(__file__).resolve().parent.parent
KILL_ROUNDS = 8


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _images(seed: int, h: int = 90, w: int = 120) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return png_bytes(frame), png_bytes(frame[: h // 2, : w // 2])


def _exam(uid: str, frame_png: bytes, overlay_png: bytes, w: int = 120, h: int = 90) -> dict:
    return {"uid": uid, "roi": [2, 3, w // 2, h // 2], "frame_size": [w, h], "label": "NOA", "dl_probability": 0.7,
            "test_frame_sha256": _sha(frame_png), "test_overlay_sha256": _sha(overlay_png)}


def _db_file(store_or_dir) -> Path:
    path = getattr(store_or_dir, "path", None)
    return Path(path) if path else Path(store_or_dir) / "exams.sqlite3"


def _integrity_check(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def _all_exams(store: ExamStore) -> list[dict]:
    return store.list_exams(limit=100_000)


def _assert_complete(store: ExamStore, exam: dict) -> None:
    """The stored exam has both images, byte for byte what was written (hashes travel in the exam)."""
    full = store.get_exam(exam["id"], with_images=True)
    assert full is not None, f"exam {exam.get('uid')} vanished"
    assert _sha(full["frame_png"]) == full["test_frame_sha256"], f"exam {full['uid']}: frame is not what was written"
    assert _sha(full["overlay_png"]) == full["test_overlay_sha256"], f"exam {full['uid']}: overlay differs"
    assert store.get_image(exam["id"], "roi"), f"exam {full['uid']}: no ROI image"


# ------------------------------------------------------------------------------ 1. injected failures
class _FaultPlan:
    """Raises a disk error before the `fail_at`-th statement the armed thread sends on any connection."""

    def __init__(self):
        self.thread: int | None = None
        self.fail_at = 0
        self.count = 0
        self.fired = False

    def arm(self, fail_at: int) -> None:
        self.thread, self.fail_at, self.count, self.fired = threading.get_ident(), fail_at, 0, False

    def disarm(self) -> None:
        self.thread = None

    def before(self, sql: str) -> None:
        if self.thread != threading.get_ident():
            return
        self.count += 1
        if self.count == self.fail_at:
            self.fired = True
            raise sqlite3.OperationalError(f"disk I/O error (injected before statement {self.count}: {sql[:40]!r})")


class _FaultyCursor:
    def __init__(self, real, plan: _FaultPlan):
        self._real, self._plan = real, plan

    def execute(self, sql, *args):
        self._plan.before(sql)
        return self._real.execute(sql, *args)

    def executemany(self, sql, *args):
        self._plan.before(sql)
        return self._real.executemany(sql, *args)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __iter__(self):
        return iter(self._real)


class _FaultyConnection:
    """sqlite3.Connection with a fault point before every statement (a C type cannot be patched in place)."""

    def __init__(self, real, plan: _FaultPlan):
        self._real, self._plan = real, plan

    def execute(self, sql, *args):
        self._plan.before(sql)
        return self._real.execute(sql, *args)

    def executemany(self, sql, *args):
        self._plan.before(sql)
        return self._real.executemany(sql, *args)

    def executescript(self, script):
        self._plan.before(script)
        return self._real.executescript(script)

    def cursor(self, *args):
        return _FaultyCursor(self._real.cursor(*args), self._plan)

    def __enter__(self):
        self._real.__enter__()
        return self

    def __exit__(self, *exc):
        return self._real.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_failure_between_the_statements_of_one_write_leaves_no_partial_exam(tmp_path, monkeypatch):
    plan = _FaultPlan()
    real_connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: _FaultyConnection(real_connect(*a, **k), plan))
    store = ExamStore(tmp_path)
    try:
        frame, overlay = _images(0)
        store.add_exam(_exam("before", frame, overlay), frame, None, overlay)
        refused: set[str] = set()
        for k in range(1, 30):
            frame, overlay = _images(k)
            uid = f"fault-{k}"
            plan.arm(k)
            try:
                store.add_exam(_exam(uid, frame, overlay), frame, None, overlay)
                ok = True
            except StoreError as exc:
                ok = False
                assert "disk I/O error (injected" in str(exc)
            finally:
                plan.disarm()
            stored = {e["uid"]: e for e in _all_exams(store)}
            if ok:
                _assert_complete(store, stored[uid])
            else:
                refused.add(uid)
                assert uid not in stored, f"fault before statement {k}: the refused exam was (partly) stored"
            for exam in stored.values():
                _assert_complete(store, exam)
            assert store.integrity_problems() == []
            assert _integrity_check(_db_file(store)) == "ok"
            # the store is not wedged in a half-open transaction: the next exam goes in
            frame2, overlay2 = _images(100 + k)
            after = store.add_exam(_exam(f"after-{k}", frame2, overlay2), frame2, None, overlay2)
            _assert_complete(store, after)
            if not plan.fired:  # k is past the last statement of a write: every fault point was tried
                break
        else:
            pytest.fail("an exam write sends more than 29 statements?")
        assert len(refused) >= 2, "expected at least BEGIN/INSERT and COMMIT to be fault points"
    finally:
        plan.disarm()
        store.close()
    # seen from fresh connections too: the refused exams are absent, every other one is whole
    con = real_connect(f"file:{_db_file(tmp_path)}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    reopened = ExamStore(tmp_path)
    try:
        uids = {e["uid"] for e in _all_exams(reopened)}
        assert not uids & refused
        assert "before" in uids and all(f"after-{i}" in uids for i in range(1, k + 1))
        for exam in _all_exams(reopened):
            _assert_complete(reopened, exam)
    finally:
        reopened.close()


# ------------------------------------------------------------------------------------ 2. kill -9
WRITER = textwrap.dedent(r'''
    import hashlib, sys
    import numpy as np
    from edge.imaging import png_bytes
    from edge.store import ExamStore

    data_dir, seed = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(seed)
    # a few incompressible frames (~2 MB PNGs) made up front, so nearly all the loop's time is spent inside
    # add_exam and a kill at a random moment lands inside a write
    pool = []
    for _ in range(3):
        h, w = int(rng.integers(600, 720)), int(rng.integers(800, 960))
        frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pool.append((png_bytes(frame), png_bytes(frame[: h // 2, : w // 2]), w, h))
    store = ExamStore(data_dir)
    print("READY", flush=True)
    i = 0
    while True:
        fpng, opng, w, h = pool[i % len(pool)]
        uid = f"r{seed}-{i}"
        exam = {"uid": uid, "roi": [1, 1, w // 2, h // 2], "frame_size": [w, h], "label": "OA",
                "test_frame_sha256": hashlib.sha256(fpng).hexdigest(),
                "test_overlay_sha256": hashlib.sha256(opng).hexdigest()}
        store.add_exam(exam, fpng, None, opng)
        sys.stdout.write(f"ACK {uid}\n")  # one write: a kill cannot split an acknowledgement
        sys.stdout.flush()
        i += 1
''')


def _read_lines(stream, sink: list[str]) -> None:
    for line in stream:
        if line.endswith("\n"):  # a line cut short by the kill was never acknowledged
            sink.append(line.strip())


def test_kill_9_at_random_moments_never_loses_an_acknowledged_exam(tmp_path):
    data = tmp_path / "data"
    rng = random.Random(20240601)
    acked: set[str] = set()
    for round_ in range(KILL_ROUNDS):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(data), str(round_)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 120
            while "READY" not in lines:
                assert proc.poll() is None, f"writer died: {proc.stderr.read()[-3000:]}"
                assert time.monotonic() < deadline, "writer never became ready"
                time.sleep(0.02)
            want_acks = rng.randint(1, 3)  # let it write a few, then kill at a random moment of the next ones
            while sum(ln.startswith("ACK") for ln in lines) < want_acks:
                assert proc.poll() is None, f"writer died: {proc.stderr.read()[-3000:]}"
                assert time.monotonic() < deadline, "writer acknowledged nothing"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.1))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            reader.join(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            proc.stdout.close()
            proc.stderr.close()
        acked |= {ln.split()[1] for ln in lines if ln.startswith("ACK")}

        assert _integrity_check(_db_file(data)) == "ok"
        store = ExamStore(data)
        try:
            stored = {e["uid"]: e for e in _all_exams(store)}
            missing = acked - set(stored)
            assert not missing, f"round {round_}: acknowledged exams lost after kill -9: {sorted(missing)}"
            for exam in stored.values():  # acknowledged or the one the kill interrupted: whole, never partial
                _assert_complete(store, exam)
            assert store.integrity_problems() == []
        finally:
            store.close()
    assert len(acked) >= KILL_ROUNDS
