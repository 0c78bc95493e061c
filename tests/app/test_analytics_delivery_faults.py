"""Event delivery under hostile names and peers, with real parts on 127.0.0.1: a mosquitto
broker (one refusing anonymous clients), a process killed with SIGKILL mid-event, an HTTP
receiver that redirects, refuses or drips its answer. A message that can never get through is
dropped and counted, never retried forever; nothing that is not delivered is reported as such."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.analytics.events import MqttDelivery, Outbox, WebhookDelivery, parse_mqtt_url
from app.analytics.rules import Event
from core.backoff import Backoff
from core.errors import InputError
from testkit.analytics_helpers import Broker, Subscriber, needs_mosquitto, wait_until
from testkit.app_helpers import REPO, free_port


def event(n: int, cls: str = "car", camera: str = "cam0") -> Event:
    return Event(f"ev-{n}", camera, "lane", cls, "lane.car.above", start_s=float(n), start_frame=n, peak=0.4)


def message(kind: str, ev: Event) -> dict:
    return {"type": kind, "time": time.time(), "event": ev.as_dict()}


def mqtt_delivery(broker, **kw) -> MqttDelivery:
    sink = MqttDelivery(broker.url, client_id=f"test-pub-{broker.port}-{time.monotonic_ns()}", **kw)
    wait_until(sink.connected.is_set, 10, "the sink's connection")
    return sink


# ---- MQTT ---------------------------------------------------------------------------------

@needs_mosquitto
def test_class_names_with_wildcards_or_slashes_never_stop_mqtt_delivery(tmp_path):
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port)
    lines = []
    sink = mqtt_delivery(broker)
    box = Outbox("mqtt", sink.deliver, backoff=Backoff(0.05, 0.1), log=lines.append)
    try:
        for ev in (event(1, "a+b"), event(2, "x/y"), event(3, "car#")):
            for pub in sink.messages(message("start", ev)):
                box.put(pub)
        box.put(("bisenet/cam0/lane/bad+topic/state", "{}", True))   # a topic the client refuses
        for pub in sink.messages(message("start", event(4))):
            box.put(pub)
        wait_until(lambda: len(sub.events()) == 4, 10, "every event behind the bad names")
        box.close()
        topics = {t for t, _, _ in sub.messages if t.endswith("/state")}
        assert topics == {"bisenet/cam0/lane/a_b/state", "bisenet/cam0/lane/x_y/state",
                          "bisenet/cam0/lane/car_/state", "bisenet/cam0/lane/car/state"}
        assert box.counters()["dropped"] == 1 and box.counters()["retries"] == 0
        assert len([line for line in lines if "dropped a message" in line and "bad+topic" in line]) == 1
    finally:
        sink.close()
        sub.close()
        broker.stop()


@pytest.mark.parametrize("url", ["mqtt://127.0.0.1:1883/pre+fix", "mqtt://127.0.0.1/a/#", "mqtt://h/x//y",
                                 "mqtt://h/bad%0Aprefix"])
def test_mqtt_prefixes_with_wildcards_or_empty_levels_are_one_line(url):
    with pytest.raises(InputError, match="topic prefix|control characters"):
        parse_mqtt_url(url.replace("%0A", "\n"))


@needs_mosquitto
def test_a_broker_refusing_the_login_is_said_with_its_reason(tmp_path):
    broker = Broker(tmp_path)
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npersistence false\n")
    broker.start()
    lines = []
    sink = MqttDelivery(broker.url, user="nobody", password="wrong", log=lines.append)
    box = Outbox("mqtt", sink.deliver, backoff=Backoff(0.05, 0.2), log=lines.append)
    try:
        wait_until(lambda: sink.refused is not None, 10, "the broker's refusal")
        for pub in sink.messages(message("start", event(1))):
            box.put(pub)
        wait_until(lambda: box.failures >= 3, 10, "retries")
        time.sleep(1.5)   # paho retries the connection meanwhile: still said once
        refusals = [line for line in lines if "refused the connection" in line]
        assert len(refusals) == 1 and "not authori" in refusals[0].lower(), lines
        assert not any(line.endswith("not connected; holding up to 1000 messages, retrying") for line in lines[1:])
    finally:
        box.close(grace_s=0)
        sink.close()
        broker.stop()


KILLED_RUN = """
import os, sys, time
from app.analytics.events import MqttDelivery
from app.analytics.rules import Event
sink = MqttDelivery(sys.argv[1], client_id="killed-run")
sink.connected.wait(10)
for n, zone in enumerate(["kerb", "lane", "gate"]):
    ev = Event(f"old-run-{n}", "cam0", zone, "car", f"{zone}.car.above", start_s=0.0, start_frame=0, peak=0.5)
    for pub in sink.messages({"type": "start", "time": time.time(), "event": ev.as_dict()}):
        sink.deliver(pub)
