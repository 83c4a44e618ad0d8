"""Bad input on the bus is rejected with a reason, counted and logged, and
central keeps serving the next valid message."""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import paho.mqtt.client as mqtt
import pytest

from bus import encode
from bus.models import Intent, IntentEvent, utcnow
from bus.topics import Topics

T = Topics("midori")


@pytest.fixture
def publisher(broker):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"intruder-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def valid_event(counter: str = "1", **changes) -> dict:
    now = utcnow()
    event = IntentEvent(
        event_id=uuid.uuid4(), boot_id="test", seq=0, ts=now, counter=counter,
        intent=Intent.CALL_NEXT, expires_at=now + timedelta(seconds=5),
    )
    data = json.loads(encode(event))
    data.update(changes)
    return data


def wait_rejected(central, reason: str, count: int = 1, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = central.get("/api/v1/stats")
        if stats["rejected"].get(reason, 0) >= count:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"no {reason!r} rejection counted: {central.get('/api/v1/stats')}")


BAD = [
    ("not_json", T.event("counter-1", "intent"), b"\xff\xfe this is not json"),
    ("not_object", T.event("counter-1", "intent"), b"[1, 2, 3]"),
    ("schema_version", T.event("counter-1", "intent"), json.dumps(valid_event(schema=2)).encode()),
    ("invalid", T.event("counter-1", "intent"), json.dumps(valid_event(seq="seven")).encode()),
    ("invalid", T.event("counter-1", "intent"), json.dumps(valid_event(intent="self_destruct")).encode()),
    ("invalid", T.event("counter-1", "intent"), json.dumps(valid_event(extra_field=1)).encode()),
    ("too_large", T.event("counter-1", "intent"), b"{" + b" " * (1024 * 1024) + b"}"),
    ("unknown_device", T.event("counter-99", "intent"), json.dumps(valid_event()).encode()),
    ("unknown_kind", T.event("counter-1", "launch"), json.dumps(valid_event()).encode()),
    ("wrong_counter", T.event("counter-1", "intent"), json.dumps(valid_event(counter="2")).encode()),
    ("expired", T.event("counter-1", "intent"), json.dumps(valid_event(expires_at=(utcnow() - timedelta(minutes=3)).isoformat())).encode()),
    ("invalid", T.status("counter-1"), b'{"schema": 1, "state": "asleep", "boot_id": "x"}'),
    ("bad_topic", "madoguchi/v1/midori/device/Counter-1/event/intent", json.dumps(valid_event()).encode()),
]


@pytest.mark.parametrize("reason,topic,payload", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_message_is_rejected_counted_logged_and_central_goes_on(central_factory, edges, publisher, reason, topic, payload):
    central = central_factory()
    counter = edges("counter-1", "1")
    number = central.issue("juminhyo")["number"]
    before = central.get("/api/v1/stats")["rejected"].get(reason, 0)

    publisher.publish(topic, payload, qos=1).wait_for_publish(5)
    stats = wait_rejected(central, reason, before + 1)
    assert stats["last_rejection"].startswith(reason)
    assert reason in central.log_text()  # logged, with the reason
    # Nothing was applied: the ticket still waits.
    assert central.get(f"/api/v1/tickets/{number}")["stops"][0]["state"] == "waiting"

    # The next valid message is served as usual.
    counter.press("call_next")
    counter.shows(number, mode="calling")


def test_a_replayed_event_is_applied_once(central_factory, edges, publisher):
    central = central_factory()
    edges("counter-1", "1")
    first = central.issue("juminhyo")["number"]
    second = central.issue("juminhyo")["number"]
    event = json.dumps(valid_event()).encode()
    for _ in range(3):
        publisher.publish(T.event("counter-1", "intent"), event, qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while central.get("/api/v1/counters/1")["ticket"] != first and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert central.get("/api/v1/counters/1")["ticket"] == first
    assert central.get(f"/api/v1/tickets/{second}")["stops"][0]["state"] == "waiting"
    assert central.get("/api/v1/stats")["handled"]["intent_call_next"] == 1


def test_bad_http_bodies_are_refused_with_a_reason(central_factory):
    central = central_factory()
    status, body = central.request("POST", "/api/v1/tickets", {"procedures": []})
    assert status == 422
    status, body = central.request("POST", "/api/v1/tickets", {"procedures": ["no-such-thing"]})
    assert status == 422 and body["error"] == "invalid" and "no-such-thing" in body["message_en"]
    status, body = central.request("POST", "/api/v1/tickets", {"procedures": ["tennyu"], "name": "山田太郎"})
    assert status == 422  # no extra fields, and never a name
    status, body = central.request("POST", "/api/v1/tickets", {"procedures": ["tennyu"] * 5000})
    assert status == 413
    status, body = central.request("POST", "/api/v1/counters/1/call", {"number": 4242})
    assert status == 404 and body["message_ja"]
    status, body = central.request("POST", "/api/v1/counters/99/call-next")
    assert status == 404 and body["error"] == "not_found" and body["message_ja"]
    status, body = central.request("GET", "/api/v1/tickets/99999999999999999999")
    assert status == 422
    status, body = central.request("GET", "/api/v1/tickets?day=yesterday")
    assert status == 422
    status, body = central.request("POST", "/api/v1/counters/1/call", {"number": "1"})
    assert status == 422  # strict: a string is not a number
    # and it still serves
    assert central.issue("tennyu")["number"] == 1


def test_a_chunked_body_without_length_is_refused(central_factory):
    import http.client

    central = central_factory()
    conn = http.client.HTTPConnection("127.0.0.1", central.http_port, timeout=5)
    conn.putrequest("POST", "/api/v1/tickets")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"5\r\n{\"pro\r\n0\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 411
    conn.close()


def test_an_http_action_retried_with_the_same_key_is_applied_once(central_factory):
    central = central_factory()
    first = central.issue("juminhyo")["number"]
    second = central.issue("juminhyo")["number"]
    headers_key = "retry-7f3a"
    import json as _json
    import urllib.request

    def call_next():
        req = urllib.request.Request(
            central.url + "/api/v1/counters/1/call-next", data=b"{}", method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": headers_key,
                     "Authorization": f"Bearer {central.token('counter')}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return _json.loads(resp.read())

    assert call_next()["ticket"] == first
    call_next()  # the network retried
    assert central.get("/api/v1/counters/1")["ticket"] == first
    assert central.get(f"/api/v1/tickets/{second}")["stops"][0]["state"] == "waiting"
    # no-show is only for a visitor who did not come
    central.post("/api/v1/counters/1/start")
    status, body = central.request("POST", "/api/v1/counters/1/no-show", {})
    assert status == 409 and body["message_ja"]
