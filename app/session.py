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
remove_camera, rebuild_camera); a rebuilt camera goes on counting its frame ids. A reload
(reload, reload_config: SIGHUP, POST /api/reload) is those three plus new zones and rules,
decided by comparing the new settings with the running ones (docs/service.md, "Reload").
"""
from __future__ import annotations

import collections
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from app.camera import Camera
from app.latency import LatencyRecorder
from app.pipeline import Pipeline
from app.sd_notify import Watchdog, notify
from app.settings import CameraSettings, RunSettings, with_inputs
from core.errors import BisenetError, InputError
from core.overlay import upsample_labels

_DONE = object()
_POLL_S = 0.1


def load_engine(settings: RunSettings):
    """The run's engine from its settings: the one place a run reads the engine options."""
    from engines.load import load_engine as load
    from engines.openvino_engine import run_streams

    options = settings.engine
    if options.ov_streams is None:   # a run keeps frames in flight (engines/openvino_engine.py)
        options = options.model_copy(update={"ov_streams": run_streams(options.threads)})
    return load(settings.model, options)


def check_settings(settings: RunSettings) -> None:
    """What can be refused before the model loads and anything opens: label maps only to
    folders, no two cameras writing one file, a window where one can open."""
    from app.sinks import check_display, check_distinct_outputs, check_save_labels

    for cam in settings.cameras:
        check_save_labels(cam)
        check_overlay_picture(cam)
    check_distinct_outputs(settings.cameras, settings.latency_log, settings.analytics)
    if any("display" in cam.output for cam in settings.cameras):
        check_display(probe=True)


def check_overlay_picture(cam: CameraSettings) -> None:
    """overlay_picture record draws on the record input's picture: the camera must have one."""
    if cam.overlay_picture == "record" and not cam.record_input:
        raise InputError(f"camera {cam.name}: overlay_picture record shows the overlay on the record input's "
                         "picture, and this camera has no record input; give it inputs: with one input whose roles "
                         "include record (docs/cameras.md), or leave overlay_picture detect")


# What a reload compares: every option outside the cameras needs a restart to change.
LIVE_FIELDS = {"cameras", "output_note"}


def restart_options(running: RunSettings, new: RunSettings) -> list[str]:
    """The options (as flags) whose new value a reload cannot apply: all but the cameras'."""
    from core.options import flag_name

    out = []
    for name in RunSettings.model_fields:
        if name in LIVE_FIELDS:
            continue
        old_value, new_value = getattr(running, name), getattr(new, name)
        if hasattr(type(old_value), "model_fields"):   # a section: engine, server, analytics
            out += [flag_name(k) for k in type(old_value).model_fields
                    if getattr(old_value, k) != getattr(new_value, k)]
        elif old_value != new_value:
            out.append(flag_name(name))
    return out


def without_analytics(cam: CameraSettings) -> dict:
    """A camera's settings but its zones and rules (those change without a rebuild)."""
    return cam.model_dump(exclude={"zones", "rules"})


def empty_analytics():
    from app.analytics.specs import CameraAnalytics

    return CameraAnalytics()


@dataclass
class FrameResult:
    """One written frame. `image` and `overlay` (the colorized frame at source size, alpha and
    mode options) are made on first access when no output of the run made them: a caller that
    never looks at them pays nothing for them."""

    camera: str                   # cam0, cam1, ... (or the camera's own name)
    frame_id: int                 # per camera, in capture order (the latency log's ids)
    source: object = field(repr=False)   # the source frame: uint8 BGR, or the Frame that converts it
    labels: np.ndarray | None     # class ids at the model's input size (what --save-labels writes);
                                  # None where the run draws on the GPU (keep_labels=False)
    drawn: np.ndarray | Callable[[], np.ndarray] = field(repr=False)   # the overlay, or how to draw it
    capture_ts: float             # time.monotonic() when it was read
    source_ts: float | None       # the stream's own timestamp (s), if it has one
    batch_size: int | None = None   # frames inferred together with it (several cameras)
    coverage: dict | None = None  # scene analytics: {zone: {class: ratio}}, None without zones
    events: list = field(default_factory=list)   # scene analytics: event messages this frame raised

    @property
    def image(self) -> np.ndarray:
        """The source frame, uint8 BGR (converted from the decoder's picture on first access)."""
        return self.source if isinstance(self.source, np.ndarray) else self.source.image

    @property
    def overlay(self) -> np.ndarray:
        """The colorized overlay at source size, drawn now if nobody has yet."""
        if callable(self.drawn):
            self.drawn = self.drawn()
        return self.drawn

    @overlay.setter
    def overlay(self, image: np.ndarray) -> None:
        self.drawn = image

    def source_labels(self) -> np.ndarray:
        """The labels upsampled (nearest, as the overlay draws them) to the frame's size."""
        return upsample_labels(self.labels, *self.image.shape[:2])


