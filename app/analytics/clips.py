"""Event clips: per camera a ring buffer of the ENCODED overlay stream (H.264 packets, a
keyframe every second) that always holds the pre-roll. An event asks for a clip from
`pre_roll_s` before its start to `post_roll_s` after its end; once the stream has passed that
end the packets from the keyframe at or before the clip's start are written as a fragmented
MP4 (like app/sinks.py's recordings: playable up to its last fragment even if the app dies
while writing; `.part` until complete, then renamed). The clip's start is therefore at most
one keyframe interval early. `--clips-max-mb` keeps the folder under a size, oldest deleted
first. Snapshots (JPEG of the overlay at the event's peak) are written by the same thread.

Encoding runs in the recorder's own thread behind a small bounded queue: when it falls
behind, frames are skipped (counted), the pipeline never waits.
"""
from __future__ import annotations

import io
import os
import queue
import sys
import threading
from collections import deque
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from app.encoding import KEYFRAME_EVERY_S, KeyframeClock, force_keyframe, h264_encoder, pad_to_even, set_up_encoder
from app.retention import Retention
from core.validate import prepare_output

QUEUE_FRAMES = 8
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}
MS = Fraction(1, 1000)


class ClipRequest:
    def __init__(self, path: Path, t0: float, t1: float | None = None):
        self.path, self.t0, self.t1 = path, t0, t1


