"""Sources (`--source`): every input the app reads, as a `Reader` (app/frames.py).

    0, /dev/video0            camera through OpenCV (live)
    clip.mp4 / .mkv / .avi    video file through PyAV (OpenCV if PyAV cannot open it)
    photo.jpg                 one image
    folder/, 'imgs/*.png'     the images of a folder or a glob, in sorted order
    rtsp://..., http(s)://... network stream through PyAV/FFmpeg (live; an http URL
                              ending in a video suffix is read as a file)
    csi://0                   Jetson CSI camera (nvarguscamerasrc) through OpenCV+GStreamer
    gst:<pipeline>            any GStreamer pipeline ending in appsink, through OpenCV+GStreamer

`open_source(spec, camera settings)` picks the reader from one table, SOURCES (a new kind of
source: its opener and a line there); `--loop` restarts a file at its end and `--realtime`
paces it at its own rate. Every reader names its decoder (`decoder`, on the camera's start
line). PyAV decodes in software, or on a hardware device (`hwaccel`: auto, none, or a device
type this FFmpeg has: `hardware_types()`); `skip_frame: nonkey` decodes keyframes only.
With `pictures=True` (the pipeline) it hands out `PyAVPicture`s, converted to BGR only at
the sizes asked for (app/frames.py). Live readers are wrapped by
`app.reconnect.ReconnectingReader` when that module exists (written for the RTSP issue).
"""
from __future__ import annotations

import errno
import glob
import logging
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2

from app.frames import Picture, Reader, ReadError
from core.errors import BisenetError, InputError, file_error
from core.files import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from core.redact import redact_url
from app.settings import CameraSettings

log = logging.getLogger(__name__)


class SourceError(BisenetError, RuntimeError):
    """A source that cannot be opened; the message is one line that says what to do (passwords
    in URLs redacted: FFmpeg's errors quote the URL)."""

    def __init__(self, message: str):
        super().__init__(redact_url(message))


class CameraReader(Reader):
    """A V4L2/USB camera by index (`0`) or device path (`/dev/video0`), through OpenCV."""

    live = True
    decoder = "OpenCV (V4L2)"

    def __init__(self, device: int | str, size_wh: tuple | None = None, fps: float | None = None):
        self.device = device
        self.size_wh = size_wh
        self.requested_fps = fps
        self.description = f"camera {device}"
        self.cap = None

    def open(self) -> None:
        # OpenCV logs a warning per backend it tries; the one-line error below says it all.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self.cap = cv2.VideoCapture(self.device)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self.cap.isOpened():
            raise SourceError(f"cannot open camera {self.device}: check it is plugged in and not used by "
                              "another program (`v4l2-ctl --list-devices` lists cameras)")
        if self.size_wh:
            self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size_wh[0])
            self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size_wh[1])
        if self.requested_fps:
            self.cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
        # A one-frame driver buffer: the pipeline wants the newest frame, not a backlog.
        self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or None

    def read(self):
        ok, img = self.cap.read()
        if not ok or img is None:
            raise ReadError(f"{self.description}: no frame (unplugged or stalled)")
        return img, None

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class PyAVPicture(Picture):
    """A decoded PyAV frame, converted by swscale only when asked: at the model's input size
    in one pass (scale + BGR), at full size for an output that shows pixels."""

    def __init__(self, frame):
        self.frame = frame
        self.width, self.height = frame.width, frame.height

    def bgr(self):
        # threads=1: PyAV's default converter starts (and ends) 2 threads on every frame,
        # which is slower here than converting in this thread, at 360p and at 1080p.
        return self.frame.to_ndarray(format="bgr24", threads=1)

    def bgr_at(self, width: int, height: int):
        # swscale's area filter (a downscale: app/frames.py's SCALE_IN_ONE_PASS): cheaper than
        # its bilinear one, and the labels agree with cv2.resize INTER_LINEAR's on >= 99% of the
        # pixels (tests/app/test_decode.py, bench/decode.py).
        return self.frame.reformat(width, height, "bgr24", interpolation="AREA", threads=1).to_ndarray()


def hardware_types() -> list[str]:
    """The hardware device types this PyAV's FFmpeg was built with (e.g. cuda, vaapi, qsv)."""
    from av.codec.hwaccel import hwdevices_available

    return list(hwdevices_available())


# Device type -> None when a device of it opened in this process, else why not (tried once).
_DEVICES: dict = {}
_SAID: set = set()


