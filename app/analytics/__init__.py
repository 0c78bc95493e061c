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

import json
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.analytics.coverage import cell_histogram, pair_ratios
from app.analytics.events import EventBus, JsonlDelivery, MqttDelivery, WebhookDelivery
from app.analytics.rules import RuleState
from app.analytics.specs import CameraAnalytics
from app.analytics.zones import Zones
from app.retention import csv_line
from core.errors import InputError
from core.validate import prepare_output


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
    """One camera's zones and rules and what they hold between frames. A reload makes a new
    one `after` the running one: it goes on with its clock, its clips and the state of every
    rule whose spec is unchanged (an open event stays open); the rules it drops end at the
    first frame measured with it (Analytics._take_over)."""

    def __init__(self, name: str, config: CameraAnalytics, class_names: list[str], clips=None,
                 after: "CameraState | None" = None):
        self.name, self.config = name, config
        self.class_names = list(class_names)
        self.zones = Zones(config.zones, len(class_names))
        self.watched = config.watched()                       # zone -> [class names]
        self.index = {c: i for i, c in enumerate(class_names)}
        # The (zone, class) pairs reported (rules' pairs among them), as indices into the
        # raster's [cells x zones] membership and the [cells x classes] counts.
        self.pairs = tuple((z, c) for z, cs in self.watched.items() for c in cs)
        self.pair_zone = np.array([self.zones.names.index(z) for z, _ in self.pairs], np.intp)
        self.pair_class = np.array([self.index[c] for _, c in self.pairs], np.intp)
        at, self.spans = 0, []                                # (zone, its classes, their pairs' slice)
        for zone, classes in self.watched.items():
            self.spans.append((zone, classes, at, at + len(classes)))
            at += len(classes)
        kept = {r.spec.name: r for r in after.rules} if after is not None else {}
        self.rules = [kept[r.name] if r.name in kept and kept[r.name].spec == r else RuleState(r, name)
                      for r in config.rules]
        self.rule_pair = [self.pairs.index((r.zone, r.class_name)) for r in config.rules]   # its ratio's index
        self.clock = after.clock if after is not None else StreamClock()
        self.clips = clips
        self.latest: dict = after.latest if after is not None else {}
        self.latest_frame = after.latest_frame if after is not None else None
        self.peak_images: dict = {}                           # rule name -> overlay at its event's peak
        if after is not None:
            self.peak_images = {r.spec.name: after.peak_images[r.spec.name] for r in self.rules
                                if r.spec.name in after.peak_images}
        self.last_t, self.last_frame = (after.last_t, after.last_frame) if after is not None else (0.0, 0)
        self.raster_key = after.raster_key if after is not None else None   # (label hw, source wh) last measured
        self.before = after                                   # the state it replaces, until its first frame


