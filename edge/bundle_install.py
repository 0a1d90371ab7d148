"""Safe bundle updates on the device: A/B folders and one atomically replaced `current` link.

    DATA_DIR/bundles/
        slot-a/  slot-b/      two complete bundles: the running one and the previous one
        current -> slot-a     what `serve --bundle DATA_DIR/bundles/current` loads (and reloads on SIGHUP)
        previous -> slot-b    what `noa-edge bundle rollback` switches back to

`install(NEW)`: verify NEW (every file, and its signature when a trust key is given), copy it into a
temporary folder beside the slots, verify the copy, move it into the slot `current` does not point at, then
switch: a new symlink is made under a temporary name and renamed over `current` (rename(2) is atomic), and
`previous` then names the slot that was current. A crash or kill at any point leaves `current` pointing at a
complete, verified bundle: before the rename, the old one; after it, the new one. The folder left behind by
a killed copy is removed by the next install. One install or rollback at a time (a lock file).
`rollback()`: verify the previous slot again, then switch `current` back to it (the same rename).
A running daemon picks the switch up on SIGHUP (Daemon.reload_bundle).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .bundle import MANIFEST, verify
from .bundle_signing import SignatureError, check_signature
from .errors import EdgeError

SLOTS = ("slot-a", "slot-b")
CURRENT, PREVIOUS = "current", "previous"


class InstallError(EdgeError, RuntimeError):
    """The new bundle was refused (not verified, not signed) or there is nothing to roll back to."""


def bundles_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / "bundles"


def current_path(data_dir: str | Path) -> Path:
    """What serve's --bundle should name on an installed device."""
    return bundles_dir(data_dir) / CURRENT


def _slot_of(link: Path) -> str | None:
    try:
        target = os.readlink(link)
    except OSError:
        return None
    name = Path(target).name
    return name if name in SLOTS else None


def _problems(path: Path, trust_key: str | Path | None) -> list[str]:
    problems = verify(path)
    if not problems and trust_key is not None:
        try:
            check_signature(path, trust_key)
        except SignatureError as exc:
            problems.append(str(exc))
    return problems


def _switch(root: Path, link_name: str, slot: str) -> None:
    """Point root/link_name at slot atomically: a fresh link under a temporary name, renamed over the old."""
    tmp = root / f".{link_name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(slot, tmp)  # relative: the data folder may be moved or mounted elsewhere
    os.replace(tmp, root / link_name)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _before_switch() -> None:
    """Called between the verified copy and the switch (the tests kill the process here)."""


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InstallError(f"{root}: another install or rollback is running") from None
        yield


def install(new_bundle: str | Path, data_dir: str | Path, trust_key: str | Path | None = None) -> dict:
    """Install NEW as the current bundle; returns {"slot", "previous", "name", "path"}."""
    new = Path(new_bundle)
    problems = _problems(new, trust_key)
    if problems:
        raise InstallError(f"bundle {new} refused, nothing changed:\n  " + "\n  ".join(problems))
    root = bundles_dir(data_dir)
    with _locked(root):
        for leftover in root.glob(".incoming-*"):  # a copy cut short by a crash or a kill
            shutil.rmtree(leftover, ignore_errors=True)
        current = _slot_of(root / CURRENT)
        target = SLOTS[1] if current == SLOTS[0] else SLOTS[0]
        incoming = root / f".incoming-{os.getpid()}"
        shutil.copytree(new, incoming, symlinks=False)
        _fsync_tree(incoming)
        problems = _problems(incoming, trust_key)  # the copy itself: a full disk or a flaky card shows here
        if problems:
            shutil.rmtree(incoming, ignore_errors=True)
            raise InstallError(f"the copy of {new} in {root} does not verify, nothing changed:\n  "
                               + "\n  ".join(problems))
        shutil.rmtree(root / target, ignore_errors=True)  # the slot before last (not current: never in use)
        os.replace(incoming, root / target)
        _fsync_dir(root)
        _before_switch()
        _switch(root, CURRENT, target)
        if current is not None:
            _switch(root, PREVIOUS, current)
        else:
            (root / PREVIOUS).unlink(missing_ok=True)
    return {"slot": target, "previous": current, "name": _name(root / target), "path": str(root / CURRENT)}


def rollback(data_dir: str | Path, trust_key: str | Path | None = None) -> dict:
    """Switch `current` back to the previous slot (verified again first); the rolled-back-from bundle becomes
    `previous`, so a second rollback undoes the first."""
    root = bundles_dir(data_dir)
    with _locked(root):
        current, previous = _slot_of(root / CURRENT), _slot_of(root / PREVIOUS)
        if previous is None or previous == current or not (root / previous).is_dir():
            raise InstallError(f"{root}: no previous bundle to roll back to (install one first)")
        problems = _problems(root / previous, trust_key)
        if problems:
            raise InstallError(f"previous bundle in {root / previous} refused, nothing changed:\n  "
                               + "\n  ".join(problems))
        _switch(root, CURRENT, previous)
        if current is not None:
            _switch(root, PREVIOUS, current)
    return {"slot": previous, "previous": current, "name": _name(root / previous), "path": str(root / CURRENT)}


def status(data_dir: str | Path) -> dict:
    root = bundles_dir(data_dir)
    current, previous = _slot_of(root / CURRENT), _slot_of(root / PREVIOUS)
    return {"current": current, "current_name": _name(root / current) if current else None,
            "previous": previous, "previous_name": _name(root / previous) if previous else None}


def _name(path: Path) -> str | None:
    try:
        return json.loads((path / MANIFEST).read_text()).get("name")
    except (OSError, ValueError):
        return None


def _fsync_tree(path: Path) -> None:
    """Flush every copied file to the card before the switch can point at them (power loss after the rename
    must not find half-written files behind `current`)."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(path)