def _device_problem(kind: str, codec) -> str | None:
    if kind not in _DEVICES:
        from av.codec.hwaccel import HWAccel

        try:
            HWAccel(kind, allow_software_fallback=True).create(codec)
            _DEVICES[kind] = None
        except Exception as e:   # no driver, no permission, no device: FFmpeg's error
            _DEVICES[kind] = f"{type(e).__name__}: {e}" if not str(e) else str(e).splitlines()[0]
    return _DEVICES[kind]


def _say_once(line: str) -> None:
    if line not in _SAID:
        _SAID.add(line)
        log.warning(line)


def choose_hwaccel(wanted: str, codec) -> str | None:
    """`hwaccel` -> the device type to decode `codec` on, or None (software). auto: the first
    of the codec's device types this FFmpeg has whose device opens, else software, said once in
    one line. An explicit type this FFmpeg lacks, or whose device does not open: InputError."""
    if wanted in (None, "none"):
        return None
    have = hardware_types()
    hint = (f"this FFmpeg (PyAV) has {', '.join(have) or 'no hardware device types'}; use --hwaccel auto "
            "(hardware where it works, else software) or none")
    if wanted != "auto" and wanted not in have:
        raise InputError(f"--hwaccel {wanted}: not in this FFmpeg; {hint}")
    kinds = [c.device_type.name for c in codec.hardware_configs if c.is_supported]
    if wanted != "auto":
        if wanted not in kinds:
            _say_once(f"decode: --hwaccel {wanted} cannot decode {codec.name} (it can: {', '.join(kinds) or 'none'}); "
                      f"decoding {codec.name} in software")
            return None
        problem = _device_problem(wanted, codec)
        if problem:
            raise InputError(f"--hwaccel {wanted}: no {wanted} device opens here ({problem}); {hint}")
        return wanted
    problems = []
    for kind in (k for k in kinds if k in have):
        problem = _device_problem(kind, codec)
        if problem is None:
            return kind
        problems.append(f"{kind}: {problem}")
    _say_once(f"decode: hwaccel auto: no hardware decoder for {codec.name} works here"
              + (f" ({'; '.join(problems)})" if problems else f" (this FFmpeg has {', '.join(have) or 'none'})")
              + "; decoding in software")
    return None


def hwaccel_report(codec_name: str = "h264") -> dict:
    """For `bisenet doctor`: each device type this FFmpeg can decode `codec_name` on, None
    when its device opens here, else why not; and what `--hwaccel auto` picks for it."""
    import av

    codec = av.codec.Codec(codec_name, "r")
    have = hardware_types()
    kinds = [c.device_type.name for c in codec.hardware_configs if c.is_supported and c.device_type.name in have]
    devices = {kind: _device_problem(kind, codec) for kind in kinds}
    return {"codec": codec_name, "devices": devices,
            "auto": next((kind for kind, problem in devices.items() if problem is None), "software")}


