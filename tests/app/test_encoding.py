"""The one H.264 policy (app/encoding.py): odd sizes padded, libx264 or the next H.264 encoder
said once, a keyframe every second of stream time. Real encodes decoded back with PyAV through
the users' own paths: a video file (app/sinks.py) and an event clip (app/analytics/clips.py);
the RTSP push: tests/app/test_rtsp_out.py (it needs the RTSP relay)."""
from __future__ import annotations

import time

import av
import numpy as np
import pytest

from app import encoding
from app.analytics.clips import ClipRecorder
from app.encoding import KEYFRAME_EVERY_S, KeyframeClock, even_size, h264_encoder, pad_to_even, set_up_encoder
from app.frames import Frame
from app.sinks import VideoFileSink
from core.errors import SetupError


def odd_frame(i: int) -> np.ndarray:
    """47x63 (both sides odd), a gray that changes per frame, and a red last column that a crop would lose."""
    img = np.full((47, 63, 3), 40 + 10 * (i % 8), np.uint8)
    img[:, -1] = (0, 0, 255)
    return img


def decoded(path):
    """-> (frames BGR, keyframe times in seconds) of a video file."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames, keys = [], []
        for packet in c.demux(stream):
            if packet.is_keyframe and packet.pts is not None:
                keys.append(float(packet.pts * packet.time_base))
            frames += [f.to_ndarray(format="bgr24") for f in packet.decode()]
        return frames, keys


def assert_padded_and_keyed(frames, keys, frame_gap_s):
    assert frames and all(f.shape == (48, 64, 3) for f in frames)          # padded by one, nothing cropped
    assert all(f[:47, 62, 2].mean() > 180 and f[:47, 63, 2].mean() > 180 for f in frames)   # red column, twice
    assert keys[0] == 0.0 and len(keys) >= 3
    assert max(np.diff(keys)) <= KEYFRAME_EVERY_S + frame_gap_s + 1e-3, keys


# -- the rules ---------------------------------------------------------------------------------------

def test_odd_sides_are_padded_by_replicating_the_last_row_and_column():
    img = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    out = pad_to_even(img)
    assert even_size(5, 3) == (6, 4) and out.shape == (4, 6, 3)
    assert np.array_equal(out[:3, :5], img)
    assert np.array_equal(out[3, :5], img[2]) and np.array_equal(out[:3, 5], img[:, 4])
    even = np.zeros((4, 6, 3), np.uint8)
    assert pad_to_even(even) is even and even_size(6, 4) == (6, 4)


def test_the_keyframe_clock_marks_the_first_frame_then_one_a_second_of_stream_time():
    clock = KeyframeClock()
    times = [10.0, 10.4, 10.9, 11.0, 11.3, 13.5, 13.6, 14.49, 14.5]
    assert [t for t in times if clock.due(t)] == [10.0, 11.0, 13.5, 14.5]


def test_without_the_first_encoder_the_next_one_is_used_and_said_once(monkeypatch):
    monkeypatch.setattr(encoding, "_chosen", {})
    said = []
    assert h264_encoder(("no_such_h264", "libx264"), log=said.append) == "libx264"
    assert h264_encoder(("no_such_h264", "libx264"), log=said.append) == "libx264"
    assert len(said) == 1 and "no usable no_such_h264" in said[0] and "through libx264" in said[0]
    assert h264_encoder(log=said.append) == "libx264" and len(said) == 1   # PyPI's PyAV has libx264: silent


def test_no_h264_encoder_at_all_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.setattr(encoding, "_chosen", {})
    with pytest.raises(SetupError, match=r"no usable H.264 encoder \(tried no_such_h264\).*pip install av") as e:
        h264_encoder(("no_such_h264",))
    assert "\n" not in str(e.value)


def test_x264_options_go_to_libx264_only_and_other_encoders_get_a_bit_rate():
    x264 = av.CodecContext.create("libx264", "w")
    set_up_encoder(x264, "libx264", 64, 48, 25, x264={"preset": "veryfast", "crf": "23"})
    other = av.CodecContext.create("mpeg4", "w")
    set_up_encoder(other, "mpeg4", 64, 48, 25, x264={"preset": "veryfast", "crf": "23"})
    assert x264.options == {"preset": "veryfast", "crf": "23"} and x264.gop_size == 25
    assert other.options == {} and other.bit_rate == encoding.fallback_bit_rate(64, 48, 25) and other.gop_size == 25
    assert (x264.width, x264.height, x264.pix_fmt) == (64, 48, "yuv420p")


# -- the users' paths, encoded and decoded back ------------------------------------------------------

def test_a_live_video_file_of_odd_frames_is_padded_with_a_keyframe_every_second(tmp_path):
    """Opened for 25 fps but written at 10 (drops upstream): the GOP of 25 frames would be 2.5 s;
    the keyframe clock keeps one every second of capture time."""
    sink = VideoFileSink(tmp_path / "live.mp4", live=True)
    sink.open(63, 47, 25)
    for i in range(31):
        sink.write(Frame(i, 100.0 + i / 10, odd_frame(i)), odd_frame(i), None)
    sink.close()
    frames, keys = decoded(tmp_path / "live.mp4")
    assert len(frames) == 31
    assert_padded_and_keyed(frames, keys, 0.1)


def test_an_event_clip_of_odd_frames_is_padded_with_a_keyframe_every_second(tmp_path):
    rec = ClipRecorder(tmp_path / "clips", "cam", keep_s=5, max_mb=10, fps=25)
    path = rec.start_clip("ev-1", 0.0)
    for i in range(31):
        rec.add_frame(i / 10, odd_frame(i))
        deadline = time.monotonic() + 10
        while not rec.tasks.empty() and time.monotonic() < deadline:   # none skipped: the clip has them all
            time.sleep(0.002)
    rec.end_clip("ev-1", 3.0)
    rec.close()
    assert rec.skipped == 0 and rec.written == [path]
    frames, keys = decoded(path)
    assert len(frames) == 31
    assert_padded_and_keyed(frames, keys, 0.1)
