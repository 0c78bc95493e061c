"""Sinks: real encoders, decoded back with PyAV; real files on disk."""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import av
import cv2
import numpy as np
import pytest

from app.frames import Frame
from core.errors import InputError
from app.sinks import FolderSink, NullSink, SinkError, VideoFileSink, gui_available, open_sink


def decode(path):
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [(f.to_ndarray(format="bgr24"), float(f.time)) for f in c.decode(stream)]
        return stream.codec_context.name, frames


def gray(i, size):
    return np.full((*size, 3), 20 + 40 * i, np.uint8)


@pytest.mark.parametrize("suffix,codec", [(".mp4", "h264"), (".mkv", "h264"), (".avi", "mpeg4")])
def test_video_file_sink_decodes_back_frame_for_frame(tmp_path, suffix, codec):
    sink = open_sink(str(tmp_path / f"out{suffix}"))
    assert isinstance(sink, VideoFileSink)
    sink.open(64, 48, 15)
    for i in range(6):
        sink.write(Frame(i, 0.0, gray(i, (48, 64))), gray(i, (48, 64)), None)
    sink.close()
    name, frames = decode(tmp_path / f"out{suffix}")
    assert name == codec and len(frames) == 6
    for i, (img, t) in enumerate(frames):
        assert img.shape == (48, 64, 3)
        assert abs(float(img.mean()) - (20 + 40 * i)) < 8      # lossy, but the right frame (steps of 40)
        assert t == pytest.approx(i / 15, abs=1e-3)


def test_odd_sizes_are_padded_not_cropped(tmp_path):
    sink = VideoFileSink(tmp_path / "odd.mp4")
    img = np.zeros((47, 63, 3), np.uint8)
    img[:, -1] = 255                      # the last column must survive
    sink.open(63, 47, 10)
    sink.write(Frame(0, 0.0, img), img, None)
    sink.close()
    (out, _), = decode(tmp_path / "odd.mp4")[1]
    assert out.shape == (48, 64, 3)
    assert out[:47, 62].mean() > 200


def test_live_video_places_frames_at_their_capture_times(tmp_path):
    sink = VideoFileSink(tmp_path / "live.mp4", live=True)
    sink.open(32, 32, 25)
    for i, t in enumerate([100.0, 100.1, 100.5, 100.55]):   # a gap: frames were dropped upstream
        sink.write(Frame(i, t, gray(i, (32, 32))), gray(i, (32, 32)), None)
    sink.close()
    times = [t for _, t in decode(tmp_path / "live.mp4")[1]]
    assert times == pytest.approx([0.0, 0.1, 0.5, 0.55], abs=2e-3)


def test_folder_sink_writes_overlays_and_raw_labels(tmp_path):
    sink = open_sink(str(tmp_path / "frames") + "/", SimpleNamespace(save_labels=True))
    assert isinstance(sink, FolderSink)
    sink.open(40, 30, 10)
    labels = (np.arange(30 * 40).reshape(30, 40) % 19).astype(np.int32)
    overlay = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    sink.write(Frame(7, 0.0, overlay), overlay, labels)
    sink.close()
    assert np.array_equal(cv2.imread(str(tmp_path / "frames" / "000007.png")), overlay)
    back = cv2.imread(str(tmp_path / "frames" / "labels" / "000007.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and np.array_equal(back, labels)


def test_open_sink_dispatch_and_one_line_errors(tmp_path, monkeypatch):
    assert isinstance(open_sink("null"), NullSink)
    bad = [str(tmp_path / "still.png"), str(tmp_path / "x.xyz")]
    if not gui_available():
        bad.append("display")
    for spec in bad:
        with pytest.raises(SinkError) as e:
            open_sink(spec)
        assert "\n" not in str(e.value)
    # Missing folders are made for every output kind; a place that cannot be written is refused now.
    open_sink(str(tmp_path / "new" / "dir" / "out.mp4"))
    assert (tmp_path / "new" / "dir").is_dir() and not (tmp_path / "new" / "dir" / "out.mp4").exists()
    for spec in ["/proc/out.mp4", "/proc/frames/", str(tmp_path / "x.xyz") + "/"]:
        if spec.endswith("x.xyz/"):
            (tmp_path / "x.xyz").write_text("a file")
        with pytest.raises((SinkError, InputError)) as e:
            open_sink(spec)
        assert "\n" not in str(e.value) and spec.rstrip("/") in str(e.value)
    monkeypatch.delitem(sys.modules, "app.rtsp_out", raising=False)
    try:
        import app.rtsp_out  # noqa: F401  (without it, rtsp:// is refused in one line)
    except ModuleNotFoundError:
        with pytest.raises(SinkError, match="rtsp"):
            open_sink("rtsp://127.0.0.1:8554/live")


def test_rtsp_outputs_go_to_app_rtsp_out(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(open_rtsp_sink=lambda spec, args, server=None: calls.append((spec, args)) or NullSink())
    monkeypatch.setitem(sys.modules, "app.rtsp_out", fake)
    options = SimpleNamespace(bitrate=2_000_000)
    assert isinstance(open_sink("rtsp://127.0.0.1:8554/live", options), NullSink)
    assert calls == [("rtsp://127.0.0.1:8554/live", options)]
