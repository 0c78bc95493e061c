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


class BatchScheduler:
    def __init__(self, cameras: list, batch_size: int, timeout_s: float | None = None):
        self.cameras = list(cameras)
        self.batch_size = max(1, int(batch_size))
        self.timeout_s = default_timeout_s(self.cameras) if timeout_s is None else max(0.0, float(timeout_s))
        self.ready = threading.Condition()   # capture threads notify after every put
        self._next = 0                       # round-robin: the camera to look at first

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
        """-> a list of 1..batch_size Frames of different cameras, or None when every camera
        has finished (or a forced stop finds nothing waiting)."""
        batch, served = [], set()
        deadline = idle_since = None
        n = len(self.cameras)
        with self.ready:
            while True:
                for k in range(n):
                    if len(batch) >= self.batch_size:
                        break
                    i = (self._next + k) % n
                    cam = self.cameras[i]
                    if i in served or cam.finished:
                        continue
                    try:
                        item = cam.in_q.get_nowait()
                    except queue.Empty:
                        continue
                    if item is END:
                        cam.finished = True
                        continue
                    batch.append(item)
                    served.add(i)
                now = time.monotonic()
                if len(batch) >= self.batch_size:
                    break
                if batch:
                    if deadline is None:
                        deadline = now + self.timeout_s
                    others = [c for j, c in enumerate(self.cameras) if j not in served and self._expected(c, now)]
                    if not others or now >= deadline or forced.is_set():
                        break
                    self.ready.wait(min(deadline - now, _POLL_S))
                else:
                    if all(c.finished for c in self.cameras):
                        return None
                    if forced.is_set():
                        # Forced: a capture thread may be stuck in a read; give the others one
                        # poll to hand in what they had (to drop it) and their end marker.
                        idle_since = idle_since or now
                        if now - idle_since >= _POLL_S:
                            return None
                    self.ready.wait(_POLL_S)
        # Next batch starts after the last camera served in this one.
        last = max(served, key=lambda j: (j - self._next) % n)
        self._next = (last + 1) % n
        return batch
