"""Sinks (`--output`, repeatable): where the overlaid frames go, each a `Sink` (app/frames.py).

    display                   an OpenCV window (q or Esc stops the run)
    out.mp4 / .mkv / .avi     a video file: H.264 (mp4, mkv) or MPEG-4 Part 2 (avi) through
                              PyAV/FFmpeg; OpenCV's writer if PyAV cannot
    frames/                   a folder of PNG overlays (`--save-labels`: raw label maps too)
    http://@:8080             MJPEG stream + a small live page (app/http_sink.py, app/server/)
    rtsp://HOST:PORT/PATH     RTSP push (app/rtsp_out.py, the RTSP issue)
    null                      nothing (benchmarks)

`open_sink(spec, camera settings, live)` picks one from one table, SINKS. Sinks are opened on
the first frame (its size).
"""
from __future__ import annotations

import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from app.display import display_problem, gui_available  # noqa: F401 (gui_available: tests)
from app.encoding import KeyframeClock, even_size, force_keyframe, h264_encoder, pad_to_even, set_up_encoder
from app.frames import Sink
from app.retention import is_full
from app.settings import CameraSettings
from core.validate import prepare_output
from core.errors import BisenetError, SetupError

VIDEO_OUTPUT_SUFFIXES = {".mp4": "h264", ".mkv": "h264", ".mov": "h264", ".avi": "mpeg4"}
CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".avi": "avi"}
IMAGE_OUTPUT_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}   # an output path with one: a folder of images


class SinkError(BisenetError, RuntimeError):
    """An output that cannot be used; one line that says what to do."""


class NullSink(Sink):
    """Nothing: no overlay is drawn for it (labels, analytics and the counts still run)."""

    name = "null"

    def wants_pixels(self) -> bool:
        return False

    def write(self, frame, overlay_bgr, labels) -> None:
        pass


class DisplaySink(Sink):
    """An OpenCV window. `stop_requested` turns True on q or Esc; the pipeline then stops."""

    name = "display"

    def __init__(self, title: str = "bisenet"):
        check_display()   # `bisenet run` also probes a window, before anything starts
        self.title = title
        self.stop_requested = False

    def open(self, width, height, fps) -> None:
        cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        cv2.resizeWindow(self.title, width, height)

    def write(self, frame, overlay_bgr, labels) -> None:
        cv2.imshow(self.title, overlay_bgr)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.stop_requested = True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


def check_display(probe: bool = False) -> None:
    """SinkError (one line, exit 2) when no window can open here (display_problem)."""
    problem = display_problem(probe)
    if problem:
        raise SinkError(f"--output display: {problem}; use --output http://@:8080 (a browser) or out.mp4")


def check_save_labels(cam: CameraSettings) -> None:
    """--save-labels writes into folder outputs only: with none it would be silently ignored."""
    if cam.save_labels and not any(sink_kind(spec) == "folder" for spec in cam.output):
        raise SinkError(f"--save-labels: the raw label maps go into a folder output (FOLDER/labels/), and "
                        f"{cam.name} has none ({', '.join(cam.output)}); add --output frames/ or leave --save-labels out")


# mp4/mov are written fragmented: an empty index up front, then one self-contained fragment
# (moof + mdat) per keyframe, flushed to the file as it is written. A SIGKILL or power loss
# leaves a file that plays up to its last complete fragment; a keyframe every second bounds
# the loss to about a second plus the encoder's delay (docs/app.md). default_base_moof is the
# layout browsers' Media Source Extensions expect; players read it like any mp4.
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


