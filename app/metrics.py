"""What the app tells Prometheus about itself, and whether its sources are alive (/healthz).

One `Metrics` per app run, with its own prometheus-client `CollectorRegistry` (nothing global,
so two runs in one process never share counters). It is fed by the per-frame latency records:
`watch(camera, recorder, source_timeout_s, queues, reader)` adds a listener to that camera's
`LatencyRecorder`, which already sees every captured frame once (written, or dropped with a
reason), so the histograms and counters agree with the latency log row for row.

    bisenet_stage_duration_seconds{stage, camera}   histogram over written frames; stages
        capture (the source's read: decode, and for live sources the wait for the frame),
        queue, preprocess, inference, overlay, sink, e2e (capture -> written)
    bisenet_frames_total{camera, outcome}            outcome: written or the drop reason
    bisenet_source_reconnects_total{camera}          reconnect attempts of a live source
    bisenet_source_outages_total{camera}             outages of a live source
    bisenet_queue_depth{camera, queue}               frames waiting (input, output), read at scrape time
    bisenet_overlays_drawn_total{camera}             overlay images drawn (only for outputs that show pixels)
    bisenet_overlays_skipped_total{camera}           frames no output wanted pixels of: nothing drawn
    bisenet_http_viewers                             MJPEG viewers connected now
    bisenet_model_info{model, backend, precision, input_size}
    bisenet_zone_coverage_ratio{camera, zone, class}  scene analytics, watched classes only (app/analytics)
    bisenet_events_dropped_total{sink}               event messages dropped (full queue, or left at exit)
    bisenet_record_packets_total{camera}              packets of the record input written by packet copy
    bisenet_record_decoded_frames_total{camera}       frames decoded from the record input (0: never decoded)
    bisenet_record_segments_total{camera}             recording segments started
    bisenet_overlay_picture_decoded_frames_total{camera}  record input frames decoded for overlays on the
                                                      full-size picture (overlay_picture record)
"""
from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app.latency import STAGES as LOG_STAGES

