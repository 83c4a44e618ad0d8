"""Pydantic models of every payload on the madoguchi bus (design §3).

All models are frozen and strict with ``extra="forbid"``: a field we do not know
is an error, not something to ignore, because a silently ignored field is how a
version mismatch turns into a wrong number on a display.  Every payload carries
``schema``; this module speaks :data:`SCHEMA_VERSION` and rejects any other.

Times are timezone-aware ISO 8601 strings on the wire.  Yen are integers.
Ticket numbers are integers; nothing here ever carries a person's name.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from bus.topics import ID_PATTERN

#: The payload schema this code speaks.  Bumped only with a new topic root.
SCHEMA_VERSION = 1

DeviceId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
SiteId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
CounterId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
ServiceId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
#: A ticket number as printed on the ticket and shown on displays (per site and day).
TicketNo = Annotated[int, Field(ge=1, le=9999)]
#: Short human text for displays.  Bounded so a display can always render it.
DisplayText = Annotated[str, StringConstraints(max_length=80)]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Message(BaseModel):
    """Base of every payload: strict, frozen, no unknown fields, versioned."""

    # `schema` shadows a BaseModel attribute, hence the alias; always dump by alias.
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, populate_by_name=True, serialize_by_alias=True
    )

    schema_: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")


# --------------------------------------------------------------------------- status


class DeviceState(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class Status(Message):
    """``device/<device>/status`` (retained).  Birth and last will.

    The will is registered at connect time with the same ``boot_id``: a will
    that arrives late, after the same device already came back with a new
    boot, is recognised by its old ``boot_id`` and ignored.
    """

    state: DeviceState
    boot_id: str = Field(min_length=1, max_length=64)
    since: AwareDatetime | None = None


class CentralStatus(Message):
    """``central/status`` (retained): is central there to answer a button?"""

    state: DeviceState
    boot_id: str = Field(min_length=1, max_length=64)
    since: AwareDatetime | None = None


# --------------------------------------------------------------------------- info, health


class Role(str, enum.Enum):
    COUNTER = "counter"
    KIOSK = "kiosk"
    LOBBY = "lobby"


class PeripheralInfo(Message):
    driver: str = Field(max_length=40)
    model: str | None = Field(default=None, max_length=80)


class Info(Message):
    """``device/<device>/info`` (retained): what this device is."""

    device: DeviceId
    role: Role
    counter: CounterId | None = None
    version: str = Field(max_length=40)
    config_hash: str = Field(pattern=r"^[0-9a-f]{8,64}$")
    peripherals: dict[str, PeripheralInfo]
    ip: str | None = Field(default=None, max_length=45)
    boot_id: str = Field(min_length=1, max_length=64)
    started_at: AwareDatetime


class HealthState(str, enum.Enum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"
    ABSENT = "absent"


class PeripheralHealth(Message):
    status: HealthState
    reason: str | None = Field(default=None, max_length=40)
    message: str | None = Field(default=None, max_length=200)


class Health(Message):
    """``device/<device>/health`` (retained): each peripheral's state."""

    ts: AwareDatetime
    uptime_s: float = Field(ge=0)
    peripherals: dict[str, PeripheralHealth]


# --------------------------------------------------------------------------- events


class Event(Message):
    """Base of ``device/<device>/event/<kind>`` payloads (QoS 1, not retained).

    ``event_id`` de-duplicates; ``seq`` counts up from 0 per ``boot_id`` so a
    gap shows a lost event.
    """

    event_id: uuid.UUID
    boot_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    ts: AwareDatetime


class Intent(str, enum.Enum):
    """What a staff button means.  The counter's buttons map to these."""

    CALL_NEXT = "call_next"  # 次の方 (finishes the current visitor first)
    RECALL = "recall"  # 再呼出
    NO_SHOW = "no_show"  # 不在
    FINISH = "finish"  # 完了 (this stop is done)
    HOLD = "hold"  # 保留 (park the visitor, call them back later)


class IntentEvent(Event):
    """``event/intent``: a staff member pressed a counter button.

    ``expires_at`` is when the press stops meaning anything: central drops an
    intent that arrives later (a call-next from minutes ago must never call
    a visitor now).  The publisher also sets the MQTT v5 message expiry.
    """

    counter: CounterId
    intent: Intent
    expires_at: AwareDatetime


EVENT_KINDS: dict[str, type[Event]] = {"intent": IntentEvent}


# --------------------------------------------------------------------------- commands


class Command(Message):
    """Base of ``device/<device>/cmd/<name>`` payloads (QoS 1, message expiry)."""

    command_id: uuid.UUID
    issued_at: AwareDatetime
    expires_at: AwareDatetime

    def expired(self, now: datetime | None = None) -> bool:
        return (now or utcnow()) >= self.expires_at


class DisplayMode(str, enum.Enum):
    IDLE = "idle"  # nobody at this counter
    CALLING = "calling"  # a ticket has been called here (blinking number)
    SERVING = "serving"  # the visitor is at the counter
    NOTICE = "notice"  # a message for staff, the number (if any) stays


class DisplayCommand(Command):
    """``cmd/display``: what the counter's number display shows now.

    Central sends one after every change at the counter, and again when the
    device comes back online, so the display never shows a stale number.
    ``in_reply_to`` names the intent event that caused it, so the counter can
    tell its call-next press arrived.
    """

    in_reply_to: uuid.UUID | None = None
    mode: DisplayMode
    ticket: TicketNo | None = None
    recall: bool = False
    #: Service being handled, Japanese and English.
    service_ja: DisplayText = ""
    service_en: DisplayText = ""
    #: Message line for staff/visitor, Japanese and English.
    text_ja: DisplayText = ""
    text_en: DisplayText = ""
    #: Tickets still waiting for this counter's services (for the staff).
    waiting: int = Field(default=0, ge=0)


COMMAND_NAMES: dict[str, type[Command]] = {"display": DisplayCommand}


def command_expiry(seconds: float, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``(issued_at, expires_at)`` for a command valid ``seconds`` from now."""
    issued = now or utcnow()
    return issued, issued + timedelta(seconds=seconds)


# --------------------------------------------------------------------------- request/response


class Request(Message):
    """``device/<device>/req/<method>``: an IT request (MQTT v5 request/response).

    The MQTT ResponseTopic and CorrelationData properties say where to answer;
    ``request_id`` is kept in the audit log and refused if seen twice.
    """

    request_id: uuid.UUID
    requested_by: str = Field(min_length=1, max_length=64)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    params: dict[str, str | int | float | bool | None] = Field(default_factory=dict, max_length=32)


class Response(Message):
    """The answer to a :class:`Request`: ``{status, data, error}``."""

    request_id: uuid.UUID
    status: Literal["ok", "error"]
    data: dict[str, object] | None = None
    error: str | None = Field(default=None, max_length=500)


# --------------------------------------------------------------------------- lobby


class CallEntry(Message):
    ticket: TicketNo
    counter: CounterId
    counter_ja: DisplayText
    counter_en: DisplayText
    at: AwareDatetime
    recall: bool = False


class ServiceWait(Message):
    service: ServiceId
    name_ja: DisplayText
    name_en: DisplayText
    waiting: int = Field(ge=0)
    estimate_min: int | None = Field(default=None, ge=0)


class LobbyBoard(Message):
    """``lobby/board`` (retained): the latest calls and waits, for any display."""

    ts: AwareDatetime
    calls: list[CallEntry] = Field(max_length=20)
    waits: list[ServiceWait] = Field(max_length=100)
