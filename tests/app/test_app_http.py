"""The HTTP output: real sockets on 127.0.0.1, and the page in headless Chromium."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from app.frames import Frame
from app.http_sink import HttpSink, parse_http_spec
from testkit.app_process import terminate
from testkit.app_helpers import REPO, tiny_onnx
from testkit.http_clients import CHROMIUM, CHROMIUM_FLAGS

def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def test_parse_spec():
    assert parse_http_spec("http://@:8080") == ("0.0.0.0", 8080)
    assert parse_http_spec("http://127.0.0.1:9000") == ("127.0.0.1", 9000)
    with pytest.raises(ValueError, match="port"):
        parse_http_spec("http://@:eighty")


def test_page_stats_snapshot_and_mjpeg_stream():
    sink = HttpSink("127.0.0.1", 0)
    base = f"http://127.0.0.1:{sink.port}"
    try:
        with pytest.raises(urllib.error.HTTPError, match="503"):
            get(base + "/snapshot.jpg")          # no frame yet
        status, ctype, body = get(base + "/")
        assert status == 200 and ctype.startswith("text/html") and b"/stream.mjpg" in body
        assert b'<script src="/page.js">' in body and b"stats.json" in get(base + "/page.js")[2]
        img = np.zeros((48, 64, 3), np.uint8)
        img[:, 32:] = (0, 0, 255)
        for i in range(3):
            sink.write(Frame(i, time.monotonic() - 0.05, img, None, {"inference": 12.0}), img, None)
        stats = json.loads(get(base + "/stats.json")[2])
        assert stats["frame"] == 2 and stats["inference_ms"] == pytest.approx(12.0) and stats["e2e_ms"] >= 50
        status, ctype, body = get(base + "/snapshot.jpg")
        snap = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert ctype == "image/jpeg" and snap.shape == (48, 64, 3) and snap[:, 40:, 2].mean() > 200

        with urllib.request.urlopen(base + "/stream.mjpg", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            parts = []
            for i in range(3, 5):
                sink.write(Frame(i, time.monotonic(), img), img, None)
                while True:
                    line = r.readline()
                    if line.lower().startswith(b"content-length:"):
                        n = int(line.split(b":")[1])
                        r.readline()
                        parts.append(r.read(n))
                        break
        for data in parts:
            assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
    finally:
        sink.close()


def test_a_busy_port_is_a_one_line_error():
    first = HttpSink("127.0.0.1", 0)
    try:
        with pytest.raises(RuntimeError, match="cannot listen") as e:
            HttpSink("127.0.0.1", first.port)
        assert "\n" not in str(e.value)
    finally:
        first.close()


def wait_for_frames(base, proc, n=3, deadline_s=120):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"run_camera exited early: {proc.communicate()[1]}")
        try:
            if json.loads(get(base + "/stats.json", timeout=2)[2])["frame"] >= n:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError("the app served no frames")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_live_page_shows_the_overlay_in_headless_chromium(tmp_path, street_clip, free_port):
    model = tiny_onnx((64, 96))
    palette = np.array(json.loads(open(str(model) + ".json").read())["palette"])[:, ::-1]   # BGR
    port = free_port
    base = f"http://127.0.0.1:{port}"
    # mask mode: every pixel of the video is a palette color, easy to find in a screenshot.
    proc = subprocess.Popen([sys.executable, str(REPO / "run_camera.py"), "--source", str(street_clip),
                             "--realtime", "--loop", "--model", str(model), "--output", base, "--mode", "mask",
                             "--hud", "--threads", "1"],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_frames(base, proc)
        def chromium(profile: str, wait_ms: int, *args) -> subprocess.CompletedProcess:
            # A fresh profile per browser: a previous browser still shutting down keeps its
            # profile locked, and a second one on the same profile does not load the page itself.
            flags = CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / profile}", "--window-size=800,600",
                                      f"--timeout={wait_ms}"]
            return subprocess.run([CHROMIUM, *flags, *args, base + "/"], capture_output=True, text=True,
                                  timeout=120)

        shot = tmp_path / "page.png"
        chromium("profile-shot", 10000, f"--screenshot={shot}")
        dom = chromium("profile-dom", 10000, "--dump-dom").stdout
        # What the page's script polls for its stats line. (Checked here rather than in the
        # dumped DOM: in some fresh-clone CI runs headless Chromium's --dump-dom came back
        # before the page's first fetch had answered, three times in a row.)
        live = json.loads(get(base + "/stats.json", timeout=10)[2])
    except BaseException:
        proc.kill()
        raise
    err = terminate(proc)
    assert proc.returncode == 0, err
    assert '<div id="stats">' in dom and '<script src="/page.js">' in dom     # the page Chromium loaded
    assert live["frame"] >= 3 and live["fps"] > 0 and live["e2e_ms"] > 0 and live["inference_ms"] > 0
    page = cv2.imread(str(shot))
    assert page is not None and page.shape[:2] == (600, 800)
    # The 480x360 video sits under the stats line: most of it must be palette colors (JPEG-close).
    video = page[60:380, 10:470].reshape(-1, 1, 3).astype(int)
    nearest = np.abs(video - palette[None].astype(int)).sum(axis=2).min(axis=1)
    assert (nearest < 40).mean() > 0.9
    # ...and the page around it is the dark background, not the video.
    assert np.abs(page[500:590, 600:790].astype(int) - 17).max() < 5
