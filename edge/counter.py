"""The counter role: staff buttons become intents, central's answers become
what the number display shows.

Runs on the edge daemon's asyncio loop.  The rules a counter needs:

* A press is debounced by the button driver; a second press of the same
  button within ``repeat_guard_ms`` is a double press and ignored, and while
  a call-next is on its way another call-next is ignored: one press, one call.
* A press that central does not answer within ``intent_timeout_s`` is
  dropped and the display says so (press again).  It is never replayed later:
  the event carries ``expires_at`` (and an MQTT message expiry), and central
  ignores it after that moment.
* Without a connection to the broker or without central online, a press is
  refused at once, with the reason on the display.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import statistics
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

from bus import PayloadError, decode
from bus.models import (
    CentralStatus,
    DeviceState,
    DisplayCommand,
    Intent,
    IntentEvent,
    utcnow,
)
from bus.sdnotify import log_fields
from bus.topics import Topics
from drivers.display import Display, Screen
from edge.config import EdgeConfig
from edge.session import Received

logger = logging.getLogger(__name__)

NOT_CONNECTED = ("センターに接続できません。もう一度押してください", "Not connected to central, press again")
NOT_DELIVERED = ("届きませんでした。もう一度押してください", "Not delivered, please press again")


class CentralClock:
    """Central's clock as seen from this Pi.

    A Pi has no real-time clock: until NTP syncs, or when it fails, its time
    can be off by seconds or years.  Both press deadlines (checked by central)
    and display deadlines (checked here) compare the two clocks, so the offset
    is estimated from every display command's ``issued_at`` (central's clock,
    late by the network delay, a few ms) and applied to both.  The median of
    the last samples ignores one late-delivered command.
    """

    SAMPLES = 7
    #: Offsets above this are reported in health as a clock problem.
    WARN_S = 2.0

    def __init__(self) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=self.SAMPLES)

    def sample(self, central_time: datetime) -> None:
        self._samples.append((central_time - utcnow()).total_seconds())

    @property
    def offset_s(self) -> float:
        """Central's clock minus ours, in seconds (0 until a command arrived)."""
        return statistics.median(self._samples) if self._samples else 0.0

    def now(self) -> datetime:
        return utcnow() + timedelta(seconds=self.offset_s)

    def health(self) -> tuple[str, str | None, str | None]:
        offset = self.offset_s
        if abs(offset) > self.WARN_S:
            return "warning", "clock_skew", f"clock differs from central by {offset:+.1f} s (check NTP)"
        return "ok", None, None


