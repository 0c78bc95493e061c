"""The frame hub: the latest overlay of one camera, handed over by the pipeline's output
thread and read by the viewers in the server's event loop (app/camera.py's `Camera` is the
pipeline's camera; this is what the server keeps of it). JPEG encoding runs in one worker
thread, once per frame however many viewers watch, and only when someone does."""
from __future__ import annotations

import asyncio
import threading
import time

import cv2

from app.hud import RateMeter

SNAPSHOT_WANT_S = 3.0   # after a snapshot request, overlays are drawn this long (the next one is likely)


class FrameHub:
    """One camera's latest overlay: `publish` from any thread, `wait_newer` / `jpeg` in the loop."""

    def __init__(self, name: str, title: str, quality: int = 80):
        self.name, self.title, self.quality = name, title, int(quality)
        self.lock = threading.Lock()
        self.latest = None        # the newest overlay (BGR)
        self.seq = 0              # bumps on every frame; viewers wait for it to change
        self.frame_id = -1
        self.meter = RateMeter()
        self.ended = False
        self.loop = None          # the server's event loop, set when registered
        self._event = None        # loop side: set (and replaced) on every frame
        self._jpeg = (0, None)    # loop side: (seq, bytes) of the latest encode
        self._encoding = None     # loop side: (seq, future) of the encode in flight
        self.viewers = 0          # loop side: MJPEG viewers of this camera connected now
        self.asked_until = 0.0    # monotonic time until which a snapshot request wants overlays

    # -- pipeline side (any thread) ---------------------------------------------------------
    def watched(self) -> bool:
        """Someone looks at this camera's pixels now (a viewer, or a recent snapshot request)."""
        return self.viewers > 0 or time.monotonic() < self.asked_until

    def publish(self, frame, image) -> None:
        """A written frame: its overlay, or None when nobody watched (no pixels drawn); the
        fps and latency of /stats.json count it either way."""
        now = time.monotonic()
        with self.lock:
            self.meter.add(now, (now - frame.capture_ts) * 1000.0, frame.timings.get("inference"))
            self.latest, self.frame_id = image, frame.id
            self.seq += 1
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:
                pass   # the loop is shutting down

    def stats(self) -> dict:
        with self.lock:
            return {**self.meter.snapshot(), "frame": self.frame_id, "title": self.title}

    # -- loop side --------------------------------------------------------------------------
    def _notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait_newer(self, seq: int, timeout: float) -> None:
        if self.seq != seq or self.ended:
            return
        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def snapshot(self, pool, timeout: float = 2.0) -> bytes | None:
        """/snapshot.jpg: the latest overlay; with none (nobody watched), overlays are asked for
        and the next one is awaited, at most `timeout` seconds."""
        self.asked_until = time.monotonic() + SNAPSHOT_WANT_S
        deadline = time.monotonic() + timeout
        while True:
            seq, data = await self.jpeg(pool)
            left = deadline - time.monotonic()
            if data is not None or left <= 0 or self.ended:
                return data
            await self.wait_newer(seq, left)

    async def jpeg(self, pool) -> tuple[int, bytes | None]:
        """The latest frame as JPEG, encoded at most once per frame in the worker thread."""
        with self.lock:
            seq, image = self.seq, self.latest
        if image is None:
            return seq, None
        if self._jpeg[0] == seq:
            return self._jpeg
        if self._encoding is None or self._encoding[0] != seq:
            future = asyncio.get_running_loop().run_in_executor(pool, _encode_jpeg, image, self.quality)
            self._encoding = (seq, future)
        data = await asyncio.shield(self._encoding[1])
        if self._jpeg[0] < seq:
            self._jpeg = (seq, data)
        return seq, data


def _encode_jpeg(image, quality: int) -> bytes | None:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None
