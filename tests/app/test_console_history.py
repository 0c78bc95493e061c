"""The console reads the coverage and events logs back (app/server/log_history.py): coverage
over spans longer than the ring from a rotated log whose parts have different headers, at most
MAX_POINTS points a series, the read bounded; events older than the analytics' recent messages,
with the same filters, and clips that are gone shown as deleted. A real in-process AppServer
and Analytics writing real log files, read by the viewer token."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np

from app.server import log_history
from testkit.app_helpers import wait_for

VIEWER, ADMIN = "viewer-token-for-tests", "admin-token-for-tests"
CLASSES = ["road", "car", "pedestrian"]


def get(port, path, token=VIEWER):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def serve(tmp_path, zones, rules, **analytics_options):
    from app.analytics import Analytics
    from app.analytics.specs import parse_camera_analytics
    from app.server import AppServer, ServerOptions
    from app.settings import AnalyticsSettings

    config = parse_camera_analytics(zones, rules, "test")
    analytics = Analytics(AnalyticsSettings(**analytics_options), {"cam0": config}, CLASSES, log=lambda msg: None,
                          log_max_mb=0.002, log_keep=50)
    server = AppServer(ServerOptions(auth_token=VIEWER, admin_token=ADMIN), announce=lambda msg: None)
    server.classes = CLASSES
    server.add_camera("cam0")
    server.set_analytics(analytics)
    return analytics, server, server.listen("127.0.0.1", 0)


def frame(i, value):
    from app.frames import Frame

    return Frame(i, 100.0 + i * 0.1, np.zeros((4, 8, 3), np.uint8)), np.full((4, 8), value, np.int64)


def test_coverage_history_reads_a_rotated_log_with_two_headers_in_wall_time(tmp_path):
    log = tmp_path / "coverage.csv"
    square = {"name": "a", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}
    analytics, server, port = serve(tmp_path, [square], [{"zone": "a", "class": "car", "above": 0.5, "for_s": 0}],
                                    coverage_log=str(log))
    try:
        for i in range(20):
            analytics.process("cam0", *frame(i, 1), None)
        # A zone appearing (as after a reload): the CSV so far closes as a part with its own header.
        for i in range(20, 40):
            analytics.coverage_log.write("cam0", i, 100.0 + i * 0.1, (("a", "car"), ("b", "road")), [0.25, 0.75])
        parts = analytics.coverage_log.file.parts()
        assert len(parts) >= 2 and parts[0].read_text().splitlines()[0] != parts[-1].read_text().splitlines()[0]
        wait_for(lambda: server.coverage_ring.history("cam0")["t"], timeout_s=10)   # the server's sampler saw frame 19

        status, h = get(port, "/api/coverage/history?camera=cam0&minutes=60")
        assert status == 200 and h["source"] == "log" and h["rows"] == 40 and len(h["t"]) == 40
        assert h["series"]["a:car"][:20] == [1.0] * 20 and h["series"]["a:car"][20:] == [0.25] * 20
        assert h["series"]["b:road"][:20] == [None] * 20 and h["series"]["b:road"][20:] == [0.75] * 20
        ring = server.coverage_ring.history("cam0")
        assert ring["frames"][-1] == 19 and abs(h["t"][19] - ring["t"][-1]) < 1e-3   # the ring's clock
        assert abs((h["t"][39] - h["t"][0]) - 3.9) < 1e-3
        assert get(port, "/api/coverage/history?camera=cam0&minutes=0.0475")[1]["rows"] == 29   # the last 2.85 s
        assert get(port, "/api/coverage/history?camera=cam0&minutes=x")[0] == 400
    finally:
        analytics.close()
        server.close()


def test_a_long_log_is_downsampled_and_its_reading_bounded(tmp_path):
    from app.analytics import CoverageLog

    for suffix in ("csv", "jsonl"):
        log = CoverageLog(str(tmp_path / f"c.{suffix}"), {}, max_mb=0.02, keep=1000)
        for i in range(6000):
            log.write("cam0" if i % 2 else "cam1", i, i * 0.1, (("z", "car"),), [(i % 10) / 10])
        log.close()
        parts = log.file.parts()
        assert len(parts) > 5
        rows, truncated = log_history.coverage_rows(parts, log.jsonl, "cam0", 1e9)
        assert len(rows) == 3000 and not truncated and [r[1] for r in rows] == list(range(1, 6000, 2))
        times, series = log_history.downsample(rows, 2000)
        assert len(times) <= 2000 and len(series["z:car"]) == len(times) and times == sorted(times)
        total = sum(p.stat().st_size for p in parts)
        rows, truncated = log_history.coverage_rows(parts, log.jsonl, "cam0", 1e9, budget=total // 4)
        assert truncated and 0 < len(rows) < 1000 and rows[-1][1] == 5999   # the newest quarter only


def _lines(log) -> int:
    """Lines in a rotating log's parts so far; 0 when a part was rotated away while being read
    (the delivery thread rotates as it writes: asked again)."""
    try:
        return sum(len(p.read_text().splitlines()) for p in log.parts())
    except FileNotFoundError:
        return 0


def test_events_older_than_the_recent_list_come_from_the_events_log(tmp_path, monkeypatch):
    from app.server import console

    events = tmp_path / "events.jsonl"
    analytics, server, port = serve(tmp_path, [], [{"class": "car", "above": 0.5, "for_s": 0, "clear_s": 0},
                                                   {"class": "road", "above": 0.5, "for_s": 0, "clear_s": 0}],
                                    events_log=str(events), clips_dir=str(tmp_path / "clips"))
    try:
        for i in range(60):   # 15 car events, 15 road events (the last open): 59 messages, the recent list keeps 50
            analytics.process("cam0", *frame(i, 1 if i % 4 < 2 else 0), None)
        wait_for(lambda: _lines(analytics.bus.deliveries[0].file) >= 59, timeout_s=10)
        assert len(analytics.bus.deliveries[0].file.parts()) > 2 and len(analytics.bus.recent) == 50
        status, body = get(port, "/api/events")
        assert status == 200 and len(body["events"]) == 30
        assert {e["class"] for e in body["events"]} == {"car", "road"}
        cars = get(port, "/api/events?class=car")[1]["events"]
        assert len(cars) == 15 and all(e["class"] == "car" and not e["open"] for e in cars)
        assert all(e["clip"].startswith("/clips/cam0/") for e in cars)
        assert not any(e["clip_deleted"] for e in cars)   # an ended clip may still be being written
        monkeypatch.setattr(console, "CLIP_GRACE_S", -1.0)
        cars = get(port, "/api/events?class=car")[1]["events"]
        assert all(e["clip_deleted"] and not e["has_clip"] for e in cars)   # never written: gone
    finally:
        analytics.close()
        server.close()
