"""The app's server (app/server/) tried as an attacker and as a viewer would, with real
clients on 127.0.0.1: auth on every path, the rate limit, Bearer / Basic / cookie, the Host
check, client limits and timeouts, /metrics against the latency log, /healthz against a real
RTSP source that dies and returns, TLS."""
from __future__ import annotations

import base64
import http.client
import json
import resource
import shutil
import socket
import ssl
import subprocess
import threading
import time

import numpy as np
import pytest

from app.frames import Frame
from app.http_sink import HttpSink
from app.latency import LatencyRecorder, read_log
from app.server import Auth, AppServer, ServerError, ServerOptions
from app.server.limits import PER_ADDRESS_PENDING
from testkit.app_helpers import SAMPLE_VIDEO, free_port, tiny_onnx
from testkit.app_process import App, written_rate
from testkit.http_clients import (CHROMIUM, CHROMIUM_FLAGS, TOKEN, Viewer, attack, bearer, count_refused,
                                  metric_values, open_stream, proc_counts, read_parts, request)
from testkit.rtsp_server import publishers, relay, wait_published  # noqa: F401 (fixtures)

PATHS = ["/", "/index.html", "/stream.mjpg", "/snapshot.jpg", "/stats.json", "/metrics",
         "/camera/cam0", "/camera/cam0/stream.mjpg", "/camera/cam0/snapshot.jpg", "/camera/cam0/stats.json"]


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def image(h=48, w=64):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w // 2:] = (0, 0, 255)
    return img


@pytest.fixture
def served():
    """An in-process server on 127.0.0.1 with a token (auth on, as on any non-loopback bind),
    one camera with a frame in it."""
    said = []
    server = AppServer(ServerOptions(auth_token=TOKEN, allowed_hosts=("edge-box.lan",)), announce=said.append)
    sink = HttpSink("127.0.0.1", 0, server=server)
    img = image()
    for i in range(2):
        sink.write(Frame(i, time.monotonic(), img, None, {"inference": 5.0}), img, None)
    try:
        yield server, sink.port, said
    finally:
        sink.close()
        server.close()


