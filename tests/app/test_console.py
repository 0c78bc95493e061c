"""The console (/console) in a real headless Chromium driven over the DevTools protocol, on a
running run_camera.py (the CamVid model, the street clip looped in real time, two cameras):
a zone drawn with mouse events and saved to the preset, coverage charts, an event's clip played
and sought, and the roles, CSRF and same-origin checks from a plain HTTP client."""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from app.latency import read_log
from testkit.app_helpers import REPO, free_port
from testkit.app_process import App, terminate
from testkit.http_clients import CHROMIUM, CHROMIUM_FLAGS

VIEWER, ADMIN = "viewer-token-for-tests", "admin-token-for-tests"
MARKUP = "<img src=x onerror=alert(1)>"
SHOTS = REPO / "artifacts" / "console"

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")


class Browser:
    """Headless Chromium and one page, driven over the DevTools protocol (aiohttp's websocket)."""

    def __init__(self, profile: Path):
        port = free_port()
        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--remote-debugging-port={port}",
                                      f"--user-data-dir={profile}", "--window-size=1400,1700",
                                      "--autoplay-policy=no-user-gesture-required", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.loop = asyncio.new_event_loop()
        self.ids, self.events = 0, []
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    url = next(t["webSocketDebuggerUrl"] for t in json.load(r) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.loop.run_until_complete(self._connect(url))

    async def _connect(self, url):
        import aiohttp

        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(url, max_msg_size=64 * 1024 * 1024)

    async def _call(self, method, params):
        self.ids += 1
        await self.ws.send_json({"id": self.ids, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 30)
            if message.get("id") == self.ids:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    def call(self, method, **params):
        return self.loop.run_until_complete(self._call(method, params))

    def eval(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression, timeout_s=20.0, what=None, diag=None):
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}"
                                     + (f": {self.eval(diag)}" if diag else ""))
            time.sleep(0.2)

    def mouse(self, kind, x, y):
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1 if kind != "mouseReleased" else 0,
                  clickCount=1)

    def click(self, x, y):
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def close(self):
        try:
            try:
                self.call("Browser.close")   # the browser ends itself and its child processes
                self.proc.wait(10)
            except Exception:
                pass
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.http.close())
        finally:
            self.loop.close()
            self.proc.kill()
            self.proc.wait(10)


def http(port, path, method="GET", token=ADMIN, body=None, headers=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def written_gap(rows) -> float:
    """The longest time between two written frames of these latency rows (by capture time)."""
    times = sorted(r["capture_s"] for r in rows if not r["dropped"])
    return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))


