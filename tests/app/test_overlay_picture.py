"""`overlay_picture: record` (app/record_follower.py): a camera with a small detect sub stream and
a larger record main stream, both made from the street clip by one ffmpeg run (same frames, same
timestamps), shows its overlay on the main stream's decoded picture: the outputs are the main
stream's size, each frame the CPU overlay (core/overlay.py) of the main frame of its timestamp
with the detect labels upscaled, bit for bit. The record input is then decoded (counted apart
from the recording's packet copy, which stays undecoded); with no output showing pixels nothing
of it is decoded; a camera without a record input is refused in one line."""
from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from app.record_follower import RecordFollower
from app.recording import Recording
from app.sources import PyAVPicture
from core.overlay import palette_bgr, render_overlay
from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import run_camera
from testkit.rtsp_server import publishers, relay, wait_published  # noqa: F401 (fixtures)

SUB, MAIN, FRAMES = (160, 120), (320, 240), 24


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """(sub stream, main stream): the street clip's first 24 frames at 160x120 and 320x240."""
    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"no street clip at {SAMPLE_VIDEO}")
    folder = tmp_path_factory.mktemp("streams")
    sub, main = folder / "sub.mp4", folder / "main.mp4"
    outputs = []
    for label, path in (("s", sub), ("m", main)):
        outputs += ["-map", f"[{label}]", "-frames:v", str(FRAMES), "-c:v", "libx264", "-preset", "ultrafast",
                    "-g", "15", str(path)]
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(SAMPLE_VIDEO), "-filter_complex",
                    f"[0:v]split=2[a][b];[a]scale={SUB[0]}:{SUB[1]}[s];[b]scale={MAIN[0]}:{MAIN[1]}[m]",
                    *outputs], check=True, timeout=120)
    return sub, main


def _camera(sub, main, tmp_path, output, **more) -> dict:
    return {"name": "door", "overlay_picture": "record", "output": output,
            "inputs": [{"path": str(sub), "roles": ["detect"]}, {"path": str(main), "roles": ["record"]}],
            "record": {"dir": str(tmp_path / "rec"), "segment_s": 2}, **more}


def _session_run(camera: dict, keep_labels: bool = True, until=None):
    """One Session with this camera to its end, or until `until(its sinks)` holds after a frame
    -> (its results, /metrics, the camera's sinks)."""
    from app.session import Session, load_engine
    from app.settings import build

    settings = build({"model": str(tiny_onnx()), "output": ["null"]})
    settings.cameras = []
    engine = load_engine(settings)
    try:
        session = Session(settings.model_copy(update={"cameras": [Session._camera_settings(camera)]}), engine,
                          keep_labels=keep_labels)
        with session:
            sinks = list(session.cameras[0].sinks)
            results = []
            for r in session.frames():
                results.append((r.frame_id, r.source_ts, r.labels))
                if until is not None and until(sinks):
                    break
            next(s for s in sinks if isinstance(s, Recording)).thread.join(30)
            metrics = session.server.metrics.exposition().decode()
        lut = palette_bgr(engine.info.palette)
    finally:
        engine.close()
    return results, metrics, sinks, lut


def _main_frames(main) -> dict:
    """The main stream decoded as the app decodes it: {timestamp: BGR}."""
    import av

    with av.open(str(main)) as container:
        return {round(f.time, 3): PyAVPicture(f).bgr() for f in container.decode(container.streams.video[0])}


def test_the_outputs_show_the_overlay_on_the_decoded_main_stream_bit_for_bit(streams, tmp_path):
    sub, main = streams
    folder = tmp_path / "out"
    results, metrics, sinks, lut = _session_run(_camera(sub, main, tmp_path, [f"{folder}/"]))
    assert len(results) == FRAMES
    main_frames = _main_frames(main)
    for frame_id, source_ts, labels in results:
        written = cv2.imread(str(folder / f"{frame_id:06d}.png"), cv2.IMREAD_COLOR)
        assert written.shape == (MAIN[1], MAIN[0], 3)   # the main stream's size, not the sub stream's
        picture = main_frames[round(source_ts, 3)]      # the main frame of the detect frame's timestamp
        assert np.array_equal(written, render_overlay(picture, labels, lut, 0.5, "overlay")), frame_id
    follower = next(s for s in sinks if isinstance(s, RecordFollower))
    recording = next(s for s in sinks if isinstance(s, Recording))
    assert follower.decoded == FRAMES and recording.decoded == 0   # recording stays packet copy
    assert f'bisenet_overlay_picture_decoded_frames_total{{camera="door"}} {FRAMES}.0' in metrics
    assert 'bisenet_record_decoded_frames_total{camera="door"} 0.0' in metrics


