"""systemd integration shared by the edge and central daemons (docs/systemd.md).

* :class:`Notifier` speaks the service notification protocol of sd_notify(3)
  through systemd-python (``systemd.daemon.notify``): ``READY=1``, ``STATUS=``,
  ``WATCHDOG=1`` (only while the daemon says it is healthy, every half of
  ``WATCHDOG_USEC``) and ``STOPPING=1``.
* :func:`setup_logging` sends the log to the journal through
  ``systemd.journal.JournalHandler`` when the process runs under systemd
  (``JOURNAL_STREAM`` names our stderr) or ``--log-target=journal`` asks for
  it, with the structured fields of :data:`FIELDS`; otherwise the usual
  one-line stderr format.

systemd-python is optional (the ``systemd`` extra, or Debian's
python3-systemd): without it — a developer's laptop, macOS — the notifier is
a no-op that says so once at debug level and the log goes to stderr.  Outside
systemd (``NOTIFY_SOCKET`` unset) the notifier is a no-op too.  Nothing here
may stop a daemon: a failed notification is logged, never raised.

This is the one module of ``bus`` that imports something beyond stdlib and
pydantic, and only if it is there.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

try:  # systemd-python: sd_notify(3) and the journal's native protocol
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover - depends on the machine
    _sd_daemon = None
    _sd_journal = None

logger = logging.getLogger(__name__)

#: Exit code of a restart that IT asked for (fleet manager): EX_TEMPFAIL of
#: sysexits.h.  A failure exit, so the units' Restart=on-failure starts the
#: daemon again; they also list it in RestartForceExitStatus= (restarted even
#: under a drop-in's Restart=no) and never in SuccessExitStatus= or
#: RestartPreventExitStatus= (docs/systemd.md, "Exit codes").
EXIT_RESTART = 75

#: The structured journal fields madoguchi's log lines may carry.  SITE,
#: DEVICE and COUNTER are the process's own (:func:`set_journal_fields`);
#: TICKET and PAYMENT_ID (and COUNTER, on central) come with a line:
#: ``logger.info(..., extra=log_fields(ticket=12, payment_id=pid))``.
FIELDS = ("SITE", "DEVICE", "COUNTER", "TICKET", "PAYMENT_ID")

#: Where journald listens (sd_journal_sendv(3) sends there).
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")

CONSOLE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
CONSOLE_DATEFMT = "%H:%M:%S"

_said_absent = False


def available() -> bool:
    """Whether systemd-python is installed."""
    return _sd_daemon is not None


def watchdog_interval(environ: dict[str, str] | os._Environ, pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings for process ``pid``, or None when
    systemd watches no one here: half of ``WATCHDOG_USEC``, as
    sd_watchdog_enabled(3) advises.  ``WATCHDOG_PID``, when set, must be
    ``pid`` (a child process inherits the variables but is not watched)."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    try:
        if owner and int(owner) != pid:
            return None
        value = int(usec)
    except ValueError:
        logger.warning("ignoring a malformed watchdog setting WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec, owner)
        return None
    if value <= 0:
        return None
    return value / 2 / 1_000_000


def write_probe(path: Path) -> str | None:
    """Rewrite the small file ``path``: None if that worked, else why not.

    The watchdog's "can we still write our state" check (the payment journal,
    central's database): a read-only remount after an SD card error, a full
    disk or a file size limit all fail here as they would fail the next
    transaction.  A few bytes, no fsync: no wear worth counting on an SD card.
    """
    try:
        with open(path, "w", encoding="ascii") as f:
            f.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} pid {os.getpid()}\n")
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}"
    return None


class Notifier:
    """sd_notify(3) for one daemon process.

    Every method is a no-op returning False when ``NOTIFY_SOCKET`` is unset
    or systemd-python is absent.  Thread-safe: each call is one datagram.
    """

    def __init__(self) -> None:
        global _said_absent
        self.socket = os.environ.get("NOTIFY_SOCKET") or None
        self.enabled = self.socket is not None and _sd_daemon is not None
        if _sd_daemon is None and not _said_absent:
            _said_absent = True
            logger.debug("systemd-python is not installed: no sd_notify, no journal fields "
                         "(pip install 'madoguchi[systemd]' or apt install python3-systemd)")
        #: Seconds between watchdog pings, None when there is no watchdog.
        self.watchdog_s = watchdog_interval(os.environ, os.getpid()) if self.enabled else None
        self.unhealthy: str | None = None
        self._status: str | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._task: asyncio.Task | None = None
        self._failed = False

    # ------------------------------------------------------------ the protocol
    def _send(self, *assignments: str) -> bool:
        if not self.enabled:
            return False
        try:
            sent = bool(_sd_daemon.notify("\n".join(assignments)))
        except OSError as exc:  # the manager went away, the socket is full: never fatal
            if not self._failed:
                self._failed = True
                logger.warning("sd_notify to %s failed: %s", self.socket, exc)
            return False
        return sent

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: ``READY=1`` (with a status line)."""
        with self._lock:
            if status is not None:
                self._status = status
        parts = ["READY=1"] + ([f"STATUS={_one_line(status)}"] if status else [])
        return self._send(*parts)

    def status(self, text: str) -> bool:
        """``STATUS=text`` for ``systemctl status``; a repeat of the last line
        is not sent again.  While unhealthy, the reason stays on show and
        ``text`` is sent when health returns."""
        with self._lock:
            if text == self._status:
                return False
            self._status = text
            if self.unhealthy is not None:
                return False
        return self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1`` if systemd watches this process."""
        if self.watchdog_s is None or self._stopping.is_set():
            return False
        return self._send("WATCHDOG=1")

    def stopping(self, status: str = "停止中 / stopping") -> bool:
        """Shutdown has begun: ``STOPPING=1``, once; the watchdog stops too."""
        if self._stopping.is_set():
            return False
        self._stopping.set()
        return self._send("STOPPING=1", f"STATUS={_one_line(status)}")

    # ------------------------------------------------------------ the watchdog
    def start_watchdog(self, healthy: Callable[[], str | None], *, name: str = "watchdog") -> asyncio.Task | None:
        """On the running loop: every :attr:`watchdog_s`, call ``healthy()``
        (None = healthy, else the reason) and ping only when it is healthy.

        The pings come from a task of the daemon's own asyncio loop, so a
        blocked loop stops them too.  ``faulthandler`` is armed for systemd's
        watchdog signal (SIGABRT): the journal then shows where every thread
        stood when the process was killed.  None when there is no watchdog.
        """
        if self.watchdog_s is None or self._task is not None:
            return self._task
        try:
            faulthandler.enable(file=sys.stderr, all_threads=True)
        except (OSError, ValueError, AttributeError) as exc:  # stderr closed or not a real file
            logger.debug("faulthandler not enabled: %s", exc)
        self._task = asyncio.get_running_loop().create_task(self._watch(healthy), name=name)
        return self._task

    async def _watch(self, healthy: Callable[[], str | None]) -> None:
        interval = self.watchdog_s
        logger.info("systemd watchdog: a ping every %.1f s while healthy", interval)
        while not self._stopping.is_set():
            try:
                reason = healthy()
            except Exception as exc:  # a broken check is a reason, not a crash
                logger.exception("health check failed")
                reason = f"health check failed: {exc}"
            if reason is None:
                if self.unhealthy is not None:
                    logger.warning("healthy again (%s is over): watchdog pings resume", self.unhealthy)
                    with self._lock:
                        self.unhealthy = None
                        status = self._status
                    if status:
                        self._send(f"STATUS={_one_line(status)}")
                self.watchdog()
            elif reason != self.unhealthy:
                logger.error("unhealthy: %s — no watchdog ping; systemd restarts the service if this lasts", reason)
                with self._lock:
                    self.unhealthy = reason
                self._send(f"STATUS={_one_line(f'異常 / unhealthy: {reason}')}")
            await asyncio.sleep(interval)


def _one_line(text: str) -> str:
    # A newline would start a new assignment of the protocol.
    return " ".join(text.split())[:400]


# ---------------------------------------------------------------------------
# Logging


class JournalFields(logging.Filter):
    """Adds the process's own fields (SITE, DEVICE, COUNTER) to every record
    that does not carry them already; JournalHandler sends a record's
    upper-case attributes as journal fields."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


