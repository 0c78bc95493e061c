"""`--output http://@:8080`: the app serves its overlay to browsers, VLC and ffplay.

The serving itself (page, MJPEG stream, snapshot, stats, /metrics, /healthz, auth, limits,
TLS) lives in app/server/; this sink only hands each overlay to one camera of that server.
`@` binds every interface (and then needs a token, see docs/service.md); http://127.0.0.1:8080
binds loopback only.
"""
from __future__ import annotations

from urllib.parse import urlsplit

from core.errors import InputError
from app.frames import Sink
from app.server import AppServer, ServerOptions


class HttpSink(Sink):
    """Listens on host:port of `server` (its own loopback-default server when none is given)
    and publishes every written frame as camera `camera`: its overlay while someone watches,
    else only its timing (the page's fps and latency)."""

    def __init__(self, host: str, port: int, title: str = "bisenet live", server: AppServer | None = None,
                 camera: str = "cam0"):
        self.own_server = server is None
        self.server = server or AppServer(ServerOptions())
        try:
            self.port = self.server.listen(host, port)
        except Exception:
            if self.own_server:
                self.server.close()
            raise
        self.name = f"{self.server.scheme}://{host or '@'}:{self.port}"
        self.camera = self.server.cameras.get(camera) or self.server.add_camera(camera, title)

    def wants_pixels(self) -> bool:
        """Only while someone watches (a viewer on the stream or the page, a snapshot request)."""
        return self.camera.watched()

    def write(self, frame, overlay_bgr, labels) -> None:
        self.camera.publish(frame, overlay_bgr)

    def close(self) -> None:
        self.camera.end()
        if self.own_server:
            self.server.close()


def parse_http_spec(spec: str) -> tuple[str, int]:
    """http://@:8080 -> ('0.0.0.0', 8080); http://127.0.0.1:8080 -> ('127.0.0.1', 8080)."""
    u = urlsplit(spec)
    host = u.netloc.rsplit(":", 1)[0] if ":" in u.netloc else u.netloc
    try:
        port = int(u.netloc.rsplit(":", 1)[1]) if ":" in u.netloc else 8080
    except ValueError:
        raise InputError(f"--output {spec}: the port must be a number, e.g. http://@:8080") from None
    if host in ("@", ""):
        host = "0.0.0.0"
    return host, port


def open_http_sink(spec: str, server: AppServer | None = None, camera: str = "cam0") -> HttpSink:
    host, port = parse_http_spec(spec)
    title = server.title if server is not None else "bisenet live"   # never a file path
    return HttpSink(host, port, title=title, server=server, camera=camera)