def test_no_token_is_401_on_every_path_and_bearer_basic_cookie_work(served):
    server, port, said = served
    assert f"serving the overlay at http://127.0.0.1:{port}/ (listening on 127.0.0.1:{port} only; " \
           "auth on: token required; at most 16 viewers)" in said, said
    for path in PATHS:
        status, headers, _ = request(port, path)
        assert status == 401, path
        assert headers["www-authenticate"].startswith("Basic")   # so VLC, ffplay and browsers ask
    # Bearer and Basic (any user name, the token as password) on every path.
    for path in PATHS:
        assert request(port, path, bearer())[0] == 200, path
    for user in ("", "viewer", "vlc"):
        assert request(port, "/stats.json", basic(user, TOKEN))[0] == 200
    stats = json.loads(request(port, "/stats.json", bearer())[2])
    assert stats["frame"] == 1 and stats["inference_ms"] == pytest.approx(5.0)
    # /?token= once: an HttpOnly cookie, and the token leaves the address bar.
    assert request(port, f"/stats.json?token={TOKEN}")[0] == 401   # in a URL only for the page
    status, headers, _ = request(port, f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    status, headers, _ = request(port, f"/camera/cam0?token={TOKEN}")
    assert status == 303 and headers["location"] == "/camera/cam0"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and TOKEN not in cookie
    session = cookie.split(";", 1)[0]
    for path in ("/", "/stats.json", "/snapshot.jpg", "/metrics"):
        assert request(port, path, {"Cookie": session})[0] == 200
    for _ in range(6):   # a stale cookie (an old tab) is a 401, never a lockout
        assert request(port, "/stats.json", {"Cookie": session[:-4] + "abcd"})[0] == 401
    # /healthz answers local health checks without a token.
    assert request(port, "/healthz")[0] == 200


def test_host_header_check_against_dns_rebinding(served):
    _, port, _ = served
    assert request(port, "/stats.json", {**bearer(), "Host": "evil.example"})[0] == 403
    assert request(port, "/stats.json", {**bearer(), "Host": "evil.example:8080"})[0] == 403
    for host in (f"127.0.0.1:{port}", "192.168.1.20:8080", "[::1]:8080", "localhost", "edge-box.lan:8080",
                 socket.gethostname()):
        assert request(port, "/stats.json", {**bearer(), "Host": host})[0] == 200, host


def test_wrong_tokens_are_401_then_rate_limited(served):
    _, port, _ = served
    for i in range(5):
        status, _, _ = request(port, "/stats.json", bearer("not-the-token"))
        assert status == 401
    status, headers, _ = request(port, "/stats.json", bearer())   # even the right one, for a while
    assert status == 429 and int(headers["retry-after"]) > 0
    assert request(port, "/", basic("x", "guess"))[0] == 429


def test_token_policy_generated_once_loopback_free_no_auth_warns():
    said = []
    auth = Auth(None, announce=said.append)
    assert not auth.required_for("127.0.0.1") and auth.token_for("127.0.0.1", "x") is None
    token = auth.token_for("0.0.0.0", "http://<this host>:8080/?token={token}")
    assert token and len(token) >= 16 and auth.token_for("0.0.0.0", "y") == token
    assert len(said) == 1 and f"http://<this host>:8080/?token={token}" in said[0]   # printed once
    assert Auth(TOKEN).required_for("127.0.0.1")                    # given: loopback too
    assert not Auth(None, disabled=True).required_for("0.0.0.0")
    said = []
    server = AppServer(ServerOptions(no_auth=True), announce=said.append)
    server.close()
    assert any("--no-auth" in s and s.startswith("warning") for s in said)
    with pytest.raises(ValueError, match="go together"):
        ServerOptions(tls_cert="a.pem").check()
    with pytest.raises(ValueError, match="max-clients"):
        ServerOptions(max_clients=0).check()


def test_viewer_cap_send_timeout_and_idle_timeout():
    """--max-clients viewers, the rest 503; a viewer that never reads is dropped after the
    send timeout while a reading one goes on; a half-sent request is closed after the idle
    timeout; past the connection cap, 503 at once."""
    server = AppServer(ServerOptions(auth_token=TOKEN, max_clients=2, send_timeout_s=1.0, idle_timeout_s=1.0),
                       announce=lambda m: None)
    sink = HttpSink("127.0.0.1", 0, server=server)
    port = sink.port
    big = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)   # ~200 KB JPEGs
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            sink.write(Frame(i, time.monotonic(), big), big, None)
            i += 1
            time.sleep(0.04)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    reader = open_stream(port, TOKEN)
    stuck = open_stream(port, TOKEN, rcvbuf=4096)   # never reads
    try:
        f = reader.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200")
        read_parts(f, 2)
        assert server.viewers == 2
        assert request(port, "/stream.mjpg", bearer())[0] == 503     # the third viewer
        assert request(port, "/stats.json", bearer())[0] == 200      # pages still answer
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /stats.json HTTP/1.1\r\nHost: 127")        # and never finishes
        deadline = time.monotonic() + 10
        while server.viewers > 1 and time.monotonic() < deadline:
            read_parts(f, 1)
        assert server.viewers == 1, "the viewer that never reads was not dropped"
        read_parts(f, 5)                                              # the reading one goes on
        slow.settimeout(5)
        assert slow.recv(100) == b"", "a half-sent request was kept open past the idle timeout"
        # Past the cap of connections without a request from one address: 503 at once, socket closed.
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        assert count_refused(idle, 0.5) >= 40 - PER_ADDRESS_PENDING
        for s in idle:
            s.close()
    finally:
        stop.set()
        feeder.join()
        for s in (reader, stuck):
            s.close()
        sink.close()
        server.close()


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="no sample video")
def test_idle_sockets_and_non_readers_leave_fps_threads_and_fds_flat(tmp_path):
    """The app as a subprocess (real start-up, flags, auth): 300 idle sockets and 50 viewers
    that never read. fps stays within 10%, threads and descriptors stay bounded by
    --max-clients plus a constant, a normal viewer keeps getting frames, resets are no
    tracebacks, and nothing served names a file path."""
    model = tiny_onnx((64, 96))
    port, max_clients = free_port(), 8
    log = tmp_path / "lat.csv"
    app = App("--source", SAMPLE_VIDEO, "--realtime", "--loop", "--model", model, "--output",
              f"http://127.0.0.1:{port}", "--auth-token", TOKEN, "--max-clients", max_clients, log=log)
    sockets, viewer = [], None
    try:
        app.wait_rows(30)
        # The crash this holds off: with 64 descriptors, ~53 idle sockets used to make the clip's next
        # reopen (it loops every 101 frames) fail, and the app exit 1.
        resource.prlimit(app.proc.pid, resource.RLIMIT_NOFILE, (64, 64))
        start = time.monotonic() - read_log(log)[-1]["capture_s"]   # the run's clock, roughly
        viewer = Viewer(port, TOKEN)
        base_threads, base_fds = proc_counts(app.proc.pid)
        t0 = time.monotonic()
        time.sleep(4)
        t1 = time.monotonic()
        sockets = attack(port, TOKEN, readers=50, idle=300)
        t2 = time.monotonic()
        peak_threads, peak_fds = base_threads, base_fds
        while time.monotonic() < t2 + 4:
            threads, fds = proc_counts(app.proc.pid)
            peak_threads, peak_fds = max(peak_threads, threads), max(peak_fds, fds)
        t3 = time.monotonic()
        got = viewer.frames_between(t2, t3)                  # the normal viewer still gets frames
        while sockets:                                        # the attack ends: the slots free up
            sockets.pop().close()
        deadline = time.monotonic() + 15
        while request(port, "/stats.json", bearer())[0] == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, _, metrics = request(port, "/metrics", bearer())
        page = request(port, "/", bearer())[2] + request(port, "/stats.json", bearer())[2]
    finally:
        for s in sockets:
            s.close()
        if viewer is not None:
            viewer.close()
        app.signal()
        err = app.finish()
    fps_before = written_rate(read_log(log), t0 - start, t1 - start)
    fps_during = written_rate(read_log(log), t2 - start, t3 - start)
    print(f"fps {fps_before:.2f} -> {fps_during:.2f} under attack; threads {base_threads} -> {peak_threads}, "
          f"fds {base_fds} -> {peak_fds}; the normal viewer got {got} frames in {t3 - t2:.1f} s")
    assert fps_during >= 0.9 * fps_before, (fps_before, fps_during)
    assert got >= 0.8 * fps_before * (t3 - t2), got
    assert peak_threads <= base_threads + 2, (base_threads, peak_threads)
    assert peak_fds <= base_fds + max_clients + 16 + 4, (base_fds, peak_fds)
    assert status == 200 and str(model) not in metrics.decode() and str(model.parent) not in page.decode()
    assert f"serving the overlay at http://127.0.0.1:{port}/ (listening on 127.0.0.1:{port} only; auth on" in err
    assert "Traceback" not in err and "Error handling request" not in err, err[-3000:]
    assert app.proc.returncode == 0, err[-3000:]
    written = sum(1 for r in read_log(log) if not r["dropped"])
    assert written > 101, "the clip did not loop under the descriptor limit"
    scraped = metric_values(metrics.decode(), "bisenet_frames_total")[(("camera", "cam0"), ("outcome", "written"))]
    assert 0 < scraped <= written


