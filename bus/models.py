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
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

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
    return datetime.now(UTC)


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



# --------------------------------------------------------------------------- payments

#: Yen are integers, always (design §5).  Bounded by what a terminal takes.
Yen = Annotated[int, Field(ge=0, le=9_999_999)]
#: A fee item code or brand id from central's catalog (config/fees.toml, brands.toml).
CatalogId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
#: A staff id as typed or scanned at the counter console (no names).
StaffId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")]
#: A slip / approval / terminal number as printed by a terminal.
SlipNo = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,20}$")]


class PayMethod(str, enum.Enum):
    CASH = "cash"  # 現金
    CREDIT = "credit"  # クレジット
    EMONEY = "emoney"  # 電子マネー
    QR = "qr"  # QRコード決済


class PaymentKind(str, enum.Enum):
    SALE = "sale"  # 売上
    VOID = "void"  # 取消 (same day, at the terminal)
    REFUND = "refund"  # 返金 (out of band, when a void is impossible)


class PaymentState(str, enum.Enum):
    """A payment's life on the edge (docs/payments.md has the diagram)."""

    READY = "ready"  # the charge is at the counter, waiting for PAY
    PENDING = "pending"  # journaled; the terminal may be in use
    APPROVED = "approved"  # money taken (or, for a void/refund, given back)
    DECLINED = "declined"  # certainly not taken
    UNKNOWN = "unknown"  # 処理未了: nobody knows yet; never retried blindly
    VOIDED = "voided"  # an approved sale, cancelled by an approved void
    REFUNDED = "refunded"  # an approved sale, paid back by an approved refund
    CANCELLED = "cancelled"  # the charge was withdrawn before it started


class ChargeLine(BaseModel):
    """One fee line of a charge, priced by central from its catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    code: CatalogId
    name_ja: DisplayText
    name_en: DisplayText
    #: Up to 100,000 (行政情報の写し are charged per sheet).
    quantity: int = Field(ge=1, le=100_000)
    unit_price: Yen
    amount: Yen
    account: str = Field(min_length=1, max_length=40)

    @model_validator(mode="after")
    def _amount(self) -> ChargeLine:
        if self.amount != self.quantity * self.unit_price:
            raise ValueError(f"amount {self.amount} is not {self.quantity} × {self.unit_price}")
        return self


class PaymentEvent(Event):
    """``event/payment``: a payment changed state on the edge (QoS 1).

    Sent from the edge's on-disk outbox until central acknowledges it with
    ``cmd/ledger-ack``; central keeps the highest ``version`` of each
    ``payment_id``, so a re-sent event is harmless.  Carries no card data.
    """

    payment_id: uuid.UUID
    charge_id: uuid.UUID
    version: int = Field(ge=1)
    kind: PaymentKind
    #: For a void or refund: the sale it cancels or pays back.
    original_id: uuid.UUID | None = None
    counter: CounterId
    ticket: TicketNo | None = None
    state: PaymentState
    method: PayMethod
    brand: CatalogId | None = None
    #: The card name the terminal reported (VISA, nanaco, ...).
    card_name: str | None = Field(default=None, max_length=40)
    amount: Yen
    tendered: Yen | None = None
    change: Yen | None = None
    lines: list[ChargeLine] = Field(max_length=20)
    terminal: str = Field(max_length=20)
    terminal_id: SlipNo | None = None
    slip_no: SlipNo | None = None
    approval_no: SlipNo | None = None
    #: When the money moved (the terminal's time, else ours): the 収納日.
    txn_at: AwareDatetime | None = None
    receipt_no: str | None = Field(default=None, max_length=40)
    staff_id: StaffId | None = None
    reason: str | None = Field(default=None, max_length=40)
    note: str | None = Field(default=None, max_length=200)
    #: What staff must do now, for the console and the counter display.
    message_ja: str = Field(default="", max_length=200)
    message_en: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _consistent(self) -> PaymentEvent:
        if self.kind is not PaymentKind.SALE and self.original_id is None:
            raise ValueError(f"a {self.kind.value} names its original_id")
        if self.kind is PaymentKind.SALE and self.amount != sum(line.amount for line in self.lines):
            raise ValueError("amount is not the sum of the lines")
        return self

EVENT_KINDS: dict[str, type[Event]] = {"intent": IntentEvent, "payment": PaymentEvent}


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


class ChargeCommand(Command):
    """``cmd/charge``: central asks the counter to take a payment.

    The edge journals it (state ``ready``) and starts it when staff press PAY
    (the physical button or the console), or at once with ``start``.
    ``payment_id`` is chosen by central; the edge ignores a second charge with
    the same id and answers with its current state.
    """

    payment_id: uuid.UUID
    charge_id: uuid.UUID
    counter: CounterId
    ticket: TicketNo | None = None
    lines: list[ChargeLine] = Field(min_length=1, max_length=20)
    total: Yen
    method: PayMethod
    brand: CatalogId | None = None
    #: Cash only: what the visitor handed over (change = tendered − total).
    tendered: Yen | None = None
    #: What to print: 領収書, 利用控え, both or nothing (per the fee items' flows).
    receipt: Literal["receipt", "slip", "both", "none"] = "receipt"
    #: The method's name for the display and the manual terminal's instructions.
    method_ja: DisplayText = ""
    method_en: DisplayText = ""
    staff_id: StaffId | None = None
    start: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ChargeCommand:
        if self.total <= 0 or self.total != sum(line.amount for line in self.lines):
            raise ValueError("total must be the (positive) sum of the lines")
        if self.method is PayMethod.CASH:
            if self.tendered is not None and self.tendered < self.total:
                raise ValueError("tendered is less than the total")
        elif self.tendered is not None:
            raise ValueError("tendered is for cash only")
        return self


class PaymentAction(str, enum.Enum):
    START = "start"  # PAY: start a ready charge
    CANCEL = "cancel"  # withdraw a ready charge, or abort a running one
    CONFIRM = "confirm"  # manual terminal: staff confirm what the terminal showed
    RESOLVE = "resolve"  # an unknown outcome: ask the terminal again, or staff decide
    VOID = "void"  # 取消 at the terminal (same day)
    REFUND = "refund"  # 返金 out of band (a void is impossible for this brand)
    REPRINT = "reprint"  # print the receipt again, marked 再発行
    TENDER = "tender"  # cash: the amount handed over, entered after the charge was sent


class PaymentCommand(Command):
    """``cmd/payment``: staff act on one payment from the counter console."""

    payment_id: uuid.UUID
    action: PaymentAction
    #: For void/refund: the id of the new void/refund record.
    new_id: uuid.UUID | None = None
    staff_id: StaffId | None = None
    reason: str | None = Field(default=None, min_length=1, max_length=200)
    #: confirm / resolve by staff: was the money taken?  None on resolve = ask the terminal.
    approved: bool | None = None
    slip_no: SlipNo | None = None
    approval_no: SlipNo | None = None
    tendered: Yen | None = None

    @model_validator(mode="after")
    def _fields(self) -> PaymentCommand:
        a = self.action
        if a in (PaymentAction.VOID, PaymentAction.REFUND):
            if self.new_id is None or self.staff_id is None or self.reason is None:
                raise ValueError(f"{a.value} needs new_id, staff_id and reason")
        if a is PaymentAction.CONFIRM and self.approved is None:
            raise ValueError("confirm needs approved")
        if a in (PaymentAction.CONFIRM, PaymentAction.RESOLVE) and self.approved is not None and self.staff_id is None:
            raise ValueError(f"{a.value} by staff needs staff_id")
        if a is PaymentAction.TENDER and self.tendered is None:
            raise ValueError("tender needs tendered")
        return self


class LedgerAck(Command):
    """``cmd/ledger-ack``: central stored ``payment_id`` up to ``version``;
    the edge may drop those events from its outbox."""

    payment_id: uuid.UUID
    version: int = Field(ge=1)


COMMAND_NAMES: dict[str, type[Command]] = {
    "display": DisplayCommand,
    "charge": ChargeCommand,
    "payment": PaymentCommand,
    "ledger-ack": LedgerAck,
}


def command_expiry(seconds: float, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``(issued_at, expires_at)`` for a command valid ``seconds`` from now."""
    issued = now or utcnow()
    return issued, issued + timedelta(seconds=seconds)


