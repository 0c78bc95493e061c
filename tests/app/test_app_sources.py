"""Sources: real files, real decoders, real sockets on 127.0.0.1."""
from __future__ import annotations

import functools
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from app.frames import Frame, ReadError
from app.http_sink import HttpSink
from app.sources import SourceError, gstreamer_available, open_source
from testkit.app_helpers import SAMPLE_VIDEO, free_port

needs_sample = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")


def read_all(reader, limit=1000):
    out = []
    while len(out) < limit:
        got = reader.read()
        if got is None:
            break
        out.append(got)
    return out


@needs_sample
def test_video_file_reads_every_frame_with_its_timestamps():
    reader = open_source(str(SAMPLE_VIDEO))
    try:
        assert not reader.live and reader.fps == pytest.approx(15.0)
        frames = read_all(reader)
    finally:
        reader.close()
    assert len(frames) == 101
    assert all(img.shape == (360, 480, 3) and img.dtype == np.uint8 for img, _ in frames)
    ts = [t for _, t in frames]
    assert ts[0] == pytest.approx(0.0) and ts[-1] == pytest.approx(100 / 15, abs=1e-3)
    assert all(b > a for a, b in zip(ts, ts[1:]))


def write_images(folder, n, size=(24, 32)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"img_{i:02d}.png"), np.full((*size, 3), 20 * i, np.uint8))


def write_video(path, n, size=(24, 32), fps=10):
    from app.sinks import VideoFileSink

    sink = VideoFileSink(path)
    sink.open(size[1], size[0], fps)
    for i in range(n):
        img = np.full((*size, 3), 60 * i, np.uint8)
        sink.write(Frame(i, 0.0, img), img, None)
    sink.close()


def test_folder_glob_and_image_in_sorted_order_and_a_bad_file_is_a_read_error(tmp_path):
    write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "img_01b.png").write_bytes(b"not a png")
    reader = open_source(str(tmp_path / "imgs"))
    assert reader.read()[0].mean() == 0
    assert reader.read()[0].mean() == 20
    with pytest.raises(ReadError, match="img_01b.png"):
        reader.read()
    assert reader.read()[0].mean() == 40       # the next image after the bad one
    assert reader.read() is None

    globbed = read_all(open_source(str(tmp_path / "imgs" / "img_0[02].png")))
    assert [img.mean() for img, _ in globbed] == [0, 40]
    single = read_all(open_source(str(tmp_path / "imgs" / "img_02.png")))
    assert len(single) == 1 and single[0][0].shape == (24, 32, 3)


def test_loop_starts_over_with_increasing_timestamps(tmp_path):
    write_video(tmp_path / "three.mp4", 3)
    reader = open_source(str(tmp_path / "three.mp4"), SimpleNamespace(loop=True))
    frames = [reader.read() for _ in range(7)]
    reader.close()
    ts = [t for _, t in frames]
    assert all(b > a for a, b in zip(ts, ts[1:])), ts
    assert ts[3] == pytest.approx(0.3, abs=1e-3)   # the second pass continues after 0.0, 0.1, 0.2


def test_bad_sources_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [str(tmp_path / "missing.mp4"), str(tmp_path / "empty"), str(tmp_path / "*.jpg"), "csi://x", "/dev/video99"]
    if not gstreamer_available():
        cases += ["csi://0", "gst:videotestsrc ! appsink"]
    for spec in cases:
        with pytest.raises(SourceError) as e:
            open_source(spec)
        assert "\n" not in str(e.value)
    if not gstreamer_available():
        with pytest.raises(SourceError, match="GStreamer"):
            open_source("csi://0")


