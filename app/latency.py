"""Per-frame latency records (`--latency-log FILE.csv|.jsonl`) and the exit summary.

One row per captured frame, written as soon as the frame is done (flushed, so a killed run
keeps what it had):
    frame, source_ts, capture_s (s since the run started), queue_ms, preprocess_ms,
    inference_ms, overlay_ms, sink_ms, e2e_ms (capture -> written), dropped (0/1), reason,
    camera (cam0, cam1, ... or its configured name), batch_size (frames inferred together)
queue_ms is the time the frame waited in the two queues (capture->inference, inference->output).
A frame a camera's detect_fps left out is a row with dropped 0 and reason `skipped` (no stage
times): counted as skipped, neither written nor dropped.
Frame ids count per camera: (camera, frame) names a row. The summary has one line per camera
and, with several cameras, an all-camera line.
"""
from __future__ import annotations

import csv
import json
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from app.retention import csv_line
from core.errors import InputError, file_error

STAGES = ("queue", "preprocess", "inference", "overlay", "sink", "e2e")
COLUMNS = ("frame", "source_ts", "capture_s", *(f"{s}_ms" for s in STAGES), "dropped", "reason", "camera",
           "batch_size")
DEFAULT_CAMERA = "cam0"


class StageStats:
    """Count/max exactly, percentiles over the most recent `keep` values: bounded memory for
    runs that last weeks."""

    def __init__(self, keep: int = 100_000):
        # Filled now, not np.zeros: calloc'ed pages would be committed one by one as the ring
        # first fills (minutes to hours), which reads as a slow leak; this way RSS is flat.
        self.values = np.full(keep, 0.0, dtype=np.float32)
        self.count = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self.values[self.count % len(self.values)] = ms
        self.count += 1
        self.max = max(self.max, ms)

    def percentiles(self, qs=(50, 90, 99)) -> list:
        n = min(self.count, len(self.values))
        if n == 0:
            return [float("nan")] * len(qs)
        return [float(v) for v in np.percentile(self.values[:n], qs)]


class Tally:
    """What one camera (or all of them together) did: frames written and dropped by reason,
    stage times, the span for fps, and the batch sizes its frames were inferred in."""

    def __init__(self, keep: int = 100_000):
        self.stats = {s: StageStats(keep) for s in STAGES}
        self.written = 0
        self.dropped = Counter()
        self.first_capture = None
        self.last_written_at = None
        self.batch_sum = 0
        self.overlays_drawn = 0     # overlay images drawn (one per size an output wanted, or on request)
        self.overlays_skipped = 0   # frames for which no output wanted pixels: nothing drawn
        self.skipped = 0

    def add_written(self, row: dict, capture_ts: float, done_at: float) -> None:
        self.written += 1
        self.last_written_at = done_at
        self.seen(capture_ts)
        self.batch_sum += row["batch_size"] or 0
        for s in STAGES:
            if row[f"{s}_ms"] is not None:
                self.stats[s].add(row[f"{s}_ms"])

    def seen(self, capture_ts: float) -> None:
        if self.first_capture is None or capture_ts < self.first_capture:
            self.first_capture = capture_ts

    def fps(self) -> float:
        if not self.written or self.first_capture is None or self.last_written_at is None:
            return 0.0
        span = self.last_written_at - self.first_capture
        return self.written / span if span > 0 else 0.0

    def summary(self, captured: int | None) -> dict:
        accounted = self.written + sum(self.dropped.values()) + self.skipped
        captured = accounted if captured is None else captured
        out = {"captured": captured, "written": self.written, "skipped": self.skipped,
               "dropped": sum(self.dropped.values()),
               "unaccounted": captured - accounted, "dropped_by_reason": dict(self.dropped), "fps": self.fps(),
               "mean_batch": self.batch_sum / self.written if self.written else 0.0,
               "overlays_drawn": self.overlays_drawn, "overlays_skipped": self.overlays_skipped, "stages": {}}
        for s in STAGES:
            st = self.stats[s]
            p50, p90, p99 = st.percentiles()
            out["stages"][s] = {"count": st.count, "p50": p50, "p90": p90, "p99": p99, "max": st.max}
        return out


