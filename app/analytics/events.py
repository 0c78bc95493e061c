"""Event delivery that never blocks the pipeline: every sink (JSONL file, MQTT, HTTP webhook)
has its own bounded outbox and worker thread. The pipeline only appends to the outboxes.
While a broker or endpoint is down the messages wait; past the bound the oldest are dropped
and counted (`dropped`, bisenet_events_dropped_total{sink}); delivery resumes when it is back,
retrying with core/backoff.py's capped exponential backoff.

Messages (one JSON object each; docs/analytics.md has the schema):
    {"type": "start" | "update" | "end", "time": <unix s>, "event": {id, camera, zone, class,
     rule, start_s, end_s, peak, mean, clip, snapshot, ...}}
MQTT topics (Frigate's style):
    <prefix>/events                          every message (QoS 1)
    <prefix>/<camera>/<zone>/<class>/state   retained: {"active": bool, "event": id, "peak": x}
    <prefix>/available                       retained: online / offline (last will)
"""
from __future__ import annotations

import json
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from core.backoff import Backoff
from core.errors import InputError

DEFAULT_CAPACITY = 1000
CLOSE_GRACE_S = 3.0          # at the end of a run, time each sink gets to deliver what it holds
WEBHOOK_TIMEOUT_S = 5.0
MQTT_ACK_TIMEOUT_S = 5.0
PASSWORD_ENV = "BISENET_MQTT_PASSWORD"


class DeliveryError(RuntimeError):
    """This message did not get through now; it is retried."""


