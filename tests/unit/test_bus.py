"""The wire contract: topics, models, codec."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bus import MAX_PAYLOAD_BYTES, PayloadError, decode, encode
from bus.models import (
    DeviceState,
    DisplayCommand,
    DisplayMode,
    Intent,
    IntentEvent,
    Status,
    command_expiry,
    utcnow,
)
from bus.topics import TopicError, Topics, parse

T = Topics("midori")


def test_topics_are_versioned_and_parse_back():
    topic = T.event("counter-1", "intent")
    assert topic == "madoguchi/v1/midori/device/counter-1/event/intent"
    parts = parse(topic)
    assert (parts.site, parts.device, parts.channel, parts.name) == ("midori", "counter-1", "event", "intent")
    assert parse(T.status("counter-1")).channel == "status"
    assert parse(T.central_status()).channel == "central_status"
    assert parse(T.lobby_board()).channel == "lobby_board"
    assert T.all_devices("event") == "madoguchi/v1/midori/device/+/event/+"


@pytest.mark.parametrize("bad", ["Counter-1", "a/b", "+", "#", "", "x" * 40, "-lead"])
def test_ids_that_would_break_the_topic_tree_are_refused(bad):
    with pytest.raises(TopicError):
        T.status(bad)


@pytest.mark.parametrize(
    "topic",
    [
        "madoguchi/v2/midori/device/counter-1/status",
        "other/v1/midori/device/counter-1/status",
        "madoguchi/v1/midori/device/counter-1/status/extra",
        "madoguchi/v1/midori/device/counter-1/event",
        "madoguchi/v1/midori/device/counter-1/teleport/x",
    ],
)
def test_topics_outside_the_tree_are_refused(topic):
    with pytest.raises(TopicError):
        parse(topic)


def intent_event(**kw):
    now = utcnow()
    fields = dict(event_id=uuid.uuid4(), boot_id="b1", seq=0, ts=now, counter="1",
                  intent=Intent.CALL_NEXT, expires_at=now + timedelta(seconds=3))
    fields.update(kw)
    return IntentEvent(**fields)


@given(seq=st.integers(min_value=0, max_value=2**40), intent=st.sampled_from(list(Intent)))
def test_events_round_trip(seq, intent):
    event = intent_event(seq=seq, intent=intent)
    assert decode(IntentEvent, encode(event)) == event


def test_payload_carries_schema_and_no_unknown_fields():
    data = json.loads(encode(intent_event()))
    assert data["schema"] == 1
    data["colour"] = "red"
    with pytest.raises(PayloadError) as err:
        decode(IntentEvent, json.dumps(data).encode())
    assert err.value.reason == "invalid" and "colour" in err.value.detail


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"", "not_json"),
        (b"\xff", "not_json"),
        (b"null", "not_object"),
        (b'"text"', "not_object"),
        (b'{"state": "online", "boot_id": "x"}', "schema_version"),
        (b'{"schema": "1", "state": "online", "boot_id": "x"}', "schema_version"),
        (b'{"schema": 1, "state": "ONLINE", "boot_id": "x"}', "invalid"),
        (b'{"schema": 1, "state": "online", "boot_id": ""}', "invalid"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "too_large"),
    ],
)
def test_decode_says_why(payload, reason):
    with pytest.raises(PayloadError) as err:
        decode(Status, payload)
    assert err.value.reason == reason


def test_strict_types_no_coercion():
    data = json.loads(encode(intent_event()))
    for field, bad in (("seq", "3"), ("seq", 1.5), ("seq", -1), ("counter", 1), ("expires_at", "tomorrow")):
        broken = dict(data, **{field: bad})
        with pytest.raises(PayloadError):
            decode(IntentEvent, json.dumps(broken).encode())


def test_models_are_frozen():
    status = Status(state=DeviceState.ONLINE, boot_id="b")
    with pytest.raises(ValidationError):
        status.state = DeviceState.OFFLINE  # type: ignore[misc]


def test_display_command_expiry():
    issued, expires = command_expiry(30)
    cmd = DisplayCommand(command_id=uuid.uuid4(), issued_at=issued, expires_at=expires, mode=DisplayMode.CALLING, ticket=12)
    assert not cmd.expired()
    assert cmd.expired(expires + timedelta(microseconds=1))
    with pytest.raises(ValidationError):
        DisplayCommand(command_id=uuid.uuid4(), issued_at=issued, expires_at=expires, mode=DisplayMode.CALLING, ticket=0)
    with pytest.raises(ValidationError):
        DisplayCommand(command_id=uuid.uuid4(), issued_at=issued, expires_at=expires, mode=DisplayMode.IDLE, text_ja="あ" * 81)
