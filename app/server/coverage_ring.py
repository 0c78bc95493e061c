"""The console's coverage over time: a bounded in-memory ring per camera of the zones' coverage
(what /api/coverage serves, sampled a few times a second by the server's event loop) and the
spans of the events seen, for the charts of /console (GET /api/history).

Bounded: the last SPAN_S seconds of samples per camera, at most SAMPLES (10 minutes at
SAMPLE_S), SPANS event spans in all; a camera gone (removed by a reload) is forgotten once its
samples are older than SPAN_S. Bounded by time as well as by count, so that the ring is full,
and the memory flat, SPAN_S after the start however slowly a busy box samples (the soak's
warm-up, bench/soak.py, counts on it). For longer spans, the coverage log (--coverage-log) has
every frame."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

SAMPLE_S = 0.2          # seconds between samples
SAMPLES = 3000          # per camera: 10 minutes
SPAN_S = SAMPLES * SAMPLE_S   # seconds of samples kept per camera
SPANS = 500             # event spans kept (oldest forgotten first)


class CoverageRing:
    def __init__(self, samples: int = SAMPLES, spans: int = SPANS, span_s: float = SPAN_S):
        self.samples, self.max_spans, self.span_s = samples, spans, span_s
        self.lock = threading.Lock()
        self.rings: dict[str, deque] = {}          # camera -> deque of (wall time, frame, {zone: {class: ratio}})
        self.spans: OrderedDict[str, dict] = OrderedDict()   # event id -> {camera, zone, class, rule, start, end}

    def add(self, snapshot: dict, now: float | None = None) -> None:
        """One /api/coverage snapshot (Analytics.snapshot()): a sample per camera with a new
        frame, and the start / end times of the events in it."""
        now = time.time() if now is None else now
        with self.lock:
            for camera, cam in snapshot.get("cameras", {}).items():
                ring = self.rings.setdefault(camera, deque(maxlen=self.samples))
                if cam.get("frame") is None or (ring and ring[-1][1] == cam["frame"]):
                    continue
                ring.append((now, cam["frame"], cam.get("coverage") or {}))
            for camera, ring in list(self.rings.items()):   # older than span_s: forgotten
                while ring and ring[0][0] < now - self.span_s:
                    ring.popleft()
                if not ring:
                    del self.rings[camera]
            for message in reversed(snapshot.get("events", [])):   # oldest first
                event = message.get("event", {})
                if message.get("type") not in ("start", "end") or "id" not in event:
                    continue
                span = self.spans.get(event["id"])
                if span is None:
                    span = self.spans[event["id"]] = {"camera": event.get("camera"), "zone": event.get("zone"),
                                                      "class": event.get("class"), "rule": event.get("rule"),
                                                      "start": message.get("time", now), "end": None}
                    while len(self.spans) > self.max_spans:
                        self.spans.popitem(last=False)
                if message["type"] == "end":
                    span["end"] = message.get("time", now)

    def history(self, camera: str, since_s: float | None = None) -> dict:
        """-> {"t": [wall times], "series": {"zone:class": [ratio or None]}, "spans": [...]}
        of one camera, the last `since_s` seconds (all kept when None)."""
        with self.lock:
            rows = list(self.rings.get(camera, ()))
            spans = [dict(s, id=i) for i, s in self.spans.items() if s["camera"] == camera]
        if since_s is not None and rows:
            cut = rows[-1][0] - since_s
            rows = [r for r in rows if r[0] >= cut]
        keys = sorted({f"{z}:{c}" for _, _, cov in rows for z, cs in cov.items() for c in cs})
        series = {k: [] for k in keys}
        for _, _, cov in rows:
            for k in keys:
                z, c = k.split(":", 1)
                series[k].append(cov.get(z, {}).get(c))
        return {"t": [round(r[0], 3) for r in rows], "frames": [r[1] for r in rows], "series": series,
                "spans": spans}