class Outbox:
    """A bounded queue and a worker thread calling `deliver(message)` in order. A failed
    delivery is retried (backoff) without losing its place; `put` never waits."""

    def __init__(self, name: str, deliver, capacity: int = DEFAULT_CAPACITY, backoff: Backoff | None = None,
                 log=None):
        self.name, self.deliver, self.capacity = name, deliver, int(capacity)
        self.backoff = backoff or Backoff(0.5, 10.0)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.queue: deque = deque()
        self.cond = threading.Condition()
        self.dropped = 0
        self.delivered = 0
        self.failures = 0            # failed attempts (each retried)
        self.closing = False
        self.stop = threading.Event()   # wakes a worker waiting out a backoff (new messages do not)
        self.down_since = None       # first failure of the current outage (logged once)
        self.thread = threading.Thread(target=self._run, name=f"events-{name}", daemon=True)
        self.thread.start()

    def put(self, message) -> None:
        with self.cond:
            if len(self.queue) >= self.capacity:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(message)
            self.cond.notify()

    def pending(self) -> int:
        with self.cond:
            return len(self.queue)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if not self.queue:
                    return
                message = self.queue[0]
            try:
                self.deliver(message)
            except Exception as e:   # any failure: wait, then the same message again
                self.failures += 1
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    self.log(f"warning: events to {self.name}: {e}; holding up to {self.capacity} messages, retrying")
                if self.stop.wait(self.backoff.next()):
                    return
                continue
            if self.down_since is not None:
                self.log(f"events to {self.name}: delivering again after {time.monotonic() - self.down_since:.1f} s")
                self.down_since = None
            self.backoff.reset()
            with self.cond:
                if self.queue and self.queue[0] is message:
                    self.queue.popleft()
                self.delivered += 1

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Give the worker `grace_s` to deliver what is queued; what is left counts as dropped."""
        deadline = time.monotonic() + grace_s
        while self.pending() and self.down_since is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with self.cond:
            self.closing = True
            self.dropped += len(self.queue)
            self.queue.clear()
            self.cond.notify_all()
        self.stop.set()
        self.thread.join(timeout=max(0.1, deadline - time.monotonic()) + MQTT_ACK_TIMEOUT_S)

    def counters(self) -> dict:
        return {"delivered": self.delivered, "dropped": self.dropped, "retries": self.failures}


# ---- the sinks ------------------------------------------------------------------------------

class JsonlSink:
    """Events as JSON lines, appended; rotated by size (max_mb, keep) and, on a full disk,
    retried by its Outbox like any sink that is down (app/retention.py's RotatingLog)."""
    name = "jsonl"

    def __init__(self, path: str | Path, max_mb: float | None = None, keep: int | None = None):
        from app.retention import RotatingLog
        from core.validate import prepare_output

        self.path = Path(path)
        prepare_output(self.path, "--events-log")
        self.file = RotatingLog(self.path, "--events-log", mode="a", retry_s=0.0, log=lambda msg: None,
                                max_bytes=None if max_mb is None else max_mb * 1024 * 1024, keep=keep)

    def deliver(self, message: dict) -> None:
        if not self.file.write(json.dumps(message, separators=(",", ":")) + "\n"):
            raise DeliveryError(self.file.pause.error or f"cannot write {self.path}")

    def messages(self, message: dict) -> list:
        return [message]

    def close(self) -> None:
        self.file.close()


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, timeout_s: float = WEBHOOK_TIMEOUT_S):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--webhook {url}: expected an http:// or https:// URL")
        self.url, self.timeout_s = url, timeout_s

    def deliver(self, message: dict) -> None:
        request = urllib.request.Request(self.url, data=json.dumps(message).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as e:
            raise DeliveryError(f"HTTP {e.code} from {self.url}") from None
        except (urllib.error.URLError, OSError) as e:   # refused, timed out, reset
            raise DeliveryError(f"{self.url}: {getattr(e, 'reason', None) or e}") from None

    def messages(self, message: dict) -> list:
        return [message]

    def close(self) -> None:
        pass


def parse_mqtt_url(url: str) -> tuple[str, int, str, bool]:
    """mqtt://HOST[:PORT][/PREFIX] or mqtts://... -> (host, port, topic prefix, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise InputError(f"--mqtt {url}: expected mqtt://HOST[:PORT][/PREFIX] (mqtts:// for TLS)")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise InputError(f"--mqtt {url}: the port must be a number from 1 to 65535") from None
    prefix = parts.path.strip("/") or "bisenet"
    return parts.hostname, port, prefix, tls


class MqttSink:
    """paho-mqtt in its own network thread (loop_start), reconnecting by itself; the outbox
    worker publishes with QoS 1 and waits for the broker's acknowledgement (at least once)."""

    name = "mqtt"

    def __init__(self, url: str, user: str | None = None, password: str | None = None, tls: bool = False,
                 client_id: str | None = None):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise InputError("--mqtt needs paho-mqtt: pip install paho-mqtt") from None
        self.host, self.port, self.prefix, url_tls = parse_mqtt_url(url)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"bisenet-{os.getpid()}", clean_session=True)
        self.client.reconnect_delay_set(0.5, 10)
        password = password if password is not None else os.environ.get(PASSWORD_ENV)
        if user or password:
            self.client.username_pw_set(user or "", password)
        if tls or url_tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.available = f"{self.prefix}/available"
        self.client.will_set(self.available, "offline", qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.connected = threading.Event()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            return
        self.connected.set()
        client.publish(self.available, "online", qos=1, retain=True)

    def messages(self, message: dict) -> list:
        """One event message -> (topic, payload, retain) publications."""
        event = message["event"]
        state = {"active": message["type"] != "end", "event": event["id"], "peak": event["peak"],
                 "time": message["time"]}
        zone_topic = f"{self.prefix}/{event['camera']}/{event['zone']}/{event['class']}/state"
        return [(f"{self.prefix}/events", json.dumps(message), False), (zone_topic, json.dumps(state), True)]

    def deliver(self, publication) -> None:
        topic, payload, retain = publication
        if not self.client.is_connected():
            raise DeliveryError(f"broker {self.host}:{self.port} not connected")
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout=MQTT_ACK_TIMEOUT_S)
        except (RuntimeError, ValueError) as e:
            raise DeliveryError(f"broker {self.host}:{self.port}: {e}") from None
        if not info.is_published():
            raise DeliveryError(f"broker {self.host}:{self.port}: no acknowledgement in {MQTT_ACK_TIMEOUT_S:g} s")

    def close(self) -> None:
        if self.client.is_connected():
            self.client.publish(self.available, "offline", qos=1, retain=True).wait_for_publish(timeout=2)
        self.client.disconnect()
        self.client.loop_stop()


class EventBus:
    """Fans event messages out to the sinks' outboxes; never waits."""

    def __init__(self, sinks: list, capacity: int = DEFAULT_CAPACITY, log=None):
        self.sinks = list(sinks)
        self.outboxes = [Outbox(s.name, s.deliver, capacity, log=log) for s in self.sinks]
        self.recent: deque = deque(maxlen=50)   # the newest messages, for the web page

    def publish(self, kind: str, event) -> dict:
        message = {"type": kind, "time": round(time.time(), 3), "event": event.as_dict()}
        self.recent.append(message)
        for sink, box in zip(self.sinks, self.outboxes):
            for item in sink.messages(message):
                box.put(item)
        return message

    def dropped(self) -> dict:
        return {box.name: box.dropped for box in self.outboxes}

    def counters(self) -> dict:
        return {box.name: box.counters() for box in self.outboxes}

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        for box in self.outboxes:
            box.close(grace_s)
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:   # a broker gone at exit: nothing left to do about it
                print(f"warning: closing events {sink.name}: {e}", file=sys.stderr)
