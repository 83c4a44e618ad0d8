"""The kiosk (発券機): a touch page on the kiosk Pi's screen, tickets from
central, printed on the kiosk's ESC/POS printer.  Issue #6 item 3; docs/kiosk.md.

* The page (``kiosk.html``) is served on loopback by a stdlib HTTP server in
  its own threads (as drivers/display/hdmi.py); POSTs must come from the page
  itself (same-origin check).  The page polls ``/api/status`` and stops
  taking choices while the printer cannot print.
* One worker thread does everything that touches the printer or the ticket
  journal (one SQLite connection, one thread): read the printer's status
  first (not printable → nothing is asked of central), make an
  Idempotency-Key and journal it, POST /api/v1/tickets to central with it —
  sent again with the same key after a timeout, and after a restart — then
  journal the ticket and print it with its QR.
* A ticket whose number was issued but is not on paper yet stays in the
  journal and is printed when the printer recovers, even after a kill -9.  A
  ticket whose bytes may have left (the connection broke while sending, or
  the daemon died then) is ``uncertain`` and never printed again by itself
  (as the receipt spool, edge/printing.py); staff re-print it (it says 再発行)
  or confirm it came out, from the kiosk Pi itself.

Routes: ``GET /`` the page; ``GET /api/procedures``; ``GET /api/status``;
``POST /api/issue`` ``{"procedures": [id, ...]}`` → ``{"number", "printed",
"message_ja", ...}`` or ``{"error", "message_ja", "message_en"}``.  Staff, from
the kiosk Pi only (loopback): ``GET /api/staff/tickets``; ``POST
/api/staff/tickets/<number>`` ``{"staff_id", "action": "reprint"|"printed"}``.
"""

from __future__ import annotations

import asyncio
import http.server
import importlib.resources
import ipaddress
import itertools
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.sqlitedb import Database
from drivers.printer import Document, PrinterError, PrinterNotReady, Text, receipts
from edge.crashpoints import crashpoint

logger = logging.getLogger(__name__)

MAX_PROCEDURES = 12  # as central/queue.py
MAX_BODY_BYTES = 4096
#: How often the worker looks at kept tickets and unanswered requests.
RETRY_S = 2.0
#: The idle status refresh (health); the page's polling asks for fresher reads.
STATUS_EVERY_S = 10.0
#: A status older than this is read again when the page asks.
STATUS_FRESH_S = 1.0
#: How long the site (procedures, counters) is cached.
SITE_TTL_S = 60.0
#: Finished journal rows are kept this long (staff re-print, IT questions).
KEEP_DAYS = 7
STAFF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")  # as central's StaffId

PAPER_OUT_JA = "用紙切れのため発券できません。職員をお呼びください"
PAPER_OUT_EN = "Out of paper: tickets cannot be issued. Please ask a member of staff."
PRINTER_DOWN_JA = "プリンタの準備ができていないため発券できません。職員をお呼びください"
PRINTER_DOWN_EN = "The ticket printer is not ready. Please ask a member of staff."
NOT_PRINTED_JA = "番号は発行されましたが、券を印刷できませんでした。この番号をお控えのうえ、職員にお声がけください"
NOT_PRINTED_EN = "Your number was issued but the ticket could not be printed. Please note the number and tell a member of staff."
CENTRAL_DOWN_JA = "ただいま発券できません。職員をお呼びください"
CENTRAL_DOWN_EN = "Tickets cannot be issued right now. Please ask a member of staff."
#: The banner of the page while it takes no choices (before the visitor starts).
BANNER = {
    "paper_end": ("用紙切れのため発券を停止しています", "Out of paper — please ask staff"),
    "waiting": ("券の印刷待ちのため発券を停止しています", "A ticket is waiting to be printed — please ask staff"),
    "central": ("ただいま発券を停止しています", "Tickets cannot be issued right now — please ask staff"),
    "": ("プリンタの準備ができていないため発券を停止しています", "The ticket printer is not ready — please ask staff"),
}

