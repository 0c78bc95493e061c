"""Decoding: hardware decode per camera (`hwaccel`), the decoder on the start line and in
`bisenet doctor`, frames converted straight to the model's size, `detect_fps` skipping frames
before any preprocess, `skip_frame: nonkey`. Real clips (the street clip, and short H.264 files
made from it with ffmpeg), real PyAV decoding, run_camera.py as a real process, the trained
CamVid model for the labels."""
from __future__ import annotations

import shutil
import subprocess

import av
import numpy as np
import pytest
from av.codec.hwaccel import hwdevices_available

from app.frames import Frame
from app.latency import read_log
from app.sources import PyAVReader, hwaccel_report, open_source
from core.preprocess import preprocess
from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import run_camera

pytestmark = [pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no street clip at {SAMPLE_VIDEO}"),
              pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg (apt-get install ffmpeg)")]
# FFmpeg's hardware device types; the first this build lacks stands for "absent" here.
DEVICE_TYPES = ("vaapi", "videotoolbox", "d3d11va", "vdpau", "dxva2", "mediacodec", "cuda", "qsv", "drm")


def h264_clip(path, size: str, frames: int, gop: int):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(SAMPLE_VIDEO), "-vf", f"scale={size}",
                    "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(gop),
                    "-sc_threshold", "0", str(path)], check=True, timeout=120)
    return path


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


def test_hwaccel_none_and_auto_decode_and_the_start_line_names_the_decoder(tmp_path):
    """Three cameras: none, auto, auto. Where no hardware decoder works (no GPU here) auto falls
    back to software, said once in one line for the run; every start line names the decoder and
    the size the stream declares."""
    config = tmp_path / "cams.yaml"
    config.write_text(f"model: {tiny_onnx()}\noutput: null\nmax-frames: 3\ncameras:\n"
                      f"  - {{name: soft, source: {SAMPLE_VIDEO}, hwaccel: none}}\n"
                      f"  - {{name: auto1, source: {SAMPLE_VIDEO}, hwaccel: auto}}\n"
                      f"  - {{name: auto2, source: {SAMPLE_VIDEO}, hwaccel: auto}}\n")
    r = run_camera("--config", config)
    assert r.returncode == 0, r.stderr
    auto = hwaccel_report("h264")["auto"]
    assert " fps, 480x360), decode: h264 (software) -> " in next(line for line in r.stderr.splitlines()
                                                                 if line.startswith("soft:"))
    for name in ("auto1", "auto2"):
        line = next(line for line in r.stderr.splitlines() if line.startswith(f"{name}: source:"))
        assert f"decode: h264 ({auto}) -> " in line, line
    fallback = [line for line in r.stderr.splitlines() if "hwaccel auto" in line]
    if auto == "software":
        assert len(fallback) == 1 and fallback[0].endswith("decoding in software"), r.stderr
    assert "all cameras: frames 9  written 9  dropped 0" in r.stderr


def test_a_hardware_type_this_ffmpeg_lacks_is_one_line_exit_2():
    have = hwdevices_available()
    absent = next(kind for kind in DEVICE_TYPES if kind not in have)
    line = one_error_line(run_camera("--source", SAMPLE_VIDEO, "--model", tiny_onnx(), "--output", "null",
                                     "--hwaccel", absent))
    assert line.startswith(f"run_camera.py: error: --hwaccel: '{absent}' is not a hardware decoder"), line
    assert f"it has {', '.join(have) or 'none'}" in line and "auto" in line
    # A type this FFmpeg has whose device does not open here (cuda without a GPU): one line too.
    closed = [kind for kind, problem in hwaccel_report("h264")["devices"].items() if problem]
    if closed:
        line = one_error_line(run_camera("--source", SAMPLE_VIDEO, "--model", tiny_onnx(), "--output", "null",
                                         "--hwaccel", closed[0]))
        assert f"--hwaccel {closed[0]}: no {closed[0]} device opens here" in line, line


def test_doctor_lists_the_hardware_decode_types():
    from app.doctor import format_report, media

    m = media()
    assert m["pyav_hwaccel_types"] == hwdevices_available()
    report = m["h264_decode"]
    assert report["auto"] in ("software", *report["devices"])
    lines = format_report({"cpu": {"model": "x", "cores": 2, "mhz": None, "source": "/proc/cpuinfo",
                                   **dict.fromkeys(("avx2", "avx512", "vnni", "bf16", "amx"), False)},
                           "backends": {}, "gpu": {"nvidia_smi": None, "nvcc": None}, "gpu_packages": {},
                           "media": {"pyav": {"version": av.__version__}, **m}}).splitlines()
    decode = next(line for line in lines if line.startswith("decode: "))
    assert f"hardware device types {', '.join(hwdevices_available()) or 'none'}" in decode
    assert f"h264 with --hwaccel auto: {report['auto']}" in decode


def test_detect_fps_infers_a_third_of_a_15_fps_clip_and_counts_the_rest_skipped(tmp_path):
    log = tmp_path / "lat.csv"
    r = run_camera("--source", SAMPLE_VIDEO, "--model", tiny_onnx(), "--output", "null", "--detect-fps", "5",
                   "--latency-log", log)
    assert r.returncode == 0, r.stderr
    rows = read_log(log)
    assert sorted(row["frame"] for row in rows) == list(range(101))   # every frame accounted, once
    written = [row["frame"] for row in rows if row["reason"] == ""]
    skipped = [row for row in rows if row["reason"] == "skipped"]
    assert written == list(range(0, 101, 3))   # the clip's own timestamps: every third frame
    assert len(skipped) == 101 - len(written) and not any(row["dropped"] for row in rows)
    assert all(row["preprocess_ms"] is None and row["inference_ms"] is None for row in skipped)
    assert "inferred at 5 fps" in r.stderr
    assert f"frames 101  written {len(written)}  skipped {len(skipped)}  dropped 0" in r.stderr


