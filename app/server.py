"""The one HTTP(S) server of the app: live page, MJPEG streams, snapshots, stats, /metrics and
/healthz, with authentication, Host checks and per-client limits in one place.

    /                 page: the live overlay and fps / latency     /camera/NAME             the same
    /stream.mjpg      MJPEG (browsers, VLC, ffplay)                /camera/NAME/stream.mjpg
    /snapshot.jpg     the latest frame as one JPEG                 /camera/NAME/snapshot.jpg
    /stats.json       {"fps", "e2e_ms", "inference_ms", "frame", "title"}  /camera/NAME/stats.json
    /metrics          Prometheus text format (app/metrics.py)
    /healthz          200 "ok", or 503 naming the cameras whose source is stale
    /api/coverage     scene analytics: newest coverage per camera and zone, recent events (app/analytics)
    /clips/CAM/FILE   an event's clip (.mp4) or snapshot (.jpg) from --clips-dir
The short paths are the first camera registered (`cam0` for a single camera); with several
cameras `/` is a grid of all of them (snapshots, stats, links to /camera/NAME). A metrics-only
listener (`--metrics-port`) serves /metrics and /healthz alone. Nothing is served from files.

aiohttp runs in its own thread with its own asyncio event loop inside the app process: every
connection is a coroutine, not a thread, so the thread count stays flat however many clients
come; JPEG encoding runs in one worker thread, once per frame however many viewers watch, and
only when someone does. aiohttp brings the HTTP parsing, header size limits, keep-alive and
idle timeouts, streaming responses and TLS; what it lacks is added here:
  - a connection cap per listener (`--max-clients` viewers plus a few slots for page, stats and
    metrics requests): past it a client gets a 503 at once and its socket is closed;
  - a stream cap: at most `--max-clients` MJPEG viewers, the rest get 503;
  - per viewer: a small socket send buffer, at most one frame pending in user space (a viewer
    still busy with the previous frame skips the newer ones), and a send timeout after which
    a viewer that does not read is dropped;
  - auth (`Auth`): a token as `Authorization: Bearer`, as HTTP Basic (any user name, the token
    as password), or once as `/?token=` which sets an HttpOnly cookie; compared in constant
    time; wrong tokens rate-limited per client address. Required whenever a listener binds
    beyond loopback (a token is generated and printed once if none is given), on loopback
    only when `--auth-token`/`BISENET_AUTH_TOKEN` is given; `--no-auth` turns it off loudly;
  - a Host header check against DNS rebinding: IP literals, localhost, this machine's name
    and the names in `--allowed-hosts`.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import os
import secrets
import socket
import ssl
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import quote

import cv2

from app import validate
from app.camera import check_name
from app.hud import RateMeter
from app.metrics import Metrics

log = logging.getLogger(__name__)

BOUNDARY = "bisenetframe"
TOKEN_ENV = "BISENET_AUTH_TOKEN"
COOKIE = "bisenet_session"
HEADROOM = 16                 # connections beyond --max-clients for page / stats / metrics requests
VIEWER_SNDBUF = 64 * 1024     # bytes; the kernel doubles it. Caps what a non-reading viewer pins
MAX_FAILURES = 5              # wrong tokens per address within FAILURE_WINDOW_S before a lockout
FAILURE_WINDOW_S = 60.0
LOCKOUT_S = 60.0
MAX_TRACKED_ADDRESSES = 4096  # bounded memory for the rate limiter

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ background: #111; color: #eee; font-family: sans-serif; margin: 0; }}
#stats {{ padding: 6px 10px; font-size: 18px; }}
#video {{ display: block; max-width: 100%; }}
</style></head>
<body>
<div id="stats">{title}: waiting for frames</div>
<img id="video" src="{prefix}/stream.mjpg" alt="live segmentation overlay">
<div id="events"></div>
<script>
async function events() {{   // scene analytics: the recent events, with snapshot and clip links
  const r = await fetch('/api/coverage', {{cache: 'no-store'}});
  if (!r.ok) return;
  const rows = (await r.json()).events.filter(m => m.type !== 'update').slice(0, 20).map(m => {{
    const e = m.event, link = (p, t) => p ? ` <a href="/clips/${{e.camera}}/${{p.split('/').pop()}}">${{t}}</a>` : '';
    return `<div>${{m.type}} ${{e.camera}} ${{e.zone}} ${{e.class}} peak ${{(e.peak * 100).toFixed(0)}}%` +
           link(e.snapshot, 'snapshot') + link(e.clip, 'clip') + '</div>';
  }});
  document.getElementById('events').innerHTML = rows.join('');
}}
setInterval(events, 2000); events();
async function poll() {{
  try {{
    const s = await (await fetch('{prefix}/stats.json', {{cache: 'no-store'}})).json();
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


# Several cameras: / shows them all. Tiles refresh from snapshot.jpg (each asks for the next
# frame when the last one is on screen) rather than one MJPEG stream each: browsers open at
# most 6 connections per host, so 8 streams would starve; /camera/NAME has the full-rate stream.
GRID_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ background: #111; color: #eee; font-family: sans-serif; margin: 0; }}
#grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 6px; padding: 6px; }}
.tile a {{ color: #eee; }} .tile img {{ display: block; width: 100%; background: #222; min-height: 120px; }}
.stats {{ padding: 3px 0; font-size: 14px; }}
</style></head>
<body>
<div id="grid">{tiles}</div>
<script>
for (const tile of document.querySelectorAll('.tile')) {{
  const base = '/camera/' + encodeURIComponent(tile.dataset.camera);
  const img = tile.querySelector('img'), stats = tile.querySelector('span');
  let shown = null;   // the blob: URL on screen; a new frame replaces it only once it is complete
  const refresh = async () => {{
    let wait = 1000;
    try {{
      const r = await fetch(base + '/snapshot.jpg', {{cache: 'no-store'}});
      if (r.ok) {{
        const url = URL.createObjectURL(await r.blob());
        await new Promise((done) => {{ img.onload = img.onerror = done; img.src = url; }});
        if (shown) URL.revokeObjectURL(shown);
        shown = url;
        wait = 100;
      }}
    }} catch (e) {{}}
    setTimeout(refresh, wait);
  }};
  const poll = async () => {{
    try {{
      const s = await (await fetch(base + '/stats.json', {{cache: 'no-store'}})).json();
      stats.textContent = `${{s.fps.toFixed(1)}} fps | e2e ${{s.e2e_ms.toFixed(0)}} ms | ` +
        `model ${{s.inference_ms.toFixed(0)}} ms | frame ${{s.frame}}`;
    }} catch (e) {{
      stats.textContent = 'no stats';
    }}
  }};
  window.addEventListener('load', () => {{ refresh(); setInterval(poll, 1000); poll(); }});
}}
</script>
</body></html>
"""
# One tile; the first frame is in the page itself (the page has loaded once every camera's has).
GRID_TILE = ('<div class="tile" data-camera="{name}"><div class="stats"><a href="/camera/{path}">{name}</a> '
             '<span>waiting for frames</span></div><img src="/camera/{path}/snapshot.jpg" '
             'alt="{name}: live segmentation overlay"></div>')