class Session:
    """settings + a loaded engine -> server, cameras, analytics, latency recorder, pipeline,
    all opened (or, on an error, all closed again). Nothing runs until start() / frames() /
    run(). The engine stays the caller's to close.

    config_name: where zones/rules came from, for their error lines. keep_labels: every
    result carries its label map (stream(); no GPU overlay-only path). log: the pipeline's
    warning/error lines (default stderr). reread: () -> RunSettings, the settings read again
    as at start (the config file and the command line): what SIGHUP and the server's
    `reload` (POST /api/reload) apply."""

    def __init__(self, settings: RunSettings, engine, *, config_name: str = "config", keep_labels: bool = False,
                 log=None, reread=None):
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
        self.log = self.pipeline.log
        self.reread = reread
        self.reload_lock = threading.Lock()
        self.server.reload = self.reload_config   # POST /api/reload and the console: () -> summary, or InputError

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
        check_overlay_picture(cam_settings)
        reader = open_source(cam_settings.source, cam_settings, down_ok=down_ok, pictures=True)
        sinks, follower = [], None
        try:
            if cam_settings.overlay_picture == "record":   # the record input decoded too, for the outputs
                from app.record_follower import RecordFollower

                follower = RecordFollower(cam_settings.record_input, cam_settings, down_ok=down_ok)
                sinks.append(follower)
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
                      queue_size=self.settings.queue_size, first_id=first_id, detect_fps=cam_settings.detect_fps,
                      decoder_scale=cam_settings.decoder_scale, follower=follower)

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
        if cam.follower is not None:
            self.server.metrics.follow(cam.name, cam.follower)

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
        return self._admit(cam_settings, self.open_camera(cam_settings, down_ok=True, first_id=first_id), configs)

    def _admit(self, cam_settings: CameraSettings, cam: Camera, configs: dict) -> Camera:
        """An opened camera joins the pipeline (closed again if it cannot)."""
        try:
            if self.analytics is not None and configs.get(cam.name):
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
        if self.analytics is not None:   # its open events end, its clips are written
            self.analytics.remove_camera(name)
        self.cam_settings.pop(name, None)
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

    # ---- reload ----------------------------------------------------------------------------
    def reload_config(self) -> str:
        """SIGHUP, POST /api/reload, the console: the settings read again (`reread`) and
        applied (reload). -> the one-line summary; InputError with the one-line refusal."""
        def read():
            if self.reread is None:
                raise InputError("this run has no settings to read again (it was not started by `bisenet run`)")
            return self.reread()

        return self._reloading(read)

    def reload(self, new_settings: RunSettings) -> str:
        """The running session becomes `new_settings` where that can happen live (docs/service.md,
        "Reload"): a camera's changed zones/rules apply from its next frame, an added camera
        starts, a removed one stops, one whose source or outputs changed is rebuilt; the
        others run on, losing no frame. Options that need a restart (the model, the engine,
        the server, the overlay, the logs, event outputs), a config that does not validate, a
        zone that would cover no pixel: refused with one line (InputError), nothing changed.
        -> a one-line summary of what changed. One line is logged either way."""
        return self._reloading(lambda: new_settings)

    def _reloading(self, read) -> str:
        with self.reload_lock:
            notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)
            try:
                summary = self._apply(read())
            except BisenetError as e:   # a bad config, a source that cannot open: one line
                self.log(f"reload refused: {e}")
                if isinstance(e, InputError):
                    raise
                raise InputError(str(e)) from None
            finally:
                notify(READY=1)
            self.log(f"reload: {summary}")
            return summary

    def _apply(self, new: RunSettings) -> str:
        from app.analytics.specs import camera_configs

        if self.pipeline.stopping.is_set() or self.stopped.is_set():
            raise InputError("the run is stopping; nothing changed")
        fixed = restart_options(self.settings, new)
        if fixed:
            raise InputError(f"cannot change without a restart: {', '.join(fixed)}; nothing changed "
                             "(restart the run to apply them)")
        if not new.cameras:
            raise InputError("the new settings have no camera; nothing changed")
        check_settings(new)
        configs = camera_configs(new.cameras, self.classes, self.config_name)
        if configs and self.analytics is None:
            raise InputError("zones/rules need scene analytics, which this run started without; nothing changed "
                             "(restart the run to add them)")
        running = {cam.name for cam in self.pipeline.cameras}
        wanted = {cam.name: cam for cam in new.cameras}
        removed = [name for name in running if name not in wanted]
        added, rebuilt, rezoned = [], [], []
        for name, cam in wanted.items():
            old = self.cam_settings.get(name)
            if name not in running:
                if old != cam:   # a camera that ended (its file did) and is listed as it was stays ended
                    added.append(cam)
            elif without_analytics(old) != without_analytics(cam):
                rebuilt.append(cam)
            elif (old.zones, old.rules) != (cam.zones, cam.rules):
                rezoned.append(name)
        if self.analytics is not None:   # a zone that would cover no pixel: refused before anything changes
            for name in rezoned:
                self.analytics.check_camera(name, configs.get(name) or empty_analytics())
        if len(running) - len(removed) + len(added) > 1:
            self.several = True
        joining = []
        try:   # the new cameras' sources open before anything changes (a missing file is refused)
            for cam in added:
                first_id = self.pipeline.captured_by_camera().get(cam.name, 0)
                joining.append((cam, self.open_camera(cam, down_ok=True, first_id=first_id)))
        except BaseException:
            for _, opened in joining:
                for part in (opened.reader, *opened.sinks):
                    part.close()
            raise
        # From here on it applies: zones first (next frame), then cameras leave, are rebuilt, join.
        for name in rezoned:
            if self.analytics is not None:
                self.analytics.set_camera(name, configs.get(name) or empty_analytics(), self.pipeline.by_name[name].fps)
            self.cam_settings[name] = wanted[name]
        problems = []
        for name in removed:
            self.remove_camera(name)
        for cam in rebuilt:
            try:
                self.rebuild_camera(cam)
            except Exception as e:   # its new source cannot open: it stays stopped, the rest applies
                problems.append(f"camera {cam.name} could not be rebuilt ({e}); it is stopped")
        for cam, opened in joining:
            try:
                self._admit(cam, opened, configs)
            except Exception as e:
                problems.append(f"camera {cam.name} could not start ({e})")
        self.settings = new.model_copy(update={"cameras": [self.cam_settings[c.name] for c in new.cameras
                                                           if c.name in self.cam_settings]})
        parts = [f"{what} {', '.join(names)}" for what, names in (
            ("zones/rules of", rezoned), ("added", [c.name for c in added]), ("removed", removed),
            ("rebuilt", [c.name for c in rebuilt])) if names]
        return "; ".join(parts + problems) or "no change"

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
        if image is None:   # no output wanted pixels: drawn if the caller asks for result.overlay
            image = lambda pipeline=self.pipeline: pipeline.render(frame, labels)   # noqa: E731
        result = FrameResult(frame.camera, frame.id, frame,
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
        the frames in flight (a second one drops them); SIGHUP reloads (reload_config).
        -> 0, or 1 after a failure. Under systemd (app/sd_notify.py): READY=1 once started
        (every camera is open or in outage by then), WATCHDOG=1 while the pipeline progresses,
        STATUS= with each camera's fps, RELOADING=1/READY=1 around a reload, STOPPING=1 when a
        stop begins."""
        previous, stopping = {}, []

        def say_stopping():
            if not stopping:
                stopping.append(notify(STOPPING=1))

        if threading.current_thread() is threading.main_thread():
            def on_signal(signum, _frame):
                say_stopping()
                self.pipeline.request_stop(signal.Signals(signum).name)

            def on_hangup(_signum, _frame):   # the reload waits for cameras: not in the handler
                threading.Thread(target=self._reload_quietly, name="reload", daemon=True).start()

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.getsignal(sig)
                signal.signal(sig, on_signal)
            if hasattr(signal, "SIGHUP"):
                previous[signal.SIGHUP] = signal.getsignal(signal.SIGHUP)
                signal.signal(signal.SIGHUP, on_hangup)
        watchdog = Watchdog(lambda: self.pipeline.progress_at, self.status)
        try:
            self.start()
            notify(READY=1, STATUS=self.status())
            watchdog.start()
            for _ in self.frames():
                pass
        finally:
            say_stopping()
            watchdog.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.code

    def status(self) -> str:
        """One line for `systemctl status`: each camera's written frames per second over the
        last seconds, or that it is reconnecting."""
        now, parts = time.monotonic(), []
        for cam in self.cameras:
            events = cam.meter.events
            recent = bool(events) and now - events[-1][0] < 2 * cam.meter.window_s
            parts.append(f"{cam.name} reconnecting" if cam.down() else
                         f"{cam.name} {cam.meter.fps() if recent else 0.0:.1f} fps")
        return ", ".join(parts)

    def _reload_quietly(self) -> None:
        """SIGHUP's reload: its one line is logged either way."""
        try:
            self.reload_config()
        except InputError:
            pass
        except Exception as e:   # a bug: said in one line, the run goes on
            self.log(f"reload failed: {type(e).__name__}: {e}")

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