class PyAVReader(Reader):
    """A video file or a network stream, decoded by PyAV (FFmpeg). Source timestamps are the
    stream's presentation times in seconds. `hwaccel`: auto, none or a device type
    (choose_hwaccel); `skip_frame`: "nonkey" decodes keyframes only. `pictures`: read() hands
    out PyAVPictures instead of BGR arrays (set by the pipeline's camera opener)."""

    def __init__(self, url: str, live: bool = False, options: dict | None = None, timeout_s: float = 10.0,
                 hwaccel: str = "none", skip_frame: str = "none"):
        self.url = url
        self.live = live
        self.options = options or {}
        self.timeout_s = timeout_s
        self.hwaccel = hwaccel
        self.skip_frame = skip_frame
        self.pictures = False
        self.decoder = ""          # e.g. "h264 (software)", "h264 (cuda)": the start line says it
        self.description = redact_url(url)
        self.container = None
        self._frames = None
        self.decoded = 0
        self.corrupt_frames = 0    # decoded with errors (FFmpeg concealed them): passed on, counted
        self.declared = 0          # frames the file's header announces (0: unknown)
        self.size = None           # (width, height) the stream declares, once open
        self.at_end = False

    def open(self) -> None:
        self.container = self._open(None)
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"{self.url} has no video stream")
        stream = self.container.streams.video[0]
        device = choose_hwaccel(self.hwaccel, stream.codec_context.codec)
        if device is not None:   # opened again with the device (decided once per process per type)
            self.container.close()
            self.container = self._open(device)
            stream = self.container.streams.video[0]
        ctx = stream.codec_context
        self.size = (ctx.width, ctx.height)   # what the stream declares
        if ctx.is_hwaccel:
            self.decoder = f"{ctx.codec.name} ({device})"
        else:
            stream.thread_type = "AUTO"   # frame-threaded decoding: decode keeps up with the model
            self.decoder = f"{ctx.codec.name} (software)"
        if self.skip_frame == "nonkey":
            ctx.skip_frame = "NONKEY"
            self.decoder += ", keyframes only"
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.declared = 0 if self.live or self.skip_frame == "nonkey" else int(stream.frames or 0)
        self._frames = self.container.decode(stream)
        self._pending = []
        if self.live:
            # A live stream's header rate is often FFmpeg's default or guess (MJPEG over HTTP:
            # 25, with timestamps made up at 25): the rate the frames arrive at is the stream's.
            self.fps = self._measure_fps() or self.fps

    def _open(self, device: str | None):
        import av
        from av.codec.hwaccel import HWAccel

        started = time.monotonic()
        hwaccel = None if device is None else HWAccel(device, allow_software_fallback=True)
        try:
            return av.open(self.url, options=self.options, timeout=self.timeout_s, hwaccel=hwaccel)
        except (av.error.FFmpegError, OSError) as e:
            if self.live and time.monotonic() - started >= 0.9 * self.timeout_s:
                # PyAV's timeout ends FFmpeg's wait, which then reports "Invalid data found".
                raise SourceError(f"cannot open {self.url}: timed out, no answer within {self.timeout_s:g} s "
                                  "(the server accepted the connection but sent nothing); check that the "
                                  "stream is running, or raise --source-timeout") from None
            if getattr(e, "errno", None) == errno.ECONNREFUSED:
                where = urlsplit(self.url).netloc.rpartition("@")[2]
                raise SourceError(f"cannot open {self.url}: connection refused by {where}: is the server running, "
                                  "and listening on that port? (one that starts slowly: raise --source-timeout)") \
                    from None
            raise SourceError(f"cannot open {self.url}: {e}") from None

    def _measure_fps(self, frames: int = 8, within_s: float = 2.0) -> float | None:
        """Frames per second from the arrival times of the first frames (kept for read());
        None when too few came. Frames in a burst (buffered before the first read) are left out."""
        arrivals, deadline = [], time.monotonic() + within_s
        while len(self._pending) < frames and time.monotonic() < deadline:
            try:
                got = self._read_one()
            except ReadError as e:
                self._pending.append(e)   # raised by read() in its turn
                break
            self._pending.append(got)
            arrivals.append(time.monotonic())
            if got is None:
                break
        gaps = sorted(b - a for a, b in zip(arrivals, arrivals[1:]) if b - a > 0.002)
        if len(gaps) < 3:
            return None
        return 1.0 / gaps[len(gaps) // 2]

    def read(self):
        if self._pending:
            got = self._pending.pop(0)
            if isinstance(got, ReadError):
                raise got
        else:
            got = self._read_one()
        if got is None:
            return None
        frame, ts = got
        return (PyAVPicture(frame) if self.pictures else PyAVPicture(frame).bgr()), ts

    def _read_one(self):
        import av
        try:
            frame = next(self._frames)
        except (StopIteration, av.error.EOFError):
            self.at_end = True
            return None
        except (av.error.FFmpegError, OSError) as e:
            # FFmpeg skips most corrupt packets itself; what reaches here is a lost stream.
            raise ReadError(f"{self.url}: {e}") from None
        self.decoded += 1
        if frame.is_corrupt:
            self.corrupt_frames += 1
        return frame, frame.time   # converted in read(), to the sizes asked for

    def keyframes_only(self, on: bool) -> None:
        """Decode keyframes only from now on (`on`), or every frame again (unless `skip_frame`
        says keyframes only): app/record_follower.py while nothing shows its pictures."""
        stream = self.container.streams.video[0] if self.container is not None else None
        if stream is not None:
            want = "NONKEY" if on or self.skip_frame == "nonkey" else "DEFAULT"
            if stream.codec_context.skip_frame != want:
                stream.codec_context.skip_frame = want

    def counters(self) -> dict:
        """For the run summary, only when something was wrong: concealed decode errors, and
        frames a truncated file announced but did not have."""
        missing = max(0, self.declared - self.decoded) if self.at_end else 0
        out = {"corrupt_frames": self.corrupt_frames, "missing_frames": missing}
        return {k: v for k, v in out.items() if v}

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
        # The decode generator holds the stream's codec context: FFmpeg's decoder, its frame
        # threads and buffers live until it goes, and a closed reader may stay referenced (a
        # camera that left a running session keeps its counts for the summary).
        self._frames = None
        self._pending = []


class OpenCVVideoReader(Reader):
    """A video file through OpenCV (a fallback for files PyAV cannot open), or a GStreamer
    pipeline when `api` is cv2.CAP_GSTREAMER."""

    def __init__(self, target: str, api: int = cv2.CAP_ANY, live: bool = False, description: str = ""):
        self.target = target
        self.api = api
        self.live = live
        self.description = redact_url(description or target)
        self.decoder = "GStreamer (OpenCV)" if api == cv2.CAP_GSTREAMER else "OpenCV"
        self.cap = None

    def open(self) -> None:
        self.cap = cv2.VideoCapture(self.target, self.api)
        if not self.cap.isOpened():
            raise SourceError(f"cannot open {self.description} with OpenCV")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or None

    def read(self):
        ok, img = self.cap.read()
        if not ok or img is None:
            if self.live:
                raise ReadError(f"{self.description}: no frame")
            return None   # OpenCV cannot tell a corrupt tail from the end of a file
        ts_ms = self.cap.get(cv2.CAP_PROP_POS_MSEC)
        return img, (ts_ms / 1000.0 if ts_ms >= 0 and not self.live else None)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageListReader(Reader):
    """One image, or the images of a folder or glob, in sorted order. An unreadable image is
    a ReadError (counted as a decode error) and the next one is read."""

    decoder = "OpenCV (images)"

    def __init__(self, paths: list, description: str, fps: float | None = None):
        self.paths = list(paths)
        self.description = description
        self.fps = fps
        self._next = 0

    def read(self):
        if self._next >= len(self.paths):
            return None
        path = self.paths[self._next]
        self._next += 1
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ReadError(f"cannot decode image {path}")
        return img, None


def gstreamer_available() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def csi_pipeline(sensor_id: int, width: int = 1280, height: int = 720, fps: int = 30) -> str:
    """The usual Jetson CSI pipeline: nvarguscamerasrc -> NVMM NV12 -> BGRx -> BGR appsink."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
            "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            "appsink drop=true max-buffers=1 sync=false")


def _image_paths(folder: Path) -> list:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _camera_device(spec: str):
    if spec.isdigit():
        return int(spec)
    if spec.startswith("/dev/video"):
        return spec
    return None


def _opened(reader: Reader) -> Reader:
    reader.open()
    return reader


def _gstreamer(spec: str) -> None:
    if not gstreamer_available():
        raise SourceError(f"{spec.split(':')[0]} sources need OpenCV built with GStreamer; this OpenCV has "
                          "none (on a Jetson use the system python3-opencv, or build OpenCV with "
                          "-DWITH_GSTREAMER=ON)")


def open_csi(spec: str, cam: CameraSettings) -> Reader:
    _gstreamer(spec)
    sensor = spec[len("csi://"):] or "0"
    if not sensor.isdigit():
        raise SourceError(f"bad CSI source {spec!r}: use csi://0, csi://1 ...")
    w, h = cam.camera_size or (1280, 720)
    return _opened(OpenCVVideoReader(csi_pipeline(int(sensor), w, h, int(cam.camera_fps or 30)), cv2.CAP_GSTREAMER,
                                     live=True, description=spec))


def open_gstreamer(spec: str, cam: CameraSettings) -> Reader:
    _gstreamer(spec)
    return _opened(OpenCVVideoReader(spec[len("gst:"):].strip(), cv2.CAP_GSTREAMER, live=True, description=spec))


def open_camera(spec: str, cam: CameraSettings) -> Reader:
    return _opened(CameraReader(_camera_device(spec), cam.camera_size, cam.camera_fps))


def _decoding(cam: CameraSettings) -> dict:
    return {"hwaccel": cam.hwaccel, "skip_frame": cam.skip_frame}


def open_rtsp(spec: str, cam: CameraSettings) -> Reader:
    # TCP: no lost UDP packets -> no smeared frames; nobuffer: fewer frames of lag.
    # --rtsp-transport udp for servers without TCP; auto: FFmpeg's order (UDP, then TCP).
    transport = cam.rtsp_transport or "tcp"
    options = {"fflags": "nobuffer", "flags": "low_delay",
               **({} if transport == "auto" else {"rtsp_transport": transport})}
    return _opened(PyAVReader(spec, live=True, options=options, timeout_s=cam.source_timeout, **_decoding(cam)))


def open_http(spec: str, cam: CameraSettings) -> Reader:
    suffix = Path(spec.split("?")[0]).suffix.lower()
    return _opened(PyAVReader(spec, live=suffix not in VIDEO_SUFFIXES, timeout_s=cam.source_timeout,
                              **_decoding(cam)))


def open_folder(spec: str, cam: CameraSettings) -> Reader:
    paths = _image_paths(Path(spec))
    if not paths:
        raise SourceError(f"folder {spec} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageListReader(paths, f"folder {spec} ({len(paths)} images)", fps=cam.fps)


def open_glob(spec: str, cam: CameraSettings) -> Reader:
    paths = sorted(p for p in glob.glob(spec) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SourceError(f"glob {spec!r} matches no images")
    return ImageListReader(paths, f"glob {spec} ({len(paths)} images)", fps=cam.fps)


def open_image(spec: str, cam: CameraSettings) -> Reader:
    return ImageListReader([Path(spec)], f"image {spec}", fps=cam.fps)


def open_video_file(spec: str, cam: CameraSettings) -> Reader:
    try:
        return _opened(PyAVReader(spec, live=False, **_decoding(cam)))
    except SourceError as pyav_error:
        # e.g. a codec this FFmpeg build lacks. OpenCV's FFmpeg would print its own
        # log lines on a broken file; PyAV's message is the one that says why.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        try:
            return _opened(OpenCVVideoReader(spec))
        except SourceError:
            raise SourceError(f"{pyav_error} (truncated, or not a video?)") from None


# Every kind of source: kind -> opener(spec, camera settings) -> an opened Reader. The URL
# schemes are kinds by name (rtsp://..., csi://0, gst:...); source_kind tells the others apart.
SOURCES = {
    "csi": open_csi, "gst": open_gstreamer, "rtsp": open_rtsp, "rtsps": open_rtsp, "http": open_http,
    "https": open_http,
    "camera": open_camera, "folder": open_folder, "glob": open_glob, "image": open_image, "video": open_video_file,
}
NOT_SCHEMES = ("camera", "folder", "glob", "image", "video")


def source_kind(spec: str) -> str:
    """Which row of SOURCES opens `spec`."""
    scheme = spec.split(":", 1)[0].lower()
    if ":" in spec and scheme in SOURCES and scheme not in NOT_SCHEMES:
        return scheme
    if _camera_device(spec) is not None:
        return "camera"
    path = Path(spec)
    try:
        is_dir, exists = path.is_dir(), os.path.exists(path)
    except OSError as e:   # e.g. a name too long (is_dir raises for it)
        raise SourceError(f"--source {file_error(spec, e, 'read')}") from None
    if is_dir:
        return "folder"
    if any(c in spec for c in "*?["):
        return "glob"
    if not exists:
        raise SourceError(f"source {spec} does not exist: pass a camera index, a video or image file, a folder, "
                          "a glob, rtsp://, http://, csi://N or gst:<pipeline>")
    return "image" if path.suffix.lower() in IMAGE_SUFFIXES else "video"


def open_plain_source(spec: str, options=None, pictures: bool = False) -> Reader:
    """`spec` -> an opened Reader, without a reconnect wrapper. `options`: its camera's
    CameraSettings (app/settings.py); None: the defaults. `pictures`: a PyAV reader hands out
    PyAVPictures (converted at the sizes asked for) instead of BGR arrays."""
    spec = str(spec)
    reader = SOURCES[source_kind(spec)](spec, CameraSettings.of(options))
    if isinstance(reader, PyAVReader):
        reader.pictures = pictures
    return reader


def decoder_of(reader: Reader) -> str:
    """The decoder a reader uses ('' when unknown: a camera down at start); wrappers copy it."""
    return getattr(reader, "decoder", "") or ""


def inner_reader(reader: Reader) -> Reader:
    """The reader under the wrappers (app/reconnect.py's connection, --loop's LoopingReader,
    --realtime's RealtimeReader)."""
    while True:
        inner = getattr(reader, "inner", None) or getattr(getattr(reader, "_conn", None), "reader", None)
        if inner is None:
            return reader
        reader = inner


def size_of(reader: Reader) -> tuple[int, int] | None:
    """The (width, height) a reader's stream declares (None when unknown: a camera down at
    start, a reader that does not say)."""
    return getattr(inner_reader(reader), "size", None)


def live_by_kind(spec: str) -> bool:
    """A source that is live by what it is (a camera, an RTSP/CSI/GStreamer stream, an http://
    stream that is not a video file), known without opening it."""
    spec = str(spec)
    scheme = spec.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        return Path(spec.split("?")[0]).suffix.lower() not in VIDEO_SUFFIXES
    return scheme in ("rtsp", "rtsps", "csi", "gst") or _camera_device(spec) is not None


def open_source(spec: str, options=None, down_ok: bool = False, pictures: bool = False) -> Reader:
    """`--source` -> an opened Reader (`--realtime` paces a file, `--loop` starts it over).
    Live sources get the reconnect wrapper when the app.reconnect module is present (issue 5):
    ReconnectingReader(reopen, timeout_s, first=opened_reader) is a Reader; `reopen()` returns
    a freshly opened plain reader for the same spec. `pictures`: see open_plain_source."""
    cam = CameraSettings.of(options)
    try:
        reader = open_plain_source(spec, cam, pictures)
    except (SourceError, OSError) as e:
        # `down_ok` (several cameras): a live camera that is down at start is an outage like any
        # other (reconnected with backoff) while the other cameras run; a file is a start error.
        if not (down_ok and live_by_kind(spec)):
            raise
        return _down_at_start(spec, cam, e, pictures)
    if reader.live:
        try:
            from app.reconnect import ReconnectingReader   # live sources reopen with backoff
        except ModuleNotFoundError as e:
            if e.name != "app.reconnect":
                raise
            return reader
        wrapped = ReconnectingReader(lambda: open_plain_source(spec, cam, pictures), timeout_s=cam.source_timeout,
                                     first=reader)
        try:
            wrapped.open()   # waits for the first frame: a source that gives none is a one-line error now
        except (BisenetError, RuntimeError) as e:
            if not down_ok:
                raise
            return _down_at_start(spec, cam, e, pictures)
        wrapped.decoder = decoder_of(reader)
        return wrapped
    if cam.loop:
        reader = LoopingReader(reader, lambda: open_plain_source(spec, cam, pictures))
    if cam.realtime:
        reader = RealtimeReader(reader, cam.fps)
    return reader


def _down_at_start(spec: str, cam: CameraSettings, error: Exception, pictures: bool = False) -> Reader:
    from app.reconnect import ReconnectingReader

    reader = ReconnectingReader(lambda: open_plain_source(spec, cam, pictures), timeout_s=cam.source_timeout)
    reader.description, reader.camera = redact_url(spec), cam.name or ""
    reader.start_down(str(error).splitlines()[0] if str(error) else type(error).__name__)
    return reader


class LoopingReader(Reader):
    """--loop: start a file over at its end (demos, kiosks, soak tests). Source timestamps keep
    increasing across loops so pacing and video timestamps stay monotonic."""

    def __init__(self, inner: Reader, reopen):
        self.inner = inner
        self.reopen = reopen
        self.fps = inner.fps
        self.description = f"{inner.description} (looped)"
        self.decoder = decoder_of(inner)
        self._offset = 0.0
        self._last_ts = None
        self._empty = True    # no frame since the last (re)open: an empty file must not spin

    def read(self):
        got = self.inner.read()
        if got is None:
            if self._empty:
                return None
            self.inner.close()
            self.inner = self.reopen()
            step = 1.0 / (self.fps or 25.0)
            self._offset = (self._last_ts + step) if self._last_ts is not None else 0.0
            self._empty = True
            got = self.inner.read()
            if got is None:
                return None
        self._empty = False
        img, ts = got
        if ts is not None:
            ts += self._offset
            self._last_ts = ts
        return img, ts

    def close(self) -> None:
        self.inner.close()


class RealtimeReader(Reader):
    """--realtime: hand out a file's frames no faster than its own rate (its timestamps if
    any, else `fps`); the pipeline then treats it as live (the newest frame wins)."""

    live = True

    def __init__(self, inner: Reader, fps: float | None):
        self.inner = inner
        self.fps = inner.fps or fps or 25.0
        self.description = f"{inner.description} (paced at its own rate)"
        self.decoder = decoder_of(inner)
        self._t0 = None
        self._n = 0

    def open(self) -> None:
        pass   # the inner reader is already open

    def read(self):
        got = self.inner.read()
        if got is None:
            return None
        img, ts = got
        due = ts if ts is not None else self._n / self.fps
        if self._t0 is None:
            self._t0 = time.monotonic() - due
        self._n += 1
        wait = self._t0 + due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return img, ts

    def close(self) -> None:
        self.inner.close()