PROCESS_FIELDS = JournalFields()


def log_fields(*, ticket: object = None, payment_id: object = None, counter: object = None) -> dict[str, str]:
    """The ``extra=`` of a log line about a ticket or a payment::

        logger.info("%s: payment %s approved", device, pid, extra=log_fields(ticket=12, payment_id=pid))

    JournalHandler sends a record's upper-case attributes as journal fields,
    so ``journalctl TICKET=12`` or ``journalctl PAYMENT_ID=<uuid>`` finds the
    line; the console format ignores them.  None is left out.  A ticket
    number is per site and day: add ``--since today``.  No personal data goes
    here: tickets are numbers and payment ids are random UUIDs."""
    values = {"TICKET": ticket, "PAYMENT_ID": payment_id, "COUNTER": counter}
    return {key: str(value) for key, value in values.items() if value is not None}


def set_journal_fields(**fields: object) -> None:
    """Set (or with None, drop) this process's own journal fields, e.g.
    ``set_journal_fields(SITE="midori", DEVICE="counter-3", COUNTER="3")``."""
    for key, value in fields.items():
        if key not in FIELDS:
            raise ValueError(f"unknown journal field {key!r}: one of {', '.join(FIELDS)}")
        if value is None:
            PROCESS_FIELDS.fields.pop(key, None)
        else:
            PROCESS_FIELDS.fields[key] = str(value)