@needs_chromium
def test_console_draws_a_zone_saves_it_plays_a_clip_and_refuses_viewers(tmp_path, camvid_onnx, street_clip):
    preset = tmp_path / "console.yaml"
    preset.write_text(f"""# the console test's preset (this comment is kept in console.yaml.bak)
realtime: true
loop: true
cameras:
  - name: cam0
    source: {street_clip}
    rules:
      - {{class: car, above: 0.05, for_s: 0, clear_s: 0, pre_roll_s: 0.5, post_roll_s: 0.5}}
  - name: cam1
    source: {street_clip}
""")
    port = free_port()
    cov_log, lat_log = tmp_path / "coverage.jsonl", tmp_path / "latency.csv"
    app = App("--config", preset, "--model", camvid_onnx, "--output", f"http://127.0.0.1:{port}",
              "--auth-token", VIEWER, "--admin-token", ADMIN, "--clips-dir", tmp_path / "clips",
              "--coverage-log", cov_log, log=lat_log)
    browser = None
    try:
        deadline = time.monotonic() + 40
        while True:
            try:
                status, body, _ = http(port, "/api/console")
                if status == 200:
                    break
            except OSError:
                pass
            assert app.proc.poll() is None and time.monotonic() < deadline, terminate(app.proc)
            time.sleep(0.3)
        info = json.loads(body)
        assert info["role"] == "admin" and "car" in info["classes"] and info["preset"]
        origin = {"Origin": f"http://127.0.0.1:{port}", "X-CSRF-Token": info["csrf"]}

        # Roles, CSRF and same origin, from a plain client.
        save = {"camera": "cam0", "zones": [], "rules": []}
        assert http(port, "/api/preset", "POST", VIEWER, save, origin)[0] == 403          # the viewer may not save
        assert http(port, "/api/events/cam0/x", "DELETE", VIEWER, None, origin)[0] == 403  # ... nor delete
        assert http(port, "/api/preset", "POST", ADMIN, save, {**origin, "Origin": "http://evil.example"})[0] == 403
        assert json.loads(http(port, "/api/console", token=VIEWER)[1])["role"] == "viewer"

        browser = Browser(tmp_path / "chromium")
        browser.call("Page.enable")
        browser.call("Runtime.enable")
        browser.call("Page.navigate", url=f"http://127.0.0.1:{port}/console?token={ADMIN}")
        browser.wait("document.querySelectorAll('#zone-classes input').length > 0 && "
                     "document.getElementById('live').naturalWidth > 0", what="the console and a live frame")
        rect = browser.eval("(() => { const r = document.getElementById('zones').getBoundingClientRect(); "
                            "window.scrollTo(0, 0); return [r.left, r.top, r.width, r.height]; })()")
        left, top, width, height = rect

        def at(x, y):
            return left + x * width, top + y * height

        # A 4-point zone, clicked on the picture; one point dragged into place.
        for x, y in [(0.3, 0.5), (0.7, 0.5), (0.95, 0.97), (0.15, 0.97)]:
            browser.click(*at(x, y))
        browser.mouse("mousePressed", *at(0.15, 0.97))
        browser.mouse("mouseMoved", *at(0.1, 0.97))
        browser.mouse("mouseMoved", *at(0.05, 0.98))
        browser.mouse("mouseReleased", *at(0.05, 0.98))
        assert browser.eval("document.getElementById('zone-points').textContent") == "4 points"
        browser.eval("document.querySelector('#zone-classes input[data-class=\"car\"]').click()")

        # A name with markup: refused by the settings, the one line shown as text by the field.
        browser.eval(f"(() => {{ const n = document.getElementById('zone-name'); n.value = {json.dumps(MARKUP)}; "
                     "n.dispatchEvent(new Event('input')); document.getElementById('save').click(); })()")
        shown = browser.wait("document.getElementById('zone-name-error').textContent", what="the refusal")
        assert MARKUP in shown and "zone name" in shown
        assert browser.eval("document.querySelectorAll('img[src=\"x\"]').length") == 0
        assert "lane" not in preset.read_text()

        # Past the start-up (model warm-up, first frames dropped): the save's window is steady running.
        before = browser.wait("fetch('/api/cameras').then(r => r.json()).then(c => c.cam1.frame >= 60 && c.cam1.frame)",
                              timeout_s=30, what="cam1 running for 4 s")
        browser.eval("(() => { const n = document.getElementById('zone-name'); n.value = 'lane'; "
                     "n.dispatchEvent(new Event('input')); document.getElementById('save').click(); })()")
        status_line = browser.wait("document.getElementById('save-status').textContent.startsWith('saved') && "
                                   "document.getElementById('save-status').textContent", what="the save")
        saved_at = time.time()
        saved = yaml.safe_load(preset.read_text())
        zone = saved["cameras"][0]["zones"][0]
        assert zone["name"] == "lane" and zone["classes"] == ["car"] and len(zone["polygon"]) == 4
        assert zone["polygon"][3] == pytest.approx([0.05, 0.98], abs=0.01)   # where it was dragged
        assert saved["cameras"][0]["rules"][0]["class"] == "car" and saved["realtime"] is True
        assert (tmp_path / "console.yaml.bak").read_text().startswith("# the console test's preset")
        applied = "unavailable" not in status_line
        if applied:   # live reload (Session.reload): coverage of the new zone within 2 s
            deadline = saved_at + 2.0
            while True:
                coverage = json.loads(http(port, "/api/coverage")[1])["cameras"]["cam0"]["coverage"]
                logged = any('"lane"' in line for line in cov_log.read_text().splitlines()[-40:])
                if "lane" in coverage and "car" in coverage["lane"] and logged:
                    break
                assert time.time() < deadline, f"no coverage of the new zone 2 s after the save: {coverage}"
                time.sleep(0.1)

        time.sleep(max(0.0, saved_at + 2.0 - time.time()))
        after = json.loads(http(port, "/api/cameras")[1])["cam1"]["frame"]

        # Coverage over time: a uPlot chart per zone.
        browser.wait("document.querySelector('#charts .chart canvas') !== null", what="a coverage chart")

        # An event's clip plays in the page and seeks; its snapshot shows.
        browser.wait("[...document.querySelectorAll('#events .event button')].some(b => b.textContent === 'play')",
                     timeout_s=30, what="an event with its clip written")
        clip = browser.eval("(() => { const b = [...document.querySelectorAll('#events .event button')]"
                            ".find(b => b.textContent === 'play'); b.click(); return document.getElementById('player').src; })()")
        browser.wait("document.getElementById('player').currentTime > 0.3", what="the clip playing",
                     diag="(() => { const v = document.getElementById('player'); return JSON.stringify("
                          "{src: v.src, error: v.error && [v.error.code, v.error.message], ready: v.readyState, "
                          "net: v.networkState, duration: v.duration, t: v.currentTime, paused: v.paused}); })()")
        browser.wait("document.getElementById('snapshot').naturalWidth > 0", what="the snapshot")
        browser.eval("(() => { const v = document.getElementById('player'); v.pause(); return new Promise((done) => "
                     "{ v.addEventListener('seeked', done, {once: true}); v.currentTime = 0.2; }); })()")
        assert browser.eval("document.getElementById('player').currentTime") == pytest.approx(0.2, abs=0.05)
        path = clip.split(str(port), 1)[1]
        status, body, headers = http(port, path, headers={"Range": "bytes=0-99"})
        assert status == 206 and len(body) == 100 and headers["Content-Type"] == "video/mp4"

        SHOTS.mkdir(parents=True, exist_ok=True)
        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (SHOTS / "console.png").write_bytes(base64.b64decode(shot["data"]))

        # The admin deletes the event with its files.
        event_id = Path(path).stem
        assert http(port, f"/api/events/cam0/{event_id}", "DELETE", ADMIN, None, origin)[0] == 200
        assert not (tmp_path / "clips" / "cam0" / f"{event_id}.mp4").exists()
        assert all(e["id"] != event_id for e in json.loads(http(port, "/api/events")[1])["events"])
        # A longer span: the charts read the coverage log back (the viewer may).
        status, body, _ = http(port, "/api/coverage/history?camera=cam0&minutes=60", token=VIEWER)
        assert status == 200 and json.loads(body)["source"] == "log" and json.loads(body)["rows"] > 0
        browser.eval("(() => { const s = document.getElementById('span'); s.value = '60'; "
                     "s.dispatchEvent(new Event('change')); })()")
        browser.wait("st.longKey === st.camera + '60' && document.querySelector('#charts .chart canvas') !== null",
                     what="the 1 h span from the coverage log")
        assert not [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"]

        # The other camera went on through the save: no gap in its written frames longer than
        # 3 s or twice its longest in as many frames just before (on 2 shared cores the load
        # alone spaces frames by a second or more; a camera held by the reload stops for longer).
        rows = [r for r in read_log(lat_log) if r["camera"] == "cam1"]
        during = written_gap([r for r in rows if before <= r["frame"] <= after])
        baseline = written_gap([r for r in rows if 2 * before - after <= r["frame"] <= before])
        assert after > before and during <= max(3.0, 2 * baseline), (during, baseline)
        if not applied:
            pytest.skip("saved and checked; live apply not tested: this run has no live reload "
                        "(Session.reload, the preset re-read, is not in this branch)")
    finally:
        if browser is not None:
            browser.close()
        terminate(app.proc)


# -- the same checks without a browser or a model: quick ---------------------------------------

CLASSES = ["road", "car", "pedestrian"]


def served(tmp_path, **options):
    """An AppServer on 127.0.0.1 with one camera and a preset for the console to save to."""
    from app.server import AppServer, ServerOptions

    preset = tmp_path / "site.yaml"
    preset.write_text("# site preset\nrealtime: true\nfps: 15\nzones:\n  - {name: old, polygon: [[0, 0], [1, 0], [1, 1]]}\n")
    server = AppServer(ServerOptions(**options), announce=lambda msg: None)
    server.classes, server.preset = CLASSES, preset
    server.add_camera("cam0")
    return server, server.listen("127.0.0.1", 0), preset


def csrf_headers(server, port):
    return {"Origin": f"http://127.0.0.1:{port}", "X-CSRF-Token": server.auth.csrf}


def test_save_checks_like_the_command_line_keeps_a_backup_and_reloads(tmp_path):
    server, port, preset = served(tmp_path, auth_token=VIEWER, admin_token=ADMIN)
    reloaded = []

    def reload():   # what the session's live reload does first: the preset read back as settings
        from app.settings import build
        reloaded.append(build({"source": ["0"]}, str(preset)))
        return "zones and rules applied"

    try:
        headers = csrf_headers(server, port)
        lane = {"name": "lane", "polygon": [[0.1, 0.5], [0.9, 0.5], [0.9, 1.0], [0.1, 1.0]], "classes": ["car"]}
        bad = {"camera": "cam0", "zones": [{**lane, "classes": ["boat"]}], "rules": []}
        status, body, _ = http(port, "/api/preset", "POST", ADMIN, bad, headers)
        error = json.loads(body)["error"]
        assert status == 400 and "\n" not in error and "unknown class 'boat'" in error and str(preset) in error
        assert "lane" not in preset.read_text() and not (tmp_path / "site.yaml.bak").exists()

        status, body, _ = http(port, "/api/preset", "POST", ADMIN, {"camera": "cam0", "zones": [lane], "rules": []},
                               headers)
        assert status == 200 and json.loads(body)["applied"] is False and "unavailable" in json.loads(body)["status"]
        data = yaml.safe_load(preset.read_text())
        assert data["zones"] == [lane] and data["realtime"] is True and data["fps"] == 15   # other keys kept
        assert (tmp_path / "site.yaml.bak").read_text().startswith("# site preset")

        server.reload = reload
        rule = {"zone": "lane", "class": "car", "above": 0.2}
        status, body, _ = http(port, "/api/preset", "POST", ADMIN, {"camera": "cam0", "zones": [lane], "rules": [rule]},
                               headers)
        assert status == 200 and json.loads(body)["status"] == "saved site.yaml; zones and rules applied"
        assert reloaded[-1].cameras[0].rules == [rule]
        console = json.loads(http(port, "/api/console")[1])
        assert console["cameras"]["cam0"]["rules"] == [rule] and console["reload"] is True
    finally:
        server.close()


def test_roles_csrf_and_same_origin_guard_every_state_changing_request(tmp_path):
    server, port, preset = served(tmp_path, auth_token=VIEWER, admin_token=ADMIN)
    try:
        save = {"camera": "cam0", "zones": [], "rules": []}
        headers = csrf_headers(server, port)
        assert json.loads(http(port, "/api/console", token=VIEWER)[1])["role"] == "viewer"
        assert json.loads(http(port, "/api/console", token=ADMIN)[1])["role"] == "admin"
        assert http(port, "/api/preset", "POST", VIEWER, save, headers)[0] == 403
        assert http(port, "/api/events/cam0/x", "DELETE", VIEWER, None, headers)[0] == 403
        assert http(port, "/api/preset", "POST", ADMIN, save, {**headers, "Origin": "http://evil.example"})[0] == 403
        assert http(port, "/api/preset", "POST", ADMIN, save, {**headers, "Origin": "null"})[0] == 403
        # The token in Authorization: a header no other site can make a browser send, no CSRF token needed.
        assert http(port, "/api/preset", "POST", ADMIN, save, {"Origin": headers["Origin"]})[0] == 200
        assert http(port, "/api/preset", "POST", "wrong-token-x", save, headers)[0] == 401
        referer = {"Referer": f"http://127.0.0.1:{port}/console", "X-CSRF-Token": server.auth.csrf}
        assert http(port, "/api/preset", "POST", ADMIN, save, referer)[0] == 200
        # The admin's page cookie: the admin token swapped on /console, a cookie unlike the viewer's.
        from http.client import HTTPConnection

        conn = HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/console?token={ADMIN}")
        swap = conn.getresponse()
        swap.read()
        cookie = swap.getheader("Set-Cookie").split(";")[0]
        assert swap.status == 303 and cookie == f"bisenet_session={server.auth.cookie_value('admin')}"
        assert cookie != f"bisenet_session={server.auth.cookie_value('viewer')}"
        conn.request("GET", "/api/console", headers={"Cookie": cookie})
        assert json.loads(conn.getresponse().read())["role"] == "admin"
        # The cookie alone (what a forged cross-site form would carry): the CSRF token is needed too.
        body, same = json.dumps(save), {"Cookie": cookie, "Origin": headers["Origin"], "Content-Type": "application/json"}
        for extra, status in (({}, 403), ({"X-CSRF-Token": "guess"}, 403), ({"X-CSRF-Token": server.auth.csrf}, 200)):
            conn.request("POST", "/api/preset", body=body, headers={**same, **extra})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == status, extra
        conn.request("GET", "/console", headers={"Cookie": cookie})
        page = conn.getresponse()
        assert page.status == 200 and b"<script>" not in page.read()
        assert page.getheader("Content-Security-Policy").startswith("default-src 'none'; script-src 'self'")
        conn.close()
    finally:
        server.close()


def test_one_token_is_admin_too_and_loopback_without_tokens_may_edit(tmp_path):
    server, port, _ = served(tmp_path, auth_token=VIEWER)
    try:
        assert json.loads(http(port, "/api/console", token=VIEWER)[1])["role"] == "admin"
    finally:
        server.close()
    server, port, _ = served(tmp_path)
    try:
        assert json.loads(http(port, "/api/console", token="")[1])["role"] == "admin"
    finally:
        server.close()
    server, port, _ = served(tmp_path, admin_token=ADMIN)   # loopback watches freely; edits need the admin token
    try:
        assert json.loads(http(port, "/api/console", token="")[1])["role"] == "viewer"
        assert json.loads(http(port, "/api/console", token=ADMIN)[1])["role"] == "admin"
    finally:
        server.close()


def test_admin_token_is_declared_once_and_checked():
    from app.server import ServerOptions
    from app.settings import build
    from core.errors import InputError

    assert build({"admin_token": ADMIN}).server.server_options().admin_token == ADMIN
    with pytest.raises(InputError, match="--admin-token must differ"):
        ServerOptions(auth_token=ADMIN, admin_token=ADMIN).check()
    with pytest.raises(InputError, match="admin-token"):
        build({"admin_token": "short"})


def test_the_coverage_ring_is_bounded_and_keeps_event_spans():
    from app.server.coverage_ring import CoverageRing

    ring = CoverageRing(samples=5, spans=2)
    for i in range(20):
        events = [{"type": "end" if i % 2 else "start", "time": float(i),
                   "event": {"id": f"e{i // 2}", "camera": "cam0", "zone": "lane", "class": "car"}}]
        ring.add({"cameras": {"cam0": {"frame": i, "coverage": {"lane": {"car": i / 20}}}}, "events": events},
                 now=float(i))
        ring.add({"cameras": {"cam0": {"frame": i, "coverage": {"lane": {"car": 1.0}}}}, "events": []}, now=i + 0.5)
    h = ring.history("cam0")
    assert h["t"] == [15.0, 16.0, 17.0, 18.0, 19.0] and h["series"]["lane:car"] == [0.75, 0.8, 0.85, 0.9, 0.95]
    assert [(s["id"], s["start"], s["end"]) for s in h["spans"]] == [("e8", 16.0, 17.0), ("e9", 18.0, 19.0)]
    assert ring.history("cam0", since_s=1.5)["t"] == [18.0, 19.0]


def test_the_coverage_ring_keeps_span_s_seconds_and_forgets_a_camera_gone():
    """Bounded by time too: a slow sampler's ring is as long as a fast one's, and a camera that a
    reload removed leaves nothing once its samples are older than the span."""
    from app.server.coverage_ring import CoverageRing

    ring = CoverageRing(samples=1000, span_s=10.0)
    for i in range(30):   # one sample a second; cam1 stops at 12 s
        cams = {"cam0": {"frame": i, "coverage": {"lane": {"car": 0.5}}}}
        if i < 12:
            cams["cam1"] = {"frame": i, "coverage": {"lane": {"car": 0.5}}}
        ring.add({"cameras": cams, "events": []}, now=float(i))
        if i == 15:
            assert ring.history("cam1")["t"] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    assert ring.history("cam0")["t"] == [float(i) for i in range(19, 30)]   # 10 s back from 29 s
    assert "cam1" not in ring.rings and ring.history("cam1")["t"] == []


def test_a_shipped_preset_is_never_overwritten(tmp_path):
    from app.server.preset_edit import save_zones
    from core.config_files import CONFIGS_DIR
    from core.errors import InputError

    shipped = next((CONFIGS_DIR / "app").glob("*.yaml"))
    before = shipped.read_bytes()
    with pytest.raises(InputError, match="shipped with the app: copy it"):
        save_zones(shipped, "cam0", [], [], CLASSES)
    assert shipped.read_bytes() == before and not shipped.with_name(shipped.name + ".bak").exists()


def test_an_event_clip_is_served_by_byte_ranges_and_deleted_with_its_files(tmp_path):
    import numpy as np

    from app.analytics import Analytics
    from app.analytics.specs import parse_camera_analytics
    from app.frames import Frame
    from app.settings import AnalyticsSettings

    clips = tmp_path / "clips"
    config = parse_camera_analytics([], [{"class": "car", "above": 0.5, "for_s": 0}], "test")
    analytics = Analytics(AnalyticsSettings(clips_dir=str(clips)), {"cam0": config}, CLASSES)
    server, port, _ = served(tmp_path, auth_token=VIEWER, admin_token=ADMIN)
    server.set_analytics(analytics, str(clips))
    try:
        image = np.zeros((40, 80, 3), np.uint8)
        analytics.process("cam0", Frame(0, 0.0, image, 0.0), np.ones((4, 8), np.int64), image.copy())
        event = json.loads(http(port, "/api/events", token=VIEWER)[1])["events"][0]
        assert (event["camera"], event["zone"], event["class"], event["open"]) == ("cam0", "frame", "car", True)
        clip, snapshot = clips / "cam0" / f"{event['id']}.mp4", clips / "cam0" / f"{event['id']}.jpg"
        clip.parent.mkdir(parents=True, exist_ok=True)
        clip.write_bytes(bytes(range(256)) * 40)    # stands in for the recorder's file: only its bytes are served
        snapshot.write_bytes(b"\xff\xd8jpeg")
        status, body, headers = http(port, event["clip"], token=VIEWER, headers={"Range": "bytes=1000-1099"})
        assert status == 206 and body == (bytes(range(256)) * 40)[1000:1100] and headers["Content-Type"] == "video/mp4"
        assert headers["Content-Range"] == f"bytes 1000-1099/{256 * 40}"
        assert json.loads(http(port, "/api/events", token=VIEWER)[1])["events"][0]["has_clip"] is True

        headers = csrf_headers(server, port)
        assert http(port, f"/api/events/cam0/{event['id']}", "DELETE", VIEWER, None, headers)[0] == 403
        assert clip.exists()
        status, body, _ = http(port, f"/api/events/cam0/{event['id']}", "DELETE", ADMIN, None, headers)
        assert status == 200 and sorted(json.loads(body)["files"]) == sorted([clip.name, snapshot.name])
        assert not clip.exists() and not snapshot.exists()
        assert json.loads(http(port, "/api/events", token=VIEWER)[1])["events"] == []
        assert http(port, "/api/events/cam0/nope-1-2", "DELETE", ADMIN, None, headers)[0] == 404
    finally:
        analytics.close()
        server.close()
