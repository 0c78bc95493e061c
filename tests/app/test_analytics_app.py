"""run_camera.py with scene analytics, end to end on the street clip with the shared CamVid
model: a real mosquitto broker and subscriber get the event's start and end, the coverage log
matches the latency log frame for frame, the event clip plays and spans pre-roll + event +
post-roll; a broker that is not there never stops the run; bad zone/rule configs are one line,
exit 2."""
from __future__ import annotations

import csv
import json
import subprocess

import pytest

from app.latency import read_log
from testkit.analytics_helpers import Subscriber, needs_mosquitto, wait_until
from testkit.app_helpers import REPO, SAMPLE_VIDEO, free_port, tiny_onnx
from testkit.app_process import run_camera

CHECKPOINT = REPO.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"
for parent in REPO.parents:   # a worktree: ../shared beside an ancestor
    if (parent / "shared" / "models" / CHECKPOINT.name).is_file():
        CHECKPOINT = parent / "shared" / "models" / CHECKPOINT.name
        break
SAMPLE = SAMPLE_VIDEO if SAMPLE_VIDEO.is_file() else CHECKPOINT.parent.parent / "data" / "samples" / SAMPLE_VIDEO.name
FRAMES = 30          # the preset's rule starts at 0.07 s and ends at 0.60 s; post-roll 1 s: frame 24

needs_model = pytest.mark.skipif(not (CHECKPOINT.is_file() and SAMPLE.is_file()),
                                 reason="the shared CamVid checkpoint or the street clip is missing")


def ffprobe(path) -> tuple[int, float]:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=nb_read_frames:format=duration", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    return int(info["streams"][0]["nb_read_frames"]), float(info["format"]["duration"])


@pytest.mark.slow
@needs_model
def test_street_clip_event_reaches_mqtt_and_its_clip_spans_the_rolls(tmp_path, camvid_onnx, mosquitto):
    broker = mosquitto
    sub = Subscriber(broker.port)
    try:
        wait_until(lambda: sub.client.is_connected(), what="subscriber")
        result = run_camera("--config", "street-analytics", "--source", SAMPLE, "--model", camvid_onnx,
                            "--output", "null", "--max-frames", FRAMES, "--threads", "2",
                            "--mqtt", broker.url, "--events-log", tmp_path / "events.jsonl",
                            "--coverage-log", tmp_path / "coverage.csv", "--latency-log", tmp_path / "lat.csv",
                            "--clips-dir", tmp_path / "clips", timeout_s=600)
        assert result.returncode == 0, result.stderr[-2000:]
        wait_until(lambda: len(sub.events()) >= 2, what="start and end on bisenet/events")
    finally:
        sub.close()
        broker.stop()
    received = sub.events()
    assert [m["type"] for m in received if m["type"] != "update"] == ["start", "end"]
    event = received[-1]["event"]
    assert (event["camera"], event["zone"], event["class"], event["rule"]) == ("cam0", "kerb_right", "car", "kerb_cars")
    assert 0.0 <= event["start_s"] < event["end_s"] and event["peak"] > 0.25
    assert "mqtt delivered 4 dropped 0" in result.stderr   # each message: events + zone state and "jsonl delivered 2 dropped 0" in result.stderr
    assert [json.loads(line)["type"] for line in (tmp_path / "events.jsonl").read_text().splitlines()] == \
        ["start", "end"]
    # Coverage log: one row per written frame, the same frame ids as the latency log.
    with open(tmp_path / "coverage.csv") as f:
        rows = list(csv.DictReader(f))
    written = [r["frame"] for r in read_log(tmp_path / "lat.csv") if not r["dropped"]]
    assert [int(r["frame"]) for r in rows] == [int(f) for f in written] and len(rows) == FRAMES
    assert all(0.0 <= float(r["kerb_right:car"]) <= 1.0 for r in rows)
    # The clip: from start - pre_roll (clamped at the clip's first frame) to end + post_roll.
    clip, snapshot = tmp_path / "clips" / "cam0" / f"{event['id']}.mp4", tmp_path / "clips" / "cam0" / f"{event['id']}.jpg"
    assert event["clip"] == str(clip) and clip.is_file() and snapshot.stat().st_size > 1000
    frames, duration = ffprobe(clip)
    expected = event["end_s"] + 1.0 - max(0.0, event["start_s"] - 1.0)     # the preset's rolls: 1 s each
    assert abs(duration - expected) <= 1 / 15 + 1e-3 and frames == round(expected * 15) + 1