class VideoFileSink(Sink):
    """A video file through PyAV (libx264 for mp4/mkv, mpeg4 for avi). Files: frame n at n/fps.
    Live sources: each frame at its capture time (ms), so drops do not speed the video up.
    close() flushes the encoder and writes the trailer: the file is playable after a signal,
    and mp4/mkv stay readable up to the last second or so even after a kill.

    segment_s: a new file every segment_s of stream time, out.<UTC start time>.mp4 (each its
    own encoder: it starts with a keyframe and plays alone), the closed ones kept under
    retain_gb and younger than retain_days, oldest deleted first (app/retention.py). A full
    disk pauses the output (one line), counts the frames not written, and tries again every
    few seconds in a new file named by its start time (out.<time>.mp4 beside out.mp4)."""

    def __init__(self, path: str | Path, live: bool = False, bitrate: int | None = None,
                 segment_s: float | None = None, retain_days: float | None = None, retain_gb: float | None = None,
                 log=None):
        from app.retention import NameClock, Pause, Retention, timed_glob

        self.path = Path(path)
        self.name = str(self.path)
        self.live = live
        self.bitrate = bitrate
        self.segment_s = segment_s
        self.container = None
        self._file = None      # the file object PyAV writes through
        self.stream = None
        self.writer = None     # the OpenCV fallback
        self.count = 0         # frames written, in all
        self.current = None    # the file being written
        self._size = None      # (width, height, fps) of open()
        self._seg_t0 = None    # stream time of the current file's first frame
        self._seg_count = 0
        self._t0 = None
        self._last_pts = -1
        self._keys = KeyframeClock()
        self.fragmented = self.path.suffix.lower() in (".mp4", ".mov")
        self._sync_fd = None   # fsync after each fragment: it survives a power loss too
        self._names = NameClock()
        self.retention = Retention(self.path.parent, timed_glob(self.path),
                                   max_bytes=None if retain_gb is None else retain_gb * 1024 ** 3,
                                   max_age_s=None if retain_days is None else retain_days * 86_400)
        self.pause = Pause(f"--output {self.path}:", "frames", log=log)
        self.segments = 0      # files started
        prepare_output(self.path, "--output")   # missing folders are made; unwritable: one line now

    def open(self, width, height, fps) -> None:
        fps = float(fps or 25.0)
        width, height = even_size(width, height)
        self._size = (width, height, fps)
        if not self.segment_s:
            self._start(self.path)   # segments: at the first frame, named by its capture time

    def _start(self, path: Path) -> None:
        """Open `path` with a fresh encoder (its first frame a keyframe)."""
        width, height, fps = self._size
        self.current = path
        self.segments += 1
        self._seg_t0, self._seg_count, self._last_pts = None, 0, -1
        self._keys = KeyframeClock()
        try:
            import av
        except ImportError:
            av = None
        if av is not None:
            codec = VIDEO_OUTPUT_SUFFIXES.get(self.path.suffix.lower(), "h264")
            try:
                if codec == "h264":
                    codec = h264_encoder()
                self._open_pyav(av, codec, width, height, fps)
                return
            except (av.error.FFmpegError, ValueError, SetupError) as e:
                if is_full(e):
                    raise
                if self.container is not None:
                    self.container.close()
                self.container = None
                self._close_file()
                print(f"warning: PyAV cannot encode {path} with {codec} ({e}); using OpenCV's writer",
                      file=sys.stderr)
        fourcc = "XVID" if self.path.suffix.lower() == ".avi" else "mp4v"
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
        if not self.writer.isOpened():
            raise SinkError(f"cannot write video {path}: neither PyAV nor OpenCV can encode it")

    def _open_pyav(self, av, codec, width, height, fps) -> None:
        # Through our own file object: FFmpeg's own file writes drop a failed write (a full disk)
        # without an error; Python's raise it here, so the output can pause and say so.
        self._file = open(self.current, "wb", buffering=0)
        self.container = av.open(self._file, mode="w", format=CONTAINER_FORMATS.get(self.path.suffix.lower()),
                                 options=FRAGMENTED_MP4 if self.fragmented else {})
        rate = Fraction(fps).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        set_up_encoder(self.stream.codec_context, codec, width, height, fps,
                       x264={"preset": "veryfast", "crf": "23"}, bit_rate=self.bitrate)
        if self.fragmented:
            # No B-frames: the empty index up front cannot carry the edit list that would shift
            # B-frame timestamps back to 0 (the first frame would show at 2/fps). Also less delay.
            self.stream.codec_context.max_b_frames = 0
        # Files: one tick per frame. Live: millisecond ticks from the capture clock.
        self.time_base = Fraction(1, 1000) if self.live else 1 / rate
        self.stream.codec_context.time_base = self.time_base
        # Open the encoder now, so a bad codec fails here and not on the first frame.
        self.stream.codec_context.open()

    def _stream_time(self, frame) -> float:
        """Seconds since this output's first frame: the capture clock (live), else frame n at n/fps."""
        if not self.live:
            return self.count / self._size[2]
        if self._t0 is None:
            self._t0 = frame.capture_ts
        return frame.capture_ts - self._t0

    def _wall(self, frame) -> float | None:
        """The wall-clock time `frame` was captured (live; a segment's name), None: now."""
        return time.time() - (time.monotonic() - frame.capture_ts) if self.live else None

    def write(self, frame, overlay_bgr, labels) -> None:
        t = self._stream_time(frame)
        if self.pause.paused:
            if not self.pause.may_try():
                self.pause.skipped()
                return
            try:
                self._start(self._names(self.path, self._wall(frame)))   # space again? a new file from here
            except OSError as e:
                self._failed(e)
                return
        elif self.segment_s and (self.current is None or (
                self._seg_t0 is not None and t - self._seg_t0 >= self.segment_s)):
            try:
                if self.current is not None:
                    self._finish()
                self._start(self._names(self.path, self._wall(frame)))
                self.retention.sweep(protect=[self.current])   # the caps, plus the one being written
            except OSError as e:
                self._failed(e)
                return
        try:
            self._encode(frame, overlay_bgr, t)
        except OSError as e:
            self._failed(e)
            return
        self.pause.resumed()

    def _encode(self, frame, overlay_bgr, t: float) -> None:
        img = pad_to_even(overlay_bgr)
        if self._seg_t0 is None:
            self._seg_t0 = t
        if self.writer is not None:
            self.writer.write(img)
            self.count += 1
            self._seg_count += 1
            return
        import av
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="bgr24")
        if self.live:
            pts = max(int(round((t - self._seg_t0) * 1000)), self._last_pts + 1)
            # A live run may write far fewer frames than its nominal fps (drops), so the GOP in
            # frames is not a bound in time: force a keyframe (a new fragment) every second.
            if self._keys.due(pts / 1000):
                force_keyframe(vf)
        else:
            pts = self._seg_count
        self._last_pts = pts
        vf.pts, vf.time_base = pts, self.time_base
        self._mux(self.stream.encode(vf))
        self.count += 1
        self._seg_count += 1

    def _failed(self, e: OSError) -> None:
        """A full disk (or any write error): drop this file's encoder, pause, count the frame."""
        self.pause.failed(self.current, e, lost=1)
        self._abandon()

    def _abandon(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.container is not None:
            try:
                self.container.close()
            except Exception:   # its trailer cannot be written either: the fragments before it play
                pass
            self.container = None
        self._close_file()
        if self._sync_fd is not None:
            os.close(self._sync_fd)
            self._sync_fd = None

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def _finish(self) -> None:
        """Close the current file (encoder flushed, trailer written, synced), then apply retention."""
        opened = self.writer is not None or self.container is not None
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        if self.container is not None:
            self._mux(self.stream.encode(None))   # the encoder's delayed frames
            self.container.close()
            self.container = None
            self._close_file()
        if self._sync_fd is not None:
            os.fsync(self._sync_fd)
            os.close(self._sync_fd)
            self._sync_fd = None
        if opened and not self.current.exists():
            # Writes to a file whose folder was removed still succeed (the open descriptor):
            # only its absence now tells that every frame of it is lost.
            raise SinkError(self._removed())

    def close(self) -> None:
        if self.pause.paused:
            self._abandon()
            return
        try:
            self._finish()
        except OSError as e:
            self.pause.failed(self.current, e)
            self._abandon()
        self.retention.sweep(protect=[self.current] if self.current else [])

    def counters(self) -> dict:
        out = {}
        if self.segment_s:
            out["segments"] = self.segments
        if self.pause.not_written:
            out["frames not written"] = self.pause.not_written
        return {**out, **self.retention.counters()}

    def _removed(self) -> str:
        return f"{self.current} was removed during the run (its folder deleted?); its frames are lost"

    def _mux(self, packets) -> None:
        for packet in packets:
            try:
                self.container.mux(packet)   # the file is created with the first packet
            except FileNotFoundError:
                raise SinkError(self._removed()) from None
            if packet.is_keyframe and self.fragmented:
                self._sync()

    def _sync(self) -> None:
        """A keyframe starts a new fragment, so the one before is complete in the file now
        (flush_packets): push it to the disk, and the file's name once."""
        if self._sync_fd is None:
            if not self.current.exists():
                return   # nothing written yet (the header goes out with the first packet)
            try:
                self._sync_fd = os.open(self.current, os.O_RDONLY)
                folder = os.open(self.current.parent, os.O_RDONLY)
            except FileNotFoundError:
                raise SinkError(self._removed()) from None
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        os.fsync(self._sync_fd)


class FolderSink(Sink):
    """NNNNNN.png overlays in a folder; with save_labels also labels/NNNNNN.png, the raw class
    ids (uint8, or uint16 past 255 classes), named by frame id."""

    def __init__(self, folder: str | Path, save_labels: bool = False):
        self.folder = Path(folder)
        self.name = str(self.folder)
        self.save_labels = save_labels
        if self.folder.exists() and not self.folder.is_dir():
            raise SinkError(f"--output {folder} is a file, not a folder")
        prepare_output(self.folder, "--output", folder=True)

    def open(self, width, height, fps) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.save_labels:
            (self.folder / "labels").mkdir(exist_ok=True)

    def write(self, frame, overlay_bgr, labels) -> None:
        name = f"{frame.id:06d}.png"
        if not cv2.imwrite(str(self.folder / name), overlay_bgr):
            raise SinkError(f"cannot write {self.folder / name} (disk full or not writable?)")
        if self.save_labels:
            ids = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16, copy=False)
            if not cv2.imwrite(str(self.folder / "labels" / name), ids):
                raise SinkError(f"cannot write {self.folder / 'labels' / name}")


