"""systemd's notify protocol (sd_notify(3)) without a systemd library: datagrams to $NOTIFY_SOCKET.

The service (deploy/noa-edge.service, Type=notify, WatchdogSec=) is "started" when READY=1 arrives, and is
restarted when WATCHDOG=1 stops arriving. The watchdog thread sends WATCHDOG=1 every WATCHDOG_USEC/2 only
while `healthy()` says the analysis workers and the web loop are alive, so a hung daemon is restarted
instead of being reported fine. Without $NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("noa_edge.service")


def notify(message: str) -> bool:
    """Send one datagram ("READY=1", "WATCHDOG=1", "STOPPING=1"); False when not under systemd or it failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    target = "\0" + address[1:] if address[0] == "@" else address  # "@name": Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), target)
        return True
    except OSError as exc:
        log.warning("service notify %s to %s failed: %s", message.split("=")[0], address, exc)
        return False


def watchdog_seconds() -> float | None:
    """The watchdog period systemd expects (WATCHDOG_USEC), or None when there is none for this process."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None


class ServiceNotifier:
    """READY=1 once serving, then WATCHDOG=1 every period/2 while healthy(); stop() sends STOPPING=1."""

    def __init__(self, healthy: Callable[[], bool]):
        self.healthy = healthy
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ready(self) -> None:
        notify("READY=1")
        period = watchdog_seconds()
        if period is not None and os.environ.get("NOTIFY_SOCKET"):
            self._thread = threading.Thread(target=self._run, args=(period / 2,), name="noa-watchdog", daemon=True)
            self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            if self.healthy():
                notify("WATCHDOG=1")
            else:
                log.error("watchdog: the analysis worker or the web loop is not healthy; not sending WATCHDOG=1 "
                          "(systemd restarts the service)")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            notify("STOPPING=1")
            self._thread.join(5)
