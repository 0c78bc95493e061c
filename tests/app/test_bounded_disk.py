"""Bounded disk (app/retention.py): one retention mechanism (oldest first under a byte cap, an
age, a count; only the files it owns, never through a link), logs rotated by size whose parts
concatenate to exactly the rows written, segmented video outputs that each play alone, and a
full disk (a file-size limit, as the hardening tests use) that pauses a writer, counts what it
could not write and resumes when there is space again."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from app.latency import COLUMNS, LatencyRecorder
from app.retention import Retention, RotatingLog, timed_glob, timed_name
from app.sinks import VideoFileSink
from testkit.app_helpers import REPO, SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import ENV, run_camera

TIMED = re.compile(r"\.\d{4}-\d\d-\d\dT\d{6}\.\d{3}\.")


def _file(path, size: int, age_s: float):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_retention_deletes_oldest_first_under_a_byte_cap_and_only_its_own_files(tmp_path):
    seg = [_file(tmp_path / f"out.{i}.mp4", 1000, age_s=100 - i) for i in range(5)]
    other = _file(tmp_path / "notes.txt", 5000, age_s=1000)               # not its pattern
    outside = _file(tmp_path.parent / f"{tmp_path.name}_outside.mp4", 1000, age_s=2000)
    (tmp_path / "out.link.mp4").symlink_to(outside)                         # a link: never followed, never deleted
    keeper = Retention(tmp_path, "out.*.mp4", max_bytes=2500)
    assert keeper.sweep(protect=[seg[4]]) == 2   # seg[4] (being written) does not count against the cap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "out.2.mp4", "out.3.mp4", "out.4.mp4",
                                                          "out.link.mp4"]
    assert keeper.deleted_files == 2 and keeper.deleted_bytes == 2000 and keeper.counters() == {"deleted": 2}
    assert other.exists() and outside.exists()


def test_retention_by_age_and_count_and_never_under_a_linked_folder(tmp_path):
    clips = tmp_path / "clips"
    for i in range(4):
        _file(clips / "cam0" / f"e{i}.mp4", 10, age_s=4 * 86400 - i * 86400)   # 4, 3, 2, 1 days old
    elsewhere = tmp_path / "elsewhere"
    _file(elsewhere / "old.mp4", 10, age_s=100 * 86400)
    (clips / "cam1").symlink_to(elsewhere, target_is_directory=True)
    assert Retention(clips, ("*/*.mp4", "*/*.jpg"), max_age_s=2.5 * 86400).sweep() == 2
    assert sorted(p.name for p in (clips / "cam0").iterdir()) == ["e2.mp4", "e3.mp4"]
    assert Retention(clips, "*/*.mp4", max_files=1).sweep() == 1
    assert sorted(p.name for p in (clips / "cam0").iterdir()) == ["e3.mp4"]
    assert (elsewhere / "old.mp4").exists()


def _rows_of_parts(log: RotatingLog, header: str) -> list[str]:
    rows = []
    for part in log.parts():
        lines = part.read_bytes().decode().splitlines(keepends=True)
        assert lines[0] == header, part   # every part starts with the header
        rows += lines[1:]
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_rotated_latency_log_concatenates_to_exactly_the_rows_written(tmp_path, suffix):
    path = tmp_path / f"lat{suffix}"
    rec = LatencyRecorder(path, start=0.0, max_mb=2000 / 1024 / 1024, keep=1000)   # a part every ~2 kB
    for i in range(300):
        rec.record_dropped(i, capture_ts=i / 15, reason="late", camera=f"cam{i % 2}")
    rec.close()
    parts = rec.log.parts()
    assert len(parts) > 5 and all(TIMED.search(p.name) for p in parts[:-1]), parts
    assert [p.name for p in parts[:-1]] == sorted(p.name for p in parts[:-1])   # named by time, in order
    assert all(p.stat().st_size <= 2000 for p in parts)
    if suffix == ".csv":
        header = ",".join(COLUMNS) + "\r\n"
        rows = list(csv.reader(_rows_of_parts(rec.log, header)))
        assert [int(r[0]) for r in rows] == list(range(300))
    else:
        rows = [json.loads(line) for p in parts for line in p.read_text().splitlines()]
        assert [r["frame"] for r in rows] == list(range(300))
    assert rec.write_error == ""


def test_log_keep_holds_the_newest_parts(tmp_path):
    log = RotatingLog(tmp_path / "cov.csv", "--coverage-log", header="a,b\n", max_bytes=100, keep=3)
    for i in range(200):
        assert log.write(f"{i},{i * i}\n")
    log.close()
    parts = log.parts()
    assert len(parts) == 4 and log.rotated > 3 and log.retention.deleted_files == log.rotated - 3
    rows = [int(line.split(",")[0]) for line in _rows_of_parts(log, "a,b\n")]
    assert rows == list(range(rows[0], 200))   # the newest rows, none missing between them
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in parts)
    assert timed_glob(tmp_path / "cov.csv") == "cov.????-??-??T??????.???.csv"
    assert TIMED.search(timed_name(tmp_path / "cov.csv", 0.0).name)


FULL_DISK_SCRIPT = r"""
import json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails with EFBIG
from app.retention import RotatingLog
lines = []
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
log = RotatingLog(sys.argv[1], "--latency-log", header="frame,x\n", retry_s=0.0, log=lines.append)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
written = [i for i in range(100) if log.write(f"{i},{'y' * 30}\n")]
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))   # space again
written += [i for i in range(100, 150) if log.write(f"{i},{'y' * 30}\n")]
log.close()
print(json.dumps({"written": written, "not_written": log.not_written, "lines": lines}))
"""


def test_a_full_disk_pauses_a_log_counts_what_it_lost_and_resumes(tmp_path):
    path = tmp_path / "lat.csv"
    r = subprocess.run([sys.executable, "-c", FULL_DISK_SCRIPT, str(path)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    fit = out["written"].index(100)   # the rows that fit under the limit
    assert 0 < fit < 100
    assert out["written"] == list(range(fit)) + list(range(100, 150))
    assert out["not_written"] == 100 - fit
    assert len(out["lines"]) == 2, out["lines"]
    assert out["lines"][0].startswith(f"error: --latency-log cannot write {path} (File too large); ")
    assert "paused, rows not written are counted" in out["lines"][0]
    assert out["lines"][1] == f"--latency-log: writing again; {100 - fit} rows were not written"
    lines = path.read_text().splitlines()
    assert lines[0] == "frame,x" and [int(line.split(",")[0]) for line in lines[1:]] == out["written"]
    assert all(line.endswith("y" * 30) for line in lines[1:])   # whole rows only


def _frames(sink: VideoFileSink, n: int, t0: float = 0.0, fps: float = 10.0):
    for i in range(n):
        image = np.full((48, 64, 3), (i * 7) % 255, np.uint8)
        image[:, : (i % 64)] = 255
        sink.write(SimpleNamespace(id=i, capture_ts=t0 + i / fps), image, None)


def _decoded_frames(path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


@pytest.mark.parametrize("live", [False, True])
def test_segmented_video_plays_each_segment_and_keeps_closed_ones_under_the_cap(tmp_path, live):
    sink = VideoFileSink(tmp_path / "out.mp4", live=live, segment_s=1.0)
    sink.open(64, 48, 10.0)
    _frames(sink, 35, t0=time.monotonic() - 10)   # captured 10 s ago, written now
    sink.close()
    segments = sorted(tmp_path.glob(timed_glob(tmp_path / "out.mp4")))
    assert not (tmp_path / "out.mp4").exists()
    assert [_decoded_frames(p) for p in segments] == [10, 10, 10, 5]
    if live:   # named by the capture time of their first frame, not by when they were written
        starts = [datetime.strptime(p.name.split(".", 1)[1][:21], "%Y-%m-%dT%H%M%S.%f") for p in segments[1:]]
        assert all(abs((b - a).total_seconds() - 1.0) < 0.01 for a, b in zip(starts, starts[1:])), segments
        assert datetime.now(timezone.utc).replace(tzinfo=None) - starts[-1] > timedelta(seconds=5)
    assert sink.counters() == {"segments": 4}

    capped = tmp_path / "capped"
    sizes = [p.stat().st_size for p in segments]
    cap = sizes[0] + sizes[1] + 100   # about two segments
    sink = VideoFileSink(capped / "out.mp4", live=live, segment_s=1.0, retain_gb=cap / 1024 ** 3)
    sink.open(64, 48, 10.0)
    for k in range(6):
        _frames(sink, 10, t0=k * 1.0)
        kept = sorted(capped.iterdir())
        closed = [p for p in kept if p != sink.current]
        assert sum(p.stat().st_size for p in closed) <= cap   # the caps plus the one being written
    sink.close()
    kept = sorted(capped.iterdir())
    assert 2 <= len(kept) <= 3 and sink.retention.deleted_files == 6 - len(kept)
    assert all(_decoded_frames(p) == 10 for p in kept)   # the newest, each whole


def test_a_segmented_output_that_got_no_frame_leaves_nothing(tmp_path):
    sink = VideoFileSink(tmp_path / "out.mp4", segment_s=5.0, retain_gb=1.0)
    sink.open(64, 48, 10.0)
    sink.close()
    assert list(tmp_path.iterdir()) == [] and sink.counters() == {"segments": 0}


VIDEO_FULL_DISK_SCRIPT = r"""
import json, resource, signal, sys
from types import SimpleNamespace
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from app.sinks import VideoFileSink
lines = []
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
sink = VideoFileSink(sys.argv[1], live=True, log=lines.append)
sink.pause.retry_s = 0.0
sink.open(64, 48, 10.0)
rng = np.random.default_rng(0)
def frames(a, b):
    for i in range(a, b):
        sink.write(SimpleNamespace(id=i, capture_ts=i / 10), rng.integers(0, 255, (48, 64, 3), np.uint8), None)
