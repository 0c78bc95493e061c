"""Camera roles (app/settings.py `inputs:`, app/recording.py): a camera made of a small detect
sub stream and a larger record main stream, both made from the street clip with ffmpeg (same
frames, same timestamps, a keyframe every second). Inference and analytics run on the sub
stream; the main stream is recorded by packet copy into segments that each start at a keyframe,
play alone, and together hold exactly the main stream's frames; it is never decoded; retention
deletes the oldest segments first under a byte cap."""
from __future__ import annotations

import csv
import subprocess
import threading
import time

import pytest

from app.analytics.clips import ClipRecorder
from app.recording import Recording, open_record_input
from app.settings import CameraSettings
from testkit.app_helpers import SAMPLE_VIDEO, ffprobe_frames, tiny_onnx
from testkit.app_process import run_camera
from testkit.rtsp_server import publishers, relay, wait_published  # noqa: F401 (fixtures)

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


def _first_frame_is_key(path) -> bool:
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-read_intervals", "%+#1",
                        "-show_entries", "frame=key_frame", "-of", "csv=p=0", str(path)],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.split()[0].strip(",") == "1"


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
    assert all(_first_frame_is_key(s) for s in segments)
    # Segments are the main stream's own packets: its size, not the sub stream's.
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=width,height", "-of", "csv=p=0",
                            str(segments[0])], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "960,540"
    with open(coverage) as f:   # analytics ran on every frame of the detect input
        assert len({row["frame"] for row in csv.DictReader(f)}) == 101
    # The event (all of the run) has its clip cut from the main stream by packet copy: its size,
    # from a keyframe, every frame of it.
    clips = list((tmp_path / "clips" / "door").glob("*.mp4"))
    assert len(clips) == 1 and _first_frame_is_key(clips[0])
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


def _packets(path) -> int:
    """The video packets in a file, read without decoding: what a packet copy must hold exactly
    (a live UDP stream may bring a damaged frame, which decoding would report, copying not)."""
    r = subprocess.run(["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
                        "stream=nb_read_packets", "-of", "csv=p=0", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def _wait(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_live_record_input_reconnects_and_goes_on_in_a_new_segment_at_a_keyframe(relay, publishers, tmp_path):
    push, pull = relay.push_url("/main"), relay.pull_url("/main")
    publisher = publishers(push)
    wait_published(pull, transport="udp")
    cam = CameraSettings.of({"name": "door", "rtsp_transport": "udp", "source_timeout": 2})
    recording = Recording(open_record_input(pull, cam), tmp_path, "door", segment_s=60)
    # Event clips from the live record stream (Annex B over RTSP), on the clock of detect frames.
    clips = ClipRecorder(tmp_path / "clips", "door", keep_s=2, max_mb=100)
    ticking = threading.Event()

    def detect_frames():
        while not ticking.wait(1 / 15):
            clips.add_frame(time.monotonic(), None)

    ticker = threading.Thread(target=detect_frames, daemon=True)
    ticker.start()
    clip = tmp_path / "clips" / "door" / "abc-1-1.mp4"
    recording.start(clips=clips)
    try:
        # The stream's first packets come in a burst (those FFmpeg read to probe it); a clip wants
        # packets at their own pace: 2 s of them, so the GOP (1 s) at the clip's start is there.
        _wait(lambda: recording.packets >= 50)
        clips.start_clip("abc-1-1", time.monotonic() - 1)
        _wait(lambda: recording.packets >= 65)
        clips.end_clip("abc-1-1", time.monotonic())
        publisher.stop()   # the camera goes away right after the event ...
        before = recording.packets
        _wait(lambda: clip.exists(), timeout_s=5)   # ... the clip is written from the ring meanwhile
        publishers(push)   # ... and comes back
        _wait(lambda: recording.reader.counters()["outages"] >= 1 and recording.packets >= before + 20)
    finally:
        recording.close()
        ticking.set()
        ticker.join()
        clips.close()
    assert clips.from_record and _first_frame_is_key(clip) and _packets(clip) >= 25
    segments = _segments(tmp_path, "door")
    assert recording.segments == len(segments) == 2   # one per connection (60 s segments)
    assert all(_first_frame_is_key(s) for s in segments)
    assert sum(_packets(s) for s in segments) == recording.packets
    assert recording.decoded == 0
