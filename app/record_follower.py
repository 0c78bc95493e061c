"""`overlay_picture: record`: a camera's record input decoded too, so that its outputs show the
overlay on the full-size picture (docs/cameras.md, "The overlay on the full-size picture").

Inference, scene analytics and the labels stay the detect input's. Each detect frame whose
pixels something shows is paired with the record frame of the nearest timestamp at or before
its own, and the outputs get the overlay drawn on that picture (the labels upsampled
nearest-neighbour to its size, core/overlay.py).

    file record input   decoded forward, in the camera's capture thread, until its timestamp
                        passes the detect frame's (the two streams of a camera share
                        timestamps): deterministic; two decoded frames kept
    live record input   read by its own thread (reconnecting like any live source,
                        app/sources.py's open_source) into a ring of RING decoded frames
                        stamped with their arrival; a detect frame takes the newest that
                        arrived at or before it was captured. While no output shows this
                        camera's pixels it decodes keyframes only (one per GOP); shown again,
                        its frames count from the second keyframe on (their references whole)

Pixels on demand: a file's record frames are decoded only for frames something shows; a frame
captured while nothing did and shown after all (a viewer came meanwhile, the API's lazy
FrameResult.overlay) gets the detect picture scaled up instead (`stand_in`).

It is a Sink of its camera (like app/recording.py's Recording) so that it closes with the
camera and its counter reaches the run summary; it takes no pixels. Recording stays packet
copy: this is a second opening of the record input, and its decoded frames are counted here.
"""
from __future__ import annotations

import collections
import threading
import time

import cv2
import numpy as np

from app.frames import Frame, ReadError, Sink
from app.sources import decoder_of, inner_reader, live_by_kind, open_source, size_of

RING = 4               # live: decoded record frames kept (about 0.25 s at 15 fps)
TS_SLACK = 1e-3        # s: two timestamps this close are the same instant
MAX_BAD_READS = 30     # unreadable record frames in a row before it counts as ended