def test_an_rtsp_server_refusing_the_connection_is_one_line_that_asks_whether_it_runs():
    port = free_port()   # nothing listens there: the connection is refused at once
    with pytest.raises(SourceError) as e:
        open_source(f"rtsp://127.0.0.1:{port}/cam")
    message = str(e.value)
    assert "\n" not in message
    assert f"connection refused by 127.0.0.1:{port}" in message
    assert "is the server running" in message and "port" in message and "--source-timeout" in message


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_url_of_a_video_file_is_read_as_a_file(tmp_path):
    write_video(tmp_path / "clip.mkv", 5)
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reader = open_source(f"http://127.0.0.1:{server.server_address[1]}/clip.mkv")
        assert not reader.live
        frames = read_all(reader)
        reader.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(frames) == 5 and frames[0][0].shape == (24, 32, 3)


@pytest.fixture
def mjpeg_server():
    """The app's own HTTP output, fed from a thread: a live MJPEG stream on 127.0.0.1."""
    sink = HttpSink("127.0.0.1", 0)
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            img = np.full((48, 64, 3), (40 * i) % 250, np.uint8)
            sink.write(Frame(i, time.monotonic(), img), img, None)
            i += 1
            time.sleep(0.02)

    threading.Thread(target=feed, daemon=True).start()
    yield f"http://127.0.0.1:{sink.port}/stream.mjpg"
    stop.set()
    sink.close()


def test_http_mjpeg_stream_is_a_live_source(mjpeg_server):
    reader = open_source(mjpeg_server)
    try:
        assert reader.live
        for _ in range(3):
            img, _ = reader.read()
            assert img.shape == (48, 64, 3)
    finally:
        reader.close()


def test_live_sources_get_the_reconnect_wrapper(mjpeg_server):
    from app.reconnect import ReconnectingReader

    options = SimpleNamespace(source_timeout=3.0)
    wrapped = open_source(mjpeg_server, options)
    try:
        assert isinstance(wrapped, ReconnectingReader) and wrapped.live
        assert wrapped.timeout_s == 3.0 and wrapped.description == mjpeg_server
        for _ in range(3):
            assert wrapped.read()[0].shape == (48, 64, 3)
        again = wrapped.open_reader()        # a fresh plain reader for the same URL
        assert again.live and again.read()[0].shape == (48, 64, 3)
        again.close()
    finally:
        wrapped.close()
    assert wrapped.counters()["outages"] == 0


def ffmpeg_threads() -> int:
    """FFmpeg's decoder threads in this process (named av:CODEC:...)."""
    import os

    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read())
        except FileNotFoundError:
            pass
    return sum(n.startswith("av:") for n in names)


@needs_sample
def test_a_closed_video_reader_frees_its_decoder_while_still_referenced():
    """A camera that left a running session keeps its closed reader (its counts stay in the
    summary): the decoder, its frame threads and buffers must go at close, not at collection."""
    from app.sources import PyAVReader

    before = ffmpeg_threads()
    kept = []
    for _ in range(3):
        reader = PyAVReader(str(SAMPLE_VIDEO))
        reader.open()
        assert reader.read() is not None and ffmpeg_threads() > before
        reader.close()
        kept.append(reader)
    assert ffmpeg_threads() == before


def test_a_15_fps_mjpeg_relay_is_announced_at_15_fps_not_25():
    """FFmpeg gives an MJPEG-over-HTTP stream 25 fps (and timestamps made up at 25): the
    reader measures the arrival of its first frames instead, and keeps those frames."""
    sink, stop = HttpSink("127.0.0.1", 0), threading.Event()

    def feed():
        i, next_at = 0, time.monotonic()
        while not stop.is_set():
            img = np.full((48, 64, 3), i % 250, np.uint8)
            sink.write(Frame(i, time.monotonic(), img), img, None)
            i += 1
            next_at += 1 / 15
            time.sleep(max(0.0, next_at - time.monotonic()))

    threading.Thread(target=feed, daemon=True).start()
    try:
        reader = open_source(f"http://127.0.0.1:{sink.port}/stream.mjpg")
        try:
            assert 11 <= reader.fps <= 19, reader.fps   # 15, not FFmpeg's 25
            for _ in range(10):                         # the measured frames come first, then the rest
                assert reader.read()[0].shape == (48, 64, 3)
        finally:
            reader.close()
    finally:
        stop.set()
        sink.close()
