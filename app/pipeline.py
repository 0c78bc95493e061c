"""The run-time pipeline: per camera a capture and an output thread, one inference thread for
all cameras, joined by two bounded queues per camera (app/camera.py).

    capture thread    reader.read() -> Frame(id, capture_ts, image)      -> its input queue
    (one per camera)  (files: preprocess here too, ahead of inference)
    inference thread  app/scheduler.py picks up to N frames of different cameras
                      -> (live: preprocess) -> engine.infer(batch) -> labels -> each camera's output queue
    output thread     overlay (+ HUD/legend) -> that camera's sinks -> latency row
    (one per camera)

What is drawn: only what an output shows. Before each frame the output thread asks its sinks
`wants_pixels()` (app/frames.py: the null output never, a served stream only while watched);
the overlay, HUD and legend are drawn once per size those sinks want (`Sink.size`, else the
source's), plus the source size when the camera's event clips record it. A frame nobody shows
gets no pixels at all (labels -> analytics -> its row; counted as a skipped overlay; the API's
FrameResult.overlay draws it on first access). A camera with `overlay_picture: record` has it
drawn on its record input's picture (`Frame.shown`, paired in the capture thread by
app/record_follower.py, only while something shows the camera's pixels). A GPU chain that can leave the overlay out
(engines/fused_chain.py's labels mode) is asked for labels and counts only when no camera of
the batch wants pixels.

One camera is the same code with a list of one camera (batches of one). Cameras may join and
leave while the others run (`add_camera`, `remove_camera`; app/session.py builds them).

How a batch becomes overlays is chosen once per pipeline (`choose_inference`), an object with
the same five steps whatever the engine (the threads below call only these):

    SyncInference     engine.infer() on the batch; labels to the output thread (CPU overlay)
    AsyncInference    a remote engine (Triton): submit() now, the output thread waits for the
                      result in frame order, so the network overlaps the rest of the pipeline
    FusedInference    a GPU chain (TensorRT, PyTorch-CUDA): uint8 frames in, finished overlays
                      out; with `counts` (the run's scene analytics) the zone counts come back too

    prepare(frame)        capture thread, files only: preprocess ahead of inference
    infer(batch)          inference thread -> [(frame, what travels to the output thread)]
    collect(frame, out)   output thread -> the labels (None on the GPU path)
    draw(frame, labels, size)  output thread -> the overlay image, its source part at `size`
    measure(analytics...) output thread: scene analytics from the labels or the device's counts

Live sources (camera, RTSP, --realtime) keep only the newest frame: the input queue holds one
frame and a newer capture replaces it (the old one is dropped, reason queue_full); the output
queue likewise drops its oldest entry rather than make inference wait for encoding. Files are
read frame by frame with blocking queues: nothing is dropped, the slowest stage sets the pace.

Every captured id ends as exactly one latency row: written, or dropped with a reason (ids count
per camera; every row names its camera and the size of the batch it was inferred in).
A camera that fails (unreadable source, every output broken) stops alone; the others go on.
Stopping (request_stop: SIGINT/SIGTERM through app/session.py, --max-frames, end of input, q in
the window): capture stops, the
frames already captured are drained through inference and the sinks in order, the sinks are
closed (video files finalized), then the summary. A second signal drops what is still queued
(reason shutdown) and finishes at once.
"""
from __future__ import annotations

import queue
import sys
import threading
import time

import cv2
import numpy as np

from app.camera import Camera
from app.frames import Frame, ReadError
from app.hud import draw_hud, draw_legend
from app.latency import LatencyRecorder
from core.overlay import palette_bgr, render_overlay
from app.scheduler import END, BatchScheduler
from engines.base import Engine, ServerDown, as_engine
from engines.fused_chain import LABELS, FusedEngine
MAX_BAD_READS = 30        # unreadable frames in a row before the source counts as lost
MAX_BAD_INFERENCES = 10   # failed inferences in a row before the run stops


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


class Pending:
    """A request a remote engine is still working on: its Future and when it was sent."""

    def __init__(self, future, sent: float, index: int = 0):
        self.future, self.sent, self.done = future, sent, None
        self.index = index   # this frame's row in the request's batch
        future.add_done_callback(self._arrived)

    def _arrived(self, _future) -> None:
        self.done = time.monotonic()


