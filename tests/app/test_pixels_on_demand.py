"""No pixel work that no output needs: with `--output null` and scene analytics the run draws
no overlay at all (the summary and /metrics say so) and its coverage is that of a run that
draws; an http:// output draws only while a real MJPEG viewer is connected; a video file still
gets every frame drawn. All on the street clip with a small random-weight model."""
from __future__ import annotations

import json
import re
import socket
import threading
import time

import pytest

from app.session import Session
from app.settings import build
from engines.onnx_engine import OnnxEngine
from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import frames_in, run_camera
from testkit.http_clients import Viewer, metric_values, request

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
FRAMES = 12
ZONES = ("zones:\n  - name: all\n    polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]\n    classes: [road, sky]\n"
         "  - name: low\n    polygon: [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]\n    classes: [road]\n")


def overlays_line(stderr: str) -> tuple[int, int]:
    m = re.search(r"overlays drawn (\d+)  skipped (\d+)", stderr)
    assert m, f"no overlays line in: {stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2))


def run_with_zones(tmp_path, output: str):
    zones = tmp_path / "zones.yaml"
    zones.write_text(ZONES)
    log = tmp_path / f"cov-{output.replace('/', '_')}.jsonl"
    result = run_camera("--config", zones, "--source", SAMPLE_VIDEO, "--model", tiny_onnx(), "--output", output,
                        "--max-frames", FRAMES, "--coverage-log", log, "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"frames {FRAMES}  written {FRAMES}" in result.stderr, result.stderr[-2000:]
    return result.stderr, [json.loads(line) for line in log.read_text().splitlines()]


def test_overlay_counts_0_with_null_output_and_the_coverage_of_a_run_that_draws(tmp_path):
    null_err, null_cov = run_with_zones(tmp_path, "null")
    assert overlays_line(null_err) == (0, FRAMES)
    video = tmp_path / "out.mp4"
    mp4_err, mp4_cov = run_with_zones(tmp_path, str(video))
    assert overlays_line(mp4_err) == (FRAMES, 0)
    assert frames_in(video) == FRAMES              # every written frame drawn into the file
    assert len(null_cov) == FRAMES and [r["coverage"] for r in null_cov] == [r["coverage"] for r in mp4_cov]
    assert set(null_cov[0]["coverage"]) == {"all", "low"}


def overlays(port: int) -> tuple[float, float, float]:
    """(drawn, skipped, viewers) of cam0 from the run's /metrics."""
    status, _, body = request(port, "/metrics")
    assert status == 200
    text = body.decode()
    cam = (("camera", "cam0"),)
    return (metric_values(text, "bisenet_overlays_drawn_total").get(cam, 0.0),
            metric_values(text, "bisenet_overlays_skipped_total").get(cam, 0.0),
            metric_values(text, "bisenet_http_viewers").get((), 0.0))


def wait_for(what, check, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.1)


def test_an_http_output_draws_only_while_a_viewer_watches(free_port):
    port = free_port
    settings = build({"source": [str(SAMPLE_VIDEO)], "realtime": True, "loop": True,
                      "output": [f"http://127.0.0.1:{port}"]})
    engine = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    try:
        with Session(settings, engine, log=lambda msg: None) as session:
            runner = threading.Thread(target=session.run, daemon=True)
            runner.start()
            try:
                wait_for("unwatched frames", lambda: overlays(port)[1] >= 5)
                assert overlays(port)[0] == 0          # nobody watches: nothing drawn
                viewer = Viewer(port, "")              # a real MJPEG client: it got a frame
                try:
                    wait_for("frames to the viewer", lambda: len(viewer.arrivals) >= 3)
                    assert overlays(port)[0] >= 4
                finally:   # (its reader thread holds the socket's file: shut it down to end the connection)
                    viewer.sock.shutdown(socket.SHUT_RDWR)
                    viewer.close()
                wait_for("the viewer to leave", lambda: overlays(port)[2] == 0)
                time.sleep(0.3)                        # a frame drawn as it left is through
                drawn, skipped, _ = overlays(port)
                wait_for("more unwatched frames", lambda: overlays(port)[1] >= skipped + 5)
                assert overlays(port)[0] == drawn      # it left: no more drawing
            finally:
                session.stop(force=True, quiet=True)
                runner.join(30)
        assert not runner.is_alive()
    finally:
        engine.close()