class Analytics:
    def __init__(self, options, cameras: dict[str, CameraAnalytics], class_names: list[str],
                 fps: dict | None = None, log=None, log_max_mb: float | None = None, log_keep: int | None = None):
        """options: app.settings.AnalyticsSettings (where coverage and events go); log_max_mb,
        log_keep: the coverage and events logs rotate (app/retention.py)."""
        self.options = options
        self.class_names = list(class_names)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.lock = threading.Lock()
        deliveries = []
        try:
            if options.events_log:
                deliveries.append(JsonlDelivery(options.events_log, log_max_mb, log_keep))
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
        self.coverage_log = CoverageLog(options.coverage_log, self.cameras, log_max_mb, log_keep) \
            if options.coverage_log else None

    def add_camera(self, name: str, config: CameraAnalytics, fps: float | None = None) -> None:
        """Zones and rules for camera `name` (at start, or when it joins a running session)."""
        clips = None
        if self.options.clips_dir and config.rules:
            from app.analytics.clips import ClipRecorder
            keep = max(r.pre_roll_s for r in config.rules)
            clips = ClipRecorder(self.options.clips_dir, name, keep, self.options.clips_max_mb, fps=fps or 15.0,
                                 log=self.log)
        self.cameras[name] = CameraState(name, config, self.class_names, clips)

    def check_camera(self, name: str, config: CameraAnalytics) -> Zones:
        """New zones for camera `name`, rasterized at the size it runs at (once it has run):
        InputError for a zone that would cover no pixel there."""
        zones = Zones(config.zones, len(self.class_names))
        with self.lock:
            old = self.cameras.get(name)
        if old is not None and old.raster_key is not None:
            try:
                zones.raster(*old.raster_key)
            except InputError as e:
                raise InputError(f"camera {name}: {e}") from None
        return zones

    def set_camera(self, name: str, config: CameraAnalytics, fps: float | None = None) -> None:
        """A reload: camera `name`'s zones and rules become `config` from its next frame (the
        camera's own output thread switches; rules whose spec is unchanged keep their state).
        A zone that would cover no pixel at the size the camera runs at is refused here
        (InputError), before anything changes."""
        zones = self.check_camera(name, config)
        with self.lock:
            old = self.cameras.get(name)
        if old is None:
            if config.enabled:
                self.add_camera(name, config, fps)
            return
        clips = old.clips if config.rules else None
        if clips is not None:
            from app.encoding import KEYFRAME_EVERY_S
            clips.keep_s = max(r.pre_roll_s for r in config.rules) + KEYFRAME_EVERY_S
        elif config.rules and self.options.clips_dir:
            from app.analytics.clips import ClipRecorder
            clips = ClipRecorder(self.options.clips_dir, name, max(r.pre_roll_s for r in config.rules),
                                 self.options.clips_max_mb, fps=fps or 15.0, log=self.log)
        state = CameraState(name, config, self.class_names, clips, after=old)
        state.zones = zones
        with self.lock:
            self.cameras[name] = state

    def remove_camera(self, name: str) -> None:
        """Camera `name` has left the run (its output thread is done): its open events end at
        its last frame, its clips are written."""
        with self.lock:
            cam = self.cameras.pop(name, None)
        if cam is not None:
            if cam.before is not None:
                self._take_over(cam)
            self._finish(cam, cam, cam.rules)
            if cam.clips is not None:
                cam.clips.close()

    def _take_over(self, cam: CameraState) -> list:
        """The first frame measured with a reloaded camera state: the rules and clips of the
        states it replaced that it does not keep end here (at the camera's last frame).
        -> the messages of the events that ended."""
        old, closing, messages = cam.before, [], []
        cam.before = None
        while old is not None:
            messages += self._finish(cam, old, [r for r in old.rules if r not in cam.rules])
            if old.clips is not None and old.clips is not cam.clips and old.clips not in closing:
                closing.append(old.clips)
            old = old.before
        for clips in closing:
            clips.close()
        return messages

    def _finish(self, cam: CameraState, state: CameraState, rules) -> list:
        """Open events of `rules` (of `state`, with its clips) end at the camera's last frame."""
        messages = []
        for rule in rules:
            for kind, event in rule.finish(cam.last_t, cam.last_frame):
                if state.clips is not None:
                    state.clips.end_clip(event.id, event.end_s + rule.spec.post_roll_s)
                    image = state.peak_images.pop(rule.spec.name, None)
                    if image is not None:
                        state.clips.snapshot(event.id, image)
                messages.append(self.bus.publish(kind, event))
        return messages

    # -- the pipeline's per-frame call (the camera's output thread) ---------------------------
    def cell_map(self, camera: str, label_hw, source_wh, frame=None) -> tuple[np.ndarray, int]:
        """The camera's zones rasterized at the label size: (uint8 cell map [h, w], number of
        cells), what a GPU engine counts labels by (Engine.run_fused_counts). A camera without
        zones gets one cell (its counts are not read). `frame`: the frame counted by it, which
        process_counts then measures with the same zones."""
        cam = self.cameras.get(camera)
        if cam is None:
            return np.zeros(tuple(label_hw), np.uint8), 1
        raster = cam.zones.raster(tuple(label_hw), tuple(source_wh))
        if frame is not None:   # the counts are measured with these zones, whatever a reload does meanwhile
            frame.analytics_state = cam
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
        cam = getattr(frame, "analytics_state", None) or self.cameras.get(camera)
        if cam is None:
            return None
        raster = cam.zones.raster(tuple(label_hw), frame.size_wh)
        return self._measure(cam, frame, raster, cell_counts, image, hud)

    def _measure(self, cam: CameraState, frame, raster, cells, image, hud: bool) -> FrameAnalytics | None:
        camera = cam.name
        ended = self._take_over(cam) if cam.before is not None else []
        cam.raster_key = (raster.cells.shape, frame.image.shape[1::-1])
        if not cam.config.enabled:   # a reload took every zone and rule away
            frame.events = ended
            return None
        t = cam.clock(frame)
        src_w, src_h = frame.size_wh   # without converting a decoded picture
        ratios = pair_ratios(cells, raster, cam.pair_zone, cam.pair_class)   # only the pairs reported
        coverage = {zone: dict(zip(classes, ratios[a:b])) for zone, classes, a, b in cam.spans}
        result = FrameAnalytics(coverage, ended)
        keep_images = cam.clips is not None and image is not None
        for rule, i in zip(cam.rules, cam.rule_pair):
            spec = rule.spec
            for kind, event in rule.update(t, ratios[i], frame.id):
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
            # side-by-side (twice the source's aspect: the picture, then the overlay, at any size:
            # overlay_picture record draws at the record input's): the zones go on the overlay
            side = image.shape[1] * src_h > 1.5 * src_w * image.shape[0]
            panel = image[:, image.shape[1] // 2:] if side else image
            draw_zones(panel, cam.zones.outlines((panel.shape[1], panel.shape[0]), (src_w, src_h)), coverage)
        if cam.clips is not None and image is not None:
            cam.clips.add_frame(t, image)
        with self.lock:
            cam.latest, cam.latest_frame = coverage, frame.id
            cam.last_t, cam.last_frame = t, frame.id
        if self.coverage_log is not None:
            self.coverage_log.write(camera, frame.id, t, cam.pairs, ratios)
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
            if cam.before is not None:   # reloaded, no frame since
                self._take_over(cam)
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
    """One row per camera and frame: FILE.csv (a column per zone:class) or FILE.jsonl; rotated
    by size (--log-max-mb, --log-keep) and paused on a full disk (app/retention.py).

    A zone or class that appears during the run (a reload, a camera joining) gets its column
    from its first row: the CSV written so far is closed as a rotated part (FILE.<time>.csv,
    its own header, complete), and FILE starts again with a header of every column (a FILE
    with no row yet just gets the new header). JSON lines carry their zones in each row."""

    def __init__(self, path: str, cameras: dict, max_mb: float | None = None, keep: int | None = None):
        from app.retention import RotatingLog

        self.path = Path(path)
        prepare_output(self.path, "--coverage-log")
        self.jsonl = self.path.suffix.lower() == ".jsonl"
        self.lock = threading.Lock()
        header = ""
        self.columns = sorted({f"{z}:{c}" for cam in cameras.values() for z, cs in cam.watched.items() for c in cs})
        self.known = set(self.columns)
        self.rows: dict = {}   # camera -> (pairs, columns, row template): _template
        if not self.jsonl:
            header = csv_line(["camera", "frame", "time_s", *self.columns])
        self.file = RotatingLog(self.path, "--coverage-log", header=header,
                                max_bytes=None if max_mb is None else max_mb * 1024 * 1024, keep=keep)

    @property
    def parts(self) -> list[Path]:
        """The closed parts so far (by size or by new columns), oldest first."""
        return self.file.parts()[:-1]

    def write(self, camera: str, frame_id: int, t: float, pairs: tuple, ratios: list) -> None:
        """One row: camera's coverage, ratios[i] for (zone, class) pairs[i] (the same tuple object
        frame after frame: a camera's row template is made once per pairs and columns)."""
        if self.jsonl:
            coverage: dict = {}
            for (zone, cls), v in zip(pairs, ratios):
                coverage.setdefault(zone, {})[cls] = round(v, 5)
            line = json.dumps({"camera": camera, "frame": frame_id, "time_s": round(t, 4), "coverage": coverage}) + "\n"
            self.file.write(line)   # whole rows, at once
            return
        with self.lock:   # the cameras' output threads: one header change at a time
            row = self.rows.get(camera)
            if row is None or row[0] is not pairs or row[1] is not self.columns:
                row = self.rows[camera] = (pairs, *self._template(camera, pairs))
            self.file.write(row[2].format(frame_id, t, ratios))

    def _template(self, camera: str, pairs: tuple) -> tuple[list, str]:
        """(columns, the str.format template of the camera's rows); a new zone:class starts a
        new header (under the lock)."""
        names = {f"{z}:{c}": i for i, (z, c) in enumerate(pairs)}
        if not names.keys() <= self.known:
            self.columns = sorted(self.known | names.keys())
            self.known = set(self.columns)
            self.file.new_header(csv_line(["camera", "frame", "time_s", *self.columns]))
        # A row needs no csv quoting: camera names are core/names.py's NAME_RE, the rest numbers.
        fields = ["" if (i := names.get(k)) is None else f"{{2[{i}]:.5f}}" for k in self.columns]
        return self.columns, camera.replace("{", "{{").replace("}", "}}") + ",{0},{1:.4f}," + ",".join(fields) + "\r\n"

    def close(self) -> None:
        self.file.close()