def wants_pixels(sink) -> bool:
    """The sink's own answer; a sink without one (or a broken one) gets its pixels."""
    try:
        return bool(sink.wants_pixels())
    except Exception:
        return True


def at_size(image: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """`image` at `size` (w, h; None or its own size: itself); shrinking averages (INTER_AREA)."""
    if size is None or tuple(size) == image.shape[1::-1]:
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)


def check_classes(labels: np.ndarray, classes: int) -> None:
    top = int(labels.max(initial=0))
    if top >= classes:   # would draw black: say so instead
        raise ValueError(f"the model outputs class {top} but its sidecar lists "
                         f"{classes} classes; re-export the model")


class SyncInference:
    """engine.infer() on the batch in the inference thread; the labels travel to the output
    thread, which draws the overlay on the CPU. Files preprocess in their capture thread."""

    def __init__(self, engine: Engine, alpha: float, mode: str):
        info = engine.info
        self.engine, self.alpha, self.mode = engine, alpha, mode
        self.size_hw = tuple(info.input_size)
        self.classes = len(info.class_names)
        self.lut = palette_bgr(info.palette)

    def _preprocess(self, frame: Frame) -> np.ndarray:
        # A decoded picture is converted straight to the input size (one swscale pass).
        return self.engine.preprocess(frame.image_at(self.size_hw[1], self.size_hw[0]))

    def prepare(self, frame: Frame) -> None:
        """Files: preprocess in the capture thread, in parallel with the inference of earlier
        frames, so the inference thread does nothing but infer. (Live sources preprocess in the
        inference thread instead: most of their captures are replaced before use, and
        preprocessing those would waste a core.) A failure is left for infer() to report."""
        t0 = time.monotonic()
        try:
            frame.batch = self._preprocess(frame)
        except Exception:
            return
        frame.timings["preprocess"] = _ms(t0, time.monotonic())

    def infer(self, batch: list, drop, warn) -> list:
        """Preprocess what the capture threads did not, infer all frames in one call. A frame
        that cannot be preprocessed is dropped alone (`drop(frame, reason)`, `warn(frame, msg)`);
        if none can, the batch fails."""
        inputs, good = [], []
        for frame in batch:
            x = frame.batch
            if x is None:
                t = time.monotonic()
                try:
                    x = self._preprocess(frame)
                except Exception as e:
                    frame.batch_size = len(batch)
                    drop(frame, "inference_error")
                    if len(batch) == 1:
                        raise
                    warn(frame, f"{type(e).__name__}: {e}")
                    continue
                frame.timings["preprocess"] = _ms(t, time.monotonic())
            frame.batch = None   # 6 MB at 512x1024: let it go as soon as it is used
            inputs.append(x)
            good.append(frame)
        if not good:
            raise ValueError("no frame of the batch could be preprocessed")
        t1 = time.monotonic()
        outs = self._send(inputs[0] if len(inputs) == 1 else np.concatenate(inputs), t1, len(good))
        t2 = time.monotonic()
        for frame in good:
            frame.timings["inference"] = _ms(t1, t2)
            frame.batch_size = len(good)
        return list(zip(good, outs))

    def _send(self, x: np.ndarray, sent: float, n: int):
        labels = np.asarray(self.engine.infer(x))
        check_classes(labels, self.classes)
        return labels

    def collect(self, frame: Frame, out, t_queued: float) -> tuple:
        """-> (labels, when they were ready); raises (ServerDown, ...) to drop the frame."""
        return out, t_queued

    def check_camera(self, cam) -> None:
        """A camera joining a running pipeline can be served the way this one runs."""

    def draw(self, frame: Frame, labels, size: tuple[int, int] | None = None) -> np.ndarray:
        """The overlay of `frame`, its source part at `size` (w, h; None: the source's)."""
        return render_overlay(at_size(frame.picture, size), labels, self.lut, self.alpha, self.mode)

    def measure(self, analytics, camera: str, frame: Frame, labels, image: np.ndarray, hud: bool):
        return analytics.process(camera, frame, labels, image, hud=hud)


