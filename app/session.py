"""One run, built from its settings in one place. `bisenet run`, bisenet_edge.stream() and the
bench scripts all start here:

    RunSettings (app/settings.py)
      -> engine      load_engine(settings): the one call that reads the engine options
      -> server      http:// and rtsp://@ outputs, --metrics-port (app/server)
      -> cameras     per camera: its source, its outputs, a Camera (open_camera: the one
                     place a camera is built from its settings)
      -> analytics   zones, rules, coverage and event outputs (app/analytics)
      -> pipeline    capture, batched inference, outputs (app/pipeline.py)
    Session.frames() the written frames, as FrameResults, while the pipeline runs in its own
                     thread; `bisenet run` drains this same loop (Session.run), stream() hands
                     it to the caller's for loop

A live camera that is down at start (an RTSP server not up yet): with several cameras it is
an outage like any other, reconnected with backoff while the others run; a single camera
that cannot be opened, or a file, is an error. No camera at all opened is one error naming
the first. Cameras join, leave and are rebuilt while the others run (add_camera,
remove_camera, rebuild_camera); a rebuilt camera goes on counting its frame ids.
"""
from __future__ import annotations

import collections
import queue
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from app.camera import Camera
from app.latency import LatencyRecorder
from app.pipeline import Pipeline
from app.settings import CameraSettings, RunSettings, with_inputs
from core.errors import InputError
from core.overlay import upsample_labels

_DONE = object()
_POLL_S = 0.1


def load_engine(settings: RunSettings):
    """The run's engine from its settings: the one place a run reads the engine options."""
    from engines.load import load_engine as load

    return load(settings.model, settings.engine)


def check_settings(settings: RunSettings) -> None:
    """What can be refused before the model loads and anything opens: label maps only to
    folders, no two cameras writing one file, a window where one can open."""
    from app.sinks import check_display, check_distinct_outputs, check_save_labels

    for cam in settings.cameras:
        check_save_labels(cam)
    check_distinct_outputs(settings.cameras, settings.latency_log, settings.analytics)
    if any("display" in cam.output for cam in settings.cameras):
        check_display(probe=True)


@dataclass
class FrameResult:
    camera: str                   # cam0, cam1, ... (or the camera's own name)
    frame_id: int                 # per camera, in capture order (the latency log's ids)
    image: np.ndarray             # the source frame, uint8 BGR
    labels: np.ndarray | None     # class ids at the model's input size (what --save-labels writes);
                                  # None where the run draws on the GPU (keep_labels=False)
    overlay: np.ndarray           # the colorized overlay at source size (alpha, mode options)
    capture_ts: float             # time.monotonic() when it was read
    source_ts: float | None       # the stream's own timestamp (s), if it has one
    batch_size: int | None = None   # frames inferred together with it (several cameras)
    coverage: dict | None = None  # scene analytics: {zone: {class: ratio}}, None without zones
    events: list = field(default_factory=list)   # scene analytics: event messages this frame raised

    def source_labels(self) -> np.ndarray:
        """The labels upsampled (nearest, as the overlay draws them) to the frame's size."""
        return upsample_labels(self.labels, *self.image.shape[:2])


