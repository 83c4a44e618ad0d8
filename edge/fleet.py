"""IT requests to this device: the device side of the fleet manager
(issue #7; docs/fleet.md, docs/mqtt-api.md).

Central and IT admins publish a :class:`bus.models.Request` on
``device/<me>/req/<method>`` with the MQTT v5 ResponseTopic and
CorrelationData properties; this module answers with a
:class:`bus.models.Response` on that response topic.  The device is the
authority on its own requests:

* A request is refused with a reason (``Response.code``), counted and logged,
  and nothing is done when it is too large (:data:`MAX_REQUEST_BYTES`), not
  JSON or not a request, for an unknown method, expired or stamped in the
  future, or has a ``request_id`` seen before.  Seen ids are written to a
  small SQLite file next to the payment journal *before* anything is done, so
  a replay after a restart of the daemon is refused too.
* A request without a response topic under this device's own ``res/`` tree
  is not answered and not executed (the broker's ACL only lets a device write
  its own topics; an answer elsewhere would be lost or refused).
* ``set-config`` validates the new TOML with the daemon's own config model,
  never changes who the device is (id, site, role), writes it atomically
  (temp file + fsync + rename, the previous file kept as ``.bak``), checks the
  written file and puts the old one back if anything fails.  The running
  config is untouched: the answer says which keys changed and that a restart
  applies them.
* ``restart`` exits the daemon with :data:`EXIT_RESTART` so systemd starts it
  again; refused while a payment is at the terminal or its outcome is
  unknown, unless ``force`` is true.

Everything runs on the daemon's loop; printing a status ticket runs in one
worker thread (the printer driver has its own lock, so it may share the
printer with the receipt spool).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import sqlite3
import ssl
import stat
import threading
import tomllib
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from bus import PayloadError, decode, encode
from bus.codec import describe
from bus.configfile import ConfigError, digest, parse_toml
from bus.models import MAX_REQUEST_BYTES, REQUEST_METHODS, Request, Response, utcnow
from bus.sdnotify import (
    EXIT_RESTART,  # 75, EX_TEMPFAIL: systemd starts the daemon again (docs/systemd.md)
)
from bus.sqlitedb import Database, DatabaseError
from bus.tls import client_context
from bus.topics import TopicError, Topics, parse

logger = logging.getLogger(__name__)

#: How long an answer waits at the broker for its requester (MQTT message expiry).
ANSWER_EXPIRY_S = 60
#: A request stamped further ahead of our clock than this is refused.
MAX_SKEW = timedelta(seconds=60)
#: Seen request ids are kept this long (far beyond any request's life).
SEEN_KEEP = timedelta(days=1)
#: Log lines kept in memory for ``logs``, the longest line, the answer's budget.
LOG_LINES_KEPT = 1000
LOG_LINE_MAX = 300
LOGS_ANSWER_BYTES = 48 * 1024
#: A secret in a config file is shown and sent as this; sending it back keeps the current value.
MASK = "********"
_SECRET_LINE = re.compile(r'^(\s*)(password|secret|token)(\s*=\s*)(.*)$')
_TABLE_LINE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")

SEEN_SCHEMA = [
    """
    CREATE TABLE seen_requests (
        request_id TEXT PRIMARY KEY,
        method TEXT NOT NULL,
        requested_by TEXT NOT NULL,
        seen_at TEXT NOT NULL
    );
    CREATE INDEX seen_requests_by_time ON seen_requests (seen_at);
    """,
]


class Refused(Exception):
    """A request this device will not (or could not) carry out."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------ params per method


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoParams(_Params):
    pass


class SetConfigParams(_Params):
    #: The whole new config file (TOML).
    config: str = Field(min_length=1, max_length=MAX_REQUEST_BYTES)


class RestartParams(_Params):
    #: Restart even while a payment is at the terminal or unknown (audited).
    force: bool = False


class IdentifyParams(_Params):
    #: How long the display flashes.
    seconds: int = Field(default=10, ge=1, le=60)


class LogsParams(_Params):
    #: How many of the last log lines.
    lines: int = Field(default=50, ge=1, le=500)


PARAMS: dict[str, type[_Params]] = {
    "get-config": NoParams,
    "set-config": SetConfigParams,
    "restart": RestartParams,
    "status-ticket": NoParams,
    "identify": IdentifyParams,
    "logs": LogsParams,
}
assert set(PARAMS) == set(REQUEST_METHODS)


