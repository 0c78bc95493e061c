"""Event delivery with real parts on 127.0.0.1: a mosquitto broker and a subscriber, an HTTP
receiver answering 500s and hanging, a JSONL file; bounded queues drop the oldest and count."""
from __future__ import annotations

import json
import threading
import time

import pytest

from app.analytics.events import EventBus, JsonlDelivery, MqttDelivery, Outbox, WebhookDelivery, parse_mqtt_url
from app.analytics.rules import Event
from core.backoff import Backoff
from core.errors import InputError
from testkit.analytics_helpers import Receiver, Subscriber, wait_until


def event(n: int) -> Event:
    return Event(f"ev-{n}", "cam0", "lane", "car", "lane.car.above", start_s=float(n), start_frame=n, peak=0.4)


def test_outbox_drops_the_oldest_beyond_its_bound_and_resumes():
    up = threading.Event()
    got = []

    def deliver(message):
        if not up.is_set():
            raise ConnectionError("down")
        got.append(message)

    box = Outbox("test", deliver, capacity=3, backoff=Backoff(0.05, 0.1), log=lambda _: None)
    for i in range(10):
        box.put(i)
    wait_until(lambda: box.failures >= 2, what="retries while down")
    assert box.dropped == 7 and box.pending() == 3
    up.set()
    wait_until(lambda: box.pending() == 0, what="delivery after the outage")
    assert got == [7, 8, 9]             # the newest three, in order
    box.close()
    assert box.counters() == {"delivered": 3, "dropped": 7, "retries": box.failures}


def test_put_never_waits_for_a_slow_sink():
    box = Outbox("slow", lambda m: time.sleep(5), capacity=2, log=lambda _: None)
    t0 = time.monotonic()
    for i in range(100):
        box.put(i)
    assert time.monotonic() - t0 < 1.0
    box.close(grace_s=0)


def test_jsonl_sink_writes_one_line_per_message(tmp_path):
    path = tmp_path / "events.jsonl"
    bus = EventBus([JsonlDelivery(path)])
    bus.publish("start", event(1))
    bus.publish("end", event(1))
    bus.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [m["type"] for m in lines] == ["start", "end"] and lines[0]["event"]["id"] == "ev-1"


def test_webhook_retries_500s_and_timeouts_then_delivers_in_order():
    receiver = Receiver([500, "hang", 503], hang_s=1.5)
    try:
        sink = WebhookDelivery(receiver.url, timeout_s=0.5)
        bus = EventBus([sink])
        bus.outboxes[0].backoff = Backoff(0.05, 0.2)
        bus.publish("start", event(1))
        bus.publish("end", event(1))
        wait_until(lambda: len(receiver.bodies) == 2, what="webhook deliveries")
        assert [b["type"] for b in receiver.bodies] == ["start", "end"]
        assert receiver.attempts >= 5 and bus.outboxes[0].failures == 3
        bus.close()
    finally:
        receiver.close()


def test_webhook_endpoint_down_drops_beyond_the_bound_and_counts():
    bus = EventBus([WebhookDelivery("http://127.0.0.1:9/hook", timeout_s=0.2)], capacity=2, log=lambda _: None)
    for i in range(5):
        bus.publish("start", event(i))
    assert bus.dropped() == {"webhook": 3}
    bus.close(grace_s=0)
    assert bus.dropped()["webhook"] == 5    # the two held at exit count too


@pytest.mark.parametrize("url,message", [("http://x", "expected mqtt://"), ("mqtt://h:99999", "port"),
                                         ("mqtt://", "expected mqtt://")])
def test_bad_mqtt_urls_are_one_line(url, message):
    with pytest.raises(InputError, match=message):
        parse_mqtt_url(url)


def test_mqtt_url_parts():
    assert parse_mqtt_url("mqtt://10.0.0.2") == ("10.0.0.2", 1883, "bisenet", False)
    assert parse_mqtt_url("mqtts://broker:8884/site/a") == ("broker", 8884, "site/a", True)


def test_mqtt_start_end_and_retained_state_reach_a_real_subscriber(mosquitto):
    broker = mosquitto
    sub = Subscriber(broker.port)
    try:
        bus = EventBus([MqttDelivery(broker.url)])
        wait_until(lambda: any(t == "bisenet/available" and p == "online" for t, p, _ in sub.messages),
                   what="availability")
        bus.publish("start", event(1))
        bus.publish("end", event(1))
        wait_until(lambda: len(sub.events()) == 2, what="start and end on bisenet/events")
        assert [m["type"] for m in sub.events()] == ["start", "end"]
        states = [json.loads(p) for t, p, _ in sub.messages if t == "bisenet/cam0/lane/car/state"]
        assert [s["active"] for s in states] == [True, False]
        bus.close()
        # A late subscriber gets the retained zone state.
        late = Subscriber(broker.port, "bisenet/cam0/#")
        wait_until(lambda: late.messages, what="retained state")
        assert late.messages[0][2] is True and json.loads(late.messages[0][1])["active"] is False
        late.close()
    finally:
        sub.close()
        broker.stop()


def test_mqtt_broker_down_events_wait_then_arrive_when_it_returns(mosquitto):
    broker = mosquitto
    sub = None
    bus = EventBus([MqttDelivery(broker.url)], capacity=100, log=lambda _: None)
    try:
        wait_until(lambda: bus.deliveries[0].client.is_connected(), what="connected")
        broker.stop()
        wait_until(lambda: not bus.deliveries[0].client.is_connected(), what="disconnect noticed")
        bus.outboxes[0].backoff = Backoff(0.1, 0.5)
        for i in range(3):
            bus.publish("start", event(i))
        time.sleep(1.0)
        assert bus.outboxes[0].pending() == 6     # 3 messages x (events + state), waiting
        broker.start()
        sub = Subscriber(broker.port)
        wait_until(lambda: bus.outboxes[0].pending() == 0, timeout_s=30, what="delivery after the broker returned")
        assert bus.dropped() == {"mqtt": 0} and bus.outboxes[0].delivered == 6   # each acknowledged (QoS 1)
        # The newest zone state is retained on the broker that came back.
        wait_until(lambda: any(t.endswith("/state") for t, _, _ in sub.messages), what="retained state")
        state = [json.loads(p) for t, p, _ in sub.messages if t.endswith("/state")][-1]
        assert state["event"] == "ev-2" and state["active"] is True
    finally:
        bus.close(grace_s=1)
        if sub is not None:
            sub.close()
        broker.stop()
