"""systemd's service notifications (sd_notify(3)), spoken without a dependency: one datagram of
newline-separated KEY=VALUE lines to the unix socket named by $NOTIFY_SOCKET (a leading '@'
is the abstract namespace). Outside systemd (no $NOTIFY_SOCKET) every call does nothing.

    notify(READY=1)                                   every camera opened or in outage
    notify(STATUS="cam0 15.0 fps")                    what `systemctl status` shows
    notify(RELOADING=1, MONOTONIC_USEC=...)           a reload starts (then READY=1)
    notify(STOPPING=1)                                a stop has begun
    Watchdog(progress_at, status).start()             WATCHDOG=1 while the pipeline progresses

The watchdog period is $WATCHDOG_USEC (set by systemd from the unit's WatchdogSec=), meant for
the process $WATCHDOG_PID names when it is set.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

STATUS_EVERY_S = 2.0   # how often STATUS= is refreshed

_warned = False


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        return "\0" + path[1:]
    return path if path.startswith("/") else None


def notify(**fields) -> bool:
    """Send KEY=VALUE fields to systemd in one datagram: True when sent; False without
    $NOTIFY_SOCKET or when the socket cannot take it (one warning line, the first time; the
    app goes on)."""
    global _warned
    address = _address()
    if not address or not fields:
        return False
    message = "\n".join(f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
        return True
    except OSError as e:
        if not _warned:
            _warned = True
            print(f"warning: cannot notify systemd at {os.environ.get('NOTIFY_SOCKET')} ({e.strerror or e}); "
                  "the run goes on without service notifications", file=sys.stderr, flush=True)
        return False


def watchdog_period_s() -> float | None:
    """The watchdog period systemd expects pings within ($WATCHDOG_USEC), or None: no watchdog,
    or one meant for another process ($WATCHDOG_PID)."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Watchdog:
    """A thread that pings WATCHDOG=1 every half period while the pipeline makes progress
    (`progress_at()`: the monotonic time it last did, idle polls included) and refreshes
    STATUS=`status()` every STATUS_EVERY_S. A pipeline stuck for half a period stops the pings,
    so systemd restarts it one period later. Started only under systemd ($NOTIFY_SOCKET)."""

    def __init__(self, progress_at, status, period_s: float | None = None):
        self.progress_at, self.status = progress_at, status
        self.period_s = watchdog_period_s() if period_s is None else period_s
        self.done = threading.Event()
        self.thread = None

    def start(self) -> None:
        if _address() is None or self.thread is not None:
            return
        self.thread = threading.Thread(target=self._run, name="sd-notify", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        tick = min(self.period_s / 2, STATUS_EVERY_S) if self.period_s else STATUS_EVERY_S
        last_status = time.monotonic()
        while not self.done.wait(tick):
            now = time.monotonic()
            fields = {}
            if self.period_s and now - self.progress_at() < self.period_s / 2:
                fields["WATCHDOG"] = 1
            if now - last_status >= STATUS_EVERY_S - tick / 2:
                last_status = now
                try:
                    fields["STATUS"] = self.status()
                except Exception:   # a status line is not worth the pings (this thread must live)
                    pass
            notify(**fields)