class Session:
    """settings + a loaded engine -> server, cameras, analytics, latency recorder, pipeline,
    all opened (or, on an error, all closed again). Nothing runs until start() / frames() /
    run(). The engine stays the caller's to close.

    config_name: where zones/rules came from, for their error lines. keep_labels: every
    result carries its label map (stream(); no GPU overlay-only path). log: the pipeline's
    warning/error lines (default stderr)."""

    def __init__(self, settings: RunSettings, engine, *, config_name: str = "config", keep_labels: bool = False,
                 log=None):
        from app.analytics.specs import camera_configs
        from app.server import AppServer

        if not settings.cameras:
            raise InputError("no source: pass a camera index, a video/image file, a folder, or a stream URL")
        self.settings, self.engine, self.config_name = settings, engine, config_name
        self.classes = list(engine.info.class_names)
        self.several = len(settings.cameras) > 1
        self.results: queue.Queue = queue.Queue(maxsize=max(2, settings.queue_size))
        self.stopped = threading.Event()     # the loop's consumer has gone, or the run is over
        self.thread = None
        self.consumer = None                 # the thread iterating frames()
        self.backlog = collections.deque()   # results taken out of the queue while that thread waited
        self.code = None                     # the pipeline's exit status once it ended
        self.error = None
        self.analytics = self.recorder = None
        self._closed = False
        analytics_configs = camera_configs(settings.cameras, self.classes, config_name)
        self.server = AppServer(settings.server.server_options())   # listens only for http:// and --metrics-port
        cameras = []
        try:
            self.server.set_model(engine)
            for cam_settings in settings.cameras:
                # Several cameras: a live one that is down at start is an outage, the others run.
                cameras.append(self.open_camera(cam_settings, down_ok=self.several))
            if all(cam.down() for cam in cameras):
                raise InputError(f"no camera could be opened: {cameras[0].reader.description}: "
                                 f"{cameras[0].reader.outage_reason}")
            if settings.server.metrics_port is not None:   # (host, port): app/setting_rules.py's listen_address
                self.server.listen(*settings.server.metrics_port, what="metrics")
            self.recorder = LatencyRecorder(settings.latency_log, max_mb=settings.log_max_mb, keep=settings.log_keep)
            if analytics_configs or settings.analytics.any:
                from app.analytics import Analytics
                self.analytics = Analytics(settings.analytics, analytics_configs, self.classes,
                                           fps={c.name: c.fps for c in cameras},
                                           log_max_mb=settings.log_max_mb, log_keep=settings.log_keep)
                self.server.set_analytics(self.analytics, settings.analytics.clips_dir)
            self.pipeline = Pipeline(cameras, engine, recorder=self.recorder, alpha=settings.alpha, mode=settings.mode,
                                     hud=settings.hud, legend=settings.legend, log=log,
                                     batch_timeout_ms=settings.batch_timeout_ms, analytics=self.analytics,
                                     keep_labels=keep_labels, on_written=self._deliver)
        except BaseException:
            if self.analytics is not None:
                self.analytics.close()
            if self.recorder is not None:
                self.recorder.close()
            for cam in cameras:
                for part in (cam.reader, *cam.sinks):
                    part.close()
            self.server.close()
            raise
        self.cam_settings = {c.name: c for c in settings.cameras}
        for cam in cameras:
            self._start_recording(cam)
            self._watch(cam)

    # ---- cameras -------------------------------------------------------------------------
    @property
    def cameras(self) -> list[Camera]:
        """The cameras running now (those that left are in pipeline.left)."""
        return list(self.pipeline.cameras)

    def open_camera(self, cam_settings: CameraSettings, down_ok: bool, first_id: int = 0) -> Camera:
        """One camera from its settings: its source opened (a live one that is down is an
        outage when `down_ok`), its outputs made (opened at its first frame)."""
        from app.sinks import DisplaySink, open_sink
        from app.sources import open_source

        name = cam_settings.name
        reader = open_source(cam_settings.source, cam_settings, down_ok=down_ok)
        sinks = []
        try:
            if cam_settings.record_input:   # camera roles: the record input, recorded by packet copy
                from app.recording import Recording, open_record_input

                record = cam_settings.record
                sinks.append(Recording(open_record_input(cam_settings.record_input, cam_settings, down_ok=down_ok),
                                       record.dir, name, record.segment_s, record.retain_days, record.retain_gb))
            hub = self.server.cameras.get(name)
            if hub is not None:
                hub.ended = False   # a camera back under its name serves its page again
            for spec in cam_settings.output:
                # http:// outputs of all cameras share the server: /camera/NAME each, a grid at /
                sink = open_sink(spec, cam_settings, live=reader.live, server=self.server, camera=name)
                sinks.append(sink)
                if self.several and isinstance(sink, DisplaySink):
                    sink.title = f"{sink.title} {name}"   # one window per camera
        except BaseException:
            for part in (reader, *sinks):
                part.close()
            raise
        return Camera(name, reader, sinks, max_frames=cam_settings.max_frames, out_fps=cam_settings.fps,
                      queue_size=self.settings.queue_size, first_id=first_id)

    def _start_recording(self, cam: Camera) -> None:
        """Camera roles: its recording starts once its analytics exist, so that its event clips
        are cut from the record stream (app/recording.py) from the first packet on."""
        from app.recording import Recording

        state = self.analytics.cameras.get(cam.name) if self.analytics is not None else None
        for sink in cam.sinks:
            if isinstance(sink, Recording):
                sink.start(clips=getattr(state, "clips", None))

    def _watch(self, cam: Camera) -> None:
        self.server.metrics.watch(cam.name, self.recorder, self.cam_settings[cam.name].source_timeout,
                                  reader=cam.reader, queues={"input": cam.in_q, "output": cam.out_q})
        from app.recording import Recording

        for sink in cam.sinks:
            if isinstance(sink, Recording):
                self.server.metrics.record(cam.name, sink)

    @staticmethod
    def _camera_settings(camera) -> CameraSettings:
        """A CameraSettings, or a mapping of `cameras:` keys (name and source required; the
        keys left out take their defaults), checked."""
        if isinstance(camera, CameraSettings):
            return camera
        entry = {str(k).replace("-", "_"): v for k, v in dict(camera).items()}
        with_inputs(entry, f"camera {entry.get('name')}")   # inputs with roles: source is the detect input
        if not entry.get("name") or not entry.get("source"):
            raise InputError("a camera needs a name and a source, e.g. {'name': 'door', 'source': 'rtsp://...'}")
        return CameraSettings.of(entry)

    def add_camera(self, camera) -> Camera:
        """A camera joins the running session (CameraSettings or a `cameras:` entry as a dict);
        a live one that is down is an outage like any other. Its name must be free."""
        from app.analytics.specs import camera_configs

        cam_settings = self._camera_settings(camera)
        if cam_settings.name in {c.name for c in self.pipeline.cameras}:
            raise InputError(f"camera {cam_settings.name} is already running; rebuild_camera replaces it")
        configs = camera_configs([cam_settings], self.classes, self.config_name)
        if configs and self.analytics is None:
            raise InputError(f"camera {cam_settings.name}: zones need scene analytics, which this run started "
                             "without; restart it with the camera in its settings")
        first_id = self.pipeline.captured_by_camera().get(cam_settings.name, 0)
        cam = self.open_camera(cam_settings, down_ok=True, first_id=first_id)
        try:
            if self.analytics is not None and configs:
                self.analytics.add_camera(cam.name, configs[cam.name], cam.fps)
            self._start_recording(cam)
            self.several = True
            self.pipeline.add_camera(cam)
        except BaseException:
            for part in (cam.reader, *cam.sinks):
                part.close()
            raise
        self.cam_settings[cam.name] = cam_settings
        self._watch(cam)
        return cam

    def remove_camera(self, name: str, timeout_s: float = 10.0) -> Camera:
        """Camera `name` stops: its frames in flight are written and its outputs closed (video
        files finalized); the others go on. Its counts stay in the run's summary."""
        cam = self.pipeline.remove_camera(name, timeout_s, join=self._join)
        self.server.metrics.forget(name)
        return cam

    def _join(self, thread: threading.Thread, timeout_s: float) -> None:
        """Wait for one of a camera's threads. Called from the loop's own thread (remove_camera
        inside `for r in frames()`), the results it would wait for are set aside for the loop."""
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            thread.join(_POLL_S)
            if threading.current_thread() is self.consumer:
                while True:
                    try:
                        self.backlog.append(self.results.get_nowait())
                    except queue.Empty:
                        break

    def rebuild_camera(self, camera, timeout_s: float = 10.0) -> Camera:
        """Camera `camera.name` is replaced by one built from the new settings (a new source,
        new outputs): the old one drains and closes, the new one goes on with its frame ids.
        The others run on throughout; the run does not end even when it was the only camera."""
        cam_settings = self._camera_settings(camera)
        self.pipeline.scheduler.hold(True)
        try:
            self.remove_camera(cam_settings.name, timeout_s)
            return self.add_camera(cam_settings)
        finally:
            self.pipeline.scheduler.hold(False)

    # ---- running -------------------------------------------------------------------------
    def start(self) -> None:
        """The pipeline's threads start (once); frames come through frames()."""
        if self.thread is not None:
            return
        self.thread = threading.Thread(target=self._run, name="bisenet-session", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.code = self.pipeline.run()
        except BaseException as e:   # reported by frames() in the caller's thread
            self.error = e
        finally:
            self.stopped.set()   # an output thread still waiting for room gives up
            self.results.put(_DONE)

    def _deliver(self, frame, image, labels) -> None:
        """After a camera's outputs: the written frame to the loop. It waits while the loop's
        consumer is busy (files lose nothing; a live camera's output queue drops instead)."""
        result = FrameResult(frame.camera, frame.id, frame.image,
                             None if labels is None else np.asarray(labels).astype(np.int32, copy=False),
                             image, frame.capture_ts, frame.source_ts, frame.batch_size, frame.coverage,
                             list(frame.events))
        while not self.stopped.is_set():
            try:
                return self.results.put(result, timeout=_POLL_S)
            except queue.Full:
                pass

    def frames(self):
        """Iterate the written frames (FrameResult), the cameras' interleaved as they finish,
        until every camera has ended. Leaving the loop early (break, an exception, closing the
        generator) stops the run at once and joins its threads before control comes back."""
        self.start()
        self.consumer = threading.current_thread()
        finished = False
        try:
            while True:
                try:
                    item = self.backlog.popleft() if self.backlog else self.results.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if item is _DONE:
                    finished = True
                    break
                yield item
        finally:
            if not finished:   # the caller left: drop what is in flight, stop now
                self.stopped.set()
                self.stop(force=True, reason="stream closed", quiet=True)
            while self.thread.is_alive():
                self.thread.join(_POLL_S)
                while not self.results.empty():   # room for the end marker
                    self.results.get_nowait()
        if self.error is not None:
            raise self.error

    def run(self) -> int:
        """`bisenet run`: drain frames() to the end; SIGINT/SIGTERM stop capturing and finish
        the frames in flight (a second one drops them). -> 0, or 1 after a failure."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum, _frame):
                self.pipeline.request_stop(signal.Signals(signum).name)

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, on_signal)
        try:
            for _ in self.frames():
                pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.code

    def stop(self, force: bool = False, reason: str = "stop requested", quiet: bool = False) -> None:
        """Stop capturing and finish the frames in flight; `force` (or a second call): drop them."""
        self.pipeline.request_stop(reason, quiet=quiet, force=force)

    @property
    def failures(self) -> list[str]:
        return self.pipeline.failures

    def close(self) -> None:
        """After the run: open events end, clips are written, event outputs flushed, the server
        stops. (Sources and outputs close with the pipeline; the engine is the caller's.)"""
        if self._closed:
            return
        self._closed = True
        if self.thread is None:   # never started: its cameras were opened all the same
            for cam in self.pipeline.cameras:
                for part in (cam.reader, *cam.sinks):
                    part.close()
            self.recorder.close()
        try:
            if self.analytics is not None:
                self.analytics.close()
        finally:
            self.server.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.stop(force=True, quiet=True)
            self.thread.join()
        self.close()
