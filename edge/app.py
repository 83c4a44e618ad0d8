"""The edge daemon: build everything in one place, start in order, stop in
reverse.  One asyncio loop owns all state; the button driver (gpiozero's
thread), the display page server and the MQTT session (paho) run in their own
named threads and only hand events to the loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import ssl
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bus.configfile import ConfigError
from bus.models import (
    Health,
    HealthState,
    Info,
    PeripheralHealth,
    PeripheralInfo,
    Role,
    utcnow,
)
from bus.sdnotify import Notifier, log_fields, set_journal_fields, write_probe
from bus.topics import Topics
from drivers.buttons import ButtonError, ButtonPanel, press
from drivers.display import Display, DisplayError, HdmiDisplay, LogDisplay
from drivers.errors import DriverError
from edge import config as edge_config
from edge.config import EdgeConfig
from edge.counter import CounterRole
from edge.fleet import EXIT_RESTART, EdgeFleet
from edge.journal import Journal, JournalError
from edge.payments import PaymentRole
from edge.session import EdgeSession, Received

logger = logging.getLogger(__name__)

HEALTH_EVERY_S = 5.0
#: After SIGTERM, how long a card payment at the terminal (and then its receipt)
#: may take to finish before the daemon stops anyway; the unit's TimeoutStopSec=
#: is larger (docs/systemd.md).
STOP_GRACE_S = 60.0
EXIT_CONFIG = 78  # EX_CONFIG
EXIT_HARDWARE = 69  # EX_UNAVAILABLE: a peripheral could not be opened

BUTTON_LABELS = {
    "call_next": "次の方 Next",
    "recall": "再呼出 Recall",
    "no_show": "不在 No-show",
    "finish": "完了 Done",
    "hold": "保留 Hold",
    "pay": "支払 PAY",
}


def _version() -> str:
    try:
        return version("madoguchi")
    except PackageNotFoundError:
        return "0+unknown"


class EdgeDaemon:
    """One edge device.  ``pin_factory`` and ``display`` may be given (tests,
    the benchmark); otherwise they come from the config."""

    def __init__(
        self,
        config: EdgeConfig,
        *,
        config_hash: str = "0" * 16,
        pin_factory: Any = None,
        display: Display | None = None,
        terminal: Any = None,
        printer: Any = None,
        config_path: str | Path | None = None,
    ) -> None:
        self.config = config
        self.config_hash = config_hash
        #: The file the config came from (IT's get-config/set-config, edge/fleet.py).
        self.config_path = Path(config_path) if config_path else None
        self.fleet: EdgeFleet | None = None
        self._restart_requested = False
        self.boot_id = uuid.uuid4().hex[:12]
        self.topics = Topics(config.device.site)
        self.started_at = utcnow()
        self._started_mono = time.monotonic()
        self._pin_factory = pin_factory
        self._display = display
        self._terminal = terminal
        self._printer = printer
        self.terminal: Any = None
        self.printer: Any = None
        self.journal: Journal | None = None
        self.payments: PaymentRole | None = None
        self._sim: Any = None
        self._fake_printer: Any = None
        self._jobs_saved = 0
        self.printer_spool: Any = None
        self._seq = 0
        self.buttons: ButtonPanel | None = None
        self.display: Display | None = None
        self.session: EdgeSession | None = None
        self.role: CounterRole | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._last_health: dict | None = None
        self._fatal_reason: str | None = None
        #: systemd (bus/sdnotify.py, docs/systemd.md): every role calls
        #: :meth:`notify_ready` once its peripherals are up; a stop or a fatal
        #: error sends STOPPING=1.
        self.notifier = Notifier()
        self._probe: Path | None = None
        #: A stop signal came: a payment at the terminal may finish first.
        self._grace = False

    # ------------------------------------------------------------ parts
    def _make_display(self) -> Display:
        if self._display is not None:
            return self._display
        cfg = self.config.display
        if cfg.driver == "log":
            return LogDisplay(self.config.device.id)
        controls = None
        if self.config.buttons.driver == "mock":
            # Simulated GPIO: the page gets on-screen buttons that drive the
            # mock pins, so the whole debounce → intent path runs as on a Pi.
            controls = {
                intent.value: (BUTTON_LABELS[intent.value], self._mock_press_of(pin))
                for intent, pin in self.config.buttons.pins.items()
            }
            if self.config.buttons.pay is not None:
                controls["pay"] = (BUTTON_LABELS["pay"], self._mock_press_of(self.config.buttons.pay))
        return HdmiDisplay(
            host=cfg.host, port=cfg.port,
            title_ja=cfg.title_ja, title_en=cfg.title_en,
            controls=controls,
        )

    def _make_terminal(self) -> Any:
        """The payment terminal the config names (None: cash only)."""
        if self._terminal is not None:
            return self._terminal
        t = self.config.terminal
        if t.driver == "none":
            return None
        if t.driver == "manual":
            from drivers.terminal.manual import ManualTerminal
            return ManualTerminal()
        from drivers.terminal.zvt import ZvtTerminal
        if t.driver == "sim":
            # The simulator speaks ZVT on a pty: the real driver talks to it.
            from drivers.terminal.sim import SimTerminal
            self._sim = SimTerminal(scenario=t.scenario)
            return ZvtTerminal(self._sim.port, password=t.password.get_secret_value(), t3_s=t.t3_s, t4_s=t.t4_s)
        return ZvtTerminal(t.port, baudrate=t.baudrate, password=t.password.get_secret_value(), t3_s=t.t3_s, t4_s=t.t4_s)

    def _make_printer(self) -> Any:
        if self._printer is not None:
            return self._printer
        p = self.config.printer
        if p.driver == "none":
            return None
        try:
            from drivers.printer import Paper, Printer
        except ImportError as exc:  # a Pi set up without the edge extra
            raise DriverError(f"[printer] driver = {p.driver!r} needs python-escpos, qrcode and Pillow "
                              f"(pip install 'madoguchi[edge]'; the madoguchi-edge package has them): {exc}") from exc
        paper = Paper.for_columns(p.columns)
        if p.driver == "fake":
            # The simulated printer speaks ESC/POS on loopback; the real driver talks to it.
            from drivers.printer import FakeEscposPrinter
            self._fake_printer = FakeEscposPrinter(name=f"printer-{self.config.device.id}", on_job=self._save_job)
            return Printer.network("127.0.0.1", port=self._fake_printer.port, mode=p.mode, paper=paper)
        if p.driver == "usb":
            return Printer.usb(p.vendor_id, p.product_id, mode=p.mode, paper=paper)
        if p.driver == "serial":
            return Printer.serial(p.port, p.baudrate, mode=p.mode, paper=paper)
        return Printer.network(p.host, port=p.tcp_port, mode=p.mode, paper=paper)

    def _save_job(self, job: bytes) -> None:
        """The fake printer's job, drawn as the paper would look (demo)."""
        folder = self.config.printer.fake_dir
        if folder is None:
            return
        from drivers.printer import Paper
        from drivers.printer.render import render_png
        folder.mkdir(parents=True, exist_ok=True)
        if self._jobs_saved == 0:  # carry on after the pictures of an earlier run, never over them
            numbers = [int(n) for f in folder.glob(f"{self.config.device.id}-*.png")
                       if (n := f.stem.rsplit("-", 1)[-1]).isdigit()]
            self._jobs_saved = max(numbers, default=0)
        self._jobs_saved += 1
        path = folder / f"{self.config.device.id}-{self._jobs_saved:04d}.png"
        path.write_bytes(render_png(job, paper=Paper.for_columns(self.config.printer.columns)))
        logger.info("%s: printed %s", self.config.device.id, path)

    def next_seq(self) -> int:
        """Event sequence numbers of this boot, shared by all roles."""
        seq, self._seq = self._seq, self._seq + 1
        return seq

    def _mock_press_of(self, pin):
        def pressed() -> None:
            press(self._pin_factory, pin, pull_up=self.config.buttons.pull_up)
        return pressed

    def _health(self) -> Health:
        parts: dict[str, PeripheralHealth] = {}
        for name, part in (("buttons", self.buttons), ("display", self.display), ("clock", self.role.clock if self.role else None),
                           ("terminal", self.terminal), ("printer", self.printer_spool)):
            if part is None:
                parts[name] = PeripheralHealth(status=HealthState.ABSENT)
                continue
            status, reason, message = part.health()
            parts[name] = PeripheralHealth(status=HealthState(status), reason=reason and reason[:40],
                                           message=message and message[:200])
        return Health(ts=utcnow(), uptime_s=round(time.monotonic() - self._started_mono, 1), peripherals=parts)

    def _info(self) -> Info:
        display_driver = self.config.display.driver if self._display is None else type(self._display).__name__
        return Info(
            device=self.config.device.id, role=Role(self.config.device.role), counter=self.config.device.counter,
            version=_version(), config_hash=self.config_hash,
            peripherals={
                "buttons": PeripheralInfo(driver=self.config.buttons.driver),
                "display": PeripheralInfo(driver=display_driver),
                "terminal": PeripheralInfo(driver=self.config.terminal.driver if self._terminal is None else type(self._terminal).__name__),
                "printer": PeripheralInfo(driver=self.config.printer.driver if self._printer is None else type(self._printer).__name__),
            },
            ip=self.session.local_ip if self.session else None, boot_id=self.boot_id, started_at=self.started_at,
        )

    def _retained(self):
        return [(self.topics.info(self.config.device.id), self._info()),
                (self.topics.health(self.config.device.id), self._health())]

    # ------------------------------------------------------------ loop callbacks
    def _on_message(self, msg: Received) -> None:
        try:
            if self.fleet is not None and self.fleet.on_message(msg):
                return
            if self.role is not None and self.role.on_message(msg):
                return
            if self.payments is not None and self.payments.on_message(msg):
                return
            logger.warning("%s: unexpected message on %s", self.config.device.id, msg.topic)
        except Exception:  # one bad message must not stop the daemon
            logger.exception("%s: failed to handle message on %s", self.config.device.id, msg.topic)

    def _on_press(self, name: str, monotonic: float) -> None:
        # gpiozero's thread → the loop.
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._pressed_on_loop, name, monotonic)

    def _pressed_on_loop(self, name: str, monotonic: float) -> None:
        try:
            if name == "pay":
                if self.payments is not None:
                    self.payments.on_pay_button(monotonic)
            elif self.role is not None:
                self.role.on_press(name, monotonic)
        except Exception:
            logger.exception("%s: failed to handle the %s button", self.config.device.id, name)

    # ------------------------------------------------------------ run
    async def run(self) -> int:
        """Run until :meth:`request_stop` or a signal; the exit code.

        What no role could start with is an exit code systemd acts on, not a
        traceback: TLS files that are not what they should be → 78 (the
        config; no restart helps), a database file SQLite cannot use (not a
        database, a full disk) → 69."""
        try:
            return await self._run()
        except ssl.SSLError as exc:
            logger.error("%s: TLS to the broker cannot be set up ([mqtt.tls]): %s", self.config.device.id, exc)
            self.notifier.stopping()
            return EXIT_CONFIG
        except sqlite3.Error as exc:
            logger.error("%s: a database file cannot be used: %s", self.config.device.id, exc)
            self.notifier.stopping()
            return EXIT_HARDWARE

    async def _run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        cfg = self.config
        if cfg.device.role == "kiosk":  # a ticket kiosk: page + printer + MQTT only (edge/kiosk.py)
            from edge.kiosk import run_kiosk
            return await run_kiosk(self)
        if cfg.device.role == "lobby":  # lobby announcements: voice + MQTT only (edge/lobby.py)
            from edge.lobby import run_lobby
            return await run_lobby(self)
        try:
            try:
                self.display = self._make_display()
                if cfg.buttons.driver == "mock" and self._pin_factory is None:
                    from gpiozero.pins.mock import MockFactory
                    self._pin_factory = MockFactory()
                pins = {intent.value: pin for intent, pin in cfg.buttons.pins.items()}
                if cfg.buttons.pay is not None:
                    pins["pay"] = cfg.buttons.pay
                self.buttons = ButtonPanel(
                    pins, self._on_press,
                    pin_factory=self._pin_factory, debounce_s=cfg.buttons.debounce_ms / 1000, pull_up=cfg.buttons.pull_up,
                )
                self.journal = Journal(cfg.payments.journal)
                self.terminal = self._make_terminal()
                self.printer = self._make_printer()
            except (ButtonError, DisplayError, DriverError, JournalError, OSError) as exc:
                logger.error("%s: cannot start peripherals: %s", cfg.device.id, exc)
                return EXIT_HARDWARE
            self.session = EdgeSession(
                self.topics, cfg.device.id, self.boot_id,
                host=cfg.mqtt.host, port=cfg.mqtt.port, username=cfg.mqtt.username,
                password=cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None, tls=cfg.mqtt.tls,
                keepalive_s=cfg.mqtt.keepalive_s, reconnect_cap_s=cfg.mqtt.reconnect_cap_s,
                subscriptions=[self.topics.device_commands(cfg.device.id), self.topics.central_status(),
                               self.topics.device_requests(cfg.device.id)],
                retained=self._retained,
                on_connected=self._on_connected, on_disconnected=self._on_disconnected, on_message=self._on_message,
                on_fatal=self._fatal,
            )
            self.role = CounterRole(cfg, self.topics, self.display, self.session, boot_id=self.boot_id, next_seq=self.next_seq)
            if self.printer is not None:
                from edge.printing import (
                    PrintSpool,  # python-escpos is only needed with a printer
                )
            self.printer_spool = PrintSpool(self.journal, self.printer, device=cfg.device.id,
                                            header=(cfg.payments.office_ja, cfg.payments.office_en),
                                            counter_name=(cfg.device.counter_name_ja, cfg.device.counter_name_en),
                                            notify=self.role.notice, zone=ZoneInfo(cfg.device.timezone)) if self.printer else None
            self.payments = PaymentRole(
                device=cfg.device.id, counter=cfg.device.counter, topics=self.topics, session=self.session,
                journal=self.journal, terminal=self.terminal, boot_id=self.boot_id, next_seq=self.next_seq,
                notify=self.role.notice, printer=self.printer_spool, clock=self.role.clock,
                zone=ZoneInfo(cfg.device.timezone), repeat_guard_s=cfg.buttons.repeat_guard_ms / 1000,
            )
            try:
                self.fleet = EdgeFleet.for_daemon(self)  # IT requests (edge/fleet.py)
            except (JournalError, OSError) as exc:
                logger.error("%s: cannot open the request journal: %s", cfg.device.id, exc)
                return EXIT_HARDWARE
            self.fleet.start(self.loop)
            if self.printer_spool is not None:
                self.printer_spool.start(self.loop)
            self.payments.start(self.loop)
            # Peripherals are up: the counter works (and says "connecting")
            # before the broker is reachable.  Offline-first.
            self.notify_ready(writable=cfg.payments.journal)
            self.session.start(self.loop)
            logger.info("%s: counter %s ready (display %s)", cfg.device.id, cfg.device.counter,
                        getattr(self.display, "url", cfg.display.driver))
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), HEALTH_EVERY_S)
                except TimeoutError:
                    try:
                        self._publish_health_if_changed()
                    except Exception:  # a health report must never stop the counter
                        logger.exception("%s: cannot publish health", cfg.device.id)
            return self.exit_code()
        finally:
            self.notifier.stopping()
            await self._let_payment_finish()
            if self.fleet is not None:
                self.fleet.close()
            if self.payments is not None:
                self.payments.close()
            if self.printer_spool is not None:
                self.printer_spool.close()
            if self.session is not None:
                self.session.stop()
            if self.buttons is not None:
                self.buttons.close()
            for part, given in ((self.terminal, self._terminal), (self.printer, self._printer), (self._sim, None),
                                (self._fake_printer, None)):
                if part is not None and given is None:
                    part.close()
            if self.journal is not None:
                self.journal.close()
            if self.display is not None and self._display is None:
                self.display.close()

    # ------------------------------------------------------------ systemd
    def notify_ready(self, *, writable: Path | None = None) -> None:
        """READY=1 with a status line, and the watchdog (docs/systemd.md).
        Each role calls it once its peripherals are up and before the MQTT
        session starts: a counter works without the broker.  ``writable``:
        the role's journal, whose folder must stay writable to count as healthy."""
        self._probe = Path(writable).with_name(Path(writable).name + ".alive") if writable else None
        self.notifier.ready(self._status_line())
        self.notifier.start_watchdog(self.unhealthy, name=f"watchdog-{self.config.device.id}")

    def unhealthy(self) -> str | None:
        """Why systemd's watchdog must not be fed, or None.  Healthy = the
        loop turns (the check runs on it), no fatal error, and the journal's
        folder takes a write.  A missing broker or an empty printer is
        degraded, not hung: a restart would not help, so it is not here."""
        if self._fatal_reason:
            return self._fatal_reason
        if self._probe is not None:
            return write_probe(self._probe)
        return None

    def _status_line(self) -> str:
        """STATUS= for ``systemctl status``: the broker, what the counter
        shows, each peripheral that is not ok."""
        mqtt = f"{self.config.mqtt.host}:{self.config.mqtt.port}"
        if self.session is not None and self.session.connected:
            parts = [f"オンライン / online ({mqtt})"]
        else:
            parts = [f"接続中 / connecting to broker {mqtt}"]
        screen = self.display.current if self.display is not None else None
        if screen is not None and screen.number is not None:
            parts.append(f"表示 / showing {screen.number}")
        if screen is not None and screen.waiting is not None:
            parts.append(f"待ち / waiting {screen.waiting}")
        try:
            health = self._health().peripherals
        except Exception:  # a status line must never stop the daemon
            logger.debug("%s: no health for the status line", self.config.device.id, exc_info=True)
            health = {}
        parts += [f"{name}: {h.reason or h.status.value}" for name, h in health.items()
                  if h.status not in (HealthState.OK, HealthState.ABSENT)]
        return "; ".join(parts)

    def _on_connected(self) -> None:
        self.notifier.status(self._status_line())
        if self.payments is not None:
            self.payments.flush_outbox()

    def _on_disconnected(self) -> None:
        self.notifier.status(self._status_line())
        if self.role is not None:
            self.role.on_disconnected()

    def _publish_health_if_changed(self) -> None:
        self.notifier.status(self._status_line())
        if self.session is None or not self.session.connected:
            return
        health = self._health()
        summary = {k: (v.status, v.reason) for k, v in health.peripherals.items()}
        if summary != self._last_health:
            self._last_health = summary
            self.session.publish(self.topics.health(self.config.device.id), health, retain=True)

    def _fatal(self, reason: str) -> None:
        logger.error("%s: stopping: %s", self.config.device.id, reason)
        self._fatal_reason = reason
        self.notifier.stopping(f"停止中 / stopping: {reason}")
        if self._stop is not None:
            self._stop.set()

    def request_restart(self) -> None:
        """Thread-safe: stop and exit with :data:`EXIT_RESTART` (an accepted
        IT restart request; systemd starts the daemon again)."""
        logger.warning("%s: restarting on request (exit code %d)", self.config.device.id, EXIT_RESTART)
        self._restart_requested = True
        self._grace = False  # refused while a payment runs, unless forced: then it is cut off
        self.notifier.stopping("再起動中 / restarting on request")
        self.request_stop()

    def on_signal(self) -> None:
        """SIGTERM or SIGINT (``systemctl stop``/``restart``, an upgrade, a
        shutdown): stop, letting a payment at the terminal finish first; a
        second signal stops at once."""
        self._grace = self._stop is None or not self._stop.is_set()
        self.request_stop()

    async def _let_payment_finish(self) -> None:
        """After a stop signal, the payment at the terminal, then its receipt,
        get up to :data:`STOP_GRACE_S`: a visitor's card payment is not cut off
        into 処理未了 by a restart.  What is still running after that is
        aborted as before; the next start asks the terminal how it ended."""
        payments, journal = self.payments, self.journal
        if not self._grace or payments is None or payments.busy is None:
            return
        pid, device, loop = payments.busy, self.config.device.id, asyncio.get_running_loop()
        running = journal.get(pid) if journal is not None else None
        fields = log_fields(ticket=running.charge.get("ticket") if running else None, payment_id=pid)

        def unfinished() -> bool:
            if payments.busy is not None:
                return True
            spool = self.printer_spool
            return (journal is not None and spool is not None and spool.health()[0] != "error"
                    and any(j.state in ("queued", "printing") for j in journal.print_jobs_of(pid)))

        logger.warning("%s: stopping once payment %s at the terminal is done (at most %.0f s)", device, pid, STOP_GRACE_S,
                       extra=fields)
        self.notifier.status(f"停止待ち: 決済の完了を待っています / stopping after the payment at the terminal ({pid[:8]})")
        deadline = loop.time() + STOP_GRACE_S
        try:
            while self._grace and loop.time() < deadline and unfinished():
                await asyncio.sleep(0.1)
        except asyncio.CancelledError:  # stopping anyway
            pass
        if unfinished():
            logger.error("%s: payment %s or its receipt still running: stopping anyway (the terminal is asked at the next start)",
                         device, pid, extra=fields)

    def exit_code(self) -> int:
        """What :meth:`run` returns once stopped: 1 after a fatal error,
        :data:`EXIT_RESTART` after an IT restart request, else 0."""
        if self._fatal_reason:
            return 1
        return EXIT_RESTART if self._restart_requested else 0

    def request_stop(self) -> None:
        """Thread-safe: ask :meth:`run` to finish."""
        self.notifier.stopping()
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)


def run(config_path: str) -> int:
    try:
        config, config_hash = edge_config.load(config_path)
    except ConfigError as exc:
        logger.error("%s", exc)
        return EXIT_CONFIG
    set_journal_fields(SITE=config.device.site, DEVICE=config.device.id, COUNTER=config.device.counter)
    daemon = EdgeDaemon(config, config_hash=config_hash, config_path=config_path)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, daemon.on_signal)
        return await daemon.run()

    return asyncio.run(main())