def stderr_is_journal(environ: dict[str, str] | os._Environ | None = None) -> bool:
    """Whether our stderr is the journal stream systemd gave us.

    ``JOURNAL_STREAM`` is ``device:inode`` of that stream (systemd.exec(5));
    it is inherited by children whose stderr goes elsewhere, so it only
    counts when it names our own stderr."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(part) for part in value.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def journal_handler(identifier: str, *, sender: Callable[..., object] | None = None) -> logging.Handler | None:
    """A JournalHandler for this process (SYSLOG_IDENTIFIER ``identifier``,
    the process's fields added), or None without systemd-python.  ``sender``
    replaces ``systemd.journal.send`` (its documented ``sender_function``)."""
    if _sd_journal is None:
        return None
    kwargs = {} if sender is None else {"sender_function": sender}
    handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER=identifier, **kwargs)
    # journald stamps the time and keeps the level as PRIORITY, the logger as LOGGER.
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(PROCESS_FIELDS)
    return handler


def setup_logging(level: int, *, target: str = "auto", identifier: str = "madoguchi") -> str:
    """Configure the root logger; returns where the log goes ("journal" or
    "console").  ``target``: "auto" (the journal when stderr is the journal's
    stream), "journal" or "console"."""
    if target not in ("auto", "journal", "console"):
        raise ValueError(f"unknown log target {target!r}")
    want = target == "journal" or (target == "auto" and stderr_is_journal())
    handler = None
    problem = None
    if want:
        if _sd_journal is None:
            problem = "systemd-python is not installed"
        elif not JOURNAL_SOCKET.exists():
            problem = f"journald does not listen on {JOURNAL_SOCKET}"
        else:
            handler = journal_handler(identifier)
    if handler is not None:
        logging.basicConfig(level=level, handlers=[handler], force=True)
        return "journal"
    logging.basicConfig(level=level, format=CONSOLE_FORMAT, datefmt=CONSOLE_DATEFMT)
    if problem and target == "journal":
        logger.warning("logging to stderr, not the journal: %s", problem)
    return "console"