os.kill(os.getpid(), 9)
"""


@needs_mosquitto
def test_states_a_killed_run_left_active_are_ended_with_reason_restart(tmp_path):
    broker = Broker(tmp_path).start()
    try:
        killed = subprocess.run([sys.executable, "-c", KILLED_RUN, broker.url], cwd=REPO, timeout=60,
                                env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True)
        assert killed.returncode == -9, killed.stderr
        sub = Subscriber(broker.port)
        wait_until(lambda: len(sub.messages) >= 3, 10, "the killed run's retained states")
        assert all(json.loads(p)["active"] for t, p, r in sub.messages if t.endswith("/state"))
        sink = mqtt_delivery(broker, cameras=["cam0", "cam1"])
        try:
            wait_until(lambda: sink.restarted == 3, 10, "the start-up sweep")
            wait_until(lambda: len(sub.events()) == 3, 10, "the end messages")
            assert {(m["type"], m["event"]["zone"], m["event"]["reason"]) for m in sub.events()} == \
                {("end", z, "restart") for z in ("kerb", "lane", "gate")}
        finally:
            sink.close()
        sub.close()
        fresh = Subscriber(broker.port, "bisenet/cam0/#")     # what a newcomer is told now
        wait_until(lambda: len(fresh.messages) >= 3, 10, "the retained states")
        states = [json.loads(p) for t, p, _ in fresh.messages]
        assert len(states) == 3 and not any(s["active"] for s in states)
        assert {s["reason"] for s in states} == {"restart"}
        fresh.close()
    finally:
        broker.stop()


# ---- webhook ------------------------------------------------------------------------------

class Peer:
    """An HTTP server on 127.0.0.1 answering every POST and GET with `respond(handler)`."""

    def __init__(self, respond):
        peer = self
        self.requests = []       # (method, body)

        class Handler(BaseHTTPRequestHandler):
            def handle_one(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                peer.requests.append((method, body))
                respond(self)

            def do_POST(self):
                self.handle_one("POST")

            def do_GET(self):
                self.handle_one("GET")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def answer(status, headers=()):
    def respond(handler):
        handler.send_response(status)
        for k, v in headers:
            handler.send_header(k, v)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return respond


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_webhook_redirect_is_not_followed_and_counts_as_dropped(status):
    target = Peer(answer(200))
    peer = Peer(answer(status, [("Location", target.url)]))
    lines = []
    box = Outbox("webhook", WebhookDelivery(peer.url).deliver, backoff=Backoff(0.05, 0.1), log=lines.append)
    try:
        for n in range(3):
            box.put({"type": "start", "event": {"id": f"ev-{n}"}})
        wait_until(lambda: box.pending() == 0, 10, "the three messages handled")
        box.close()
        assert box.counters() == {"delivered": 0, "dropped": 3, "retries": 0}
        assert target.requests == []                       # never an empty GET elsewhere
        assert [m for m, _ in peer.requests] == ["POST"] * 3
        assert f"HTTP {status} (a redirect, not followed)" in lines[0]
    finally:
        peer.close()
        target.close()


def test_a_webhook_4xx_is_dropped_while_429_is_retried():
    answers = [400, 429, 200]
    peer = Peer(lambda h: answer(answers.pop(0) if answers else 200)(h))
    box = Outbox("webhook", WebhookDelivery(peer.url).deliver, backoff=Backoff(0.05, 0.1), log=lambda _: None)
    try:
        box.put({"n": 1})
        box.put({"n": 2})
        wait_until(lambda: box.pending() == 0, 10, "both handled")
        box.close()
        assert box.counters() == {"delivered": 1, "dropped": 1, "retries": 1}
        assert [json.loads(b)["n"] for _, b in peer.requests] == [1, 2, 2]
    finally:
        peer.close()


def test_a_receiver_dripping_its_answer_meets_the_deadline_and_a_warning():
    stop = threading.Event()

    def drip(handler):   # the status line, then a header byte every 0.2 s: never complete
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        while not stop.is_set():
            try:
                handler.wfile.write(b"X")
                handler.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)

    peer = Peer(drip)
    lines = []
    sink = WebhookDelivery(peer.url, timeout_s=1.0)
    box = Outbox("webhook", sink.deliver, backoff=Backoff(0.05, 0.1), log=lines.append)
    try:
        box.put({"n": 1})
        t0 = time.monotonic()
        wait_until(lambda: box.failures >= 1, 5, "the first attempt to fail")
        assert time.monotonic() - t0 < 3.0
        assert "no complete answer within 1 s" in lines[0] and "retrying" in lines[0]
    finally:
        box.close(grace_s=0)
        stop.set()
        peer.close()
