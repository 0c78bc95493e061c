"""Keep a live source (RTSP, camera) running through failures and stalls.

`ReconnectingReader(open_reader, ...)` wraps any factory that returns a freshly opened
`app.frames.Reader` (e.g. `lambda: open_plain_source(spec)`). The pipeline reads from it like any other reader; underneath, when the
source raises, ends, or delivers no frame within `timeout_s` seconds (a stall), the wrapper
drops that reader and opens a new one, waiting `backoff_initial`, then twice as long after
every failed attempt, never longer than `backoff_max`. The pipeline keeps running meanwhile
(its sinks see no frames, nothing is lost that was ever captured).

Why a thread per connection: a stalled `read()` (a dead network peer, a frozen camera driver)
may block for a long time and cannot safely be interrupted from outside (closing an OpenCV
or FFmpeg handle while another thread reads from it can crash). So each opened reader is read
by its own daemon thread; a stalled one is abandoned and closes itself whenever its blocked
read finally returns, while a new connection takes over at once.

Every outage is logged when it starts and when it ends, with its duration (from the last
frame before it to the first frame after it), and counted in `counters()`.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from app.frames import Reader
from core.backoff import Backoff
from core.redact import redact_url

log = logging.getLogger(__name__)

_POLL_S = 0.1     # how often a waiting read() checks whether the reader was closed


class _SourceConnection:
    """One opened inner reader and the thread that reads it into a one-slot hand-off."""

    def __init__(self, open_reader, number: int, reader: Reader | None = None):
        self.open_reader = open_reader   # called in this connection's thread: a hung open
        self.reader = reader             # is a stall like a hung read
        self.handoff: queue.Queue = queue.Queue(maxsize=1)
        self.abandoned = threading.Event()
        self.frames = 0                  # frames taken from it (0: still opening)
        self.thread = threading.Thread(target=self._run, name=f"source-conn-{number}", daemon=True)
        self.thread.start()

    def _put(self, item) -> None:
        # Blocks while the consumer has not taken the previous item (no silent drops here:
        # the pipeline's capture thread keeps the newest frame and counts what it drops).
        while not self.abandoned.is_set():
            try:
                self.handoff.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            if self.reader is None:
                self.reader = self.open_reader()
            while not self.abandoned.is_set():
                item = self.reader.read()
                if item is None:
                    self._put(("end", None))
                    break
                self._put(("frame", item))
        except Exception as e:  # any failure of the source ends this connection
            self._put(("error", e))
        finally:
            try:
                if self.reader is not None:
                    self.reader.close()
            except Exception:
                pass

    def abandon(self) -> None:
        self.abandoned.set()


class ReconnectingReader(Reader):
    """A live `Reader` that reopens its source after failures and stalls (see module doc).

    `first` is an already opened reader to start with (the one the caller opened to learn
    that the source is live); without it, `open()` calls `open_reader()`. `open()` waits for
    the first frame and raises if that fails, so a wrong URL or a missing camera is a
    one-line error at start rather than an endless retry loop.
    After the first frame, every failure is an outage: logged, counted, retried with backoff.
    """

    live = True

    def __init__(self, open_reader: Callable[[], Reader], timeout_s: float = 5.0,
                 backoff_initial: float = 0.5, backoff_max: float = 10.0,
                 first: Reader | None = None, open_timeout_s: float | None = None):
        if timeout_s <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need timeout_s > 0 and 0 < backoff_initial <= backoff_max; "
                             "check --source-timeout and the reconnect backoff settings")
        self.open_reader = open_reader
        self.timeout_s = float(timeout_s)
        # Opening a stream and waiting for its first keyframe takes longer than the gap
        # between two frames (RTSP: a few round trips, probing, up to a GOP): its own budget.
        self.open_timeout_s = float(open_timeout_s or max(self.timeout_s, 10.0))
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        self._backoff = Backoff(self.backoff_initial, self.backoff_max)   # reset by each frame
        self.first = first
        self.description = first.description if first is not None else ""
        self.camera = ""               # set when several cameras run: their outage lines name it
        self.fps = first.fps if first is not None else None
        self._conn: _SourceConnection | None = None
        self._connections = 0
        self._closed = threading.Event()
        self._last_frame_t: float | None = None
        self._outage_start: float | None = None   # last frame time before the outage
        self._outage_reason = ""
        self._attempts = 0                         # failed attempts in the current outage
        # Counters for the pipeline summary.
        self.outages = 0               # outages that began (one may still be open)
        self.outage_s_total = 0.0      # summed duration of outages that ended
        self.outage_s_max = 0.0
        self.stalls = 0                # outages that began as "no frame within timeout_s"
        self.reconnect_attempts = 0    # connections opened after the first one
        self.frames = 0
        self._pending = None           # the first frame, read during open()
        self._started = False

    # -- Reader protocol ------------------------------------------------------------------

    def open(self) -> None:
        first, self.first = self.first, None
        self._conn = self._connect(first)
        # Wait for the first frame or the first failure so that a bad source fails loudly.
        wait = self.open_timeout_s
        kind, value = self._take(wait)
        if kind == "error":
            self._drop_connection()
            raise value if isinstance(value, Exception) else RuntimeError(str(value))
        if kind in ("stall", "end"):
            self._drop_connection()
            what = "ended before its first frame" if kind == "end" else \
                f"gave no frame within {wait:g} s"
            raise RuntimeError(f"source {self.description or '?'} {what}; check that it is "
                               "running, or raise --source-timeout")
        self._pending = value
        self._conn.frames = 1
        self._started = True
        reader = self._conn.reader
        self.description = self.description or reader.description
        self.fps = self.fps or reader.fps

    def start_down(self, reason: str) -> None:
        """The source could not be opened at start: begin in an outage (logged, counted,
        reconnected with backoff by read()) instead of failing the run."""
        self._started = True
        self._failed(f"down at start: {reason}")

    def read(self):
        if not self._started:
            self.open()
        pending = self._pending
        if pending is not None:
            self._pending = None
            return self._got_frame(pending)
        while not self._closed.is_set():
            if self._conn is None:
                if not self._wait_backoff():
                    break
                self.reconnect_attempts += 1
                self._conn = self._connect()
            wait = self.timeout_s if self._conn.frames else self.open_timeout_s
            kind, value = self._take(wait)
            if kind == "frame":
                self._conn.frames += 1
                return self._got_frame(value)
            if kind == "closed":
                break
            if kind == "stall":
                self._failed(f"no frame within {wait:g} s", stall=True)
            elif kind == "end":
                self._failed("stream ended")
            else:
                self._failed(f"{type(value).__name__}: {str(value).splitlines()[0] if str(value) else ''}")
        return None

    def interrupt(self) -> None:
        """From another thread (the pipeline stopping): a read() waiting for the source to come
        back returns None now, like an end of input."""
        self._closed.set()

    def close(self) -> None:
        self._closed.set()
        conn = self._conn
        self._drop_connection()
        if self._outage_start is not None:
            log.warning("%ssource %s: still down at shutdown after %.1f s (%s)", self._tag(), self.description,
                        time.monotonic() - self._outage_start, self._outage_reason)
        if conn is not None:
            conn.thread.join(timeout=2.0)   # let it close its reader if its read returns

    @property
    def outage_reason(self) -> str:
        return self._outage_reason

    @property
    def down(self) -> bool:
        """In an outage now (reconnecting): a multi-camera scheduler does not wait for it."""
        return self._outage_start is not None

    # -- counters -------------------------------------------------------------------------

    def counters(self) -> dict:
        """Counters for the run summary. `down_now_s` > 0 when an outage is still open."""
        down_now = (time.monotonic() - self._outage_start) if self._outage_start is not None else 0.0
        return {"frames": self.frames, "outages": self.outages, "stalls": self.stalls,
                "reconnect_attempts": self.reconnect_attempts,
                "outage_s_total": round(self.outage_s_total, 3),
                "outage_s_max": round(self.outage_s_max, 3), "down_now_s": round(down_now, 3)}

    # -- internals ------------------------------------------------------------------------

    def _tag(self) -> str:
        return f"{self.camera}: " if self.camera else ""

    def _connect(self, reader: Reader | None = None) -> _SourceConnection:
        self._connections += 1
        return _SourceConnection(self.open_reader, self._connections, reader)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.abandon()
            self._conn = None

    def _take(self, timeout_s: float):
        """-> (kind, value): kind is frame | end | error from the connection, stall when
        nothing came within timeout_s, closed when close() was called meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not self._closed.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return "stall", None
            try:
                return self._conn.handoff.get(timeout=min(left, _POLL_S))
            except queue.Empty:
                continue
        return "closed", None

    def _got_frame(self, item):
        now = time.monotonic()
        if self._outage_start is not None:
            duration = now - self._outage_start
            self.outage_s_total += duration
            self.outage_s_max = max(self.outage_s_max, duration)
            log.warning("%ssource %s: back after %.1f s outage #%d (%s; %d reconnect attempt(s))",
                        self._tag(), self.description, duration, self.outages, self._outage_reason,
                        self._attempts)
            self._outage_start = None
        self._attempts = 0
        self._backoff.reset()
        self._last_frame_t = now
        self.frames += 1
        return item

    def _failed(self, reason: str, stall: bool = False) -> None:
        self._drop_connection()
        self._attempts += 1
        reason = redact_url(reason)   # an FFmpeg error quotes the URL, password and all
        if self._outage_start is None:
            self.outages += 1
            self.stalls += int(stall)
            self._outage_start = self._last_frame_t or time.monotonic()
            self._outage_reason = reason
            log.warning("%ssource %s: lost (%s); outage #%d, reconnecting with backoff %g..%g s",
                        self._tag(), self.description, reason, self.outages, self.backoff_initial,
                        self.backoff_max)
        else:
            log.info("%ssource %s: reconnect attempt %d failed (%s)", self._tag(), self.description,
                     self._attempts, reason)

    def _wait_backoff(self) -> bool:
        """Sleep before the next attempt; False when close() was called meanwhile."""
        return not self._closed.wait(self._backoff.next())