def test_metrics_parse_and_equal_the_latency_log(tmp_path):
    """A real pipeline (ONNX Runtime, a real video) feeding the server; after the run
    /metrics parses with prometheus_client's parser and counts exactly what the log has."""
    from app.camera import Camera
    from app.pipeline import Pipeline
    from app.sources import open_source
    from engines.load import load_engine

    if not SAMPLE_VIDEO.is_file():
        pytest.skip("no sample video")
    engine = load_engine(str(tiny_onnx((64, 96))), threads=1)
    server = AppServer(ServerOptions(auth_token=TOKEN), announce=lambda m: None)
    try:
        server.set_model(engine)
        port = server.listen("127.0.0.1", 0, what="metrics")
        log = tmp_path / "lat.csv"
        recorder = LatencyRecorder(log)
        cam = Camera("cam0", open_source(str(SAMPLE_VIDEO)), [HttpSink("127.0.0.1", 0, server=server)], max_frames=25)
        pipeline = Pipeline([cam], engine, recorder=recorder)
        server.metrics.watch("cam0", recorder, 10.0, queues={"input": cam.in_q, "output": cam.out_q}, reader=cam.reader)
        assert pipeline.run() == 0
        assert request(port, "/metrics")[0] == 401
        assert request(port, "/stats.json", bearer())[0] == 404           # metrics-only listener
        status, headers, body = request(port, "/metrics", bearer())
    finally:
        server.close()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    rows = read_log(log)
    written = sum(1 for r in rows if not r["dropped"])
    assert written == 25
    frames = metric_values(text, "bisenet_frames_total")
    assert frames == {(("camera", "cam0"), ("outcome", "written")): float(written)}
    counts = metric_values(text, "bisenet_stage_duration_seconds_count")
    stages = {dict(k)["stage"] for k in counts}
    assert stages == {"capture", "queue", "preprocess", "inference", "overlay", "sink", "e2e"}
    assert all(v == written for v in counts.values()), counts
    sums = metric_values(text, "bisenet_stage_duration_seconds_sum")
    e2e = sum(r["e2e_ms"] for r in rows if not r["dropped"]) / 1000.0
    assert sums[(("camera", "cam0"), ("stage", "e2e"))] == pytest.approx(e2e, rel=1e-2)
    info = metric_values(text, "bisenet_model_info")
    (labels, value), = info.items()
    assert value == 1 and dict(labels)["backend"] == "onnxruntime" and dict(labels)["input_size"] == "64x96"
    assert metric_values(text, "bisenet_queue_depth")
    assert metric_values(text, "bisenet_source_reconnects_total") == {(("camera", "cam0"),): 0.0}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    said = []
    server = AppServer(ServerOptions(auth_token=TOKEN, tls_cert=str(cert), tls_key=str(key)), announce=said.append)
    sink = HttpSink("127.0.0.1", 0, server=server)
    try:
        client = ssl.create_default_context(cafile=str(cert))
        assert request(sink.port, "/stats.json", tls=client)[0] == 401
        status, headers, _ = request(sink.port, f"/?token={TOKEN}", tls=client)
        assert status == 303 and "Secure" in headers["set-cookie"]
        assert request(sink.port, "/stats.json", bearer(), tls=client)[0] == 200
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            request(sink.port, "/stats.json", bearer(), timeout=3)   # plain HTTP to the TLS port
    finally:
        sink.close()
        server.close()
    assert any(f"https://127.0.0.1:{sink.port}/" in s and "; TLS; auth on" in s for s in said), said
    with pytest.raises(ServerError, match="tls-cert") as e:
        AppServer(ServerOptions(tls_cert=str(cert), tls_key=str(tmp_path / "missing.pem")))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="no sample video")
