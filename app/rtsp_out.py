"""RTSP output: `--output rtsp://HOST:PORT/PATH` (push) and `--output rtsp://@:PORT/PATH` (serve).

Push (`RtspPushSink`): the overlay is encoded to H.264 for low latency (app/encoding.py's
policy: libx264 through PyAV/FFmpeg with tune=zerolatency so no B-frames and no look-ahead,
preset ultrafast, else the next H.264 encoder FFmpeg has; odd sizes padded; a keyframe every
second of capture time so a viewer joining late waits at most a second) and sent to an RTSP server that
accepts ANNOUNCE/RECORD (MediaMTX, rtsp-simple-server, Debian's rtsp-server-perl). Viewers
pull from that server. UDP is tried first and TCP when the server refuses UDP (FFmpeg's own
fallback), unless `--rtsp-transport` forces one.

When the server is down at start or goes away, the sink keeps accepting frames, counts them
as dropped with a reason, and a background thread reconnects with capped exponential backoff
(so `write()` never blocks the output thread on a slow connect). Each outage is logged with
its duration. A fresh encoder starts on every connection: the first frame a viewer gets is a
keyframe.

Serve (`RtspServeSink`): the app itself is the RTSP server, through GStreamer's
gst-rtsp-server (PyGObject). Viewers connect to rtsp://THIS-HOST:PORT/PATH; any number of
them, and they can come and go. Uses nvv4l2h264enc on Jetsons that have it, else x264enc.
"""
from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction
from urllib.parse import urlsplit

import numpy as np

from core.errors import InputError, SetupError
from app.encoding import (KeyframeClock, even_size, force_keyframe, h264_encoder, keyframe_interval, pad_to_even,
                          set_up_encoder)
from app.frames import Frame, Sink
from app.settings import RTSP_BITRATE, CameraSettings, ServerSettings, check_option
from core.backoff import Backoff
from core.redact import redact_url

log = logging.getLogger(__name__)

DEFAULT_BITRATE = RTSP_BITRATE   # the --bitrate help says it (app/settings.py)
RTSP_USER = "bisenet"                 # served RTSP: this user name, the app's token as password
RTP_CLOCK = Fraction(1, 90_000)       # RTP video clock: pts in 1/90000 s


def parse_bitrate(text) -> int:
    """'2M' -> 2000000, '800k' -> 800000, '1500000' -> 1500000 (the --bitrate rule of app/settings.py)."""
    return check_option("bitrate", text)


def open_rtsp_sink(spec: str, args, server=None) -> Sink:
    """`rtsp://HOST:PORT/PATH` -> push to that server; `rtsp://@:PORT/PATH` -> serve it here.
    Serving listens on every interface, so it takes the run's token (`server.auth`, an
    app.server.AppServer) as HTTP Basic credentials, unless --no-auth."""
    # --bitrate and --rtsp-transport are the app's flags (app/run.py).
    camera = CameraSettings.of(args)
    bitrate = parse_bitrate(camera.bitrate or DEFAULT_BITRATE)
    parts = urlsplit(spec)
    if parts.scheme != "rtsp" or not parts.netloc:
        raise InputError(f"--output {spec}: expected rtsp://HOST:PORT/PATH (push to a server) "
                         "or rtsp://@:PORT/PATH (serve from this app)")
    if parts.netloc.startswith("@"):
        port = parts.port or 8554
        path = parts.path if parts.path not in ("", "/") else "/stream"
        _import_gstreamer()      # missing packages: that error first, before a token is printed
        if server is not None:
            auth = server.auth
        else:
            from app.server import Auth
            options = ServerSettings.of(args).server_options()
            auth = Auth(options.auth_token, disabled=options.no_auth)
        token = auth.token_for("0.0.0.0", f"rtsp://{RTSP_USER}:{{token}}@<this host>:{port}{path}", later=True)
        return RtspServeSink(port, path, bitrate, auth_token=token, announce_token=auth.announce_token)
    return RtspPushSink(spec, bitrate, transport=camera.rtsp_transport or "auto")