class ServerError(RuntimeError):
    """A listener that cannot start; one line that says what to do."""


@dataclass
class ServerOptions:
    auth_token: str | None = None     # explicit token (flag or environment)
    no_auth: bool = False
    allowed_hosts: tuple = ()
    max_clients: int = 16
    tls_cert: str | None = None
    tls_key: str | None = None
    idle_timeout_s: float = 10.0      # a request must arrive within this; idle keep-alive too
    send_timeout_s: float = 10.0      # a viewer that takes no data for this long is dropped

    @classmethod
    def from_options(cls, opts) -> "ServerOptions":
        """The app's flags (app/run.py) -> options; BISENET_AUTH_TOKEN when no --auth-token."""
        token = getattr(opts, "auth_token", None) or os.environ.get(TOKEN_ENV) or None
        hosts = getattr(opts, "allowed_hosts", None) or ()
        if isinstance(hosts, str):
            hosts = [h for h in hosts.split(",")]
        out = cls(auth_token=token, no_auth=getattr(opts, "auth", True) is False,   # --no-auth
                  allowed_hosts=tuple(h.strip().lower() for h in hosts if h.strip()),
                  max_clients=int(16 if getattr(opts, "max_clients", None) is None else opts.max_clients),
                  tls_cert=getattr(opts, "tls_cert", None), tls_key=getattr(opts, "tls_key", None))
        out.check()
        return out

    def check(self) -> None:
        if self.max_clients < 1:
            raise ValueError(f"--max-clients must be at least 1, got {self.max_clients}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together: pass both (PEM files) or neither")
        if self.auth_token is not None:
            try:
                validate.auth_token(self.auth_token)
            except ValueError as e:
                raise validate.InputError(f"--auth-token / {TOKEN_ENV}: {e}") from None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Auth:
    """Who may watch. One per app run; each listener asks `required_for(its bind host)`."""

    def __init__(self, token: str | None = None, disabled: bool = False, announce=None):
        self.explicit = token is not None
        self.token = token
        self.disabled = disabled
        self.announce = announce or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.lock = threading.Lock()
        self.failures: dict[str, list] = {}   # address -> [count, window start, locked until]

    def required_for(self, host: str) -> bool:
        return not self.disabled and (self.explicit or not is_loopback(host))

    def token_for(self, host: str, watch: str) -> str | None:
        """The token a listener on `host` requires, or None. Generated when none was given and
        printed once, with `watch` (a URL with {token} in it) as the way in."""
        if not self.required_for(host):
            return None
        with self.lock:
            if self.token is None:
                self.token = secrets.token_urlsafe(18)
                self.announce(f"auth token (generated for this run; set --auth-token or {TOKEN_ENV} to keep "
                              f"one): {self.token}\n  watch: {watch.format(token=self.token)}")
        return self.token

    def cookie_value(self) -> str:
        """What the session cookie holds: derived from the token, so the cookie is not it."""
        return hmac.new(self.token.encode(), b"bisenet-edge page session", hashlib.sha256).hexdigest()

    def check(self, headers, cookies, query_token: str | None) -> str:
        """-> 'ok', 'missing' (nothing offered) or 'wrong'."""
        offered = []
        header = headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        elif scheme.lower() == "basic":
            try:
                offered.append(base64.b64decode(value.strip(), validate=True).decode().partition(":")[2])
            except (binascii.Error, UnicodeDecodeError):
                offered.append("")
        elif header:
            offered.append("")
        if query_token is not None:
            offered.append(query_token)
        expected = self.token.encode()
        for candidate in offered:
            if hmac.compare_digest(candidate.encode(), expected):
                return "ok"
        cookie = cookies.get(COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value().encode()):
            return "ok"
        # A stale cookie (a tab left open across runs with generated tokens) is not a guess:
        # it must not lock its browser out. Guessing a 256-bit cookie gains nothing anyway.
        return "wrong" if offered else "missing"

    def locked_for(self, address: str, now: float) -> float:
        """Seconds this address must still wait after too many wrong tokens (0: none)."""
        with self.lock:
            entry = self.failures.get(address)
            return max(0.0, entry[2] - now) if entry else 0.0

    def failed(self, address: str, now: float) -> None:
        with self.lock:
            if len(self.failures) >= MAX_TRACKED_ADDRESSES:   # forget the stalest ones
                for addr in sorted(self.failures, key=lambda a: self.failures[a][1])[:MAX_TRACKED_ADDRESSES // 4]:
                    del self.failures[addr]
            entry = self.failures.get(address)
            if entry is None or now - entry[1] > FAILURE_WINDOW_S:
                entry = self.failures[address] = [0, now, 0.0]
            entry[0] += 1
            if entry[0] >= MAX_FAILURES:
                entry[2] = now + LOCKOUT_S
                entry[0], entry[1] = 0, now
                log.warning("http: %d wrong tokens from %s; refusing it for %g s", MAX_FAILURES, address, LOCKOUT_S)


class Camera:
    """The latest overlay of one camera, handed over by the pipeline's output thread and read
    by the viewers in the server's event loop."""

    def __init__(self, name: str, title: str, quality: int = 80):
        self.name, self.title, self.quality = name, title, int(quality)
        self.lock = threading.Lock()
        self.latest = None        # the newest overlay (BGR)
        self.seq = 0              # bumps on every frame; viewers wait for it to change
        self.frame_id = -1
        self.meter = RateMeter()
        self.ended = False
        self.loop = None          # the server's event loop, set when registered
        self._event = None        # loop side: set (and replaced) on every frame
        self._jpeg = (0, None)    # loop side: (seq, bytes) of the latest encode
        self._encoding = None     # loop side: (seq, future) of the encode in flight

    # -- pipeline side (any thread) ---------------------------------------------------------
    def publish(self, frame, image) -> None:
        now = time.monotonic()
        with self.lock:
            self.meter.add(now, (now - frame.capture_ts) * 1000.0, frame.timings.get("inference"))
            self.latest, self.frame_id = image, frame.id
            self.seq += 1
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:
                pass   # the loop is shutting down

    def stats(self) -> dict:
        with self.lock:
            return {**self.meter.snapshot(), "frame": self.frame_id, "title": self.title}

    # -- loop side --------------------------------------------------------------------------
    def _notify(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait_newer(self, seq: int, timeout: float) -> None:
        if self.seq != seq or self.ended:
            return
        if self._event is None:
            self._event = asyncio.Event()
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    async def jpeg(self, pool) -> tuple[int, bytes | None]:
        """The latest frame as JPEG, encoded at most once per frame in the worker thread."""
        with self.lock:
            seq, image = self.seq, self.latest
        if image is None:
            return seq, None
        if self._jpeg[0] == seq:
            return self._jpeg
        if self._encoding is None or self._encoding[0] != seq:
            future = asyncio.get_running_loop().run_in_executor(pool, _encode_jpeg, image, self.quality)
            self._encoding = (seq, future)
        data = await asyncio.shield(self._encoding[1])
        if self._jpeg[0] < seq:
            self._jpeg = (seq, data)
        return seq, data


def _encode_jpeg(image, quality: int) -> bytes | None:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None


class _Refuse(asyncio.Protocol):
    """Past the connection cap: one 503 and the socket is closed, nothing kept."""

    BODY = b"too many clients; try again later\n"

    def connection_made(self, transport) -> None:
        transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
                        b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(self.BODY), self.BODY))
        transport.close()

    def data_received(self, data) -> None:
        pass


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted in `slots` from accept to close (aiohttp
    registers a connection only once it is set up, too late for a burst of accepts)."""

    def __init__(self, inner, slots: list):
        self.inner, self.slots, self.released = inner, slots, False
        slots[0] += 1

    def _release(self) -> None:
        if not self.released:
            self.released = True
            self.slots[0] -= 1

    def connection_made(self, transport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        self._release()
        self.inner.connection_lost(exc)

    def data_received(self, data) -> None:
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def __del__(self):
        self._release()   # never connected (e.g. a TLS handshake that failed)


class AppServer:
    """Listeners, cameras, auth and metrics of one app run. Nothing listens until `listen()`."""

    def __init__(self, options: ServerOptions | None = None, metrics: Metrics | None = None, announce=None):
        from aiohttp import web  # noqa: F401  (a clear error now rather than on the first listen)

        self.options = options or ServerOptions()
        self.options.check()
        self.announce = announce or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.auth = Auth(self.options.auth_token, self.options.no_auth, self.announce)
        self.metrics = metrics or Metrics()
        self.metrics.viewers = lambda: self.viewers
        self.title = "bisenet live"   # set_model: plus the model's config name (never a file path)
        self.cameras: dict[str, Camera] = {}
        self.viewers = 0
        self.listeners = {}       # (host, port) -> (runner, server, what)
        self.loop = None
        self.thread = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-jpeg")
        self.closing = False
        self.ssl = self._ssl_context()
        self.scheme = "https" if self.ssl else "http"
        if self.options.no_auth:
            self.announce("warning: --no-auth: anyone who can reach the app's ports can watch the video and "
                          "read /metrics; use it only on a trusted network")
        names = {"localhost", "ip6-localhost"}
        try:
            names.update({socket.gethostname().lower(), socket.getfqdn().lower(), socket.gethostname().lower() + ".local"})
        except OSError:
            pass
        self.host_names = names | set(self.options.allowed_hosts)
        self.analytics, self.clips_dir = None, None

    def set_analytics(self, analytics, clips_dir=None) -> None:
        """Scene analytics (app/analytics): /api/coverage, /clips/, and its Prometheus metrics."""
        self.analytics, self.clips_dir = analytics, clips_dir
        self.metrics.analytics = analytics

    def _ssl_context(self):
        if not self.options.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.options.tls_cert, self.options.tls_key)
        except (OSError, ssl.SSLError) as e:
            raise ServerError(f"--tls-cert {self.options.tls_cert} / --tls-key {self.options.tls_key}: cannot load "
                              f"({getattr(e, 'strerror', None) or e}); pass a PEM certificate and its key") from None
        return ctx

    # -- registration (any thread) ----------------------------------------------------------
    def set_model(self, engine) -> None:
        self.metrics.set_model(engine)
        self.title = f"bisenet live: {engine.info.model}"

    def add_camera(self, name: str, title: str = "bisenet live") -> Camera:
        if name in self.cameras:
            raise ValueError(f"camera {name!r} is already served")
        name = check_name(name)   # the one rule for camera names (app/camera.py)
        cam = Camera(name, title)
        cam.loop = self.loop
        self.cameras[name] = cam
        return cam

    def listen(self, host: str, port: int, what: str = "all") -> int:
        """Bind now (a busy port is an error before anything runs) -> the port bound.
        what: 'all' (page, streams, stats, metrics, health) or 'metrics' (metrics, health).
        Listening again on a host:port this server already serves is a no-op (several cameras
        on one port)."""
        if port and (host, port) in self.listeners:
            if self.listeners[(host, port)][2] != what:
                raise ServerError(f"port {port} cannot serve both the overlay and --metrics-port; pick another")
            return port
        self._start_loop()
        where = f"{self.scheme}://{host if host not in ('', '0.0.0.0', '::') else '<this host>'}:{port}"
        # Generated (and printed) before the line that says auth is on.
        token = self.auth.token_for(host, where + "/?token={token}  (VLC, ffplay: any user name, the token "
                                    "as password)")
        future = asyncio.run_coroutine_threadsafe(self._listen(host, port, what, token), self.loop)
        port = future.result(timeout=30)
        served = "the overlay" if what == "all" else "metrics"
        if host in ("", "0.0.0.0", "::"):
            url, bound = f"{self.scheme}://<this host>:{port}/", f"all interfaces, {host or '0.0.0.0'}:{port}"
        else:
            url, bound = f"{self.scheme}://{host}:{port}/", f"{host}:{port} only"
        if token:
            auth = "auth on: token required"
        elif self.options.no_auth:
            auth = "auth OFF (--no-auth)"
        else:
            auth = "no auth: loopback only"
        self.announce(f"serving {served} at {url} (listening on {bound}; {'TLS; ' if self.ssl else ''}{auth}; "
                      f"at most {self.options.max_clients} viewers)")
        return port

    def close(self) -> None:
        if self.loop is None:
            self.pool.shutdown(wait=False)
            return
        self.closing = True
        for cam in self.cameras.values():
            cam.end()
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(timeout=10)
        except Exception as e:   # a hung shutdown must not keep the app from exiting
            log.debug("http shutdown: %s", e)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()
        self.pool.shutdown(wait=False)

    # -- event loop thread ------------------------------------------------------------------
    def _start_loop(self) -> None:
        if self.loop is not None:
            return
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_quiet_exceptions)
        for cam in self.cameras.values():
            cam.loop = self.loop
        self.thread = threading.Thread(target=self.loop.run_forever, name="http-server", daemon=True)
        self.thread.start()

    async def _listen(self, host: str, port: int, what: str, token: str | None) -> int:
        from aiohttp import web

        app = web.Application(middlewares=[self._guard(token)])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        if what == "all":
            app.router.add_get("/", self._page)
            app.router.add_get("/index.html", self._page)
            for name in ("stream.mjpg", "snapshot.jpg", "stats.json"):
                app.router.add_get(f"/{name}", self._camera_route(name))
                app.router.add_get(f"/camera/{{camera}}/{name}", self._camera_route(name))
            app.router.add_get("/camera/{camera}", self._page)
            app.router.add_get("/camera/{camera}/", self._page)
            app.router.add_get("/api/coverage", self._coverage)
            app.router.add_get("/clips/{camera}/{name}", self._clip)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0,
                               keepalive_timeout=self.options.idle_timeout_s)
        await runner.setup()
        server = runner.server
        cap = self.options.max_clients + HEADROOM
        slots = [0]   # connections open on this listener

        def protocol():
            return _Counted(server(), slots) if slots[0] < cap else _Refuse()

        try:
            listener = await asyncio.get_running_loop().create_server(
                protocol, host or None, port, ssl=self.ssl, backlog=64, reuse_address=True,
                ssl_handshake_timeout=self.options.idle_timeout_s if self.ssl else None)
        except OSError as e:
            await runner.cleanup()
            todo = ("pick another port" if e.errno in (errno.EADDRINUSE, errno.EACCES)
                    else "use an address of this machine, e.g. 127.0.0.1 or @ (every interface)")
            raise ServerError(f"{self.scheme}://{host or '@'}:{port}: cannot listen ({e.strerror or e}); "
                              f"{todo}") from None
        port = listener.sockets[0].getsockname()[1]
        self.listeners[(host, port)] = (runner, listener, what)
        return port

    async def _shutdown(self) -> None:
        for runner, listener, _ in list(self.listeners.values()):
            listener.close()
            for handler in runner.server.connections:   # viewers first: they never finish
                handler.force_close()
            await runner.cleanup()
        self.listeners.clear()

    # -- request handling -------------------------------------------------------------------
    def _guard(self, token: str | None):
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            if not self._host_allowed(request.headers.get("Host")):
                return _text(403, "host not allowed: open the app by its address, or add this name "
                             "with --allowed-hosts\n")
            if token is None:
                return await handler(request)
            peer = request.remote or "?"
            if request.path == "/healthz" and is_loopback(peer):
                return await handler(request)   # local health checks need no token
            now = time.monotonic()
            wait = self.auth.locked_for(peer, now)
            if wait > 0:
                return _text(429, "too many wrong tokens; try again later\n",
                             {"Retry-After": str(int(wait) + 1)})
            # ?token= only on the page, where it is swapped for the cookie at once; tokens in
            # the URLs of streams would end up in proxies' and players' logs.
            is_page = request.match_info.handler == self._page
            query_token = request.query.get("token") if is_page else None
            verdict = self.auth.check(request.headers, request.cookies, query_token)
            if verdict != "ok":
                if verdict == "wrong":
                    self.auth.failed(peer, now)
                return _text(401, "authentication required: Authorization: Bearer TOKEN, HTTP Basic with "
                             "the token as password, or open /?token=TOKEN once\n",
                             {"WWW-Authenticate": 'Basic realm="bisenet-edge", charset="UTF-8"'})
            if query_token is not None:
                # The page: trade the token for an HttpOnly cookie and drop it from the address bar.
                response = web.Response(status=303, headers={"Location": request.path, "Cache-Control": "no-store"})
                response.set_cookie(COOKIE, self.auth.cookie_value(), httponly=True, samesite="Strict",
                                    secure=self.ssl is not None, path="/")
                return response
            return await handler(request)

        return guard

    def _host_allowed(self, host_header: str | None) -> bool:
        """DNS rebinding needs a name; IP literals, this machine's names, localhost and
        --allowed-hosts pass. No Host header (HTTP/1.0 tools) is no browser."""
        if host_header is None or "*" in self.host_names:
            return True
        host = host_header.strip().lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return host.rstrip(".") in self.host_names

    def _camera(self, request) -> Camera | None:
        name = request.match_info.get("camera")
        if name is None:
            return next(iter(self.cameras.values()), None)
        return self.cameras.get(name)

    async def _page(self, request):
        from aiohttp import web

        if "camera" not in request.match_info and len(self.cameras) > 1:
            tiles = "".join(GRID_TILE.format(name=html.escape(name), path=html.escape(quote(name, safe="")))
                            for name in self.cameras)
            body = GRID_PAGE.format(title=html.escape(self.title), tiles=tiles)
            return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})
        cam = self._camera(request)
        if cam is None:
            return _text(404, "no such camera\n")
        prefix = "" if "camera" not in request.match_info else f"/camera/{cam.name}"
        body = PAGE.format(title=html.escape(cam.title), prefix=html.escape(prefix))
        return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})

    def _camera_route(self, name: str):
        async def route(request):
            cam = self._camera(request)
            if cam is None:
                return _text(404, "no such camera\n")
            if name == "stats.json":
                return _text(200, json.dumps(cam.stats()), content_type="application/json")
            if name == "snapshot.jpg":
                _, data = await cam.jpeg(self.pool)
                if data is None:
                    return _text(503, "no frame yet\n")
                from aiohttp import web
                return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})
            return await self._stream(request, cam)
        return route

    async def _stream(self, request, cam: Camera):
        from aiohttp import web

        if self.viewers >= self.options.max_clients:
            return _text(503, f"at most {self.options.max_clients} viewers (--max-clients); try again later\n",
                         {"Retry-After": "5"})
        self.viewers += 1
        peer = request.remote
        transport = request.transport
        response = None
        try:
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                # Without this the kernel grows a non-reading viewer's buffer to megabytes.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, VIEWER_SNDBUF)
            response = web.StreamResponse(headers={
                "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}", "Cache-Control": "no-store"})
            await asyncio.wait_for(response.prepare(request), self.options.send_timeout_s)
            seen, busy_since = -1, None     # seen: the newest frame this viewer was offered
            loop = asyncio.get_running_loop()
            while not self.closing and not cam.ended and not transport.is_closing():
                await cam.wait_newer(seen, timeout=1.0)   # always waits when nothing is new
                if transport.is_closing():
                    break
                if transport.get_write_buffer_size() > 0:
                    # The previous frame is still queued here: skip this one, never queue two.
                    busy_since = busy_since or loop.time()
                    if loop.time() - busy_since > self.options.send_timeout_s:
                        log.debug("http: viewer %s took no data for %g s; dropped", peer, self.options.send_timeout_s)
                        transport.abort()
                        break
                    seen = cam.seq
                    continue
                busy_since = None
                if cam.seq == seen:
                    continue
                seen, data = await cam.jpeg(self.pool)
                if data is None:
                    continue
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                        + data + b"\r\n")
                await asyncio.wait_for(response.write(part), self.options.send_timeout_s)
        except (ConnectionError, asyncio.TimeoutError) as e:
            log.debug("http: viewer %s left (%s)", peer, type(e).__name__)
            if transport is not None:
                transport.abort()
        finally:
            self.viewers -= 1
        return response if response is not None and response.prepared else _text(503, "viewer left\n")

    async def _coverage(self, request):
        if self.analytics is None:
            return _text(404, "no scene analytics in this run (zones:/rules: in --config)\n")
        return _text(200, json.dumps(self.analytics.snapshot()), content_type="application/json")

    async def _clip(self, request):
        from aiohttp import web

        camera, name = request.match_info["camera"], request.match_info["name"]
        if (self.clips_dir is None or not validate_clip_name(camera, name)):
            return _text(404, "no such clip\n")
        path = os.path.join(self.clips_dir, camera, name)
        if not os.path.isfile(path):
            return _text(404, "no such clip (not written yet, or deleted by --clips-max-mb)\n")
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    async def _metrics(self, request):
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST

        body = await asyncio.get_running_loop().run_in_executor(self.pool, self.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    async def _healthz(self, request):
        stale = self.metrics.health()
        if not stale:
            return _text(200, "ok\n")
        lines = "".join(f"stale: {cam} (no frame for {age:.1f} s; timeout {limit:g} s)\n" for cam, age, limit in stale)
        return _text(503, lines)


def validate_clip_name(camera: str, name: str) -> bool:
    """Only CAMERA/<event id>.mp4|.jpg: no path tricks reach the file system."""
    import re
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", camera)
                and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,80}\.(mp4|jpg)", name))


def _text(status: int, body: str, headers: dict | None = None, content_type: str = "text/plain"):
    from aiohttp import web

    return web.Response(status=status, text=body, content_type=content_type,
                        headers={"Cache-Control": "no-store", **(headers or {})})


def _quiet_exceptions(loop, context) -> None:
    """Client resets and timeouts are one debug line, not a traceback on the app's stderr."""
    exc = context.get("exception")
    if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError, asyncio.CancelledError)):
        log.debug("http: %s (%s)", context.get("message"), type(exc).__name__)
    else:
        log.warning("http: %s%s", context.get("message"), f" ({type(exc).__name__}: {exc})" if exc else "")
