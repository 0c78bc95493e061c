"""Real parts for the analytics tests on 127.0.0.1: a mosquitto broker on a free port (started
and stopped by the test), a paho subscriber that records what it receives, and an HTTP
receiver whose answers (200, 500, a hang past the client's timeout) the test chooses."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testkit.app_helpers import free_port

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")


def wait_until(check, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Broker:
    """mosquitto on 127.0.0.1:port; stop() and start() again on the same port."""

    def __init__(self, tmp: Path, port: int | None = None):
        self.port = port or free_port()
        self.conf = Path(tmp) / f"mosquitto_{self.port}.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = None

    def start(self) -> "Broker":
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        import socket

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(listening, 10, f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


class Subscriber:
    """A real MQTT client subscribed to PREFIX/#; `messages` is [(topic, payload str, retained)]."""

    def __init__(self, port: int, topic: str = "bisenet/#"):
        import paho.mqtt.client as mqtt

        self.messages = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _client, _userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))

    def events(self) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith("/events")]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class Receiver:
    """ThreadingHTTPServer on 127.0.0.1 recording JSON POST bodies. `answers` is consumed one per
    request: an int status, or 'hang' (sleep past the client's timeout); empty -> 200."""

    def __init__(self, answers=None, hang_s: float = 1.5):
        receiver = self
        self.bodies, self.attempts, self.answers, self.hang_s = [], 0, list(answers or []), hang_s

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.attempts += 1
                answer = receiver.answers.pop(0) if receiver.answers else 200
                if answer == "hang":
                    time.sleep(receiver.hang_s)
                    answer = 200   # too late: the client gave up
                elif answer == 200:
                    receiver.bodies.append(json.loads(body))
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