STAGES = ("capture", *LOG_STAGES)   # capture: time in the source's read, in the metrics only
# Seconds: 1 ms .. 10 s, dense where an edge model's stages live (5 .. 250 ms).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A decode error is recorded when the read failed: no frame was delivered, so it does not
# count as a sign of life for /healthz.
NOT_DELIVERED = {"decode_error"}


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.stage = Histogram("bisenet_stage_duration_seconds", "Per-frame stage durations of written frames",
                               ["stage", "camera"], buckets=BUCKETS, registry=self.registry)
        self.frames = Counter("bisenet_frames", "Captured frames by outcome: written or the drop reason",
                              ["camera", "outcome"], registry=self.registry)
        self.model = Info("bisenet_model", "The model this run serves", registry=self.registry)
        self.lock = threading.Lock()
        self.sources = {}         # camera -> (its queues {name: queue.Queue}, its reader)
        self.recorders = {}       # camera -> its LatencyRecorder (overlay counts, read at scrape time)
        self.last_frame = {}      # camera -> monotonic time its source last delivered a frame
        self.timeouts = {}        # camera -> seconds without a frame before it counts as stale
        self.listening = set()    # cameras whose recorder rows are counted (once each, across rebuilds)
        self.viewers = lambda: 0  # set by the HTTP server
        self.analytics = None     # app/analytics: zone coverage gauges, dropped events
        self.recordings = {}      # camera -> its Recording (app/recording.py): packets, decoded frames
        self.followers = {}       # camera -> its RecordFollower (app/record_follower.py): decoded frames
        self.registry.register(_ScrapeTimeCollector(self))

    def set_model(self, engine) -> None:
        """`engine`: an engines.base.Engine (its info and backend name)."""
        info = engine.info
        h, w = info.input_size
        self.model.info({"model": str(info.model), "backend": str(engine.backend),
                         "precision": str(info.precision), "input_size": f"{h}x{w}"})

    def watch(self, camera: str, recorder, source_timeout_s: float, queues: dict | None = None,
              reader=None) -> None:
        """Feed this camera's metrics from its `recorder`; at scrape time read the depth of
        `queues` ({name: queue.Queue}) and the reconnect counters of `reader` (its counters())."""
        start = recorder.start
        with self.lock:
            self.sources[camera] = (dict(queues or {}), reader)
            self.recorders[camera] = recorder
            self.timeouts[camera] = float(source_timeout_s)
            self.last_frame[camera] = time.monotonic()   # the grace period before a first frame
            if camera in self.listening:
                return   # a camera rebuilt under its name: its rows are counted already
            self.listening.add(camera)

        def on_row(row: dict, timings: dict) -> None:
            if row.get("camera", camera) != camera:
                return   # another camera's row (one recorder serves every camera)
            outcome = row["reason"] or ("unknown" if row["dropped"] else "written")   # or skipped (detect_fps)
            self.frames.labels(camera=camera, outcome=outcome).inc()
            if outcome not in NOT_DELIVERED:
                captured = start + row["capture_s"]
                with self.lock:
                    self.last_frame[camera] = max(self.last_frame.get(camera, captured), captured)
            if outcome != "written":
                return
            for stage in STAGES:
                ms = row.get(f"{stage}_ms", timings.get(stage))
                if ms is not None:
                    self.stage.labels(stage=stage, camera=camera).observe(ms / 1000.0)

        recorder.listeners.append(on_row)

    def record(self, camera: str, recording) -> None:
        """Count this camera's continuous recording (its packets, segments, decoded frames)."""
        with self.lock:
            self.recordings[camera] = recording

    def follow(self, camera: str, follower) -> None:
        """Count the record frames this camera decodes for overlays on the full-size picture."""
        with self.lock:
            self.followers[camera] = follower

    def forget(self, camera: str) -> None:
        """A camera that left the run: no queues, reconnect counters or staleness any more."""
        with self.lock:
            for table in (self.sources, self.timeouts, self.last_frame, self.recordings, self.followers):
                table.pop(camera, None)

    def health(self, now: float | None = None) -> list[tuple[str, float, float]]:
        """-> [(camera, seconds since its last frame, its timeout)] for every stale source."""
        now = time.monotonic() if now is None else now
        with self.lock:
            return [(cam, now - t, self.timeouts[cam]) for cam, t in sorted(self.last_frame.items())
                    if now - t > self.timeouts[cam]]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _ScrapeTimeCollector:
    """Values read when Prometheus scrapes: queue depths, reconnect counters, viewers."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self):
        return []   # values change at every scrape; nothing to check at registration

    def collect(self):
        depth = GaugeMetricFamily("bisenet_queue_depth", "Frames waiting in the pipeline's queues",
                                  labels=["camera", "queue"])
        reconnects = CounterMetricFamily("bisenet_source_reconnects", "Reconnect attempts of a live source",
                                         labels=["camera"])
        outages = CounterMetricFamily("bisenet_source_outages", "Outages of a live source", labels=["camera"])
        drawn = CounterMetricFamily("bisenet_overlays_drawn", "Overlay images drawn (only for outputs that "
                                    "show pixels)", labels=["camera"])
        skipped = CounterMetricFamily("bisenet_overlays_skipped", "Frames no output wanted pixels of: nothing "
                                      "drawn", labels=["camera"])
        with self.metrics.lock:
            sources = dict(self.metrics.sources)
            recorders = dict(self.metrics.recorders)
        for camera, recorder in sorted(recorders.items()):
            n_drawn, n_skipped = recorder.overlays(camera)
            drawn.add_metric([camera], n_drawn)
            skipped.add_metric([camera], n_skipped)
        yield drawn
        yield skipped
        for camera, (queues, reader) in sorted(sources.items()):
            for name, q in queues.items():
                depth.add_metric([camera, name], q.qsize())
            counters = reader.counters() if callable(getattr(reader, "counters", None)) else {}
            reconnects.add_metric([camera], counters.get("reconnect_attempts", 0))
            outages.add_metric([camera], counters.get("outages", 0))
        yield depth
        yield reconnects
        yield outages
        with self.metrics.lock:
            recordings = dict(self.metrics.recordings)
        if recordings:
            packets = CounterMetricFamily("bisenet_record_packets", "Record input packets written by packet copy",
                                          labels=["camera"])
            decoded = CounterMetricFamily("bisenet_record_decoded_frames", "Frames decoded from the record input",
                                          labels=["camera"])
            segments = CounterMetricFamily("bisenet_record_segments", "Recording segments started", labels=["camera"])
            for camera, rec in sorted(recordings.items()):
                packets.add_metric([camera], rec.packets)
                decoded.add_metric([camera], rec.decoded)
                segments.add_metric([camera], rec.segments)
            yield packets
            yield decoded
            yield segments
        with self.metrics.lock:
            followers = dict(self.metrics.followers)
        if followers:
            followed = CounterMetricFamily("bisenet_overlay_picture_decoded_frames", "Record input frames decoded "
                                           "for overlays on the full-size picture", labels=["camera"])
            for camera, follower in sorted(followers.items()):
                followed.add_metric([camera], follower.decoded)
            yield followed
        yield GaugeMetricFamily("bisenet_http_viewers", "MJPEG viewers connected now", value=self.metrics.viewers())
        if self.metrics.analytics is not None:   # bisenet_zone_coverage_ratio, bisenet_events_dropped_total
            yield from self.metrics.analytics.metric_families()
