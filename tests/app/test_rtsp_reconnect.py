"""ReconnectingReader: live sources that fail or stall are reopened with capped backoff,
every outage counted and timed. Real readers: small in-test Reader implementations that
really fail or block. (A real RTSP source whose server dies and returns: tests/app/test_faults_rtsp.py.)"""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from app.frames import Reader, ReadError
from app.reconnect import ReconnectingReader


class ScriptedCamera(Reader):
    """A live reader that delivers `frames` images, then fails the way it was told to:
    'error' raises ReadError, 'end' returns None, 'stall' blocks until released."""

    live = True
    fps = 30.0
    opened = 0

    def __init__(self, frames: int, then: str, release: threading.Event | None = None):
        self.frames, self.then, self.release = frames, then, release
        self.description = f"scripted({frames}, {then})"
        self.closed = False
        self.n = 0

    def read(self):
        if self.n < self.frames:
            self.n += 1
            return np.full((4, 4, 3), self.n, np.uint8), None
        if self.then == "error":
            raise ReadError("camera unplugged")
        if self.then == "stall":
            self.release.wait(30)
            raise ReadError("released")
        return None

    def close(self):
        self.closed = True


def factory(plans):
    """-> open_reader() handing out the planned readers in turn, plus the list of them."""
    made = []

    def open_reader():
        plan = plans[min(len(made), len(plans) - 1)]
        if plan == "refuse":
            made.append(None)
            raise ConnectionRefusedError("camera not there")
        reader = ScriptedCamera(*plan)
        made.append(reader)
        return reader

    return open_reader, made


def read_n(reader, n, timeout_s=20):
    got = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"only {len(got)} of {n} frames in {timeout_s} s"
        item = reader.read()
        assert item is not None
        got.append(item)
    return got


def test_errors_and_ends_reconnect_with_backoff_and_are_counted(caplog):
    caplog.set_level(logging.INFO, logger="app.reconnect")
    open_reader, made = factory([(3, "error"), "refuse", "refuse", (2, "end"), (5, "end")])
    r = ReconnectingReader(open_reader, timeout_s=5, backoff_initial=0.05, backoff_max=0.2)
    r.open()
    t0 = time.monotonic()
    frames = read_n(r, 10)
    elapsed = time.monotonic() - t0
    r.close()
    assert [int(img[0, 0, 0]) for img, _ in frames] == [1, 2, 3, 1, 2, 1, 2, 3, 4, 5]
    s = r.counters()
    # Outage 1: error -> refused -> refused -> frames. Outage 2: end -> frames.
    assert s["outages"] == 2 and s["stalls"] == 0
    assert s["reconnect_attempts"] == 4 and s["frames"] == 10
    assert s["outage_s_total"] > 0 and s["down_now_s"] == 0
    # Backoff doubled inside outage 1: 0.05 + 0.1 + 0.2 (capped), then 0.05 for outage 2.
    assert elapsed >= 0.05 + 0.1 + 0.2 + 0.05
    assert all(m is None or m.closed for m in made)
    lost = [m for m in caplog.messages if " lost (" in m]
    back = [m for m in caplog.messages if " back after " in m]
    assert len(lost) == 2 and len(back) == 2
    assert "ReadError: camera unplugged" in lost[0] and "stream ended" in lost[1]


def test_stall_is_detected_and_the_stuck_reader_is_abandoned():
    release = threading.Event()
    open_reader, made = factory([(2, "stall", release), (3, "end")])
    r = ReconnectingReader(open_reader, timeout_s=0.5, backoff_initial=0.05, backoff_max=0.1)
    r.open()
    frames = read_n(r, 5)
    assert [int(img[0, 0, 0]) for img, _ in frames] == [1, 2, 1, 2, 3]
    s = r.counters()
    assert s["outages"] == 1 and s["stalls"] == 1 and s["outage_s_max"] >= 0.5
    # The stalled reader is still blocked in read(); once that returns, it closes itself.
    assert not made[0].closed
    release.set()
    deadline = time.monotonic() + 5
    while not made[0].closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert made[0].closed
    r.close()


def test_slow_opens_get_their_own_budget_gaps_between_frames_do_not():
    """A reconnect that takes longer than --source-timeout to open (RTSP: probing, waiting for
    a keyframe) is not a stall; a gap that long between two frames is."""
    release = threading.Event()
    open_reader, made = factory([(2, "stall", release), (3, "end")])

    def slow_open():
        time.sleep(0.8)
        return open_reader()

    r = ReconnectingReader(slow_open, timeout_s=0.4, backoff_initial=0.05, backoff_max=0.1,
                           open_timeout_s=3)
    r.open()
    frames = read_n(r, 5)
    release.set()
    r.close()
    assert [int(img[0, 0, 0]) for img, _ in frames] == [1, 2, 1, 2, 3]
    s = r.counters()
    assert s["outages"] == 1 and s["stalls"] == 1 and s["reconnect_attempts"] == 1


def test_first_open_failure_is_one_line_error_not_a_retry_loop():
    open_reader, made = factory(["refuse"])
    r = ReconnectingReader(open_reader, timeout_s=2, backoff_initial=0.05, backoff_max=0.1)
    with pytest.raises(ConnectionRefusedError):
        r.open()
    assert len(made) == 1
    open_reader, _ = factory([(0, "end")])
    r = ReconnectingReader(open_reader, timeout_s=2)
    with pytest.raises(RuntimeError, match="ended before its first frame"):
        r.open()


def test_close_interrupts_a_read_waiting_for_the_source():
    open_reader, _ = factory([(1, "error"), "refuse"])
    r = ReconnectingReader(open_reader, timeout_s=5, backoff_initial=0.2, backoff_max=0.2)
    r.open()
    assert r.read() is not None
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("item", r.read()))
    t.start()
    time.sleep(0.5)                  # inside the retry loop now
    r.close()
    t.join(timeout=5)
    assert not t.is_alive() and result["item"] is None
    assert r.counters()["down_now_s"] > 0


def test_uses_an_already_opened_first_reader():
    open_reader, made = factory([(2, "end"), (2, "end")])
    first = open_reader()
    r = ReconnectingReader(open_reader, timeout_s=2, backoff_initial=0.05, backoff_max=0.1, first=first)
    assert r.description == first.description and r.fps == 30.0
    r.open()
    read_n(r, 3)
    r.close()
    assert len(made) == 2 and made[0] is first


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="--source-timeout"):
        ReconnectingReader(lambda: None, timeout_s=0)