class ClipRecorder:
    def __init__(self, folder: str | Path, camera: str, keep_s: float, max_mb: float, fps: float = 15.0, log=None):
        self.folder = Path(folder)
        self.camera_dir = self.folder / camera
        prepare_output(self.camera_dir, "--clips-dir", folder=True)
        self.camera_dir.mkdir(parents=True, exist_ok=True)
        self.keep_s = float(keep_s) + KEYFRAME_EVERY_S
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.retention = Retention(self.folder, ("*/*.mp4", "*/*.jpg"), max_bytes=self.max_bytes)
        self.fps = fps
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.tasks: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self.ring: deque = deque()     # (t, pts_ms, annexb bytes, keyframe)
        self.requests: dict[str, ClipRequest] = {}
        self.lock = threading.Lock()
        self.encoder = None
        self.keys = KeyframeClock()
        self.t_first = None
        self.last_pts = -1
        self.frame_times: dict[int, float] = {}   # pts -> stream time, until its packet comes out
        self.skipped = 0               # frames not encoded because the recorder was behind
        self.written: list[Path] = []
        self.thread = threading.Thread(target=self._run, name=f"clips-{camera}", daemon=True)
        self.thread.start()

    # -- called from the pipeline's output thread: never waits --------------------------------
    def add_frame(self, t: float, image: np.ndarray) -> None:
        try:
            self.tasks.put_nowait(("frame", t, image))
        except queue.Full:
            self.skipped += 1

    def clip_path(self, event_id: str) -> Path:
        return self.camera_dir / f"{event_id}.mp4"

    def snapshot_path(self, event_id: str) -> Path:
        return self.camera_dir / f"{event_id}.jpg"

    def start_clip(self, event_id: str, t0: float) -> Path:
        with self.lock:
            self.requests[event_id] = ClipRequest(self.clip_path(event_id), t0)
        return self.clip_path(event_id)

    def end_clip(self, event_id: str, t1: float) -> None:
        with self.lock:
            if event_id in self.requests:
                self.requests[event_id].t1 = t1

    def snapshot(self, event_id: str, image: np.ndarray) -> Path:
        self.tasks.put(("snapshot", event_id, image))   # once per event: may wait for a slot
        return self.snapshot_path(event_id)

    def close(self) -> None:
        self.tasks.put(("close", None, None))
        self.thread.join(timeout=30)

    # -- the recorder's thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            kind, a, b = self.tasks.get()
            try:
                if kind == "frame":
                    self._encode(a, b)
                    if self.ring:   # clips whose end the encoded stream has passed
                        self._write_due(self.ring[-1][0])
                elif kind == "snapshot":
                    self._write_snapshot(a, b)
                else:
                    self._flush()
                    self._write_due(float("inf"))
                    return
            except Exception as e:   # a full disk, an encoder problem: say so, go on without it
                self.log(f"warning: clips {self.camera_dir}: {type(e).__name__}: {e}")

    def _open_encoder(self, width: int, height: int) -> None:
        import av

        codec = h264_encoder(log=self.log)
        ctx = av.CodecContext.create(codec, "w")
        set_up_encoder(ctx, codec, width, height, self.fps, x264={"preset": "veryfast", "crf": "26"})
        ctx.time_base = MS
        ctx.framerate = Fraction(self.fps).limit_denominator(1001)
        ctx.max_b_frames = 0          # one packet per frame, in order: pts = dts
        ctx.open()
        self.encoder = ctx

    def _encode(self, t: float, image: np.ndarray) -> None:
        import av

        image = np.ascontiguousarray(pad_to_even(image))
        if self.encoder is None:
            self._open_encoder(image.shape[1], image.shape[0])
            self.t_first = t
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        pts = max(int(round((t - self.t_first) * 1000)), self.last_pts + 1)
        self.last_pts = pts
        frame.pts, frame.time_base = pts, MS
        if self.keys.due(t):     # a keyframe every second of stream time, whatever the frame rate
            force_keyframe(frame)
        self.frame_times[pts] = t
        for packet in self.encoder.encode(frame):
            self._keep(packet)
        self._trim(t)

    def _keep(self, packet) -> None:
        t = self.frame_times.pop(packet.pts, None)
        if t is None:
            t = self.t_first + packet.pts / 1000.0
        self.ring.append((t, packet.pts, bytes(packet), packet.is_keyframe))

    def _flush(self) -> None:
        if self.encoder is not None:
            for packet in self.encoder.encode(None):
                self._keep(packet)

    def _trim(self, now: float) -> None:
        """Drop whole GOPs older than keep_s, unless a pending clip still needs them."""
        with self.lock:
            oldest_needed = min([r.t0 for r in self.requests.values()], default=now - self.keep_s)
        limit = min(now - self.keep_s, oldest_needed)
        keys = [i for i, p in enumerate(self.ring) if p[3] and p[0] <= limit]
        for _ in range(keys[-1] if keys else 0):
            self.ring.popleft()

    def _write_due(self, now: float) -> None:
        with self.lock:
            due = [(eid, r) for eid, r in self.requests.items() if r.t1 is not None and (r.t1 <= now or now == float("inf"))]
            if now == float("inf"):
                due += [(eid, r) for eid, r in self.requests.items() if r.t1 is None]
            for eid, _ in due:
                del self.requests[eid]
        for _, request in due:
            self._write_clip(request)

    def _write_clip(self, request: ClipRequest) -> None:
        import av

        t1 = request.t1 if request.t1 is not None else float("inf")
        packets = list(self.ring)
        start = 0
        for i, p in enumerate(packets):
            if p[3] and p[0] <= request.t0:
                start = i
        chosen = [p for p in packets[start:] if p[0] <= t1]
        while chosen and not chosen[0][3]:
            chosen.pop(0)     # a clip must begin at a keyframe
        if not chosen:
            self.log(f"warning: clips: no video kept for {request.path.name}")
            return
        part = request.path.with_name(request.path.name + ".part")
        source = av.open(io.BytesIO(b"".join(p[2] for p in chosen)), format="h264")
        try:
            with av.open(str(part), "w", format="mp4", options=FRAGMENTED_MP4) as out:
                stream = out.add_stream_from_template(source.streams.video[0])
                stream.time_base = MS
                first = chosen[0][1]
                n = 0
                for packet in source.demux(source.streams.video[0]):
                    if packet.size == 0 or n >= len(chosen):
                        continue
                    packet.pts = packet.dts = chosen[n][1] - first
                    packet.time_base = MS
                    packet.stream = stream
                    out.mux(packet)
                    n += 1
        finally:
            source.close()
        os.replace(part, request.path)
        self.written.append(request.path)
        self._retention()

    def _write_snapshot(self, event_id: str, image: np.ndarray) -> None:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        path = self.snapshot_path(event_id)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data.tobytes())
        os.replace(tmp, path)
        self._retention()

    def _retention(self) -> None:
        """Oldest clips and snapshots (every camera's) deleted first until under --clips-max-mb
        (app/retention.py: never through a link, never a .part being written)."""
        self.retention.sweep()