_CSP = ("default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

#: The ticket journal.  ``state``: requested (key made, answer not in yet) →
#: issued (number known, not on paper) → printing (bytes leaving) → printed;
#: or uncertain (may be on paper), refused (central said no: nothing issued),
#: given_up (no answer in time: central may hold a number nobody has).
JOURNAL_SCHEMA = [
    """
    CREATE TABLE kiosk_tickets (
        key TEXT PRIMARY KEY,
        procedures TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        day TEXT,
        number INTEGER,
        document TEXT,
        reprints INTEGER NOT NULL DEFAULT 0,
        staff_id TEXT,
        error TEXT
    );
    CREATE INDEX kiosk_tickets_by_state ON kiosk_tickets (state, created_at);
    CREATE INDEX kiosk_tickets_by_number ON kiosk_tickets (day, number);
    """,
]


def _now() -> datetime:
    return datetime.now(UTC)


class Refused(Exception):
    """An issue request that is refused; nothing was issued."""

    def __init__(self, status: int, error: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.status, self.error, self.ja, self.en = status, error, ja, en


class _Issued(BaseModel):
    """What the kiosk needs of central's answer to POST /api/v1/tickets
    (docs/http-api.md); the rest of it is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    number: int = Field(ge=1, le=9999)
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    token: str = Field(min_length=8, max_length=100)
    issued_at: datetime
    procedures: list[str] = Field(default_factory=list, max_length=MAX_PROCEDURES)
    stops: list[dict] = Field(default_factory=list, max_length=50)
    estimate_min: float | None = None


class KioskJournal(Database):
    """The kiosk's own SQLite file; used from the kiosk's worker thread only."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, JOURNAL_SCHEMA)

    def add(self, key: str, procedures: list[str]) -> None:
        now = _now().isoformat()
        with self.transaction() as db:
            db.execute("INSERT INTO kiosk_tickets (key, procedures, state, created_at, updated_at) VALUES (?, ?, 'requested', ?, ?)",
                       (key, json.dumps(procedures), now, now))

    def set(self, key: str, state: str, **fields: Any) -> None:
        columns = "".join(f", {name}=?" for name in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE kiosk_tickets SET state=?, updated_at=?{columns} WHERE key=?",
                       (state, _now().isoformat(), *fields.values(), key))

    def rows(self, *states: str) -> list:
        marks = ",".join("?" * len(states))
        return self.conn.execute(f"SELECT * FROM kiosk_tickets WHERE state IN ({marks}) ORDER BY created_at, key",
                                 states).fetchall()

    def of_day(self, day: str) -> list:
        return self.conn.execute("SELECT * FROM kiosk_tickets WHERE day=? ORDER BY number", (day,)).fetchall()

    def by_number(self, day: str, number: int):
        return self.conn.execute("SELECT * FROM kiosk_tickets WHERE day=? AND number=?", (day, number)).fetchone()

    def recover(self) -> int:
        """After a restart: a ticket that was being printed may be on paper."""
        with self.transaction() as db:
            return db.execute("UPDATE kiosk_tickets SET state='uncertain', updated_at=?, error=? WHERE state='printing'",
                              (_now().isoformat(), "the daemon stopped while printing")).rowcount

    def prune(self, days: int = KEEP_DAYS) -> int:
        before = (_now() - timedelta(days=days)).isoformat()
        with self.transaction() as db:
            return db.execute("DELETE FROM kiosk_tickets WHERE created_at < ? AND state IN "
                              "('printed', 'uncertain', 'refused', 'given_up')", (before,)).rowcount


class KioskRole:
    def __init__(self, config, printer: Any, *, on_change=None) -> None:
        """``on_change``: called (from the kiosk's threads) when its health
        changes, so the daemon publishes it at once."""
        self.cfg = config.kiosk
        self.on_change = on_change
        self._told: tuple[str, str | None] | None = None
        self.device = config.device.id
        self.zone = ZoneInfo(config.device.timezone)
        self.office = config.payments.office_ja
        self.printer = printer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kiosk-{self.device}")
        self._lock = threading.Lock()
        self._site: dict | None = None
        self._site_at = 0.0
        self._health: tuple[str, str | None, str | None] = ("ok", None, None) if printer else (
            "error", "absent", "no printer configured")
        self._status_at = 0.0
        self._refreshing = False
        #: From the journal, for health and the page: numbers issued but not on
        #: paper, requests without an answer, today's uncertain numbers.
        self._waiting: list[int] = []
        self._unresolved = 0
        self._uncertain: list[int] = []
        #: Visitors waiting for a number right now (a restart would send them to staff).
        self._issuing = 0
        self._stop = threading.Event()
        self.issued = 0
        self.printed = 0
        self.journal: KioskJournal | None = None
        try:
            template = importlib.resources.files(__package__).joinpath("kiosk.html").read_text("utf-8")
        except OSError as exc:
            self._pool.shutdown()
            raise OSError(f"cannot read the kiosk page: {exc}") from exc
        self._page = template.encode("utf-8")
        try:
            self._pool.submit(self._open).result(30)
            self._server = _Server((self.cfg.host, self.cfg.port), self)
        except BaseException:
            self._pool.submit(self._close_journal).result(10)
            self._pool.shutdown()
            raise
        self.port = self._server.server_address[1]
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                             name=f"kiosk-page-{self.port}", daemon=True),
            threading.Thread(target=self._tick, name=f"kiosk-retry-{self.device}", daemon=True),
        ]
        for t in self._threads:
            t.start()
        with self._lock:
            if self._waiting or self._unresolved:  # left by the last run: at once, not after the first tick
                self._pool.submit(self._retry)
        logger.info("%s: kiosk page on %s", self.device, self.url)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.cfg.host in ("", "0.0.0.0") else self.cfg.host
        return f"http://{host}:{self.port}/"

    def _today(self) -> str:
        return datetime.now(self.zone).date().isoformat()

    # ------------------------------------------------------------ journal (worker thread)
    def _open(self) -> None:
        try:
            self.journal = KioskJournal(self.cfg.journal)
        except Exception as exc:  # sqlite3 errors, DatabaseError: the kiosk cannot start
            raise OSError(f"cannot open the kiosk journal {self.cfg.journal}: {exc}") from exc
        uncertain = self.journal.recover()
        if uncertain:
            logger.error("%s: %d ticket(s) were printing when the kiosk stopped: not printed again on their own "
                         "(staff: re-print if the visitor has none, it says 再発行)", self.device, uncertain)
        pruned = self.journal.prune()
        if pruned:
            logger.info("%s: forgot %d journal rows older than %d days", self.device, pruned, KEEP_DAYS)
        kept = self.journal.rows("issued")
        if kept:
            logger.warning("%s: ticket(s) %s issued but not printed before the restart: printed when the printer is ready",
                           self.device, ", ".join(str(r["number"]) for r in kept))
        self._summarize()
        if self.printer is not None:
            self._printable()

    def _close_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def _summarize(self) -> None:
        j = self.journal
        waiting = [r["number"] for r in j.rows("issued")]
        unresolved = len(j.rows("requested"))
        today = self._today()
        uncertain = [r["number"] for r in j.rows("uncertain") if r["day"] == today]
        with self._lock:
            self._waiting, self._unresolved, self._uncertain = waiting, unresolved, uncertain
        self._changed()

    def _changed(self) -> None:
        """Tell the daemon when the health IT sees changed."""
        now = self.health()[:2]
        with self._lock:
            changed, self._told = now != self._told, now
        if changed and self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # e.g. the loop is closed while stopping
                logger.debug("%s: health change not signalled", self.device, exc_info=True)

    # ------------------------------------------------------------ health, status
    def health(self) -> tuple[str, str | None, str | None]:
        """The printer as IT sees it (the daemon publishes it as "printer")."""
        with self._lock:
            status, waiting, unresolved, uncertain = self._health, list(self._waiting), self._unresolved, list(self._uncertain)
            if self._issuing:
                # A visitor's ticket is on its way (asked, issued, printing): its
                # journal states are the normal steps, not a fault to alert IT
                # about; what is left when the issue ends is reported then.
                waiting, unresolved = [], 0
        if waiting:
            numbers = ", ".join(map(str, waiting))
            return ("error", (status[1] or "print_failed")[:40],
                    f"ticket(s) {numbers} issued but not printed; {status[2] or ''}"[:200])
        if status[0] == "error":
            return status
        if unresolved:
            return ("warning", "ticket_unresolved", "a ticket request to central has no answer yet: sent again")
        if uncertain:
            numbers = ", ".join(map(str, uncertain))
            return ("warning", "print_uncertain",
                    f"ticket(s) {numbers} may not have printed: staff re-print or confirm on the kiosk"[:200])
        return status

    def page_status(self) -> dict:
        """What the page needs before the visitor starts: may it take choices?"""
        with self._lock:
            status, waiting, unresolved, at = self._health, bool(self._waiting), self._unresolved, self._status_at
            refresh = (self.printer is not None and not self._refreshing
                       and time.monotonic() - at > STATUS_FRESH_S and not self._stop.is_set())
            if refresh:
                self._refreshing = True
        if refresh:
            try:
                future = self._pool.submit(self._refresh)
            except RuntimeError:  # shutting down
                pass
            else:
                try:  # a fresh read if the worker is free; else the last one (it is busy issuing)
                    future.result(0.5)
                except FutureTimeout:
                    pass
                except Exception:
                    logger.exception("%s: reading the printer's status failed", self.device)
                with self._lock:
                    status, waiting, unresolved = self._health, bool(self._waiting), self._unresolved
        reason = None
        if status[0] == "error":
            reason = "paper_end" if status[1] == "paper_end" else ""
        elif waiting:
            reason = "waiting"
        elif unresolved:
            reason = "central"
        if reason is None:
            return {"ready": True, "reason": None, "message_ja": "", "message_en": ""}
        ja, en = BANNER[reason]
        return {"ready": False, "reason": status[1] if reason in ("", "paper_end") else reason,
                "message_ja": ja, "message_en": en}

    def _refresh(self) -> None:
        try:
            self._printable()
        finally:
            with self._lock:
                self._refreshing = False

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        # What waits in the queue (a retry, a status read) is dropped; the job
        # running now ends (a ticket going to the printer is not cut off).
        # Everything left is in the journal for the next start.
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close_journal()
        for t in self._threads:
            t.join(5.0)

    def busy(self) -> str | None:
        """Why a restart would hurt now: a visitor is waiting for a number."""
        with self._lock:
            issuing = self._issuing
        return f"{issuing} ticket(s) being issued to a visitor at the kiosk (発券中)" if issuing else None

    # ------------------------------------------------------------ central
    def _central(self, method: str, path: str, body: Any = None, *, key: str | None = None,
                 timeout: float | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.cfg.token is not None:  # [kiosk] token: central's kiosk account (docs/kiosk.md)
            headers["Authorization"] = f"Bearer {self.cfg.token.get_secret_value()}"
        if key is not None:
            headers["Idempotency-Key"] = key
        req = urllib.request.Request(self.cfg.central_url.rstrip("/") + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.cfg.request_timeout_s) as resp:
                return resp.status, json.loads(resp.read(1 << 20) or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read(1 << 16) or b"null")
            except ValueError:
                return exc.code, None

    def site(self) -> dict:
        """central's site (procedures, services, counters), cached; raises OSError when unreachable."""
        with self._lock:
            if self._site is not None and time.monotonic() - self._site_at < SITE_TTL_S:
                return self._site
        code, site = self._central("GET", "/api/v1/site")
        if code in (401, 403):
            raise OSError(f"central refused the kiosk's token ({code}): set [kiosk] token (docs/kiosk.md)")
        if code != 200 or not isinstance(site, dict):
            raise OSError(f"central answered {code} to GET /api/v1/site")
        with self._lock:
            self._site, self._site_at = site, time.monotonic()
        return site

    def procedures(self) -> dict:
        site = self.site()
        return {
            "office": self.office or site.get("site", {}).get("name_ja", ""),
            "max": MAX_PROCEDURES,
            "procedures": [{"id": p["id"], "name_ja": p["name_ja"], "name_en": p["name_en"]}
                           for p in site.get("procedures", [])],
        }

    # ------------------------------------------------------------ issuing
    def issue(self, procedures: Any) -> dict:
        """Validate, then issue and print in the worker thread; the page's answer.

        Raises:
            Refused: bad input, printer not ready, central refused or unreachable.
        """
        if (not isinstance(procedures, list) or not all(isinstance(p, str) and 0 < len(p) <= 64 for p in procedures)
                or len(set(procedures)) != len(procedures)):
            raise Refused(400, "invalid", "手続の選び方が正しくありません", "Invalid choice of procedures")
        if not procedures:
            raise Refused(400, "invalid", "手続を1つ以上お選びください", "Please choose at least one procedure")
        if len(procedures) > MAX_PROCEDURES:
            raise Refused(400, "invalid", f"手続は{MAX_PROCEDURES}件までです",
                          f"At most {MAX_PROCEDURES} procedures per ticket")
        with self._lock:
            self._issuing += 1
        try:
            return self._pool.submit(self._issue, procedures).result(self.cfg.issue_deadline_s + 15)
        except FutureTimeout:
            raise Refused(504, "timeout", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN) from None
        finally:
            with self._lock:
                self._issuing -= 1
            self._changed()  # a ticket left unprinted shows now

    def _issue(self, procedures: list[str]) -> dict:
        try:
            site = self.site()
        except (OSError, ValueError) as exc:
            logger.error("%s: central unreachable: %s", self.device, exc)
            raise Refused(503, "central_unreachable", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN) from None
        known = {p["id"] for p in site.get("procedures", [])}
        unknown = [p for p in procedures if p not in known]
        if unknown:
            logger.warning("%s: refused unknown procedure id(s) %r", self.device, [u[:32] for u in unknown[:3]])
            raise Refused(400, "unknown_procedure", "選べない手続が含まれています", "Unknown procedure")
        # 0. An earlier request still without an answer goes first (same key).
        self._resolve_pending()
        # 1. The printer first: no paper, no number.
        if self.printer is None or not self._printable():
            reason = self._health[1]
            raise Refused(503, "printer", *((PAPER_OUT_JA, PAPER_OUT_EN) if reason == "paper_end"
                                             else (PRINTER_DOWN_JA, PRINTER_DOWN_EN)))
        with self._lock:
            waiting, unresolved = bool(self._waiting), self._unresolved
        if waiting:  # an earlier ticket still waits for the paper: do not take another
            raise Refused(503, "printer", PRINTER_DOWN_JA, PRINTER_DOWN_EN)
        if unresolved:
            raise Refused(503, "central_unreachable", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN)
        # 2. The number, from central: the key is on disk before the request leaves.
        key = uuid.uuid4().hex
        self.journal.add(key, procedures)
        self._summarize()
        t = self._request(key, procedures, time.monotonic() + self.cfg.issue_deadline_s)
        if t is None:
            logger.error("%s: no answer from central in %.0f s (key %s…): the visitor was told to ask staff; "
                         "the request is sent again in the background", self.device, self.cfg.issue_deadline_s, key[:8])
            raise Refused(503, "central_unreachable", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN)
        # 3. The paper.
        number, printed = self._take(key, t, site)
        return {"number": number, "printed": printed, "counters": self._counters(site, t.stops),
                "estimate_min": t.estimate_min,
                "message_ja": "券をお取りください。番号が呼ばれるまでお待ちください" if printed else NOT_PRINTED_JA,
                "message_en": "Please take your ticket and wait until your number is called." if printed else NOT_PRINTED_EN}

    def _request(self, key: str, procedures: list[str], deadline: float) -> _Issued | None:
        """POST the ticket with ``key`` until central answers or ``deadline``
        (monotonic) passes; None: no answer (the row stays 'requested').

        Raises:
            Refused: central refused it (4xx); the row is 'refused'.
        """
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            timeout = max(0.5, min(self.cfg.request_timeout_s, deadline - time.monotonic()))
            try:
                code, body = self._central("POST", "/api/v1/tickets", {"procedures": procedures}, key=key, timeout=timeout)
            except (OSError, ValueError) as exc:
                logger.warning("%s: POST /api/v1/tickets (key %s…, attempt %d) failed: %s", self.device, key[:8], attempt, exc)
                code, body = None, None
            if code in (200, 201):
                try:
                    t = _Issued.model_validate(body)
                except ValidationError as exc:
                    # A number may exist at central: the row stays 'requested' and is asked again.
                    logger.error("%s: central's answer to the ticket (key %s…) is not understood: %s",
                                 self.device, key[:8], str(exc)[:300])
                else:
                    crashpoint("kiosk.answer_received")
                    if code == 200:
                        logger.info("%s: ticket %d: central answered a retried key (%s…) with the same number",
                                    self.device, t.number, key[:8])
                    return t
            elif code in (401, 403):
                # Not the visitor's fault: the kiosk's token is missing, wrong or revoked.
                logger.error("%s: central refused the kiosk's credentials (%s %s): set [kiosk] token to the token of "
                             "`madoguchi staff add %s --role kiosk` (docs/kiosk.md)", self.device, code,
                             str((body if isinstance(body, dict) else {}).get("error"))[:40], self.device)
                self.journal.set(key, "refused", error=f"{code} credentials")
                self._summarize()
                raise Refused(503, "central_refused", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN)
            elif code is not None and 400 <= code < 500:
                answer = body if isinstance(body, dict) else {}
                logger.warning("%s: central refused the ticket (key %s…): %s %s", self.device, key[:8], code,
                               str(answer.get("error"))[:40])
                self.journal.set(key, "refused", error=f"{code} {answer.get('error')}"[:200])
                self._summarize()
                raise Refused(422, str(answer.get("error") or "refused")[:40],
                              str(answer.get("message_ja") or CENTRAL_DOWN_JA)[:200],
                              str(answer.get("message_en") or CENTRAL_DOWN_EN)[:200])
            elif code is not None:
                logger.warning("%s: central answered %s to the ticket (key %s…): sent again", self.device, code, key[:8])
            left = deadline - time.monotonic()
            if left < 0.5:
                return None
            self._stop.wait(min(0.25 * attempt, 2.0, left - 0.4))
        return None

    def _take(self, key: str, t: _Issued, site: dict) -> tuple[int, bool]:
        """Journal central's ticket, then print it.  Returns (number, printed)."""
        document = self._document_args(site, t)
        self.journal.set(key, "issued", day=t.day, number=t.number, document=json.dumps(document, ensure_ascii=False))
        self._summarize()
        self.issued += 1
        logger.info("%s: ticket %d issued for %s", self.device, t.number, ",".join(t.procedures))
        crashpoint("kiosk.before_print")
        printed = self._print_row(key, t.number, document)
        return t.number, printed

    def _resolve_pending(self) -> None:
        """Requests without an answer (timeout, restart): sent again with their
        key while young enough, else given up."""
        for row in self.journal.rows("requested"):
            created = datetime.fromisoformat(row["created_at"])
            age = (_now() - created).total_seconds()
            if age > self.cfg.resume_within_s or created.astimezone(self.zone).date().isoformat() != self._today():
                logger.error("%s: a ticket request (key %s…) had no answer for %.0f s: given up (central may hold "
                             "a number nobody took; staff: mark it no-show)", self.device, row["key"][:8], age)
                self.journal.set(row["key"], "given_up", error="no answer in time")
                self._summarize()
                continue
            try:
                t = self._request(row["key"], json.loads(row["procedures"]), time.monotonic() + self.cfg.request_timeout_s)
            except Refused:
                continue
            if t is None:
                return  # central still silent: later
            try:
                site = self.site()
            except (OSError, ValueError):
                site = {}
            number, printed = self._take(row["key"], t, site)
            logger.warning("%s: ticket %d: the answer of an earlier request came late; %s", self.device, number,
                           "printed" if printed else "kept until the printer is ready")

    @staticmethod
    def _counters(site: dict, stops: list[dict]) -> list[str]:
        """Each stop as "住民異動 (1番窓口)": the counters that serve it."""
        out = []
        for stop in stops:
            name = str(stop.get("name_ja", stop.get("service", "")))
            names = [c["name_ja"] for c in site.get("counters", []) if stop.get("service") in c.get("services", [])]
            out.append(f"{name} ({'・'.join(names)})" if names else name)
        return out

    def _document_args(self, site: dict, t: _Issued) -> dict:
        """The ticket's layout inputs, journaled: printable again without central."""
        issued = t.issued_at
        if issued.tzinfo is not None:
            issued = issued.astimezone(self.zone).replace(tzinfo=None)
        names = {p["id"]: p["name_ja"] for p in site.get("procedures", [])}
        chosen = "・".join(names.get(p, p) for p in t.procedures)
        return {
            "number": t.number, "issued_at": issued.isoformat(),
            "office": self.office or site.get("site", {}).get("name_ja", ""),
            "counters": self._counters(site, t.stops),
            "url": self.cfg.public_url + urllib.parse.quote(t.token),
            "wait_minutes": round(t.estimate_min) if t.estimate_min is not None else None,
            "service_ja": chosen if len(chosen) <= 20 else "",
        }

    @staticmethod
    def _document(args: dict, *, reprint: bool = False) -> Document:
        doc = receipts.queue_ticket(**{**args, "issued_at": datetime.fromisoformat(args["issued_at"])})
        if reprint:
            doc = Document((Text("再発行", size=2, align="center", bold=True, note="Reprint"),) + doc.blocks)
        return doc

    # ------------------------------------------------------------ the printer (worker thread)
    def _printable(self) -> bool:
        try:
            status = self.printer.status()
        except PrinterError as exc:
            health = ("error", "no_reply", str(exc)[:200])
            printable = False
        else:
            health, printable = status.health(), status.printable
        with self._lock:
            self._health, self._status_at = health, time.monotonic()
        self._changed()
        return printable

    def _print_row(self, key: str, number: int, args: dict, *, reprint: bool = False) -> bool:
        """Print a journaled ticket; False: not on paper (kept or uncertain)."""
        try:
            doc = self._document(args, reprint=reprint)
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("%s: cannot lay out ticket %d: %s", self.device, number, exc)
            self.journal.set(key, "uncertain", error=f"layout: {exc}"[:200])
            self._summarize()
            return False
        # Marked before the bytes leave: a crash from here on must not print it twice.
        self.journal.set(key, "printing")
        crashpoint("kiosk.before_send")
        try:
            self.printer.print(doc)
        except PrinterNotReady as exc:  # checked inside print(): nothing was sent, printed later
            logger.warning("%s: ticket %d not printed (%s): kept", self.device, number, exc.reason)
            self.journal.set(key, "issued", error=str(exc)[:200])
            with self._lock:
                self._health, self._status_at = exc.status.health(), time.monotonic()
            self._summarize()
            return False
        except PrinterError as exc:  # part may be on paper: never again by itself
            logger.error("%s: printing ticket %d failed: %s (staff may re-print)", self.device, number, exc)
            self.journal.set(key, "uncertain", error=str(exc)[:200])
            with self._lock:
                self._health = ("error", "print_failed", str(exc)[:200])
            self._summarize()
            return False
        self.journal.set(key, "printed", error=None)
        with self._lock:
            last = self.printer.last_status
            self._health = ("ok", None, None) if last is None else last.health()
            self._status_at = time.monotonic()
        self._summarize()
        self.printed += 1
        logger.info("%s: ticket %d printed%s", self.device, number, " (再発行)" if reprint else "")
        return True

    def _retry(self) -> None:
        """Worker thread: answers that never came, kept tickets, health."""
        if self.journal is None:
            return
        try:
            self._resolve_pending()
            if self.printer is None:
                return
            kept = self.journal.rows("issued")
            if not kept:
                self._printable()
                return
            if self._printable():
                row = kept[0]
                self._print_row(row["key"], row["number"], json.loads(row["document"]))
        except Exception:
            logger.exception("%s: kiosk retry failed", self.device)

    def _tick(self) -> None:
        last_status = time.monotonic()
        retry = None
        while not self._stop.wait(RETRY_S):
            with self._lock:
                due = bool(self._waiting) or self._unresolved > 0
            if retry is not None and not retry.done():
                continue  # one retry at a time: a printer or central that hangs must not pile them up
            if due or time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                try:
                    retry = self._pool.submit(self._retry)
                except RuntimeError:  # shut down
                    return

    # ------------------------------------------------------------ staff (worker thread)
    def staff_tickets(self) -> list[dict]:
        try:
            return self._pool.submit(self._staff_tickets).result(10)
        except FutureTimeout:
            raise Refused(503, "busy", "発券機が応答中です。しばらくしてからもう一度", "The kiosk is busy; try again shortly") from None

    def _staff_tickets(self) -> list[dict]:
        return [{"number": r["number"], "state": r["state"], "reprints": r["reprints"], "updated_at": r["updated_at"]}
                for r in self.journal.of_day(self._today())]

    def staff_action(self, number: Any, staff_id: Any, action: Any) -> dict:
        """A staff re-print (it says 再発行) or "it came out" for an uncertain
        ticket of today, from the kiosk Pi itself.

        Raises:
            Refused: a bad request, an unknown number, the printer not ready.
        """
        if (isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 9999
                or not isinstance(staff_id, str) or not STAFF_ID.match(staff_id) or action not in ("reprint", "printed")):
            raise Refused(400, "invalid", "番号・職員番号・操作 (reprint / printed) を確認してください",
                          "need a ticket number, a staff id and action 'reprint' or 'printed'")
        try:
            return self._pool.submit(self._staff_action, number, staff_id, action).result(30)
        except FutureTimeout:
            raise Refused(503, "busy", "発券機が応答中です。しばらくしてからもう一度", "The kiosk is busy; try again shortly") from None

    def _staff_action(self, number: int, staff_id: str, action: str) -> dict:
        row = self.journal.by_number(self._today(), number)
        if row is None or row["document"] is None:
            raise Refused(404, "not_found", f"本日この発券機で発券した{number}番はありません",
                          f"no ticket {number} issued by this kiosk today")
        if row["state"] == "issued":
            raise Refused(409, "waiting", "この券はプリンタが復旧すると自動で印刷されます",
                          "this ticket prints by itself when the printer is ready")
        if action == "printed":
            if row["state"] != "uncertain":
                raise Refused(409, "not_uncertain", "印刷状態が不明な券ではありません", "this ticket is not uncertain")
            self.journal.set(row["key"], "printed", staff_id=staff_id, error=None)
            self._summarize()
            logger.info("%s: ticket %d confirmed on paper by staff %s", self.device, number, staff_id)
            return {"number": number, "state": "printed", "message_ja": "印刷済みとして記録しました", "message_en": "recorded as printed"}
        if not self._printable():
            raise Refused(503, "printer", PRINTER_DOWN_JA, PRINTER_DOWN_EN)
        with self.journal.transaction() as db:
            db.execute("UPDATE kiosk_tickets SET reprints=reprints+1, staff_id=? WHERE key=?", (staff_id, row["key"]))
        logger.info("%s: ticket %d re-printed by staff %s", self.device, number, staff_id)
        printed = self._print_row(row["key"], number, json.loads(row["document"]), reprint=True)
        if not printed:
            raise Refused(503, "printer", PRINTER_DOWN_JA, PRINTER_DOWN_EN)
        return {"number": number, "state": "printed", "message_ja": "再発行しました", "message_en": "re-printed"}


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], kiosk: KioskRole) -> None:
        self.kiosk = kiosk
        self._numbers = itertools.count(1)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        threading.Thread(target=self.process_request_thread, args=(request, client_address),
                         name=f"kiosk-page-{self.server_address[1]}-client-{next(self._numbers)}", daemon=True).start()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "madoguchi-kiosk"
    protocol_version = "HTTP/1.0"
    timeout = 10.0

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("kiosk page %s: %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, csp: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if csp:
            self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, status: int, error: str, ja: str, en: str) -> None:
        if status >= 400 and status != 404:
            logger.info("kiosk page: refused %s %s: %s %s", self.command, urllib.parse.urlsplit(self.path).path[:60], status, error)
        self._json(status, {"error": error, "message_ja": ja, "message_en": en})

    def _local(self) -> bool:
        try:
            return ipaddress.ip_address(self.client_address[0]).is_loopback
        except ValueError:
            return False

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        kiosk = self.server.kiosk
        if path == "/":
            self._send(200, kiosk._page, "text/html; charset=utf-8", csp=True)
        elif path == "/api/procedures":
            try:
                self._json(200, kiosk.procedures())
            except (OSError, ValueError, KeyError) as exc:
                logger.warning("kiosk: cannot read the site from central: %s", exc)
                self._error(503, "central_unreachable", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN)
        elif path == "/api/status":
            self._json(200, kiosk.page_status())
        elif path == "/api/staff/tickets" and self._local():
            try:
                self._json(200, kiosk.staff_tickets())
            except Refused as exc:
                self._error(exc.status, exc.error, exc.ja, exc.en)
        else:
            self._error(404, "not_found", "ページがありません", "no such page")

    def _body(self) -> Any:
        """The JSON body, or an error answered (returns ``_BAD``)."""
        origin = self.headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc != self.headers.get("Host", ""):
            self._error(403, "cross_origin", "この画面からのみ操作できます", "Only this page may do this")
            return _BAD
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self._error(415, "bad_request", "要求が正しくありません", "send application/json")
            return _BAD
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._error(413 if length > MAX_BODY_BYTES else 400, "bad_request", "要求が正しくありません", "bad request body")
            return _BAD
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:  # also UnicodeDecodeError
            self._error(400, "bad_request", "要求が正しくありません", "the body is not JSON")
            return _BAD

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        kiosk = self.server.kiosk
        staff = re.fullmatch(r"/api/staff/tickets/([0-9]{1,4})", path)
        if path != "/api/issue" and not (staff and self._local()):
            self._error(404, "not_found", "ページがありません", "no such page")
            return
        body = self._body()
        if body is _BAD:
            return
        try:
            if staff:
                if not isinstance(body, dict) or set(body) != {"staff_id", "action"}:
                    raise Refused(400, "invalid", "職員番号と操作を送ってください", "send exactly staff_id and action")
                self._json(200, kiosk.staff_action(int(staff.group(1)), body["staff_id"], body["action"]))
                return
            if not isinstance(body, dict) or set(body) != {"procedures"}:
                raise Refused(400, "invalid", "手続の選び方が正しくありません", "send exactly {\"procedures\": [...]}")
            self._json(200, kiosk.issue(body["procedures"]))
        except Refused as r:
            self._error(r.status, r.error, r.ja, r.en)
        except Exception:
            logger.exception("kiosk: %s failed", path)
            self._error(500, "internal", CENTRAL_DOWN_JA, CENTRAL_DOWN_EN)


