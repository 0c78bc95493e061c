"""Event clips: per camera a ring buffer of the ENCODED overlay stream (H.264 packets, a
keyframe every second) that always holds the pre-roll. An event asks for a clip from
`pre_roll_s` before its start to `post_roll_s` after its end; once the stream has passed that
end the packets from the keyframe at or before the clip's start are written as a fragmented
MP4 (like app/sinks.py's recordings: playable up to its last fragment even if the app dies
while writing; `.part` until complete, then renamed). The clip's start is therefore at most
one keyframe interval early. `--clips-max-mb` keeps the folder under a size, oldest deleted
first. Snapshots (JPEG of the overlay at the event's peak) are written by the same thread.

What the recorder writes and deletes is only its own: files named `<event id>.mp4|.jpg`
(APP_FILE_RE) directly in a camera's folder, never through a symlink. Retention counts and
deletes only those (a file someone else put in the folder is left alone); `.part` files of
that name a killed run left behind are deleted at start. A clip is at most `max_clip_s` long
(the rule's; longer events get the first max_clip_s of video), and the ring of packets is
bounded by MAX_RING_BYTES whatever a pending clip still wants. A clips folder removed during
the run is made again; when it cannot be, a warning at most every LOG_EVERY_S names the file.

Encoding runs in the recorder's own thread behind a small bounded queue: when it falls
behind, frames are skipped (counted), the pipeline never waits.

A camera with a record input (app/recording.py) gets its clips from that stream instead, by
packet copy: the recording hands every packet (as Annex B H.264/HEVC, `add_packet`) to the same
ring, nothing is encoded, and add_frame only moves the rules' clock on (snapshots are still the
overlay's). A packet's time is the stream's own for a file (a camera's two streams share their
timestamps), and for a live input its arrival mapped onto the rules' clock by the detect
frames' (within the pipeline's latency: the pre-roll covers it); a live clip is written once the
rules' clock passes its end, from what the ring holds (a camera that drops right after an event
still gets its clip; packets of one millisecond get increasing times). Streams with B-frames are
written in decode order (IP cameras' main streams have none).
"""
from __future__ import annotations

import io
import os
import queue
import re
import stat
import sys
import threading
import time
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
APP_FILE_RE = re.compile(r"[0-9a-f]+-[0-9a-f]+-[0-9]+\.(mp4|jpg)")   # <event id>.mp4|.jpg (rules.RUN_ID-N)
MAX_CLIP_S = 60.0                # default length cap of one event clip
MAX_RING_BYTES = 64 * 1024 * 1024   # encoded packets kept per camera, pending clips included
CLOSE_WAIT_S = 3.0               # the end of a run waits at most this long for the recorder
LOG_EVERY_S = 10.0               # recorder warnings at most this often


def app_file(name: str) -> bool:
    """A clip or snapshot name the recorder writes (and serves, and may delete)."""
    return APP_FILE_RE.fullmatch(name) is not None


def app_files(folder: Path, parts: bool = False) -> list[tuple[Path, os.stat_result]]:
    """(path, lstat) of the recorder's files in every camera folder of `folder`: regular files
    named APP_FILE_RE (or its `.part`, with parts=True) in real folders; no symlink followed."""
    out = []
    try:
        cams = list(os.scandir(folder))
    except OSError:
        return out
    for cam in cams:
        if not cam.is_dir(follow_symlinks=False):
            continue
        try:
            entries = list(os.scandir(cam.path))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if not (app_file(name) or (parts and name.endswith(".part") and app_file(name[:-5]))):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((Path(entry.path), st))
    return out


class ClipRequest:
    def __init__(self, path: Path, t0: float, t1: float | None = None, t_max: float = float("inf")):
        self.path, self.t0, self.t1, self.t_max = path, t0, t1, t_max

    def due(self, now: float) -> bool:
        return now == float("inf") or self.t_max <= now or (self.t1 is not None and self.t1 <= now)


