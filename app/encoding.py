"""The one H.264 policy of every encoded output: video files (app/sinks.py), the RTSP push
(app/rtsp_out.py) and event clips (app/analytics/clips.py).

    codec = h264_encoder()                  # libx264, else the next H.264 encoder that opens
    set_up_encoder(stream.codec_context, codec, *even_size(w, h), fps, x264={"preset": "veryfast"})
    keys = KeyframeClock()
    image = pad_to_even(overlay)            # every frame, before VideoFrame.from_ndarray
    if keys.due(t): frame.pict_type = KEYFRAME

- Odd sizes: yuv420p halves the chroma planes, so width and height must be even. An odd
  frame is PADDED by one replicated row/column, never cropped or rescaled: the overlay's last
  column or row may be the one that matters (an edge label, the seam of side-by-side), a
  replicated line is invisible, and the decoded video holds every source pixel. Cropping
  would silently drop them; rescaling would blur every label edge.
- Encoder: libx264 (PyAV's PyPI wheels include it). An FFmpeg without it falls back to the
  first other H.264 encoder that opens here (openh264, NVENC, Quick Sync, AMF, VA-API,
  VideoToolbox, Media Foundation, V4L2), said in one line once per process; none: one line
  naming the fix. x264's options (preset, crf, tune, x264-params) go to libx264 only; another
  encoder gets a bit rate instead of a CRF.
- Keyframes: one every KEYFRAME_EVERY_S seconds. The GOP is that many frames at the nominal
  fps, and KeyframeClock forces one by stream time too, so a live source that drops frames
  still gets a keyframe (a new fragment, a point a late viewer can start from) every second.
"""
from __future__ import annotations

import sys
from fractions import Fraction

import cv2
import numpy as np

from core.errors import SetupError

KEYFRAME_EVERY_S = 1.0
# In order of preference; the hardware ones open only where their device is.
H264_ENCODERS = ("libx264", "libopenh264", "h264_nvenc", "h264_qsv", "h264_amf", "h264_vaapi",
                 "h264_videotoolbox", "h264_mf", "h264_v4l2m2m")
NO_H264 = ("this FFmpeg build has no usable H.264 encoder (tried {tried}); install PyAV from PyPI "
           "(pip install av), whose wheels include libx264")

_chosen: dict = {}                 # candidates -> the encoder chosen for them, once per process


def even_size(width: int, height: int) -> tuple[int, int]:
    """The encoded size of a width x height frame: odd sides padded by one (see the module's rule)."""
    return int(width) + int(width) % 2, int(height) + int(height) % 2


def pad_to_even(image: np.ndarray) -> np.ndarray:
    """The frame at even_size: its last row/column replicated once where a side is odd (nothing is cropped)."""
    h, w = image.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return image
    return cv2.copyMakeBorder(image, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)


def h264_encoder(candidates: tuple = H264_ENCODERS, log=None) -> str:
    """The first of `candidates` this FFmpeg has and can open; a fall-back from the first is said
    once (one line on stderr, or through `log`). SetupError (one line) when none opens."""
    key = tuple(candidates)
    if key not in _chosen:
        _chosen[key] = next((name for name in key if _opens(name)), None)
        chosen = _chosen[key]
        if chosen is not None and chosen != key[0]:
            say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
            rate = "" if chosen == "libx264" else " at a fixed bit rate (pip install av: PyPI's wheels include libx264)"
            say(f"warning: no usable {key[0]} in this FFmpeg build; H.264 through {chosen} instead{rate}")
    if _chosen[key] is None:
        raise SetupError(NO_H264.format(tried=", ".join(key)))
    return _chosen[key]


def _opens(name: str) -> bool:
    """Whether encoder `name` exists and opens a small yuv420p picture here (a hardware encoder
    is listed wherever FFmpeg was built with it, but opens only where its device is)."""
    import av
    if name not in av.codecs_available:
        return False
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 64, 64, "yuv420p", Fraction(1, 25)
        ctx.open()
        return True
    except (av.error.FFmpegError, ValueError, OSError):
        return False


def keyframe_interval(fps: float) -> int:
    """The GOP in frames: KEYFRAME_EVERY_S at the nominal frame rate."""
    return max(1, round(float(fps) * KEYFRAME_EVERY_S))


def fallback_bit_rate(width: int, height: int, fps: float) -> int:
    """For an encoder without x264's CRF: about 0.15 bit per pixel keeps it free of blocking."""
    return max(1_000_000, int(0.15 * width * height * fps))


def set_up_encoder(ctx, codec: str, width: int, height: int, fps: float, x264: dict | None = None,
                   bit_rate: int | None = None) -> None:
    """The policy on one codec context (a stream's or a bare one) before it opens: yuv420p at
    width x height (even: even_size), a keyframe every KEYFRAME_EVERY_S at `fps`, `x264`'s
    options for libx264 only, `bit_rate` where given, else fallback_bit_rate for encoders
    without a CRF."""
    ctx.width, ctx.height, ctx.pix_fmt = int(width), int(height), "yuv420p"
    ctx.gop_size = keyframe_interval(fps)
    if codec == "libx264" and x264:
        ctx.options = dict(x264)
    if bit_rate:
        ctx.bit_rate = int(bit_rate)
    elif codec != "libx264":
        ctx.bit_rate = fallback_bit_rate(width, height, fps)


class KeyframeClock:
    """A keyframe every KEYFRAME_EVERY_S of stream time, whatever the frame rate: due(t) is True
    for the first frame and then for the first frame at or past the last keyframe + the interval."""

    def __init__(self):
        self.next = None

    def due(self, t: float) -> bool:
        if self.next is not None and t < self.next:
            return False
        self.next = t + KEYFRAME_EVERY_S
        return True


def force_keyframe(video_frame) -> None:
    """Make the encoder write this PyAV VideoFrame as a keyframe."""
    import av
    video_frame.pict_type = av.video.frame.PictureType.I