class _RtspPushSession:
    """One RTSP session to the server: the FFmpeg muxer plus a fresh H.264 encoder."""

    def __init__(self, url: str, width: int, height: int, fps: float, bitrate: int,
                 transport: str):
        import av  # PyAV is a base dependency; imported here to keep `import app` light

        options = {"timeout": "3000000"}          # socket I/O timeout, microseconds
        if transport != "auto":
            options["rtsp_transport"] = transport
        self.container = av.open(url, mode="w", format="rtsp", options=options)
        try:
            codec = h264_encoder()
            kbps = bitrate // 1000
            self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            set_up_encoder(self.stream.codec_context, codec, width, height, fps, bit_rate=bitrate, x264={
                "tune": "zerolatency", "preset": "ultrafast",
                # A VBV buffer of half a second: bitrate holds without a deep encoder queue.
                "x264-params": f"vbv-maxrate={kbps}:vbv-bufsize={max(1, kbps // 2)}"})
            self.stream.codec_context.max_b_frames = 0    # no reordering delay, whichever encoder
            self.stream.codec_context.time_base = RTP_CLOCK
            self.container.start_encoding()               # ANNOUNCE, SETUP, RECORD
        except BaseException:
            self.close(flush=False)
            raise
        self.t0: float | None = None
        self.last_pts = -1
        self.keys = KeyframeClock()                       # a viewer joining late waits at most a second

    def send(self, image: np.ndarray, capture_ts: float) -> None:
        import av

        if self.t0 is None:
            self.t0 = capture_ts
        # Presentation time from the capture clock: the stream plays at the source's pace
        # and a dropped frame leaves a gap instead of shifting everything after it.
        pts = max(self.last_pts + 1, int((capture_ts - self.t0) * RTP_CLOCK.denominator))
        self.last_pts = pts
        vf = av.VideoFrame.from_ndarray(pad_to_even(image), format="bgr24")
        vf.pts, vf.time_base = pts, RTP_CLOCK
        if self.keys.due(capture_ts - self.t0):
            force_keyframe(vf)
        for packet in self.stream.encode(vf):
            self.container.mux(packet)

    def close(self, flush: bool = True) -> None:
        try:
            if flush:
                for packet in self.stream.encode(None):
                    self.container.mux(packet)
        except Exception:
            pass                                          # a dead server: nothing to flush to
        try:
            self.container.close()                        # TEARDOWN
        except Exception:
            pass


class RtspPushSink(Sink):
    """Pushes the overlay as H.264 to an RTSP server, reconnecting when it comes back.

    Frame accounting: every `write()` ends as `written` or as `dropped[reason]` with reason
    `server_down` (no session: before the first connect or during an outage) or
    `send_error` (the frame whose send found the session broken)."""

    def __init__(self, url: str, bitrate: int = DEFAULT_BITRATE, transport: str = "auto",
                 backoff_initial: float = 0.5, backoff_max: float = 8.0):
        if transport not in ("auto", "udp", "tcp"):
            raise InputError(f"--rtsp-transport {transport!r}: expected auto, udp or tcp")
        self.url, self.bitrate, self.transport = url, bitrate, transport
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.name = f"rtsp push {redact_url(url)}"
        self.must_deliver = True
        self.written = 0
        self.dropped = {"server_down": 0, "send_error": 0}
        self.outages = 0                 # times the session was lost or never came up
        self.outage_s_total = 0.0        # summed duration of outages that ended
        self.connects = 0
        self._conn: _RtspPushSession | None = None
        self._lock = threading.Lock()    # guards _conn between writer and connector
        self._wake = threading.Event()   # writer -> connector: the session broke
        self._stop = threading.Event()
        self._down_since: float | None = None
        self._size = (0, 0)
        self._fps = 30.0
        self._connector: threading.Thread | None = None

    def open(self, width: int, height: int, fps: float) -> None:
        h264_encoder()                   # no H.264 encoder at all: that one line now, not at each connect
        self._size = even_size(width, height)     # odd sides padded (app/encoding.py)
        self._fps = float(fps) if fps and fps > 0 else 30.0
        self._down_since = time.monotonic()
        try:
            self._conn = self._connect()
            self._down_since = None
        except Exception as e:
            self.outages += 1
            log.warning("%s: server not reachable (%s); frames are dropped until it is up, "
                        "retrying with backoff %g..%g s", self.name, _one_line(e),
                        self.backoff_initial, self.backoff_max)
        self._connector = threading.Thread(target=self._reconnect_loop, daemon=True,
                                           name="rtsp-push-connector")
        self._connector.start()

    def wants_pixels(self) -> bool:
        return self._conn is not None   # during an outage the frames are dropped: none drawn for them

    def write(self, frame: Frame, overlay_bgr: np.ndarray | None, labels: np.ndarray) -> None:
        with self._lock:
            conn = self._conn
            if conn is None or overlay_bgr is None:   # (None: it was down when the frame was drawn)
                self.dropped["server_down"] += 1
                return
            try:
                conn.send(overlay_bgr, frame.capture_ts)
                self.written += 1
                return
            except Exception as e:      # BrokenPipe, ConnectionReset, EPIPE from FFmpeg ...
                self.dropped["send_error"] += 1
                self._conn = None
                self._down_since = time.monotonic()
                self.outages += 1
                error = e
        conn.close(flush=False)
        log.warning("%s: lost the server (%s); reconnecting with backoff %g..%g s",
                    self.name, _one_line(error), self.backoff_initial, self.backoff_max)
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._connector is not None:
            self._connector.join(timeout=5.0)
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(flush=True)
        if self._down_since is not None:
            log.warning("%s: still down at shutdown after %.1f s", self.name,
                        time.monotonic() - self._down_since)

    def counters(self) -> dict:
        """Counters for the run summary: frames in = written + sum(dropped)."""
        return {"written": self.written, "dropped": dict(self.dropped),
                "outages": self.outages, "outage_s_total": round(self.outage_s_total, 3),
                "connects": self.connects}

    # -- internals ------------------------------------------------------------------------

    def _connect(self) -> _RtspPushSession:
        conn = _RtspPushSession(self.url, *self._size, self._fps, self.bitrate, self.transport)
        self.connects += 1
        return conn

    def _reconnect_loop(self) -> None:
        """Waits for a broken session, then retries with capped exponential backoff."""
        backoff = Backoff(self.backoff_initial, self.backoff_max)
        while not self._stop.is_set():
            if self._conn is not None:                    # connected: sleep until it breaks
                self._wake.wait()
                self._wake.clear()
                backoff.reset()
                continue
            if self._stop.wait(backoff.next()):
                return
            try:
                conn = self._connect()
            except Exception as e:
                log.info("%s: reconnect failed (%s); next try in %g s", self.name,
                         _one_line(e), backoff.delay)
                continue
            with self._lock:
                if self._stop.is_set():
                    conn.close(flush=False)
                    return
                self._conn = conn
                down = time.monotonic() - (self._down_since or time.monotonic())
                self.outage_s_total += down
                self._down_since = None
            log.warning("%s: connected after %.1f s down", self.name, down)
            backoff.reset()


