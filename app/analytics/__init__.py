"""Scene analytics, per camera, after the labels and before the sinks (docs/analytics.md):

    labels -> zone histogram [cells x classes] -> coverage per (zone, class)
           -> rules (level, hold time, hysteresis, cooldown) -> events
    events   -> JSONL, MQTT, webhook (app/analytics/events.py: bounded, never blocking)
             -> clip + snapshot (app/analytics/clips.py: ring of encoded packets)
    coverage -> coverage log, Prometheus gauges, /api/coverage, HUD outlines

`Analytics.process(camera, frame, labels, image)` (or `process_counts`, from a GPU engine's
label counts) is the one call the pipeline makes per written frame; it sets `frame.coverage` ({zone: {class: ratio}}, watched classes only) and
`frame.events` (the messages this frame raised) and returns them.
"""
from __future__ import annotations

import csv
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.analytics.coverage import cell_histogram, zone_counts
from app.analytics.events import EventBus, JsonlDelivery, MqttDelivery, WebhookDelivery
from app.analytics.rules import RuleState
from app.analytics.specs import CameraAnalytics
from app.analytics.zones import Zones
from core.validate import prepare_output

LOG_FLUSH_S = 1.0


@dataclass
class FrameAnalytics:
    coverage: dict                                   # zone -> {class: ratio}
    events: list = field(default_factory=list)       # messages raised by this frame


class StreamClock:
    """The rules' clock: the stream's own timestamps when it has them (a file's presentation
    times), else the capture clock; kept increasing when a looped file starts over."""

    def __init__(self):
        self.offset, self.last = 0.0, None

    def __call__(self, frame) -> float:
        t = frame.source_ts if frame.source_ts is not None else frame.capture_ts
        if self.last is not None and t + self.offset < self.last:
            self.offset = self.last - t + 1e-3
        self.last = t + self.offset
        return self.last


class CameraState:
    def __init__(self, name: str, config: CameraAnalytics, class_names: list[str], clips=None):
        self.name, self.config = name, config
        self.class_names = list(class_names)
        self.zones = Zones(config.zones, len(class_names))
        self.watched = config.watched()                       # zone -> [class names]
        self.index = {c: i for i, c in enumerate(class_names)}
        self.rules = [RuleState(r, name) for r in config.rules]
        self.clock = StreamClock()
        self.clips = clips
        self.latest: dict = {}
        self.latest_frame = None
        self.peak_images: dict = {}                           # rule name -> overlay at its event's peak
        self.last_t, self.last_frame = 0.0, 0