# ------------------------------------------------------------------ the last log lines


class RingLog(logging.Handler):
    """The last :data:`LOG_LINES_KEPT` log lines of this process, in memory
    (for ``logs``).  Bounded in count and line length.  Our logs carry no
    personal data and no card data (style.md); this keeps it that way only as
    long as nobody logs such things."""

    def __init__(self, capacity: int = LOG_LINES_KEPT) -> None:
        super().__init__(level=logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._users = 0
        self._install_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record).replace("\n", " | ")
        except Exception:  # noqa: BLE001 - a bad log call must not break the caller
            self.handleError(record)
            return
        self.lines.append(line[:LOG_LINE_MAX])

    def last(self, n: int) -> list[str]:
        return list(self.lines)[-n:]

    def install(self) -> None:
        """Attach to the root logger (once per process, however many daemons)."""
        with self._install_lock:
            if self._users == 0:
                logging.getLogger().addHandler(self)
            self._users += 1

    def uninstall(self) -> None:
        with self._install_lock:
            self._users = max(0, self._users - 1)
            if self._users == 0:
                logging.getLogger().removeHandler(self)


#: One ring per process.
RING = RingLog()


# ------------------------------------------------------------------ seen request ids


class SeenRequests(Database):
    """Request ids already seen (SQLite, ``synchronous=FULL``): a replay is
    refused, also after a restart."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SEEN_SCHEMA)
        self._added = 0

    def remember(self, request: Request, method: str, now: datetime) -> bool:
        """Record ``request``; False if its id was seen before."""
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO seen_requests (request_id, method, requested_by, seen_at) VALUES (?, ?, ?, ?)",
                (str(request.request_id), method, request.requested_by, now.astimezone(UTC).isoformat()),
            )
            fresh = cur.rowcount == 1
            self._added += 1
            if self._added % 100 == 1:
                cutoff = (now - SEEN_KEEP).astimezone(UTC).isoformat()
                conn.execute("DELETE FROM seen_requests WHERE seen_at < ?", (cutoff,))
        return fresh

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM seen_requests").fetchone()[0]


# ------------------------------------------------------------------ config files


def mask_secrets(text: str) -> str:
    """``password = "..."`` (and ``secret``, ``token``) lines → ``password = "********"``."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _SECRET_LINE.match(line)
        if m:
            end = "\n" if line.endswith("\n") else ""
            line = f'{m.group(1)}{m.group(2)}{m.group(3)}"{MASK}"{end}'
        out.append(line)
    return "".join(out)


def _secret_lines(text: str) -> dict[tuple[str, str], str]:
    """(table, key) → the whole line, for every secret line of ``text``."""
    table = ""
    found: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        t = _TABLE_LINE.match(line)
        if t:
            table = t.group(1).replace(" ", "")
            continue
        m = _SECRET_LINE.match(line)
        if m:
            found[(table, m.group(2))] = line
    return found


def unmask_secrets(new: str, current: str) -> str:
    """Put the current secret back where ``new`` says ``"********"``.

    Raises :class:`Refused` for a masked secret the current file does not have.
    """
    current_lines = _secret_lines(current)
    table = ""
    out = []
    for line in new.splitlines(keepends=True):
        t = _TABLE_LINE.match(line)
        if t:
            table = t.group(1).replace(" ", "")
        m = _SECRET_LINE.match(line)
        if m and m.group(4).strip().split("#")[0].strip() in (f'"{MASK}"', f"'{MASK}'"):
            kept = current_lines.get((table, m.group(2)))
            if kept is None:
                where = f"[{table}] {m.group(2)}" if table else m.group(2)
                raise Refused("invalid_config", f"{where}: {MASK} keeps the current value, but there is none; write the value")
            line = kept + ("\n" if line.endswith("\n") else "")
        out.append(line)
    return "".join(out)


