"""What flows through the run-time pipeline, and the two small protocols around it.

    Reader (source) --image--> capture thread --Frame--> queue --> preprocess --> engine
    --> labels --> overlay (only for the outputs that want pixels now) --> Sink.write(frame, overlay, labels)

Every captured Frame ends as exactly one of: written to the sinks, dropped with a reason
(the latency log's `reason` column), or skipped (a camera's detect_fps below its rate: not
preprocessed, not inferred). The pipeline counts all three.

A reader may hand out a `Picture` (a decoded frame not yet converted) instead of an array:
the Frame then converts it only to the sizes asked for: the full-size `image` on first access,
and for the model (`image_at`) either that image resized (`full_size`: something will show
the full-size picture anyway) or, when nothing will, one pass straight to the input size.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import BisenetError
from core.redact import redact_url


# A decoded picture this many times the model input's area or more goes to the model in one
# scale+convert pass (1080p -> 352x480: 12x); smaller ones keep OpenCV's resize of the BGR image.
SCALE_IN_ONE_PASS = 2.0


class Picture:
    """A decoded picture not yet converted to BGR (app/sources.py's PyAV frames)."""

    width: int
    height: int

    def bgr(self) -> np.ndarray:
        """uint8 BGR HxWx3 at its own size."""
        raise NotImplementedError

    def bgr_at(self, width: int, height: int) -> np.ndarray:
        """uint8 BGR at width x height, scaled and converted in one pass."""
        raise NotImplementedError


@dataclass
class Frame:
    id: int                       # 0, 1, 2 ... in capture order
    capture_ts: float             # time.monotonic() when the reader returned it
    image: np.ndarray             # uint8 BGR HxWx3 at source resolution (given a Picture: converted on first access)
    source_ts: float | None = None  # the stream's own timestamp (s), if it has one
    timings: dict = field(default_factory=dict)   # stage -> ms, filled along the way
    batch: np.ndarray | None = None   # the preprocessed model input, when done ahead of inference
    overlay: np.ndarray | None = None  # the finished overlay, when a GPU engine made it (run_fused)
    camera: str = "cam0"          # which camera took it (ids count per camera)
    batch_size: int | None = None   # how many frames were inferred together with it
    coverage: dict | None = None  # scene analytics: {zone: {class: ratio}} of its watched classes
    events: list = field(default_factory=list)   # scene analytics: the event messages it raised
    cell_counts: np.ndarray | None = None   # scene analytics: [zone cells, classes] label counts a GPU engine made
    # Something will want the full-size image (an output that shows pixels): the model's input
    # is resized from it. False: the model's input is made in one pass from the decoded picture.
    full_size: bool = True
    # overlay_picture record: the picture the outputs show instead of `image`, the record
    # input's (full size, uint8 BGR; app/record_follower.py). None: `image`.
    shown: np.ndarray | None = None

    @property
    def picture(self) -> np.ndarray:
        """What the outputs show the overlay on: `shown` if set, else `image`."""
        return self.image if self.shown is None else self.shown

    @property
    def size_wh(self) -> tuple[int, int]:
        """The source's (width, height), without converting a Picture."""
        if self._image is None:
            return self._picture.width, self._picture.height
        return self._image.shape[1], self._image.shape[0]

    def convert(self) -> None:
        """A frame shown at full size: convert its Picture now, in the caller's thread (the
        camera's capture thread, not the inference thread)."""
        if self.full_size and self._picture is not None:
            _get_image(self)

    def image_at(self, width: int, height: int) -> np.ndarray:
        """BGR for a (width, height) model input. A Picture of a frame nothing shows at full
        size (`full_size` False), at least SCALE_IN_ONE_PASS times the input's area, is scaled
        and converted in one pass (its full-size image is not made). Otherwise the full-size
        image, as it is (core/preprocess.py resizes it with OpenCV, the same bits as before:
        converting the full size once and resizing it costs less than converting twice)."""
        picture = self._picture
        if picture is None or self.full_size or picture.width * picture.height < SCALE_IN_ONE_PASS * width * height:
            return self.image
        return picture.bgr_at(width, height)


def _get_image(frame: Frame) -> np.ndarray:
    if frame._image is None:
        frame._image = frame._picture.bgr()
    return frame._image


def _set_image(frame: Frame, value) -> None:
    frame._picture, frame._image = (value, None) if isinstance(value, Picture) else (None, value)


# `image` stays the dataclass's third field (Frame(id, ts, image, ...)); reading it converts a
# Picture once, on first access (only the outputs that show pixels ask for it).
Frame._image = None
Frame._picture = None
Frame.image = property(_get_image, _set_image)


class Reader:
    """A source of images. `read()` blocks until an image, returns None at end of input,
    and raises `ReadError` for a bad frame or a lost stream (the caller decides to go on,
    reconnect, or stop)."""

    live: bool = False            # camera/RTSP: keep only the newest frame
    fps: float | None = None      # nominal rate if known (files: their own)
    description: str = ""

    def open(self) -> None:
        pass

    def read(self) -> tuple[np.ndarray, float | None] | None:
        """-> (BGR uint8 image, source timestamp in seconds or None), or None at the end."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class ReadError(BisenetError, RuntimeError):
    """One frame could not be decoded, or the stream was lost. (Its message names the source:
    passwords in URLs are redacted.)"""

    def __init__(self, message: str):
        super().__init__(redact_url(message))


class Sink:
    """An output. `open` is called once with the size of the pixels it gets (its `size`, or the
    first frame's); `write` once per frame.

    Pixels are drawn only for outputs that show them: before each frame the pipeline asks
    `wants_pixels()`, draws the overlay once per size wanted (`size`), and hands None to an
    output that wants none now (the null output; a served stream nobody watches)."""

    name: str = "sink"
    save_labels: bool = False     # it writes the label maps: the pipeline keeps labels on the host
    stop_requested: bool = False  # the user closed it (a window): the run stops
    # It pushes every frame to a receiver that must take it (an RTSP push): when it wrote none
    # of the frames it was given, the run did not do its job (exit 1, app/run.py run_problems).
    # Served outputs (http://, rtsp://@) with no viewer are not that: nobody asked.
    must_deliver: bool = False
    written: int = 0
    size: tuple[int, int] | None = None   # (width, height) it wants its pixels drawn at; None: the source's

    def wants_pixels(self) -> bool:
        """Whether it shows this frame's pixels; when False, write() gets None for the overlay."""
        return True

    def open(self, width: int, height: int, fps: float) -> None:
        pass

    def write(self, frame: Frame, overlay_bgr: np.ndarray | None, labels: np.ndarray) -> None:
        """overlay_bgr: None when wants_pixels() said False for this frame."""
        raise NotImplementedError

    def counters(self) -> dict:
        """Reconnect counters for the run summary ({} when nothing happened)."""
        return {}

    def close(self) -> None:
        pass
