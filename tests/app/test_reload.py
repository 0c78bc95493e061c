"""Reloading a running session (app/session.py reload) on real parts: the street clip paced in
real time on three cameras, a real ONNX Runtime session of a small random-weight model, the
app's own threads, its real latency and coverage logs, a real run_camera.py process sent
SIGHUP and the real HTTP server answering POST /api/reload."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import threading
import time

import pytest

from app.latency import read_log
from app.session import Session
from app.settings import build
from core.errors import InputError
from engines.onnx_engine import OnnxEngine
from testkit.app_helpers import SAMPLE_VIDEO, free_port, tiny_onnx, wait_for
from testkit.app_process import App, camera_counts
from testkit.http_clients import request

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")

LEFT = "[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]"
LEFT_MOVED = "[[0.1, 0.2], [0.6, 0.2], [0.6, 1], [0.1, 1]]"
RIGHT = "[[0.5, 0], [1, 0], [1, 1], [0.5, 1]]"


@pytest.fixture(scope="module")
def slow_street(tmp_path_factory):
    """The street clip's first 6 s at 5 fps, 320x240: three cameras paced in real time that a
    loaded 2-core machine keeps up with (a live camera drops what inference misses)."""
    path = tmp_path_factory.mktemp("clip") / "street_5fps.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(SAMPLE_VIDEO), "-t", "6", "-vf",
                    "fps=5,scale=320:240", "-c:v", "libx264", "-preset", "ultrafast", str(path)],
                   check=True, timeout=60)
    return path


@pytest.fixture(scope="module")
def engine():
    eng = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    yield eng
    eng.close()


LEFT_ZONE = f"[{{name: left, polygon: {LEFT}, classes: [road]}}]"


def camera(name: str, frames: int, zones: str = LEFT_ZONE,
           source=SAMPLE_VIDEO) -> str:
    """A `cameras:` entry: a clip looped in real time, no output."""
    return (f"  - {{name: {name}, source: '{source}', realtime: true, loop: true, max-frames: {frames}, "
            f"output: null, zones: {zones}}}\n")


def coverage_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_reload_moves_a_zone_adds_and_removes_cameras_and_the_others_lose_no_frame(engine, slow_street, tmp_path):
    """Three cameras run; a reload moves camera a's zone and gives it a new one, removes c and
    adds d: a and b write every frame, their latency rows go on with the next ids, the coverage
    log has the new zone from a's next frame on, c stops, d runs. Then configs that cannot be
    applied (one that does not validate, one with an unknown class, a model option) are each
    refused with one line and nothing changes."""
    frames = 30

    def entry(name, n, zones=LEFT_ZONE):
        return camera(name, n, zones, slow_street)

    config = tmp_path / "run.yaml"
    config.write_text("cameras:\n" + entry("a", frames) + entry("b", frames) + entry("c", 1000))
    flags = {"latency_log": str(tmp_path / "lat.csv"), "coverage_log": str(tmp_path / "cov.csv"),
             "queue_size": 16}
    lines = []
    with Session(build(flags, str(config)), engine, config_name=str(config), log=lines.append,
                 reread=lambda: build(flags, str(config))) as session:
        seen = {}          # camera -> frame ids delivered, in order
        coverage = {}      # camera -> [(frame id, zones)]
        at_reload = {}     # camera -> the last id delivered when the reload returned
        reloads = []
        windows = []       # (start, end) of each reload, s since the run started

        def reload_moved():
            config.write_text("cameras:\n" + entry("a", frames, f"[{{name: left, polygon: {LEFT_MOVED}, classes: "
                                                                 f"[road]}}, {{name: right, polygon: {RIGHT}, "
                                                                 "classes: [road, car]}]")
                              + entry("b", frames) + entry("d", 12))
            t0 = time.monotonic() - session.recorder.start   # the latency log's capture_s clock
            reloads.append(session.reload_config())
            windows.append((t0, time.monotonic() - session.recorder.start))
            at_reload.update({name: ids[-1] for name, ids in seen.items()})

        def reload_broken():
            t0 = time.monotonic() - session.recorder.start
            before = (config.read_text(), [c.name for c in session.cameras], dict(session.cam_settings),
                      {n: c.config for n, c in session.analytics.cameras.items()})
            for text in ("cameras:\n" + entry("a", frames) + "  - {name: b, source: x.mp4, speed: 2}\n",
                         "cameras:\n" + entry("a", frames, "[{name: left, polygon: " + LEFT + ", classes: [cars]}]"),
                         "alpha: 0.9\ncameras:\n" + entry("a", frames)):
                config.write_text(text)
                with pytest.raises(InputError) as refused:
                    session.reload_config()
                reloads.append(str(refused.value))
            config.write_text(before[0])
            windows.append((t0, time.monotonic() - session.recorder.start))
            after = ([c.name for c in session.cameras], dict(session.cam_settings),
                     {n: c.config for n, c in session.analytics.cameras.items()})
            reloads.append(after == before[1:])

        worker = None
        for r in session.frames():
            seen.setdefault(r.camera, []).append(r.frame_id)
            coverage.setdefault(r.camera, []).append((r.frame_id, sorted(r.coverage or {})))
            if worker is None and r.camera == "a" and r.frame_id == 8:
                running = {name: session.pipeline.by_name[name] for name in ("a", "b")}
                worker = threading.Thread(target=reload_moved)   # as SIGHUP does: not in the loop
                worker.start()
            elif r.camera == "a" and r.frame_id == 16:
                worker.join()
                worker = threading.Thread(target=reload_broken)
                worker.start()
        worker.join()
        code = session.code
    assert code == 0 and session.failures == []
    assert reloads[0] == "zones/rules of a; added d; removed c"
    assert "speed" in reloads[1] and "run.yaml" in reloads[1]
    assert "unknown class 'cars'" in reloads[2]
    assert reloads[3].startswith("cannot change without a restart: --alpha")
    assert reloads[4] is True, "a refused reload changed nothing"
    assert lines.count("reload: zones/rules of a; added d; removed c") == 1
    assert [line.startswith("reload refused: ") for line in lines if "reload" in line] == [False, True, True, True]

    # a and b: never rebuilt; every frame id has its latency row, in order, and none was
    # dropped while a reload ran (a box this loaded drops a live frame now and then anyway).
    rows = read_log(tmp_path / "lat.csv")
    assert all(session.pipeline.by_name.get(n, cam) is cam for n, cam in running.items())
    for name in ("a", "b"):
        mine = [r for r in rows if r["camera"] == name]
        assert [r["frame"] for r in mine if not r["dropped"]] == seen[name]
        assert sorted(r["frame"] for r in mine) == list(range(frames))
        assert not [r for r in mine if r["dropped"] and any(t0 - 0.25 <= r["capture_s"] <= t1 + 0.5
                                                            for t0, t1 in windows)]
    assert at_reload["a"] < frames - 8 and at_reload["b"] < frames - 8   # the reload came mid-run
    c, d = ([r["frame"] for r in rows if r["camera"] == name] for name in "cd")
    assert "c" in at_reload and 0 < len(c) < 1000 and sorted(c) == list(range(len(c)))   # stopped, accounted
    assert sorted(d) == list(range(12))   # started

    # Camera a's zones: the old one up to a frame, the moved one and the new one from the next on.
    zones_a = [zones for _, zones in coverage["a"]]
    switch = zones_a.index(["left", "right"])
    assert zones_a[:switch] == [["left"]] * switch and zones_a[switch:] == [["left", "right"]] * (len(zones_a) - switch)
    first_new = coverage["a"][switch][0]
    assert first_new <= at_reload["a"] + 18   # the next frame through the output thread (the results queue behind)
    assert session.analytics.cameras["a"].config.zones[0].polygon[0] == (0.1, 0.2)

    # The coverage log: the part before the new zone is complete with its own header, and the
    # log from then on has the new zone's columns from a's first frame with it.
    parts = session.analytics.coverage_log.parts
    assert len(parts) == 1 and parts[0].name.startswith("cov.") and parts[0].suffix == ".csv"
    old, new = coverage_rows(parts[0]), coverage_rows(tmp_path / "cov.csv")
    assert "right:road" not in old[0] and set(new[0]) >= {"left:road", "right:road", "right:car"}
    a_old = [int(r["frame"]) for r in old if r["camera"] == "a"]
    a_new = [r for r in new if r["camera"] == "a"]
    assert a_old + [int(r["frame"]) for r in a_new] == seen["a"]
    assert int(a_new[0]["frame"]) == first_new and all(r["right:road"] != "" for r in a_new)
    assert {r["camera"] for r in new} >= {"a", "b", "d"}


def test_a_reload_keeps_an_unchanged_rules_open_event_and_ends_a_removed_rules_at_the_next_frame(tmp_path):
    """Analytics alone, on label maps made by hand: two rules with open events; the reload
    keeps one rule as it was and drops the other: at the camera's next frame the dropped
    rule's event ends, the kept one stays open (no second start). A zone that would cover no
    pixel at the camera's size is refused before anything changes."""
    import numpy as np

    from app.analytics import Analytics
    from app.analytics.specs import parse_camera_analytics
    from app.frames import Frame
    from app.settings import AnalyticsSettings

    left = {"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "classes": ["road"]}
    car = {"name": "car", "zone": "left", "class": "car", "above": 0.5, "for_s": 0}
    road = {"name": "road", "zone": "left", "class": "road", "above": 0.1, "for_s": 0}
    analytics = Analytics(AnalyticsSettings(), {"cam0": parse_camera_analytics([left], [car, road], "t")},
                          ["road", "car"])
    labels = np.zeros((4, 8), np.int64)
    labels[:, :2] = 1
    labels[0, 2:4] = 1            # the left zone: 10 of 16 pixels car, 6 road
    image = np.zeros((40, 80, 3), np.uint8)

    def frame(i):
        return analytics.process("cam0", Frame(i, i * 0.1, image, i * 0.1), labels, image)

    try:
        assert sorted(m["event"]["rule"] for m in frame(0).events if m["type"] == "start") == ["car", "road"]
        with pytest.raises(InputError, match="camera cam0: zone left covers no pixel of the 8x4 label map"):
            analytics.set_camera("cam0", parse_camera_analytics(
                [{**left, "polygon": [[0, 0], [0.01, 0], [0, 0.01]]}], [car], "t"))
        assert analytics.cameras["cam0"].config.rules[1].name == "road"   # the refusal changed nothing
        assert frame(1).events == []
        analytics.set_camera("cam0", parse_camera_analytics([{**left, "classes": ["road", "car"]}], [car], "t"))
        events = frame(2)
        assert [(m["type"], m["event"]["rule"]) for m in events.events] == [("end", "road")]
        assert events.coverage == {"left": {"road": 6 / 16, "car": 10 / 16}}
        assert frame(3).events == [] and analytics.cameras["cam0"].rules[0].event is not None   # car still open
    finally:
        analytics.close()


def test_sighup_makes_run_camera_read_its_config_again(slow_street, tmp_path):
    """run_camera.py --config X: X edited (a second camera, a zone), SIGHUP: the new camera
    runs beside the first, which writes on; a config broken after that is refused in one line
    and the run goes on."""
    config = tmp_path / "run.yaml"
    start = f"coverage-log: {tmp_path / 'cov.csv'}\ncameras:\n" + camera("street", 100000, "[]", slow_street)
    config.write_text(start)
    app = App("--config", config, "--model", tiny_onnx((64, 96)), log=tmp_path / "lat.csv")
    try:
        app.wait_rows(5)
        config.write_text(start + camera("side", 100000, source=slow_street))
        app.signal(signal.SIGHUP)
        wait_for(lambda: any(r["camera"] == "side" for r in read_log(tmp_path / "lat.csv")), timeout_s=60)
        config.write_text("cameras: 3\n")
        app.signal(signal.SIGHUP)
        rows = app.rows()
        app.wait_rows(rows + 10)
    finally:
        app.signal()
        err = app.finish()
    assert app.proc.returncode == 0, err
    assert "reload: added side\n" in err
    assert f"reload refused: {config}: cameras: expected a list of mappings" in err
    counts = camera_counts(err)
    assert set(counts) == {"street", "side"}
    street = [r["frame"] for r in read_log(tmp_path / "lat.csv") if r["camera"] == "street"]
    assert sorted(street) == list(range(len(street)))
    header, *lines = (tmp_path / "cov.csv").read_text().splitlines()
    assert header == "camera,frame,time_s,left:road" and lines and all(r.startswith("side,") for r in lines)
    assert list(tmp_path.glob("cov.*.csv")) == []   # the log had no row before: no part of only a header


def test_post_api_reload_needs_the_token_and_answers_what_changed_or_why_not(engine, slow_street, tmp_path):
    token = "reload-test-token-0123456789"
    port = free_port()
    config = tmp_path / "run.yaml"
    config.write_text("cameras:\n" + camera("cam0", 100000, source=slow_street))
    flags = {"metrics_port": f"127.0.0.1:{port}", "auth_token": token}
    answers = {}
    with Session(build(flags, str(config)), engine, config_name=str(config), log=lambda line: None,
                 reread=lambda: build(flags, str(config))) as session:
        bearer = {"Authorization": f"Bearer {token}"}
        for r in session.frames():
            if r.frame_id == 3:
                answers["no token"] = request(port, "/api/reload", method="POST")
                answers["other site"] = request(port, "/api/reload", {**bearer, "Origin": "http://evil.example"},
                                                method="POST")
                config.write_text("cameras:\n" + camera("cam0", 100000, f"[{{name: left, polygon: {LEFT_MOVED}, "
                                                                        "classes: [road]}]", slow_street))
                answers["moved"] = request(port, "/api/reload", {**bearer, "Origin": f"http://127.0.0.1:{port}"},
                                           method="POST")
                config.write_text("cameras:\n  - {name: cam0}\n")
                answers["broken"] = request(port, "/api/reload", bearer, method="POST")
                break
    status, _, body = answers["no token"]
    assert status == 401 and b"authentication required" in body
    assert answers["other site"][0] == 403 and b"cross-origin" in answers["other site"][2]
    status, headers, body = answers["moved"]
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"ok": True, "changed": "zones/rules of cam0"}
    status, _, body = answers["broken"]
    assert status == 400
    assert json.loads(body) == {"ok": False, "error": f"{config}: cameras[0]: give it exactly one source"}
