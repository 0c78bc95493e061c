"""Fault tests, each bounded in time, through run_camera.py as a real process: bad video files,
bad models, a failing output, and signals. Every run ends with captured = written + dropped
(by reason), checked exactly. RTSP servers that die and return: test_faults_rtsp.py."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess

import pytest

from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import App, check_accounting, frames_in, part_stats, run_camera

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")


def test_truncated_and_corrupt_video_files(tmp_path):
    data = SAMPLE_VIDEO.read_bytes()
    # A recording cut off mid-way: an mp4 whose index is at the end cannot be read at all...
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    r = run_camera("--source", tmp_path / "cut.mp4", "--model", tiny_onnx((64, 96)), "--output", "null")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cut.mp4" in r.stderr, r.stderr
    assert "truncated" in r.stderr
    # ...a streamable one (index first, as cameras record) plays up to the cut.
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLE_VIDEO), "-c", "copy", "-movflags", "+faststart",
                    str(tmp_path / "fast.mp4")], check=True, timeout=60)
    fast = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut_fast.mp4").write_bytes(fast[: len(fast) * 6 // 10])
    # Bytes overwritten with garbage inside the video data.
    bad = bytearray(data)
    for i in range(40):
        at = len(data) // 4 + i * (len(data) // 80)
        bad[at:at + 64] = bytes((at * 7 + k) % 251 for k in range(64))
    (tmp_path / "corrupt.mp4").write_bytes(bytes(bad))
    for name, expect in (("cut_fast.mp4", "missing_frames"), ("corrupt.mp4", "corrupt_frames")):
        log = tmp_path / f"{name}.csv"
        r = run_camera("--source", tmp_path / name, "--model", tiny_onnx((64, 96)), "--output",
                       tmp_path / f"{name}.out.mp4", "--latency-log", log, "--threads", 1)
        assert r.returncode == 0, r.stderr
        s = check_accounting(r.stderr, log)
        bad_count = part_stats(r.stderr, f"source {tmp_path / name}")[expect]
        assert bad_count > 0
        assert frames_in(tmp_path / f"{name}.out.mp4") == s["written"] > 0
        if expect == "missing_frames":
            assert s["written"] + bad_count == 101


def test_missing_or_mismatched_model_is_one_line_error(tmp_path):
    model = tiny_onnx((64, 96))
    cases = {}
    cases["missing"] = tmp_path / "nope.onnx"
    (tmp_path / "no_sidecar.onnx").write_bytes(model.read_bytes())
    cases["no sidecar"] = tmp_path / "no_sidecar.onnx"
    shape = tmp_path / "shape.onnx"
    shape.write_bytes(model.read_bytes())
    meta = json.loads(model.with_name(model.name + ".json").read_text())
    meta["input_shape"] = [1, 3, 128, 256]             # the graph says 64x96
    shape.with_name(shape.name + ".json").write_text(json.dumps(meta))
    cases["sidecar shape mismatch"] = shape
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.read_bytes()[:5000])      # a truncated download
    shutil.copy(model.with_name(model.name + ".json"), broken.with_name(broken.name + ".json"))
    cases["truncated onnx"] = broken
    bad_json = tmp_path / "bad_json.onnx"
    bad_json.write_bytes(model.read_bytes())
    bad_json.with_name(bad_json.name + ".json").write_text("{not json")
    cases["corrupt sidecar"] = bad_json
    cases["engine without TensorRT"] = tmp_path / "model.engine"
    cases["engine without TensorRT"].write_bytes(b"not an engine")
    for what, path in cases.items():
        r = run_camera("--source", SAMPLE_VIDEO, "--model", path, "--output", "null")
        assert r.returncode == 2, (what, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (what, r.stderr)
        assert r.stderr.startswith("run_camera.py: error:"), (what, r.stderr)


def test_a_sink_that_raises_the_others_go_on_and_the_failure_is_reported(tmp_path):
    frames_dir = tmp_path / "frames"
    app = App("--source", SAMPLE_VIDEO, "--realtime", "--model", tiny_onnx((64, 96)),
              "--output", f"{frames_dir}/", "--output", tmp_path / "out.mp4", log=tmp_path / "lat.csv")
    app.wait_rows(10, timeout_s=60)
    frames_dir.rename(tmp_path / "gone")   # at once (a PNG written between rmtree's list and rmdir would stay)
    frames_dir.write_text("a file where the folder was: every later PNG write fails")
    shutil.rmtree(tmp_path / "gone")
    err = app.finish(timeout_s=120)                      # runs to the end of the clip
    assert app.proc.returncode == 1, err                 # the exit status tells: an output failed
    s = check_accounting(err, tmp_path / "lat.csv")
    assert s["captured"] == 101 and s["written"] + s["reasons"].get("queue_full", 0) == 101
    assert f"output {frames_dir} failed" in err
    assert err.rstrip().splitlines()[-1] == f"exit 1: output {frames_dir} could not be written"
    assert frames_in(tmp_path / "out.mp4") == s["written"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finalizes_files_and_log_and_exits_0(tmp_path, sig):
    app = App("--source", SAMPLE_VIDEO, "--realtime", "--loop", "--model", tiny_onnx((64, 96)),
              "--output", tmp_path / "out.mp4", log=tmp_path / "lat.csv")
    app.wait_rows(20, timeout_s=60)
    app.signal(sig)
    err = app.finish(timeout_s=60)
    assert app.proc.returncode == 0, err
    s = check_accounting(err, tmp_path / "lat.csv")
    assert frames_in(tmp_path / "out.mp4") == s["written"] >= 10
