"""ReconnectingReader: live sources that fail or stall are reopened with capped backoff,
every outage counted and timed. Real readers only: small in-test Reader implementations
that really fail or block, and a real RTSP stream through rtsp-server-perl."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from app.frames import Reader, ReadError
from app.reconnect import ReconnectingReader
from tests.rtsp_server import publishers, relay  # noqa: F401 (fixtures)


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
    s = r.stats()
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
    s = r.stats()
    assert s["outages"] == 1 and s["stalls"] == 1 and s["outage_s_max"] >= 0.5
    # The stalled reader is still blocked in read(); once that returns, it closes itself.
    assert not made[0].closed
    release.set()
    deadline = time.monotonic() + 5
    while not made[0].closed and time.monotonic() < deadline:
        time.sleep(0.02)
    assert made[0].closed
    r.close()


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
    assert r.stats()["down_now_s"] > 0


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


class RtspReader(Reader):
    """A minimal PyAV RTSP reader (UDP, as rtsp-server-perl serves), for this module's test."""

    live = True

    def __init__(self, url):
        self.url, self.description, self.fps = url, url, None
        self.container = None

    def open(self):
        import av
        self.container = av.open(self.url, options={"rtsp_transport": "udp"}, timeout=(5, 2))
        self.frames = self.container.decode(video=0)
        return self

    def read(self):
        import av
        try:
            frame = next(self.frames)
        except StopIteration:
            return None
        except av.error.FFmpegError as e:
            raise ReadError(str(e)) from None
        return frame.to_ndarray(format="bgr24"), frame.time

    def close(self):
        if self.container is not None:
            self.container.close()


def test_rtsp_source_server_killed_and_restarted_frames_resume(relay, publishers):
    """Fault: the RTSP source's server dies mid-run and comes back: frames resume."""
    url = relay.pull_url("/cam")
    pub = publishers(relay.push_url("/cam"))
    deadline = time.monotonic() + 15
    while True:                                   # the publisher needs a moment to announce
        try:
            first = RtspReader(url).open()
            break
        except Exception:
            assert time.monotonic() < deadline, "publisher never appeared"
            time.sleep(0.2)
    r = ReconnectingReader(lambda: RtspReader(url).open(), timeout_s=2, backoff_initial=0.2,
                           backoff_max=1.0, first=first)
    r.open()
    try:
        before = read_n(r, 10)
        assert before[0][0].shape == (360, 480, 3)
        pub.kill()
        relay.kill()
        time.sleep(1.0)
        relay.start()
        publishers(relay.push_url("/cam"))
        # Frames already in flight when the server died still arrive first; read on
        # until the outage has been seen, then 10 frames from the new connection.
        after = []
        deadline = time.monotonic() + 30
        while len(after) < 10:
            assert time.monotonic() < deadline, f"no frames after the restart: {r.stats()}"
            item = r.read()
            if r.stats()["outages"] == 1:
                after.append(item)
    finally:
        r.close()
    assert after[-1][0].shape == (360, 480, 3)
    s = r.stats()
    assert s["outages"] == 1 and s["outage_s_total"] >= 1.0 and s["reconnect_attempts"] >= 1