def test_with_no_output_showing_pixels_the_record_input_is_not_decoded(streams, tmp_path):
    sub, main = streams
    results, metrics, sinks, _ = _session_run(_camera(sub, main, tmp_path, ["null"]), keep_labels=False)
    assert len(results) == FRAMES
    assert next(s for s in sinks if isinstance(s, RecordFollower)).decoded == 0
    assert 'bisenet_overlay_picture_decoded_frames_total{camera="door"} 0.0' in metrics
    assert 'bisenet_overlays_skipped_total{camera="door"} 24.0' in metrics   # nothing drawn either


def test_the_start_line_and_the_summary_say_the_record_input_is_decoded(streams, tmp_path):
    sub, main = streams
    config = tmp_path / "cameras.yaml"
    config.write_text(
        f"record: {{dir: {tmp_path / 'rec'}}}\n"
        "cameras:\n  - name: door\n    overlay_picture: record\n    inputs:\n"
        f"      - {{path: {sub}, roles: [detect]}}\n      - {{path: {main}, roles: [record]}}\n")
    video = tmp_path / "out.mp4"
    result = run_camera("--config", config, "--model", tiny_onnx(), "--output", video)
    assert result.returncode == 0, result.stderr
    start = next(line for line in result.stderr.splitlines() if "source (detect):" in line)
    assert "overlays on the full-size picture: the record input decoded too (320x240, h264 (software))" in start
    summary = [line for line in result.stderr.splitlines() if "decoded frames" in line]
    assert any(line.startswith("overlay picture (record input decoded)") and line.endswith(f"decoded frames {FRAMES}")
               for line in summary), summary
    assert any(line.startswith("recording ") and "decoded frames 0" in line for line in summary), summary
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=width,height", "-of", "csv=p=0",
                            str(video)], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "320,240"


def test_a_camera_without_a_record_input_is_refused_in_one_line(streams):
    sub, _ = streams
    result = run_camera("--source", sub, "--model", tiny_onnx(), "--output", "null", "--overlay-picture", "record")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "has no record input" in lines[0] and "inputs:" in lines[0], lines


def test_a_file_follower_pairs_each_frame_with_the_record_frame_at_or_before_its_timestamp(streams):
    from app.frames import Frame
    from app.settings import CameraSettings

    _, main = streams
    main_frames = _main_frames(main)
    follower = RecordFollower(str(main), CameraSettings.of({"name": "door"}))
    try:
        assert follower.picture_size == MAIN and follower.decoded == 0   # nothing decoded before it is asked
        for ts, expected in ((0.0, 0.0), (0.1, 0.067), (0.5, 0.467), (0.533, 0.533), (99.0, 1.533)):
            frame = Frame(0, 0.0, np.zeros((SUB[1], SUB[0], 3), np.uint8), ts)
            assert np.array_equal(follower.picture_for(frame), main_frames[expected]), ts
        assert follower.decoded == FRAMES   # forward only, each frame once
        # A frame captured while nothing showed pixels: its detect picture scaled up, one size for all.
        assert follower.stand_in(np.zeros((SUB[1], SUB[0], 3), np.uint8)).shape == (MAIN[1], MAIN[0], 3)
    finally:
        follower.close()


def test_a_live_camera_shows_its_main_stream_and_decodes_keyframes_only_while_nobody_watches(streams, relay,
                                                                                             publishers, tmp_path):
    sub, main = streams
    urls = {}
    for name, video in (("sub", sub), ("main", main)):
        publishers(relay.push_url(f"/{name}"), video)
        urls[name] = relay.pull_url(f"/{name}")
        wait_published(urls[name], transport="udp")
    folder = tmp_path / "out"
    live = {"rtsp_transport": "udp", "max_frames": 30}
    camera = _camera(urls["sub"], urls["main"], tmp_path, [f"{folder}/"], **live)
    results, metrics, sinks, _ = _session_run(camera)
    follower = next(s for s in sinks if isinstance(s, RecordFollower))
    assert len(results) >= 1 and follower.decoded >= 1
    for frame_id, *_ in results:   # every frame written at the main stream's size
        assert cv2.imread(str(folder / f"{frame_id:06d}.png")).shape == (MAIN[1], MAIN[0], 3)
    # Nothing shows pixels: the follower reads on but its decoder decodes keyframes only. (Up
    # to 150 frames, ended as soon as it does: the frames the relay buffered while the session
    # was built come in one burst, which a fast pipeline may get through before the follower's
    # thread has read on to see that nothing shows pixels.)
    def keys_only(sinks):
        return next(s for s in sinks if isinstance(s, RecordFollower)).keyframes_only

    results, _, sinks, _ = _session_run({**camera, "output": ["null"], "max_frames": 150}, keep_labels=False,
                                        until=keys_only)
    assert keys_only(sinks), f"still decoding every frame after {len(results)} frames"
