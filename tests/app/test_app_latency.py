"""Latency log rows, the exit summary and `bisenet latency-plot`."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.cli import main as cli_main
from app.frames import Frame
from app.latency import COLUMNS, LatencyRecorder, read_log
from app.latency_plot import plot


def fill(rec, n_written=20, n_dropped=3):
    for i in range(n_written):
        f = Frame(i, rec.start + i * 0.1, np.zeros((1, 1, 3), np.uint8), source_ts=i / 10)
        f.timings = {"queue": 1.0 + i, "preprocess": 2.0, "inference": 10.0 + i, "overlay": 3.0, "sink": 4.0}
        rec.record_written(f, f.capture_ts + (20.0 + i) / 1000)
    for j in range(n_dropped):
        rec.record_dropped(n_written + j, rec.start + 3.0, "queue_full" if j else "decode_error")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_log_rows_round_trip_and_summary(tmp_path, suffix):
    rec = LatencyRecorder(tmp_path / f"lat{suffix}", start=100.0)
    fill(rec)
    rec.close()
    rows = read_log(tmp_path / f"lat{suffix}")
    assert len(rows) == 23 and set(rows[0]) >= set(COLUMNS)
    first = rows[0]
    assert first["frame"] == 0 and first["dropped"] == 0 and first["inference_ms"] == pytest.approx(10.0)
    assert first["e2e_ms"] == pytest.approx(20.0) and first["source_ts"] == pytest.approx(0.0)
    assert rows[5]["capture_s"] == pytest.approx(0.5)
    drop = rows[20]
    assert drop["dropped"] == 1 and drop["reason"] == "decode_error" and drop["inference_ms"] is None
    s = rec.summary(captured=23)
    assert (s["captured"], s["written"], s["dropped"], s["unaccounted"]) == (23, 20, 3, 0)
    assert s["dropped_by_reason"] == {"decode_error": 1, "queue_full": 2}
    assert s["stages"]["inference"]["p50"] == pytest.approx(np.percentile(np.arange(10, 30), 50))
    assert s["stages"]["e2e"]["max"] == pytest.approx(39.0, abs=1e-3)
    text = rec.format_summary(captured=23)
    assert "frames 23  written 20  dropped 3 (decode_error 1, queue_full 2)" in text
    assert "inference" in text and "p99" in text
    assert "UNACCOUNTED 1" in rec.format_summary(captured=24)


def test_bad_log_names_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv or \.jsonl"):
        LatencyRecorder(tmp_path / "lat.txt")


def test_latency_plot_with_opencv_and_through_the_cli(tmp_path, capsys):
    rec = LatencyRecorder(tmp_path / "lat.csv", start=0.0)
    fill(rec)
    rec.close()
    out = plot(tmp_path / "lat.csv", tmp_path / "a.png", use_opencv=True)
    img = cv2.imread(str(out))
    assert img.shape == (800, 1200, 3)
    # The e2e line and histogram are drawn in near-black (BGR 30, 30, 30); red is for dropped
    # frames only (their ticks on the axis and the legend's swatch: few pixels).
    assert ((np.abs(img.astype(int) - (30, 30, 30)).sum(axis=2)) < 30).sum() > 500
    red = ((np.abs(img.astype(int) - (0, 0, 255)).sum(axis=2)) < 30).sum()
    assert 0 < red < 500
    assert cli_main(["latency-plot", str(tmp_path / "lat.csv"), "-o", str(tmp_path / "b.png")]) == 0
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert cli_main(["latency-plot", str(tmp_path / "missing.csv")]) == 2
    assert "no latency log" in capsys.readouterr().err


def test_latency_plot_ticks_are_distinct_on_a_short_log(tmp_path):
    """A 3-frame log with sub-millisecond stages: the OpenCV axes label 0, 0.4, 0.8 ... not 0, 0, 1, 1."""
    from app.latency_plot import _tick_text

    assert [_tick_text(2 * i / 5, 2 / 5) for i in range(6)] == ["0.0", "0.4", "0.8", "1.2", "1.6", "2.0"]
    assert [_tick_text(500 * i / 5, 100) for i in range(3)] == ["0", "100", "200"]


def test_latency_plot_bad_outputs_are_one_line_and_keep_what_was_there(tmp_path, capsys):
    rec = LatencyRecorder(tmp_path / "lat.csv", start=0.0)
    fill(rec)
    rec.close()
    assert cli_main(["latency-plot", str(tmp_path / "lat.csv"), "-o", str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use a .png or .jpg file name" in err[0], err
    assert not (tmp_path / "p.txt").exists()
    # A symlink as -o: its target gets the image, the link stays a link.
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(target)
    assert cli_main(["latency-plot", str(tmp_path / "lat.csv"), "-o", str(tmp_path / "link.png"), "--opencv"]) == 0
    assert (tmp_path / "link.png").is_symlink() and cv2.imread(str(target)) is not None
    capsys.readouterr()
    # A link into a place nobody can write (/proc, even as root): one line, the link stays.
    (tmp_path / "nowhere.png").symlink_to("/proc/no-such-dir/x.png")
    assert cli_main(["latency-plot", str(tmp_path / "lat.csv"), "-o", str(tmp_path / "nowhere.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write it" in err[0], err
    assert (tmp_path / "nowhere.png").is_symlink()
    assert cli_main(["latency-plot", str(tmp_path / "lat.csv"), "-o", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_stage_stats_hold_their_memory_from_the_start():
    """The percentile ring is resident when made, so a long run's RSS does not creep up while
    it first fills (bench/soak.py --in-process reads that creep as growth)."""
    from app.latency import StageStats

    def rss_kb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

    before = rss_kb()
    stats = StageStats(keep=10_000_000)   # 40 MB of float32
    grew_mb = (rss_kb() - before) / 1024
    assert grew_mb > 30, f"RSS grew {grew_mb:.1f} MB when the 40 MB ring was made"
    stats.add(1.0)
    assert stats.count == 1 and stats.percentiles((50,)) == [1.0]
