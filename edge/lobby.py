"""The lobby (待合) role: every call announced aloud, offline.  Issue #6 item 2;
docs/voice.md.

The lobby Pi listens to the retained ``lobby/board`` that central publishes
(bus/models.py :class:`LobbyBoard`: the latest calls, newest first) and
announces each call it has not seen yet through its own speaker (aplay), so
no browser autoplay rule can silence it.  Speech is made on the Pi
(drivers/voice: chime, Open JTalk, espeak-ng, SoX); nothing goes to the cloud.

Which calls are new:

* A call's identity is (ticket, counter, time of the call, recall).  Central
  stamps each call and each recall with its own time (microseconds), so every
  press is a new identity and a board re-published for another reason (a new
  ticket, changed waits) repeats identities already seen.
* The board delivered *because we subscribed* (MQTT retain flag set: on every
  (re)connect) is a baseline: its calls are marked seen and never announced.
* A call older than ``max_age_s`` when central published the board is not
  announced either (both times are central's clock, so the Pi's clock does
  not matter): a board re-sent by a restarted central, or one that a lobby
  first sees live because no retained board was there.
* The last 500 identities are remembered across reconnects of one process.

The retain flag is read with paho's per-topic callback
(``message_callback_add``), which hands the board to the loop like the
session does for everything else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from bus import PayloadError, decode
from bus.models import (
    Health,
    HealthState,
    Info,
    LobbyBoard,
    PeripheralHealth,
    PeripheralInfo,
    Role,
    utcnow,
)
from drivers.voice import Announcement, Announcer, Synthesizer, VoiceError

logger = logging.getLogger(__name__)

#: Identities of calls remembered (a day has a few hundred calls at most per hour).
SEEN_MAX = 500
#: How often health is compared with what was last published.
HEALTH_CHECK_S = 1.0


class LobbyRole:
    """Turns boards into announcements.  Runs on the asyncio loop."""

    def __init__(self, device: str, announcer: Announcer, *, max_age_s: float) -> None:
        self.device = device
        self.announcer = announcer
        self.max_age_s = max_age_s
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self.boards = 0
        self.rejected = 0
        self.announced = 0
        self.too_old = 0

    @staticmethod
    def identity(call) -> tuple:
        return (call.ticket, call.counter, call.at.isoformat(), call.recall)

    def _remember(self, key: tuple) -> bool:
        """Mark ``key`` seen; True if it was new."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    def on_board(self, payload: bytes, retained: bool) -> None:
        try:
            board = decode(LobbyBoard, payload)
        except PayloadError as exc:
            self.rejected += 1
            logger.warning("%s: rejected lobby board (%d so far): %s", self.device, self.rejected, exc)
            return
        self.boards += 1
        calls = sorted(board.calls, key=lambda c: c.at)  # oldest first: announced in the order they were made
        if retained:
            new = sum(self._remember(self.identity(c)) for c in calls)
            logger.info("%s: board on (re)connect: %d call(s), %d not seen before, none announced",
                        self.device, len(calls), new)
            return
        for call in calls:
            if not self._remember(self.identity(call)):
                continue
            age = (board.ts - call.at).total_seconds()
            if age > self.max_age_s:
                self.too_old += 1
                logger.info("%s: call %d → %s is %.0f s old: not announced", self.device, call.ticket,
                            call.counter, age)
                continue
            self.announced += 1
            self.announcer.announce(Announcement(ticket=call.ticket, counter=call.counter, counter_ja=call.counter_ja,
                                                 counter_en=call.counter_en, recall=call.recall))


# ------------------------------------------------------------ the daemon's lobby run
def _make_announcer(cfg) -> tuple[Synthesizer, Announcer]:
    v = cfg.voice
    synth = Synthesizer(dictionary=v.dictionary, voice=v.voice, espeak_voice=v.espeak_voice, english=v.english,
                        chime=v.chime, volume=v.volume, speed=v.speed)
    try:
        announcer = Announcer(synth, command=v.player, device=v.device, max_queue=v.max_queue, dedupe_s=v.dedupe_s,
                              name=cfg.device.id)
    except Exception:
        synth.close()
        raise
    return synth, announcer


