"""Faults are one line and the right exit code, nothing left behind: a name that is too long, a
latency log that cannot be written to its end (a file-size limit, like a full disk), a port
that cannot be bound (no token printed), a corrupt ONNX to calibrate, a corrupt checkpoint to
resume, an RTSP server that accepts and stays silent."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from testkit.app_helpers import REPO, SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import ENV, run_camera

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")


@pytest.mark.parametrize("flag", ["--latency-log", "--output", "--source"])
def test_a_name_too_long_is_one_line_naming_the_file(flag, clip, tmp_path):
    long_name = tmp_path / ("a" * 300 + (".csv" if flag == "--latency-log" else ".mp4"))
    args = {"--latency-log": ["--source", clip, "--output", tmp_path / "o.mp4"], "--output": ["--source", clip],
            "--source": ["--output", tmp_path / "o.mp4"]}[flag]
    r = run_camera("--model", tiny_onnx(), *args, flag, long_name)
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    assert flag in r.stderr and str(long_name) in r.stderr and "use a shorter file name" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_latency_log_that_cannot_be_written_to_its_end_is_exit_1_naming_it(clip, tmp_path):
    """A file-size limit (EFBIG) stands in for a full disk (ENOSPC): the same write path."""
    log = tmp_path / "lat.csv"
    r = subprocess.run(["prlimit", "--fsize=600", sys.executable, str(REPO / "run_camera.py"), "--source", clip,
                        "--model", tiny_onnx(), "--output", "null", "--latency-log", log],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"error: --latency-log cannot write {log} (File too large); " in r.stderr
    assert r.stderr.count(f"cannot write {log}") == 2   # when it happened, and in the exit line
    assert "frames 20  written 20" in r.stderr   # the run went on
    assert "Traceback" not in r.stderr


def test_a_port_that_cannot_be_bound_prints_no_token(clip, tmp_path, free_port):
    port = free_port
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", port))
        busy.listen()
        r = run_camera("--source", clip, "--model", tiny_onnx(), "--output", f"http://@:{port}")
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot listen" in r.stderr and "token" not in r.stderr.lower()


def _bisenet(*args, timeout_s=300):
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout_s)


def test_calibrate_a_corrupt_onnx_is_one_line_and_leaves_nothing(tmp_path):
    good = tiny_onnx()
    bad = tmp_path / "m.onnx"
    bad.write_bytes(good.read_bytes()[:3000])   # truncated: protobuf cannot parse it
    (tmp_path / "m.onnx.json").write_bytes(good.with_name(good.name + ".json").read_bytes())
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    r = _bisenet("calibrate", "--onnx", bad, "--data", SAMPLE_VIDEO, "--num-images", 2, "-o", tmp_path / "m.int8.onnx")
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines() == [f"bisenet calibrate: error: --onnx {bad} is not a readable ONNX model "
                                             "(Error parsing message with type 'onnx.ModelProto'); re-export it "
                                             "with `bisenet export`"]
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before   # no .calib.txt, inputs unchanged


def test_train_resume_from_a_corrupt_checkpoint_is_one_line_and_leaves_no_work_dir(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04" + b"\x00" * 4000)   # a zip header and nothing else
    r = _bisenet("train", "--config", "camvid_r18_cpu", "--data-root", REPO.parent / "shared" / "data" / "camvid",
                 "--work-dir", tmp_path / "work", "--resume", corrupt, "--device", "cpu")
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-3000:]
    assert f"cannot read checkpoint {corrupt}" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pth"]   # no empty work dir


def test_an_rtsp_server_that_accepts_and_stays_silent_is_reported_as_a_timeout(tmp_path):
    with socket.socket() as silent:   # accepts (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"rtsp://admin:PW@127.0.0.1:{silent.getsockname()[1]}/x"
        r = run_camera("--source", url, "--source-timeout", "2", "--model", tiny_onnx(),
                       "--output", tmp_path / "o.mp4")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"run_camera.py: error: cannot open {url.replace(':PW@', ':***@')}: timed out, no answer within 2 s (the "
        "server accepted the connection but sent nothing); check that the stream is running, or raise "
        "--source-timeout"]
    assert list(tmp_path.iterdir()) == []
