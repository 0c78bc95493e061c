"""Camera roles (app/settings.py `inputs:`, app/recording.py): a camera made of a small detect
sub stream and a larger record main stream, both made from the street clip with ffmpeg (same
frames, same timestamps, a keyframe every second). Inference and analytics run on the sub
stream; the main stream is recorded by packet copy into segments that each start at a keyframe,
play alone, and together hold exactly the main stream's frames; it is never decoded; retention
deletes the oldest segments first under a byte cap. The live (RTSP) record input that reconnects
is in test_recording_live.py."""
from __future__ import annotations

import csv
import subprocess

import pytest

from app.recording import Recording, open_record_input
from app.settings import CameraSettings
from testkit.app_helpers import SAMPLE_VIDEO, ffprobe_frames, first_frame_is_key, tiny_onnx
from testkit.app_process import run_camera

SUB, MAIN = (320, 180), (960, 540)


def _stream(src, out, size):
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-vf", f"scale={size[0]}:{size[1]}", "-c:v",
                    "libx264", "-preset", "ultrafast", "-g", "15", str(out)], check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """(sub stream, main stream) of the street clip: 320x180 and 960x540, 101 frames each."""
    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"no street clip at {SAMPLE_VIDEO}")
    street_clip = SAMPLE_VIDEO
    folder = tmp_path_factory.mktemp("streams")
    return _stream(street_clip, folder / "sub.mp4", SUB), _stream(street_clip, folder / "main.mp4", MAIN)


def _segments(folder, camera):
    return sorted((folder / camera).glob(f"{camera}.*.mp4"))


def test_a_two_input_camera_records_the_main_stream_by_packet_copy_and_detects_on_the_sub_stream(streams, tmp_path,
                                                                                                 camvid_onnx):
    sub, main = streams
    config = tmp_path / "cameras.yaml"
    config.write_text(
        f"record: {{dir: {tmp_path / 'rec'}, segment_s: 2}}\n"
        "zones:\n  - name: all\n    polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]\n    classes: [road]\n"
        "rules:\n  - {zone: all, class: road, above: 0.05, for_s: 0, clear_s: 100}\n"   # the whole run
        "cameras:\n  - name: door\n    inputs:\n"
        f"      - {{path: {sub}, roles: [detect]}}\n      - {{path: {main}, roles: [record]}}\n")
    coverage = tmp_path / "coverage.csv"
    result = run_camera("--config", config, "--model", camvid_onnx, "--output", "null",
                        "--coverage-log", coverage, "--clips-dir", tmp_path / "clips")
    assert result.returncode == 0, result.stderr
    start = next(line for line in result.stderr.splitlines() if "source (detect):" in line)
    assert str(sub) in start and f"record: {main} (record, packet copy, 960x540)" in start, start
    summary = next(line for line in result.stderr.splitlines() if line.startswith("recording "))
    assert "packets 101" in summary and "decoded frames 0" in summary, summary

    segments = _segments(tmp_path / "rec", "door")
    assert len(segments) == 4   # 101 frames at 15 fps, a new segment at the first keyframe 2 s on
    counts = [ffprobe_frames(s) for s in segments]   # each plays alone, without an error
    assert sum(counts) == ffprobe_frames(main) == 101 and counts[:3] == [30, 30, 30]
    assert all(first_frame_is_key(s) for s in segments)
    # Segments are the main stream's own packets: its size, not the sub stream's.
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=width,height", "-of", "csv=p=0",
                            str(segments[0])], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "960,540"
    with open(coverage) as f:   # analytics ran on every frame of the detect input
        assert len({row["frame"] for row in csv.DictReader(f)}) == 101
    # The event (all of the run) has its clip cut from the main stream by packet copy: its size,
    # from a keyframe, every frame of it.
    clips = list((tmp_path / "clips" / "door").glob("*.mp4"))
    assert len(clips) == 1 and first_frame_is_key(clips[0])
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=width,height", "-of", "csv=p=0",
                            str(clips[0])], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "960,540" and ffprobe_frames(clips[0]) == 101


def test_the_record_input_counts_in_metrics_and_is_never_decoded(streams, tmp_path):
    from app.session import Session, load_engine
    from app.settings import build

    sub, main = streams
    settings = build({"model": str(tiny_onnx()), "output": ["null"]})
    settings.cameras = []
    engine = load_engine(settings)
    try:
        session = Session(settings.model_copy(update={"cameras": [Session._camera_settings({
            "name": "door", "inputs": [{"path": str(sub), "roles": ["detect"]},
                                       {"path": str(main), "roles": ["record"]}],
            "record": {"dir": str(tmp_path / "rec"), "segment_s": 2}, "output": ["null"]})]}), engine)
        with session:
            frames = sum(1 for _ in session.frames())
            recording = next(s for s in session.cameras[0].sinks if isinstance(s, Recording))
            recording.thread.join(30)
            metrics = session.server.metrics.exposition().decode()
    finally:
        engine.close()
    assert frames == 101
    assert 'bisenet_record_packets_total{camera="door"} 101.0' in metrics
    assert 'bisenet_record_decoded_frames_total{camera="door"} 0.0' in metrics
    assert recording.decoded == 0


def test_retention_deletes_the_oldest_segments_first_under_a_byte_cap(streams, tmp_path):
    _, main = streams
    cam = CameraSettings.of({"name": "door"})
    whole = main.stat().st_size
    # A cap of about half the stream: the first segments go, the newest stay.
    recording = Recording(open_record_input(str(main), cam), tmp_path, "door", segment_s=2,
                          retain_gb=whole * 0.5 / 1024 ** 3)
    recording.start()
    recording.close()
    kept = _segments(tmp_path, "door")
    assert recording.segments == 4 and recording.retention.deleted_files >= 1
    assert len(kept) == 4 - recording.retention.deleted_files
    assert sum(p.stat().st_size for p in kept) <= whole * 0.5
    assert recording.counters()["packets"] == 101
    # What is left is the end of the stream: the last segment (11 frames) is kept.
    assert ffprobe_frames(kept[-1]) == 11


@pytest.mark.parametrize("entry, message", [
    ("inputs: [{path: X, roles: [record]}]", "exactly one input takes the detect role (0 do)"),
    ("inputs: [{path: X, roles: [detect, audio]}]", "inputs[0].roles: expected a list of roles out of detect, record"),
    ("source: X\n    inputs: [{path: X, roles: [detect]}]", "has both source and inputs"),
    ("inputs: [{path: X, roles: [detect]}, {path: X, roles: [record]}]\n    record: {segment_s: 0}",
     "record.segment_s 0 is out of range"),
])
def test_a_bad_inputs_entry_is_one_line_exit_2(streams, tmp_path, entry, message):
    config = tmp_path / "cameras.yaml"
    config.write_text("cameras:\n  - name: door\n    " + entry.replace("X", str(streams[0])) + "\n")
    result = run_camera("--config", config, "--model", tiny_onnx(), "--output", "null")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