def check_distinct_outputs(cameras, latency_log=None, analytics=None) -> None:
    """Refuse, before anything runs, outputs that would silently destroy data: any file or
    folder the run writes (outputs, {camera} expanded; the latency, coverage and events logs;
    the clips folder) that is one of the inputs, inside the clips folder, or the same file as
    another after resolving. `analytics`: app.settings.AnalyticsSettings (its logs and clips)."""
    def resolved(spec):
        return Path(spec).expanduser().resolve() if sink_kind(spec) in ("video", "folder") else None

    inputs = {Path(c.source).resolve(): c.source for c in cameras if os.path.exists(c.source)}   # (no OSError)
    written = [(f"--output {spec} ({cam.name})", resolved(spec)) for cam in cameras for spec in cam.output]
    logs = [("--latency-log", latency_log)]
    clips = None
    if analytics is not None:
        logs += [("--coverage-log", analytics.coverage_log), ("--events-log", analytics.events_log)]
        if analytics.clips_dir:
            clips = Path(analytics.clips_dir).expanduser().resolve()
    written += [(f"{flag} {path}", Path(path).expanduser().resolve()) for flag, path in logs if path]
    seen = {}
    for what, path in written:
        if path is None:
            continue
        if path in inputs:
            raise SinkError(f"{what} is the input {inputs[path]}: writing it would destroy it; pick another name")
        if path in seen:
            raise SinkError(f"{what} and {seen[path]} are the same file {path}: one would overwrite the other; "
                            "give each its own name (e.g. out_{camera}.mp4)")
        if clips is not None and (path == clips or clips in path.parents):
            raise SinkError(f"{what} lies in --clips-dir {analytics.clips_dir}, whose files the clip recorder "
                            "manages; write it elsewhere")
        seen[path] = what
    if clips is not None:
        for path, source in inputs.items():
            if clips in path.parents:
                raise SinkError(f"the input {source} lies in --clips-dir {analytics.clips_dir}; pick another "
                                "clips folder")