class RecordFollower(Sink):
    """A camera's record input, decoded for overlays on its full-size picture (module doc)."""

    def __init__(self, spec: str, cam, down_ok: bool = False):
        self.live = live_by_kind(spec)
        # A file is paired by its timestamps: never paced (--realtime paces the detect input).
        options = cam if self.live else cam.model_copy(update={"realtime": False})
        self.reader = open_source(spec, options, down_ok=down_ok, pictures=True)
        self.description = self.reader.description
        self.decoder = decoder_of(self.reader)
        self.name = f"overlay picture (record input decoded) {self.description}"
        self.decoded = 0                  # record frames decoded (recording's own count stays 0)
        self.shows = lambda: True         # the pipeline's: does an output show this camera's pixels now
        self.keyframes_only = False       # live: decoding keyframes only (nothing shows pixels)
        self._lock = threading.Lock()
        self._closed = False
        self._begun = False               # file: its first frame read
        self._before = self._next = None  # file: (ts, picture) at or before the last asked, the one after
        self._ring = collections.deque(maxlen=RING)   # live: (arrival time, picture)
        self._converted = (None, None)    # (picture, its BGR at picture_size): converted once
        self._stop = threading.Event()
        # The size the stream declares (a live input down at start: its first frame's).
        self.picture_size = size_of(self.reader)
        self.thread = None
        if self.live:
            self.thread = threading.Thread(target=self._follow, name=f"follow-{cam.name}", daemon=True)
            self.thread.start()

    def wants_pixels(self) -> bool:
        return False   # it gives pictures; it takes none

    def write(self, frame, overlay_bgr, labels) -> None:
        pass

    # ---- pairing -----------------------------------------------------------------------
    def picture_for(self, frame: Frame) -> np.ndarray | None:
        """The record picture to show for `frame` (uint8 BGR at picture_size), or None when
        there is none (a live input not up yet)."""
        with self._lock:
            if self._closed:
                return None
            picture = self._from_ring(frame.capture_ts) if self.live else self._from_file(frame.source_ts)
            if picture is None:
                return None
            if self.picture_size is None:
                self.picture_size = (picture.width, picture.height)
            if self._converted[0] is not picture:
                w, h = self.picture_size
                bgr = picture.bgr() if (picture.width, picture.height) == (w, h) else picture.bgr_at(w, h)
                self._converted = (picture, bgr)
            return self._converted[1]

    def stand_in(self, image: np.ndarray) -> np.ndarray:
        """A frame with no record picture (captured while nothing showed its pixels): its detect
        picture scaled to picture_size, so that every frame an output gets has one size."""
        if self.picture_size is None or tuple(self.picture_size) == image.shape[1::-1]:
            return image
        return cv2.resize(image, tuple(self.picture_size), interpolation=cv2.INTER_LINEAR)

    def _from_file(self, ts: float | None):
        """Decode forward until the next record frame is later than `ts` (without timestamps:
        one frame per call); -> the one at or before it (the first, if none is)."""
        if not self._begun:
            self._begun, self._next = True, self._read()
        while self._next is not None and (ts is None or self._next[0] is None or self._next[0] <= ts + TS_SLACK):
            self._before, self._next = self._next, self._read()
            if ts is None or self._before[0] is None:
                break
        got = self._before or self._next
        return None if got is None else got[1]

    def _from_ring(self, captured: float):
        if not self._ring:
            return None
        return next((p for t, p in reversed(self._ring) if t <= captured), self._ring[0][1])

    def _read(self):
        """The next record frame -> (timestamp, picture), None at the end."""
        for _ in range(MAX_BAD_READS):
            try:
                got = self.reader.read()
            except ReadError:
                continue   # a bad frame: the next one
            if got is None:
                return None
            self.decoded += 1
            return got[1], got[0]
        return None

    # ---- live: the follower thread -----------------------------------------------------
    def _follow(self) -> None:
        keys_to_wait = 0   # back from keyframes only: frames until the references are all there again
        while not self._stop.is_set():
            watched = self.shows()
            if watched == self.keyframes_only:   # it changes: set the decoder of the current connection
                self.keyframes_only = not watched
                if watched:   # P-frames may miss references skipped meanwhile: from the 2nd keyframe on
                    keys_to_wait = 2
                    with self._lock:
                        self._ring.clear()   # stale keyframes: the stand-in until then
            self._keyframes_only(self.keyframes_only)   # (a reconnect's new decoder too)
            try:
                got = self._read()
            except Exception:   # a closed reader under a stop: the end
                return
            if got is None:
                return
            if keys_to_wait:
                keys_to_wait -= bool(got[1].frame.key_frame)
                if keys_to_wait:
                    continue
            with self._lock:
                self._ring.append((time.monotonic(), got[1]))

    def _keyframes_only(self, on: bool) -> None:
        """Nothing shows this camera's pixels: its decoder skips all but keyframes (the
        current connection's; a reconnect's new decoder decodes every frame)."""
        setter = getattr(inner_reader(self.reader), "keyframes_only", None)
        if setter is not None:
            setter(on)

    # ---- the camera's output protocol --------------------------------------------------
    def counters(self) -> dict:
        return {"decoded frames": self.decoded}

    def close(self) -> None:
        self._stop.set()
        interrupt = getattr(self.reader, "interrupt", None)
        if interrupt is not None:
            interrupt()
        if self.thread is not None:
            self.thread.join(5.0)
        with self._lock:
            self._closed = True
            self._ring.clear()
            self._before = self._next = None
            self.reader.close()

    def describe(self) -> str:
        """On the camera's start line."""
        size = f"{self.picture_size[0]}x{self.picture_size[1]}, " if self.picture_size else ""
        return f"overlays on the full-size picture: the record input decoded too ({size}{self.decoder or 'decoder ?'})"