def test_healthz_503_naming_the_dead_source_and_200_when_it_returns(relay, publishers, tmp_path):
    """A real RTSP camera (ffmpeg publishing to rtsp-server-perl) read by the app with an RTSP
    output-less headless run: /healthz on --metrics-port follows the source."""
    camera = publishers(relay.push_url("/camera"))
    wait_published(relay.pull_url("/camera"))
    port = free_port()
    app = App("--source", relay.pull_url("/camera"), "--rtsp-transport", "udp", "--model", tiny_onnx((64, 96)),
              "--output", "null", "--source-timeout", 2, "--metrics-port", f"127.0.0.1:{port}",
              log=tmp_path / "lat.csv")

    def wait_health(code, timeout_s):
        deadline = time.monotonic() + timeout_s
        while True:
            status, _, body = request(port, "/healthz")
            if status == code or time.monotonic() > deadline:
                return status, body.decode()
            time.sleep(0.2)

    try:
        app.wait_rows(10)
        assert wait_health(200, 10) == (200, "ok\n")
        relay.kill()                                    # the camera and its server die
        camera.kill()
        status, body = wait_health(503, 15)
        assert status == 503 and body.startswith("stale: cam0 (no frame for "), body
        assert request(port, "/metrics")[0] == 200      # loopback bind, no token given: open
        relay.start()                                   # ...and come back
        publishers(relay.push_url("/camera"))
        status, body = wait_health(200, 60)
        assert status == 200, body
        metrics = request(port, "/metrics")[2].decode()
    finally:
        app.signal()
        err = app.finish()
    assert f"serving metrics at http://127.0.0.1:{port}/ (listening on 127.0.0.1:{port} only; no auth: loopback" in err
    assert metric_values(metrics, "bisenet_source_outages_total")[(("camera", "cam0"),)] >= 1
    assert metric_values(metrics, "bisenet_source_reconnects_total")[(("camera", "cam0"),)] >= 1