_BAD = object()


# ------------------------------------------------------------ the daemon's kiosk run
async def run_kiosk(daemon) -> int:
    """:meth:`EdgeDaemon.run` for role "kiosk": the printer, the page, MQTT
    for info and health (the printer's state as "printer"); no buttons, no
    counter display, no payments."""
    from bus.sqlitedb import DatabaseError
    from drivers.errors import DriverError
    from edge.app import EXIT_HARDWARE, HEALTH_EVERY_S
    from edge.fleet import EdgeFleet
    from edge.session import EdgeSession

    cfg = daemon.config
    kiosk: KioskRole | None = None
    try:
        try:
            daemon.printer = daemon._make_printer()
            changed = asyncio.Event()
            loop = asyncio.get_running_loop()
            kiosk = KioskRole(cfg, daemon.printer, on_change=lambda: loop.call_soon_threadsafe(changed.set))
        except (DriverError, OSError) as exc:
            logger.error("%s: cannot start the kiosk: %s", cfg.device.id, exc)
            return EXIT_HARDWARE
        daemon.kiosk = kiosk
        daemon.printer_spool = kiosk  # health: "printer" is the kiosk's printer state
        daemon.session = EdgeSession(
            daemon.topics, cfg.device.id, daemon.boot_id,
            host=cfg.mqtt.host, port=cfg.mqtt.port, username=cfg.mqtt.username,
            password=cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None, tls=cfg.mqtt.tls,
            keepalive_s=cfg.mqtt.keepalive_s, reconnect_cap_s=cfg.mqtt.reconnect_cap_s,
            subscriptions=[daemon.topics.device_commands(cfg.device.id), daemon.topics.device_requests(cfg.device.id)],
            retained=daemon._retained,
            on_connected=lambda: None, on_disconnected=lambda: None,
            on_message=daemon._on_message,  # IT requests go to the fleet; the rest is logged
            on_fatal=daemon._fatal,
        )
        # IT requests (edge/fleet.py): config, restart, logs, a status ticket
        # on the kiosk's printer; the seen-ids file sits beside the kiosk journal.
        try:
            daemon.fleet = EdgeFleet.for_daemon(daemon, restart_blocker=kiosk.busy)
        except (DatabaseError, OSError) as exc:
            logger.error("%s: cannot open the request journal: %s", cfg.device.id, exc)
            return EXIT_HARDWARE
        daemon.fleet.start(daemon.loop)
        # Page and printer are up: READY before the broker, as every role; the
        # ticket journal's folder must take a write (docs/systemd.md).
        daemon.notify_ready(writable=cfg.kiosk.journal)
        daemon.session.start(daemon.loop)
        logger.info("%s: kiosk ready on %s", cfg.device.id, kiosk.url)
        stop = asyncio.create_task(daemon._stop.wait(), name=f"kiosk-stop-{cfg.device.id}")
        try:
            while not daemon._stop.is_set():
                # Published at once when the kiosk says its health changed (paper
                # end, a ticket waiting), and every HEALTH_EVERY_S anyway.
                change = asyncio.create_task(changed.wait(), name=f"kiosk-health-{cfg.device.id}")
                await asyncio.wait({stop, change}, timeout=HEALTH_EVERY_S, return_when=asyncio.FIRST_COMPLETED)
                change.cancel()
                changed.clear()
                try:
                    daemon._publish_health_if_changed()
                except Exception:
                    logger.exception("%s: cannot publish health", cfg.device.id)
        finally:
            stop.cancel()
        return daemon.exit_code()
    finally:
        daemon.notifier.stopping()
        if kiosk is not None:
            await asyncio.get_running_loop().run_in_executor(None, kiosk.close)
        if daemon.session is not None:
            daemon.session.stop()
        if daemon.fleet is not None:  # after the session: no request arrives at a closed fleet
            daemon.fleet.close()
        if daemon.printer is not None and daemon._printer is None:
            daemon.printer.close()
        if daemon._fake_printer is not None:
            daemon._fake_printer.close()
