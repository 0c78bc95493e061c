"""`--output http://@:8080`: the app serves its overlay to browsers.

    /               a small page: the live overlay and the current fps / latency
    /stream.mjpg    MJPEG (multipart/x-mixed-replace): works in every browser, VLC, ffplay
    /snapshot.jpg   the latest frame as one JPEG
    /stats.json     {"fps", "e2e_ms", "inference_ms", "frame", "title"}

`@` binds every interface; http://127.0.0.1:8080 binds one. JPEG encoding happens in the
client threads, once per frame however many clients watch, and only when someone does: the
pipeline's output thread only hands the latest frame over.
"""
from __future__ import annotations

import errno
import html
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import cv2

from app.frames import Sink
from app.hud import RateMeter

BOUNDARY = "bisenetframe"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ background: #111; color: #eee; font-family: sans-serif; margin: 0; }}
#stats {{ padding: 6px 10px; font-size: 18px; }}
#video {{ display: block; max-width: 100%; }}
</style></head>
<body>
<div id="stats">{title}: waiting for frames</div>
<img id="video" src="/stream.mjpg" alt="live segmentation overlay">
<script>
async function poll() {{
  try {{
    const s = await (await fetch('/stats.json', {{cache: 'no-store'}})).json();
    document.getElementById('stats').textContent =
      `${{s.fps.toFixed(1)}} fps | e2e ${{s.e2e_ms.toFixed(0)}} ms | ` +
      `model ${{s.inference_ms.toFixed(0)}} ms | frame ${{s.frame}}`;
  }} catch (e) {{
    document.getElementById('stats').textContent = 'stream ended';
  }}
}}
setInterval(poll, 500); poll();
</script>
</body></html>
"""


class HttpSink(Sink):
    def __init__(self, host: str, port: int, title: str = "bisenet live", jpeg_quality: int = 80):
        self.name = f"http://{host or '@'}:{port}"
        self.title = title
        self.quality = int(jpeg_quality)
        self.cond = threading.Condition()
        self.latest = None        # the newest overlay (BGR), replaced on every write
        self.seq = 0              # frame counter: clients wait for it to change
        self.jpeg = None          # (seq, bytes): the encoded latest frame, shared by clients
        self.frame_id = -1
        self.meter = RateMeter()
        self.closed = False
        try:
            # Bind now, not on the first frame: a busy port is an error before the model loads.
            self.server = ThreadingHTTPServer((host, port), self._handler_class())
        except OSError as e:
            todo = ("pick another port" if e.errno in (errno.EADDRINUSE, errno.EACCES)
                    else "use an address of this machine, e.g. http://127.0.0.1:PORT or http://@:PORT")
            raise RuntimeError(f"--output http://{host or '@'}:{port}: cannot listen "
                               f"({e.strerror or e}); {todo}") from None
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="http-sink", daemon=True)
        self.thread.start()
        shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
        print(f"serving the overlay at http://{shown}:{self.port}/", file=sys.stderr, flush=True)

    def write(self, frame, overlay_bgr, labels) -> None:
        now = time.monotonic()
        self.meter.add(now, (now - frame.capture_ts) * 1000.0, frame.timings.get("inference"))
        with self.cond:
            self.latest = overlay_bgr
            self.frame_id = frame.id
            self.seq += 1
            self.cond.notify_all()

    def stats(self) -> dict:
        return {**self.meter.snapshot(), "frame": self.frame_id, "title": self.title}

    def encoded(self) -> tuple[int, bytes | None]:
        """The latest frame as JPEG, encoded at most once per frame."""
        with self.cond:
            seq, img, cached = self.seq, self.latest, self.jpeg
        if img is None:
            return seq, None
        if cached is not None and cached[0] == seq:
            return cached
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        data = buf.tobytes() if ok else None
        with self.cond:
            if self.jpeg is None or self.jpeg[0] < seq:
                self.jpeg = (seq, data)
        return seq, data

    def wait_newer(self, seq: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.seq != seq or self.closed, timeout)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def _handler_class(self):
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, fmt, *args):   # keep the app's stderr for the app
                pass

            def _send(self, code, ctype, body: bytes):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = urlparse(self.path).path
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8",
                               PAGE.format(title=html.escape(sink.title)).encode())
                elif path == "/stats.json":
                    self._send(200, "application/json", json.dumps(sink.stats()).encode())
                elif path == "/snapshot.jpg":
                    _, data = sink.encoded()
                    if data is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", data)
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(404, "text/plain", b"not found: try / or /stream.mjpg\n")

            def _stream(self):
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seq = -1
                try:
                    while not sink.closed:
                        if not sink.wait_newer(seq, timeout=1.0):
                            continue
                        seq, data = sink.encoded()
                        if data is None:
                            continue
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass   # the viewer left; the pipeline goes on

        return Handler


def parse_http_spec(spec: str) -> tuple[str, int]:
    """http://@:8080 -> ('0.0.0.0', 8080); http://127.0.0.1:8080 -> ('127.0.0.1', 8080)."""
    u = urlparse(spec)
    host = u.netloc.rsplit(":", 1)[0] if ":" in u.netloc else u.netloc
    try:
        port = int(u.netloc.rsplit(":", 1)[1]) if ":" in u.netloc else 8080
    except ValueError:
        raise ValueError(f"--output {spec}: the port must be a number, e.g. http://@:8080") from None
    if host in ("@", ""):
        host = "0.0.0.0"
    return host, port


def open_http_sink(spec: str, options=None) -> HttpSink:
    host, port = parse_http_spec(spec)
    title = "bisenet live"
    model = getattr(options, "model", None)
    if model:
        title = f"bisenet live: {model}"
    return HttpSink(host, port, title=title)

