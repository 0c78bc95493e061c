"""Many live cameras, one engine, where time matters: a real RTSP camera (rtsp-server-perl)
whose publisher dies and returns while three paced clips keep their rate, and a frozen live
camera that later batches do not wait for (their queue time). Every camera's accounting is
checked exactly, row by row."""
from __future__ import annotations

import time

import av
import numpy as np
import pytest

from app.latency import read_log
from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import App, camera_counts, check_camera_accounting, part_stats, written_rate
from testkit.rtsp_server import publishers, relay, wait_published  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")


def last_capture_s(log) -> float:
    return max(r["capture_s"] for r in read_log(log))


def test_four_live_cameras_one_rtsp_publisher_dies_the_others_keep_their_rate(relay, publishers, tmp_path):
    """Three clips paced at 15 fps and an RTSP camera (ffmpeg -> rtsp-server-perl). The RTSP
    publisher is killed mid-run (SIGTERM; after a SIGKILL rtsp-server-perl would refuse the
    returning publisher its path): the other cameras keep their rate (within 10%), the outage
    is logged, the camera resumes when the publisher returns, every frame is accounted for."""
    url = relay.push_url("/cam3")
    camera = publishers(url)
    wait_published(relay.pull_url("/cam3"))
    log = tmp_path / "lat.csv"
    app = App(*["--source", SAMPLE_VIDEO] * 3, "--source", relay.pull_url("/cam3"), "--realtime", "--loop",
              "--rtsp-transport", "udp", "--source-timeout", 2, "--model", tiny_onnx((64, 96), dynamic_batch=True),
              "--output", "null", log=log)
    try:
        app.wait_rows(4 * 20, timeout_s=60)
        time.sleep(1.0)                             # past the start (4 decoders opening)
        t0 = last_capture_s(log)
        time.sleep(4.0)
        t_kill = last_capture_s(log)
        camera.stop()          # the camera's stream stops; the relay stays (and frees its path)
        time.sleep(5.0)                             # detected after --source-timeout 2 s, retried
        t_back = last_capture_s(log)
        publishers(url)
        deadline = time.monotonic() + 60
        while not any(r["camera"] == "cam3" and r["capture_s"] > t_back and not r["dropped"] for r in read_log(log)):
            assert time.monotonic() < deadline, "the RTSP camera did not resume"
            assert app.proc.poll() is None, app.finish()
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        app.signal()
    err = app.finish()
    assert app.proc.returncode == 0, err
    counts = check_camera_accounting(err, log)
    assert set(counts) == {"cam0", "cam1", "cam2", "cam3"}
    rows = read_log(log)
    for cam in ("cam0", "cam1", "cam2"):
        # Not slowed down by the dead camera (it may rise: the dead camera's share is free).
        before, during = written_rate(rows, t0, t_kill, cam), written_rate(rows, t_kill, t_back, cam)
        assert before > 5 and during >= 0.9 * before, (cam, before, during)
    assert written_rate(rows, t_kill + 2.5, t_back, "cam3") == 0            # it really was down
    source_line = f"cam3: source {relay.pull_url('/cam3')}: "
    assert f"{source_line}lost (" in err and f"{source_line}back after" in err   # the outage, logged
    source = part_stats(err, "cam3 source rtsp://")
    assert source["outages"] == 1 and source["outage_s_total"] >= 2.0 and source["down_now_s"] == 0
    assert camera_counts(err)["cam3"]["written"] > 0


class PacedCamera:
    """A live source handing out `frames` real street frames at `fps`, then (stall=True)
    blocking for `stall_s` seconds like a frozen camera before it ends."""

    live = True

    def __init__(self, images, fps=30.0, stall_after=None, stall_s=0.0):
        self.images, self.fps, self.stall_after, self.stall_s = images, fps, stall_after, stall_s
        self.description = "paced test camera"
        self.n, self.t0 = 0, None

    def read(self):
        if self.t0 is None:
            self.t0 = time.monotonic()
        if self.stall_after is not None and self.n >= self.stall_after:
            time.sleep(self.stall_s)
            return None
        if self.n >= len(self.images):
            return None
        wait = self.t0 + self.n / self.fps - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.n += 1
        return self.images[self.n - 1], None

    def close(self):
        pass


def test_a_stalled_live_camera_is_not_waited_for_and_batches_go_on_without_it(tmp_path):
    """cam2 freezes after 3 frames (no outage declared yet: a plain reader). With a 400 ms batch
    deadline, waiting for it would hold every later frame of cam0/cam1 ~400 ms in the queue."""
    from app.camera import Camera
    from app.latency import LatencyRecorder
    from app.pipeline import Pipeline
    from app.sinks import NullSink
    from engines.onnx_engine import OnnxEngine

    with av.open(str(SAMPLE_VIDEO)) as c:
        images = [f.to_ndarray(format="bgr24") for _, f in zip(range(45), c.decode(video=0))]
    engine = OnnxEngine(tiny_onnx((64, 96), dynamic_batch=True), threads=1)
    cams = [Camera("cam0", PacedCamera(images), [NullSink()]), Camera("cam1", PacedCamera(images), [NullSink()]),
            Camera("cam2", PacedCamera(images, stall_after=3, stall_s=2.0), [NullSink()])]
    rec = LatencyRecorder(tmp_path / "lat.csv")
    p = Pipeline(cams, engine, recorder=rec, batch_timeout_ms=400)
    assert p.scheduler.batch_size == 3
    assert p.run() == 0
    rows = read_log(tmp_path / "lat.csv")
    assert rec.summary(p.captured_by_camera())["unaccounted"] == 0
    assert [sum(1 for r in rows if r["camera"] == c) for c in ("cam0", "cam1", "cam2")] == [45, 45, 3]
    later = [r for r in rows if r["camera"] in ("cam0", "cam1") and r["frame"] >= 10 and not r["dropped"]]
    assert len(later) >= 60                                # the live cameras kept going
    assert np.median([r["queue_ms"] for r in later]) < 200, "batches waited for the frozen camera"
    assert max(r["batch_size"] for r in later) == 2        # cam0 and cam1 still batched together