class CounterRole:
    def __init__(self, config: EdgeConfig, topics: Topics, display: Display, session, *, boot_id: str, next_seq=None) -> None:
        self.config = config
        self.device = config.device.id
        self.counter = config.device.counter
        self.topics = topics
        self.display = display
        self.session = session
        self.boot_id = boot_id
        # Sequence numbers per boot, shared with the payment role's events.
        self._next_seq = next_seq or itertools.count().__next__
        self._last_press: dict[Intent, float] = {}
        #: event_id → intent, for presses waiting for central's answer.
        self.pending: dict[uuid.UUID, Intent] = {}
        self.central_online = False
        self._central_boot: str | None = None
        self._last_issued = None
        self.clock = CentralClock()
        self.stats = {"pressed": 0, "ignored_repeat": 0, "ignored_in_flight": 0, "refused_offline": 0, "timed_out": 0, "sent": 0, "bad_command": 0, "late_command": 0}
        self._show(Screen(mode="idle", counter_ja=config.device.counter_name_ja, counter_en=config.device.counter_name_en,
                          text_ja="接続しています…", text_en="Connecting…"))

    # ------------------------------------------------------------ display helpers
    def _base(self) -> Screen:
        current = self.display.current
        if current is None:
            return Screen(mode="idle", counter_ja=self.config.device.counter_name_ja, counter_en=self.config.device.counter_name_en)
        return current

    def _show(self, screen: Screen, *, answer: bool = False) -> None:
        """Show ``screen``; an identical unsolicited update is skipped (it would
        restart the blink), but an answer to a press is always shown: staff
        see their press was heard even when nothing changed."""
        if screen == self.display.current and not screen.recall and not answer:
            return
        self.display.show(screen)

    def notice(self, ja: str, en: str) -> None:
        """A message for staff; the number (if any) stays on screen."""
        self._show(replace(self._base(), recall=False, text_ja=ja, text_en=en))

    # ------------------------------------------------------------ buttons
    def on_press(self, name: str, monotonic: float) -> None:
        """A debounced button press (already on the loop)."""
        intent = Intent(name)
        self.stats["pressed"] += 1
        last = self._last_press.get(intent)
        if last is not None and monotonic - last < self.config.buttons.repeat_guard_ms / 1000:
            # Measured from the last *accepted* press: someone pressing every
            # half second still gets a press through now and then.
            self.stats["ignored_repeat"] += 1
            logger.info("%s: %s pressed again within %d ms: ignored", self.device, intent.value, self.config.buttons.repeat_guard_ms)
            return
        self._last_press[intent] = monotonic
        if intent in self.pending.values():
            self.stats["ignored_in_flight"] += 1
            logger.info("%s: %s already on its way: ignored", self.device, intent.value)
            return
        if not (self.session.connected and self.central_online):
            self.stats["refused_offline"] += 1
            logger.warning("%s: %s refused: %s", self.device, intent.value,
                           "no broker" if not self.session.connected else "central offline")
            self.notice(*NOT_CONNECTED)
            return
        now = self.clock.now()  # central's time, as far as we can tell
        timeout = self.config.counter.intent_timeout_s
        event = IntentEvent(
            event_id=uuid.uuid4(), boot_id=self.boot_id, seq=self._next_seq(), ts=now,
            counter=self.counter, intent=intent, expires_at=now + timedelta(seconds=timeout),
        )
        # QoS 0 on purpose: a press is at-most-once.  paho re-sends an
        # unacknowledged QoS 1 message after a reconnect, which is exactly the
        # late press that must never happen; a press lost with a dying
        # connection is reported by the timeout below instead.
        if not self.session.publish(self.topics.event(self.device, "intent"), event, qos=0, expiry_s=timeout):
            self.stats["refused_offline"] += 1
            self.notice(*NOT_CONNECTED)
            return
        self.stats["sent"] += 1
        self.pending[event.event_id] = intent
        # Wait a little longer than the event lives, so an answer that was
        # on its way is still taken as one.
        asyncio.get_running_loop().call_later(timeout + 1.0, self._expire, event.event_id)
        logger.info("%s: %s sent (seq %d)", self.device, intent.value, event.seq)

    def _expire(self, event_id: uuid.UUID) -> None:
        intent = self.pending.pop(event_id, None)
        if intent is not None:
            self.stats["timed_out"] += 1
            logger.warning("%s: %s got no answer from central: dropped", self.device, intent.value)
            self.notice(*NOT_DELIVERED)

    # ------------------------------------------------------------ bus
    def on_message(self, msg: Received) -> bool:
        """Handle a message for this role; False if it is not ours."""
        if msg.topic == self.topics.central_status():
            try:
                status = decode(CentralStatus, msg.payload)
            except PayloadError as exc:
                logger.warning("%s: bad central status: %s", self.device, exc)
                return True
            if status.state is DeviceState.OFFLINE and self._central_boot not in (None, status.boot_id):
                logger.info("%s: ignoring a stale offline status of central boot %s", self.device, status.boot_id)
                return True
            self._central_boot = status.boot_id
            was = self.central_online
            self.central_online = status.state is DeviceState.ONLINE
            if was != self.central_online:
                logger.info("%s: central is %s", self.device, status.state.value)
                if not self.central_online:
                    self.notice("センター停止中", "Central is offline")
            return True
        if msg.topic == self.topics.cmd(self.device, "display"):
            try:
                cmd = decode(DisplayCommand, msg.payload)
            except PayloadError as exc:
                self.stats["bad_command"] += 1
                logger.warning("%s: rejected display command: %s", self.device, exc)
                return True
            self.on_display(cmd)
            return True
        return False

    def on_display(self, cmd: DisplayCommand) -> None:
        self.clock.sample(cmd.issued_at)
        if cmd.expired(self.clock.now()):
            self.stats["late_command"] += 1
            logger.warning("%s: display command %s expired at %s: not shown", self.device, cmd.command_id, cmd.expires_at)
            return
        if self._last_issued is not None and cmd.issued_at < self._last_issued:
            self.stats["late_command"] += 1
            logger.info("%s: display command %s is older than the one shown: skipped", self.device, cmd.command_id)
            return
        self._last_issued = cmd.issued_at
        if cmd.in_reply_to is not None:
            self.pending.pop(cmd.in_reply_to, None)
        before = self.display.current
        if cmd.ticket is not None and (cmd.recall or before is None or (before.number, before.mode) != (cmd.ticket, cmd.mode.value)):
            # The number on the counter's screen, with the journal field TICKET.
            logger.info("%s: showing %d (%s%s)", self.device, cmd.ticket, cmd.mode.value, ", recall" if cmd.recall else "",
                        extra=log_fields(ticket=cmd.ticket))
        self._show(
            Screen(
                mode=cmd.mode.value, number=cmd.ticket, recall=cmd.recall,
                counter_ja=self.config.device.counter_name_ja, counter_en=self.config.device.counter_name_en,
                service_ja=cmd.service_ja, service_en=cmd.service_en,
                text_ja=cmd.text_ja, text_en=cmd.text_en, waiting=cmd.waiting,
            ),
            answer=cmd.in_reply_to is not None,
        )

    def on_disconnected(self) -> None:
        self.central_online = False
        self.notice("センターと通信できません", "No connection to central")