class AsyncInference(SyncInference):
    """An engine with several requests in flight (Triton; OpenVINO with --ov-streams 2 or
    more): the inference thread submits the batch as one request and goes on; each camera's
    output thread waits for its row."""

    def _send(self, x: np.ndarray, sent: float, n: int):
        future = self.engine.submit(x)
        return [Pending(future, sent, i) for i in range(n)]

    def collect(self, frame: Frame, out: Pending, t_queued: float) -> tuple:
        result = out.future.result()   # ServerDown or the request's error: the frame is dropped
        # Inference: sent -> result arrived; from then until now it waited for this thread (queue).
        done = out.done or time.monotonic()
        frame.timings["inference"] = _ms(out.sent, done)
        labels = np.asarray(self.engine.labels_of(result))[out.index]
        check_classes(labels, self.classes)
        return labels, done


class FusedInference(SyncInference):
    """A GPU chain: preprocess + network + overlay for the batch in one call (timed as
    inference); what travels on is the finished overlay, not labels. `counts`: scene
    analytics get each frame's zone counts from the device instead of the label map."""

    def __init__(self, engine: Engine, alpha: float, mode: str, counts=None):
        super().__init__(engine, alpha, mode)
        self.counts = counts   # the run's Analytics (its cell maps), or None
        # The shared GPU chain can download the labels instead of drawing (its labels mode).
        self.can_skip_pixels = isinstance(engine, FusedEngine)
        self.wants_pixels = lambda camera: True   # the pipeline's: does a camera want pixels now

    def prepare(self, frame: Frame) -> None:
        pass   # the chain preprocesses on the device

    def check_camera(self, cam) -> None:
        if needs_host_labels([cam]):
            raise ValueError(f"camera {cam.name}: saving label maps or overlay_picture record needs the labels on "
                             "the host, and this run draws its overlays on the GPU; restart the run with the camera "
                             "in its settings")

    def infer(self, batch: list, drop, warn) -> list:
        t1 = time.monotonic()
        images = [frame.image for frame in batch]
        # No camera of the batch shows pixels: labels (and counts) only, nothing drawn.
        labels_only = self.can_skip_pixels and not any(self.wants_pixels(frame.camera) for frame in batch)
        mode = LABELS if labels_only else self.mode
        if self.counts is not None:
            maps = [self.counts.cell_map(frame.camera, self.size_hw, frame.image.shape[1::-1], frame=frame)
                    for frame in batch]
            outs, counts = self.engine.run_fused_counts(images, [cells for cells, _ in maps],
                                                        max(n for _, n in maps), self.alpha, mode)
            for frame, c, (_, n) in zip(batch, counts, maps):
                frame.cell_counts = c[:n]
        else:
            outs = self.engine.run_fused_frames(images, self.alpha, mode)
        t2 = time.monotonic()
        for frame, out in zip(batch, outs):
            frame.timings["preprocess"] = 0.0
            if not labels_only:
                frame.overlay = out
            frame.timings["inference"] = _ms(t1, t2)
            frame.batch_size = len(batch)
        # labels-only: the labels travel on (a viewer who came meanwhile gets the CPU overlay)
        return [(frame, out if labels_only else None) for frame, out in zip(batch, outs)]

    def collect(self, frame: Frame, out, t_queued: float) -> tuple:
        return out, t_queued

    def draw(self, frame: Frame, labels, size: tuple[int, int] | None = None) -> np.ndarray:
        if frame.overlay is None:   # the chain drew none (labels mode): the CPU overlay of its labels
            return super().draw(frame, labels, size)
        image = frame.overlay
        if size is not None and size != frame.image.shape[1::-1]:
            w, h = size
            image = cv2.resize(image, (image.shape[1] * w // frame.image.shape[1], h), interpolation=cv2.INTER_AREA)
        return image

    def measure(self, analytics, camera: str, frame: Frame, labels, image: np.ndarray, hud: bool):
        return analytics.process_counts(camera, frame, frame.cell_counts, self.size_hw, image, hud=hud)


def needs_host_labels(cameras) -> bool:
    """A camera saves its label maps, or draws on its record input's picture (overlay_picture
    record): its labels must come to the host."""
    return any(cam.follower is not None or any(getattr(s, "save_labels", False) for s in cam.sinks)
               for cam in cameras)


def choose_inference(engine: Engine, *, needs_labels: bool, analytics, alpha: float, mode: str):
    """The one place the inference mode is decided. A GPU chain unless something needs the
    label maps on the host (the legend, saved label maps, the API's results, analytics on an
    engine that cannot count on the device, a camera that draws on its record input's picture);
    a remote engine's requests overlap the rest."""
    needs_labels = needs_labels or (analytics is not None and not engine.fused_counts)
    if engine.fused and not needs_labels:
        return FusedInference(engine, alpha, mode, counts=analytics)
    if engine.asynchronous:
        return AsyncInference(engine, alpha, mode)
    return SyncInference(engine, alpha, mode)


class Pipeline:
    """`cameras`: a list of app.camera.Camera (one or more), served by `engine`.

    keep_labels: every written frame keeps its label map on the host (no GPU overlay-only
    path). on_written(frame, image, labels): called after a camera's sinks for every frame
    written (the session's results; labels None on the GPU path; image None when no output
    wanted pixels: `render(frame, labels)` draws it then)."""

    def __init__(self, cameras: list, engine, *, recorder: LatencyRecorder | None = None,
                 alpha: float = 0.5, mode: str = "overlay", hud: bool = False, legend: bool = False,
                 log=None, batch_timeout_ms: float | None = None, analytics=None, keep_labels: bool = False,
                 on_written=None):
        self.cameras = list(cameras)        # those running (or about to)
        self.by_name = {cam.name: cam for cam in self.cameras}
        self.left: list = []                # cameras that have left (their counts stay in the summary)
        self.several = len(self.cameras) > 1
        for cam in self.cameras:
            self._tag(cam)
        self.engine = engine = as_engine(engine)   # its capabilities: engines/base.py's Engine
        self.recorder = recorder or LatencyRecorder()
        self.hud, self.legend = hud, legend
        self.analytics = analytics          # app/analytics: coverage, rules, events per written frame
        self.on_written = on_written
        self.stopping = threading.Event()   # stop capturing, drain what is in flight
        self.forced = threading.Event()     # drop what is in flight too
        self.stop_reason = ""
        self.failures = []                  # fatal problems, one line each
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.class_names = list(engine.info.class_names)
        self.lut = palette_bgr(engine.info.palette)
        self.keep_labels = keep_labels or legend
        self.inference = choose_inference(engine, needs_labels=self.keep_labels or needs_host_labels(self.cameras),
                                          analytics=analytics, alpha=alpha, mode=mode)
        self.inference.wants_pixels = self._camera_wants_pixels
        self.bad_results = 0                # failed results in a row (output threads)
        self.lock = threading.Lock()        # cameras joining and leaving
        self.inference_thread = None
        # Frames per infer() call: one request for the cameras' batch (remote engines), a
        # graph's or TensorRT engine's batch, else one frame; it follows the number of cameras.
        self.scheduler = BatchScheduler(self.cameras, engine.batch_limit,
                                        None if batch_timeout_ms is None else batch_timeout_ms / 1000.0)

    def _tag(self, cam: Camera) -> None:
        if self.several:
            cam.tag = f"{cam.name}: "
            if hasattr(cam.reader, "camera"):
                cam.reader.camera = cam.name   # its outage lines name the camera

    # ---- counts --------------------------------------------------------------------------
    @property
    def captured(self) -> int:
        return sum(self.captured_by_camera().values())

    def captured_by_camera(self) -> dict:
        """Frame ids handed out per camera name (cameras that left included)."""
        with self.lock:
            return {cam.name: cam.captured for cam in (*self.left, *self.cameras)}   # the newest of a name wins

    @property
    def sink_failures(self) -> dict:
        """sink name -> its error, over all cameras (names carry the camera when there are several)."""
        with self.lock:
            cams = [*self.left, *self.cameras]
        return {f"{cam.tag}{name}": err for cam in cams for name, err in cam.sink_failures.items()}

    @property
    def progress_at(self) -> float:
        """When the inference thread last made progress (time.monotonic()): its scheduler's
        loop passes with every batch taken and every idle poll (0.2 s) while no camera has a
        frame, so an idle pipeline stays fresh and a hung infer() or scheduler goes stale
        (the service watchdog, app/sd_notify.py)."""
        return self.scheduler.beat

    # ---- control -------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested", quiet: bool = False, force: bool = False) -> None:
        """First call: stop capturing and drain. A second call (or `force`): drop the rest, finish now."""
        if self.stopping.is_set() or force:
            if not self.forced.is_set() and not (quiet or force):
                self.log(f"{reason} again: dropping the queued frames and finishing now")
            self.forced.set()
            self.scheduler.notify()
        if not self.stopping.is_set():
            self.stop_reason = reason
            if not quiet and not force:
                self.log(f"{reason}: stopping capture, finishing the frames in flight (again to force)")
            self.stopping.set()
            with self.lock:
                cams = list(self.cameras)
            for cam in cams:
                self._interrupt(cam)

    @staticmethod
    def _interrupt(cam: Camera) -> None:
        interrupt = getattr(cam.reader, "interrupt", None)
        if interrupt is not None:   # a reconnecting source may be waiting out an outage
            interrupt()

    def start(self) -> None:
        """Start every thread: per camera a capture and an output thread, one inference thread."""
        self.inference_thread = threading.Thread(target=self._inference, name="inference", daemon=True)
        for cam in self.cameras:
            self._start_camera(cam)
        self.inference_thread.start()

    def _start_camera(self, cam: Camera) -> None:
        def name(stage):
            return f"{stage}-{cam.name}" if self.several else stage

        if cam.follower is not None:   # a live follower decodes keyframes only while nothing shows pixels
            cam.follower.shows = lambda: self._camera_wants_pixels(cam.name)
        cam.threads = [threading.Thread(target=self._capture, args=(cam,), name=name("capture"), daemon=True),
                       threading.Thread(target=self._output, args=(cam,), name=name("output"), daemon=True)]
        for t in cam.threads:
            t.start()

    def wait(self) -> int:
        """Until every camera has finished: 0 when it ended cleanly, 1 after a failure."""
        try:
            while True:   # short joins keep a main thread responsive to signals
                alive = [t for t in (self.inference_thread, *self._threads(1)) if t.is_alive()]
                if not alive:
                    break
                alive[0].join(0.2)
            for t in self._threads(0):
                t.join(timeout=5.0 if not self.forced.is_set() else 0.5)
        finally:
            self.recorder.close()
        return 1 if self.failures else 0

    def _threads(self, which: int) -> list:
        """Every camera's capture (0) or output (1) thread, those that left included."""
        with self.lock:
            return [cam.threads[which] for cam in (*self.left, *self.cameras) if cam.threads]

    def run(self) -> int:
        """Run to the end of input or a stop; 0 when it ended cleanly, 1 after a failure."""
        self.start()
        return self.wait()

    def add_camera(self, cam: Camera) -> None:
        """A camera joins the running pipeline (its threads start now; frames from it go into
        the next batches). Its name must be free."""
        with self.lock:
            if cam.name in self.by_name:
                raise ValueError(f"camera {cam.name} is already running")
            self.inference.check_camera(cam)
            self.several = self.several or bool(self.cameras) or bool(self.left)
            for other in (*self.cameras, cam):
                self._tag(other)
            self.scheduler.add(cam)   # raises SchedulerClosed once the run is over
            self.cameras.append(cam)
            self.by_name[cam.name] = cam
        if self.inference_thread is not None:
            self._start_camera(cam)

    def remove_camera(self, name: str, timeout_s: float = 10.0, join=None) -> Camera:
        """Camera `name` stops capturing, its frames in flight are written, its sinks close;
        the others go on. Returns it once its threads are done (its counts stay in the run's
        summary). join(thread, timeout_s): how to wait for them (default Thread.join)."""
        with self.lock:
            cam = self.by_name.get(name)
        if cam is None:
            raise KeyError(f"no camera {name!r} is running")
        cam.stopping.set()
        self._interrupt(cam)
        self.scheduler.notify()
        for t in cam.threads:
            (join or threading.Thread.join)(t, timeout_s)
        if not cam.threads:   # never started: its capture and output threads would have closed these
            for part in (cam.reader, *cam.sinks):
                part.close()
        with self.lock:
            if cam in self.cameras:
                self.cameras.remove(cam)
                self.left.append(cam)
            self.by_name.pop(name, None)
        return cam

    def _fail(self, msg: str) -> None:
        self.failures.append(msg)
        self.log(f"error: {msg}")
        self.request_stop(msg, quiet=True)

    def _camera_failed(self, cam: Camera, msg: str) -> None:
        """One camera cannot go on: it stops capturing, drains, and the others carry on (the
        run still exits 1). With one camera that is the end of the run."""
        self.failures.append(f"{cam.tag}{msg}")
        self.log(f"error: {cam.tag}{msg}")
        cam.stopping.set()
        self._interrupt(cam)

    def _drop(self, frame: Frame, reason: str) -> None:
        self.recorder.record_dropped(frame.id, frame.capture_ts, reason, frame.source_ts, frame.timings,
                                     camera=frame.camera, batch_size=frame.batch_size)

    # ---- capture threads (one per camera) ------------------------------------------------
    def _capture(self, cam: Camera) -> None:
        bad_reads = 0
        try:
            while not (self.stopping.is_set() or cam.stopping.is_set()):
                if cam.max_frames is not None and cam.frames >= cam.max_frames:
                    break
                t_read = time.monotonic()
                try:
                    got = cam.reader.read()
                except ReadError as e:
                    fid = cam.captured
                    cam.captured += 1
                    self.recorder.record_dropped(fid, time.monotonic(), "decode_error", camera=cam.name)
                    bad_reads += 1
                    if bad_reads == 1:
                        self.log(f"warning: {cam.tag}frame {fid}: {e}")
                    if bad_reads >= MAX_BAD_READS:
                        self._camera_failed(cam, f"{cam.reader.description}: {bad_reads} unreadable frames in a row "
                                                 f"({e})")
                        break
                    continue
                if got is None:
                    break
                bad_reads = 0
                image, source_ts = got
                # decoder_scale and nothing shows this camera's pixels now (or they are the record
                # input's): the model's input straight from the decoder (app/frames.py image_at).
                shows = self._camera_wants_pixels(cam.name)
                frame = Frame(cam.captured, time.monotonic(), image, source_ts, camera=cam.name,
                              full_size=not cam.decoder_scale or (shows and cam.follower is None))
                frame.timings["capture"] = _ms(t_read, frame.capture_ts)   # /metrics only, not the log
                cam.captured += 1
                cam.last_capture = frame.capture_ts
                if not cam.wants(frame):   # detect_fps: not preprocessed, not inferred
                    self.recorder.record_skipped(frame.id, frame.capture_ts, source_ts, camera=cam.name)
                    continue
                if shows and cam.follower is not None:   # overlay_picture record: its record picture
                    frame.shown = cam.follower.picture_for(frame)
                frame.convert()   # shown at full size: to BGR here, in this camera's thread, as before
                if not cam.live:
                    self.inference.prepare(frame)
                self._put_input(cam, frame)
        except Exception as e:   # a bug or an unexpected library error: finish cleanly anyway
            self._camera_failed(cam, f"capture: {type(e).__name__}: {e}")
        finally:
            try:
                cam.reader.close()
            except Exception as e:
                self.log(f"warning: {cam.tag}closing the source: {e}")
            # The scheduler consumes until END (or, forced, until the queues are empty).
            self._put_blocking(cam.in_q, END, lambda _: None)
            self.scheduler.notify()

    def _put_input(self, cam: Camera, frame: Frame) -> None:
        if self.forced.is_set():
            self._drop(frame, "shutdown")
            return
        if cam.live:
            self._put_newest(cam.in_q, frame, lambda old: self._drop(old, "queue_full"))
        else:
            self._put_blocking(cam.in_q, frame, lambda f: self._drop(f, "shutdown"))
        self.scheduler.notify()

    def _put_newest(self, q: queue.Queue, item, drop) -> None:
        """Live: never wait. A full queue loses its oldest entry to the new one."""
        while True:
            try:
                q.put_nowait(item)
                return
            except queue.Full:
                try:
                    old = q.get_nowait()
                except queue.Empty:
                    continue
                drop(old)

    def _put_blocking(self, q: queue.Queue, item, drop) -> None:
        """Files: wait for room (no drops), unless a forced stop comes first."""
        while True:
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.forced.is_set():
                    drop(item)
                    return

    # ---- inference thread (one for all cameras) ------------------------------------------
    def _inference(self) -> None:
        bad = 0
        try:
            while True:
                batch = self.scheduler.next_batch(self.forced)
                for cam in self.scheduler.take_finished():
                    self._end_output(cam)   # its frames are all in its output queue already
                if batch is None:
                    break
                if self.forced.is_set():
                    for frame in batch:
                        self._drop(frame, "shutdown")
                    continue
                t0 = time.monotonic()
                for frame in batch:
                    # Queue wait: since capture, less a preprocess the capture thread already did.
                    frame.timings["queue"] = _ms(frame.capture_ts, t0) - frame.timings.get("preprocess", 0.0)
                try:
                    done = self.inference.infer(batch, self._drop, self._warn) if batch else []
                except ServerDown:
                    self._drop_unfinished(batch, "server_down")   # the engine retries on its own
                    continue
                except Exception as e:
                    self._drop_unfinished(batch, "inference_error")
                    bad += 1
                    self._inference_failed(batch[0], e, bad)
                    continue
                bad = 0
                t2 = time.monotonic()
                for frame, out in done:
                    cam = self.by_name[frame.camera]
                    item = (frame, out, t2)
                    if cam.live:
                        self._put_newest(cam.out_q, item, lambda old: self._drop(old[0], "queue_full"))
                    else:
                        self._put_blocking(cam.out_q, item, lambda it: self._drop(it[0], "shutdown"))
        except Exception as e:
            self._fail(f"inference thread: {type(e).__name__}: {e}")
            self.forced.set()
            for cam in list(self.cameras):
                self._drain(cam.in_q)
        finally:
            with self.lock:   # a camera joining now is refused (the scheduler is closed) or in this list
                cams = list(self.cameras)
            for cam in cams:
                self._end_output(cam)   # every output thread consumes until END

    def _end_output(self, cam: Camera) -> None:
        if not cam.end_sent:
            cam.end_sent = True
            cam.out_q.put(END)

    def _warn(self, frame: Frame, msg: str) -> None:
        self.log(f"warning: {self.by_name[frame.camera].tag}frame {frame.id}: {msg}")

    def _drop_unfinished(self, batch: list, reason: str) -> None:
        for frame in batch:
            if frame.batch_size is None:   # not yet dropped by a failed preprocess
                frame.batch_size = len(batch)
                self._drop(frame, reason)

    def _inference_failed(self, frame: Frame, e: Exception, in_a_row: int) -> None:
        """Warn on the first failure of a run of them; stop the run at MAX_BAD_INFERENCES."""
        if in_a_row == 1:
            self._warn(frame, f"inference failed: {type(e).__name__}: {e}")
        if in_a_row == MAX_BAD_INFERENCES:
            self._fail(f"inference failed {in_a_row} times in a row ({type(e).__name__}: {e})")
            self.request_stop("inference failing")   # drop the rest, finish

    def _drain(self, q: queue.Queue) -> None:
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                return
            if item is END:
                return
            self._drop(item[0] if isinstance(item, tuple) else item, "shutdown")

    # ---- output threads (one per camera) -------------------------------------------------
    def _output(self, cam: Camera) -> None:
        """A frame's way out: its labels, the overlay, HUD/legend, analytics, the sinks, its row."""
        active = None   # sinks still working; opened on the first frame (they need its size)
        try:
            while True:
                item = cam.out_q.get()
                if item is END:
                    break
                frame, out, t_queued = item
                if self.forced.is_set():
                    self._drop(frame, "shutdown")
                    continue
                try:
                    labels, t_queued = self.inference.collect(frame, out, t_queued)
                except ServerDown:
                    self._drop(frame, "server_down")
                    continue
                except Exception as e:
                    self._drop(frame, "inference_error")
                    self.bad_results += 1
                    self._inference_failed(frame, e, self.bad_results)
                    continue
                self.bad_results = 0
                t0 = time.monotonic()
                frame.timings["queue"] += _ms(t_queued, t0)
                self._stand_in(cam, frame)
                if active is None:
                    active = self._open_sinks(cam, frame)
                pixels, image = self._draw(cam, frame, labels, active)
                if self.analytics is not None:   # after the labels, before the sinks (sets frame.coverage, .events)
                    self.inference.measure(self.analytics, cam.name, frame, labels, image, self.hud)
                t1 = time.monotonic()
                frame.timings["overlay"] = _ms(t0, t1)
                for sink in list(active):
                    try:
                        sink.write(frame, pixels.get(sink), labels)
                    except Exception as e:
                        self._sink_failed(cam, sink, e, active)
                    if sink.stop_requested:
                        self.request_stop(f"{sink.name} closed")
                t2 = time.monotonic()
                frame.timings["sink"] = _ms(t1, t2)
                if not active and cam.sink_failures:
                    self._drop(frame, "sink_error")
                    if not cam.stopping.is_set():
                        self._camera_failed(cam, "every output failed; nothing left to write to")
                    continue
                self.recorder.record_written(frame, t2)
                cam.meter.add(t2, _ms(frame.capture_ts, t2), frame.timings["inference"])
                if self.on_written is not None:
                    self.on_written(frame, image, labels)
        except Exception as e:
            self._fail(f"{cam.tag}output thread: {type(e).__name__}: {e}")
            self.forced.set()
            self._drain(cam.out_q)
        finally:
            for sink in cam.sinks:
                try:
                    sink.close()   # finalizes video files: playable even after a signal
                except Exception as e:   # e.g. the file could not be written: the run says so
                    self._sink_failed(cam, sink, e, [])

    # ---- what is drawn ---------------------------------------------------------------------
    def _camera_wants_pixels(self, name: str) -> bool:
        """Camera `name` has an output that shows pixels now, or records event clips."""
        cam = self.by_name.get(name)
        return cam is None or self._records_clips(name) or any(wants_pixels(s) for s in cam.sinks)

    def _records_clips(self, name: str) -> bool:
        state = self.analytics.cameras.get(name) if self.analytics is not None else None
        return state is not None and state.clips is not None

    def _draw(self, cam: Camera, frame: Frame, labels, active: list) -> tuple[dict, np.ndarray | None]:
        """The overlays this frame's outputs want now, each size drawn once: ({sink: its image},
        the image analytics and event clips get: the source-size one, else any, else None)."""
        source = frame.picture.shape[1::-1]
        sizes = {sink: tuple(getattr(sink, "size", None) or source) for sink in active if wants_pixels(sink)}
        wanted = set(sizes.values())
        if self._records_clips(cam.name):
            wanted.add(source)   # the clip recorder's ring holds every frame at source size
        # The source size last: a GPU chain's overlay is the source-size image itself, and the
        # HUD is drawn on it in place; the other sizes are made from it before that.
        drawn = {size: self._render(cam, frame, labels, size) for size in sorted(wanted, key=lambda s: s == source)}
        if not drawn:
            self.recorder.count_overlays(cam.name, skipped=1)
        image = drawn.get(source, next(iter(drawn.values()), None))
        return {sink: drawn[size] for sink, size in sizes.items()}, image

    @staticmethod
    def _stand_in(cam: Camera | None, frame: Frame) -> None:
        """overlay_picture record, a frame captured while nothing showed its pixels: its detect
        picture scaled to the record picture's size (app/record_follower.py)."""
        if cam is not None and cam.follower is not None and frame.shown is None:
            frame.shown = cam.follower.stand_in(frame.image)

    def _render(self, cam: Camera | None, frame: Frame, labels, size=None) -> np.ndarray:
        image = self.inference.draw(frame, labels, size)
        if cam is not None:
            self._annotate(cam, image, labels)
        self.recorder.count_overlays(frame.camera, drawn=1)
        return image

    def render(self, frame: Frame, labels) -> np.ndarray:
        """A written frame's overlay at source size, drawn now (FrameResult.overlay on first
        access): HUD and legend as the outputs get them (the HUD's numbers are those of now)."""
        cam = self.by_name.get(frame.camera)
        self._stand_in(cam, frame)
        return self._render(cam, frame, labels)

    def _open_sinks(self, cam: Camera, frame: Frame) -> list:
        """Each output opened at the size of the pixels it gets (its own, else the source's)."""
        fps = cam.out_fps or cam.reader.fps or 25.0
        active = []
        for sink in cam.sinks:
            w, h = getattr(sink, "size", None) or frame.picture.shape[1::-1]
            try:
                sink.open(2 * w if self.inference.mode == "side-by-side" else w, h, fps)
                active.append(sink)
            except Exception as e:
                self._sink_failed(cam, sink, e, active)
        return active

    def _sink_failed(self, cam: Camera, sink, error: Exception, active: list) -> None:
        """One broken output must not stop the others: switch it off and say so once."""
        msg = str(error).splitlines()[0] if str(error) else type(error).__name__
        cam.sink_failures[sink.name] = msg
        self.log(f"error: {cam.tag}output {sink.name} failed and is switched off: {msg}")
        if sink in active:
            active.remove(sink)

    def _annotate(self, cam: Camera, image: np.ndarray, labels: np.ndarray) -> None:
        if self.legend:   # the legend keeps the labels on the host (keep_labels)
            present = set(np.flatnonzero(np.bincount(labels.ravel().astype(np.int64),
                                                     minlength=len(self.class_names))).tolist())
            draw_legend(image, self.class_names, self.lut, present)
        if self.hud:
            e2e, inf = cam.meter.latency_ms()
            draw_hud(image, cam.meter.fps(), e2e, inf)
