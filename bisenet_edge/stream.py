"""`stream(sources, model)` -> per-frame results of one or several cameras, through the app's
own run-time pieces: its sources (file, camera, RTSP, with reconnects), cameras, cross-camera
batch scheduler, engine and scene analytics (app/pipeline.py). Instead of outputs, each camera
has one sink that hands its frames to the caller's loop.

The pipeline runs in a background thread; the iterator ends at the end of the files (or after
`max_frames`), and breaking out of the loop (or closing the iterator) stops the pipeline and
joins its threads before control comes back.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from app import settings as run_settings
from engines.load import EngineOptions
from app.camera import Camera, check_name
from app.frames import Sink
from app.latency import LatencyRecorder
from app.pipeline import Pipeline
from app.sources import open_source
from bisenet_edge.model import Model, load_model
from core.errors import BisenetError, InputError
from core.overlay import upsample_labels

# bisenet run options that make no sense here: the model is an argument, outputs are the loop.
NOT_HERE = {"model", *EngineOptions.model_fields, "output", "save_labels", "fps", "bitrate", "hud", "legend"}
_DONE = object()
_POLL_S = 0.1


class StreamError(BisenetError, RuntimeError):
    """The run failed (an unreadable source, an engine that kept failing): what `bisenet run`
    would print before exiting 1."""


@dataclass
class FrameResult:
    camera: str                   # cam0, cam1, ... (or the name given in a dict of sources)
    frame_id: int                 # per camera, in capture order (the latency log's ids)
    image: np.ndarray             # the source frame, uint8 BGR
    labels: np.ndarray            # class ids at the model's input size (what --save-labels writes)
    overlay: np.ndarray           # the colorized overlay at source size (alpha, mode options)
    capture_ts: float             # time.monotonic() when it was read
    source_ts: float | None       # the stream's own timestamp (s), if it has one
    batch_size: int | None = None   # frames inferred together with it (several cameras)
    coverage: dict | None = None  # scene analytics: {zone: {class: ratio}}, None without zones
    events: list = field(default_factory=list)   # scene analytics: event messages this frame raised

    def source_labels(self) -> np.ndarray:
        """The labels upsampled (nearest, as the overlay draws them) to the frame's size."""
        return upsample_labels(self.labels, *self.image.shape[:2])


class _Handover(Sink):
    """A camera's one sink: every written frame goes to the caller's queue. It waits while the
    caller is busy (files lose nothing; a live camera's output queue drops instead)."""

    save_labels = True   # keeps the labels on the host (no fused GPU overlay-only path)

    def __init__(self, results: queue.Queue, stopped: threading.Event):
        self.name = "stream"
        self.results, self.stopped = results, stopped

    def write(self, frame, overlay_bgr, labels) -> None:
        result = FrameResult(frame.camera, frame.id, frame.image, np.asarray(labels).astype(np.int32, copy=False),
                             overlay_bgr, frame.capture_ts, frame.source_ts, frame.batch_size, frame.coverage,
                             list(frame.events))
        while True:
            try:
                return self.results.put(result, timeout=_POLL_S)
            except queue.Full:
                if self.stopped.is_set():   # the caller has gone: drop it
                    return


def _settings(sources, config, options: dict):
    """The stream's settings, built and checked by app/settings.py exactly as `bisenet run`'s."""
    wrong = sorted(set(options) & NOT_HERE)
    if wrong:
        raise InputError(f"stream() takes no {', '.join(wrong)}: load_model() takes the model's options, "
                         "and the results come to your loop instead of outputs")
    names = None
    flags = {}
    for key, value in options.items():
        if key not in run_settings.OPTIONS and key not in run_settings.YAML_KEYS:
            raise InputError(f"stream() got an unknown option {key!r}; it takes the `bisenet run` options "
                             f"{', '.join(sorted(set(run_settings.OPTIONS) - NOT_HERE - {'source', 'config'}))}")
        flags[key] = value
    if sources is not None:
        if isinstance(sources, dict):   # {camera name: source}
            names = [check_name(n) for n in sources]
            sources = list(sources.values())
        elif isinstance(sources, (str, int)) or hasattr(sources, "__fspath__"):
            sources = [sources]
        flags["source"] = [str(s) for s in sources]
    flags["output"] = ["null"]
    settings = run_settings.build(flags, config)
    if names:
        for cam, name in zip(settings.cameras, names):
            cam.name = name
    if not settings.cameras:
        raise InputError("stream(): no sources: pass a file, camera index, folder or stream URL (or a list)")
    return settings


def stream(sources, model, *, config: str | None = None, **options):
    """Iterate the frames of `sources` segmented by `model` -> FrameResult per frame, the
    cameras' frames interleaved as they finish (each camera's in order).

    sources: one source or a list (cameras cam0, cam1, ...) or a dict {name: source}: a video
        file, image, folder, camera index, rtsp:// URL... (anything `--source` takes); None takes
        the `cameras:` of `config`.
    model: a Model from load_model(), or what load_model() takes (loaded and closed here).
    config: a `bisenet run` preset (configs/app/NAME or a YAML file), e.g. with zones:/rules:.
    options: `bisenet run` options by their names with underscores: realtime, loop,
        max_frames, camera_size, source_timeout, batch_timeout_ms, queue_size, alpha, mode,
        latency_log, zones, rules, coverage_log, events_log, mqtt, webhook, ...
    """
    settings = _settings(sources, config, options)   # bad options fail here, at the call
    return _frames(settings, model, config)


def _frames(settings, model, config):
    loaded = not isinstance(model, Model)
    model = load_model(model) if loaded else model
    try:
        yield from _run(settings, model, config)
    finally:
        if loaded:
            model.close()


def _run(settings, model: Model, config):
    from app.analytics.settings import camera_configs

    engine = model.engine
    results: queue.Queue = queue.Queue(maxsize=max(2, settings.queue_size))
    stopped = threading.Event()
    analytics_configs = camera_configs(settings.cameras, model.classes, config or "stream()")
    cameras, analytics = [], None
    try:
        for cam in settings.cameras:
            reader = open_source(cam.source, cam)
            cameras.append(Camera(cam.name, reader, [_Handover(results, stopped)], max_frames=cam.max_frames,
                                  queue_size=settings.queue_size))
        if analytics_configs or settings.analytics.any:
            from app.analytics import Analytics
            analytics = Analytics(settings.analytics, analytics_configs, model.classes,
                                  fps={c.name: c.fps for c in cameras})
    except BaseException:
        for cam in cameras:
            cam.reader.close()
        raise
    pipeline = Pipeline(cameras, engine, recorder=LatencyRecorder(settings.latency_log), alpha=settings.alpha,
                        mode=settings.mode, batch_timeout_ms=settings.batch_timeout_ms, analytics=analytics)

    def run() -> None:
        try:
            pipeline.run()
        finally:
            stopped.set()   # a sink still waiting for room gives up
            results.put(_DONE)

    thread = threading.Thread(target=run, name="bisenet-stream", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            item = results.get()
            if item is _DONE:
                finished = True
                break
            yield item
    finally:
        if not finished:   # the caller broke out: drop what is in flight, stop now
            stopped.set()
            pipeline.request_stop("stream closed", quiet=True)
            pipeline.forced.set()
            pipeline.scheduler.notify()
        thread.join()
        if analytics is not None:
            analytics.close()
    if pipeline.failures:
        raise StreamError("; ".join(pipeline.failures))