#: Where each secret goes: a masked secret ("********" in a set-config) keeps
#: its value only while all of these stay the same.  Otherwise the secret
#: would be sent, after the restart, to a host the requester chose without
#: ever knowing it.  Send the secret in clear to change where it goes.
SECRET_DESTINATIONS: dict[str, tuple[str, ...]] = {
    "mqtt.password": ("mqtt.host", "mqtt.port", "mqtt.username", "mqtt.tls"),
    "kiosk.token": ("kiosk.central_url",),
    "terminal.password": ("terminal.driver", "terminal.port"),
}
#: Keys that never change over the bus (refused as ``local_only``; who the
#: device is, ``device.id/site/role``, is refused as ``invalid_config``): the
#: commands it runs, where its journals and keys are.  A
#: command or a file path chosen from afar would run code on the Pi or read
#: its secrets; these are changed on the Pi itself (docs/fleet.md).
LOCAL_ONLY = ("voice.player", "payments.journal", "kiosk.journal", "printer.fake_dir", "mqtt.tls")
_SECRET_NAMES = frozenset({"password", "secret", "token"})


def _is_secret(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _SECRET_NAMES


def _toml_flat(text: str) -> dict[str, Any] | None:
    """The parsed TOML as dotted keys (None when it does not parse)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return None

    def walk(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, dict):
            flat: dict[str, Any] = {}
            for k, v in value.items():
                flat.update(walk(v, f"{prefix}.{k}" if prefix else k))
            return flat
        return {prefix: value}

    return walk(data, "")


def masked_config(text: str) -> str:
    """``text`` with every secret shown as ``"********"``, checked on the
    parsed TOML: the mask works on ``key = "..."`` lines, so a secret written
    any other way (a multi-line string, an inline table, a dotted or quoted
    key) would slip through.  Such a file is refused (``unmaskable``), never
    sent."""
    masked = mask_secrets(text)
    before, after = _toml_flat(text), _toml_flat(masked)
    if before is None:
        raise Refused("unmaskable", "the config file on the device is not valid TOML; it is not sent")
    if after is None or after.keys() != before.keys() or any(
            (after[k] != MASK) if _is_secret(k) else (after[k] != before[k]) for k in before):
        raise Refused("unmaskable", "a secret in the config file is not written as `password = \"...\"` on a line "
                                    "of its own in its table, so it cannot be hidden; it is not sent. Fix the file on the Pi")
    return masked


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, BaseModel):
        value = {k: getattr(value, k) for k in type(value).model_fields}
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            key = getattr(k, "value", k)
            flat.update(_flatten(v, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    elif isinstance(value, Path):
        value = str(value)
    return {prefix: value}


def _differing(old: dict[str, Any], new: dict[str, Any], prefix: str) -> list[str]:
    """The dotted keys at or under ``prefix`` whose values differ (flattened configs)."""
    return sorted(k for k in old.keys() | new.keys()
                  if (k == prefix or k.startswith(prefix + ".")) and old.get(k) != new.get(k))


def changed_keys(old: BaseModel, new: BaseModel) -> list[str]:
    """The dotted keys whose (validated) values differ, defaults included."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, None) != b.get(k, None) or (k in a) != (k in b))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes, *, like: os.stat_result | None = None) -> None:
    """Write ``path`` atomically: a temp file beside it, fsync, rename, fsync the folder.

    ``like``: the stat of the file being replaced; the new file gets its
    permission bits (an edge.toml holding the broker password stays 0640,
    whatever the daemon's umask) and, where allowed, its group."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    mode = stat.S_IMODE(like.st_mode) if like is not None else 0o600
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with open(fd, "wb") as f:
            os.fchmod(fd, mode)  # not narrowed by the umask
            if like is not None and like.st_gid != os.getegid():
                try:
                    os.fchown(fd, -1, like.st_gid)
                except OSError:  # not a member of that group: the folder's group it is
                    pass
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def write_config(path: Path, new: bytes, model: type[BaseModel]) -> None:
    """Replace the config file at ``path`` with ``new`` (already validated):
    the previous file is kept as ``<name>.bak``; the written file is read back
    and validated, and the previous one restored if anything fails.

    Raises :class:`Refused` (``write_failed``) with what went wrong; the file
    is then what it was.
    """
    old = path.read_bytes()
    like = path.stat()
    backup = path.with_name(path.name + ".bak")
    try:
        _write_durably(backup, old, like=like)
        _write_durably(path, new, like=like)
        written = path.read_bytes()
        if written != new:
            raise OSError("the file read back differs from what was written")
        parse_toml(written, model, source=str(path))
    except (OSError, ConfigError) as exc:
        try:
            if path.read_bytes() != old:
                _write_durably(path, old, like=like)
        except OSError as again:
            logger.error("config %s: rollback failed: %s (the previous file is %s)", path, again, backup)
            raise Refused("write_failed", f"writing the config failed ({exc}) and so did restoring it ({again}); "
                                          f"the previous file is {backup.name}") from exc
        raise Refused("write_failed", f"writing the config failed, the previous file is back: {exc}") from exc


# ------------------------------------------------------------------ the device side


class EdgeFleet:
    """Answers IT requests for one device.

    Hooks (all optional but ``device``/``topics``/``seen``):

    ``session``: has ``connected`` and ``publish_raw(topic, payload, qos=, expiry_s=, correlation=)``;
    ``config_path``/``config``/``config_model``: the running config and its file (get/set-config);
    ``describe()``: this device's :class:`bus.models.Info` (status ticket);
    ``display``: a drivers.display Display (identify);
    ``printer``: a drivers.printer Printer (status ticket);
    ``restart_blocker()``: why a restart would hurt now (a payment), or None;
    ``restart()``: make the daemon exit with :data:`EXIT_RESTART`;
    ``clock()``: the time to judge expiry by (central's clock as this Pi sees it).
    """

    def __init__(
        self,
        *,
        device: str,
        topics: Topics,
        seen: SeenRequests,
        session: Any = None,
        config_path: Path | None = None,
        config: BaseModel | None = None,
        config_model: type[BaseModel] | None = None,
        describe: Callable[[], Any] | None = None,
        display: Any = None,
        printer: Any = None,
        restart_blocker: Callable[[], str | None] = lambda: None,
        restart: Callable[[], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        ring: RingLog = RING,
    ) -> None:
        self.device = device
        self.topics = topics
        self.seen = seen
        self.session = session
        self.config_path = Path(config_path) if config_path else None
        self.config = config
        self.config_model = config_model or (type(config) if config is not None else None)
        self.describe = describe
        self.display = display
        self.printer = printer
        self.restart_blocker = restart_blocker
        self.restart = restart
        self.clock = clock
        self.ring = ring
        self.stats: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task] = set()
        self._identify: asyncio.Task | None = None
        self._restarting = False

    @classmethod
    def for_daemon(cls, daemon: Any, **overrides: Any) -> EdgeFleet:
        """The fleet of an :class:`edge.app.EdgeDaemon` of any role: what it
        has (display, printer, payments, the counter's clock) is used; what
        it lacks answers ``not_supported``.  The seen-ids file lives beside
        the payment journal."""
        cfg = daemon.config
        # The seen-ids file lives beside the role's own journal: the kiosk's
        # ticket journal, else the payment journal (also the lobby's state dir).
        kiosk = getattr(cfg, "kiosk", None)
        journal_path = Path(kiosk.journal if cfg.device.role == "kiosk" and kiosk is not None else cfg.payments.journal)
        payments = getattr(daemon, "payments", None)
        journal = getattr(daemon, "journal", None)
        role = getattr(daemon, "role", None)

        def blocker() -> str | None:
            busy = getattr(payments, "busy", None) if payments is not None else None
            if busy:
                return f"payment {busy} is at the terminal now"
            if journal is not None:
                open_ = journal.in_state("pending", "unknown")
                if open_:
                    states = ", ".join(sorted({p.state for p in open_}))
                    return f"{len(open_)} payment(s) {states} (処理中/処理未了)"
            return None

        kwargs: dict[str, Any] = {
            "device": cfg.device.id,
            "topics": daemon.topics,
            "seen": SeenRequests(journal_path.with_name(journal_path.stem + "-requests.db")),
            "session": daemon.session,
            "config_path": getattr(daemon, "config_path", None),
            "config": cfg,
            "describe": daemon._info,
            "display": getattr(daemon, "display", None),
            "printer": getattr(daemon, "printer", None),
            "restart_blocker": blocker,
            "restart": getattr(daemon, "request_restart", None),
            "clock": role.clock.now if role is not None and hasattr(role, "clock") else utcnow,
        }
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def subscription(self) -> str:
        """The topic filter the daemon subscribes to for this device's requests."""
        return self.topics.device_requests(self.device)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fleet-{self.device}")
        self.ring.install()

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._loop is not None:
            self.ring.uninstall()
            self._loop = None
        self.seen.close()

    # ------------------------------------------------------------ in
    def on_message(self, msg: Any) -> bool:
        """Handle ``msg`` if it is a request to this device; False otherwise."""
        try:
            parts = parse(msg.topic)
        except TopicError:
            return False
        if parts.channel != "req" or parts.device != self.device:
            return False
        self._handle(parts.name, msg)
        return True

    def _refuse_silently(self, code: str, method: str, detail: str) -> None:
        self.stats[f"refused_{code}"] += 1
        logger.warning("%s: request %s not answered: %s", self.device, method, detail)

    def _handle(self, method: str, msg: Any) -> None:
        answer_to = getattr(msg, "response_topic", None)
        if not answer_to:
            self._refuse_silently("no_response_topic", method, "it has no response topic")
            return
        try:
            target = parse(answer_to)
        except TopicError:
            target = None
        if target is None or target.channel != "res" or target.device != self.device or target.site != self.topics.site:
            self._refuse_silently("bad_response_topic", method, f"response topic {answer_to[:120]!r} is not under this device's res/")
            return
        correlation = getattr(msg, "correlation", None)
        payload = msg.payload
        if len(payload) > MAX_REQUEST_BYTES:
            self._refuse(answer_to, correlation, None, method, "too_large",
                         f"request of {len(payload)} bytes, the limit is {MAX_REQUEST_BYTES}")
            return
        try:
            request = decode(Request, payload, max_bytes=MAX_REQUEST_BYTES)
        except PayloadError as exc:
            self._refuse(answer_to, correlation, _request_id_of(payload), method, exc.reason, exc.detail)
            return
        now = self.clock()
        try:
            fresh = self.seen.remember(request, method, now)
        except (DatabaseError, sqlite3.Error) as exc:  # a full disk, a broken file: answered, not lost
            logger.error("%s: cannot record request %s: %s", self.device, request.request_id, exc)
            self._refuse(answer_to, correlation, request.request_id, method, "internal", "cannot record the request id")
            return
        rid = request.request_id
        if not fresh:
            self._refuse(answer_to, correlation, rid, method, "replayed", f"request id {rid} was seen before: not done again")
            return
        if request.expires_at <= now:
            late = (now - request.expires_at).total_seconds()
            self._refuse(answer_to, correlation, rid, method, "expired", f"the request expired {late:.1f} s ago")
            return
        if request.issued_at - now > MAX_SKEW:
            ahead = (request.issued_at - now).total_seconds()
            self._refuse(answer_to, correlation, rid, method, "not_yet_valid",
                         f"issued {ahead:.0f} s ahead of this device's clock (check NTP)")
            return
        if method not in PARAMS:
            self._refuse(answer_to, correlation, rid, method, "unknown_method",
                         f"unknown method {method!r}; this device answers {', '.join(REQUEST_METHODS)}")
            return
        try:
            params = PARAMS[method].model_validate(dict(request.params))
        except ValidationError as exc:
            self._refuse(answer_to, correlation, rid, method, "invalid_params", describe(exc))
            return
        logger.info("%s: request %s %s by %s", self.device, method, rid, request.requested_by)
        task = asyncio.get_running_loop().create_task(
            self._run(method, params, request, answer_to, correlation), name=f"fleet-{self.device}-{method}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, method: str, params: _Params, request: Request, answer_to: str, correlation: bytes | None) -> None:
        handler = {
            "get-config": self._get_config,
            "set-config": self._set_config,
            "restart": self._restart,
            "status-ticket": self._status_ticket,
            "identify": self._identify_on,
            "logs": self._logs,
        }[method]
        try:
            data = await handler(params, request)
        except Refused as exc:
            self._refuse(answer_to, correlation, request.request_id, method, exc.code, exc.message)
            return
        except Exception as exc:  # one bad handler must not stop the daemon
            logger.exception("%s: request %s failed", self.device, method)
            self._refuse(answer_to, correlation, request.request_id, method, "internal", f"{type(exc).__name__}: {exc}"[:300])
            return
        self.stats[f"ok_{method}"] += 1
        self._answer(answer_to, correlation, Response(request_id=request.request_id, method=method, status="ok", data=data))
        if method == "restart":
            # Give the answer a moment on the wire, then go (systemd brings us back).
            asyncio.get_running_loop().call_later(0.3, self.restart)

    # ------------------------------------------------------------ out
    def _refuse(self, answer_to: str, correlation: bytes | None, rid: uuid.UUID | None, method: str, code: str,
                message: str) -> None:
        self.stats[f"refused_{code}"] += 1
        logger.warning("%s: request %s %s refused: %s: %s", self.device, method, rid or "(unreadable)", code, message[:300])
        self._answer(answer_to, correlation, Response(request_id=rid, method=method[:32], status="error", code=code,
                                                      error=message[:500]))

    def _answer(self, topic: str, correlation: bytes | None, response: Response) -> None:
        if self.session is None or not self.session.publish_raw(
                topic, encode(response), qos=1, expiry_s=ANSWER_EXPIRY_S, correlation=correlation):
            logger.warning("%s: answer to %s not sent (no broker)", self.device, response.request_id)

    # ------------------------------------------------------------ methods
    def _need_config(self) -> tuple[Path, BaseModel, type[BaseModel]]:
        if self.config_path is None or self.config is None or self.config_model is None:
            raise Refused("not_supported", "this daemon was not started from a config file")
        return self.config_path, self.config, self.config_model

    async def _get_config(self, params: NoParams, request: Request) -> dict[str, Any]:
        path, _, _ = self._need_config()
        raw = path.read_bytes()
        running = self.describe().config_hash if self.describe else None
        return {
            "path": str(path),
            "config": masked_config(raw.decode("utf-8", "replace")),
            "file_hash": digest(raw),
            "running_hash": running,
            # The file differs from what runs: a set-config waits for a restart.
            "restart_pending": running is not None and digest(raw) != running,
        }

    async def _set_config(self, params: SetConfigParams, request: Request) -> dict[str, Any]:
        path, running, model = self._need_config()
        current = path.read_bytes().decode("utf-8", "replace")
        given = _toml_flat(params.config)
        if given is None:
            try:
                parse_toml(params.config.encode("utf-8"), model, source="the new config")
            except ConfigError as exc:
                raise Refused("invalid_config", str(exc)) from None
            raise Refused("invalid_config", "the new config is not valid TOML")
        kept = sorted(k for k, v in given.items() if _is_secret(k) and v == MASK)
        text = unmask_secrets(params.config, current)
        # Unmasking may only have put the kept secrets back, nothing else: a
        # masked line moved into another value (a multi-line string, say)
        # would carry the secret there, to a log or a health message.
        result = _toml_flat(text)
        if result is None or result.keys() != given.keys() or any(
                result[k] != given[k] for k in given if k not in kept) or any(result[k] == MASK for k in kept):
            raise Refused("invalid_config", f'a "{MASK}" may only stand for a secret as `password = "{MASK}"` '
                                            "on a line of its own in its table")
        raw = text.encode("utf-8")
        try:
            new = parse_toml(raw, model, source="the new config")
        except ConfigError as exc:
            raise Refused("invalid_config", str(exc)) from None
        for key in ("id", "site", "role"):
            if getattr(new.device, key) != getattr(running.device, key):
                raise Refused("invalid_config", f"device.{key} cannot change over the bus "
                                                f"({getattr(running.device, key)!r} → {getattr(new.device, key)!r})")
        old_flat, new_flat = _flatten(running), _flatten(new)
        moved = [k for prefix in LOCAL_ONLY for k in _differing(old_flat, new_flat, prefix)]
        if moved:
            raise Refused("local_only", f"{', '.join(moved)} cannot change over the bus (change it on the Pi)")
        for secret in kept:
            moved = [d for d in SECRET_DESTINATIONS.get(secret, ()) if _differing(old_flat, new_flat, d)]
            if moved:
                raise Refused("secret_destination_changed",
                              f'{secret} is kept ("{MASK}") but {", ".join(moved)} changed: write the secret in clear '
                              "to send it somewhere else")
        if new.mqtt.tls is not None:
            try:  # a TLS setting that cannot work would cut the device off the bus after the restart
                client_context(new.mqtt.tls)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise Refused("invalid_config", f"[mqtt.tls]: {exc}") from None
        # Secrets are never compared with the running ones (that would tell a
        # guess from the truth): one written in clear is reported as changed.
        changed = sorted({k for k in changed_keys(running, new) if not _is_secret(k)}
                         | {k for k in given if _is_secret(k) and k not in kept})
        if raw == path.read_bytes():
            written = False
        else:
            # fsync and rename in the fleet's worker: the loop keeps serving buttons
            await asyncio.get_running_loop().run_in_executor(self._pool, write_config, path, raw, model)
            written = True
        logger.info("%s: config %s by %s (%s); changed: %s", self.device, "written" if written else "unchanged",
                    request.requested_by, digest(raw), ", ".join(changed) or "nothing")
        return {
            "written": written,
            "config_hash": digest(raw),
            "changed": changed,
            "restart_needed": bool(changed),
            "backup": path.name + ".bak" if written else None,
        }

    async def _restart(self, params: RestartParams, request: Request) -> dict[str, Any]:
        if self.restart is None:
            raise Refused("not_supported", "this daemon cannot restart itself")
        if self._restarting:
            raise Refused("busy", "a restart is already under way")
        blocker = self.restart_blocker()
        if blocker and not params.force:
            raise Refused("payment_in_progress", f"not restarted: {blocker}; send force=true to restart anyway")
        if blocker:
            logger.warning("%s: forced restart by %s while %s", self.device, request.requested_by, blocker)
        self._restarting = True
        return {"restarting": True, "exit_code": EXIT_RESTART, "forced": bool(params.force), "blocker": blocker}

    async def _status_ticket(self, params: NoParams, request: Request) -> dict[str, Any]:
        if self.printer is None or self._pool is None:
            raise Refused("not_supported", "this device has no printer")
        from drivers.printer import PrinterError, PrinterNotReady, receipts

        info = self.describe() if self.describe else None
        extra = {}
        if info is not None:
            extra = {"Role": info.role.value, "Counter": info.counter or "-", "Config": info.config_hash,
                     "Boot": info.boot_id}
        doc = receipts.status_ticket(
            device_id=self.device, ip=(info.ip if info else None) or "-", version=info.version if info else "-",
            at=datetime.now().astimezone().replace(tzinfo=None), extra=extra,
        )
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self.printer.print, doc)
        except PrinterNotReady as exc:
            raise Refused("printer_not_ready", f"printer not ready ({exc.reason}); nothing was printed") from None
        except PrinterError as exc:
            raise Refused("print_failed", f"printing failed: {exc}") from None
        return {"printed": True}

    async def _identify_on(self, params: IdentifyParams, request: Request) -> dict[str, Any]:
        if self.display is None:
            raise Refused("not_supported", "this device has no display")
        from drivers.display import DisplayError, Screen

        base = self.display.current
        flash = [
            Screen(mode="notice", counter_ja=getattr(base, "counter_ja", ""), counter_en=getattr(base, "counter_en", ""),
                   text_ja="この機器です", text_en=f"This is {self.device}"),
            Screen(mode="notice", counter_ja=getattr(base, "counter_ja", ""), counter_en=getattr(base, "counter_en", ""),
                   text_ja=f"■■■ {self.device} ■■■", text_en="Identify"),
        ]
        if self._identify is not None:
            self._identify.cancel()
        try:
            self.display.show(flash[0])
        except DisplayError as exc:
            raise Refused("display_error", str(exc)) from None
        self._identify = asyncio.get_running_loop().create_task(
            self._flash(flash, base, params.seconds), name=f"identify-{self.device}")
        return {"seconds": params.seconds}

    async def _flash(self, flash: list, base: Any, seconds: int) -> None:
        """Alternate the two identify screens every 0.5 s; then show what was
        there before — unless something else was shown meanwhile (central's
        next display command wins and ends the flashing)."""
        shown = flash[0]
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        i = 0
        while loop.time() < end:
            await asyncio.sleep(0.5)
            if self.display.current != shown:
                return
            i += 1
            shown = flash[i % 2]
            self.display.show(shown)
        if self.display.current == shown and base is not None:
            self.display.show(base)

    async def _logs(self, params: LogsParams, request: Request) -> dict[str, Any]:
        lines = self.ring.last(params.lines)
        truncated = False
        while lines and len(json.dumps(lines, ensure_ascii=False).encode()) > LOGS_ANSWER_BYTES:
            lines = lines[len(lines) // 4 or 1:]
            truncated = True
        return {"lines": lines, "truncated": truncated}


def _request_id_of(payload: bytes) -> uuid.UUID | None:
    """The request id of a request that did not validate, if it has a readable one (for the audit)."""
    try:
        data = json.loads(payload)
        return uuid.UUID(str(data["request_id"])) if isinstance(data, dict) else None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


__all__ = ["EXIT_RESTART", "RING", "EdgeFleet", "Refused", "RingLog", "SeenRequests", "mask_secrets"]