class Analytics:
    def __init__(self, options, cameras: dict[str, CameraAnalytics], class_names: list[str],
                 fps: dict | None = None, log=None):
        """options: app.settings.AnalyticsSettings (where coverage and events go)."""
        self.options = options
        self.class_names = list(class_names)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.lock = threading.Lock()
        deliveries = []
        try:
            if options.events_log:
                deliveries.append(JsonlDelivery(options.events_log))
            if options.mqtt:
                deliveries.append(MqttDelivery(options.mqtt, options.mqtt_user, options.mqtt_password, options.mqtt_tls,
                                       cameras=list(cameras), log=self.log))
            if options.webhook:
                deliveries.append(WebhookDelivery(options.webhook))
        except BaseException:
            for d in deliveries:
                d.close()
            raise
        self.bus = EventBus(deliveries, options.event_queue, log=self.log)
        self.cameras = {}
        for name, config in cameras.items():
            self.add_camera(name, config, (fps or {}).get(name))
        self.coverage_log = CoverageLog(options.coverage_log, self.cameras) if options.coverage_log else None

    def add_camera(self, name: str, config: CameraAnalytics, fps: float | None = None) -> None:
        """Zones and rules for camera `name` (at start, or when it joins a running session)."""
        clips = None
        if self.options.clips_dir and config.rules:
            from app.analytics.clips import ClipRecorder
            keep = max(r.pre_roll_s for r in config.rules)
            clips = ClipRecorder(self.options.clips_dir, name, keep, self.options.clips_max_mb, fps=fps or 15.0,
                                 log=self.log)
        self.cameras[name] = CameraState(name, config, self.class_names, clips)

    # -- the pipeline's per-frame call (the camera's output thread) ---------------------------
    def cell_map(self, camera: str, label_hw, source_wh) -> tuple[np.ndarray, int]:
        """The camera's zones rasterized at the label size: (uint8 cell map [h, w], number of
        cells), what a GPU engine counts labels by (Engine.run_fused_counts). A camera without
        zones gets one cell (its counts are not read)."""
        cam = self.cameras.get(camera)
        if cam is None:
            return np.zeros(tuple(label_hw), np.uint8), 1
        raster = cam.zones.raster(tuple(label_hw), tuple(source_wh))
        return raster.cells, raster.num_cells

    def process(self, camera: str, frame, labels, image: np.ndarray | None, hud: bool = False) -> FrameAnalytics | None:
        """The frame's labels [h, w] -> its coverage and events (None for a camera without zones)."""
        cam = self.cameras.get(camera)
        if cam is None:
            return None
        labels = np.asarray(labels)
        h, w = labels.shape[-2:]
        raster = cam.zones.raster((h, w), frame.size_wh)
        return self._measure(cam, frame, raster, cell_histogram(labels.reshape(h, w), raster, len(self.class_names)),
                             image, hud)

    def process_counts(self, camera: str, frame, cell_counts, label_hw, image: np.ndarray | None,
                       hud: bool = False) -> FrameAnalytics | None:
        """The same from the label counts per zone cell a GPU engine made on the device
        (Engine.run_fused_counts by this camera's cell_map at label_hw): the fused path never
        brings the label map to the host."""
        cam = self.cameras.get(camera)
        if cam is None:
            return None
        raster = cam.zones.raster(tuple(label_hw), frame.size_wh)
        return self._measure(cam, frame, raster, cell_counts, image, hud)

    def _measure(self, cam: CameraState, frame, raster, cells, image, hud: bool) -> FrameAnalytics:
        camera = cam.name
        t = cam.clock(frame)
        src_w, src_h = frame.size_wh   # without converting a decoded picture
        counts = zone_counts(cells, raster)
        ratios = counts / np.maximum(raster.area, 1)[:, None]
        coverage = {zone: {c: float(ratios[raster.names.index(zone), cam.index[c]]) for c in classes}
                    for zone, classes in cam.watched.items()}
        result = FrameAnalytics(coverage)
        keep_images = cam.clips is not None and image is not None
        for rule in cam.rules:
            spec = rule.spec
            value = float(ratios[raster.names.index(spec.zone), cam.index[spec.class_name]])
            for kind, event in rule.update(t, value, frame.id):
                result.events.append(self._on_event(cam, kind, event, spec))
                if kind == "end" and cam.clips is not None:
                    self._snapshot(cam, spec.name, event.id)
            tracked = rule.tracked
            if keep_images:   # the overlay at the peak of the event being confirmed or running
                if tracked is None:
                    cam.peak_images.pop(spec.name, None)
                elif tracked.peak_frame == frame.id:
                    cam.peak_images[spec.name] = image
        if hud and image is not None:
            from app.hud import draw_zones
            # side-by-side (2W wide: the source, then the overlay): the zones go on the overlay
            panel = image[:, src_w:] if image.shape[1] == 2 * src_w else image
            draw_zones(panel, cam.zones.outlines((panel.shape[1], panel.shape[0]), (src_w, src_h)), coverage)
        if cam.clips is not None and image is not None:
            cam.clips.add_frame(t, image)
        with self.lock:
            cam.latest, cam.latest_frame = coverage, frame.id
            cam.last_t, cam.last_frame = t, frame.id
        if self.coverage_log is not None:
            self.coverage_log.write(camera, frame.id, t, coverage)
        frame.coverage, frame.events = result.coverage, result.events
        return result

    def _on_event(self, cam: CameraState, kind: str, event, spec) -> dict:
        if cam.clips is not None:
            if kind == "start":
                event.clip = str(cam.clips.start_clip(event.id, event.start_s - spec.pre_roll_s, spec.max_clip_s))
                event.snapshot = str(cam.clips.snapshot_path(event.id))
            elif kind == "end":
                cam.clips.end_clip(event.id, event.end_s + spec.post_roll_s)
        return self.bus.publish(kind, event)

    def _snapshot(self, cam: CameraState, rule_name: str, event_id: str) -> None:
        image = cam.peak_images.pop(rule_name, None)
        if image is not None:
            cam.clips.snapshot(event_id, image)

    # -- readers: server, metrics ---------------------------------------------------------------
    def snapshot(self) -> dict:
        """/api/coverage: the newest coverage of every camera and the recent event messages."""
        with self.lock:
            cams = {name: {"frame": c.latest_frame, "coverage": c.latest} for name, c in self.cameras.items()}
        return {"cameras": cams, "events": [served(m) for m in list(self.bus.recent)[::-1]],
                "dropped": self.bus.dropped()}

    def metric_families(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ratio = GaugeMetricFamily("bisenet_zone_coverage_ratio", "Share of a zone's pixels with a watched class, "
                                  "newest frame", labels=["camera", "zone", "class"])
        with self.lock:
            for name, cam in sorted(self.cameras.items()):
                for zone, classes in cam.latest.items():
                    for cls, value in classes.items():
                        ratio.add_metric([name, zone, cls], value)
        dropped = CounterMetricFamily("bisenet_events_dropped", "Event messages dropped because a sink's queue "
                                      "was full (or undelivered at exit)", labels=["sink"])
        for sink, n in sorted(self.bus.dropped().items()):
            dropped.add_metric([sink], n)
        return [ratio, dropped]

    def close(self) -> None:
        """End of the run: open events end at the last frame, clips are written, deliveries flushed."""
        for cam in self.cameras.values():
            for rule in cam.rules:
                for kind, event in rule.finish(cam.last_t, cam.last_frame):
                    self._on_event(cam, kind, event, rule.spec)
                    if cam.clips is not None:
                        self._snapshot(cam, rule.spec.name, event.id)
            if cam.clips is not None:
                cam.clips.close()
        if self.coverage_log is not None:
            self.coverage_log.close()
        self.bus.close()

    def summary(self) -> str:
        parts = [f"{name} {' '.join(f'{k} {v}' for k, v in c.items())}" for name, c in self.bus.counters().items()]
        skipped = sum(c.clips.skipped for c in self.cameras.values() if c.clips is not None)
        return "events: " + ("; ".join(parts) or "no deliveries") + (f"; clip frames skipped {skipped}" if skipped else "")


def served(message: dict) -> dict:
    """An event message as /api/coverage gives it: its clip and snapshot as /clips/ URLs,
    never the server's file paths."""
    from urllib.parse import quote

    event = dict(message["event"])
    for key in ("clip", "snapshot"):
        if event.get(key):
            event[key] = f"/clips/{quote(event['camera'], safe='')}/{quote(Path(event[key]).name, safe='')}"
    return {**message, "event": event}


class CoverageLog:
    """One row per camera and frame: FILE.csv (a column per zone:class) or FILE.jsonl."""

    def __init__(self, path: str, cameras: dict):
        self.path = Path(path)
        prepare_output(self.path, "--coverage-log")
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.file = open(self.path, "w", encoding="utf-8", newline="")
        self.lock = threading.Lock()
        self.last_flush = time.monotonic()
        if not self.jsonl:
            self.columns = sorted({f"{z}:{c}" for cam in cameras.values() for z, cs in cam.watched.items() for c in cs})
            self.writer = csv.writer(self.file)
            self.writer.writerow(["camera", "frame", "time_s", *self.columns])

    def write(self, camera: str, frame_id: int, t: float, coverage: dict) -> None:
        with self.lock:
            if self.jsonl:
                self.file.write(json.dumps({"camera": camera, "frame": frame_id, "time_s": round(t, 4),
                                            "coverage": {z: {c: round(v, 5) for c, v in cs.items()}
                                                         for z, cs in coverage.items()}}) + "\n")
            else:
                flat = {f"{z}:{c}": f"{v:.5f}" for z, cs in coverage.items() for c, v in cs.items()}
                self.writer.writerow([camera, frame_id, f"{t:.4f}", *(flat.get(k, "") for k in self.columns)])
            now = time.monotonic()
            if now - self.last_flush >= LOG_FLUSH_S:
                self.file.flush()
                self.last_flush = now

    def close(self) -> None:
        with self.lock:
            self.file.close()
