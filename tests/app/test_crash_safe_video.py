"""Recordings that survive a crash: mp4 outputs are fragmented (app/sinks.py), so a SIGKILL
leaves a file that plays up to its last complete fragment, and the latency log keeps every
finished row. The same file still plays normally in a browser."""
from __future__ import annotations

import re
import subprocess
import time

import numpy as np
import pytest

from app.frames import Frame
from app.latency import read_log
from app.encoding import KEYFRAME_EVERY_S
from app.sinks import VideoFileSink
from testkit.app_process import App
from testkit.app_helpers import ffprobe_frames, samples_in_complete_fragments
from testkit.calib_fixtures import tiny_segmenter
from testkit.http_clients import CHROMIUM


def test_sigkill_3_s_into_an_mp4_recording_leaves_a_playable_file(tmp_path, street_clip):
    model = tiny_segmenter(tmp_path / "tiny.onnx")
    app = App("--source", street_clip, "--realtime", "--loop", "--model", model,
              "--output", tmp_path / "out.mp4", log=tmp_path / "lat.csv")
    app.wait_rows(1, timeout_s=60)
    time.sleep(3.0)
    app.kill()                                       # SIGKILL: no handler, no trailer, no flush
    app.proc.communicate(timeout=30)
    rows = read_log(tmp_path / "lat.csv")            # row-complete: every line parses
    assert [r["frame"] for r in rows] == list(range(len(rows)))
    written = sum(1 for r in rows if not r["dropped"])
    frames, fragments = samples_in_complete_fragments(tmp_path / "out.mp4")
    # ffprobe reads every frame of every complete fragment; 3 s at 15 fps is at least 2 fragments.
    assert ffprobe_frames(tmp_path / "out.mp4") == frames
    assert fragments >= 2 and 15 * KEYFRAME_EVERY_S <= frames <= written, (frames, fragments, written)


def write_clip(path, n=45, fps=15):
    sink = VideoFileSink(path)
    sink.open(160, 120, fps)
    for i in range(n):
        img = np.zeros((120, 160, 3), np.uint8)
        img[:, : (i * 160) // n] = (40, 160, 220)   # a bar that grows: real motion to encode
        sink.write(Frame(i, 0.0, img), img, None)
    sink.close()


def test_keyframe_every_second_and_normal_duration(tmp_path):
    write_clip(tmp_path / "clip.mp4", n=45, fps=15)
    r = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                        str(tmp_path / "clip.mp4")], capture_output=True, text=True, timeout=60)
    duration = float(r.stdout)
    keys = keyframe_times(tmp_path / "clip.mp4")
    assert keys[0] == 0.0 and max(np.diff(keys)) <= KEYFRAME_EVERY_S + 1e-6, keys
    assert duration == pytest.approx(3.0, abs=1e-3)
    assert samples_in_complete_fragments(tmp_path / "clip.mp4")[0] == 45


def keyframe_times(path) -> list:
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
                        "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [float(t) for t, flags in (line.split(",")[:2] for line in r.stdout.splitlines()) if "K" in flags]


def test_live_recording_keyframes_every_second_even_when_frames_drop(tmp_path):
    """Nominal 30 fps but only 2 frames a second reach the file: keyframes still come every second."""
    sink = VideoFileSink(tmp_path / "live.mp4", live=True)
    sink.open(64, 48, 30)
    for i in range(12):
        img = np.full((48, 64, 3), 10 * i, np.uint8)
        sink.write(Frame(i, 100.0 + 0.5 * i, img), img, None)
    sink.close()
    keys = keyframe_times(tmp_path / "live.mp4")
    assert keys[0] == 0.0 and max(np.diff(keys)) <= KEYFRAME_EVERY_S + 1e-6, keys
    assert samples_in_complete_fragments(tmp_path / "live.mp4") == (12, len(keys))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_fragmented_mp4_plays_to_the_end_in_headless_chromium(tmp_path):
    write_clip(tmp_path / "clip.mp4", n=45, fps=15)
    (tmp_path / "play.html").write_text(
        "<!doctype html><video id=v muted src='clip.mp4'></video><div id=out>pending</div><script>"
        "const v = document.getElementById('v'); v.play();"
        "setInterval(() => { document.getElementById('out').textContent ="
        " `t=${v.currentTime.toFixed(2)} d=${v.duration} w=${v.videoWidth} e=${v.error && v.error.code}`; }, 100);"
        "</script>")
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={tmp_path / 'profile'}", "--autoplay-policy=no-user-gesture-required",
                        "--allow-file-access-from-files", "--virtual-time-budget=10000", "--dump-dom",
                        f"file://{tmp_path / 'play.html'}"], capture_output=True, text=True, timeout=120)
    m = re.search(r"t=([\d.]+) d=([\d.]+) w=(\d+) e=(\w+)", r.stdout)
    assert m, r.stdout[-2000:]
    t, d, w, e = float(m.group(1)), float(m.group(2)), int(m.group(3)), m.group(4)
    assert d == pytest.approx(3.0, abs=0.05) and w == 160 and e == "null" and t >= 2.9, m.group(0)
