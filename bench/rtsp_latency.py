"""RTSP output latency: from `sink.write()` to a viewer having the decoded frame, through a
real RTSP server (rtsp-server-perl on 127.0.0.1), for the app's encoder settings side by side
with libx264's defaults. One run, same machine, same frames, same viewer.

    python bench/rtsp_latency.py                   # 320x240 at 25 fps, 150 frames per setting

Each frame carries its number as a black/white bar code in its top rows; the viewer (PyAV,
nobuffer, low_delay, slice threads only, as a low-latency player would) reads it back and looks up when that
frame was written. Encoder + RTP packetizing + relay + network stack + decoder, not the
display. Needs rtsp-server-perl and ffmpeg (apt-get install rtsp-server-perl ffmpeg).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BITS = 16          # frame number bits in the bar code
BAR_H = 16         # bar code height in pixels


def frame_with_code(base: np.ndarray, n: int) -> np.ndarray:
    img = base.copy()
    w = img.shape[1] // BITS
    for b in range(BITS):
        img[:BAR_H, b * w:(b + 1) * w] = 255 if (n >> b) & 1 else 0
    return img


def read_code(img: np.ndarray) -> int:
    w = img.shape[1] // BITS
    return sum(1 << b for b in range(BITS) if img[2:BAR_H - 2, b * w + 2:(b + 1) * w - 2].mean() > 127)


class DefaultX264Push:
    """The baseline: the same PyAV push with libx264's defaults (preset medium: B-frames,
    rc-lookahead 40, frame threads), only the GOP set to one second like the app."""

    def __init__(self, url: str, width: int, height: int, fps: int, bitrate: int):
        import av
        self.container = av.open(url, mode="w", format="rtsp", options={"rtsp_transport": "udp"})
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.bit_rate = bitrate
        self.stream.codec_context.gop_size = fps
        self.stream.codec_context.time_base = Fraction(1, 90000)
        self.t0 = None

    def write(self, img: np.ndarray, t: float) -> None:
        import av
        self.t0 = t if self.t0 is None else self.t0
        vf = av.VideoFrame.from_ndarray(img, format="bgr24")
        vf.pts, vf.time_base = int((t - self.t0) * 90000), Fraction(1, 90000)
        for p in self.stream.encode(vf):
            self.container.mux(p)

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:
            pass


class AppPush:
    """The app's RTSP output (app.rtsp_out.RtspPushSink)."""

    def __init__(self, url: str, width: int, height: int, fps: int, bitrate: int):
        from app.rtsp_out import RtspPushSink
        self.sink = RtspPushSink(url, bitrate=bitrate, transport="udp")
        self.sink.open(width, height, fps)

    def write(self, img: np.ndarray, t: float) -> None:
        from app.frames import Frame
        self.sink.write(Frame(0, t, img), img, None)

    def close(self) -> None:
        self.sink.close()


def measure(pusher_cls, relay, path: str, base: np.ndarray, fps: int, frames: int, bitrate: int) -> list:
    import av
    h, w = base.shape[:2]
    written = {}
    stop = threading.Event()
    pusher = pusher_cls(relay.push_url(path), w, h, fps, bitrate)

    def feed():
        n, t0 = 0, time.monotonic()
        while not stop.is_set() and n < 1 << BITS:
            t = time.monotonic()
            written[n] = t
            pusher.write(frame_with_code(base, n), t)
            n += 1
            stop.wait(max(0.0, t0 + n / fps - time.monotonic()))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    latencies = []
    try:
        deadline = time.monotonic() + 20
        while True:     # the stream exists once the pusher's first frame has gone out
            try:
                viewer = av.open(relay.pull_url(path), timeout=(5, 5), options={
                    "rtsp_transport": "udp", "fflags": "nobuffer"})
                break
            except av.error.FFmpegError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        stream = viewer.streams.video[0]
        stream.thread_type = "SLICE"   # frame threads would add frames of delay in the viewer
        stream.codec_context.flags |= 1 << 19   # AV_CODEC_FLAG_LOW_DELAY, like ffplay -flags low_delay
        for frame in viewer.decode(stream):
            now = time.monotonic()
            n = read_code(frame.to_ndarray(format="bgr24"))
            if n in written:
                latencies.append((now - written[n]) * 1000.0)
            if len(latencies) >= frames:
                break
        viewer.close()
    finally:
        stop.set()
        feeder.join(timeout=5)
        pusher.close()
    return latencies[10:]    # the first frames include the viewer's start-up


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="320x240")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--bitrate", type=int, default=1_000_000)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))

    import cv2
    from testkit.rtsp_server import SAMPLE_VIDEO, RtspRelay
    cap = cv2.VideoCapture(str(SAMPLE_VIDEO))
    ok, img = cap.read()
    cap.release()
    base = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)

    relay = RtspRelay(Path(tempfile.mkdtemp(prefix="rtsp-latency-"))).start()
    try:
        rows = []
        for name, cls, path in (("app: zerolatency, ultrafast, GOP=fps", AppPush, "/app"),
                                ("libx264 defaults, GOP=fps", DefaultX264Push, "/default")):
            lat = np.array(measure(cls, relay, path, base, args.fps, args.frames, args.bitrate))
            rows.append((name, len(lat), *np.percentile(lat, [50, 90]), lat.max()))
    finally:
        relay.kill()
    print(f"RTSP write -> viewer decoded, {width}x{height} @ {args.fps} fps, {args.bitrate // 1000} kbit/s, "
          "via rtsp-server-perl on 127.0.0.1 (UDP)")
    print(f"{'encoder settings':<40}{'frames':>7}{'p50 ms':>9}{'p90 ms':>9}{'max ms':>9}")
    for name, n, p50, p90, mx in rows:
        print(f"{name:<40}{n:>7}{p50:>9.1f}{p90:>9.1f}{mx:>9.1f}")
    print(f"median latency, defaults / app: {rows[1][2] / rows[0][2]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