# --------------------------------------------------------------------------- request/response


#: The request methods a device answers (docs/fleet.md has params and answers).
REQUEST_METHODS = ("get-config", "set-config", "restart", "status-ticket", "identify", "logs")
#: The largest request a device reads (a set-config carries a whole TOML file).
MAX_REQUEST_BYTES = 16 * 1024
#: The longest a request may live (``expires_at - issued_at``): bounds how long a
#: device must remember request ids to refuse a replay.
MAX_REQUEST_LIFE_S = 600
#: A short, stable reason code in a refusal (``Response.code``), e.g. ``unknown_method``.
ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
ParamName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class Request(Message):
    """``device/<device>/req/<method>``: an IT request (MQTT v5 request/response).

    The MQTT ResponseTopic and CorrelationData properties say where to answer;
    ``request_id`` is kept in the audit log and refused if seen twice.
    ``requested_by`` is the identity the requester claims (central: the
    logged-in IT staff member; the CLI: the admin's name): the broker's ACL,
    which lets only central and IT admins publish requests, is what makes the
    claim trustworthy enough to audit.  ``params`` are checked per method by
    the device (a set-config's ``config`` is the TOML text, hence the long
    string limit; the whole request is bounded by :data:`MAX_REQUEST_BYTES`).
    """

    request_id: uuid.UUID
    requested_by: str = Field(min_length=1, max_length=64)
    issued_at: AwareDatetime
    expires_at: AwareDatetime
    params: dict[ParamName, Annotated[str, StringConstraints(max_length=MAX_REQUEST_BYTES)] | int | float | bool | None] = Field(
        default_factory=dict, max_length=32
    )

    @model_validator(mode="after")
    def _life(self) -> Request:
        life = (self.expires_at - self.issued_at).total_seconds()
        if not 0 < life <= MAX_REQUEST_LIFE_S:
            raise ValueError(f"expires_at must be after issued_at and at most {MAX_REQUEST_LIFE_S} s later")
        return self


class Response(Message):
    """The answer to a :class:`Request`: ``{status, data, error}``.

    ``request_id`` is None only when the request could not be read (not JSON,
    too large); ``code`` is a short stable reason for a refusal or failure
    (``unknown_method``, ``replayed``, ``expired``, ``invalid``,
    ``payment_in_progress`` ...) and ``error`` says it in words."""

    request_id: uuid.UUID | None
    method: str | None = Field(default=None, max_length=32)
    status: Literal["ok", "error"]
    data: dict[str, object] | None = None
    code: ReasonCode | None = None
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
