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
import socket
import ssl
import sys
import threading
import time
from collections import deque
from pathlib import Path
from urllib.parse import urlsplit

from core.backoff import Backoff
from core.errors import InputError
from core.names import NAME_RULE, topic_level

DEFAULT_CAPACITY = 1000
CLOSE_GRACE_S = 3.0          # at the end of a run, time each delivery gets to deliver what it holds
WEBHOOK_TIMEOUT_S = 5.0     # the whole exchange with the receiver, connect to the last byte of its answer
MAX_REFUSED_LINES = 5       # undeliverable messages logged one line each; more are only counted
MQTT_ACK_TIMEOUT_S = 5.0
SWEEP_S = 10.0              # the start-up read of retained states lasts this long
PASSWORD_ENV = "BISENET_MQTT_PASSWORD"


class DeliveryError(RuntimeError):
    """This message did not get through now; it is retried."""


class Undeliverable(RuntimeError):
    """This message can never get through (a topic the client refuses, a 4xx answer, a
    redirect): it is dropped and counted, never retried."""


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
        self.refused = 0             # messages that can never be delivered (dropped, counted in dropped too)
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
            except Undeliverable as e:   # retrying cannot help: drop it, say so, go on with the next
                self.refused += 1
                self.dropped += 1
                if self.refused <= MAX_REFUSED_LINES:
                    more = " (further ones counted, not logged)" if self.refused == MAX_REFUSED_LINES else ""
                    self.log(f"warning: events to {self.name}: dropped a message: {e}{more}")
                with self.cond:
                    if self.queue and self.queue[0] is message:
                        self.queue.popleft()
                continue
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


# ---- the deliveries: where event messages go (a JSONL file, a webhook, MQTT) -------------

class JsonlDelivery:
    """Events as JSON lines, appended; rotated by size (max_mb, keep) and, on a full disk,
    retried by its Outbox like any delivery that is down (app/retention.py's RotatingLog)."""
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


class WebhookDelivery:
    """POST each message as JSON. A 2xx answer is delivered; 5xx, 408, 429 and network
    failures are retried; a redirect (3xx, never followed: it would turn the POST into an
    empty GET elsewhere) and any other 4xx are dropped and counted. The whole exchange has a
    deadline (`timeout_s`), so a receiver that drips its answer fails like one that hangs."""

    name = "webhook"
    RETRY_STATUS = (408, 429)

    def __init__(self, url: str, timeout_s: float = WEBHOOK_TIMEOUT_S):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"--webhook {url}: expected an http:// or https:// URL")
        try:
            parts.port
        except ValueError:
            raise InputError(f"--webhook {url}: the port must be a number from 1 to 65535") from None
        self.url, self.timeout_s, self.parts = url, timeout_s, parts

    def deliver(self, message: dict) -> None:
        import http.client

        parts = self.parts
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = kind(parts.hostname, parts.port, timeout=self.timeout_s)
        body = json.dumps(message).encode()
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        expired = threading.Event()

        def cut():   # the deadline of the whole exchange: close the socket under the reader
            expired.set()
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        timer = threading.Timer(self.timeout_s, cut)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as e:   # refused, timed out, reset, cut
            if expired.is_set():
                raise DeliveryError(f"{self.url}: no complete answer within {self.timeout_s:g} s") from None
            raise DeliveryError(f"{self.url}: {getattr(e, 'strerror', None) or e or type(e).__name__}") from None
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():   # cut short: what was read of the answer is not an answer
            raise DeliveryError(f"{self.url}: no complete answer within {self.timeout_s:g} s")
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise Undeliverable(f"HTTP {status} (a redirect, not followed) from {self.url}; give the "
                                "webhook's final URL")
        if 400 <= status < 500 and status not in self.RETRY_STATUS:
            raise Undeliverable(f"HTTP {status} from {self.url}")
        raise DeliveryError(f"HTTP {status} from {self.url}")

    def messages(self, message: dict) -> list:
        return [message]

    def close(self) -> None:
        pass


def parse_mqtt_url(url: str) -> tuple[str, int, str, bool]:
    """mqtt://HOST[:PORT][/PREFIX] or mqtts://... -> (host, port, topic prefix, tls)."""
    parts = urlsplit(url)
    if any(ord(c) < 32 or ord(c) == 127 for c in url):
        raise InputError(f"--mqtt {url!r}: control characters in the URL; remove them")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise InputError(f"--mqtt {url}: expected mqtt://HOST[:PORT][/PREFIX] (mqtts:// for TLS)")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise InputError(f"--mqtt {url}: the port must be a number from 1 to 65535") from None
    prefix = parts.path.strip("/") or "bisenet"
    if parts.query or parts.fragment or "#" in url or any(not level or topic_level(level) != level
                                                         for level in prefix.split("/")):
        raise InputError(f"--mqtt {url}: the topic prefix {prefix!r} may hold only {NAME_RULE} in each "
                         "level between '/' (no '+', '#', spaces or empty levels)")
    return parts.hostname, port, prefix, tls


