"""Central's core: bus messages in, queue actions, display commands out.

Runs on the asyncio loop.  Every incoming payload is validated; a bad one is
rejected with a reason, counted in :attr:`Central.rejected` and logged, and
the next message is served as usual.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from bus import PayloadError, decode
from bus.models import (
    EVENT_KINDS,
    CallEntry,
    ChargeCommand,
    DeviceState,
    DisplayCommand,
    DisplayMode,
    Intent,
    IntentEvent,
    LedgerAck,
    LobbyBoard,
    Message,
    PaymentAction,
    PaymentCommand,
    PaymentEvent,
    PayMethod,
    ServiceWait,
    Status,
    command_expiry,
    utcnow,
)
from bus.sdnotify import log_fields
from bus.topics import TopicError, Topics, parse
from central.config import QueueSettings, Site
from central.fleet import Fleet
from central.ledger import Ledger, PaymentError
from central.queue import Outcome, QueueEngine, QueueError, StopState

logger = logging.getLogger(__name__)

#: A press stamped further in the future than this is refused (clock_skew).
MAX_SKEW = timedelta(seconds=10)
#: The longest an intent may live (edge config allows at most 30 s).
MAX_INTENT_LIFE = timedelta(seconds=30)

#: Board updates, and the waiting counts of counters other than the one that
#: acted, are coalesced over this many seconds (the board must still update
#: within a second of a call: issue #6).
BOARD_COALESCE_S = 0.2


METHOD_NAMES = {
    "cash": ("現金", "Cash"),
    "credit": ("クレジット", "Credit card"),
    "emoney": ("電子マネー", "E-money"),
    "qr": ("QRコード決済", "QR payment"),
}


class Publisher(Protocol):
    def publish(self, topic: str, message: Message, *, qos: int = 1, retain: bool = False, expiry_s: float | None = None) -> None: ...


@dataclass
class DeviceSeen:
    """What central knows of a device from its retained status (fleet view)."""

    state: str = "unknown"
    boot_id: str | None = None
    since: datetime | None = None


@dataclass
class Stats:
    handled: collections.Counter = field(default_factory=collections.Counter)
    rejected: collections.Counter = field(default_factory=collections.Counter)
    last_rejection: str | None = None


class Central:
    def __init__(self, engine: QueueEngine, site: Site, settings: QueueSettings, publisher: Publisher, *,
                 ledger: Ledger | None = None, command_ttl_s: float = 120.0) -> None:
        self.engine = engine
        self.ledger = ledger
        #: Charges and payment commands expire after this if the counter's Pi
        #: does not take them (it is offline): a stale charge never starts on
        #: its own later; the ledger marks it not delivered.
        self.command_ttl_s = command_ttl_s
        self.site = site
        self.settings = settings
        self.publisher = publisher
        self.topics = Topics(site.site.id)
        self.stats = Stats()
        self.devices: dict[str, DeviceSeen] = {d.id: DeviceSeen() for d in site.devices}
        #: The fleet manager (central/fleet.py): registry, IT requests, audit, alerts.
        self.fleet = Fleet(engine.store, site, publisher, topics=self.topics)
        self._pruned_at = float("-inf")
        self._board_due = False
        self._board_timer: asyncio.TimerHandle | None = None
        self._refresh_due: set[str] = set()

    # ---------------------------------------------------------------- bus in
    def reject(self, reason: str, topic: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        self.stats.last_rejection = f"{reason}: {detail}"[:300]
        logger.warning("rejected message on %s: %s: %s", topic[:200], reason, detail[:300])

    def handle(self, topic: str, payload: bytes) -> None:
        """Handle one MQTT message.  Never raises for bad input."""
        try:
            parts = parse(topic)
        except TopicError as exc:
            self.reject("bad_topic", topic, str(exc))
            return
        if parts.site != self.site.site.id:
            self.reject("wrong_site", topic, f"site {parts.site!r}")
            return
        device = self.site.device(parts.device) if parts.device else None
        if device is None:
            self.reject("unknown_device", topic, f"device {parts.device!r} is not in the site config")
            return
        try:
            if parts.channel == "status":
                status = decode(Status, payload)
                self._on_status(device.id, status)
                self.fleet.on_status(device.id, status)
            elif parts.channel in ("info", "health", "req", "res"):
                self.fleet.handle(device.id, parts, payload)
            elif parts.channel == "event":
                model = EVENT_KINDS.get(parts.name)
                if model is None:
                    self.reject("unknown_kind", topic, f"event kind {parts.name!r}")
                    return
                event = decode(model, payload)
                if isinstance(event, IntentEvent):
                    self._on_intent(device, event)
                elif isinstance(event, PaymentEvent):
                    self._on_payment(device, event)
            else:
                self.reject("unexpected", topic, f"central does not take {parts.channel!r} messages")
        except PayloadError as exc:
            self.reject(exc.reason, topic, exc.detail)

    def _on_status(self, device_id: str, status: Status) -> None:
        seen = self.devices[device_id]
        if status.state is DeviceState.OFFLINE and seen.boot_id not in (None, status.boot_id):
            # A will from an older boot arriving after the device came back.
            logger.info("%s: ignoring stale offline status of boot %s", device_id, status.boot_id)
            return
        changed = seen.state != status.state.value or seen.boot_id != status.boot_id
        seen.state, seen.boot_id, seen.since = status.state.value, status.boot_id, status.since
        self.stats.handled["status"] += 1
        if changed:
            logger.info("%s is %s (boot %s)", device_id, status.state.value, status.boot_id)
        if status.state is DeviceState.ONLINE:
            device = self.site.device(device_id)
            if device and device.counter:
                # A (re)connected display gets its current state at once.
                self.push_display(device.counter)

    def _on_intent(self, device, event: IntentEvent) -> None:
        if event.counter != device.counter:
            self.reject(
                "wrong_counter",
                self.topics.event(device.id, "intent"),
                f"{device.id} belongs to counter {device.counter}, not {event.counter}",
            )
            return
        now = utcnow()
        if event.ts - now > MAX_SKEW or event.expires_at - now > MAX_SKEW + MAX_INTENT_LIFE:
            # The Pi's clock is far ahead of ours: its deadline means nothing.
            # (A Pi without NTP; the counter corrects its clock from our
            # display commands, so this only happens before the first one.)
            self.reject(
                "clock_skew",
                self.topics.event(device.id, "intent"),
                f"{device.id}: pressed at {event.ts.isoformat()}, {(event.ts - now).total_seconds():.1f} s in the future",
            )
            self.push_display(device.counter, in_reply_to=event.event_id,
                              ja="時計がずれています。もう一度押してください", en="Clock out of sync, press again")
            return
        if event.expires_at <= now:
            # A press that arrives after its deadline must not call anyone now.
            self.reject(
                "expired",
                self.topics.event(device.id, "intent"),
                f"{event.intent.value} pressed at {event.ts.isoformat()} expired "
                f"{(now - event.expires_at).total_seconds():.1f} s ago",
            )
            return
        action = {
            Intent.CALL_NEXT: self.engine.call_next,
            Intent.RECALL: self.engine.recall,
            Intent.NO_SHOW: self.engine.no_show,
            Intent.FINISH: self.engine.finish,
            Intent.HOLD: self.engine.hold,
        }[event.intent]
        try:
            outcome = action(device.counter, source=f"button:{device.id}", event_id=str(event.event_id), device=device.id)
        except QueueError as exc:
            self.stats.handled["intent_refused"] += 1
            self.push_display(device.counter, in_reply_to=event.event_id, ja=exc.ja, en=exc.en)
            return
        if outcome.duplicate:
            # Delivered twice (QoS 1): answer again so the counter stops
            # waiting, but change nothing.
            self.stats.handled["duplicate"] += 1
        else:
            self.stats.handled[f"intent_{event.intent.value}"] += 1
        self.apply(outcome, origin=device.counter, in_reply_to=event.event_id)

    def _on_payment(self, device, event: PaymentEvent) -> None:
        topic = self.topics.event(device.id, "payment")
        if event.counter != device.counter:
            self.reject("wrong_counter", topic, f"{device.id} belongs to counter {device.counter}, not {event.counter}")
            return
        if self.ledger is None:
            self.reject("unexpected", topic, "this central takes no payments (no fee catalog configured)")
            return
        try:
            changed = self.ledger.apply_event(device.id, event)
        except PaymentError as exc:
            self.reject(exc.code, topic, exc.en)
            return
        self.stats.handled["payment" if changed else "payment_repeat"] += 1
        # Acknowledge even a repeat: the counter re-sends until it hears this.
        issued, expires = command_expiry(self.command_ttl_s)
        ack = LedgerAck(command_id=uuid.uuid4(), issued_at=issued, expires_at=expires,
                        payment_id=event.payment_id, version=event.version)
        self.publisher.publish(self.topics.cmd(device.id, "ledger-ack"), ack, qos=1, expiry_s=self.command_ttl_s)

    def send_charge(self, row, lines, *, start: bool) -> None:
        """Send a priced charge (a ``sent`` ledger row) to its counter's Pi."""
        issued, expires = command_expiry(self.command_ttl_s)
        method_ja, method_en = METHOD_NAMES[row.method]
        if row.brand and self.ledger is not None and row.brand in self.ledger.catalog.brands:
            brand = self.ledger.catalog.brands[row.brand]
            method_ja, method_en = f"{method_ja}（{brand.name_ja}）", f"{method_en} ({brand.name_en})"
        receipt = self.ledger.receipt_kind([line.code for line in lines], row.method) if self.ledger else "receipt"
        cmd = ChargeCommand(
            command_id=uuid.uuid4(), issued_at=issued, expires_at=expires, payment_id=uuid.UUID(row.payment_id),
            charge_id=uuid.UUID(row.charge_id), counter=row.counter, ticket=row.ticket, lines=lines, total=row.amount,
            method=PayMethod(row.method), brand=row.brand, tendered=row.tendered, receipt=receipt,
            method_ja=method_ja[:80], method_en=method_en[:80], staff_id=row.staff_id, start=start,
        )
        self.publisher.publish(self.topics.cmd(row.device, "charge"), cmd, qos=1, expiry_s=self.command_ttl_s)

    def send_payment_command(self, row, action: PaymentAction, **fields) -> None:
        issued, expires = command_expiry(self.command_ttl_s)
        cmd = PaymentCommand(command_id=uuid.uuid4(), issued_at=issued, expires_at=expires,
                             payment_id=uuid.UUID(row.payment_id), action=action, **fields)
        self.publisher.publish(self.topics.cmd(row.device, "payment"), cmd, qos=1, expiry_s=self.command_ttl_s)

    # ---------------------------------------------------------------- bus out
    def apply(self, outcome: Outcome, *, origin: str | None = None, in_reply_to: uuid.UUID | None = None) -> None:
        """Push the displays and the board an action changed."""
        if not outcome.duplicate:
            for c in outcome.calls:
                logger.info("counter %s calls ticket %d (%s)%s", c.counter, c.number, c.service, ", recall" if c.recall else "",
                            extra=log_fields(ticket=c.number, counter=c.counter))
        called = {c.counter for c in outcome.calls}
        now = called | ({origin} if origin else set())
        for counter in sorted(now):
            recall = any(c.recall and c.counter == counter for c in outcome.calls)
            if counter == origin:
                self.push_display(counter, in_reply_to=in_reply_to, ja=outcome.ja, en=outcome.en, recall=recall)
            else:
                self.push_display(counter, recall=recall)
        # The others only see their waiting count move: refreshed together
        # within BOARD_COALESCE_S (twenty counters sharing a service would
        # otherwise get twenty displays each per press in a 9:00 rush).
        self._refresh_due.update(set(outcome.counters) - now)
        if outcome.calls or outcome.counters:
            self.publish_board_soon()

    def display_for(
        self, counter: str, *, in_reply_to: uuid.UUID | None = None, ja: str = "", en: str = "", recall: bool = False
    ) -> DisplayCommand:
        view = self.engine.counter_view(counter)
        issued, expires = command_expiry(self.settings.display_command_ttl_s)
        common = dict(
            command_id=uuid.uuid4(), issued_at=issued, expires_at=expires, in_reply_to=in_reply_to,
            waiting=view.waiting, text_ja=ja[:80], text_en=en[:80],
        )
        if view.stop is None:
            if not ja and view.waiting:
                common["text_ja"] = f"お待ちの方 {view.waiting}人"
                common["text_en"] = f"{view.waiting} waiting"
            elif not ja:
                common["text_ja"], common["text_en"] = "お待ちの方はいません", "No one is waiting"
            return DisplayCommand(mode=DisplayMode.IDLE, **common)
        service = self.site.service(view.stop.service)
        mode = DisplayMode.CALLING if view.stop.state == StopState.CALLED.value else DisplayMode.SERVING
        return DisplayCommand(
            mode=mode, ticket=view.ticket, recall=recall,
            service_ja=service.name_ja, service_en=service.name_en, **common,
        )

    def push_display(
        self, counter: str, *, in_reply_to: uuid.UUID | None = None, ja: str = "", en: str = "", recall: bool = False
    ) -> None:
        device = self.site.device_of_counter(counter)
        if device is None:
            return  # a counter without a Pi (console only)
        cmd = self.display_for(counter, in_reply_to=in_reply_to, ja=ja, en=en, recall=recall)
        self.publisher.publish(
            self.topics.cmd(device.id, "display"), cmd, qos=1, expiry_s=self.settings.display_command_ttl_s
        )

    def apply_issue(self, ticket) -> None:
        """A new ticket: idle counters that can serve it show the new count."""
        services = {s.service for s in ticket.stops}
        outcome = Outcome(counters={c.id for c in self.site.counters if services & set(c.services)})
        self.apply(outcome)

    def board(self) -> LobbyBoard:
        calls = []
        for call in self.engine.recent_calls(self.settings.board_calls):
            c = self.site.counter(call.counter)
            calls.append(CallEntry(ticket=call.number, counter=c.id, counter_ja=c.name_ja, counter_en=c.name_en, at=call.at, recall=call.recall))
        waiting = self.engine.waiting_by_service()
        estimates = self.engine.estimate_minutes(waiting)
        waits = [
            ServiceWait(service=s.id, name_ja=s.name_ja, name_en=s.name_en, waiting=waiting[s.id], estimate_min=estimates[s.id])
            for s in self.site.services
        ]
        return LobbyBoard(ts=utcnow(), calls=calls, waits=waits)

    def publish_board(self) -> None:
        """Refresh the displays waiting for it, then publish the board."""
        self._board_due = False
        self._board_timer = None
        due, self._refresh_due = self._refresh_due, set()
        for counter in sorted(due):
            self.push_display(counter)
        self.publisher.publish(self.topics.lobby_board(), self.board(), qos=1, retain=True)

    def publish_board_soon(self) -> None:
        """Publish the board within :data:`BOARD_COALESCE_S`: a burst of calls
        (twenty counters pressing at 9:00) becomes one board update, and the
        counters' own display commands go out first."""
        if self._board_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tools, the simulator): publish now
            self.publish_board()
            return
        self._board_due = True
        self._board_timer = loop.call_later(BOARD_COALESCE_S, self.publish_board)

    def close(self) -> None:
        """Stop timers (before the store closes)."""
        if self._board_timer is not None:
            self._board_timer.cancel()
            self._board_timer = None

    def resync(self) -> None:
        """After (re)connecting: every display and the board from the database."""
        for counter in self.site.counters:
            self.push_display(counter.id)
        self.publish_board()

    def tick(self) -> None:
        """Periodic work: bring back no-show tickets whose grace has passed;
        once an hour forget event ids older than two days."""
        now = time.monotonic()
        if now - self._pruned_at > 3600:
            self._pruned_at = now
            pruned = self.engine.prune_seen()
            if pruned:
                logger.info("forgot %d event ids older than two days", pruned)
        if self.ledger is not None:
            self.ledger.expire_unsent(self.command_ttl_s)
        self.fleet.open_due_alerts()
        if self.engine.release_due():
            for counter in self.site.counters:
                self.push_display(counter.id)
            self.publish_board()
    