"""run_camera.py end to end as a real subprocess: mp4 + latency log, SIGTERM, presets, errors."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import av
import pytest

from app.latency import read_log
from app.run import main as run_main
from testkit.app_process import terminate
from testkit.app_helpers import REPO, SAMPLE_VIDEO, tiny_onnx

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_camera(*args, **kw):
    return subprocess.run([sys.executable, str(REPO / "run_camera.py"), *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300, **kw)


def video_frames(path):
    with av.open(str(path)) as c:
        return [(f.width, f.height) for f in c.decode(video=0)]


def test_video_in_mp4_and_latency_log_out(tmp_path):
    """A clip in, an mp4 and a latency log out, every frame written; a small model input (64x96) keeps it quick."""
    model = tiny_onnx((64, 96))
    r = run_camera("--source", SAMPLE_VIDEO, "--model", model, "--output", tmp_path / "out.mp4",
                   "--latency-log", tmp_path / "lat.csv", "--threads", 1)
    assert r.returncode == 0, r.stderr
    frames = video_frames(tmp_path / "out.mp4")
    assert len(frames) == 101 and set(frames) == {(480, 360)}
    rows = read_log(tmp_path / "lat.csv")
    assert [row["frame"] for row in rows] == list(range(101)) and not any(row["dropped"] for row in rows)
    assert "frames 101  written 101  dropped 0" in r.stderr


@pytest.mark.slow
def test_full_size_r18_352x480(tmp_path):
    """The same at the real model size, on the clip's first 20 frames (each a full-size CPU
    inference: the rest of the clip would add time, not checks)."""
    model = tiny_onnx((352, 480))
    r = run_camera("--source", SAMPLE_VIDEO, "--max-frames", 20, "--model", model, "--output", tmp_path / "out.mp4",
                   "--latency-log", tmp_path / "lat.csv")
    assert r.returncode == 0, r.stderr
    assert video_frames(tmp_path / "out.mp4") == [(480, 360)] * 20
    rows = read_log(tmp_path / "lat.csv")
    assert [row["frame"] for row in rows] == list(range(20)) and not any(row["dropped"] for row in rows)
    assert "frames 20  written 20  dropped 0" in r.stderr


def wait_for_rows(path, n, proc, deadline_s=120):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"run_camera exited early: {proc.communicate()[1]}")
        if path.is_file() and sum(1 for _ in open(path)) > n:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {n} rows in {path} within {deadline_s} s")


def test_sigterm_mid_run_leaves_a_playable_mp4_and_a_complete_log(tmp_path):
    model = tiny_onnx((64, 96))
    # --realtime --loop: a run that would never end by itself.
    proc = subprocess.Popen([sys.executable, str(REPO / "run_camera.py"), "--source", str(SAMPLE_VIDEO),
                             "--realtime", "--loop", "--model", str(model), "--output", str(tmp_path / "out.mp4"),
                             "--latency-log", str(tmp_path / "lat.csv"), "--threads", "1"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(tmp_path / "lat.csv", 15, proc)
    except BaseException:
        proc.kill()
        raise
    err = terminate(proc)
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping capture" in err
    rows = read_log(tmp_path / "lat.csv")
    captured = len(rows)
    assert sorted(r["frame"] for r in rows) == list(range(captured))
    written = [r for r in rows if not r["dropped"]]
    assert all(r["reason"] == "queue_full" for r in rows if r["dropped"])
    assert f"frames {captured}  written {len(written)}" in err
    assert video_frames(tmp_path / "out.mp4") == [(480, 360)] * len(written)


def test_preset_values_flags_override_and_unknown_keys(tmp_path, capsys):
    preset = tmp_path / "p.yaml"
    model = tiny_onnx((64, 96))
    preset.write_text(f"source: {SAMPLE_VIDEO}\nmodel: {model}\nmax-frames: 3\nalpha: 0.3\n"
                      f"output: [{tmp_path / 'from_preset'}/]\nsave_labels: true\n")
    assert run_main(["--config", str(preset), "--max-frames", "2", "--threads", "1"]) == 0
    written = sorted(p.name for p in (tmp_path / "from_preset").glob("*.png"))
    assert written == ["000000.png", "000001.png"]           # the flag beat the preset's 3
    assert len(list((tmp_path / "from_preset" / "labels").glob("*.png"))) == 2
    capsys.readouterr()

    preset.write_text("source: 0\nmodle: x.onnx\n")
    assert run_main(["--config", str(preset)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'modle'" in err[0] and str(preset) in err[0]


@pytest.mark.parametrize("name", ["desktop-webcam", "jetson-csi", "headless-file"])
def test_shipped_presets_load(name):
    from app.run import _parser, load_preset

    assert load_preset(name, _parser())


def test_bad_inputs_are_one_line_errors(tmp_path):
    model = tiny_onnx((64, 96))
    cases = [["--source", SAMPLE_VIDEO, "--model", tmp_path / "missing.onnx", "--output", "null"],
             ["--source", tmp_path / "nothing.mp4", "--model", model, "--output", "null"],
             ["--source", SAMPLE_VIDEO, "--model", model, "--output", tmp_path / "x.xyz"],
             ["--model", model]]
    for args in cases:
        r = run_camera(*args)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("run_camera.py: error:")


def test_help_of_both_entry_points():
    r = run_camera("--help")
    assert r.returncode == 0 and "--latency-log" in r.stdout and "Example" in r.stdout
    r = subprocess.run([sys.executable, "-m", "app.cli", "run", "--help"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--source" in r.stdout
