"""Continuous recording of a camera's `record` input by packet copy, as an NVR does.

A camera with roles (app/settings.py: `inputs: [{path, roles}]`) runs inference, analytics and
overlays on its `detect` input (a sub stream) and records its `record` input (the main stream)
here, never decoded and never re-encoded: PyAV demuxes the compressed packets and muxes them
unchanged into fragmented MP4 segments (`add_stream_from_template`: the input's codec
parameters, no codec opened). So recording costs a demux and a write per packet, whatever the
main stream's size.

    PacketReader   one opened record input: read() -> (packet, its input stream); a Reader, so
                   a live one is wrapped in app/reconnect.py's ReconnectingReader (outages,
                   stalls, backoff) like any live source
    Recording      a Sink of the camera (closed with it, counted in the run summary) that runs
                   its own thread: packets -> <folder>/<camera>.<UTC start time>.mp4 segments,
                   each starting at a keyframe, a new one at the first keyframe `segment_s` of
                   stream time after the last began (or after a reconnect); closed ones kept
                   under retain_gb / retain_days by app/retention.py's Retention, oldest
                   deleted first. It takes no pixels from the pipeline (wants_pixels False).

A file as the record input is copied once, whole, at disk speed (`--loop` and `--max-frames`
apply to the detect input); the end of the run waits for that copy. A live input is recorded
until the run ends. `decoded` stays 0: nothing here opens a decoder (the run summary and
/metrics print it to show it). A full disk pauses the recording (app/retention.py's Pause): the
packets not written are counted, and it starts again in a new segment at a keyframe.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from app.frames import Reader, ReadError, Sink
from app.retention import NameClock, Pause, Retention, timed_glob
from core.redact import redact_url

DEFAULT_SEGMENT_S = 10.0
FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
CLOSE_WAIT_S = 30.0   # a file's copy is finished at the end of the run; a live one stops at once


class PacketReader(Reader):
    """A record input, demuxed and never decoded: read() -> (av.Packet, its input stream), None
    at the end. Source timestamps are the packet's."""

    def __init__(self, url: str, live: bool = False, options: dict | None = None, timeout_s: float = 10.0):
        self.url, self.live, self.options, self.timeout_s = url, live, options or {}, timeout_s
        self.description = redact_url(url)
        self.container = self.stream = self._packets = None
        self.size = None   # (width, height) the stream declares

    def open(self) -> None:
        import av

        try:
            self.container = av.open(self.url, options=self.options, timeout=self.timeout_s)
        except (av.error.FFmpegError, OSError) as e:
            raise ReadError(f"cannot open record input {self.url}: {e}") from None
        if not self.container.streams.video:
            self.container.close()
            raise ReadError(f"record input {self.url} has no video stream")
        self.stream = self.container.streams.video[0]
        ctx = self.stream.codec_context   # its parameters only: never opened
        self.size = (ctx.width, ctx.height)
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else None
        self._packets = self.container.demux(self.stream)

    def read(self):
        import av

        while True:
            try:
                packet = next(self._packets)
            except (StopIteration, av.error.EOFError):
                return None
            except (av.error.FFmpegError, OSError) as e:
                raise ReadError(f"{self.url}: {e}") from None
            if packet.size:   # the demuxer's empty flush packet at the end is not data
                return packet, self.stream

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


def open_record_input(spec: str, cam, down_ok: bool = False) -> Reader:
    """A camera's record input, opened: a live URL wrapped in the reconnecting reader (its
    first packet read now: a wrong URL is a one-line error at start; with `down_ok`, several
    cameras, a live one that is down is an outage, reconnected with backoff)."""
    from app.reconnect import ReconnectingReader
    from app.sources import SourceError, live_by_kind

    live = live_by_kind(spec)
    options = {}
    if spec.split(":", 1)[0].lower() in ("rtsp", "rtsps") and (cam.rtsp_transport or "tcp") != "auto":
        options["rtsp_transport"] = cam.rtsp_transport or "tcp"

    def reopen():
        fresh = PacketReader(spec, live=live, options=options, timeout_s=cam.source_timeout)
        fresh.open()
        return fresh

    try:
        reader = reopen()
    except ReadError as e:
        if not (live and down_ok):
            raise SourceError(str(e)) from None
        wrapped = ReconnectingReader(reopen, timeout_s=cam.source_timeout)
        wrapped.description, wrapped.camera = redact_url(spec), cam.name or ""
        wrapped.start_down(str(e))
        return wrapped
    if not live:
        return reader
    wrapped = ReconnectingReader(reopen, timeout_s=cam.source_timeout, first=reader)
    wrapped.camera = cam.name or ""
    try:
        wrapped.open()
    except (ReadError, RuntimeError) as e:
        raise SourceError(str(e)) from None
    wrapped.size = reader.size
    return wrapped


