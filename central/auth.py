"""Staff accounts, passwords, sessions, API tokens and who may use what
(issue #7 item 3; docs/security.md "Web login").

This module is the store side and the rules; the HTTP side (the login page,
the cookie, the check on every request) is central/auth_web.py and the
command is central/staff_cli.py (``madoguchi staff``).

* **Roles**: ``counter`` (窓口), ``accounting`` (会計), ``it`` (情報政策) log
  in with a password; ``kiosk`` has only an API token and may only issue
  tickets.  No role includes another: a person who needs two roles gets two
  accounts (least privilege; docs/security.md says why).
* **Passwords**: ``hashlib.scrypt`` with a random 16-byte salt; the cost
  parameters are stored with each hash (``scrypt$n=16384,r=8,p=5$salt$hash``),
  so :data:`DEFAULT_SCRYPT` can be raised later and old hashes still verify.
  A successful login re-hashes a password whose hash has other parameters
  than :data:`DEFAULT_SCRYPT` (with the password just verified).
* **Sessions and tokens**: ``secrets.token_urlsafe(32)``; only their SHA-256
  is stored.  A session ends after ``idle_timeout_s`` without a request and
  ``absolute_timeout_s`` after the login; disabling an account or changing
  its password ends its sessions at once (every request reads the database)
  and deletes its API token.
* **Audit**: ``login_audit`` is append-only (SQLite triggers).
* **Throttle**: failures per (account as typed, client address) and per
  client address within a window, counted from the audit (indexed); what it
  decided is remembered in memory (:class:`ThrottleMemory`), so a refused
  attempt touches no database and writes no audit row.

Everything here is synchronous and uses central's store from the calling
thread (central's event loop, or the CLI's only thread); only
:func:`verify_password` / :func:`hash_password` are meant to run in a worker
thread (scrypt takes a noticeable time on purpose).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import math
import re
import secrets
import sqlite3
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from central.config import AuthSettings

logger = logging.getLogger(__name__)

#: A login name is the staff id recorded on voids, day closes and IT
#: requests: lower-case letters, digits and "-", at most 20 characters (the
#: ledger's staff id is at most 20).  What a person types is lower-cased.
STAFF_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,19}$"
_STAFF_ID = re.compile(STAFF_ID_PATTERN)
STAFF_ROLES = ("counter", "accounting", "it")
KIOSK = "kiosk"
ROLES = (*STAFF_ROLES, KIOSK)
ROLE_JA = {"counter": "窓口", "accounting": "会計", "it": "情報政策", "kiosk": "発券機"}
MIN_PASSWORD = 8
MAX_PASSWORD = 256
MAX_NAME = 40

#: Who may use a route without logging in.
PUBLIC = "public"


# ============================================================================ passwords


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: ``n`` (CPU/memory, a power of 2), ``r`` (block size),
    ``p`` (parallelism).  Memory ≈ 128·n·r bytes."""

    n: int = 2**14
    r: int = 8
    p: int = 5

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or not (1 <= self.r <= 64) or not (1 <= self.p <= 64):
            raise ValueError(f"bad scrypt parameters {self}")

    @property
    def maxmem(self) -> int:
        return 128 * self.n * self.r * 2 + (1 << 20)


#: OWASP's password storage advice lists n=2^14, r=8, p=5 as one of the
#: equivalent minimum settings: 16 MiB per hash, about 0.2 s on the
#: development machine (docs/security.md).  Raise it here; hashes made with
#: the old value keep working because each carries its own parameters.
DEFAULT_SCRYPT = ScryptParams()
_DKLEN = 32


def hash_password(password: str, params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """``scrypt$n=…,r=…,p=…$<salt>$<hash>`` (base64url, no padding)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=params.n, r=params.r, p=params.p,
                            maxmem=params.maxmem, dklen=_DKLEN)
    return f"scrypt$n={params.n},r={params.r},p={params.p}${_b64(salt)}${_b64(digest)}"


def parse_hash(stored: str) -> tuple[ScryptParams, bytes, bytes]:
    """Raises ValueError for anything that is not one of our hashes."""
    scheme, params, salt, digest = stored.split("$")
    if scheme != "scrypt":
        raise ValueError(f"unknown password hash scheme {scheme[:10]!r}")
    values = dict(item.split("=", 1) for item in params.split(","))
    if set(values) != {"n", "r", "p"}:
        raise ValueError("scrypt parameters must be n, r, p")
    p = ScryptParams(n=int(values["n"]), r=int(values["r"]), p=int(values["p"]))
    if p.n > 2**20 or p.r * p.p > 256:  # a hash that would take minutes is not ours
        raise ValueError("scrypt parameters out of range")
    return p, _unb64(salt), _unb64(digest)


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``.  ``None`` (no such account, or
    an account without a password) is checked against a dummy hash so that
    the answer takes as long as for a real account."""
    if stored is None:
        stored, real = _DUMMY, False
    else:
        real = True
    try:
        params, salt, expected = parse_hash(stored)
    except ValueError:
        logger.error("a stored password hash is not readable; that account cannot log in")
        return False
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=params.n, r=params.r, p=params.p,
                            maxmem=params.maxmem, dklen=len(expected))
    return hmac.compare_digest(digest, expected) and real


