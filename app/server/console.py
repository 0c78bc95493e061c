"""The console (/console): its page and static files, and the JSON it reads and writes.

    /console            the page (app/server/static/console.html; its script /console.js)
    /static/NAME        uPlot (MIT, vendored from npm with its LICENSE) and the console's CSS
    /api/console        the run: title, role, CSRF token, the model's classes, each camera's zones and rules
    /api/cameras        each camera: state (live, outage, ended), fps, drops, newest coverage
    /api/history        ?camera=NAME[&since=S]: coverage over time (app/server/coverage_ring.py)
    /api/coverage/history  ?camera=NAME&minutes=M: longer spans, read back from --coverage-log (log_history.py)
    /api/events         the recent events, and older ones from --events-log, one row each (newest first)
    POST /api/preset    admin: {camera, zones, rules} -> checked, saved to --config, applied live
    DELETE /api/events/CAM/ID   admin: the event's clip and snapshot deleted

State-changing requests (anything but GET/HEAD) pass the guard's admin + same-origin + CSRF
check first (routes.py)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from core.errors import BisenetError, InputError
from core.names import name_ok

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css", "console.css": "text/css",
                "uPlot.LICENSE": "text/plain"}
CONSOLE_CSP = ("default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' blob:; media-src 'self'; "
               "style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
MAX_BODY = 256 * 1024     # bytes of a preset save request


def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


class Console:
    def __init__(self, server):
        self.server = server
        self.deleted: set[str] = set()     # event ids deleted here (their messages stay in the bus's recent list)
        self._logged = None                # (the events log's files, sizes, times; its messages read back)

    def add_to(self, app) -> None:
        app.router.add_get("/console", self.page)
        app.router.add_get("/console/", self.page)
        app.router.add_get("/console.js", self.script)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/console", self.info)
        app.router.add_get("/api/cameras", self.cameras)
        app.router.add_get("/api/history", self.history)
        app.router.add_get("/api/coverage/history", self.long_history)
        app.router.add_get("/api/events", self.events)
        app.router.add_post("/api/preset", self.save)
        app.router.add_delete("/api/events/{camera}/{id}", self.delete_event)

    # -- files ------------------------------------------------------------------------------
    async def page(self, request):
        from aiohttp import web

        return web.Response(body=_read("console.html"), content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "Content-Security-Policy": CONSOLE_CSP,
                                     "X-Content-Type-Options": "nosniff"})

    async def script(self, request):
        from aiohttp import web

        return web.Response(body=_read("console.js"), content_type="text/javascript", charset="utf-8",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    async def static(self, request):
        from aiohttp import web

        name = request.match_info["name"]
        if name not in STATIC_FILES:
            return _json(404, {"error": "no such file"})
        return web.Response(body=_read(name), content_type=STATIC_FILES[name], charset="utf-8",
                            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    # -- reading ----------------------------------------------------------------------------
    def camera_zones(self, camera: str) -> dict:
        """The zones and rules the editor starts from: the preset's when there is one, else the run's."""
        server = self.server
        if server.preset is not None:
            from app.server.preset_edit import read_zones
            try:
                return read_zones(server.preset, camera)
            except InputError:
                pass
        analytics = server.analytics
        cam = analytics.cameras.get(camera) if analytics is not None else None
        if cam is None:
            return {"zones": [], "rules": [], "scope": "camera"}
        return {"zones": [z.model_dump(exclude_defaults=True) for z in cam.config.zones],
                "rules": [r.model_dump(by_alias=True, exclude_defaults=True) for r in cam.config.rules],
                "scope": "camera"}

    async def info(self, request):
        server = self.server
        return _json(200, {"title": server.title, "role": request.get("role", "viewer"), "csrf": server.auth.csrf,
                           "classes": server.classes, "preset": server.preset is not None,
                           "reload": server.reload is not None,
                           "cameras": {name: self.camera_zones(name) for name in server.cameras}})

    async def cameras(self, request):
        server = self.server
        stale = {cam for cam, _, _ in server.metrics.health()}
        drops = {}
        for metric in server.metrics.frames.collect():
            for s in metric.samples:
                if s.name.endswith("_total") and s.labels.get("outcome") != "written":
                    drops[s.labels["camera"]] = drops.get(s.labels["camera"], 0) + int(s.value)
        coverage = server.analytics.snapshot()["cameras"] if server.analytics is not None else {}
        out = {}
        for name, hub in server.cameras.items():
            stats = hub.stats()
            state = "ended" if hub.ended else "outage" if name in stale else "live" if hub.frame_id >= 0 else "starting"
            out[name] = {"state": state, "fps": stats["fps"], "frame": stats["frame"], "drops": drops.get(name, 0),
                         "coverage": coverage.get(name, {}).get("coverage", {})}
        return _json(200, out)

    async def history(self, request):
        camera = request.query.get("camera", "")
        try:
            since = float(request.query["since"]) if "since" in request.query else None
        except ValueError:
            return _json(400, {"error": "since: a number of seconds"})
        return _json(200, self.server.coverage_ring.history(camera, since))

    def event_rows(self) -> list[dict]:
        analytics = self.server.analytics
        if analytics is None:
            return []
        rows = {}
        for message in self.logged_events() + analytics.snapshot()["events"][::-1]:   # oldest first: the newest wins
            e = message["event"]
            if e.get("id") in self.deleted:
                continue
            row = rows.setdefault(e["id"], {"id": e["id"], "time": message["time"]})
            end = e.get("end_s")
            row.update({"camera": e.get("camera"), "zone": e.get("zone"), "class": e.get("class"),
                        "rule": e.get("rule"), "peak": e.get("peak", 0.0), "clip": e.get("clip"),
                        "snapshot": e.get("snapshot"), "open": end is None,
                        "duration_s": None if end is None else round(end - e.get("start_s", end), 3)})
        for row in rows.values():   # a clip is there once written (after the event's post-roll)
            row["has_clip"] = self.written(row["camera"], row["clip"])
            row["has_snapshot"] = self.written(row["camera"], row["snapshot"])
            row["clip_deleted"] = clip_deleted(row)
        return sorted(rows.values(), key=lambda r: r["time"], reverse=True)

    def logged_events(self) -> list[dict]:
        """The events log's messages (oldest first, bounded: log_history.py), as /api/coverage
        serves them; the same answer while the log's files are unchanged."""
        from app.analytics import served
        from app.server.log_history import logged_messages

        delivery = next((d for d in self.server.analytics.bus.deliveries if getattr(d, "name", "") == "jsonl"), None)
        if delivery is None:
            return []
        parts = delivery.file.parts()
        key = []
        for part in parts:
            try:
                st = os.stat(part)
                key.append((str(part), st.st_size, st.st_mtime_ns))
            except OSError:
                pass
        cached = self._logged
        if cached is None or cached[0] != key:
            messages, _ = logged_messages(parts, {})
            self._logged = cached = (key, [served(m) for m in messages])
        return cached[1]

    async def long_history(self, request):
        """Coverage over the last `minutes` (at most a week): from --coverage-log when it is on (read
        back bounded, at most MAX_POINTS per series), else from the ring. Log times (time_s, the
        camera's stream clock) become wall times like the ring's samples: see log_wall_offset."""
        import asyncio

        camera = request.query.get("camera", "")
        try:
            minutes = float(request.query.get("minutes", "10"))
            if not 0 < minutes <= 7 * 24 * 60:
                raise ValueError
        except ValueError:
            return _json(400, {"error": "minutes: a number of minutes, above 0 and at most 10080 (a week)"})
        ring = self.server.coverage_ring.history(camera, minutes * 60)
        log = self.server.analytics.coverage_log if self.server.analytics is not None else None
        if log is None:
            return _json(200, {**ring, "source": "ring", "truncated": False})
        data = await asyncio.get_running_loop().run_in_executor(None, self._log_history, log, camera, minutes)
        return _json(200, {**data, "spans": ring["spans"]})

    def _log_history(self, log, camera: str, minutes: float) -> dict:
        from app.server.log_history import COVERAGE_READ_BYTES, downsample, coverage_rows

        rows, truncated = coverage_rows(log.file.parts(), log.jsonl, camera, minutes * 60, COVERAGE_READ_BYTES)
        offset = self.log_wall_offset(camera, rows)
        times, series = downsample(rows)
        return {"t": [round(t + offset, 3) for t in times], "series": series, "source": "log",
                "truncated": truncated, "rows": len(rows)}

    def log_wall_offset(self, camera: str, rows: list) -> float:
        """wall time - time_s for `camera`: the ring stamps a sample with the wall time it saw a
        frame, so the log row of the ring's newest frame gives the offset; else the camera's
        newest time_s is taken as now."""
        import time

        newest = self.server.coverage_ring.history(camera, 0.0)
        if newest["t"]:
            frame = newest["frames"][-1]
            for t, f, _ in reversed(rows):
                if f == frame:
                    return newest["t"][-1] - t
        analytics = self.server.analytics
        cam = analytics.cameras.get(camera) if analytics is not None else None
        last_t = cam.last_t if cam is not None and cam.latest_frame is not None else (rows[-1][0] if rows else 0.0)
        return time.time() - last_t

    def written(self, camera: str, url: str | None) -> bool:
        from urllib.parse import unquote

        clips_dir = self.server.clips_dir
        if not url or clips_dir is None:
            return False
        name = unquote(url.rsplit("/", 1)[-1])
        folder = os.path.join(clips_dir, camera)
        return clip_name_ok(camera, name) and regular_file_inside(os.path.join(folder, name), folder)

    async def events(self, request):
        import asyncio

        rows = await asyncio.get_running_loop().run_in_executor(None, self.event_rows)   # may read the events log
        for key in ("camera", "zone", "class"):
            if request.query.get(key):
                rows = [r for r in rows if r[key] == request.query[key]]
        return _json(200, {"events": rows})

    # -- writing (admin, same origin, CSRF: checked by the guard) ------------------------------
    async def save(self, request):
        import asyncio

        server = self.server
        if server.preset is None:
            return _json(409, {"error": "this run has no --config preset to save to; start it with --config FILE"})
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _json(413, {"error": f"at most {MAX_BODY // 1024} KiB"})
        try:
            body = json.loads(await request.text())
            camera, zones, rules = body["camera"], body.get("zones") or [], body.get("rules") or []
        except (ValueError, KeyError, TypeError):
            return _json(400, {"error": "send JSON {\"camera\": NAME, \"zones\": [...], \"rules\": [...]}"})
        if camera not in server.cameras:
            return _json(404, {"error": f"no camera {camera!r} in this run"})
        loop = asyncio.get_running_loop()
        try:
            path = await loop.run_in_executor(None, self._save, camera, zones, rules)
        except BisenetError as e:
            return _json(400, {"error": str(e)})
        if server.reload is None:
            return _json(200, {"saved": path.name, "applied": False,
                               "status": f"saved {path.name}; live reload is unavailable in this run: restart it"})
        try:
            said = await loop.run_in_executor(None, server.reload)
        except BisenetError as e:
            return _json(400, {"error": f"saved, but not applied: {e}"})
        return _json(200, {"saved": path.name, "applied": True, "status": f"saved {path.name}; {said or 'applied'}"})

    def _save(self, camera, zones, rules) -> Path:
        from app.server.preset_edit import save_zones

        return save_zones(self.server.preset, camera, zones, rules, self.server.classes)

    async def delete_event(self, request):
        server = self.server
        camera, event_id = request.match_info["camera"], request.match_info["id"]
        if not any(r["id"] == event_id and r["camera"] == camera for r in self.event_rows()):
            return _json(404, {"error": "no such event"})
        removed = []
        if server.clips_dir is not None:
            folder = os.path.join(server.clips_dir, camera)
            for suffix in (".mp4", ".jpg"):
                name = event_id + suffix
                path = os.path.join(folder, name)
                if clip_name_ok(camera, name) and regular_file_inside(path, folder):
                    os.unlink(path)
                    removed.append(name)
        self.deleted.add(event_id)
        return _json(200, {"deleted": event_id, "files": removed})


CLIP_GRACE_S = 120.0   # an ended event's clip is still being written (its post-roll) this long at most


def clip_deleted(row: dict) -> bool:
    """An ended event with a clip that is gone (retention or a delete) and is not still being written."""
    import time

    return bool(row["clip"]) and not row["open"] and not row["has_clip"] and time.time() - row["time"] > CLIP_GRACE_S


def clip_name_ok(camera: str, name: str) -> bool:
    """Only CAMERA/<event id>.mp4|.jpg: no path tricks reach the file system."""
    from app.analytics.clips import app_file

    return name_ok(camera) and app_file(name)


def regular_file_inside(path: str, folder: str) -> bool:
    """`path` is a regular file, no symlink on the way (`folder` and `path` themselves), and
    lies directly in `folder` once both are resolved."""
    try:
        if os.path.islink(folder) or not stat.S_ISREG(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    return os.path.realpath(path) == os.path.join(os.path.realpath(folder), os.path.basename(path))


def _json(status: int, data) -> "object":
    from aiohttp import web

    return web.Response(status=status, text=json.dumps(data), content_type="application/json",
                        headers={"Cache-Control": "no-store"})
