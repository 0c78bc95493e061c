"""RTSP servers that die and return, on 127.0.0.1 only, through run_camera.py as a real process:
the source's server killed and restarted (frames resume, one outage of its length counted), the
output's server down at start and up later, and two signals during a source outage. Every run
ends with captured = written + dropped (by reason), checked exactly."""
from __future__ import annotations

import time

import pytest

from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import App, check_accounting, frames_in, part_stats
from testkit.rtsp_server import decode_rtsp, publishers, relay, wait_published  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")


def test_rtsp_source_server_killed_and_restarted_frames_resume(relay, publishers, tmp_path):
    camera = publishers(relay.push_url("/camera"))
    wait_published(relay.pull_url("/camera"))   # before the app: a 404 at start is an error
    app = App("--source", relay.pull_url("/camera"), "--rtsp-transport", "udp", "--model", tiny_onnx((64, 96)),
              "--output", "null", "--source-timeout", 5, log=tmp_path / "lat.csv")
    try:
        app.wait_rows(15, timeout_s=60)
        relay.kill()                      # the camera's server dies; the app keeps running
        camera.kill()
        time.sleep(2.0)
        assert app.proc.poll() is None
        before = app.rows()
        relay.start()
        publishers(relay.push_url("/camera"))
        app.wait_rows(before + 30, timeout_s=60)   # frames resume
    finally:
        app.signal()
    err = app.finish()
    assert app.proc.returncode == 0, err
    check_accounting(err, tmp_path / "lat.csv")
    assert "lost (" in err and "back after" in err
    source = part_stats(err, "source rtsp://")
    assert source["outages"] == 1 and source["outage_s_total"] >= 2.0 and source["down_now_s"] == 0


def test_rtsp_sink_server_down_at_start_up_later_stream_appears(relay, tmp_path):
    relay.kill()                          # nothing listens when the app starts
    app = App("--source", SAMPLE_VIDEO, "--realtime", "--loop", "--model", tiny_onnx((64, 96)),
              "--output", relay.push_url("/overlay"), "--output", tmp_path / "out.mp4",
              log=tmp_path / "lat.csv")
    try:
        app.wait_rows(15, timeout_s=60)
        relay.start()
        frames = decode_rtsp(relay.pull_url("/overlay"), 20, timeout_s=60)
    finally:
        app.signal()
    err = app.finish()
    assert app.proc.returncode == 0, err
    assert len(frames) == 20 and frames[0].shape == (360, 480, 3)
    s = check_accounting(err, tmp_path / "lat.csv")
    rtsp = part_stats(err, "rtsp push")
    assert rtsp["dropped.server_down"] >= 10 and rtsp["written"] >= 20 and rtsp["connects"] == 1
    assert rtsp["written"] + rtsp["dropped.server_down"] + rtsp["dropped.send_error"] == s["written"]
    assert frames_in(tmp_path / "out.mp4") == s["written"]    # the other output lost nothing


def test_second_signal_forces_exit_during_an_rtsp_outage(relay, publishers, tmp_path):
    """The first SIGINT interrupts a source waiting out an outage; a second one right after
    forces the exit. Either way: exit 0, the video finalized, every frame accounted for."""
    publishers(relay.push_url("/camera"))
    wait_published(relay.pull_url("/camera"))   # before the app: a 404 at start is an error
    app = App("--source", relay.pull_url("/camera"), "--rtsp-transport", "udp", "--model", tiny_onnx((64, 96)),
              "--output", tmp_path / "out.mkv", "--source-timeout", 2, log=tmp_path / "lat.csv")
    try:
        app.wait_rows(15, timeout_s=60)    # rows: a live source drops frames on a busy box
        relay.kill()                       # outage: the source is now retrying
        time.sleep(1.0)
    finally:
        app.signal()
        app.signal()
    err = app.finish(timeout_s=30)
    assert app.proc.returncode == 0, err
    s = check_accounting(err, tmp_path / "lat.csv")
    assert frames_in(tmp_path / "out.mkv") == s["written"] >= 5
