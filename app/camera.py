"""One camera's state in one place: its reader (live sources reconnect on their own, see
app/reconnect.py), its sinks, its two queues and its counters.

A run has one or more cameras (`--source` repeated: cam0, cam1, ...; or a config's
`cameras:` list). Each has its own capture thread and output thread; one inference thread
serves them all through app/scheduler.py. One camera is simply a list of one. A camera may
join or leave a running pipeline (app/session.py's add_camera / remove_camera); one that
comes back under the same name goes on counting its frame ids from `first_id`.

`detect_fps` below the source's rate: `wants(frame)` keeps about that many frames per second
(by the stream's timestamps, else capture times); the others are skipped before any
preprocess or inference, and recorded as skipped (the latency log's reason `skipped`).
"""
from __future__ import annotations

import queue
import threading

from app.frames import Reader
from core.errors import InputError
from core.names import NAME_RULE, name_ok
from app.hud import RateMeter

PLACEHOLDER = "{camera}"


class Camera:
    def __init__(self, name: str, reader: Reader, sinks: list, *, max_frames: int | None = None,
                 out_fps: float | None = None, queue_size: int = 4, first_id: int = 0,
                 detect_fps: float | None = None, decoder_scale: bool = False, follower=None):
        self.name = name
        # overlay_picture record: its record input decoded too (app/record_follower.py, one of its sinks)
        self.follower = follower
        # The model's input may come from the decoder in one pass while nothing shows the frame
        # (app/frames.py image_at); off: always OpenCV's resize of the full-size image.
        self.decoder_scale = decoder_scale
        self.reader = reader
        self.sinks = list(sinks)
        self.max_frames = max_frames
        self.live = bool(reader.live)
        source_fps = reader.fps
        # Only below the source's rate does detect_fps skip anything (an unknown rate: it may).
        self.detect_fps = detect_fps if detect_fps and not (source_fps and detect_fps >= source_fps) else None
        self._due = None                         # the time the next frame to infer is due (detect_fps)
        self._slack = 0.25 / source_fps if source_fps else 0.001
        # Video outputs get the frames inferred: at the detect rate, unless --fps says otherwise.
        self.out_fps = out_fps or self.detect_fps
        # Live: one slot, a newer capture replaces the waiting one (the newest frame wins).
        # Files: a few frames ahead, blocking (nothing dropped).
        self.in_q = queue.Queue(maxsize=1 if self.live else max(1, queue_size))
        self.out_q = queue.Queue(maxsize=max(1, queue_size))
        self.captured = first_id                 # the next frame id (ids go on across a rebuild)
        self.first_id = first_id
        self.last_capture: float | None = None   # monotonic time of its newest frame
        self.stopping = threading.Event()        # this camera stops capturing (its own failure)
        self.finished = False                    # its end marker went through the scheduler
        self.sink_failures: dict = {}            # sink name -> its error (that sink was switched off)
        self.meter = RateMeter()                 # for the HUD
        self.tag = ""                            # log prefix, "cam1: " when there are several
        self.end_sent = False                    # the inference thread sent its output thread's end
        self.threads: list = []                  # its capture and output threads, once started

    @property
    def frames(self) -> int:
        """Frames this camera captured itself (its max_frames counts these)."""
        return self.captured - self.first_id

    @property
    def fps(self) -> float | None:
        """The rate its frames are inferred at: the source's, or detect_fps below it."""
        return min(filter(None, (self.reader.fps, self.detect_fps)), default=None)

    def wants(self, frame) -> bool:
        """detect_fps: is this frame due for inference? (Always, without detect_fps.) Due times
        step by 1/detect_fps from the first frame; after a gap they start again from the frame."""
        if self.detect_fps is None:
            return True
        t = frame.source_ts if frame.source_ts is not None else frame.capture_ts
        step, due = 1.0 / self.detect_fps, self._due
        if due is not None and due - 2 * step < t < due - self._slack:
            return False
        if due is None or abs(t - due) > step:   # the first frame, after a gap, or time went back
            due = t
        self._due = due + step
        return True

    def down(self) -> bool:
        """A live source waiting out an outage (reconnecting): the scheduler leaves it out."""
        return bool(getattr(self.reader, "down", False))

    def counters(self) -> dict:
        """Reconnect counters of a live source, decode counters of a file (empty when none)."""
        get = getattr(self.reader, "counters", None)
        return get() if callable(get) else {}


def camera_names(count: int) -> list[str]:
    return [f"cam{i}" for i in range(count)]


def check_name(name) -> str:
    name = str(name)
    if not name_ok(name):
        raise InputError(f"camera name {name!r}: use {NAME_RULE}; it goes into file names, URLs and MQTT topics")
    return name


def output_for(spec: str, camera: str, shared_by: int) -> str:
    """`--output` for one camera: `{camera}` replaced by its name. An output shared by several
    cameras that is a file, folder or stream must name the camera, or they would overwrite
    each other. http:// outputs are shared as they are: every camera is served on that port
    under /camera/NAME, with a grid of all of them at /."""
    spec = str(spec)
    if spec.startswith("http://") or spec.startswith("https://"):
        if PLACEHOLDER in spec:
            raise InputError(f"--output {spec}: no {PLACEHOLDER} in http:// outputs; every camera is served on "
                             "the one port as /camera/NAME, all of them as a grid at /")
        return spec
    if PLACEHOLDER in spec:
        return spec.replace(PLACEHOLDER, camera)
    if shared_by > 1 and spec not in ("null", "display"):
        raise InputError(f"--output {spec} with {shared_by} cameras: put {PLACEHOLDER} in it "
                         f"(e.g. out_{PLACEHOLDER}.mp4, folder_{PLACEHOLDER}/, rtsp://host:8554/{PLACEHOLDER})")
    return spec
