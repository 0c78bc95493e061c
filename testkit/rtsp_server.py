"""Test helpers: a real RTSP relay (Debian's rtsp-server-perl) and an ffmpeg publisher on
127.0.0.1, each started on free ports and always killed by the fixture that made it.

rtsp-server-perl is a relay: publishers ANNOUNCE/RECORD on `source_port`, viewers
DESCRIBE/PLAY on `client_port`; RTP goes over UDP both ways (it has no TCP interleaving).
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from testkit.app_helpers import SAMPLE_VIDEO  # noqa: E402  (re-exported for the RTSP tests)

RTSP_SERVER = shutil.which("rtsp-server-perl") or shutil.which("rtsp-server.pl")
FFMPEG = shutil.which("ffmpeg")

needs_rtsp_server = pytest.mark.skipif(
    RTSP_SERVER is None or FFMPEG is None,
    reason="needs Debian's rtsp-server-perl and ffmpeg (apt-get install rtsp-server-perl ffmpeg; "
           "scripts/test.sh installs them)")


# /usr/bin/rtsp-server-perl's own few lines, plus the RTP port base: its --rtp_start_port is
# reset to the package default 20000 whenever a connection closes with no stream mounted,
# so two relays (or a leftover one) would fight over UDP 20000.
LAUNCHER = (
    "use AnyEvent; use RTSP::Server; $RTSP::Server::RTP_START_PORT = shift @ARGV; "
    "my $srv = RTSP::Server->new_with_options(rtp_start_port => $RTSP::Server::RTP_START_PORT); "
    "$srv->listen; AnyEvent->condvar->recv;")


def _die_with_parent() -> None:
    """In the child: SIGKILL it when the test process dies, even by a crash (Linux)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG


def _kill_group(proc):
    """SIGKILL a process started with start_new_session=True and its children; -> None."""
    if proc is not None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    return None


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _udp_range_free(start: int, count: int) -> bool:
    socks = []
    try:
        for port in range(start, start + count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


class RtspRelay:
    """rtsp-server-perl on 127.0.0.1. Ports stay fixed across stop()/start() so that clients
    can reconnect to the same URLs."""

    def __init__(self, log_dir: Path):
        self.client_port = free_tcp_port()
        self.source_port = free_tcp_port()
        # RTP/RTCP ports the relay allocates for publishers, 2 per stream from this base.
        for _ in range(50):
            base = random.randrange(30000, 60000, 2)
            if _udp_range_free(base, 8):
                break
        self.rtp_start_port = base
        self.log_path = Path(log_dir) / f"rtsp-server-{self.client_port}.log"
        self.proc: subprocess.Popen | None = None

    def push_url(self, path: str = "/stream") -> str:
        return f"rtsp://127.0.0.1:{self.source_port}{path}"

    def pull_url(self, path: str = "/stream") -> str:
        return f"rtsp://127.0.0.1:{self.client_port}{path}"

    def start(self) -> "RtspRelay":
        assert self.proc is None
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["perl", "-e", LAUNCHER, str(self.rtp_start_port),
             "--clientport", str(self.client_port), "--serverport", str(self.source_port),
             "--client_listen_address", "127.0.0.1", "--source_listen_address", "127.0.0.1",
             "--loglevel", "2"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
        log.close()
        wait_for_port(self.source_port)
        wait_for_port(self.client_port)
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a goodbye, like a crashed or unplugged box."""
        self.proc = _kill_group(self.proc)


class FfmpegPublisher:
    """ffmpeg pushing a video file in a loop at its own rate (-re) to an RTSP server over UDP,
    like an IP camera."""

    def __init__(self, url: str, video: Path = SAMPLE_VIDEO, log_dir: Path | None = None):
        self.url, self.video = url, video
        self.log_path = Path(log_dir or "/tmp") / f"ffmpeg-push-{abs(hash(url))}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FfmpegPublisher":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "warning", "-re", "-stream_loop", "-1",
             "-i", str(self.video),
             # Re-encoded with a keyframe every second like a real camera (the sample file
             # has a single keyframe, so a viewer joining mid-loop would wait for the loop).
             "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "15",
             "-threads", "1", "-f", "rtsp", "-rtsp_transport", "udp", self.url],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
        log.close()
        return self

    def kill(self) -> None:
        self.proc = _kill_group(self.proc)

    def stop(self) -> None:
        """SIGTERM: ffmpeg ends the stream with a TEARDOWN, so the relay frees the path for
        the next publisher (after a SIGKILL rtsp-server-perl keeps the path taken: 403)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.proc = _kill_group(self.proc)


def wait_published(url: str, timeout_s: float = 20.0, transport: str = "udp") -> tuple[int, int]:
    """Block until a viewer can open `url` (the server answers 404 until the publisher has
    announced the stream) -> the stream's (width, height)."""
    deadline = time.monotonic() + timeout_s
    while True:
        probe = subprocess.run(
            [shutil.which("ffprobe"), "-v", "error", "-rtsp_transport", transport, "-select_streams", "v:0",
             "-show_entries", "stream=width,height", "-of", "csv=p=0", url],
            capture_output=True, text=True, timeout=timeout_s)
        if probe.returncode == 0 and probe.stdout.strip():
            return tuple(int(v) for v in probe.stdout.strip().split(",")[:2])
        if time.monotonic() > deadline:
            raise RuntimeError(f"ffprobe {url}: {probe.stderr.strip()}")
        time.sleep(0.3)


def decode_rtsp(url: str, frames: int, timeout_s: float = 20.0, transport: str = "udp"):
    """A real RTSP viewer (ffmpeg): decode `frames` frames -> list of BGR uint8 arrays.
    Raises on timeout. The viewer joins mid-stream, so it starts at the next keyframe."""
    import numpy as np

    width, height = wait_published(url, timeout_s, transport)
    out = subprocess.run(
        [FFMPEG, "-nostdin", "-v", "error", "-rtsp_transport", transport, "-i", url,
         "-frames:v", str(frames), "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        capture_output=True, timeout=timeout_s)
    n = len(out.stdout) // (width * height * 3)
    data = np.frombuffer(out.stdout[: n * width * height * 3], np.uint8)
    return [f for f in data.reshape(n, height, width, 3)]


@pytest.fixture
def relay(tmp_path):
    """A running rtsp-server-perl on free 127.0.0.1 ports, killed at the end of the test."""
    if RTSP_SERVER is None or FFMPEG is None:
        pytest.skip("needs Debian's rtsp-server-perl and ffmpeg (apt-get install rtsp-server-perl ffmpeg)")
    server = RtspRelay(tmp_path)
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
def publishers(tmp_path):
    """Make ffmpeg publishers with `publishers(url)`; all are killed at the end of the test."""
    made = []

    def make(url: str, video: Path = SAMPLE_VIDEO) -> FfmpegPublisher:
        pub = FfmpegPublisher(url, video, tmp_path)
        made.append(pub)
        return pub.start()

    try:
        yield make
    finally:
        for pub in made:
            pub.kill()


def sample_image(width: int, height: int) -> np.ndarray:
    """A real street frame, so the H.264 round trip is judged on natural image content."""
    cap = cv2.VideoCapture(str(SAMPLE_VIDEO))
    ok, img = cap.read()
    cap.release()
    assert ok, SAMPLE_VIDEO
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
