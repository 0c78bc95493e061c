"""Cross-camera batching: which frames go into the engine's next infer() call.

    camera capture threads ─newest (live) / next (file) frame─▶ one queue per camera
    BatchScheduler.next_batch() ─▶ up to batch_size frames, at most one per camera

A batch is run as soon as it is full, or when every camera that could still add a frame
has added one, or when the deadline passes: `timeout_s` after its first frame was taken
(default half a frame interval of the fastest camera, `--batch-timeout-ms` overrides). So it
never waits for a camera that has nothing new:
- a camera reconnecting after an outage (its reader says `down`) is left out,
- a live camera with no frame for 2.5 frame intervals (stalled, not yet declared lost) is
  not waited for either; its next frame joins the next batch,
- a camera at its end is finished once its end marker comes through.
Round-robin: each batch starts looking at the camera after the last one served, so with
more cameras than the batch holds (a batch-1 model serving many cameras) every camera gets
its turn.

Cameras join (`add`) and leave (their end marker) while the others run: a camera whose end
marker came through leaves the rotation and is handed to the inference thread once
(`take_finished`), which ends its output. The batch size follows the number of cameras (the
engine's `batch_limit(n)`). The run ends when no camera is left, unless one is being replaced
(`hold`); after that `add` refuses.
"""
from __future__ import annotations

import queue
import threading
import time

END = object()            # a camera's end-of-stream marker in its input queue
DEFAULT_FPS = 25.0        # for the deadline and staleness when a source has no rate
STALE_INTERVALS = 2.5     # a live camera this many frame intervals silent is not waited for
_POLL_S = 0.2             # how often an idle wait checks for a forced stop


def default_timeout_s(cameras) -> float:
    """Half a frame interval of the fastest camera: a batch adds at most that much latency,
    and with frames arriving at random phases about half the others make it in."""
    fastest = max((c.fps or DEFAULT_FPS for c in cameras), default=DEFAULT_FPS)
    return 0.5 / fastest


class SchedulerClosed(RuntimeError):
    """A camera was added after the run ended (no camera was left)."""


class BatchScheduler:
    def __init__(self, cameras: list, batch_limit, timeout_s: float | None = None):
        """batch_limit: frames per batch, an int or the engine's batch_limit(cameras) -> int."""
        self.cameras = list(cameras)         # in rotation order: the first is looked at first
        self.batch_limit = batch_limit if callable(batch_limit) else (lambda n, size=int(batch_limit): size)
        self.given_timeout_s = timeout_s
        self.ready = threading.Condition()   # capture threads notify after every put
        self._finished: list = []            # cameras whose end came through, not yet taken
        self.holds = 0                       # > 0: a camera is being replaced; no camera left is no end
        self.closed = False                  # the run ended: no camera may join
        self.beat = time.monotonic()         # the last pass of next_batch's loop (idle polls too)
        self._resize()

    def _resize(self) -> None:
        if not self.cameras:
            return   # keeps the last sizes (a run's summary may read them)
        self.batch_size = max(1, int(self.batch_limit(len(self.cameras))))
        t = self.given_timeout_s
        self.timeout_s = default_timeout_s(self.cameras) if t is None else max(0.0, float(t))

    def add(self, cam) -> None:
        """A camera joins the rotation (its capture thread may already be putting frames)."""
        with self.ready:
            if self.closed:
                raise SchedulerClosed(f"camera {cam.name}: the run has ended")
            self.cameras.append(cam)
            self._resize()
            self.ready.notify_all()

    def take_finished(self) -> list:
        """The cameras whose end marker came through since the last call (each once)."""
        with self.ready:
            done, self._finished = self._finished, []
            return done

    def hold(self, on: bool = True) -> None:
        """While held, a rotation with no camera left does not end the run (a camera is being
        replaced); `hold(False)` releases."""
        with self.ready:
            self.holds += 1 if on else -1
            self.ready.notify_all()

    def notify(self) -> None:
        with self.ready:
            self.ready.notify_all()

    def _expected(self, cam, now: float) -> bool:
        """Could this camera add a frame to the batch being gathered soon?"""
        if cam.finished or cam.down():
            return False
        if not cam.live:
            return True   # a file's next frame is being decoded (its end marker ends it)
        interval = 1.0 / (cam.fps or DEFAULT_FPS)
        return cam.last_capture is not None and now - cam.last_capture < STALE_INTERVALS * interval

    def next_batch(self, forced: threading.Event) -> list | None:
        """-> a list of 1..batch_size Frames of different cameras; [] when nothing is ready but a
        camera has ended (take_finished names it); None when no camera is left (or a forced stop
        finds nothing waiting): the run is over."""
        batch, served = [], []
        deadline = idle_since = None
        with self.ready:
            while True:
                for cam in self.cameras:
                    if len(batch) >= self.batch_size:
                        break
                    if cam in served or cam.finished:
                        continue
                    try:
                        item = cam.in_q.get_nowait()
                    except queue.Empty:
                        continue
                    if item is END:
                        cam.finished = True
                        self._finished.append(cam)
                        continue
                    batch.append(item)
                    served.append(cam)
                now = self.beat = time.monotonic()
                if len(batch) >= self.batch_size:
                    break
                if batch:
                    if deadline is None:
                        deadline = now + self.timeout_s
                    others = [c for c in self.cameras if c not in served and self._expected(c, now)]
                    if not others or now >= deadline or forced.is_set():
                        break
                    self.ready.wait(min(deadline - now, _POLL_S))
                    continue
                self._leave()
                if self._finished:
                    return []
                if not self.cameras and self.holds <= 0:
                    self.closed = True
                    return None
                if forced.is_set():
                    # Forced: a capture thread may be stuck in a read; give the others one
                    # poll to hand in what they had (to drop it) and their end marker.
                    idle_since = idle_since or now
                    if now - idle_since >= _POLL_S:
                        self.closed = True
                        return None
                self.ready.wait(_POLL_S)
            # Next batch starts after the last camera served in this one.
            i = self.cameras.index(served[-1]) + 1
            self.cameras = self.cameras[i:] + self.cameras[:i]
            self._leave()
        return batch

    def _leave(self) -> None:
        """Finished cameras leave the rotation."""
        if any(c.finished for c in self.cameras):
            self.cameras = [c for c in self.cameras if not c.finished]
            self._resize()