frames(0, 20)
resource.setrlimit(resource.RLIMIT_FSIZE, (6000, hard))   # the disk fills up
sink.pause.retry_s = 1e9   # (a file-size limit is per file: a new file would fit, a full disk would not)
frames(20, 60)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))   # space again
sink.pause.retry_s = 0.0
frames(60, 80)
sink.close()
print(json.dumps({"lines": lines, "counters": sink.counters(), "current": str(sink.current), "count": sink.count}))
"""


def test_a_full_disk_pauses_a_video_output_and_it_resumes_in_a_new_file(tmp_path):
    path = tmp_path / "out.mp4"
    r = subprocess.run([sys.executable, "-c", VIDEO_FULL_DISK_SCRIPT, str(path)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    lost = out["counters"]["frames not written"]
    assert 0 < lost and out["count"] + lost == 80, out
    assert len(out["lines"]) == 2 and out["lines"][0].startswith(f"error: --output {path}: cannot write"), out
    assert out["lines"][1] == f"--output {path}: writing again; {lost} frames were not written"
    resumed = sorted(tmp_path.glob(timed_glob(path)))
    assert [str(p) for p in resumed] == [out["current"]]
    assert _decoded_frames(resumed[0]) == 20   # frames 60..79, from a keyframe
    assert 1 <= _decoded_frames(path) <= 80 - 20 - lost   # the first file plays up to its last whole fragment


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
def test_a_run_with_segments_and_rotated_logs_holds_the_caps_and_every_row(tmp_path):
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(SAMPLE_VIDEO), "-frames:v", "45",
                    "-c:v", "libx264", "-preset", "ultrafast", str(clip)], check=True, timeout=60)
    out = tmp_path / "out"
    r = run_camera("--source", clip, "--model", tiny_onnx(), "--output", out / "seg.mp4", "--segment-s", "1",
                   "--retain-gb", str(60_000 / 1024 ** 3), "--latency-log", out / "lat.csv",
                   "--log-max-mb", str(800 / 1024 / 1024), "--log-keep", "1000")
    assert r.returncode == 0, r.stderr[-3000:]
    header = ",".join(COLUMNS) + "\r\n"
    parts = sorted(out.glob(timed_glob(out / "lat.csv"))) + [out / "lat.csv"]
    assert len(parts) > 3
    rows = list(csv.reader(_rows_of_parts(SimpleNamespace(parts=lambda: parts), header)))
    assert [int(row[0]) for row in rows] == list(range(45))   # every frame once, in order
    segments = sorted(out.glob(timed_glob(out / "seg.mp4")))
    assert sum(p.stat().st_size for p in segments[:-1]) <= 60_000
    assert all(_decoded_frames(p) == 15 for p in segments)
    assert f"{out / 'seg.mp4'}: segments 3, deleted {3 - len(segments)}" in r.stderr


LOG_FULL_VIDEO_ON_SCRIPT = r"""
import json, resource, signal, sys, time
from pathlib import Path
from types import SimpleNamespace
import numpy as np
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from app.latency import LatencyRecorder
from app.sinks import VideoFileSink
folder = Path(sys.argv[1])
lines = []
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
rec = LatencyRecorder(folder / "lat.csv", start=0.0)
sink = VideoFileSink(folder / "out.mp4", live=True, segment_s=1.0)
sink.open(64, 48, 10.0)
t0 = time.monotonic()
for i in range(240):   # 1 s segments of about 3 kB fit under the limit, the log does not
    frame = SimpleNamespace(id=i, capture_ts=t0 + i / 10, source_ts=None, timings={}, camera="cam0", batch_size=1)
    sink.write(frame, np.full((48, 64, 3), i % 256, np.uint8), None)
    rec.record_written(frame, frame.capture_ts + 0.01)