class ClipRecorder:
    def __init__(self, folder: str | Path, camera: str, keep_s: float, max_mb: float, fps: float = 15.0, log=None):
        self.folder = Path(folder)
        self.camera_dir = self.folder / camera
        prepare_output(self.camera_dir, "--clips-dir", folder=True)
        self.camera_dir.mkdir(parents=True, exist_ok=True)
        self.keep_s = float(keep_s) + KEYFRAME_EVERY_S
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.retention = Retention(self.folder, ("*/*.mp4", "*/*.jpg"), max_bytes=self.max_bytes, name_ok=app_file)
        self.fps = fps
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.stale_parts = self._clean_parts()
        self.tasks: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self.ring: deque = deque()     # (t, pts_ms, annexb bytes, keyframe)
        self.ring_bytes = 0
        self.last_log, self.unlogged = float("-inf"), 0
        self.requests: dict[str, ClipRequest] = {}
        self.lock = threading.Lock()
        self.encoder = None
        self.keys = KeyframeClock()
        self.t_first = None
        self.last_pts = -1
        self.frame_times: dict[int, float] = {}   # pts -> stream time, until its packet comes out
        self.skipped = 0               # frames not encoded because the recorder was behind
        self.written: list[Path] = []
        self.from_record = False       # packets come from the record input (use_record_stream)
        self.raw_format = "h264"       # the ring's Annex B stream, as FFmpeg's demuxer calls it
        self.clock = None              # (rules' time, monotonic) of the latest detect frame
        self.live = False              # record packets timed by their arrival (a live input)
        self.ring_lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"clips-{camera}", daemon=True)
        self.thread.start()

    # -- the record input's packets (app/recording.py's thread) --------------------------------
    def use_record_stream(self, codec: str) -> bool:
        """Clips from the record input by packet copy from now on; False (overlay clips stay)
        for a codec other than H.264 / HEVC."""
        if codec not in ("h264", "hevc"):
            return False
        self.raw_format, self.from_record = codec, True
        return True

    def add_packet(self, data: bytes, keyframe: bool, stream_t: float | None, live: bool) -> None:
        """One record packet (Annex B). The ring stays under MAX_RING_BYTES, whole GOPs dropped."""
        clock = self.clock
        self.live = live
        if live:
            if clock is None:
                return   # before the first detect frame no clip can ask for it
            t = clock[0] + (time.monotonic() - clock[1])
        elif stream_t is None:
            return
        else:
            t = stream_t
        with self.ring_lock:
            if self.ring and t < self.ring[-1][0]:
                t = self.ring[-1][0]   # kept in order (a reconnect's stream starts over)
            self.ring.append((t, int(round(t * 1000)), data, keyframe))
            self.ring_bytes += len(data)
            while self.ring_bytes > MAX_RING_BYTES and len(self.ring) > 1:
                self.ring_bytes -= len(self.ring.popleft()[2])
                while self.ring and not self.ring[0][3]:
                    self.ring_bytes -= len(self.ring.popleft()[2])

    # -- called from the pipeline's output thread: never waits --------------------------------
    def add_frame(self, t: float, image: np.ndarray) -> None:
        if self.from_record:   # nothing to encode: the rules' clock moves on
            self.clock = (t, time.monotonic())
            try:
                self.tasks.put_nowait(("tick", t, None))
            except queue.Full:
                pass   # the next frame's tick does it
            return
        try:
            self.tasks.put_nowait(("frame", t, image))
        except queue.Full:
            self.skipped += 1

    def clip_path(self, event_id: str) -> Path:
        return self.camera_dir / f"{event_id}.mp4"

    def snapshot_path(self, event_id: str) -> Path:
        return self.camera_dir / f"{event_id}.jpg"

    def start_clip(self, event_id: str, t0: float, max_s: float = MAX_CLIP_S) -> Path:
        with self.lock:
            self.requests[event_id] = ClipRequest(self.clip_path(event_id), t0, t_max=t0 + max_s)
        return self.clip_path(event_id)

    def end_clip(self, event_id: str, t1: float) -> None:
        with self.lock:
            if event_id in self.requests:
                self.requests[event_id].t1 = t1

    def snapshot(self, event_id: str, image: np.ndarray) -> Path:
        try:
            self.tasks.put(("snapshot", event_id, image), timeout=1.0)   # once per event: may wait a little
        except queue.Full:
            self.skipped += 1
        return self.snapshot_path(event_id)

    def close(self) -> None:
        """Write what is pending; waits at most CLOSE_WAIT_S (a lost folder, a stuck disk)."""
        deadline = time.monotonic() + CLOSE_WAIT_S
        try:
            self.tasks.put(("close", None, None), timeout=CLOSE_WAIT_S)
        except queue.Full:
            pass
        self.thread.join(timeout=max(0.1, deadline - time.monotonic()))
        if self.thread.is_alive():
            self.log(f"warning: clips {self.camera_dir}: still writing after {CLOSE_WAIT_S:g} s; not waiting longer")
        if self.unlogged:
            self.log(f"warning: clips {self.camera_dir}: {self.unlogged} more failures not logged")

    def _warn(self, message: str) -> None:
        """A recorder warning, at most one per LOG_EVERY_S (the rest counted)."""
        now = time.monotonic()
        if now - self.last_log < LOG_EVERY_S:
            self.unlogged += 1
            return
        more = f" ({self.unlogged} more since the last warning)" if self.unlogged else ""
        self.last_log, self.unlogged = now, 0
        self.log(f"warning: {message}{more}")

    # -- the recorder's thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            kind, a, b = self.tasks.get()
            if kind == "close":
                try:
                    self._flush()
                except Exception as e:   # an encoder problem: the clips get what was encoded
                    self._warn(f"clips {self.camera_dir}: {type(e).__name__}: {e}")
                self._write_due(float("inf"))
                return
            try:
                if kind == "tick":   # clips from the record input: packets up to the rules' clock
                    self._trim(a)
                    with self.ring_lock:
                        newest = self.ring[-1][0] if self.ring else None
                    if self.live:   # a packet arriving later is later: a camera gone after the end ends the clip
                        self._write_due(a)
                    elif newest is not None:   # a file's packets may lag the clock: wait for them
                        self._write_due(min(a, newest))
                elif kind == "frame":
                    self._encode(a, b)
                    if self.ring:   # clips whose end the encoded stream has passed
                        self._write_due(self.ring[-1][0])
                else:
                    self._write_snapshot(a, b)
            except Exception as e:   # a full disk, an encoder problem: say so, go on without it
                self._warn(f"clips {self.camera_dir}: {type(e).__name__}: {e}")

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
        data = bytes(packet)
        self.ring.append((t, packet.pts, data, packet.is_keyframe))
        self.ring_bytes += len(data)

    def _flush(self) -> None:
        if self.encoder is not None:
            for packet in self.encoder.encode(None):
                self._keep(packet)

    def _trim(self, now: float) -> None:
        """Drop whole GOPs older than keep_s, unless a pending clip still needs them; past
        MAX_RING_BYTES the oldest GOPs go whatever a clip wants (it starts later)."""
        with self.lock:
            oldest_needed = min([r.t0 for r in self.requests.values()], default=now - self.keep_s)
        limit = min(now - self.keep_s, oldest_needed)
        with self.ring_lock:   # the record input's thread appends meanwhile
            keys = [i for i, p in enumerate(self.ring) if p[3] and p[0] <= limit]
            drop = keys[-1] if keys else 0
            if self.ring_bytes > MAX_RING_BYTES:
                size, over = 0, self.ring_bytes - MAX_RING_BYTES
                for i, p in enumerate(self.ring):
                    if i > drop and p[3] and size >= over:
                        drop = i
                        break
                    size += len(p[2])
            for _ in range(drop):
                self.ring_bytes -= len(self.ring.popleft()[2])

    def _write_due(self, now: float) -> None:
        with self.lock:
            due = [(eid, r) for eid, r in self.requests.items() if r.due(now)]
            for eid, _ in due:
                del self.requests[eid]
        for _, request in due:
            try:
                self._write_clip(request)
            except Exception as e:   # a lost folder, a full disk: this clip is lost, the next may not be
                self._warn(f"clips: {request.path}: {type(e).__name__}: {getattr(e, 'strerror', None) or e}")

    def _write_clip(self, request: ClipRequest) -> None:
        import av

        t1 = min(request.t1 if request.t1 is not None else float("inf"), request.t_max)
        with self.ring_lock:
            packets = list(self.ring)
        start = 0
        for i, p in enumerate(packets):
            if p[3] and p[0] <= request.t0:
                start = i
        chosen = [p for p in packets[start:] if p[0] <= t1]
        while chosen and not chosen[0][3]:
            chosen.pop(0)     # a clip must begin at a keyframe
        if not chosen:
            self._warn(f"clips: no video kept for {request.path.name}")
            return
        self.camera_dir.mkdir(parents=True, exist_ok=True)   # made again if it was removed
        part = request.path.with_name(request.path.name + ".part")
        source = av.open(io.BytesIO(b"".join(p[2] for p in chosen)), format=self.raw_format)
        try:
            with av.open(str(part), "w", format="mp4", options=FRAGMENTED_MP4) as out:
                stream = out.add_stream_from_template(source.streams.video[0])
                stream.time_base = MS
                first, pts = chosen[0][1], -1
                n = 0
                for packet in source.demux(source.streams.video[0]):
                    if packet.size == 0 or n >= len(chosen):
                        continue
                    # Live packets are timed by arrival: two in the same millisecond still get
                    # increasing timestamps (the MP4 muxer refuses a repeated one).
                    pts = max(chosen[n][1] - first, pts + 1)
                    packet.pts = packet.dts = pts
                    packet.time_base = MS
                    packet.stream = stream
                    out.mux(packet)
                    n += 1
        finally:
            source.close()
        os.replace(part, request.path)
        self.written.append(request.path)
        self._retention(keep=request.path)

    def _write_snapshot(self, event_id: str, image: np.ndarray) -> None:
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        path = self.snapshot_path(event_id)
        tmp = path.with_name(path.name + ".part")
        try:
            self.camera_dir.mkdir(parents=True, exist_ok=True)   # made again if it was removed
            tmp.write_bytes(data.tobytes())
            os.replace(tmp, path)
        except OSError as e:
            raise OSError(e.errno, f"{path}: {e.strerror}") from None
        self._retention(keep=path)

    def _clean_parts(self) -> int:
        """Delete the `.part` files a killed run left in this camera's folder; how many."""
        n = 0
        for path, _ in app_files(self.folder, parts=True):
            if path.parent == self.camera_dir and path.name.endswith(".part"):
                path.unlink(missing_ok=True)
                n += 1
        if n:
            self.log(f"clips {self.camera_dir}: deleted {n} unfinished file(s) a stopped run left")
        return n

    def _retention(self, keep: Path | None = None) -> None:
        """The recorder's own clips and snapshots (every camera's) deleted oldest first until
        under --clips-max-mb (app/retention.py: only names the recorder writes, never through a
        link, never a .part being written); `keep`, the file just written, stays even when it
        alone is over the cap (an event names it)."""
        self.retention.sweep(protect=[keep] if keep is not None else ())
        try:
            alone = keep is not None and keep.stat().st_size > self.max_bytes
        except OSError:
            alone = False
        if alone:
            self._warn(f"clips: {keep.name} alone is over --clips-max-mb {self.max_bytes / 1024 / 1024:g}; kept "
                       "until the next one (shorten the rule's max_clip_s, or raise the cap)")