async def run_lobby(daemon) -> int:
    """:meth:`EdgeDaemon.run` for role "lobby": the voice and MQTT (the board
    in; info and health out).  No buttons, display, payments or printer.

    A missing voice, SoX or player does not stop the daemon: it keeps running,
    chimes with what it has and says what is missing in its health, so IT sees
    the reason instead of an offline device."""
    from bus.sqlitedb import DatabaseError
    from edge.app import EXIT_HARDWARE, _version
    from edge.fleet import EdgeFleet
    from edge.session import EdgeSession

    cfg = daemon.config
    loop = asyncio.get_running_loop()
    device = cfg.device.id
    topics = daemon.topics
    synth: Synthesizer | None = None
    announcer: Announcer | None = None
    try:
        try:
            synth, announcer = _make_announcer(cfg)
            synth.chime_wav()  # made once now: a full disk or a read-only /tmp shows at start
        except (VoiceError, OSError, ValueError) as exc:
            logger.error("%s: cannot start the lobby voice: %s", device, exc)
            return EXIT_HARDWARE
        role = LobbyRole(device, announcer, max_age_s=cfg.voice.max_age_s)
        daemon.lobby = role
        caps = synth.check()
        if not caps.ok:
            _, reason, message = caps.health()
            logger.error("%s: voice %s: %s", device, reason, message)

        def health() -> Health:
            status, reason, message = announcer.health()
            return Health(ts=utcnow(), uptime_s=round(time.monotonic() - daemon._started_mono, 1),
                          peripherals={"voice": PeripheralHealth(status=HealthState(status), reason=reason and reason[:40],
                                                                 message=message and message[:200])})

        def info() -> Info:
            v = cfg.voice
            return Info(
                device=device, role=Role.LOBBY, counter=None, version=_version(), config_hash=daemon.config_hash,
                peripherals={"voice": PeripheralInfo(driver="open_jtalk", model=v.voice.stem[:80]),
                             "speaker": PeripheralInfo(driver=v.player[0].rsplit("/", 1)[-1][:40], model=v.device[:80])},
                ip=daemon.session.local_ip if daemon.session else None, boot_id=daemon.boot_id,
                started_at=daemon.started_at,
            )

        def on_message(msg: Any) -> None:
            try:
                if daemon.fleet is None or not daemon.fleet.on_message(msg):
                    logger.debug("%s: ignored %s", device, msg.topic)
            except Exception:  # one bad request must not stop the lobby
                logger.exception("%s: failed to handle %s", device, msg.topic)

        def on_board(client: Any, userdata: Any, msg: Any) -> None:  # paho's thread → the loop
            if not loop.is_closed():
                loop.call_soon_threadsafe(_board_on_loop, bytes(msg.payload), bool(msg.retain))

        def _board_on_loop(payload: bytes, retained: bool) -> None:
            try:
                role.on_board(payload, retained)
            except Exception:  # one bad board must not stop the lobby
                logger.exception("%s: failed to handle the lobby board", device)

        daemon.session = EdgeSession(
            topics, device, daemon.boot_id,
            host=cfg.mqtt.host, port=cfg.mqtt.port, username=cfg.mqtt.username,
            password=cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None, tls=cfg.mqtt.tls,
            keepalive_s=cfg.mqtt.keepalive_s, reconnect_cap_s=cfg.mqtt.reconnect_cap_s,
            subscriptions=[topics.lobby_board(), topics.device_commands(device), topics.device_requests(device)],
            retained=lambda: [(topics.info(device), info()), (topics.health(device), health())],
            on_connected=lambda: None, on_disconnected=lambda: None,
            on_message=on_message, on_fatal=daemon._fatal,
        )
        # IT requests (edge/fleet.py): get/set config, restart, logs; no
        # display or printer here, so identify and status-ticket answer
        # not_supported.
        try:
            daemon.fleet = EdgeFleet.for_daemon(daemon, describe=info)
        except (DatabaseError, OSError) as exc:
            logger.error("%s: cannot open the request journal: %s", device, exc)
            return EXIT_HARDWARE
        daemon.fleet.start(loop)
        # paho calls a per-topic callback instead of on_message, with the
        # retain flag the session's Received does not carry.
        daemon.session.client.message_callback_add(topics.lobby_board(), on_board)
        # The voice is up (or degraded, and health says why): READY for
        # systemd before the broker, as the other roles (docs/systemd.md); the
        # state folder (IT request ids beside [payments] journal) must take a write.
        daemon.notify_ready(writable=cfg.payments.journal)
        daemon.session.start(loop)
        logger.info("%s: lobby ready: announcing calls with %s on %s", device, cfg.voice.player[0], cfg.voice.device)
        published: tuple | None = None
        while not daemon._stop.is_set():
            try:
                await asyncio.wait_for(daemon._stop.wait(), HEALTH_CHECK_S)
            except TimeoutError:
                pass
            # systemd's STATUS= (docs/systemd.md): the broker, and the voice unless it is ok.
            voice, reason, _ = announcer.health()
            daemon.notifier.status(daemon._status_line() + ("" if voice == "ok" else f"; voice: {reason or voice}"))
            if daemon.session.connected:
                try:
                    h = health()
                    summary = tuple((k, p.status, p.reason, p.message) for k, p in h.peripherals.items())
                    if summary != published and daemon.session.publish(topics.health(device), h, retain=True):
                        published = summary
                except Exception:  # a health report must never stop the lobby
                    logger.exception("%s: cannot publish health", device)
        return daemon.exit_code()
    finally:
        daemon.notifier.stopping()
        if announcer is not None:
            await loop.run_in_executor(None, announcer.close)
        if daemon.session is not None:
            daemon.session.stop()
        if daemon.fleet is not None:  # after the session: no request arrives at a closed fleet
            daemon.fleet.close()
        if synth is not None:
            synth.close()
