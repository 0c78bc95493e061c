"""What the app server gives out of the scene analytics, attacked: a model class name that is
HTML (it comes from the sidecar or a Triton server) shown by a real Chromium; symlinks planted
in the clips folder; /api/coverage handing out URLs, never server paths."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request

import numpy as np
import pytest

from app.analytics import Analytics
from app.analytics.specs import parse_camera_analytics
from app.frames import Frame
from app.server import AppServer
from app.settings import AnalyticsSettings

XSS = "<img src=x onerror=\"document.title='XSS-'+document.cookie\">"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install chromium)")


def served_run(tmp_path, class_names, rules, cameras=("cam0",)):
    """An AppServer on 127.0.0.1 serving the page and the analytics of `cameras`, one frame of
    labels all class 1 processed (so a rule on class 1 has started an event)."""
    config = parse_camera_analytics([], rules, "test")
    clips = tmp_path / "clips"
    analytics = Analytics(AnalyticsSettings(clips_dir=str(clips)), {c: config for c in cameras}, class_names)
    server = AppServer()
    server.set_analytics(analytics, str(clips))
    hubs = [server.add_camera(c) for c in cameras]
    port = server.listen("127.0.0.1", 0)
    image = np.zeros((40, 80, 3), np.uint8)
    for cam, hub in zip(cameras, hubs):
        frame = Frame(0, 0.0, image, 0.0)
        hub.publish(frame, image)
        hub.end()   # the stream is over: a browser's MJPEG request ends and the page finishes loading
        analytics.process(cam, frame, np.ones((4, 8), np.int64), image.copy())
    return analytics, server, f"http://127.0.0.1:{port}"


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


@needs_chromium
def test_a_class_name_that_is_html_shows_as_text_in_a_real_browser(tmp_path):
    analytics, server, base = served_run(tmp_path, ["road", XSS],
                                         [{"name": "evil", "class": XSS, "above": 0.5, "for_s": 0}])
    try:
        status, body, headers = get(base + "/")
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", base + "/"],
                             capture_output=True, text=True, timeout=90).stdout
        assert "<title>bisenet live</title>" in dom and "<title>XSS-" not in dom   # the handler never ran
        assert "&lt;img src=x onerror=" in dom              # ... its text is on the page, as text
        assert 'href="/clips/cam0/' in dom
        csp = headers["Content-Security-Policy"] or ""
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert b"<script>" not in body                      # no inline script for a CSP to allow
    finally:
        analytics.close()
        server.close()


def test_api_coverage_hands_out_clip_urls_not_server_paths(tmp_path):
    analytics, server, base = served_run(tmp_path, ["road", "car"], [{"class": "car", "above": 0.5, "for_s": 0}])
    try:
        _, body, _ = get(base + "/api/coverage")
        event = json.loads(body)["events"][0]["event"]
        assert event["clip"] == f"/clips/cam0/{event['id']}.mp4"
        assert event["snapshot"] == f"/clips/cam0/{event['id']}.jpg"
        assert str(tmp_path) not in body.decode()
    finally:
        analytics.close()
        server.close()


def test_clips_serves_no_symlink_and_no_folder_of_another_camera(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "1a-2b-3.jpg").write_text("not a clip of this run")
    analytics, server, base = served_run(tmp_path, ["road", "car"], [{"class": "car", "above": 0.5, "for_s": 0}])
    clips = tmp_path / "clips"
    try:
        os.symlink(secret, clips / "cam0" / "1a-2b-9.jpg")          # a link named like a snapshot
        os.symlink(secret, clips / "cam0" / "evil-1.jpg")
        os.symlink(elsewhere, clips / "evilcam")                   # a folder of no camera of the run
        (clips / "cam1").mkdir()                                  # a real folder, but no camera of the run
        (clips / "cam1" / "1a-2b-3.jpg").write_text("not served either")
        (clips / "cam0" / "old_footage.mp4").write_text("not written by the app")
        for path in ("/clips/cam0/1a-2b-9.jpg", "/clips/cam0/evil-1.jpg", "/clips/evilcam/1a-2b-3.jpg",
                     "/clips/cam1/1a-2b-3.jpg", "/clips/cam0/old_footage.mp4"):
            status, body, _ = get(base + path)
            assert status == 404 and b"secret" not in body and b"this run" not in body, path
        # The camera's own folder swapped for a link to elsewhere: nothing served through it.
        real = clips / "cam0"
        os.rename(real, clips / "cam0-real")
        os.symlink(elsewhere, real)
        assert get(base + "/clips/cam0/1a-2b-3.jpg")[0] == 404
        os.unlink(real)
        os.rename(clips / "cam0-real", real)
    finally:
        analytics.close()
        server.close()
    # What the recorder wrote is still served (the snapshot written at the end of the run).
    event_id = next(p.stem for p in (clips / "cam0").glob("*.jpg") if not p.is_symlink())
    analytics2, server2, base2 = served_run(tmp_path, ["road", "car"], [{"class": "car", "above": 0.5, "for_s": 0}])
    try:
        status, body, _ = get(f"{base2}/clips/cam0/{event_id}.jpg")
        assert status == 200 and body[:2] == b"\xff\xd8"
    finally:
        analytics2.close()
        server2.close()