class RtspServeSink(Sink):
    """Serves the overlay over RTSP from this process with GStreamer's gst-rtsp-server.

    Each frame is pushed into the appsrc of every connected viewer's pipeline (the media is
    shared, so normally one). Accounting: `written` when at least one viewer got it, else
    `dropped["no_viewer"]`."""

    def __init__(self, port: int, path: str, bitrate: int = DEFAULT_BITRATE, auth_token: str | None = None,
                 announce_token=lambda: None):
        _import_gstreamer()      # missing packages: one line at start, before the model loads
        self.port, self.path, self.bitrate = port, path, bitrate
        self.auth_token = auth_token     # None: anyone may watch (--no-auth)
        self.announce_token = announce_token   # prints a generated token once the port is bound
        self.name = f"rtsp serve rtsp://@:{port}{path}"
        self.written = 0
        self.dropped = {"no_viewer": 0, "send_error": 0}
        self._appsrcs: dict = {}         # appsrc of each prepared media -> its first capture_ts
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None

    def open(self, width: int, height: int, fps: float) -> None:
        Gst, GstRtspServer, GLib = _import_gstreamer()
        Gst.init(None)
        w, h = even_size(width, height)          # odd sides padded (app/encoding.py)
        fps_frac = Fraction(fps if fps and fps > 0 else 30).limit_denominator(1001)
        gop = keyframe_interval(float(fps_frac))
        kbps = max(1, self.bitrate // 1000)
        if Gst.ElementFactory.find("nvv4l2h264enc"):     # Jetson hardware encoder
            encoder = (f"nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc "
                       f"bitrate={self.bitrate} iframeinterval={gop} insert-sps-pps=true "
                       "maxperf-enable=true")
        elif Gst.ElementFactory.find("x264enc"):
            # threads=1: with zerolatency's sliced threads, viewers here decoded only the
            # last slice of each frame (tested with ffmpeg over TCP and UDP, GStreamer 1.22).
            encoder = (f"videoconvert ! video/x-raw,format=I420 ! x264enc tune=zerolatency "
                       f"speed-preset=ultrafast bitrate={kbps} key-int-max={gop} threads=1")
        else:
            raise SetupError("GStreamer has no H.264 encoder: install gstreamer1.0-plugins-ugly "
                               "(x264enc), or use nvv4l2h264enc on a Jetson")
        caps = (f"video/x-raw,format=BGR,width={w},height={h},"
                f"framerate={fps_frac.numerator}/{fps_frac.denominator}")
        launch = (f"( appsrc name=src is-live=true format=time do-timestamp=false caps={caps} "
                  f"! queue leaky=downstream max-size-buffers=2 ! {encoder} ! h264parse "
                  "! rtph264pay name=pay0 pt=96 config-interval=-1 )")
        server = GstRtspServer.RTSPServer()
        server.set_service(str(self.port))
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch)
        factory.set_shared(True)                  # one encoder for all viewers
        factory.connect("media-configure", self._on_media_configure)
        if self.auth_token is not None:
            self._require_basic_auth(GstRtspServer, server, factory)
        server.get_mount_points().add_factory(self.path, factory)
        self._source_id = server.attach(None)
        if self._source_id == 0:
            raise SetupError(f"--output rtsp://@:{self.port}{self.path}: cannot listen on "
                               f"port {self.port}; pick a free port")
        self.announce_token()
        self._Gst, self._server = Gst, server
        self._loop = GLib.MainLoop()
        self._thread = threading.Thread(target=self._loop.run, daemon=True, name="rtsp-serve")
        self._thread.start()
        log.warning("serving RTSP at rtsp://<this host>:%d%s (all interfaces, %s)", self.port, self.path,
                    f"auth on: user {RTSP_USER}, the token as password" if self.auth_token else "auth OFF")

    def _require_basic_auth(self, GstRtspServer, server, factory) -> None:
        """Only user RTSP_USER with the token as password may construct and watch the media
        (gst-rtsp-server compares the whole Basic credential, so the user name is fixed)."""
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(RTSP_USER, self.auth_token), token)
        server.set_auth(auth)   # no default token: a client without these credentials gets 401
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role("viewer", "media.factory.access", True)
        permissions.add_permission_for_role("viewer", "media.factory.construct", True)
        factory.set_permissions(permissions)

    def _on_media_configure(self, factory, media) -> None:
        appsrc = media.get_element().get_child_by_name("src")
        with self._lock:
            self._appsrcs[appsrc] = None
        media.connect("unprepared", lambda m: self._forget(appsrc))

    def _forget(self, appsrc) -> None:
        with self._lock:
            self._appsrcs.pop(appsrc, None)

    def wants_pixels(self) -> bool:
        return bool(self._appsrcs)      # no viewer: no overlay drawn for it

    def write(self, frame: Frame, overlay_bgr: np.ndarray | None, labels: np.ndarray) -> None:
        if overlay_bgr is None:         # nobody watched when the frame was drawn
            self.dropped["no_viewer"] += 1
            return
        with self._lock:
            for appsrc, t0 in self._appsrcs.items():
                if t0 is None:              # each media's clock starts at its first buffer
                    self._appsrcs[appsrc] = frame.capture_ts
            targets = list(self._appsrcs.items())
        if not targets:
            self.dropped["no_viewer"] += 1
            return
        Gst = self._Gst
        data = np.ascontiguousarray(pad_to_even(overlay_bgr)).tobytes()
        ok = False
        for appsrc, t0 in targets:
            buf = Gst.Buffer.new_wrapped(data)
            buf.pts = buf.dts = int((frame.capture_ts - t0) * Gst.SECOND)
            ok = appsrc.emit("push-buffer", buf) == Gst.FlowReturn.OK or ok
        if ok:
            self.written += 1
        else:
            self.dropped["send_error"] += 1

    def close(self) -> None:
        with self._lock:
            targets, self._appsrcs = list(self._appsrcs), {}
        for appsrc in targets:
            appsrc.emit("end-of-stream")
        if self._loop is not None:
            # Disconnect the viewers (their media pipelines stop with them), stop listening,
            # then end the main loop: nothing of GStreamer's keeps running after close().
            from gi.repository import GLib, GstRtspServer

            def shutdown():
                self._server.client_filter(lambda server, client: GstRtspServer.RTSPFilterResult.REMOVE)
                GLib.source_remove(self._source_id)
                self._loop.quit()
                return False

            GLib.idle_add(shutdown)
            self._thread.join(timeout=5.0)

    def counters(self) -> dict:
        return {"written": self.written, "dropped": dict(self.dropped)}


def _import_gstreamer():
    try:
        import gi
        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ImportError, ValueError) as e:
        raise SetupError(
            "rtsp://@:PORT/PATH serves through GStreamer, which is missing here "
            f"({_one_line(e)}): install gst-rtsp-server and x264enc (apt install "
            "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly python3-gi) and make PyGObject importable "
            "here: `bash scripts/setup_gi.sh` from the checkout (links Debian's python3-gi into .venv, or builds "
            "PyGObject), or push to an RTSP server with rtsp://HOST:PORT/PATH instead") from None
    return Gst, GstRtspServer, GLib


def _one_line(e: BaseException) -> str:
    text = redact_url(str(e).splitlines()[0]) if str(e) else ""   # FFmpeg's errors quote the URL
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