@needs_mosquitto
def test_a_broker_that_is_down_never_stops_the_run(tmp_path):
    zones = tmp_path / "zones.yaml"
    zones.write_text("zones:\n  - name: all\n    polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]\n    classes: [road]\n"
                     "rules:\n  - {zone: all, class: road, above: 0.0, for_s: 0, clear_s: 0}\n")
    result = run_camera("--config", zones, "--source", SAMPLE, "--model", tiny_onnx(), "--output", "null",
                        "--max-frames", 10, "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--event-queue", 1,
                        "--coverage-log", tmp_path / "cov.jsonl")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "frames 10  written 10" in result.stderr
    lines = [json.loads(line) for line in (tmp_path / "cov.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and set(lines[0]["coverage"]) == {"all"}


@pytest.mark.parametrize("yaml_text,message", [
    ("zones:\n  - {name: a, polygon: [[0, 0], [1, 0], [1, 1]], classes: [cars]}\n",
     "zone a: unknown class 'cars'; the model's classes: road, sidewalk"),
    ("rules:\n  - {class: car, zone: lane, above: 0.1}\n", "unknown zone 'lane'"),
    ("rules:\n  - {class: car}\n", "exactly one of above: or below:"),
    ("zones:\n  - {name: a, polygon: [[0, 0], [1.5, 0], [1, 1]]}\n", "must lie in 0..1"),
    ("zones: 3\n", "zones"),
    ("zones: " + "[" * 400 + "]" * 400 + "\n", "nested more than 32 deep"),
    ("zones:\n  - {name: a, polygon: [[.inf, .inf], [.inf, .inf], [.inf, .inf]], coords: pixels}\n",
     "finite numbers"),
    ("zones:\n  - {name: a, polygon: [[0, 0], [1, 1], [0.5, 0.5]]}\n", "encloses no area"),
    ("rules:\n  - {class: car, above: 0.1}\nrules:\n  - {class: road, above: 0.1}\n", "the key 'rules' is given twice"),
    ('cameras:\n  - {name: "cam0\\n", source: SOURCE}\n', "camera name 'cam0\\n'"),
])
def test_bad_zone_and_rule_configs_are_one_line_exit_2(tmp_path, yaml_text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text.replace("SOURCE", str(SAMPLE)))
    result = run_camera("--config", config, "--source", SAMPLE, "--model", tiny_onnx(), "--output", "null",
                        "--max-frames", 2)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_bad_analytics_flags_are_one_line_exit_2(tmp_path):
    for args, message in ((["--clips-max-mb", "0"], "--clips-max-mb"), (["--mqtt", "http://x"], "expected mqtt://"),
                          (["--webhook", "ftp://x"], "expected an http://")):
        result = run_camera("--source", SAMPLE, "--model", tiny_onnx(), "--output", "null", "--max-frames", 2,
                            *args)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
            result.stderr


def test_api_coverage_metrics_and_clip_route_on_the_app_server(tmp_path):
    import urllib.error
    import urllib.request

    import numpy as np

    from app.analytics import Analytics
    from app.analytics.specs import parse_camera_analytics
    from app.settings import AnalyticsSettings
    from app.frames import Frame
    from app.server import AppServer

    config = parse_camera_analytics([{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]],
                                      "classes": ["road"]}], [{"zone": "left", "class": "car", "above": 0.5,
                                                               "for_s": 0}], "test")
    analytics = Analytics(AnalyticsSettings(clips_dir=str(tmp_path / "clips")), {"cam0": config}, ["road", "car"])
    server = AppServer()
    try:
        server.set_analytics(analytics, str(tmp_path / "clips"))
        port = server.listen("127.0.0.1", 0)
        labels = np.zeros((4, 8), np.int64)
        labels[:, :2] = 1                                   # half of the left zone is car
        labels[:, 2:4] = 0
        labels[0, :4] = 1                                   # ... and a bit more: 10/16 > 0.5
        image = np.zeros((40, 80, 3), np.uint8)
        result = analytics.process("cam0", Frame(0, 0.0, image, 0.0), labels, image.copy())
        assert result.coverage == {"left": {"road": 6 / 16, "car": 10 / 16}}
        assert [m["type"] for m in result.events] == ["start"]
        base = f"http://127.0.0.1:{port}"
        body = json.loads(urllib.request.urlopen(base + "/api/coverage").read())
        assert body["cameras"]["cam0"]["coverage"]["left"]["car"] == 10 / 16
        assert body["events"][0]["event"]["zone"] == "left"
        metrics = urllib.request.urlopen(base + "/metrics").read().decode()
        assert 'bisenet_zone_coverage_ratio{camera="cam0",class="car",zone="left"} 0.625' in metrics
        assert "bisenet_events_dropped_total" in metrics
        for bad in ("/clips/cam0/..%2Fx.mp4", "/clips/cam0/x.txt", "/clips/cam0/nothing.mp4"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + bad)
            assert e.value.code == 404
    finally:
        analytics.close()
        server.close()
    # The open event ended with the stream; its snapshot was written and is served by name.
    event_id = result.events[0]["event"]["id"]
    assert (tmp_path / "clips" / "cam0" / f"{event_id}.jpg").is_file()


def test_hud_zones_in_side_by_side_mode_sit_on_the_overlay_half():
    """The outlines follow the zone on the overlay (right half); the source half stays untouched."""
    import numpy as np

    from app.analytics import Analytics
    from app.analytics.specs import parse_camera_analytics
    from app.settings import AnalyticsSettings
    from app.frames import Frame

    config = parse_camera_analytics([{"name": "box", "polygon": [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75],
                                                                 [0.25, 0.75]], "classes": ["road"]}], [], "test")
    analytics = Analytics(AnalyticsSettings(), {"cam0": config}, ["road", "car"])
    try:
        source = np.full((80, 120, 3), 40, np.uint8)
        # overlay, side-by-side, and both on a picture twice the source's size (overlay_picture record)
        for scale, panels in ((1, 1), (1, 2), (2, 1), (2, 2)):
            w = 120 * scale
            image = np.full((80 * scale, w * panels, 3), 40, np.uint8)
            analytics.process("cam0", Frame(0, 0.0, source, 0.0), np.zeros((8, 12), np.int64), image, hud=True)
            drawn = np.argwhere((image != 40).any(axis=2))
            panel_x = w * (panels - 1)                      # where the overlay starts
            assert drawn.size and drawn[:, 1].min() >= panel_x, (scale, panels)
            # the outline's right edge: x = 0.75 * w on the overlay panel (±2 px of line width per scale)
            assert abs(drawn[:, 1].max() - (panel_x + 0.75 * w)) <= 2 * scale, (scale, panels, drawn[:, 1].max())
    finally:
        analytics.close()
