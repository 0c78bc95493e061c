"""With several cameras, a live camera that is down at start is an outage (logged, counted,
reconnected with backoff) while the others run; a file camera that cannot open is still a start
error. Its password appears nowhere: not on stderr, in the latency log, /stats.json or
/metrics. run_camera.py as a real process."""
from __future__ import annotations

import pytest

from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import App, camera_counts, frames_in, run_camera

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
PW = "S3cretPW"
DEAD = f"rtsp://admin:{PW}@127.0.0.1:1/x"   # port 1: nothing listens, connection refused


def test_a_dead_live_camera_at_start_is_an_outage_and_the_clip_runs_to_its_end(clip, tmp_path, free_port):
    from testkit.http_clients import request

    port = free_port
    log = tmp_path / "lat.csv"
    app = App("--source", DEAD, "--source", clip, "--model", tiny_onnx(), "--output", tmp_path / "o_{camera}.mp4",
              "--output", f"http://127.0.0.1:{port}", log=log)
    try:
        app.wait_rows(20, timeout_s=90)   # every frame of the clip; the dead camera has none
        exported = b"".join(request(port, path)[2] for path in
                            ("/camera/cam0/stats.json", "/camera/cam1/stats.json", "/metrics"))
    finally:
        app.signal()   # the live camera never ends by itself: the user stops the run
        err = app.finish()
    assert app.proc.returncode == 0, err   # stopped by the user, the clip fully written: exit 0
    assert PW.encode() not in exported and PW not in err and PW not in log.read_text()
    assert f"cam0: source rtsp://admin:***@127.0.0.1:1/x: lost (down at start: cannot open" in err
    assert "cam0 source rtsp://admin:***@127.0.0.1:1/x: frames 0, outages 1" in err
    assert camera_counts(err)["cam1"]["written"] == 20
    assert frames_in(tmp_path / "o_cam1.mp4") == 20


def test_a_file_camera_that_cannot_open_is_still_a_start_error(clip, tmp_path):
    r = run_camera("--source", clip, "--source", tmp_path / "missing.mp4", "--model", tiny_onnx(),
                   "--output", tmp_path / "o_{camera}.mp4")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "missing.mp4 does not exist" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_every_camera_down_at_start_is_a_start_error(tmp_path):
    r = run_camera("--source", DEAD, "--source", DEAD.replace("/x", "/y"), "--model", tiny_onnx(),
                   "--output", tmp_path / "o_{camera}.mp4", timeout_s=120)
    assert r.returncode == 2, r.stderr
    assert PW not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("run_camera.py: error: no camera could be opened")