def sink_kind(spec: str) -> str:
    """Which row of SINKS writes `--output spec`."""
    if spec in ("display", "null"):
        return spec
    scheme = spec.split("://", 1)[0] if "://" in spec else ""
    if scheme in ("http", "rtsp"):
        return scheme
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in VIDEO_OUTPUT_SUFFIXES:
        return "video"
    if suffix in IMAGE_OUTPUT_SUFFIXES:
        raise SinkError(f"--output {spec}: for still images pass a folder (frames/), one PNG per frame")
    if spec.endswith("/") or path.is_dir() or suffix == "":
        return "folder"
    raise SinkError(f"--output {spec}: unknown kind; use display, a .mp4/.mkv/.avi file, a folder/, "
                    "http://@:PORT, rtsp://HOST:PORT/PATH or null")


def open_video(spec: str, cam: CameraSettings, live: bool) -> Sink:
    return VideoFileSink(Path(spec), live=live, bitrate=cam.bitrate, segment_s=cam.segment_s,
                         retain_days=cam.retain_days, retain_gb=cam.retain_gb)


def open_http_output(spec: str, options, live: bool, server, camera: str) -> Sink:
    from app.http_sink import open_http_sink

    return open_http_sink(spec, server=server, camera=camera)


def open_rtsp_output(spec: str, options, live: bool, server, camera: str) -> Sink:
    try:
        from app.rtsp_out import open_rtsp_sink   # imported only when an RTSP output is asked for
    except ModuleNotFoundError as e:
        if e.name != "app.rtsp_out":
            raise
        raise SinkError("rtsp:// outputs need app/rtsp_out.py, which this install does not have") from None
    return open_rtsp_sink(spec, options, server=server)


# Every kind of output: kind -> opener(spec, options, live, server, camera) -> a Sink (not
# opened yet). A new kind of output: its Sink, a line here and one in sink_kind.
SINKS = {
    "display": lambda spec, options, live, server, camera: DisplaySink(),
    "null": lambda spec, options, live, server, camera: NullSink(),
    "http": open_http_output,
    "rtsp": open_rtsp_output,
    "video": lambda spec, options, live, server, camera: open_video(spec, CameraSettings.of(options), live),
    "folder": lambda spec, options, live, server, camera: FolderSink(
        Path(spec), save_labels=CameraSettings.of(options).save_labels),
}


def open_sink(spec: str, options=None, live: bool = False, server=None, camera: str = "cam0") -> Sink:
    """`--output SPEC` -> a Sink (not opened yet: that needs the first frame's size).
    `options`: the camera's CameraSettings (app/settings.py; None: the defaults). `server`: the
    run's app.server.AppServer (auth and listeners shared by http:// and rtsp://@ outputs);
    None gives each its own loopback-default one. `camera`: the name an http:// output serves
    this stream under (/camera/NAME; several may share one port)."""
    spec = str(spec)
    return SINKS[sink_kind(spec)](spec, options, live, server, camera)