class Recording(Sink):
    """Continuous recording of one record input (see the module doc). It starts recording at
    once (its own thread) and ignores the frames the pipeline hands its outputs."""

    def wants_pixels(self) -> bool:
        return False   # the pipeline draws nothing for it

    def __init__(self, reader: Reader, folder: str | Path, camera: str, segment_s: float | None = None,
                 retain_days: float | None = None, retain_gb: float | None = None, log=None):
        self.reader, self.camera = reader, camera
        self.segment_s = float(segment_s or DEFAULT_SEGMENT_S)
        self.path = Path(folder) / camera / f"{camera}.mp4"   # segments: <camera>.<UTC time>.mp4
        self.name = f"recording {self.path.parent}"
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention = Retention(self.path.parent, timed_glob(self.path),
                                   max_bytes=None if retain_gb is None else retain_gb * 1024 ** 3,
                                   max_age_s=None if retain_days is None else retain_days * 86_400)
        self.pause = Pause(f"{camera}: recording", "packets", log=self.log)
        self.names = NameClock()
        self.packets = 0          # packets written
        self.bytes = 0
        self.decoded = 0          # frames decoded from the record input: nothing here decodes
        self.segments = 0
        self.waiting_key = 0      # packets before the first keyframe (a segment starts at one)
        self.error = ""
        self.current = None       # the segment being written
        self._file = self._out = self._in_stream = self._out_stream = None
        self._seg_t0 = None       # stream time (s) of the segment's first packet
        self._offset = 0          # the segment's first dts: its timestamps start at 0
        self.clips = None         # the camera's event clips (app/analytics/clips.py), cut from this stream
        self._clip_stream = self._bsf = self._header = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"record-{camera}", daemon=True)

    def start(self, clips=None) -> None:
        """Start recording; `clips`: the camera's ClipRecorder, to cut its event clips from
        this stream by packet copy (from its first packet on)."""
        if clips is not None and clips.use_record_stream(self._codec()):
            self.clips = clips
        self.thread.start()

    def _codec(self) -> str:
        stream = getattr(self.reader, "stream", None) or getattr(getattr(self.reader, "first", None), "stream", None)
        conn = getattr(self.reader, "_conn", None)
        if stream is None and conn is not None:
            stream = getattr(conn.reader, "stream", None)
        return stream.codec_context.name if stream is not None else ""

    def write(self, frame, overlay_bgr, labels) -> None:
        pass   # the frames of the detect input: recording does not use them

    # ---- the recording thread ------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                item = self.reader.read()
                if item is None:
                    break
                self._packet(*item)
        except Exception as e:   # one line in the summary; the run goes on without recording
            self.error = redact_url(f"{type(e).__name__}: {e}")
            self.log(f"error: {self.camera}: recording stopped: {self.error}")
        finally:
            try:
                self._finish()
            except OSError as e:
                self.pause.failed(self.current, e)
                self._abandon()
            self.retention.sweep()

    def _packet(self, packet, in_stream) -> None:
        if self.clips is not None:
            try:
                self._to_clips(packet, in_stream)
            except Exception as e:   # the recording goes on; the clips of this camera stop
                self.log(f"warning: {self.camera}: event clips from the record stream stopped: "
                         f"{type(e).__name__}: {e}")
                self.clips = None
        t = float(packet.pts * packet.time_base) if packet.pts is not None else None
        new_input = in_stream is not self._in_stream   # the first packet, or a reconnect
        due = self._out is None or new_input or (t is not None and self._seg_t0 is not None
                                                  and t - self._seg_t0 >= self.segment_s)
        if due and not packet.is_keyframe:
            if self._out is None or new_input:
                if new_input:
                    self._finish()
                    self._in_stream = in_stream
                if self.pause.paused:
                    self.pause.skipped()
                else:
                    self.waiting_key += 1
                return
            due = False   # cut at the next keyframe
        if due:
            if self.pause.paused and not self.pause.may_try():
                self.pause.skipped()
                return
            try:
                self._finish()
                self._start(in_stream, packet, t)
                self.retention.sweep(protect=[self.current])
            except OSError as e:
                self._failed(e)
                return
        elif self._out is None:   # paused: until a keyframe where it may try again
            self.pause.skipped()
            return
        try:
            self._mux(packet)
        except OSError as e:
            self._failed(e)
            return
        self.pause.resumed()

    def _to_clips(self, packet, in_stream) -> None:
        """The packet, as Annex B (what the clip writer demuxes), into the clips' ring: an MP4's
        length-prefixed NAL units through FFmpeg's mp4toannexb filter (parameter sets added at
        keyframes); a stream that is Annex B already (RTSP) as it is, its parameter sets put
        before each keyframe."""
        import av
        from av.bitstream import BitStreamFilterContext

        if in_stream is not self._clip_stream:
            self._clip_stream = in_stream
            extradata = in_stream.codec_context.extradata or b""
            annexb = not extradata or extradata.startswith((b"\x00\x00\x00\x01", b"\x00\x00\x01"))
            self._header = extradata if annexb else None
            self._bsf = None if annexb else BitStreamFilterContext(f"{in_stream.codec_context.name}_mp4toannexb",
                                                                   in_stream)
        t = float(packet.pts * packet.time_base) if packet.pts is not None else None
        live = self.reader.live
        if self._bsf is None:
            data = bytes(packet)
            if packet.is_keyframe and self._header and not data.startswith(self._header):
                data = self._header + data
            self.clips.add_packet(data, packet.is_keyframe, t, live)
            return
        copy = av.Packet(bytes(packet))   # the filter takes the packet it is given: the recording keeps its own
        copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
        copy.is_keyframe = packet.is_keyframe
        for out in self._bsf.filter(copy):
            self.clips.add_packet(bytes(out), packet.is_keyframe, t, live)

    def _start(self, in_stream, packet, t) -> None:
        import av

        self._in_stream = in_stream
        self.current = self.names(self.path)
        self._file = open(self.current, "wb", buffering=0)   # a full disk raises here, not silently
        self._out = av.open(self._file, mode="w", format="mp4", options=FRAGMENTED_MP4)
        self._out_stream = self._out.add_stream_from_template(in_stream)
        self._offset = packet.dts if packet.dts is not None else (packet.pts or 0)
        self._seg_t0 = t
        self.segments += 1

    def _mux(self, packet) -> None:
        size = packet.size
        if packet.dts is not None:
            packet.dts -= self._offset
        if packet.pts is not None:
            packet.pts -= self._offset
        packet.stream = self._out_stream
        self._out.mux(packet)
        self.packets += 1
        self.bytes += size

    def _failed(self, e: OSError) -> None:
        """A full disk (or any write error): drop this segment, pause, count the packet."""
        self.pause.failed(self.current, e, lost=1)
        self._abandon()

    def _abandon(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except Exception:   # its trailer cannot be written either: the fragments before it play
                pass
        self._out = None
        self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                os.fsync(self._file.fileno())
                self._file.close()
            except OSError:
                pass
            self._file = None

    def _finish(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            out.close()
            self._close_file()

    # ---- the camera's output protocol ----------------------------------------------------
    def close(self) -> None:
        """A file's copy is finished (at most CLOSE_WAIT_S); a live recording stops now."""
        if not self.thread.is_alive() and self.thread.ident is None:   # never started
            self.reader.close()
            return
        if self.reader.live:
            self._stop.set()
            interrupt = getattr(self.reader, "interrupt", None)
            if interrupt is not None:
                interrupt()
        self.thread.join(CLOSE_WAIT_S)
        if self.thread.is_alive():
            self._stop.set()
            self.thread.join(CLOSE_WAIT_S)
        self.reader.close()

    def counters(self) -> dict:
        out = {"segments": self.segments, "packets": self.packets, "decoded frames": self.decoded}
        if self.pause.not_written:
            out["packets not written"] = self.pause.not_written
        if self.error:
            out["error"] = self.error
        return {**out, **self.retention.counters()}

    def describe(self) -> str:
        """The record input on the camera's start line."""
        size = getattr(self.reader, "size", None)
        return (f"{self.reader.description} (record, packet copy"
                f"{f', {size[0]}x{size[1]}' if size else ''}) -> {self.path.parent}/, {self.segment_s:g} s segments")
