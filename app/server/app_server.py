"""AppServer: the listeners, cameras (frame hubs), auth, connection budget and metrics of one
app run, served by aiohttp in its own thread with its own asyncio event loop."""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from app.camera import check_name
from app.metrics import Metrics
from app.server.auth import Auth
from app.server.coverage_ring import SAMPLE_S, CoverageRing
from app.server.hub import FrameHub
from app.server.limits import (ClientErrorLog, ConnectionBudget, Listener, RequestErrorLogger, bind, open_file_limit,
                               plan)
from app.server.server_options import ServerError, ServerOptions
from app.server.routes import Routes

log = logging.getLogger("app.server")


class AppServer:
    """Listeners, cameras, auth and metrics of one app run. Nothing listens until `listen()`."""

    def __init__(self, options: ServerOptions | None = None, metrics: Metrics | None = None, announce=None):
        from aiohttp import web  # noqa: F401  (a clear error now rather than on the first listen)
        from prometheus_client import Counter

        self.options = options or ServerOptions()
        self.options.check()
        self.announce = announce or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.auth = Auth(self.options.auth_token, self.options.no_auth, self.announce, admin_token=self.options.admin_token)
        self.metrics = metrics or Metrics()
        self.routes = Routes(self)
        self.metrics.viewers = lambda: self.routes.viewers
        self.client_errors = ClientErrorLog(Counter(
            "bisenet_http_client_errors", "Client errors and refused connections of the HTTP server, by kind",
            ["kind"], registry=self.metrics.registry))
        self.budget = None        # the connection budget, planned at the first listen()
        self.title = "bisenet live"   # set_model: plus the model's config name (never a file path)
        self.cameras: dict[str, FrameHub] = {}
        self.listeners = {}       # (host, port) -> (runner, server, what)
        self.loop = None
        self.thread = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="http-jpeg")
        self.closing = False
        self.analytics, self.clips_dir = None, None   # set_analytics
        self.classes: list[str] = []   # the model's class names (set_model): the console's class picker
        self.preset = None        # the --config preset the console's editor saves to (None: no saving)
        self.reload = None        # () -> str: re-read the preset and apply it live (the session sets it)
        self.coverage_ring = CoverageRing()   # the console's coverage over time, sampled from analytics
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

    @property
    def viewers(self) -> int:
        return self.routes.viewers

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
    def set_analytics(self, analytics, clips_dir=None) -> None:
        """Scene analytics (app/analytics): /api/coverage, /clips/, and its Prometheus metrics."""
        self.analytics, self.clips_dir = analytics, clips_dir
        self.metrics.analytics = analytics

    def set_model(self, engine) -> None:
        self.metrics.set_model(engine)
        self.classes = [str(c) for c in engine.info.class_names]
        self.title = f"bisenet live: {engine.info.model}"

    def add_camera(self, name: str, title: str = "bisenet live") -> FrameHub:
        if name in self.cameras:
            raise ValueError(f"camera {name!r} is already served")
        name = check_name(name)   # the one rule for camera names (app/camera.py)
        hub = FrameHub(name, title)
        hub.loop = self.loop
        self.cameras[name] = hub
        return hub

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
        if self.budget is None:
            limits = plan(self.options.max_clients, open_file_limit())
            if limits.warning:
                self.announce(limits.warning)
            self.budget = ConnectionBudget(limits, min(self.options.header_timeout_s, self.options.idle_timeout_s),
                                           self.client_errors)
        where = f"{self.scheme}://{host if host not in ('', '0.0.0.0', '::') else '<this host>'}:{port}"
        # Generated now, printed once the port is bound (a failed bind shows no token), before
        # the line that says auth is on.
        token = self.auth.token_for(host, where + "/?token={token}  (VLC, ffplay: any user name, the token "
                                    "as password)", later=True)
        future = asyncio.run_coroutine_threadsafe(self._listen(host, port, what, token), self.loop)
        port = future.result(timeout=30)
        self.auth.announce_token()
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
                      f"at most {self.budget.limits.viewers} viewers)")
        return port

    def close(self) -> None:
        if self.loop is None:
            self.pool.shutdown(wait=False)
            return
        self.closing = True
        for hub in self.cameras.values():
            hub.end()
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
        self.loop.set_exception_handler(self._loop_exception)
        for hub in self.cameras.values():
            hub.loop = self.loop
        self.thread = threading.Thread(target=self.loop.run_forever, name="http-server", daemon=True)
        self.thread.start()
        self._sampler = asyncio.run_coroutine_threadsafe(self._sample(), self.loop)

    async def _sample(self) -> None:
        """The console's coverage over time: /api/coverage's numbers, SAMPLE_S apart."""
        while not self.closing:
            if self.analytics is not None:
                try:
                    self.coverage_ring.add(self.analytics.snapshot())
                except Exception as e:   # a sample missed is no reason to stop sampling
                    log.debug("coverage sample: %s", e)
            await asyncio.sleep(SAMPLE_S)

    async def _listen(self, host: str, port: int, what: str, token: str | None) -> int:
        from aiohttp import web

        app = web.Application(middlewares=[self.routes.guard(token)])
        self.routes.add_to(app, what)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0,
                               keepalive_timeout=self.options.idle_timeout_s,
                               logger=RequestErrorLogger(self.client_errors))
        await runner.setup()
        try:
            sockets = bind(host, port)
        except OSError as e:
            await runner.cleanup()
            todo = ("pick another port" if e.errno in (errno.EADDRINUSE, errno.EACCES)
                    else "use an address of this machine, e.g. 127.0.0.1 or @ (every interface)")
            raise ServerError(f"{self.scheme}://{host or '@'}:{port}: cannot listen ({e.strerror or e}); "
                              f"{todo}") from None
        listener = Listener(sockets, self.budget, runner.server, self.ssl)
        listener.start()
        port = sockets[0].getsockname()[1]
        self.listeners[(host, port)] = (runner, listener, what)
        return port

    async def _shutdown(self) -> None:
        self._sampler.cancel()
        for runner, listener, _ in list(self.listeners.values()):
            listener.close()
            for handler in runner.server.connections:   # viewers first: they never finish
                handler.force_close()
            await runner.cleanup()
        self.listeners.clear()

    def _loop_exception(self, loop, context) -> None:
        """Client resets and timeouts are one debug line, not a traceback on the app's stderr."""
        exc = context.get("exception")
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError, asyncio.CancelledError)):
            log.debug("http: %s (%s)", context.get("message"), type(exc).__name__)
        else:
            log.warning("http: %s%s", context.get("message"), f" ({type(exc).__name__}: {exc})" if exc else "")