sink.close()
rec.close()
print(json.dumps({"video": sink.count, "counters": sink.counters(), "log_lost": rec.log.not_written,
                  "error": rec.write_error}))
"""


def test_a_log_that_cannot_be_written_never_stops_the_video(tmp_path):
    r = subprocess.run([sys.executable, "-c", LOG_FULL_VIDEO_ON_SCRIPT, str(tmp_path)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["video"] == 240 and out["counters"] == {"segments": 24}, out   # every frame, every segment
    assert 0 < out["log_lost"] < 240 and "rows not written" in out["error"]
    assert r.stderr.count("--latency-log cannot write") == 1   # one line when it paused
    rows = (tmp_path / "lat.csv").read_text().splitlines()[1:]
    assert len(rows) == 240 - out["log_lost"]
    segments = sorted(tmp_path.glob(timed_glob(tmp_path / "out.mp4")))
    assert [_decoded_frames(p) for p in segments] == [10] * 24


def test_coverage_and_events_logs_rotate_into_parts_that_hold_every_row(tmp_path):
    from app.analytics import CoverageLog
    from app.analytics.events import JsonlDelivery

    cameras = {"cam0": SimpleNamespace(watched={"road": ["car", "person"]})}
    cov = CoverageLog(str(tmp_path / "cov.csv"), cameras, max_mb=600 / 1024 / 1024, keep=100)
    for i in range(100):
        cov.write("cam0", i, i / 15, (("road", "car"), ("road", "person")), [0.25, i / 100])
    cov.close()
    assert cov.file.rotated >= 3
    rows = list(csv.reader(_rows_of_parts(cov.file, "camera,frame,time_s,road:car,road:person\r\n")))
    assert [int(r[1]) for r in rows] == list(range(100)) and rows[7][4] == "0.07000"

    events = JsonlDelivery(tmp_path / "events.jsonl", max_mb=500 / 1024 / 1024, keep=100)
    for i in range(50):
        events.deliver({"type": "start", "id": f"e{i}"})
    events.close()
    assert events.file.rotated >= 2
    got = [json.loads(line)["id"] for p in events.file.parts() for line in p.read_text().splitlines()]
    assert got == [f"e{i}" for i in range(50)]
