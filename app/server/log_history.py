"""The coverage and events logs read back for the console: coverage over spans longer than the
in-memory ring (GET /api/coverage/history) and events older than the analytics' last messages
(GET /api/events).

Bounded work per request: at most COVERAGE_READ_BYTES (coverage) or EVENTS_READ_BYTES (events)
read, from the newest end backwards (the live file, then the rotated parts newest first); what
lies further back is not read and the answer says "truncated". A series has at most MAX_POINTS
points (each the mean of its time bucket); at most MAX_EVENTS events come from the log."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

COVERAGE_READ_BYTES = 16 * 1024 * 1024
EVENTS_READ_BYTES = 4 * 1024 * 1024
MAX_POINTS = 2000
MAX_EVENTS = 500
HEADER_BYTES = 64 * 1024     # a CSV part's first line (its header) is read apart, at most this much


def tail_parts(parts: list[Path], budget: int, headed: bool = True):
    """Newest part first: (header line, complete lines in file order) of each part's end, all
    parts together within `budget` bytes (a header not counted among the lines when `headed`).
    Ends with ("", None) when the budget ran out first."""
    for part in reversed(parts):
        try:
            with open(part, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                header = f.readline(HEADER_BYTES).decode("utf-8", "replace") if headed else ""
                take = min(size, budget)
                f.seek(size - take)
                data = f.read(take)
        except OSError:   # rotated away or deleted by retention meanwhile
            continue
        budget -= take
        lines = data.decode("utf-8", "replace").split("\n")
        if take < size:
            lines = lines[1:]           # the first one is cut
        elif lines and header and lines[0] == header.rstrip("\n"):
            lines = lines[1:]           # the header itself
        yield header, [line for line in lines if line]
        if budget <= 0:
            if take < size or part != parts[0]:
                yield "", None
            return


def coverage_rows(parts: list[Path], jsonl: bool, camera: str, span_s: float,
                  budget: int = COVERAGE_READ_BYTES) -> tuple[list, bool]:
    """-> ([(time_s, frame, {"zone:class": ratio})] of `camera`, oldest first, the last `span_s`
    seconds of its log time; truncated): parts with different headers each read by their own."""
    chunks, truncated, newest = [], False, None
    for header, lines in tail_parts(parts, budget, headed=not jsonl):
        if lines is None:
            truncated = True
            break
        rows = _json_rows(lines, camera) if jsonl else _csv_rows(header, lines, camera)
        if not rows:
            continue
        chunks.append(rows)
        newest = rows[-1][0] if newest is None else newest
        if rows[0][0] <= newest - span_s:
            break   # older parts lie before the span
    rows = [r for rows in reversed(chunks) for r in rows]
    if rows:
        cut = newest - span_s
        rows = [r for r in rows if r[0] >= cut]
    return rows, truncated


def _csv_rows(header: str, lines: list[str], camera: str) -> list:
    names = next(csv.reader([header]), [])
    if names[:3] != ["camera", "frame", "time_s"]:
        return []
    keys, prefix, rows = names[3:], camera + ",", []
    for line in lines:
        if not line.startswith(prefix) and not line.startswith('"'):
            continue
        values = next(csv.reader([line]), [])
        if len(values) != len(names) or values[0] != camera:
            continue
        try:
            rows.append((float(values[2]), int(values[1]),
                         {k: float(v) for k, v in zip(keys, values[3:]) if v != ""}))
        except ValueError:
            continue
    return rows


def _json_rows(lines: list[str], camera: str) -> list:
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
            if row.get("camera") != camera:
                continue
            rows.append((float(row["time_s"]), int(row["frame"]),
                         {f"{z}:{c}": float(v) for z, cs in row.get("coverage", {}).items() for c, v in cs.items()}))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return rows


def downsample(rows: list, max_points: int = MAX_POINTS) -> tuple[list, dict]:
    """-> (times, {"zone:class": [mean or None]}): at most `max_points` time buckets of equal width."""
    keys = sorted({k for _, _, cov in rows for k in cov})
    if len(rows) <= max_points:
        return [r[0] for r in rows], {k: [r[2].get(k) for r in rows] for k in keys}
    t0, t1 = rows[0][0], rows[-1][0]
    width = (t1 - t0) / max_points or 1.0
    buckets: dict[int, list] = {}
    for row in rows:
        buckets.setdefault(min(int((row[0] - t0) / width), max_points - 1), []).append(row)
    times, series = [], {k: [] for k in keys}
    for _, group in sorted(buckets.items()):
        times.append(sum(r[0] for r in group) / len(group))
        for k in keys:
            values = [r[2][k] for r in group if k in r[2]]
            series[k].append(sum(values) / len(values) if values else None)
    return times, series


def logged_messages(parts: list[Path], filters: dict, budget: int = EVENTS_READ_BYTES,
                    max_events: int = MAX_EVENTS) -> tuple[list[dict], bool]:
    """-> (event messages of the events log matching `filters` ({"camera"|"zone"|"class": value}),
    oldest first, of at most `max_events` events, the newest; truncated)."""
    found: list[list[dict]] = []
    ids: set = set()
    truncated = False
    for _, lines in tail_parts(parts, budget, headed=False):
        if lines is None:
            truncated = True
            break
        chunk = []
        for line in reversed(lines):
            try:
                message = json.loads(line)
                event = message["event"]
                if not event.get("id") or any(event.get(k) != v for k, v in filters.items()):
                    continue
            except (ValueError, KeyError, TypeError):
                continue
            if event["id"] not in ids:
                if len(ids) >= max_events:
                    truncated = True
                    break
                ids.add(event["id"])
            chunk.append(message)
        found.append(chunk)
        if truncated:
            break
    return [m for chunk in found for m in chunk][::-1], truncated
