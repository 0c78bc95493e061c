"""Every bench script runs end to end on a tiny configuration, so none can rot unseen (a
smoke test: no speed is asserted; each script's own pass/fail verdict and exit code are).
bench/models.py has its own smoke test (tests/bench/test_bench_models.py); bench/gpu_check.py's
plan/skip logic is tested in tests/bench/test_gpu_check.py."""
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from testkit.app_helpers import REPO, SAMPLE_VIDEO, tiny_onnx

CHECKPOINT = REPO.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"
CAMVID = REPO.parent / "shared" / "data" / "camvid"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")
needs_clip = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="no sample clip in ../shared/data/samples")


def bench(script: str, *args, timeout_s: float = 300) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "bench" / script), *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout_s)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"bench/{script} exited {proc.returncode}:\n{out[-3000:]}"
    return out


@needs_ffmpeg
@needs_clip
def test_soak_short(tmp_path):
    out = bench("soak.py", "--frames", 60, "--warmup", 10, "--sample-every", 0.2, "--model", tiny_onnx(),
                "--keep", tmp_path)
    assert "result        PASS" in out and "accounting exact" in out, out


@needs_ffmpeg
@needs_clip
def test_in_process_soak_one_minute(tmp_path):
    """One process, 4 cameras (one over RTSP whose publisher drops), viewers, broker restarts and
    reloads for 60 s: no crash, threads and fds within their bounds, every frame accounted for
    across the rotated log parts (the RSS verdict is only printed at this length)."""
    out = bench("soak.py", "--in-process", "--minutes", 1, "--log-max-mb", 0.05, "--model", tiny_onnx(),
                "--keep", tmp_path, timeout_s=240)
    assert "result        PASS" in out and "every id once" in out, out
    assert "reloads 2," in out, out


@needs_clip
def test_pipeline_bench_short():
    out = bench("pipeline.py", "--model", tiny_onnx(), "--frames", 3, "--rounds", 1, "--threads", 1)
    assert "pipeline" in out and "model-only" in out, out
    assert "decode core-ms" in out and "pipeline/limit" in out, out   # the box's limit beside the ratio


@needs_clip
def test_multistream_bench_short():
    out = bench("multistream.py", "--size", "64x96", "--cameras", "1,2", "--frames", 4, "--modes", "file",
                "--model-seconds", 0.1, "--threads", 1)   # model fps: at least one inference each
    assert "batch-N" in out and "file " in out, out


@needs_ffmpeg
@needs_clip
def test_crash_loss_bench_short():
    out = bench("crash_loss.py", "--at", 2.0)
    assert "lost" in out.lower(), out


@needs_clip
def test_http_clients_bench_short():
    out = bench("http_clients.py", "--model", tiny_onnx(), "--rounds", 1, "--seconds", 1.5)
    assert "fps" in out.lower(), out


@needs_ffmpeg
def test_rtsp_latency_bench_short():
    if shutil.which("rtsp-server-perl") is None:
        pytest.skip("needs rtsp-server-perl (apt-get install rtsp-server-perl)")
    out = bench("rtsp_latency.py", "--frames", 30)
    assert "p50" in out, out


def test_int8_benches_short(tmp_path):
    """int8_speed.py calibrates and times a tiny pair; int8_nodes.py profiles the int8 model."""
    if not (CAMVID / "train.txt").is_file():
        pytest.skip("no CamVid in ../shared/data")
    out = bench("int8_speed.py", "--random-init", "--sizes", "64x96", "--num-images", 2, "--runs", 1, "--warmup", 0,
                "--threads", 1, "--workdir", tmp_path)
    assert "int8" in out, out
    int8 = sorted(tmp_path.rglob("*.int8.onnx"))
    assert int8, f"no int8 model in {tmp_path}: {out[-2000:]}"
    out = bench("int8_nodes.py", int8[0], "--runs", 1, "--threads", 1)
    assert "QLinearConv" in out or "onnxruntime" in out.lower(), out


def test_fp16_export_bench_short():
    pytest.importorskip("onnx")
    if not CHECKPOINT.is_file() or not (CAMVID / "val.txt").is_file():
        pytest.skip("needs ../shared/models/camvid_r18-d32_cpu.pth and CamVid val")
    out = bench("fp16_export.py", "--checkpoint", CHECKPOINT, "--frames", 2, "--size", "64x96", "--threads", 1)
    assert "%" in out, out


def test_triton_bench_short():
    if not (REPO / ".venv-triton" / "bin" / "python").exists():
        pytest.skip("needs .venv-triton (bash scripts/setup_triton.sh)")
    with open(Path(tempfile.gettempdir()) / "bisenet-triton-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # one Triton server per machine at a time (as tests/engines/test_triton.py)
        out = bench("triton.py", "--onnx", tiny_onnx(), "--clients", 2, "--frames", 2, "--rounds", 1, timeout_s=400)
    assert "local" in out.lower(), out


def needs_trained_model():
    if not CHECKPOINT.is_file():
        pytest.skip("needs ../shared/models/camvid_r18-d32_cpu.pth")


@needs_clip
def test_analytics_benches_short(tmp_path, camvid_onnx):
    """bench/analytics.py (cost on vs off) and bench/analytics_accuracy.py (coverage vs CamVid's labels)."""
    needs_trained_model()
    model = camvid_onnx   # the trained model exported at 352x480
    out = bench("analytics.py", "--model", model, "--frames", 6, "--threads", 1)   # 3 of them warm-up
    assert "%" in out, out
    out = bench("analytics_accuracy.py", "--model", model, "--frames", 10)   # every frame has a label map
    assert "MAE" in out or "mae" in out.lower(), out
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():   # the end-to-end outage run
        out = bench("analytics.py", "--model", model, "--broker-outage", "--frames", 4, "--rounds", 1, "--threads", 1)
        assert "| analytics broker killed |" in out and "events: mqtt" in out, out


@needs_ffmpeg
@needs_clip
def test_cameras_per_box_short(tmp_path):
    """Two-input cameras (a sub and a main stream made from the street clip, recording on,
    analytics on): the one-camera cost, the box's limit beside the saturation fps, the count."""
    out = bench("cameras_per_box.py", "--model", tiny_onnx(), "--source-size", "160x96", "--detect-size", "96x64",
                "--frames", 6, "--seconds", 1, "--max-cameras", 2, "--workdir", tmp_path, timeout_s=120)
    for line in ("core-ms per camera frame", "detect input alone", "record input alone", "decoded frames 0",
                 "box limit", "saturation", "of the box's limit", "with < 1% dropped"):
        assert line in out, out
    assert list((tmp_path / "recordings" / "cam0").glob("cam0.*.mp4")), out   # the main stream was recorded


@needs_ffmpeg
@needs_clip
def test_decode_bench_short(tmp_path):
    out = bench("decode.py", "--size", "640x360", "--input-size", "96x128", "--frames", 10, "--rounds", 1,
                "--workdir", tmp_path)
    assert "now/before: convert+preprocess" in out and "skip_frame nonkey" in out, out


@needs_clip
def test_recording_bench_short():
    out = bench("recording.py", "--size", "320x180", "--loops", 1, "--rounds", 1)
    assert "decoded frames 0" in out and "of a core per camera" in out, out