def _counts_line(s: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped_by_reason"].items()))
    return (f"frames {s['captured']}  written {s['written']}" + (f"  skipped {s['skipped']}" if s["skipped"] else "")
            + f"  dropped {s['dropped']}"
            + (f" ({reasons})" if reasons else "") + f"  fps {s['fps']:.2f}"
            + (f"  UNACCOUNTED {s['unaccounted']}" if s["unaccounted"] else ""))


def _overlays_line(s: dict) -> str:
    return f"overlays drawn {s['overlays_drawn']}  skipped {s['overlays_skipped']} (no output wanted pixels)"


class LatencyRecorder:
    """Thread-safe: the capture, inference and output threads of every camera report here.
    `written`, `dropped`, `stats` are the all-camera totals; `cameras[name]` each camera's."""

    def __init__(self, path: str | Path | None = None, start: float | None = None, max_mb: float | None = None,
                 keep: int | None = None):
        """max_mb: rotate the log at this size (--log-max-mb), keeping the newest `keep` parts
        (--log-keep); None: one file."""
        self.start = time.monotonic() if start is None else start
        self.path = Path(path) if path else None
        self.lock = threading.Lock()
        self.total = Tally()
        self.cameras: dict[str, Tally] = {}
        # fn(row, frame timings) after each row, under the lock (app/metrics.py feeds /metrics here;
        # rows carry their camera)
        self.listeners = []
        self.log = None          # app.retention.RotatingLog: rotated by size, paused on a full disk
        self._csv = False
        if self.path:
            from app.retention import RotatingLog
            from app.setting_rules import latency_log_path
            from core.options import check
            from core.validate import prepare_output

            check(latency_log_path, str(self.path), "--latency-log")   # .csv or .jsonl
            prepare_output(self.path, "--latency-log")   # missing folders made, like every output
            self._csv = self.path.suffix.lower() == ".csv"
            header = csv_line(COLUMNS) if self._csv else ""
            try:
                self.log = RotatingLog(self.path, "--latency-log", header=header,
                                       max_bytes=None if max_mb is None else max_mb * 1024 * 1024, keep=keep)
            except OSError as e:
                raise InputError(f"--latency-log {file_error(self.path, e)}") from None

    @property
    def write_error(self) -> str:
        """Why rows are missing from the log ('' when none is): a full disk paused it."""
        if self.log is None or not self.log.not_written:
            return ""
        return f"{self.log.pause.error} ({self.log.not_written} rows not written)"

    # The all-camera totals under their old names (one camera: simply its numbers).
    written = property(lambda self: self.total.written)
    dropped = property(lambda self: self.total.dropped)
    stats = property(lambda self: self.total.stats)
    first_capture = property(lambda self: self.total.first_capture)
    last_written_at = property(lambda self: self.total.last_written_at)

    skipped = property(lambda self: self.total.skipped)

    @property
    def accounted(self) -> int:
        return self.written + sum(self.dropped.values()) + self.skipped

    def _camera(self, name: str) -> Tally:
        if name not in self.cameras:
            self.cameras[name] = Tally(keep=20_000)   # bounded per camera too
        return self.cameras[name]

    def record_written(self, frame, done_at: float) -> None:
        t = frame.timings
        camera = getattr(frame, "camera", DEFAULT_CAMERA)
        row = {"frame": frame.id, "source_ts": frame.source_ts, "capture_s": frame.capture_ts - self.start}
        for s in STAGES[:-1]:
            row[f"{s}_ms"] = t.get(s)
        row["e2e_ms"] = (done_at - frame.capture_ts) * 1000.0
        row["dropped"], row["reason"] = 0, ""
        row["camera"], row["batch_size"] = camera, getattr(frame, "batch_size", None)
        with self.lock:
            self.total.add_written(row, frame.capture_ts, done_at)
            self._camera(camera).add_written(row, frame.capture_ts, done_at)
            self._write(row)
            for fn in self.listeners:
                fn(row, t)

    def record_dropped(self, frame_id: int, capture_ts: float, reason: str, source_ts=None, timings=None,
                       camera: str = DEFAULT_CAMERA, batch_size: int | None = None) -> None:
        row = {"frame": frame_id, "source_ts": source_ts, "capture_s": capture_ts - self.start}
        for s in STAGES:
            row[f"{s}_ms"] = (timings or {}).get(s)
        row["dropped"], row["reason"] = 1, reason
        row["camera"], row["batch_size"] = camera, batch_size
        with self.lock:
            for tally in (self.total, self._camera(camera)):
                tally.dropped[reason] += 1
                tally.seen(capture_ts)
            self._write(row)
            for fn in self.listeners:
                fn(row, timings or {})

    def count_overlays(self, camera: str, drawn: int = 0, skipped: int = 0) -> None:
        """Overlays drawn for `camera`, or frames of it that needed none (app/pipeline.py)."""
        with self.lock:
            for tally in (self.total, self._camera(camera)):
                tally.overlays_drawn += drawn
                tally.overlays_skipped += skipped

    def overlays(self, camera: str) -> tuple[int, int]:
        """(drawn, skipped) of `camera` so far (/metrics reads them at scrape time)."""
        with self.lock:
            tally = self.cameras.get(camera)
            return (tally.overlays_drawn, tally.overlays_skipped) if tally is not None else (0, 0)

    def record_skipped(self, frame_id: int, capture_ts: float, source_ts=None, camera: str = DEFAULT_CAMERA) -> None:
        """A frame the camera's detect_fps left out: not preprocessed, not inferred."""
        row = {"frame": frame_id, "source_ts": source_ts, "capture_s": capture_ts - self.start,
               **{f"{s}_ms": None for s in STAGES}, "dropped": 0, "reason": "skipped", "camera": camera,
               "batch_size": None}
        with self.lock:
            for tally in (self.total, self._camera(camera)):
                tally.skipped += 1
                tally.seen(capture_ts)
            self._write(row)
            for fn in self.listeners:
                fn(row, {})

    def _write(self, row: dict) -> None:
        if self.log is None:
            return
        if self._csv:
            line = csv_line(["" if row[c] is None else (f"{row[c]:.3f}" if isinstance(row[c], float) else row[c])
                              for c in COLUMNS])
        else:
            line = json.dumps({c: (round(row[c], 3) if isinstance(row[c], float) else row[c]) for c in COLUMNS}) + "\n"
        # Written at once (a killed run keeps every finished row). A full disk must not stop the
        # video: the log pauses (one line), counts the rows it could not write, and resumes.
        self.log.write(line)

    def fps(self) -> float:
        return self.total.fps()

    def summary(self, captured: int | dict | None = None) -> dict:
        """`captured`: the capture threads' own count (an int for all cameras together, or
        {camera: count}); it must equal written + dropped. `cameras`: the same per camera."""
        per = captured if isinstance(captured, dict) else {}
        total = sum(per.values()) if isinstance(captured, dict) else captured
        with self.lock:
            out = self.total.summary(total)
            names = list(per) + [n for n in self.cameras if n not in per]
            out["cameras"] = {n: (self.cameras[n] if n in self.cameras else Tally(keep=1)).summary(per.get(n))
                              for n in names}
        return out

    def format_summary(self, captured: int | dict | None = None) -> str:
        """One camera: its counts line and stage table. Several: a line per camera (counts,
        fps, e2e p50/p99, mean batch size), an all-camera line, the all-camera stage table."""
        s = self.summary(captured)
        lines = []
        if len(s["cameras"]) > 1:
            width = max(len(n) for n in s["cameras"]) + 1
            for name, c in s["cameras"].items():
                e2e = c["stages"]["e2e"]
                lines.append(f"{name + ':':<{width}} {_counts_line(c)}  e2e p50 {e2e['p50']:.1f} p99 {e2e['p99']:.1f} ms"
                             f"  batch {c['mean_batch']:.2f}")
            lines.append(f"all cameras: {_counts_line(s)}  batch {s['mean_batch']:.2f}")
            lines += [f"{name + ':':<{width}} {_overlays_line(c)}" for name, c in s["cameras"].items()]
        else:
            lines.append(_counts_line(s))
            lines.append(_overlays_line(s))
        lines.append(f"{'stage ms':<11}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
        for name, st in s["stages"].items():
            if st["count"]:
                lines.append(f"{name:<11}{st['p50']:>9.1f}{st['p90']:>9.1f}{st['p99']:>9.1f}{st['max']:>9.1f}")
        return "\n".join(lines)

    def close(self) -> None:
        with self.lock:
            if self.log is not None:
                self.log.close()


def read_log(path: str | Path) -> list[dict]:
    """A --latency-log file -> rows as dicts with floats (None for empty), for plots and tests."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no latency log {path}")
    rows = []
    if path.suffix.lower() == ".jsonl":
        with open(path) as f:
            try:
                rows = [json.loads(line) for line in f if line.strip()]
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: not JSON lines ({e})") from None
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                rows.append({k: (None if v == "" else v) for k, v in r.items()})
    else:
        raise InputError(f"{path}: a latency log is a .csv or .jsonl file")
    optional = ("camera", "batch_size")   # logs from before multi-camera runs lack them
    for n, r in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        missing = [k for k in COLUMNS if k not in r and k not in optional] if isinstance(r, dict) else list(COLUMNS)
        if missing:
            raise InputError(f"{path}: not a latency log (no {', '.join(missing)}); "
                             "write one with run_camera.py --latency-log FILE.csv")
        try:
            for k in COLUMNS:
                v = r.get(k)
                if k == "reason":
                    r[k] = v or ""
                elif k == "camera":
                    r[k] = v or DEFAULT_CAMERA
                elif k == "batch_size":
                    r[k] = None if v is None else int(v)
                elif k in ("frame", "dropped"):
                    r[k] = int(v)
                else:
                    r[k] = None if v is None else float(v)
        except (TypeError, ValueError) as e:
            raise InputError(f"{path} line {n}: {k}: {e}") from None
    return rows