def test_bad_serving_flags_are_one_line_errors(tmp_path):
    import sys

    from testkit.app_helpers import REPO
    for flags, expected in ((["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
                            (["--metrics-port", "nine"], "--metrics-port 'nine': expected PORT or HOST:PORT"),
                            (["--metrics-port", "70000"], "--metrics-port '70000': expected PORT"),
                            (["--max-clients", "0"], "--max-clients 0 is out of range"),
                            (["--auth-token", "short"], "--auth-token use at least 8 characters")):
        r = subprocess.run([sys.executable, str(REPO / "run_camera.py"), "--source", "x.mp4", "--model", "m.onnx",
                            *flags], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and expected in r.stderr, r.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_a_browser_opens_the_page_once_with_the_token_and_the_cookie_carries_the_stream(tmp_path):
    """Headless Chromium opens /?token=: the redirect drops the token, the HttpOnly cookie
    then carries the page's own requests (the MJPEG <img> and the stats poll)."""

    server = AppServer(ServerOptions(auth_token=TOKEN), announce=lambda m: None)
    sink = HttpSink("127.0.0.1", 0, server=server)
    green = np.zeros((360, 480, 3), np.uint8)
    green[:] = (0, 200, 0)
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            sink.write(Frame(i, time.monotonic(), green, None, {"inference": 7.0}), green, None)
            i += 1
            time.sleep(0.05)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    shot = tmp_path / "page.png"
    try:
        subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        "--window-size=800,600", "--timeout=5000", f"--screenshot={shot}",
                        f"http://127.0.0.1:{sink.port}/?token={TOKEN}"], capture_output=True, timeout=120)
    finally:
        stop.set()
        feeder.join()
        sink.close()
        server.close()
    import cv2
    page = cv2.imread(str(shot))
    assert page is not None, "no screenshot"
    video = page[60:380, 10:470].reshape(-1, 3).astype(int)
    assert (np.abs(video - (0, 200, 0)).sum(axis=1) < 40).mean() > 0.9, "the stream did not show in the page"


def test_several_cameras_share_one_port():
    """What the multi-camera run builds on: two named cameras on one server and port."""
    server = AppServer(ServerOptions(), announce=lambda m: None)
    first = HttpSink("127.0.0.1", 0, server=server, camera="door")
    second = HttpSink("127.0.0.1", first.port, server=server, camera="yard")
    try:
        for sink, value in ((first, 50), (second, 200)):
            img = np.full((24, 32, 3), value, np.uint8)
            sink.write(Frame(0, time.monotonic(), img), img, None)
        import cv2
        for path, value in (("/snapshot.jpg", 50), ("/camera/door/snapshot.jpg", 50),
                            ("/camera/yard/snapshot.jpg", 200)):
            status, _, body = request(first.port, path)
            assert status == 200 and abs(int(cv2.imdecode(np.frombuffer(body, np.uint8), 1).mean()) - value) < 4, path
        assert b"/camera/yard/stream.mjpg" in request(first.port, "/camera/yard")[2]
        assert request(first.port, "/camera/nobody/stats.json")[0] == 404
    finally:
        first.close()
        second.close()
        server.close()