def needs_rehash(stored: str | None, params: ScryptParams = DEFAULT_SCRYPT) -> bool:
    """Whether a stored hash should be made again with ``params`` (at the
    next successful login, with the password just verified)."""
    if stored is None:
        return False
    try:
        return parse_hash(stored)[0] != params
    except ValueError:
        return False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


#: What an unknown account's password is checked against: the default
#: parameters, a random salt and random bytes as the "hash" (no password
#: gives them).  Made when this module is imported, at central's start-up,
#: and without running scrypt: made lazily, the first unknown login paid for
#: a second scrypt and took twice as long as a real account's.
_DUMMY = f"scrypt$n={DEFAULT_SCRYPT.n},r={DEFAULT_SCRYPT.r},p={DEFAULT_SCRYPT.p}$" \
         f"{_b64(secrets.token_bytes(16))}${_b64(secrets.token_bytes(_DKLEN))}"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A session or API token: 32 random bytes, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


# ============================================================================ checks


class AuthError(Exception):
    """An account operation refused; ``ja``/``en`` say why (for a person)."""

    def __init__(self, code: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.code, self.ja, self.en = code, ja, en


def normalize_login(text: str) -> str:
    """What a person typed as their login: trimmed and lower-cased."""
    return text.strip().lower()


def is_staff_id(text: str | None) -> bool:
    return text is not None and _STAFF_ID.fullmatch(text) is not None


def loggable_login(login: str | None) -> str:
    """A login as typed, for a log line or a message: itself when it is a
    well-formed staff id, else "(malformed id)" — people type their password
    into the id field, and a typed newline must not forge a log line."""
    return login if is_staff_id(login) else "(malformed id)"


def loggable_client(client: str | None) -> str:
    """A client address for a log line (it may come from a proxy's header)."""
    return client if client is not None and re.fullmatch(r"[0-9A-Za-z.:%_-]{1,64}", client) else "(unknown)"


def check_staff_id(staff_id: str) -> str:
    if not _STAFF_ID.fullmatch(staff_id):
        raise AuthError("invalid", f"職員IDは英小文字・数字・ハイフンで20文字までです: {staff_id[:24]!r}",
                        f"a staff id is lower-case letters, digits and '-', at most 20: {staff_id[:24]!r}")
    return staff_id


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AuthError("invalid", f"役割は {', '.join(ROLES)} のいずれかです", f"role must be one of {', '.join(ROLES)}")
    return role


def check_name(name: str) -> str:
    if not (1 <= len(name) <= MAX_NAME) or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise AuthError("invalid", f"表示名は{MAX_NAME}文字まで（制御文字なし）です", f"a display name is 1-{MAX_NAME} printable characters")
    return name


def check_password(password: str, staff_id: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AuthError("weak_password", f"パスワードは{MIN_PASSWORD}文字以上にしてください",
                        f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AuthError("invalid", f"パスワードは{MAX_PASSWORD}文字までです", f"a password has at most {MAX_PASSWORD} characters")
    if password.strip().lower() == staff_id:
        raise AuthError("weak_password", "職員IDと同じパスワードは使えません", "the password must not be the staff id")
    return password


def safe_next(value: str | None) -> str | None:
    """``next=`` only if it is a path on this site: starts with one "/" (not
    "//", which a browser reads as another host), has no backslash (browsers
    read "/\\\\host" as "//host") and no control characters."""
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return None
    if "\\" in value or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return None
    return value


# ============================================================================ who may use what

_C = frozenset({"counter"})
_A = frozenset({"accounting"})
_I = frozenset({"it"})
_CA = frozenset({"counter", "accounting"})
_STAFF = frozenset(STAFF_ROLES)
_ANYONE = frozenset({PUBLIC})

#: (method, route path as the app declares it) → who may use it.  Every route
#: of the app must be here: central/auth_web.py refuses one that is not
#: (fail closed), and tests/unit/test_auth.py walks ``app.routes`` so that a
#: new route cannot be left out by accident.  docs/security.md has the table.
ACCESS: dict[tuple[str, str], frozenset[str]] = {
    # public: what visitors and lobby screens see, the login itself
    ("GET", "/healthz"): _ANYONE,
    ("GET", "/api/v1/site"): _ANYONE,
    ("GET", "/openapi.json"): _ANYONE,
    ("GET", "/board"): _ANYONE,
    ("GET", "/api/v1/lobby"): _ANYONE,
    ("GET", "/api/v1/board"): _ANYONE,
    ("GET", "/t/{token:path}"): _ANYONE,
    ("GET", "/api/v1/visit/{token:path}"): _ANYONE,
    ("GET", "/login"): _ANYONE,
    ("POST", "/login"): _ANYONE,
    ("GET", "/logout"): _ANYONE,
    ("POST", "/logout"): _ANYONE,
    # every staff role: the overview page and what it reads, who am I
    ("GET", "/"): _STAFF,
    ("GET", "/api/v1/session"): _STAFF,
    ("GET", "/api/v1/counters"): _STAFF,
    ("GET", "/api/v1/tickets"): _STAFF,
    # counter staff: the console, the queue, payments
    ("GET", "/console"): _C,
    ("GET", "/console/{counter}"): _C,
    ("POST", "/api/v1/tickets"): frozenset({"counter", KIOSK}),
    ("GET", "/api/v1/tickets/{number}"): _C,
    ("POST", "/api/v1/tickets/{number}/stops"): _C,
    ("GET", "/api/v1/counters/{counter}"): _C,
    ("POST", "/api/v1/counters/{counter}/call"): _C,
    ("POST", "/api/v1/counters/{counter}/transfer"): _C,
    ("POST", "/api/v1/counters/{counter}/{action}"): _C,
    ("POST", "/api/v1/counters/{counter}/charges"): _C,
    ("POST", "/api/v1/payments/{payment_id}/{action}"): _C,
    ("GET", "/api/v1/payments"): _CA,
    ("GET", "/api/v1/payments/{payment_id}"): _CA,
    ("GET", "/api/v1/fees"): _CA,
    ("GET", "/api/v1/fees/{code}/flow"): _CA,
    ("GET", "/api/v1/stats"): _CA,
    # accounting: day close, KPIs, the statement matching
    ("GET", "/accounting/day"): _A,
    ("GET", "/accounting/day.csv"): _A,
    ("GET", "/accounting/day.xlsx"): _A,
    ("GET", "/accounting/kpi"): _A,
    ("GET", "/accounting/kpi.csv"): _A,
    ("GET", "/accounting/reconcile"): _A,
    ("GET", "/api/v1/accounting/days"): _A,
    ("GET", "/api/v1/accounting/days/{day}"): _A,
    ("POST", "/api/v1/accounting/days/{day}/close"): _A,
    ("GET", "/api/v1/accounting/days/{day}/adjustments"): _A,
    ("POST", "/api/v1/accounting/days/{day}/adjustments"): _A,
    ("GET", "/api/v1/accounting/days/{day}/verify"): _A,
    ("GET", "/api/v1/accounting/kpi"): _A,
    ("GET", "/api/v1/reconcile/{month}"): _A,
    ("GET", "/api/v1/reconcile/{month}/report.csv"): _A,
    # IT: the fleet
    ("GET", "/admin"): _I,
    ("GET", "/api/v1/fleet/devices"): _I,
    ("GET", "/api/v1/fleet/devices/{device}"): _I,
    ("POST", "/api/v1/fleet/devices/{device}/requests/{method}"): _I,
    ("GET", "/api/v1/fleet/audit"): _I,
    ("GET", "/api/v1/fleet/alerts"): _I,
    ("POST", "/api/v1/fleet/alerts/{alert_id}/ack"): _I,
}

#: Where a role lands after logging in without a ``next``.
HOME = {"counter": "/console", "accounting": "/accounting/day", "it": "/admin"}

_compiled: list[tuple[str, str, re.Pattern, frozenset[str]]] | None = None


def _table() -> list[tuple[str, str, re.Pattern, frozenset[str]]]:
    global _compiled
    if _compiled is None:
        from starlette.routing import compile_path

        _compiled = [(m, p, compile_path(p)[0], roles) for (m, p), roles in ACCESS.items()]
    return _compiled


def route_template(method: str, path: str) -> str:
    """The route of :data:`ACCESS` a concrete path matches (``/t/{token:path}``
    for ``/t/<a visitor's token>``), for log lines: a path can hold a
    visitor's ticket token, and anything a client typed.  "(no route)" when
    none matches."""
    method = "GET" if method.upper() == "HEAD" else method.upper()
    path = path.split("?", 1)[0]
    return next((p for m, p, regex, _ in _table() if m == method and regex.match(path)), "(no route)")


def allowed_roles(method: str, path: str) -> frozenset[str] | None:
    """Who may ``method`` ``path`` (a concrete path such as
    ``/api/v1/counters/1/call-next``) by :data:`ACCESS`, or None when no
    entry matches (central answers 404 without asking the router).

    Matched with Starlette's own path compiler, like the router, but without
    relying on the router's order: when several entries match (``…/call``
    and ``…/{action}``), only the roles that ALL of them allow are allowed.
    After routing, central/auth_web.py checks the route that was really
    picked once more."""
    method = "GET" if method.upper() == "HEAD" else method.upper()
    path = path.split("?", 1)[0]
    found: frozenset[str] | None = None
    for m, _, regex, roles in _table():
        if m == method and regex.match(path):
            found = roles if found is None else found & roles
    return found


# ============================================================================ the store


@dataclass(frozen=True)
class Staff:
    id: str
    name: str
    role: str
    disabled: bool
    has_password: bool
    has_token: bool
    created_at: str
    changed_at: str

    def public(self) -> dict:
        return {"id": self.id, "name": self.name, "role": self.role, "role_ja": ROLE_JA[self.role],
                "disabled": self.disabled, "has_password": self.has_password, "has_token": self.has_token,
                "created_at": self.created_at, "changed_at": self.changed_at}


@dataclass(frozen=True)
class Principal:
    """Who is asking: a logged-in browser (``via="session"``) or an API
    token (``via="token"``)."""

    staff_id: str
    name: str
    role: str
    via: str
    #: SHA-256 of the session token (a session only).
    session: str | None = None

    def public(self) -> dict:
        return {"staff_id": self.staff_id, "name": self.name, "role": self.role, "role_ja": ROLE_JA[self.role],
                "via": self.via}


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


#: Results that count as a failed login (for the throttle).
FAILURES = ("unknown_account", "no_password", "bad_password", "disabled")


@dataclass
class _Block:
    until: datetime
    what: str  # for the log: "k0107 from 10.0.0.5" / "10.0.0.5 (any account)"
    refused: int = 0


class ThrottleMemory:
    """What the login throttle decided, kept in memory so that an address
    that is refused stays refused without a database read or an audit row
    per attempt (a flood of logins must not write a row each, nor hold
    central's event loop with queries).

    Keys are ``("client", address)`` and ``("pair", login, address)``; each
    holds "refused until".  At most ``max_entries`` (then the ones that ended
    go first, then the oldest): when a key is dropped early the next attempt
    just asks the database again, which still knows — the memory is a cache
    of the audit, never the only record, so a restart loses nothing.

    Attempts refused from memory are counted per block and logged once when
    the block ends (:meth:`sweep`), and in :attr:`refused_total`.
    """

    def __init__(self, max_entries: int = 10_000) -> None:
        self.max_entries = max_entries
        self.refused_total = 0
        self._blocks: OrderedDict[tuple, _Block] = OrderedDict()
        self._next_sweep: datetime | None = None

    def __len__(self) -> int:
        return len(self._blocks)

    def wait(self, key: tuple, now: datetime) -> float:
        """Seconds ``key`` is still refused (0: not known to be), counting
        the attempt as refused when it is."""
        self.sweep(now)
        block = self._blocks.get(key)
        if block is None:
            return 0.0
        left = (block.until - now).total_seconds()
        if left <= 0:
            self._end(key)
            return 0.0
        block.refused += 1
        self.refused_total += 1
        return left

    def block(self, key: tuple, until: datetime, what: str, now: datetime) -> None:
        if key not in self._blocks and len(self._blocks) >= self.max_entries:
            self.sweep(now, force=True)
            while len(self._blocks) >= self.max_entries:
                self._end(next(iter(self._blocks)))
        self._blocks[key] = _Block(until, what)

    def sweep(self, now: datetime, *, force: bool = False) -> None:
        """Forget the blocks that ended (at most once a second unless forced)."""
        if not force and self._next_sweep is not None and now < self._next_sweep:
            return
        self._next_sweep = now + timedelta(seconds=1)
        for key in [k for k, b in self._blocks.items() if b.until <= now]:
            self._end(key)

    def _end(self, key: tuple) -> None:
        block = self._blocks.pop(key)
        if block.refused:
            logger.info("login throttle for %s over: %d more attempt(s) refused while it lasted (not audited one by one)",
                        block.what, block.refused)


class Accounts:
    """Staff accounts, sessions, tokens, audit and throttle on central's store.

    :param store: central's :class:`~central.store.Store` (schema 7).
    :param settings: ``[auth]`` of central.toml.
    :param clock: the time now (UTC); tests pass their own.
    :param hash_params: what new password hashes are made with, and what a
        successful login upgrades an older hash to (:data:`DEFAULT_SCRYPT`;
        unit tests pass cheaper ones).
    """

    def __init__(self, store, settings: AuthSettings | None = None, *,
                 clock: Callable[[], datetime] | None = None, hash_params: ScryptParams = DEFAULT_SCRYPT) -> None:
        self.store = store
        self.hash_params = hash_params
        self.settings = settings or AuthSettings()
        self.clock = clock or (lambda: datetime.now(UTC))
        self.throttled = ThrottleMemory()

    @property
    def now(self) -> datetime:
        return self.clock()

    # ------------------------------------------------------------------ accounts
    def _row(self, staff_id: str) -> sqlite3.Row | None:
        return self.store.conn.execute(
            "SELECT s.*, (SELECT COUNT(*) FROM staff_tokens t WHERE t.staff_id = s.id) AS tokens "
            "FROM staff s WHERE s.id = ?", (staff_id,)).fetchone()

    @staticmethod
    def _staff(row: sqlite3.Row) -> Staff:
        return Staff(id=row["id"], name=row["name"], role=row["role"], disabled=bool(row["disabled"]),
                     has_password=row["password_hash"] is not None, has_token=bool(row["tokens"]),
                     created_at=row["created_at"], changed_at=row["changed_at"])

    def get(self, staff_id: str) -> Staff | None:
        row = self._row(staff_id)
        return self._staff(row) if row is not None else None

    def list(self) -> list[Staff]:
        rows = self.store.conn.execute(
            "SELECT s.*, (SELECT COUNT(*) FROM staff_tokens t WHERE t.staff_id = s.id) AS tokens "
            "FROM staff s ORDER BY s.role, s.id").fetchall()
        return [self._staff(r) for r in rows]

    def _need(self, staff_id: str) -> Staff:
        found = self.get(staff_id)
        if found is None:
            raise AuthError("not_found", f"職員 {staff_id[:24]} はいません", f"no staff account {staff_id[:24]!r}")
        return found

    def add(self, staff_id: str, role: str, *, name: str | None = None, password: str | None = None,
            params: ScryptParams | None = None, by: str = "cli") -> Staff:
        """A new account.  Staff roles need a password; a kiosk has none (give
        it a token with :meth:`issue_token`)."""
        check_staff_id(staff_id)
        check_role(role)
        name = check_name(name if name is not None else staff_id)
        if role == KIOSK and password is not None:
            raise AuthError("invalid", "発券機のアカウントはパスワードを持ちません（APIトークンのみ）",
                            "a kiosk account has no password, only an API token")
        if role != KIOSK:
            if password is None:
                raise AuthError("invalid", "パスワードが必要です", "a staff account needs a password")
            check_password(password, staff_id)
        stored = hash_password(password, params or self.hash_params) if password is not None else None
        now = _iso(self.now)
        with self.store.transaction() as db:
            if db.execute("SELECT 1 FROM staff WHERE id = ?", (staff_id,)).fetchone():
                raise AuthError("exists", f"職員 {staff_id} はすでにいます", f"staff account {staff_id!r} exists already")
            db.execute("INSERT INTO staff (id, name, role, password_hash, disabled, created_at, changed_at) "
                       "VALUES (?, ?, ?, ?, 0, ?, ?)", (staff_id, name, role, stored, now, now))
            self._audit(db, staff_id, "account_added", None, f"role={role} by={by}")
        logger.info("staff account %s added (role %s)", staff_id, role)
        return self._need(staff_id)

    def set_password(self, staff_id: str, password: str, *, params: ScryptParams | None = None, by: str = "cli") -> int:
        """A new password; every session of the account ends and its API
        token is deleted (a password is changed when someone else may know
        it: what they could have done with it ends too).  Returns how many
        sessions ended."""
        staff = self._need(staff_id)
        if staff.role == KIOSK:
            raise AuthError("invalid", "発券機のアカウントはパスワードを持ちません（APIトークンのみ）",
                            "a kiosk account has no password, only an API token")
        check_password(password, staff_id)
        stored = hash_password(password, params or self.hash_params)
        with self.store.transaction() as db:
            db.execute("UPDATE staff SET password_hash = ?, changed_at = ? WHERE id = ?", (stored, _iso(self.now), staff_id))
            ended = db.execute("DELETE FROM staff_sessions WHERE staff_id = ?", (staff_id,)).rowcount
            tokens = db.execute("DELETE FROM staff_tokens WHERE staff_id = ?", (staff_id,)).rowcount
            self._audit(db, staff_id, "password_changed", None, f"sessions_ended={ended} tokens_deleted={tokens} by={by}")
        logger.info("staff account %s: password changed, %d session(s) ended, %d API token(s) deleted", staff_id, ended, tokens)
        return ended

    def set_disabled(self, staff_id: str, disabled: bool, *, by: str = "cli") -> int:
        """Disable (every session ends at once, the API token is deleted) or
        enable an account.  Enabling brings no token back: issue a new one
        (:meth:`issue_token`).  Returns the number of sessions ended."""
        self._need(staff_id)
        with self.store.transaction() as db:
            db.execute("UPDATE staff SET disabled = ?, changed_at = ? WHERE id = ?", (int(disabled), _iso(self.now), staff_id))
            ended = db.execute("DELETE FROM staff_sessions WHERE staff_id = ?", (staff_id,)).rowcount if disabled else 0
            tokens = db.execute("DELETE FROM staff_tokens WHERE staff_id = ?", (staff_id,)).rowcount if disabled else 0
            detail = f"sessions_ended={ended} tokens_deleted={tokens} by={by}" if disabled else f"by={by}"
            self._audit(db, staff_id, "disabled" if disabled else "enabled", None, detail)
        logger.info("staff account %s %s (%d session(s) ended, %d API token(s) deleted)", staff_id,
                    "disabled" if disabled else "enabled", ended, tokens)
        return ended

    def issue_token(self, staff_id: str, *, by: str = "cli") -> str:
        """A new API token for the account (the old one stops working).  The
        token is returned once and only its SHA-256 is kept."""
        self._need(staff_id)
        token = new_token()
        with self.store.transaction() as db:
            db.execute("DELETE FROM staff_tokens WHERE staff_id = ?", (staff_id,))
            db.execute("INSERT INTO staff_tokens (staff_id, token_sha256, created_at) VALUES (?, ?, ?)",
                       (staff_id, sha256(token), _iso(self.now)))
            self._audit(db, staff_id, "token_issued", None, f"by={by}")
        logger.info("staff account %s: API token issued", staff_id)
        return token

    # ------------------------------------------------------------------ logging in
    def password_hash_of(self, login: str) -> tuple[Staff | None, str | None]:
        """The account and its stored hash for a login as typed (both None
        when there is no such account).  The caller runs
        :func:`verify_password` — in a worker thread on central's loop."""
        if not is_staff_id(login):
            return None, None
        row = self._row(login)
        if row is None:
            return None, None
        return self._staff(row), row["password_hash"]

    def check_login(self, login: str, password: str, *, client: str | None = None) -> tuple[Principal | None, str]:
        """Verify and audit one login attempt (in this thread; central's web
        login does the same with the scrypt work in a worker thread).
        Returns the principal (or None) and the audit result."""
        staff, stored = self.password_hash_of(login)
        ok = verify_password(password, stored)
        principal, result = self.finish_login(login, staff, ok, client=client)
        if principal is not None and self.needs_rehash(stored):
            self.replace_hash(principal.staff_id, stored, hash_password(password, self.hash_params))
        return principal, result

    def needs_rehash(self, stored: str | None) -> bool:
        return needs_rehash(stored, self.hash_params)

    def replace_hash(self, staff_id: str, old: str, new: str) -> bool:
        """Store ``new`` (the password just verified, hashed with
        :attr:`hash_params`) in place of ``old`` — only if ``old`` is still the
        stored hash (a password changed in between wins).  Sessions and
        tokens stay: the password did not change."""
        old_params, new_params = parse_hash(old)[0], parse_hash(new)[0]
        with self.store.transaction() as db:
            changed = db.execute("UPDATE staff SET password_hash = ? WHERE id = ? AND password_hash = ?",
                                 (new, staff_id, old)).rowcount
            if changed:
                self._audit(db, staff_id, "password_rehashed", None,
                            f"n={old_params.n},r={old_params.r},p={old_params.p} -> "
                            f"n={new_params.n},r={new_params.r},p={new_params.p}")
        if changed:
            logger.info("staff account %s: password hash made again with scrypt n=%d,r=%d,p=%d", staff_id,
                        new_params.n, new_params.r, new_params.p)
        return bool(changed)

    def loggable(self, login: str, staff: Staff | None = None) -> str:
        """A typed login for a log line: the staff id of an account that
        exists; "(unknown account)" for a well-formed name with no account and
        "(malformed id)" for anything else — either may be a password typed
        into the wrong field (the audit keeps a well-formed name, so IT sees
        which names are tried; :func:`loggable_login`)."""
        if not is_staff_id(login):
            return loggable_login(login)
        if staff is None:
            staff = self.get(login)
        return staff.id if staff is not None else "(unknown account)"

    def finish_login(self, login: str, staff: Staff | None, password_ok: bool, *,
                     client: str | None = None) -> tuple[Principal | None, str]:
        """Audit the outcome of a password check.  A disabled account or one
        without a password never logs in, whatever the password."""
        if staff is None:
            result = "unknown_account"
        elif not staff.has_password:
            result = "no_password"
        elif not password_ok:
            result = "bad_password"
        elif staff.disabled:
            result = "disabled"
        else:
            result = "ok"
        with self.store.transaction() as db:
            self._audit(db, login if is_staff_id(login) else None, result, client)
        if result != "ok":
            logger.info("login refused for %s from %s: %s", self.loggable(login, staff), loggable_client(client), result)
            return None, result
        logger.info("staff %s logged in from %s", staff.id, loggable_client(client))
        return Principal(staff.id, staff.name, staff.role, "session"), result

    #: The throttle's queries; each reads one index of schema 7 and nothing
    #: else (tests/unit/test_auth.py checks the plans).
    LAST_OK_SQL = "SELECT MAX(at) FROM login_audit WHERE staff_id IS ? AND client IS ? AND result = 'ok'"
    PAIR_FAILURES_SQL = ("SELECT at FROM login_audit WHERE staff_id IS ? AND client IS ? AND result IN "
                         f"({', '.join(repr(r) for r in FAILURES)}) AND at > ? ORDER BY at DESC LIMIT ?")
    CLIENT_FAILURES_SQL = ("SELECT at FROM login_audit WHERE client IS ? AND result IN "
                           f"({', '.join(repr(r) for r in FAILURES)}) AND at > ? ORDER BY at DESC LIMIT ?")

    def _client_key(self, client: str | None) -> str | None:
        return (client or "")[:64] or None  # as _audit stores it

    def remembered_wait(self, login: str, client: str | None) -> float:
        """Seconds ``login`` from ``client`` is still refused by what the
        throttle already decided (:class:`ThrottleMemory`; no database)."""
        now = self.now
        who, where = login if is_staff_id(login) else None, self._client_key(client)
        return self.throttled.wait(("client", where), now) or self.throttled.wait(("pair", who, where), now)

    def throttle_check(self, login: str, client: str | None) -> tuple[float, str | None]:
        """Ask the audit: seconds until ``login`` may try again from
        ``client`` (0: now) and why (``"account"``: ``max_failures`` for this
        account name from this address since its last successful login;
        ``"client"``: ``max_failures_per_client`` from this address whatever
        the names; both within ``failure_window_s``)."""
        who, where = login if is_staff_id(login) else None, self._client_key(client)
        now = self.now
        window = timedelta(seconds=self.settings.failure_window_s)
        since = _iso(now - window)

        def wait(rows, limit) -> float:
            if len(rows) < limit:
                return 0.0
            return max(0.0, (datetime.fromisoformat(rows[-1][0]) + window - now).total_seconds())

        db = self.store.conn
        by_client = wait(db.execute(self.CLIENT_FAILURES_SQL, (where, since, self.settings.max_failures_per_client))
                         .fetchall(), self.settings.max_failures_per_client)
        if by_client > 0:
            return by_client, "client"
        last_ok = db.execute(self.LAST_OK_SQL, (who, where)).fetchone()[0]
        pair_since = last_ok if last_ok and last_ok > since else since
        by_pair = wait(db.execute(self.PAIR_FAILURES_SQL, (who, where, pair_since, self.settings.max_failures)).fetchall(),
                       self.settings.max_failures)
        return (by_pair, "account") if by_pair > 0 else (0.0, None)

    def retry_after(self, login: str, client: str | None) -> float:
        """Seconds until ``login`` may try again from ``client`` (0: now),
        by the audit (:meth:`throttle_check`)."""
        return self.throttle_check(login, client)[0]

    def throttle(self, login: str, client: str | None, wait: float, why: str) -> None:
        """Refuse ``login`` from ``client`` (``why="account"``) or everything
        from ``client`` (``why="client"``) for ``wait`` seconds: one audit row
        and one warning now; until then :meth:`remembered_wait` refuses
        without the database."""
        now = self.now
        who, where = login if is_staff_id(login) else None, self._client_key(client)
        if why == "client":
            key, what = ("client", where), f"{loggable_client(where)} (any account)"
        else:
            key, what = ("pair", who, where), f"{self.loggable(login)} from {loggable_client(where)}"
        self.throttled.block(key, now + timedelta(seconds=wait), what, now)
        with self.store.transaction() as db:
            self._audit(db, who, "throttled", where, f"per_{why} for_s={math.ceil(wait)}")
        logger.warning("login for %s throttled for %.0f s (too many failed logins %s)", what, wait,
                       "from this address" if why == "client" else "for this account from this address")

    def _audit(self, db, staff_id: str | None, result: str, client: str | None, detail: str | None = None) -> None:
        db.execute("INSERT INTO login_audit (at, staff_id, result, client, detail) VALUES (?, ?, ?, ?, ?)",
                   (_iso(self.now), staff_id, result, (client or "")[:64] or None, (detail or "")[:200] or None))

    def audit(self, *, staff_id: str | None = None, limit: int = 100) -> list[dict]:
        if staff_id is None:
            rows = self.store.conn.execute("SELECT * FROM login_audit ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        else:
            rows = self.store.conn.execute("SELECT * FROM login_audit WHERE staff_id = ? ORDER BY id DESC LIMIT ?",
                                           (staff_id, limit)).fetchall()
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ sessions
    def start_session(self, principal: Principal, *, client: str | None = None) -> str:
        """A new session for a principal that just logged in; returns the
        token for the cookie (only its SHA-256 is stored)."""
        token = new_token()
        now = _iso(self.now)
        with self.store.transaction() as db:
            self._prune(db)
            db.execute("INSERT INTO staff_sessions (token_sha256, staff_id, created_at, last_seen) VALUES (?, ?, ?, ?)",
                       (sha256(token), principal.staff_id, now, now))
        return token

    def _prune(self, db) -> None:
        now = self.now
        idle = _iso(now - timedelta(seconds=self.settings.idle_timeout_s))
        absolute = _iso(now - timedelta(seconds=self.settings.absolute_timeout_s))
        db.execute("DELETE FROM staff_sessions WHERE last_seen < ? OR created_at < ?", (idle, absolute))

    @property
    def _touch_every(self) -> timedelta:
        """last_seen is written at most this often (not on every poll: each
        write is an fsync), a quarter of the idle limit at most."""
        return timedelta(seconds=min(60.0, self.settings.idle_timeout_s / 4))

    def session(self, token: str) -> Principal | None:
        """The principal of a session token, or None (unknown, expired, the
        account disabled).  Keeps the session alive."""
        if not token or len(token) > 100:
            return None
        key = sha256(token)
        row = self.store.conn.execute(
            "SELECT x.created_at, x.last_seen, s.id, s.name, s.role, s.disabled FROM staff_sessions x "
            "JOIN staff s ON s.id = x.staff_id WHERE x.token_sha256 = ?", (key,)).fetchone()
        if row is None:
            return None
        now = self.now
        created, seen = datetime.fromisoformat(row["created_at"]), datetime.fromisoformat(row["last_seen"])
        expired = None
        if (now - seen).total_seconds() > self.settings.idle_timeout_s:
            expired = "idle"
        elif (now - created).total_seconds() > self.settings.absolute_timeout_s:
            expired = "absolute"
        if row["disabled"] or row["role"] == KIOSK or expired:
            with self.store.transaction() as db:
                db.execute("DELETE FROM staff_sessions WHERE token_sha256 = ?", (key,))
                if expired:
                    self._audit(db, row["id"], "session_expired", None, expired)
            return None
        if now - seen >= self._touch_every:
            with self.store.transaction() as db:
                db.execute("UPDATE staff_sessions SET last_seen = ? WHERE token_sha256 = ?", (_iso(now), key))
        return Principal(row["id"], row["name"], row["role"], "session", session=key)

    def end_session(self, token: str, *, client: str | None = None) -> str | None:
        """Log out: the session is gone.  Returns whose it was."""
        key = sha256(token)
        with self.store.transaction() as db:
            row = db.execute("SELECT staff_id FROM staff_sessions WHERE token_sha256 = ?", (key,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM staff_sessions WHERE token_sha256 = ?", (key,))
            self._audit(db, row[0], "logout", client)
        logger.info("staff %s logged out", row[0])
        return row[0]

    def sessions(self, staff_id: str) -> int:
        return self.store.conn.execute("SELECT COUNT(*) FROM staff_sessions WHERE staff_id = ?", (staff_id,)).fetchone()[0]

    # ------------------------------------------------------------------ tokens
    def bearer(self, token: str) -> Principal | None:
        """The principal of an API token, or None (unknown, account disabled)."""
        if not token or len(token) > 100:
            return None
        row = self.store.conn.execute(
            "SELECT t.last_used, s.id, s.name, s.role, s.disabled FROM staff_tokens t JOIN staff s ON s.id = t.staff_id "
            "WHERE t.token_sha256 = ?", (sha256(token),)).fetchone()
        if row is None or row["disabled"]:
            return None
        now = self.now
        if row["last_used"] is None or now - datetime.fromisoformat(row["last_used"]) >= timedelta(seconds=60):
            with self.store.transaction() as db:
                db.execute("UPDATE staff_tokens SET last_used = ? WHERE staff_id = ?", (_iso(now), row["id"]))
        return Principal(row["id"], row["name"], row["role"], "token")


__all__ = [
    "ACCESS", "DEFAULT_SCRYPT", "FAILURES", "HOME", "KIOSK", "PUBLIC", "ROLES", "STAFF_ID_PATTERN", "STAFF_ROLES",
    "Accounts", "AuthError", "Principal", "ScryptParams", "Staff", "ThrottleMemory", "allowed_roles", "hash_password",
    "is_staff_id", "loggable_client", "loggable_login", "needs_rehash", "normalize_login", "route_template", "safe_next",
    "verify_password",
]
