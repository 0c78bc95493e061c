"""The HTTP routes of one AppServer, and the guard every request passes first (Host check,
lock-out, token, then the connection budget's promotion to authenticated).

    /                 page: the live overlay and fps / latency     /camera/NAME             the same
    /page.js /grid.js the pages' scripts (the pages have none inline; CSP allows only these)
    /stream.mjpg      MJPEG (browsers, VLC, ffplay)                /camera/NAME/stream.mjpg
    /snapshot.jpg     the latest frame as one JPEG                 /camera/NAME/snapshot.jpg
    /stats.json       {"fps", "e2e_ms", "inference_ms", "frame", "title"}  /camera/NAME/stats.json
    /metrics          Prometheus text format (app/metrics.py)
    /healthz          200 "ok", or 503 naming the cameras whose source is stale
    /api/coverage     scene analytics: newest coverage per camera and zone, recent events (app/analytics)
    /clips/CAM/FILE   an event's clip (.mp4, byte ranges for seeking) or snapshot (.jpg) from --clips-dir
    POST /api/reload  the run re-reads its config and applies it (the session's `server.reload`)
    /console          the console: live grid, zone and rule editor, coverage charts, events (app/server/console.py)
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from urllib.parse import urlsplit

from app.server.auth import COOKIE, MAX_FAILURES, LOCKOUT_S, is_loopback
from app.server.console import Console, clip_name_ok, regular_file_inside
from app.server.hub import FrameHub
from app.server.page import CSP, SCRIPTS, camera_page, grid_page

log = logging.getLogger("app.server")

BOUNDARY = "bisenetframe"
VIEWER_SNDBUF = 64 * 1024     # bytes; the kernel doubles it. Caps what a non-reading viewer pins


class Routes:
    """The request handlers; `server` is the AppServer whose cameras, auth and budget they use."""

    def __init__(self, server):
        self.server = server
        self.viewers = 0          # MJPEG viewers connected now
        self.console = Console(server)   # /console and its /api/ routes (app/server/console.py)

    def add_to(self, app, what: str) -> None:
        """what: 'all' (page, streams, stats, metrics, health) or 'metrics' (metrics, health)."""
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_post("/api/reload", self.reload)
        if what == "all":
            app.router.add_get("/", self.page)
            app.router.add_get("/index.html", self.page)
            for script in SCRIPTS:
                app.router.add_get(f"/{script}", self.script)
            for name in ("stream.mjpg", "snapshot.jpg", "stats.json"):
                app.router.add_get(f"/{name}", self.camera_route(name))
                app.router.add_get(f"/camera/{{camera}}/{name}", self.camera_route(name))
            app.router.add_get("/camera/{camera}", self.page)
            app.router.add_get("/camera/{camera}/", self.page)
            app.router.add_get("/api/coverage", self.coverage)
            app.router.add_get("/clips/{camera}/{name}", self.clip)
            self.console.add_to(app)

    # -- the guard --------------------------------------------------------------------------
    def guard(self, token: str | None):
        from aiohttp import web

        server = self.server

        @web.middleware
        async def guard(request, handler):
            if not self.host_allowed(request.headers.get("Host")):
                return refusal(403, "host not allowed: open the app by its address, or add this name "
                               "with --allowed-hosts\n")
            peer = request.remote or "?"
            query_token = None
            auth = server.auth
            checked = token is not None or auth.admin_token is not None
            if checked and not (request.path == "/healthz" and is_loopback(peer)):
                # (local health checks need no token)
                now = time.monotonic()
                wait = auth.locked_for(peer, now)
                if wait > 0:
                    return refusal(429, "too many wrong tokens; try again later\n", {"Retry-After": str(int(wait) + 1)})
                # ?token= only on the pages, where it is swapped for the cookie at once; tokens in
                # the URLs of streams would end up in proxies' and players' logs.
                if request.match_info.handler in (self.page, self.console.page):
                    query_token = request.query.get("token")
                verdict, role = auth.check_role(request.headers, request.cookies, query_token, token is not None)
                if verdict != "ok":
                    if verdict == "wrong" and auth.failed(peer, now):
                        server.client_errors.note("lockout", peer, f"{MAX_FAILURES} wrong tokens; refused for "
                                                  f"{LOCKOUT_S:g} s")
                    return refusal(401, "authentication required: Authorization: Bearer TOKEN, HTTP Basic with "
                                   "the token as password, or open /?token=TOKEN once\n",
                                   {"WWW-Authenticate": 'Basic realm="bisenet-edge", charset="UTF-8"'})
            else:   # no token asked for (loopback without one, --no-auth, local health checks)
                role = "viewer" if checked else "admin"
            request["role"] = role
            if request.method not in ("GET", "HEAD"):
                refused = self.write_refused(request, role)
                if refused:
                    return refusal(403, refused + "\n")
            if not server.budget.promote(request.transport):
                return refusal(503, "too many clients; try again later\n", {"Retry-After": "5"})
            if query_token is not None and (token is not None or role == "admin"):
                # The page: trade the token for an HttpOnly cookie and drop it from the address bar.
                response = web.Response(status=303, headers={"Location": request.path, "Cache-Control": "no-store"})
                response.set_cookie(COOKIE, auth.cookie_value(role), httponly=True, samesite="Strict",
                                    secure=server.ssl is not None, path="/")
                return response
            return await handler(request)

        return guard

    def write_refused(self, request, role: str) -> str | None:
        """A state-changing request (save, reload, delete) -> why it is refused, or None. It
        needs the admin role. From a browser (an Origin, a Referer or a cookie) it must also
        come from this Host and carry the CSRF token of /api/console in X-CSRF-Token, unless it
        carries its token in Authorization (no other site can make a browser send that). A
        client that is no browser (curl, a script: none of those headers) is judged by its
        token alone (or the loopback bind without one)."""
        if role != "admin":
            return "forbidden: this needs the admin token (--admin-token)"
        headers = request.headers
        origin = headers.get("Origin") or headers.get("Referer")
        if origin is None and "Cookie" not in headers:
            return None
        host = (headers.get("Host") or "").lower()
        if origin is None or origin == "null" or urlsplit(origin).netloc.lower() != host:
            return "forbidden: cross-origin request (Origin is not this host)"
        if "Authorization" in headers:
            return None
        if not hmac.compare_digest(headers.get("X-CSRF-Token", "").encode(), self.server.auth.csrf.encode()):
            return "forbidden: missing or wrong X-CSRF-Token (read it from /api/console)"
        return None

    def host_allowed(self, host_header: str | None) -> bool:
        """DNS rebinding needs a name; IP literals, this machine's names, localhost and
        --allowed-hosts pass. No Host header (HTTP/1.0 tools) is no browser."""
        names = self.server.host_names
        if host_header is None or "*" in names:
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
            return host.rstrip(".") in names

    # -- handlers ---------------------------------------------------------------------------
    def camera(self, request) -> FrameHub | None:
        cameras = self.server.cameras
        name = request.match_info.get("camera")
        if name is None:
            return next(iter(cameras.values()), None)
        return cameras.get(name)

    async def page(self, request):
        from aiohttp import web

        cameras = self.server.cameras
        if "camera" not in request.match_info and len(cameras) > 1:
            body = grid_page(self.server.title, cameras)
        else:
            hub = self.camera(request)
            if hub is None:
                return text(404, "no such camera\n")
            body = camera_page(hub.title, "" if "camera" not in request.match_info else f"/camera/{hub.name}")
        return web.Response(text=body, content_type="text/html",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP,
                                     "X-Content-Type-Options": "nosniff"})

    async def script(self, request):
        from aiohttp import web

        return web.Response(text=SCRIPTS[request.path.lstrip("/")], content_type="text/javascript",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    def camera_route(self, name: str):
        async def route(request):
            hub = self.camera(request)
            if hub is None:
                return text(404, "no such camera\n")
            if name == "stats.json":
                return text(200, json.dumps(hub.stats()), content_type="application/json")
            if name == "snapshot.jpg":
                data = await hub.snapshot(self.server.pool)
                if data is None:
                    return text(503, "no frame yet\n")
                from aiohttp import web
                return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-store"})
            return await self.stream(request, hub)
        return route

    async def stream(self, request, hub: FrameHub):
        from aiohttp import web

        server, options = self.server, self.server.options
        cap = server.budget.limits.viewers
        if self.viewers >= cap:
            return refusal(503, f"at most {cap} viewers (--max-clients); try again later\n", {"Retry-After": "5"})
        self.viewers += 1
        hub.viewers += 1   # its overlays are drawn while it has viewers
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
            await asyncio.wait_for(response.prepare(request), options.send_timeout_s)
            seen, busy_since = -1, None     # seen: the newest frame this viewer was offered
            loop = asyncio.get_running_loop()
            while not server.closing and not hub.ended and not transport.is_closing():
                await hub.wait_newer(seen, timeout=1.0)   # always waits when nothing is new
                if transport.is_closing():
                    break
                if transport.get_write_buffer_size() > 0:
                    # The previous frame is still queued here: skip this one, never queue two.
                    busy_since = busy_since or loop.time()
                    if loop.time() - busy_since > options.send_timeout_s:
                        log.debug("http: viewer %s took no data for %g s; dropped", peer, options.send_timeout_s)
                        transport.abort()
                        break
                    seen = hub.seq
                    continue
                busy_since = None
                if hub.seq == seen:
                    continue
                seen, data = await hub.jpeg(server.pool)
                if data is None:
                    continue
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                        + data + b"\r\n")
                await asyncio.wait_for(response.write(part), options.send_timeout_s)
        except (ConnectionError, asyncio.TimeoutError) as e:
            log.debug("http: viewer %s left (%s)", peer, type(e).__name__)
            if transport is not None:
                transport.abort()
        finally:
            self.viewers -= 1
            hub.viewers -= 1
        return response if response is not None and response.prepared else text(503, "viewer left\n")

    async def coverage(self, request):
        analytics = self.server.analytics
        if analytics is None:
            return text(404, "no scene analytics in this run (zones:/rules: in --config)\n")
        return text(200, json.dumps(analytics.snapshot()), content_type="application/json")

    async def clip(self, request):
        """Only a regular file the clip recorder wrote, directly in a run camera's folder under
        --clips-dir: no symlink followed (the file, the camera folder), no other names."""
        from aiohttp import web

        camera, name = request.match_info["camera"], request.match_info["name"]
        clips_dir, analytics = self.server.clips_dir, self.server.analytics
        if clips_dir is None or analytics is None or camera not in analytics.cameras or not clip_name_ok(camera, name):
            return text(404, "no such clip\n")
        path = os.path.join(clips_dir, camera, name)
        if not regular_file_inside(path, os.path.join(clips_dir, camera)):
            return text(404, "no such clip (not written yet, or deleted by --clips-max-mb)\n")
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    async def metrics(self, request):
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST

        body = await asyncio.get_running_loop().run_in_executor(self.server.pool, self.server.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})

    async def healthz(self, request):
        stale = self.server.metrics.health()
        if not stale:
            return text(200, "ok\n")
        lines = "".join(f"stale: {cam} (no frame for {age:.1f} s; timeout {limit:g} s)\n" for cam, age, limit in stale)
        return text(503, lines)

    # -- POST /api/reload ---------------------------------------------------------------------
    async def reload(self, request):
        """The run re-reads its config and applies what can change live (`server.reload`, set
        by app/session.py: () -> one-line summary, InputError with the refusal). The guard has
        checked the token (or: loopback without one) and, from a browser, its origin and CSRF
        token (write_refused)."""
        reload = getattr(self.server, "reload", None)
        if reload is None:
            return text(404, json.dumps({"ok": False, "error": "this run cannot reload"}),
                        content_type="application/json")
        from core.errors import InputError

        try:   # it waits for cameras to stop and open: not on the event loop
            changed = await asyncio.get_running_loop().run_in_executor(None, reload)
        except InputError as e:
            return text(400, json.dumps({"ok": False, "error": str(e)}), content_type="application/json")
        except Exception as e:   # a bug: the run goes on, the caller is told
            log.warning("reload failed: %s: %s", type(e).__name__, e)
            return text(500, json.dumps({"ok": False, "error": f"reload failed: {type(e).__name__}: {e}"}),
                        content_type="application/json")
        return text(200, json.dumps({"ok": True, "changed": changed}), content_type="application/json")



def text(status: int, body: str, headers: dict | None = None, content_type: str = "text/plain"):
    from aiohttp import web

    return web.Response(status=status, text=body, content_type=content_type,
                        headers={"Cache-Control": "no-store", **(headers or {})})


def refusal(status: int, body: str, headers: dict | None = None):
    """A refused request: its connection is closed after the answer, so it holds no slot."""
    response = text(status, body, headers)
    response.force_close()
    return response
