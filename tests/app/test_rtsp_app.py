"""The whole app over RTSP, as a subprocess: an ffmpeg "camera" publishes the sample clip to
rtsp-server-perl, run_camera.py reads it from there, segments it and pushes the overlay back
to the same server, and a real RTSP viewer (ffmpeg) decodes the app's stream."""
from __future__ import annotations

import av
import pytest

from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import App, check_accounting, part_stats
from testkit.rtsp_server import decode_rtsp, publishers, relay, wait_published  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")


def test_rtsp_in_rtsp_out_decoded_by_a_viewer(relay, publishers, tmp_path):
    """An RTSP input through rtsp-server-perl feeds the app, and a real RTSP client
    decodes >= 50 frames of the app's RTSP output at the source's size (480x360)."""
    model = tiny_onnx((64, 96))
    publishers(relay.push_url("/camera"))
    wait_published(relay.pull_url("/camera"))   # before the app: a 404 at start is an error
    app = App("--source", relay.pull_url("/camera"), "--rtsp-transport", "udp", "--model", model,
              "--output", relay.push_url("/overlay"), "--output", tmp_path / "out.mkv",
              "--bitrate", 1_000_000, "--source-timeout", 10, log=tmp_path / "lat.csv")
    try:
        app.wait_rows(5, timeout_s=60)
        frames = decode_rtsp(relay.pull_url("/overlay"), 50, timeout_s=60)
    finally:
        app.signal()
    err = app.finish()
    assert app.proc.returncode == 0, err
    assert len(frames) == 50 and {f.shape for f in frames} == {(360, 480, 3)}
    s = check_accounting(err, tmp_path / "lat.csv")
    assert s["written"] >= 50
    rtsp = part_stats(err, "rtsp push")
    # The RTSP sink got every frame the pipeline wrote: each one sent or dropped with a reason.
    assert rtsp["written"] + rtsp["dropped.server_down"] + rtsp["dropped.send_error"] == s["written"]
    assert rtsp["connects"] == 1 and rtsp["outages"] == 0
    with av.open(str(tmp_path / "out.mkv")) as c:          # the file beside it is finalized
        assert sum(1 for _ in c.decode(video=0)) == s["written"]