class MqttDelivery:
    """paho-mqtt in its own network thread (loop_start), reconnecting by itself; the outbox
    worker publishes with QoS 1 and waits for the broker's acknowledgement (at least once).

    Topic levels from names are `topic_level` slugs (a class 'a/b' is level 'a_b'); a message
    the client still refuses is dropped and counted. A broker that refuses the connection
    (CONNACK: not authorised, bad user or password) is said once, with its reason. At the first
    connection the retained `state` topics of this run's cameras are read once: a state a
    previous run left active (it was killed before its events ended) is set inactive and its
    event ended with `"reason": "restart"`."""

    name = "mqtt"

    def __init__(self, url: str, user: str | None = None, password: str | None = None, tls: bool = False,
                 client_id: str | None = None, cameras=(), log=None):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise InputError("--mqtt needs paho-mqtt: pip install paho-mqtt") from None
        self.host, self.port, self.prefix, url_tls = parse_mqtt_url(url)
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.cameras = [topic_level(c) for c in cameras]
        self.refused = None          # the broker's CONNACK reason while it refuses us
        self.swept = False           # the start-up sweep of stale states was asked for
        self.restarted = 0           # stale active states ended with reason restart
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
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties=None) -> None:
        if getattr(reason_code, "is_failure", False):
            if self.refused is None:
                self.log(f"warning: events to mqtt: broker {self.host}:{self.port} refused the connection: "
                         f"{reason_code}; check --mqtt-user and --mqtt-password ({PASSWORD_ENV})")
            self.refused = str(reason_code)
            return
        self.refused = None
        self.connected.set()
        client.publish(self.available, "online", qos=1, retain=True)
        if not self.swept and self.cameras:
            self.swept = True
            topics = [f"{self.prefix}/{cam}/+/+/state" for cam in self.cameras]
            client.subscribe([(t, 1) for t in topics])
            # Retained messages come at once; after that the subscription would only echo ours.
            timer = threading.Timer(SWEEP_S, lambda: client.unsubscribe(topics))
            timer.daemon = True
            timer.start()

    def _on_message(self, client, _userdata, msg) -> None:
        """A retained state from before this run that still says active: end it."""
        from app.analytics.rules import RUN_ID

        if not msg.retain:
            return
        try:
            state = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(state, dict) or state.get("active") is not True or str(state.get("event", "")).startswith(
                RUN_ID + "-"):
            return
        levels = msg.topic[len(self.prefix) + 1:].split("/")
        if len(levels) != 4:
            return
        now = round(time.time(), 3)
        camera, zone, cls, _ = levels
        client.publish(msg.topic, json.dumps({**state, "active": False, "time": now, "reason": "restart"}),
                       qos=1, retain=True)
        end = {"type": "end", "time": now, "event": {"id": state.get("event"), "camera": camera, "zone": zone,
                                                     "class": cls, "peak": state.get("peak"), "reason": "restart"}}
        client.publish(f"{self.prefix}/events", json.dumps(end), qos=1)
        self.restarted += 1

    def messages(self, message: dict) -> list:
        """One event message -> (topic, payload, retain) publications."""
        event = message["event"]
        state = {"active": message["type"] != "end", "event": event["id"], "peak": event["peak"],
                 "time": message["time"]}
        levels = "/".join(topic_level(event[k]) for k in ("camera", "zone", "class"))
        zone_topic = f"{self.prefix}/{levels}/state"
        return [(f"{self.prefix}/events", json.dumps(message), False), (zone_topic, json.dumps(state), True)]

    def deliver(self, publication) -> None:
        topic, payload, retain = publication
        if not self.client.is_connected():
            why = f"not connected (it refused the login: {self.refused})" if self.refused else "not connected"
            raise DeliveryError(f"broker {self.host}:{self.port} {why}")
        try:
            info = self.client.publish(topic, payload, qos=1, retain=retain)
        except ValueError as e:   # a topic or payload the client never sends
            raise Undeliverable(f"topic {topic!r}: {e}") from None
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
    """Fans event messages out to the deliveries' outboxes; never waits."""

    def __init__(self, deliveries: list, capacity: int = DEFAULT_CAPACITY, log=None):
        self.deliveries = list(deliveries)
        self.outboxes = [Outbox(s.name, s.deliver, capacity, log=log) for s in self.deliveries]
        self.recent: deque = deque(maxlen=50)   # the newest messages, for the web page

    def publish(self, kind: str, event) -> dict:
        message = {"type": kind, "time": round(time.time(), 3), "event": event.as_dict()}
        self.recent.append(message)
        for delivery, box in zip(self.deliveries, self.outboxes):
            for item in delivery.messages(message):
                box.put(item)
        return message

    def dropped(self) -> dict:
        return {box.name: box.dropped for box in self.outboxes}

    def counters(self) -> dict:
        return {box.name: box.counters() for box in self.outboxes}

    def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        for box in self.outboxes:
            box.close(grace_s)
        for delivery in self.deliveries:
            try:
                delivery.close()
            except Exception as e:   # a broker gone at exit: nothing left to do about it
                print(f"warning: closing events {delivery.name}: {e}", file=sys.stderr)
