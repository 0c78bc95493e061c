"""The run-time pipeline: per camera a capture and an output thread, one inference thread for
all cameras, joined by two bounded queues per camera (app/camera.py).

    capture thread    reader.read() -> Frame(id, capture_ts, image)      -> its input queue
    (one per camera)  (files: preprocess here too, ahead of inference)
    inference thread  app/scheduler.py picks up to N frames of different cameras
                      -> (live: preprocess) -> engine.infer(batch) -> labels -> each camera's output queue
    output thread     overlay (+ HUD/legend) -> that camera's sinks -> latency row
    (one per camera)

One camera is the same code with a list of one camera (batches of one).

Live sources (camera, RTSP, --realtime) keep only the newest frame: the input queue holds one
frame and a newer capture replaces it (the old one is dropped, reason queue_full); the output
queue likewise drops its oldest entry rather than make inference wait for encoding. Files are
read frame by frame with blocking queues: nothing is dropped, the slowest stage sets the pace.

Every captured id ends as exactly one latency row: written, or dropped with a reason (ids count
per camera; every row names its camera and the size of the batch it was inferred in).
A camera that fails (unreadable source, every output broken) stops alone; the others go on.
Stopping (SIGINT/SIGTERM, --max-frames, end of input, q in the window): capture stops, the
frames already captured are drained through inference and the sinks in order, the sinks are
closed (video files finalized), then the summary. A second signal drops what is still queued
(reason shutdown) and finishes at once.
"""
from __future__ import annotations

import queue
import signal
import sys
import threading
import time

import numpy as np

from app.camera import Camera
from app.frames import Frame, ReadError
from app.hud import draw_hud, draw_legend
from app.latency import LatencyRecorder
from core.overlay import palette_bgr, render_overlay
from core.preprocess import preprocess
from app.scheduler import END, BatchScheduler
from engines.base import ServerDown, as_engine
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


