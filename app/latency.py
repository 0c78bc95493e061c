"""Per-frame latency records (`--latency-log FILE.csv|.jsonl`) and the exit summary.

One row per captured frame id, written as soon as the frame is done (flushed, so a killed run
keeps what it had):
    frame, source_ts, capture_s (s since the run started), queue_ms, preprocess_ms,
    inference_ms, overlay_ms, sink_ms, e2e_ms (capture -> written), dropped (0/1), reason
queue_ms is the time the frame waited in the two queues (capture->inference, inference->output).
"""
from __future__ import annotations

import csv
import json
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

STAGES = ("queue", "preprocess", "inference", "overlay", "sink", "e2e")
COLUMNS = ("frame", "source_ts", "capture_s", *(f"{s}_ms" for s in STAGES), "dropped", "reason")


class StageStats:
    """Count/max exactly, percentiles over the most recent `keep` values: bounded memory for
    runs that last weeks."""

    def __init__(self, keep: int = 100_000):
        self.values = np.zeros(keep, dtype=np.float32)
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


class LatencyRecorder:
    """Thread-safe: the capture, inference and output threads all report here."""

    def __init__(self, path: str | Path | None = None, start: float | None = None):
        self.start = time.monotonic() if start is None else start
        self.path = Path(path) if path else None
        self.lock = threading.Lock()
        self.stats = {s: StageStats() for s in STAGES}
        self.written = 0
        self.dropped = Counter()
        self.first_capture = None
        self.last_written_at = None
        self._file = None
        self._csv = None
        if self.path:
            from app.validate import check_value, prepare_output

            check_value("latency_log", str(self.path))   # .csv or .jsonl
            prepare_output(self.path, "--latency-log")   # missing folders made, like every output
            self._file = open(self.path, "w", newline="")
            if self.path.suffix.lower() == ".csv":
                self._csv = csv.writer(self._file)
                self._csv.writerow(COLUMNS)
            self._file.flush()

    @property
    def accounted(self) -> int:
        return self.written + sum(self.dropped.values())

    def record_written(self, frame, done_at: float) -> None:
        t = frame.timings
        row = {"frame": frame.id, "source_ts": frame.source_ts, "capture_s": frame.capture_ts - self.start}
        for s in STAGES[:-1]:
            row[f"{s}_ms"] = t.get(s)
        row["e2e_ms"] = (done_at - frame.capture_ts) * 1000.0
        row["dropped"], row["reason"] = 0, ""
        with self.lock:
            self.written += 1
            self.last_written_at = done_at
            self._seen(frame.capture_ts)
            for s in STAGES:
                if row[f"{s}_ms"] is not None:
                    self.stats[s].add(row[f"{s}_ms"])
            self._write(row)

    def record_dropped(self, frame_id: int, capture_ts: float, reason: str, source_ts=None, timings=None) -> None:
        row = {"frame": frame_id, "source_ts": source_ts, "capture_s": capture_ts - self.start}
        for s in STAGES:
            row[f"{s}_ms"] = (timings or {}).get(s)
        row["dropped"], row["reason"] = 1, reason
        with self.lock:
            self.dropped[reason] += 1
            self._seen(capture_ts)
            self._write(row)

    def _seen(self, capture_ts: float) -> None:
        if self.first_capture is None or capture_ts < self.first_capture:
            self.first_capture = capture_ts

    def _write(self, row: dict) -> None:
        if self._file is None:
            return
        if self._csv is not None:
            self._csv.writerow(["" if row[c] is None else (f"{row[c]:.3f}" if isinstance(row[c], float) else row[c])
                                for c in COLUMNS])
        else:
            self._file.write(json.dumps({c: (round(row[c], 3) if isinstance(row[c], float) else row[c])
                                         for c in COLUMNS}) + "\n")
        self._file.flush()   # a killed run keeps every finished row

    def fps(self) -> float:
        if not self.written or self.first_capture is None or self.last_written_at is None:
            return 0.0
        span = self.last_written_at - self.first_capture
        return self.written / span if span > 0 else 0.0

    def summary(self, captured: int | None = None) -> dict:
        """`captured`: the capture thread's own count; it must equal written + dropped."""
        with self.lock:
            accounted = self.accounted
            captured = accounted if captured is None else captured
            out = {"captured": captured, "written": self.written, "dropped": sum(self.dropped.values()),
                   "unaccounted": captured - accounted,
                   "dropped_by_reason": dict(self.dropped), "fps": self.fps(), "stages": {}}
            for s in STAGES:
                st = self.stats[s]
                p50, p90, p99 = st.percentiles()
                out["stages"][s] = {"count": st.count, "p50": p50, "p90": p90, "p99": p99, "max": st.max}
        return out

    def format_summary(self, captured: int | None = None) -> str:
        s = self.summary(captured)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped_by_reason"].items()))
        lines = [f"frames {s['captured']}  written {s['written']}  dropped {s['dropped']}"
                 + (f" ({reasons})" if reasons else "") + f"  fps {s['fps']:.2f}"
                 + (f"  UNACCOUNTED {s['unaccounted']}" if s["unaccounted"] else ""),
                 f"{'stage ms':<11}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}"]
        for name, st in s["stages"].items():
            if st["count"]:
                lines.append(f"{name:<11}{st['p50']:>9.1f}{st['p90']:>9.1f}{st['p99']:>9.1f}{st['max']:>9.1f}")
        return "\n".join(lines)

    def close(self) -> None:
        with self.lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_log(path: str | Path) -> list[dict]:
    """A --latency-log file -> rows as dicts with floats (None for empty), for plots and tests."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no latency log {path}")
    rows = []
    if path.suffix.lower() == ".jsonl":
        with open(path) as f:
            try:
                rows = [json.loads(line) for line in f if line.strip()]
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not JSON lines ({e})") from None
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                rows.append({k: (None if v == "" else v) for k, v in r.items()})
    else:
        raise ValueError(f"{path}: a latency log is a .csv or .jsonl file")
    for n, r in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        missing = [k for k in COLUMNS if k not in r] if isinstance(r, dict) else list(COLUMNS)
        if missing:
            raise ValueError(f"{path}: not a latency log (no {', '.join(missing)}); "
                             "write one with run_camera.py --latency-log FILE.csv")
        try:
            for k in COLUMNS:
                v = r.get(k)
                if k == "reason":
                    r[k] = v or ""
                elif k in ("frame", "dropped"):
                    r[k] = int(v)
                else:
                    r[k] = None if v is None else float(v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path} line {n}: {k}: {e}") from None
    return rows