def test_skip_frame_nonkey_decodes_only_the_keyframes(tmp_path):
    clip = h264_clip(tmp_path / "gop10.mp4", "160:120", frames=30, gop=10)
    with av.open(str(clip)) as c:
        keys = [p.pts for p in c.demux(video=0) if p.is_keyframe]
    reader = PyAVReader(str(clip), skip_frame="nonkey")
    reader.open()
    try:
        got = []
        while (item := reader.read()) is not None:
            got.append(item)
    finally:
        reader.close()
    assert len(keys) == 3 and len(got) == len(keys)
    assert reader.decoder == "h264 (software), keyframes only"
    assert [ts for _, ts in got] == pytest.approx([0.0, 10 / 15, 20 / 15], abs=1e-3)


def test_frames_straight_to_the_model_size_give_the_labels_of_the_full_size_path(tmp_path, camvid_onnx):
    """A 1080p frame nothing shows at full size goes to the model in one swscale pass: its
    full-size image is never made, and the labels agree with the old path's (full-size BGR, then
    cv2.resize) on >= 99% of the pixels. A frame shown at full size, or one near the model's
    size, keeps the old path bit for bit."""
    from engines.load import load_engine

    engine = load_engine(str(camvid_onnx))
    h, w = engine.info.input_size
    clip = h264_clip(tmp_path / "street1080.mp4", "1920:1080", frames=4, gop=30)
    reader = open_source(str(clip), pictures=True)
    same = total = 0
    try:
        while (item := reader.read()) is not None:
            assert Frame(0, 0.0, item[0]).image_at(w, h).shape == (1080, 1920, 3)   # shown: resized from it
            frame = Frame(0, 0.0, item[0], full_size=False)
            assert frame.size_wh == (1920, 1080)
            now = frame.image_at(w, h)
            assert now.shape == (h, w, 3) and frame._image is None   # no full-size BGR made for the model
            before = preprocess(frame.image, (h, w), engine.info.mean, engine.info.std)
            a = np.asarray(engine.infer(before))
            b = np.asarray(engine.infer(preprocess(now, (h, w), engine.info.mean, engine.info.std)))
            same += int((a == b).sum())
            total += a.size
    finally:
        reader.close()
        engine.close()
    assert total and same / total >= 0.99, same / total
    small = open_source(str(SAMPLE_VIDEO), pictures=True)   # 480x360 for a 480x352 input: as before
    try:
        frame = Frame(0, 0.0, small.read()[0], full_size=False)
        assert frame.image_at(w, h) is frame.image
    finally:
        small.close()


def test_skipped_frames_are_counted_apart_in_the_summary_and_metrics():
    from app.latency import LatencyRecorder
    from app.metrics import Metrics

    recorder, metrics = LatencyRecorder(), Metrics()
    metrics.watch("cam0", recorder, 10.0)
    for i in range(6):
        frame = Frame(i, recorder.start + i / 15, np.zeros((2, 2, 3), np.uint8), source_ts=i / 15)
        if i % 3:
            recorder.record_skipped(frame.id, frame.capture_ts, frame.source_ts)
        else:
            frame.timings = {"queue": 1.0, "preprocess": 1.0, "inference": 5.0, "overlay": 1.0, "sink": 1.0}
            recorder.record_written(frame, frame.capture_ts + 0.01)
    summary = recorder.summary(6)
    assert (summary["written"], summary["skipped"], summary["dropped"], summary["unaccounted"]) == (2, 4, 0, 0)
    assert recorder.format_summary(6).startswith("frames 6  written 2  skipped 4  dropped 0")
    text = metrics.exposition().decode()
    assert 'bisenet_frames_total{camera="cam0",outcome="skipped"} 4.0' in text
    assert 'bisenet_frames_total{camera="cam0",outcome="written"} 2.0' in text
    assert 'bisenet_stage_duration_seconds_count{camera="cam0",stage="inference"} 2.0' in text


def test_detect_fps_keeps_its_rate_on_jittery_capture_times_and_after_a_gap():
    """A live camera without stream timestamps: capture times 15 fps with +-5 ms of jitter, a
    2 s outage, then on again; 5 fps are kept before and after, none twice in a row."""
    from app.camera import Camera
    from app.sources import ImageListReader

    cam = Camera("c", ImageListReader([], "15 fps", fps=15.0), [], detect_fps=5.0)
    rng = np.random.default_rng(0)
    times = [i / 15 + rng.uniform(-0.005, 0.005) for i in range(150)]
    times += [12.0 + i / 15 + rng.uniform(-0.005, 0.005) for i in range(150)]
    kept = [t for i, t in enumerate(times) if cam.wants(Frame(i, t, np.zeros((1, 1, 3), np.uint8)))]
    before, after = [t for t in kept if t < 11], [t for t in kept if t > 11]
    assert len(before) == len(after) == 50
    assert min(np.diff(before)) > 0.1 and min(np.diff(after)) > 0.1
    assert Camera("d", ImageListReader([], "15 fps", fps=15.0), [], detect_fps=30.0).detect_fps is None
