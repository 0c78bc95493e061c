"""The run-time pipeline: three threads joined by two bounded queues.

    capture thread    reader.read() -> Frame(id, capture_ts, image)      -> input queue
                      (files: preprocess here too, ahead of inference)
    inference thread  (live: preprocess) -> engine.infer -> labels       -> output queue
    output thread     overlay (+ HUD/legend) -> every sink -> latency row

Live sources (camera, RTSP, --realtime) keep only the newest frame: the input queue holds one
frame and a newer capture replaces it (the old one is dropped, reason queue_full); the output
queue likewise drops its oldest entry rather than make inference wait for encoding. Files are
read frame by frame with blocking queues: nothing is dropped, the slowest stage sets the pace.

Every captured id ends as exactly one latency row: written, or dropped with a reason.
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

from app.frames import Frame, Reader, ReadError
from app.hud import RateMeter, draw_hud, draw_legend
from app.latency import LatencyRecorder
from app.overlay import palette_bgr, render_overlay
from app.preprocess import preprocess
from engines.base import ServerDown

END = object()            # end-of-stream marker passed down the queues
MAX_BAD_READS = 30        # unreadable frames in a row before the source counts as lost
MAX_BAD_INFERENCES = 10   # failed inferences in a row before the run stops


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


class Pending:
    """A request a remote engine is still working on: its Future and when it was sent."""

    def __init__(self, future, sent: float):
        self.future, self.sent, self.done = future, sent, None
        future.add_done_callback(self._arrived)

    def _arrived(self, _future) -> None:
        self.done = time.monotonic()


class Pipeline:
    def __init__(self, reader: Reader, engine, sinks: list, *, recorder: LatencyRecorder | None = None,
                 alpha: float = 0.5, mode: str = "overlay", hud: bool = False, legend: bool = False,
                 max_frames: int | None = None, out_fps: float | None = None, queue_size: int = 4,
                 log=None):
        self.reader = reader
        self.engine = engine
        self.sinks = list(sinks)
        self.recorder = recorder or LatencyRecorder()
        self.alpha, self.mode, self.hud, self.legend = alpha, mode, hud, legend
        self.max_frames = max_frames
        self.out_fps = out_fps
        self.live = bool(reader.live)
        self.in_q = queue.Queue(maxsize=1 if self.live else max(1, queue_size))
        self.out_q = queue.Queue(maxsize=max(1, queue_size))
        self.stopping = threading.Event()   # stop capturing, drain what is in flight
        self.forced = threading.Event()     # drop what is in flight too
        self.stop_reason = ""
        self.captured = 0
        self.failures = []                  # fatal problems, one line each
        self.sink_failures = {}             # sink name -> its error (that sink was switched off)
        self.meter = RateMeter()
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        info = engine.info
        self.size_hw = tuple(info.input_size)
        self.mean, self.std = info.mean, info.std
        self.lut = palette_bgr(info.palette)
        self.class_names = list(info.class_names)
        self.input_dtype = getattr(engine, "input_dtype", np.float32)
        # TensorRT engines chain the CUDA preprocess and overlay kernels around the network
        # (uint8 frame in, uint8 overlay out, no host round trip). The legend and saved label
        # maps need the labels on the host, so they keep the CPU overlay.
        fused = getattr(engine, "run_fused", None)
        needs_labels = legend or any(getattr(s, "save_labels", False) for s in self.sinks)
        self.fused = fused if fused is not None and not needs_labels else None
        # Remote engines (Triton) keep several requests in flight: submit() returns a Future
        # that the output thread resolves in frame order, so the network overlaps the rest.
        self.submit = getattr(engine, "submit", None) if self.fused is None else None
        self.bad_results = 0                # failed remote results in a row

    # ---- control -------------------------------------------------------------------------
    def request_stop(self, reason: str = "stop requested", quiet: bool = False) -> None:
        """First call: stop capturing and drain. A second call: drop the rest, finish now."""
        if self.stopping.is_set():
            if not self.forced.is_set():
                self.log(f"{reason} again: dropping the queued frames and finishing now")
            self.forced.set()
        else:
            self.stop_reason = reason
            if not quiet:
                self.log(f"{reason}: stopping capture, finishing the frames in flight (again to force)")
            self.stopping.set()
            interrupt = getattr(self.reader, "interrupt", None)
            if interrupt is not None:   # a reconnecting source may be waiting out an outage
                interrupt()

    def _fail(self, msg: str) -> None:
        self.failures.append(msg)
        self.log(f"error: {msg}")
        self.request_stop(msg, quiet=True)

    def _drop(self, frame: Frame, reason: str) -> None:
        self.recorder.record_dropped(frame.id, frame.capture_ts, reason, frame.source_ts, frame.timings)

    # ---- capture thread ------------------------------------------------------------------
    def _capture(self) -> None:
        bad_reads = 0
        try:
            while not self.stopping.is_set():
                if self.max_frames is not None and self.captured >= self.max_frames:
                    break
                t_read = time.monotonic()
                try:
                    got = self.reader.read()
                except ReadError as e:
                    fid = self.captured
                    self.captured += 1
                    self.recorder.record_dropped(fid, time.monotonic(), "decode_error")
                    bad_reads += 1
                    if bad_reads == 1:
                        self.log(f"warning: frame {fid}: {e}")
                    if bad_reads >= MAX_BAD_READS:
                        self._fail(f"{self.reader.description}: {bad_reads} unreadable frames in a row ({e})")
                        break
                    continue
                if got is None:
                    break
                bad_reads = 0
                image, source_ts = got
                frame = Frame(self.captured, time.monotonic(), image, source_ts)
                frame.timings["capture"] = _ms(t_read, frame.capture_ts)   # /metrics only, not the log
                self.captured += 1
                if not self.live and self.fused is None:
                    self._preprocess_ahead(frame)
                self._put_input(frame)
        except Exception as e:   # a bug or an unexpected library error: finish cleanly anyway
            self._fail(f"capture: {type(e).__name__}: {e}")
        finally:
            try:
                self.reader.close()
            except Exception as e:
                self.log(f"warning: closing the source: {e}")
            # The inference thread consumes until END (or, forced, until the queue is empty).
            self._put_blocking(self.in_q, END, lambda _: None)

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

    def _put_input(self, frame: Frame) -> None:
        if self.forced.is_set():
            self._drop(frame, "shutdown")
        elif self.live:
            self._put_newest(self.in_q, frame, lambda old: self._drop(old, "queue_full"))
        else:
            self._put_blocking(self.in_q, frame, lambda f: self._drop(f, "shutdown"))

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

    # ---- inference thread ----------------------------------------------------------------
    def _inference(self) -> None:
        bad = 0
        try:
            while True:
                try:
                    frame = self.in_q.get(timeout=0.2)
                except queue.Empty:
                    if self.forced.is_set():
                        break   # the capture thread may be stuck in a read; do not wait for it
                    continue
                if frame is END:
                    break
                if self.forced.is_set():
                    self._drop(frame, "shutdown")
                    continue
                t0 = time.monotonic()
                # Queue wait: time since capture, less a preprocess the capture thread already did.
                frame.timings["queue"] = _ms(frame.capture_ts, t0) - frame.timings.get("preprocess", 0.0)
                try:
                    if self.fused is not None:
                        # GPU preprocess + network + overlay in one call (timed as inference);
                        # what travels on is the finished overlay, not labels.
                        frame.timings["preprocess"] = 0.0
                        t1 = time.monotonic()
                        labels = None
                        frame.overlay = self.fused(frame.image, self.alpha, self.mode)
                        t2 = time.monotonic()
                    else:
                        batch = frame.batch
                        if batch is None:
                            batch = preprocess(frame.image, self.size_hw, self.mean, self.std, self.input_dtype)
                            frame.timings["preprocess"] = _ms(t0, time.monotonic())
                        frame.batch = None   # 6 MB at 512x1024: let it go as soon as it is used
                        t1 = time.monotonic()
                        if self.submit is not None:
                            labels = Pending(self.submit(batch), t1)   # the output thread waits for it
                        else:
                            labels = np.asarray(self.engine.infer(batch))[0]
                        t2 = time.monotonic()
                        if not isinstance(labels, Pending):
                            self._check_classes(labels)
                except ServerDown:
                    self._drop(frame, "server_down")   # the engine retries on its own
                    continue
                except Exception as e:
                    self._drop(frame, "inference_error")
                    bad += 1
                    if bad == 1:
                        self.log(f"warning: frame {frame.id}: inference failed: {type(e).__name__}: {e}")
                    if bad >= MAX_BAD_INFERENCES:
                        self._fail(f"inference failed {bad} times in a row ({type(e).__name__}: {e})")
                        self.request_stop("inference failing")   # drop the rest, finish
                    continue
                bad = 0
                frame.timings["inference"] = _ms(t1, t2)
                item = (frame, labels, t2)
                if self.live:
                    self._put_newest(self.out_q, item, lambda old: self._drop(old[0], "queue_full"))
                else:
                    self._put_blocking(self.out_q, item, lambda it: self._drop(it[0], "shutdown"))
        except Exception as e:
            self._fail(f"inference thread: {type(e).__name__}: {e}")
            self.forced.set()
            self._drain(self.in_q)
        finally:
            self.out_q.put(END)   # the output thread always consumes until END

    def _drain(self, q: queue.Queue) -> None:
        while True:
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                return
            if item is END:
                return
            self._drop(item[0] if isinstance(item, tuple) else item, "shutdown")

    # ---- output thread -------------------------------------------------------------------
    def _output(self) -> None:
        active = None   # sinks still working; opened on the first frame (they need its size)
        try:
            while True:
                item = self.out_q.get()
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
                self._annotate(image, labels)
                t1 = time.monotonic()
                frame.timings["overlay"] = _ms(t0, t1)
                if active is None:
                    active = self._open_sinks(image.shape[1], image.shape[0])
                for sink in list(active):
                    try:
                        sink.write(frame, image, labels)
                    except Exception as e:
                        self._sink_failed(sink, e, active)
                    if getattr(sink, "stop_requested", False):
                        self.request_stop(f"{sink.name} closed")
                t2 = time.monotonic()
                frame.timings["sink"] = _ms(t1, t2)
                if not active:
                    self._drop(frame, "sink_error")
                    if not self.failures:
                        self._fail("every output failed; nothing left to write to")
                    continue
                self.recorder.record_written(frame, t2)
                self.meter.add(t2, _ms(frame.capture_ts, t2), frame.timings["inference"])
        except Exception as e:
            self._fail(f"output thread: {type(e).__name__}: {e}")
            self.forced.set()
            self._drain(self.out_q)
        finally:
            for sink in self.sinks:
                try:
                    sink.close()   # finalizes video files: playable even after a signal
                except Exception as e:   # e.g. the file could not be written: the run says so
                    self._sink_failed(sink, e, [])

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
        labels = np.asarray(self.engine.labels_of(out))[0]
        try:
            self._check_classes(labels)
        except ValueError as e:
            return self._result_failed(frame, e)
        self.bad_results = 0
        return labels, done

    def _result_failed(self, frame: Frame, e: Exception):
        self._drop(frame, "inference_error")
        self.bad_results += 1
        if self.bad_results == 1:
            self.log(f"warning: frame {frame.id}: inference failed: {type(e).__name__}: {e}")
        if self.bad_results == MAX_BAD_INFERENCES:
            self._fail(f"inference failed {self.bad_results} times in a row ({type(e).__name__}: {e})")
            self.request_stop("inference failing")
        return None, 0.0

    def _check_classes(self, labels: np.ndarray) -> None:
        top = int(labels.max(initial=0))
        if top >= len(self.class_names):   # would draw black: say so instead
            raise ValueError(f"the model outputs class {top} but its sidecar lists "
                             f"{len(self.class_names)} classes; re-export the model")

    def _open_sinks(self, width: int, height: int) -> list:
        fps = self.out_fps or self.reader.fps or 25.0
        active = []
        for sink in self.sinks:
            try:
                sink.open(width, height, fps)
                active.append(sink)
            except Exception as e:
                self._sink_failed(sink, e, active)
        return active

    def _sink_failed(self, sink, error: Exception, active: list) -> None:
        """One broken output must not stop the others: switch it off and say so once."""
        msg = str(error).splitlines()[0] if str(error) else type(error).__name__
        self.sink_failures[sink.name] = msg
        self.log(f"error: output {sink.name} failed and is switched off: {msg}")
        if sink in active:
            active.remove(sink)

    def _annotate(self, image: np.ndarray, labels: np.ndarray) -> None:
        if self.legend and labels is not None:
            present = set(np.flatnonzero(np.bincount(labels.ravel().astype(np.int64),
                                                     minlength=len(self.class_names))).tolist())
            draw_legend(image, self.class_names, self.lut, present)
        if self.hud:
            e2e, inf = self.meter.latency_ms()
            draw_hud(image, self.meter.fps(), e2e, inf)

    # ---- main ----------------------------------------------------------------------------
    def run(self) -> int:
        """Run to the end of input or a stop; 0 when it ended cleanly, 1 after a failure."""
        previous = self._install_signal_handlers()
        threads = [threading.Thread(target=self._capture, name="capture", daemon=True),
                   threading.Thread(target=self._inference, name="inference", daemon=True),
                   threading.Thread(target=self._output, name="output", daemon=True)]
        try:
            for t in threads:
                t.start()
            # Short joins keep the main thread responsive to signals.
            while threads[2].is_alive():
                threads[2].join(0.2)
            threads[1].join()
            threads[0].join(timeout=5.0 if not self.forced.is_set() else 0.5)
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