class Pipeline:
    """`source`: a Reader (one camera, writing to `sinks`) or a list of app.camera.Camera."""

    def __init__(self, source, engine, sinks: list | None = None, *, recorder: LatencyRecorder | None = None,
                 alpha: float = 0.5, mode: str = "overlay", hud: bool = False, legend: bool = False,
                 max_frames: int | None = None, out_fps: float | None = None, queue_size: int = 4,
                 log=None, batch_timeout_ms: float | None = None, analytics=None):
        if isinstance(source, (list, tuple)):
            self.cameras = list(source)
        else:
            self.cameras = [Camera("cam0", source, sinks or [], max_frames=max_frames, out_fps=out_fps,
                                   queue_size=queue_size)]
        if len(self.cameras) > 1:
            for cam in self.cameras:
                cam.tag = f"{cam.name}: "
                if hasattr(cam.reader, "camera"):
                    cam.reader.camera = cam.name   # its outage lines name the camera
        self.by_name = {cam.name: cam for cam in self.cameras}
        self.engine = engine = as_engine(engine)   # its capabilities: engines/base.py's Engine
        self.recorder = recorder or LatencyRecorder()
        self.alpha, self.mode, self.hud, self.legend = alpha, mode, hud, legend
        self.analytics = analytics          # app/analytics: coverage, rules, events per written frame
        self.stopping = threading.Event()   # stop capturing, drain what is in flight
        self.forced = threading.Event()     # drop what is in flight too
        self.stop_reason = ""
        self.failures = []                  # fatal problems, one line each
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        info = engine.info
        self.size_hw = tuple(info.input_size)
        self.mean, self.std = info.mean, info.std
        self.lut = palette_bgr(info.palette)
        self.class_names = list(info.class_names)
        self.input_dtype = engine.input_dtype
        # TensorRT engines chain the CUDA preprocess and overlay kernels around the network
        # (uint8 frames in, uint8 overlays out, no host round trip). The legend and saved label
        # maps need the labels on the host, so they keep the CPU overlay. Analytics need only
        # the zone counts, which an engine with fused_counts makes on the device.
        needs_labels = legend or any(s.save_labels for c in self.cameras for s in c.sinks) or \
            (analytics is not None and not engine.fused_counts)
        self.fused = engine.fused and not needs_labels
        self.fused_counts = self.fused and analytics is not None
        # Remote engines (Triton) keep several requests in flight: submit() returns a Future
        # that the output thread resolves in frame order, so the network overlaps the rest.
        self.asynchronous = engine.asynchronous and not self.fused
        self.bad_results = 0                # failed remote results in a row
        # Frames per infer() / run_fused_frames() call: one request for the cameras' batch
        # (remote engines), a graph's or TensorRT engine's batch, else one frame.
        batch = engine.batch_limit(len(self.cameras))
        self.scheduler = BatchScheduler(self.cameras, batch,
                                        None if batch_timeout_ms is None else batch_timeout_ms / 1000.0)

    # ---- one camera's view, as before ----------------------------------------------------
    @property
    def captured(self) -> int:
        return sum(cam.captured for cam in self.cameras)

    def captured_by_camera(self) -> dict:
        return {cam.name: cam.captured for cam in self.cameras}

    @property
    def sink_failures(self) -> dict:
        """sink name -> its error, over all cameras (names carry the camera when there are several)."""
        return {f"{cam.tag}{name}": err for cam in self.cameras for name, err in cam.sink_failures.items()}

    reader = property(lambda self: self.cameras[0].reader)
    sinks = property(lambda self: self.cameras[0].sinks)
    in_q = property(lambda self: self.cameras[0].in_q)
    out_q = property(lambda self: self.cameras[0].out_q)

    # ---- control -------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested", quiet: bool = False) -> None:
        """First call: stop capturing and drain. A second call: drop the rest, finish now."""
        if self.stopping.is_set():
            if not self.forced.is_set():
                self.log(f"{reason} again: dropping the queued frames and finishing now")
            self.forced.set()
            self.scheduler.notify()
        else:
            self.stop_reason = reason
            if not quiet:
                self.log(f"{reason}: stopping capture, finishing the frames in flight (again to force)")
            self.stopping.set()
            for cam in self.cameras:
                self._interrupt(cam)

    @staticmethod
    def _interrupt(cam: Camera) -> None:
        interrupt = getattr(cam.reader, "interrupt", None)
        if interrupt is not None:   # a reconnecting source may be waiting out an outage
            interrupt()

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
                if cam.max_frames is not None and cam.captured >= cam.max_frames:
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
                frame = Frame(cam.captured, time.monotonic(), image, source_ts, camera=cam.name)
                frame.timings["capture"] = _ms(t_read, frame.capture_ts)   # /metrics only, not the log
                cam.captured += 1
                cam.last_capture = frame.capture_ts
                if not cam.live and not self.fused:
                    self._preprocess_ahead(frame)
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

    def _preprocess_ahead(self, frame: Frame) -> None:
        """Files: preprocess here, in parallel with the inference of earlier frames, so the
        inference thread does nothing but infer. (Live sources preprocess in the inference
        thread instead: most of their captures are replaced before use, and preprocessing
        those would waste a core.) A failure is left for the inference thread to report."""
        t0 = time.monotonic()
        try:
            frame.batch = preprocess(frame.image, self.size_hw, self.mean, self.std, self.input_dtype)
        except Exception:
            return
        frame.timings["preprocess"] = _ms(t0, time.monotonic())

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
                    done, t2 = (self._infer_fused if self.fused else self._infer_batch)(batch)
                except ServerDown:
                    self._drop_unfinished(batch, "server_down")   # the engine retries on its own
                    continue
                except Exception as e:
                    self._drop_unfinished(batch, "inference_error")
                    bad += 1
                    self._inference_failed(batch[0], e, bad)
                    continue
                bad = 0
                for frame, labels in done:
                    cam = self.by_name[frame.camera]
                    item = (frame, labels, t2)
                    if cam.live:
                        self._put_newest(cam.out_q, item, lambda old: self._drop(old[0], "queue_full"))
                    else:
                        self._put_blocking(cam.out_q, item, lambda it: self._drop(it[0], "shutdown"))
        except Exception as e:
            self._fail(f"inference thread: {type(e).__name__}: {e}")
            self.forced.set()
            for cam in self.cameras:
                self._drain(cam.in_q)
        finally:
            for cam in self.cameras:
                cam.out_q.put(END)   # every output thread consumes until END

    def _drop_unfinished(self, batch: list, reason: str) -> None:
        for frame in batch:
            if frame.batch_size is None:   # not yet dropped by a failed preprocess
                frame.batch_size = len(batch)
                self._drop(frame, reason)

    def _inference_failed(self, frame: Frame, e: Exception, in_a_row: int) -> None:
        """Warn on the first failure of a run of them; stop the run at MAX_BAD_INFERENCES."""
        if in_a_row == 1:
            self.log(f"warning: {self.by_name[frame.camera].tag}frame {frame.id}: inference failed: "
                     f"{type(e).__name__}: {e}")
        if in_a_row == MAX_BAD_INFERENCES:
            self._fail(f"inference failed {in_a_row} times in a row ({type(e).__name__}: {e})")
            self.request_stop("inference failing")   # drop the rest, finish

    def _infer_batch(self, batch: list) -> tuple[list, float]:
        """Preprocess what the capture threads did not, infer all frames in one call. A frame
        that cannot be preprocessed is dropped alone; if none can, the batch fails."""
        inputs, good = [], []
        for frame in batch:
            x = frame.batch
            if x is None:
                t = time.monotonic()
                try:
                    x = preprocess(frame.image, self.size_hw, self.mean, self.std, self.input_dtype)
                except Exception as e:
                    frame.batch_size = len(batch)
                    self._drop(frame, "inference_error")
                    if len(batch) == 1:
                        raise
                    self.log(f"warning: {self.by_name[frame.camera].tag}frame {frame.id}: {type(e).__name__}: {e}")
                    continue
                frame.timings["preprocess"] = _ms(t, time.monotonic())
            frame.batch = None   # 6 MB at 512x1024: let it go as soon as it is used
            inputs.append(x)
            good.append(frame)
        if not good:
            raise ValueError("no frame of the batch could be preprocessed")
        t1 = time.monotonic()
        x = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
        if self.asynchronous:   # a remote engine: one request, each camera's output thread waits for its row
            future = self.engine.submit(x)
            labels = [Pending(future, t1, i) for i in range(len(good))]
        else:
            labels = np.asarray(self.engine.infer(x))
            self._check_classes(labels)
        t2 = time.monotonic()
        for frame in good:
            frame.timings["inference"] = _ms(t1, t2)
            frame.batch_size = len(good)
        return [(frame, labels[i]) for i, frame in enumerate(good)], t2

    def _infer_fused(self, batch: list) -> tuple[list, float]:
        """GPU preprocess + network + overlay for the batch in one call (timed as inference);
        what travels on is the finished overlay, not labels."""
        t1 = time.monotonic()
        images = [frame.image for frame in batch]
        if self.fused_counts:   # scene analytics: the zone counts come back instead of the labels
            maps = [self.analytics.cell_map(frame.camera, self.size_hw, frame.image.shape[1::-1]) for frame in batch]
            overlays, counts = self.engine.run_fused_counts(images, [cells for cells, _ in maps],
                                                            max(n for _, n in maps), self.alpha, self.mode)
            for frame, c, (_, n) in zip(batch, counts, maps):
                frame.cell_counts = c[:n]
        else:
            overlays = self.engine.run_fused_frames(images, self.alpha, self.mode)
        t2 = time.monotonic()
        for frame, overlay in zip(batch, overlays):
            frame.timings["preprocess"] = 0.0
            frame.overlay = overlay
            frame.timings["inference"] = _ms(t1, t2)
            frame.batch_size = len(batch)
        return [(frame, None) for frame in batch], t2

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
        active = None   # sinks still working; opened on the first frame (they need its size)
        try:
            while True:
                item = cam.out_q.get()
                if item is END:
                    break
                frame, labels, t_queued = item
                if self.forced.is_set():
                    self._drop(frame, "shutdown")
                    continue
                if isinstance(labels, Pending):
                    labels, t_queued = self._await(frame, labels)
                    if labels is None:
                        continue
                t0 = time.monotonic()
                frame.timings["queue"] += _ms(t_queued, t0)
                if frame.overlay is None:
                    image = render_overlay(frame.image, labels, self.lut, self.alpha, self.mode)
                else:
                    image, frame.overlay = frame.overlay, None
                self._annotate(cam, image, labels)
                if self.analytics is not None:   # after the labels, before the sinks (sets frame.coverage, .events)
                    self.analytics.process(cam.name, frame, labels, image, hud=self.hud, label_hw=self.size_hw)
                t1 = time.monotonic()
                frame.timings["overlay"] = _ms(t0, t1)
                if active is None:
                    active = self._open_sinks(cam, image.shape[1], image.shape[0])
                for sink in list(active):
                    try:
                        sink.write(frame, image, labels)
                    except Exception as e:
                        self._sink_failed(cam, sink, e, active)
                    if sink.stop_requested:
                        self.request_stop(f"{sink.name} closed")
                t2 = time.monotonic()
                frame.timings["sink"] = _ms(t1, t2)
                if not active:
                    self._drop(frame, "sink_error")
                    if not cam.stopping.is_set():
                        self._camera_failed(cam, "every output failed; nothing left to write to")
                    continue
                self.recorder.record_written(frame, t2)
                cam.meter.add(t2, _ms(frame.capture_ts, t2), frame.timings["inference"])
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

    def _await(self, frame: Frame, pending: "Pending"):
        """A remote engine's result, in frame order: (labels, time it arrived), or (None, _)
        after dropping the frame (server_down, or inference_error with a warning)."""
        try:
            out = pending.future.result()
        except ServerDown:
            self._drop(frame, "server_down")
            return None, 0.0
        except Exception as e:
            return self._result_failed(frame, e)
        # Inference: sent -> result arrived; from then until now it waited for this thread (queue).
        done = pending.done or time.monotonic()
        frame.timings["inference"] = _ms(pending.sent, done)
        labels = np.asarray(self.engine.labels_of(out))[pending.index]
        try:
            self._check_classes(labels)
        except ValueError as e:
            return self._result_failed(frame, e)
        self.bad_results = 0
        return labels, done

    def _result_failed(self, frame: Frame, e: Exception):
        self._drop(frame, "inference_error")
        self.bad_results += 1
        self._inference_failed(frame, e, self.bad_results)
        return None, 0.0

    def _check_classes(self, labels: np.ndarray) -> None:
        top = int(labels.max(initial=0))
        if top >= len(self.class_names):   # would draw black: say so instead
            raise ValueError(f"the model outputs class {top} but its sidecar lists "
                             f"{len(self.class_names)} classes; re-export the model")

    def _open_sinks(self, cam: Camera, width: int, height: int) -> list:
        fps = cam.out_fps or cam.reader.fps or 25.0
        active = []
        for sink in cam.sinks:
            try:
                sink.open(width, height, fps)
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
        if self.legend and labels is not None:
            present = set(np.flatnonzero(np.bincount(labels.ravel().astype(np.int64),
                                                     minlength=len(self.class_names))).tolist())
            draw_legend(image, self.class_names, self.lut, present)
        if self.hud:
            e2e, inf = cam.meter.latency_ms()
            draw_hud(image, cam.meter.fps(), e2e, inf)

    # ---- main ----------------------------------------------------------------------------
    def run(self) -> int:
        """Run to the end of input or a stop; 0 when it ended cleanly, 1 after a failure."""
        previous = self._install_signal_handlers()
        several = len(self.cameras) > 1

        def name(stage, cam):
            return f"{stage}-{cam.name}" if several else stage

        captures = [threading.Thread(target=self._capture, args=(c,), name=name("capture", c), daemon=True)
                    for c in self.cameras]
        inference = threading.Thread(target=self._inference, name="inference", daemon=True)
        outputs = [threading.Thread(target=self._output, args=(c,), name=name("output", c), daemon=True)
                   for c in self.cameras]
        try:
            for t in (*captures, inference, *outputs):
                t.start()
            # Short joins keep the main thread responsive to signals.
            for t in outputs:
                while t.is_alive():
                    t.join(0.2)
            inference.join()
            for t in captures:
                t.join(timeout=5.0 if not self.forced.is_set() else 0.5)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.recorder.close()
        return 1 if self.failures else 0

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}

        def on_signal(signum, _frame):
            self.request_stop(signal.Signals(signum).name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.getsignal(sig)
            signal.signal(sig, on_signal)
        return previous
