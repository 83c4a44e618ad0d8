"""The queue engine: one ticket, many counters (design §4).

Every public method is one SQLite transaction and returns an :class:`Outcome`
saying what changed, or raises :class:`QueueError` with a message in Japanese
and English that can be put straight on a counter display.

The rules that matter:

* A ticket is in one place at a time: while one of its stops is ``called`` or
  ``serving`` at some counter, no other counter can call it.
* A stop becomes callable when the stops it must follow (service ``after``)
  are finished; it then competes with its **original place** (the ticket's
  issue order), never re-queued at the back.
* No-show (不在) sends the stop ``away`` for a grace period, after which it is
  callable again at its old place; after ``max_no_shows`` it is given up.

The choice among callable tickets is :meth:`QueueEngine.call_next`'s policy.
Here it is "original place first" (the lifetime order); issue #5 measures
better ones on the same engine.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bus.sdnotify import log_fields
from central.config import QueueSettings, Site
from central.store import Store

logger = logging.getLogger(__name__)


class StopState(str, enum.Enum):
    WAITING = "waiting"  # 待ち
    CALLED = "called"  # 呼出中
    SERVING = "serving"  # 対応中
    HELD = "held"  # 保留: parked, called back by number
    AWAY = "away"  # 不在: returns after the grace period
    DONE = "done"  # 完了
    NO_SHOW = "no_show"  # 不在 (given up)
    SKIPPED = "skipped"  # 取消 / merged by a transfer


ENGAGED = (StopState.CALLED.value, StopState.SERVING.value)
FINISHED = (StopState.DONE.value, StopState.NO_SHOW.value, StopState.SKIPPED.value)

TICKET_ACTIVE = "active"
TICKET_DONE = "done"

MAX_PROCEDURES = 12
#: madoguchi policy: minutes of priority per minute waited beyond starve_min.
STARVE_RATE = 2.0
MAX_NUMBER = 9999


class QueueError(Exception):
    """An action that cannot be done, with a reason for staff (JA/EN).

    ``code`` is stable (for APIs and counters): not_found, conflict, invalid,
    empty, busy, precedence.
    """

    def __init__(self, code: str, ja: str, en: str) -> None:
        super().__init__(f"{code}: {en}")
        self.code = code
        self.ja = ja
        self.en = en


@dataclass(frozen=True)
class Call:
    """A ticket called to a counter (for displays, the board and the voice)."""

    number: int
    counter: str
    service: str
    at: datetime
    recall: bool = False


@dataclass
class Outcome:
    """What an action changed.  Central pushes new displays to ``counters``."""

    counters: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    ticket: int | None = None
    ja: str = ""
    en: str = ""
    #: The event was seen before and nothing was done this time.
    duplicate: bool = False


@dataclass(frozen=True)
class StopView:
    id: int
    position: int
    service: str
    state: str
    counter: str | None
    place: int
    waiting_since: datetime
    called_at: datetime | None
    done_at: datetime | None
    returns_at: datetime | None
    no_shows: int
    recalls: int


@dataclass(frozen=True)
class TicketView:
    id: int
    number: int
    day: str
    token: str
    issued_at: datetime
    state: str
    procedures: tuple[str, ...]
    stops: tuple[StopView, ...]

    @property
    def engaged(self) -> StopView | None:
        return next((s for s in self.stops if s.state in ENGAGED), None)


@dataclass(frozen=True)
class CounterView:
    id: str
    stop: StopView | None
    ticket: int | None
    waiting: int


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class QueueEngine:
    """The queue of one site, stored in ``store``.

    ``clock`` returns an aware datetime (injected so the simulator can run the
    real engine on simulated time).  Not thread-safe: call it from one thread
    (central's event loop).
    """

    def __init__(
        self,
        store: Store,
        site: Site,
        settings: QueueSettings,
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.store = store
        self.site = site
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.zone = ZoneInfo(site.site.timezone)
        self._services = {s.id: s for s in site.services}
        self._counters = {c.id: c for c in site.counters}
        self._procedures = {p.id: p for p in site.procedures}
        self._serving = {s.id: sum(1 for c in site.counters if s.id in c.services) or 1 for s in site.services}
        with store.transaction() as db:
            # The site's precedence rules, as a table the callable query joins.
            db.execute("DELETE FROM service_after")
            db.execute("DELETE FROM service_info")
            for s in site.services:
                db.execute("INSERT INTO service_info (service, typical_min) VALUES (?, ?)", (s.id, s.typical_min))
                for before in s.after:
                    db.execute("INSERT INTO service_after (service, before) VALUES (?, ?)", (s.id, before))
            self._retire_orphans(db)
            for c in site.counters:
                if db.execute("SELECT 1 FROM counters WHERE id=?", (c.id,)).fetchone() is None:
                    db.execute("INSERT INTO counters (id, stop_id, since) VALUES (?, NULL, NULL)", (c.id,))

    def _retire_orphans(self, db) -> None:
        """The site file changed under a running day: open stops of services that
        no longer exist are skipped (logged), and counters that no longer exist
        release whoever they had, so nothing refers to what the site lacks."""
        now = self.clock()
        known = tuple(self._services)
        marks = ",".join("?" * len(known))
        orphans = db.execute(
            f"SELECT s.*, t.number FROM stops s JOIN tickets t ON t.id=s.ticket_id"
            f" WHERE s.service NOT IN ({marks}) AND s.state NOT IN ('done', 'no_show', 'skipped')",
            known,
        ).fetchall()
        for stop in orphans:
            logger.warning(
                "ticket %d: service %r is no longer in the site file: its stop is skipped", stop["number"], stop["service"]
            )
            db.execute("UPDATE stops SET state='skipped', counter=NULL, done_at=? WHERE id=?", (_iso(now), stop["id"]))
            db.execute("UPDATE counters SET stop_id=NULL, since=NULL WHERE stop_id=?", (stop["id"],))
            self._close_ticket_if_done(db, stop["ticket_id"], now)
        marks = ",".join("?" * len(self._counters))
        for row in db.execute(f"SELECT id, stop_id FROM counters WHERE id NOT IN ({marks})", tuple(self._counters)).fetchall():
            if row["stop_id"] is not None:
                logger.warning("counter %r is no longer in the site file: its visitor waits again", row["id"])
                db.execute("UPDATE stops SET state='waiting', counter=NULL WHERE id=?", (row["stop_id"],))
            db.execute("DELETE FROM counters WHERE id=?", (row["id"],))

    # ------------------------------------------------------------------ helpers
    def today(self, now: datetime | None = None) -> str:
        return (now or self.clock()).astimezone(self.zone).date().isoformat()

    def _counter(self, counter: str):
        try:
            return self._counters[counter]
        except KeyError:
            raise QueueError("not_found", f"窓口 {counter} はありません", f"no counter {counter!r}") from None

    def _log(self, db, now, action, *, source, ticket=None, stop=None, counter=None, detail=None):
        db.execute(
            "INSERT INTO queue_log (at, day, ticket_id, number, stop_id, service, counter, action, source, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _iso(now),
                self.today(now),
                ticket["id"] if ticket is not None else None,
                ticket["number"] if ticket is not None else None,
                stop["id"] if stop is not None else None,
                stop["service"] if stop is not None else None,
                counter,
                action,
                source,
                json.dumps(detail, ensure_ascii=False) if detail else None,
            ),
        )

    def _current(self, db, counter: str):
        row = db.execute("SELECT stop_id FROM counters WHERE id=?", (counter,)).fetchone()
        if row is None or row["stop_id"] is None:
            return None
        return db.execute("SELECT * FROM stops WHERE id=?", (row["stop_id"],)).fetchone()

    def _ticket_row(self, db, ticket_id: int):
        return db.execute("SELECT * FROM tickets WHERE id=?", (ticket_id,)).fetchone()

    def _ticket_by_number(self, db, number: int, day: str):
        row = db.execute(
            "SELECT * FROM tickets WHERE site=? AND day=? AND number=?", (self.site.site.id, day, number)
        ).fetchone()
        if row is None:
            raise QueueError("not_found", f"{number}番の整理券はありません", f"no ticket {number} today")
        return row

    def _set_counter(self, db, counter: str, stop_id: int | None, now: datetime) -> None:
        db.execute(
            "UPDATE counters SET stop_id=?, since=? WHERE id=?",
            (stop_id, _iso(now) if stop_id else None, counter),
        )

    def _precedence_met(self, db, stop) -> bool:
        needs = self._services[stop["service"]].after
        if not needs:
            return True
        marks = ",".join("?" * len(needs))
        row = db.execute(
            f"SELECT COUNT(*) FROM stops WHERE ticket_id=? AND service IN ({marks})"
            f" AND state NOT IN ('done', 'no_show', 'skipped')",
            (stop["ticket_id"], *needs),
        ).fetchone()
        return row[0] == 0

    def _engaged_elsewhere(self, db, ticket_id: int, counter: str | None = None):
        return db.execute(
            "SELECT * FROM stops WHERE ticket_id=? AND state IN ('called', 'serving')", (ticket_id,)
        ).fetchone()

    def _close_ticket_if_done(self, db, ticket_id: int, now: datetime) -> None:
        open_ = db.execute(
            "SELECT COUNT(*) FROM stops WHERE ticket_id=? AND state NOT IN ('done', 'no_show', 'skipped')",
            (ticket_id,),
        ).fetchone()[0]
        if open_ == 0:
            db.execute(
                "UPDATE tickets SET state=?, done_at=? WHERE id=? AND state=?",
                (TICKET_DONE, _iso(now), ticket_id, TICKET_ACTIVE),
            )

    def _release_away(self, db, now: datetime) -> int:
        """Stops whose no-show grace has passed become callable again (old place)."""
        return db.execute(
            "UPDATE stops SET state='waiting', returns_at=NULL WHERE state='away' AND returns_at<=?",
            (_iso(now),),
        ).rowcount

    def _end_current(self, db, counter: str, now: datetime, source: str, out: Outcome) -> None:
        """Finish the visit at ``counter`` (call-next on a busy counter means 完了)."""
        stop = self._current(db, counter)
        if stop is None:
            return
        self._finish_stop(db, stop, counter, now, source, out)

    def _touch(self, db, ticket_id: int, out: Outcome) -> None:
        """The counters whose waiting count this ticket's change may move: every
        counter serving one of its unfinished services gets a fresh display."""
        services = {
            r[0] for r in db.execute(
                "SELECT service FROM stops WHERE ticket_id=? AND state NOT IN ('done', 'no_show', 'skipped')", (ticket_id,)
            )
        }
        out.counters.update(c.id for c in self.site.counters if services & set(c.services))

    def _finish_stop(self, db, stop, counter, now, source, out) -> None:
        db.execute("UPDATE stops SET state='done', done_at=? WHERE id=?", (_iso(now), stop["id"]))
        # The visitor's wait for their next stops starts now (waits are
        # measured from here; the "separate" baseline queues them from here).
        db.execute(
            "UPDATE stops SET waiting_since=? WHERE ticket_id=? AND state='waiting'", (_iso(now), stop["ticket_id"])
        )
        self._set_counter(db, counter, None, now)
        ticket = self._ticket_row(db, stop["ticket_id"])
        self._log(db, now, "finish", source=source, ticket=ticket, stop=stop, counter=counter)
        self._close_ticket_if_done(db, stop["ticket_id"], now)
        out.counters.add(counter)
        self._touch(db, stop["ticket_id"], out)

    def _engage(self, db, stop, counter, now, source, out, *, action="call") -> None:
        db.execute(
            "UPDATE stops SET state='called', counter=?, called_at=?, returns_at=NULL WHERE id=?",
            (counter, _iso(now), stop["id"]),
        )
        self._set_counter(db, counter, stop["id"], now)
        ticket = self._ticket_row(db, stop["ticket_id"])
        self._log(db, now, action, source=source, ticket=ticket, stop=stop, counter=counter)
        out.counters.add(counter)
        self._touch(db, stop["ticket_id"], out)
        out.ticket = ticket["number"]
        out.calls.append(Call(ticket["number"], counter, stop["service"], now))

    def _callable_query(self, services: Iterable[str], day: str, *, sequential: bool = False) -> tuple[str, list]:
        """SQL for the stops ``services`` could call now.  ``sequential``: the
        itinerary is walked strictly in order (the "separate" baseline)."""
        services = list(services)
        marks = ",".join("?" * len(services))
        sql = (
            "SELECT s.* FROM stops s JOIN tickets t ON t.id = s.ticket_id"
            f" WHERE s.state='waiting' AND s.service IN ({marks}) AND t.state='active'"
            # Numbers restart every day: a ticket left over from yesterday is not called today.
            " AND t.day=?"
            " AND NOT EXISTS (SELECT 1 FROM stops e WHERE e.ticket_id=s.ticket_id"
            "                 AND e.state IN ('called', 'serving'))"
            # Precedence in SQL (table service_after mirrors the site's 'after'),
            # so one query answers "who can this counter call" at any queue length.
            " AND NOT EXISTS (SELECT 1 FROM service_after a JOIN stops p ON p.service = a.before"
            "                 WHERE a.service = s.service AND p.ticket_id = s.ticket_id"
            "                 AND p.state NOT IN ('done', 'no_show', 'skipped'))"
        )
        if sequential:
            sql += (
                " AND NOT EXISTS (SELECT 1 FROM stops q WHERE q.ticket_id = s.ticket_id AND q.position < s.position"
                "                 AND q.state NOT IN ('done', 'no_show', 'skipped'))"
            )
        return sql, [*services, day]

    def _callable(self, db, services: Iterable[str], day: str):
        """Stops ``services`` can call now, best first (original place)."""
        sql, args = self._callable_query(services, day)
        return db.execute(sql + " ORDER BY s.place, s.position, s.id", args)

    def _choose(self, db, services: tuple[str, ...], now: datetime):
        """The stop a counter serving ``services`` calls next, by the policy."""
        policy = self.settings.policy
        day = self.today(now)
        if policy == "lifetime":
            return self._callable(db, services, day).fetchone()
        if policy == "separate":
            # Today's office: a ticket per counter, taken when the previous
            # counter is done (waiting_since), in the itinerary's fixed order.
            sql, args = self._callable_query(services, day, sequential=True)
            return db.execute(sql + " ORDER BY s.waiting_since, s.id LIMIT 1", args).fetchone()
        return self._choose_madoguchi(db, services, day, now)

    def _choose_madoguchi(self, db, services, day: str, now: datetime):
        """Remaining work first, corrected by time in the building and unblocking.

        score (minutes, lower first) = remaining typical work of the ticket
        − ``aging`` × minutes since the ticket was issued
        − for each later stop of the ticket waiting for this one,
        max(0, ``unblock_min`` − the work callable now at that service ÷ its counters)
        − 2 × minutes waited beyond ``starve_min``.
        The first term is shortest-remaining-work-first: a certificate does
        not wait behind a whole move-in, and a visitor whose other stops can
        run meanwhile lets one who has only this stop left go first.  The
        second keeps the original order among visitors alike; the unblock
        bonus lets a family's other stops start while their counters are free;
        the starvation term bounds how long anyone can be passed over.
        Measured in docs/simulation.md.
        """
        sql, args = self._callable_query(services, day)
        rows = db.execute(
            "SELECT c.*, t.issued_at AS t_issued,"
            " (SELECT COALESCE(SUM(i.typical_min), 0) FROM stops r JOIN service_info i ON i.service = r.service"
            "   WHERE r.ticket_id = c.ticket_id AND r.state NOT IN ('done', 'no_show', 'skipped')) AS remaining,"
            " (SELECT GROUP_CONCAT(d.service) FROM stops d JOIN service_after a ON a.service = d.service AND a.before = c.service"
            "   WHERE d.ticket_id = c.ticket_id AND d.state NOT IN ('done', 'no_show', 'skipped')) AS unblocks"
            f" FROM ({sql}) c JOIN tickets t ON t.id = c.ticket_id",
            args,
        ).fetchall()
        if not rows:
            return None
        aging, unblock, starve = self.settings.aging, self.settings.unblock_min, self.settings.starve_min
        # What unblocking a later stop is worth depends on how long that stop
        # would then wait: a lot when its counters are free, nothing when they
        # are the bottleneck (then sending more work there sooner helps no one).
        # Only stops callable now are in the way: a stop still waiting for its
        # own earlier service is not (counting it starved whole families).
        expected = self._ready_minutes(db, day) if any(r["unblocks"] for r in rows) else {}

        def score(row) -> tuple[float, int, int]:
            in_building = (now - datetime.fromisoformat(row["t_issued"])).total_seconds() / 60
            waiting = (now - datetime.fromisoformat(row["waiting_since"])).total_seconds() / 60
            freed = row["unblocks"].split(",") if row["unblocks"] else ()
            bonus = sum(max(0.0, unblock - expected[s]) for s in freed)
            # Past starve_min of waiting, every further minute is a minute of
            # priority on top: nobody can be passed over for ever.
            starving = STARVE_RATE * max(0.0, waiting - starve)
            return (row["remaining"] - aging * in_building - bonus - starving, row["place"], row["position"])

        return min(rows, key=score)

    def _ready_minutes(self, db, day: str) -> dict[str, float]:
        """Per service: the work callable now (stops × typical time ÷ counters
        serving it), i.e. the wait a stop joining that line would expect."""
        sql, args = self._callable_query(tuple(self._services), day)
        ready = dict(db.execute(f"SELECT service, COUNT(*) FROM ({sql}) GROUP BY service", args).fetchall())
        return {
            s: ready.get(s, 0) * self._services[s].typical_min / self._serving[s] for s in self._services
        }

    def _count_callable(self, db, services: Iterable[str], day: str) -> int:
        sql, args = self._callable_query(services, day)
        return db.execute(f"SELECT COUNT(*) FROM ({sql})", args).fetchone()[0]

    # ------------------------------------------------------------------ tickets
    def issue(self, procedures: list[str], *, source: str = "api") -> TicketView:
        """Issue one ticket for ``procedures`` (kiosk, floor manager, API)."""
        return self._issue(procedures, source=source, key=None)[0]

    def issue_once(self, procedures: list[str], *, key: str, source: str = "api") -> tuple[TicketView, bool]:
        """Issue a ticket at most once per idempotency ``key`` (a kiosk's retry
        after a timeout or a restart).  Returns the ticket and whether it is
        the one issued earlier for the same key (a replay).

        The key is kept in ``seen_events`` (as ``ticket:<key>``, pruned after
        two days, like every event id) in the issuing transaction; its row's
        ``device`` column says what the key produced: ``ticket:<id>:<hash of
        the procedures>``.  Raises ``QueueError("conflict")`` when the key was
        used for other procedures.
        """
        return self._issue(procedures, source=source, key=key)

    def _issue(self, procedures: list[str], *, source: str, key: str | None) -> tuple[TicketView, bool]:
        if not procedures:
            raise QueueError("invalid", "手続を選んでください", "choose at least one procedure")
        if len(procedures) > MAX_PROCEDURES:
            raise QueueError(
                "invalid", f"手続は{MAX_PROCEDURES}件までです", f"at most {MAX_PROCEDURES} procedures per ticket"
            )
        unknown = [p for p in procedures if p not in self._procedures]
        if unknown:
            raise QueueError("invalid", "不明な手続です: " + ", ".join(unknown), "unknown procedure: " + ", ".join(unknown))
        services = self._itinerary(procedures)
        now = self.clock()
        day = self.today(now)
        event_id = f"ticket:{key}" if key is not None else None
        request = hashlib.sha256(json.dumps(list(procedures)).encode()).hexdigest()[:16]
        with self.store.transaction() as db:
            if event_id is not None:
                seen = db.execute("SELECT device FROM seen_events WHERE event_id=?", (event_id,)).fetchone()
                if seen is not None:
                    _, ticket_id, was = (seen["device"].split(":") + ["", ""])[:3]
                    if was != request or not ticket_id.isdigit():
                        raise QueueError("conflict", "この Idempotency-Key は別の手続の発券に使われています",
                                         "this Idempotency-Key was used for other procedures")
                    row = self._ticket_row(db, int(ticket_id))
                    if row is None:  # pragma: no cover - tickets are never deleted
                        raise QueueError("not_found", "整理券が見つかりません", "the ticket of this key is gone")
                    logger.info("ticket %d: issue retried with the same key, answered again", row["number"])
                    return self._ticket_view(db, row), True
            self._release_away(db, now)
            row = db.execute(
                "SELECT last FROM day_numbers WHERE site=? AND day=?", (self.site.site.id, day)
            ).fetchone()
            number = (row["last"] if row else 0) + 1
            if number > MAX_NUMBER:
                raise QueueError("busy", "本日の整理券は終了しました", "no more ticket numbers today")
            if row is None:
                db.execute("INSERT INTO day_numbers (site, day, last) VALUES (?, ?, ?)", (self.site.site.id, day, number))
            else:
                db.execute("UPDATE day_numbers SET last=? WHERE site=? AND day=?", (number, self.site.site.id, day))
            cur = db.execute(
                "INSERT INTO tickets (site, day, number, token, issued_at, state, procedures)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self.site.site.id,
                    day,
                    number,
                    secrets.token_urlsafe(16),
                    _iso(now),
                    TICKET_ACTIVE,
                    json.dumps(list(dict.fromkeys(procedures))),
                ),
            )
            ticket_id = cur.lastrowid
            for position, service in enumerate(services):
                db.execute(
                    "INSERT INTO stops (ticket_id, position, service, state, place, waiting_since)"
                    " VALUES (?, ?, ?, 'waiting', ?, ?)",
                    (ticket_id, position, service, ticket_id, _iso(now)),
                )
            ticket = self._ticket_row(db, ticket_id)
            self._log(db, now, "issue", source=source, ticket=ticket, detail={"services": services})
            if event_id is not None:
                db.execute("INSERT INTO seen_events (event_id, device, at) VALUES (?, ?, ?)",
                           (event_id, f"ticket:{ticket_id}:{request}", _iso(now)))
        logger.info("ticket %d issued: %s", number, " → ".join(services), extra=log_fields(ticket=number))
        return self.ticket(number, day), False

    def _itinerary(self, procedures: list[str]) -> list[str]:
        """Services of the procedures, once each, ordered so that 'after' holds
        (stable: otherwise in the order the procedures were chosen)."""
        wanted: list[str] = []
        for p in procedures:
            for s in self._procedures[p].services:
                if s not in wanted:
                    wanted.append(s)
        ordered: list[str] = []
        remaining = list(wanted)
        while remaining:
            for s in remaining:
                if all(a not in remaining or a == s for a in self._services[s].after):
                    ordered.append(s)
                    remaining.remove(s)
                    break
            else:  # pragma: no cover - cycles are refused when the site loads
                raise QueueError("invalid", "手続の順序が循環しています", "precedence cycle")
        return ordered

    def ticket(self, number: int, day: str | None = None) -> TicketView:
        day = day or self.today()
        db = self.store.conn
        row = self._ticket_by_number(db, number, day)
        return self._ticket_view(db, row)

    def ticket_by_token(self, token: str) -> TicketView | None:
        row = self.store.conn.execute("SELECT * FROM tickets WHERE token=?", (token,)).fetchone()
        return self._ticket_view(self.store.conn, row) if row else None

    @staticmethod
    def _stop_view(s) -> StopView:
        return StopView(
            id=s["id"],
            position=s["position"],
            service=s["service"],
            state=s["state"],
            counter=s["counter"],
            place=s["place"],
            waiting_since=_dt(s["waiting_since"]),
            called_at=_dt(s["called_at"]),
            done_at=_dt(s["done_at"]),
            returns_at=_dt(s["returns_at"]),
            no_shows=s["no_shows"],
            recalls=s["recalls"],
        )

    def _ticket_view(self, db, row) -> TicketView:
        stops = tuple(
            self._stop_view(s)
            for s in db.execute("SELECT * FROM stops WHERE ticket_id=? ORDER BY position, id", (row["id"],))
        )
        return TicketView(
            id=row["id"],
            number=row["number"],
            day=row["day"],
            token=row["token"],
            issued_at=_dt(row["issued_at"]),
            state=row["state"],
            procedures=tuple(json.loads(row["procedures"])),
            stops=stops,
        )

    def tickets(self, day: str | None = None, *, active_only: bool = False) -> list[TicketView]:
        day = day or self.today()
        db = self.store.conn
        sql = "SELECT * FROM tickets WHERE site=? AND day=?"
        if active_only:
            sql += " AND state='active'"
        rows = db.execute(sql + " ORDER BY id", (self.site.site.id, day)).fetchall()
        return [self._ticket_view(db, r) for r in rows]

    # ------------------------------------------------------------------ counter actions
    def call_next(self, counter: str, *, source: str = "api", event_id: str | None = None, device: str | None = None) -> Outcome:
        """次の方: finish the current visit (if any) and call the next ticket."""
        c = self._counter(counter)
        now = self.clock()
        out = Outcome()
        with self.store.transaction() as db:
            if not self._first_time(db, event_id, device, now):
                return Outcome(counters={counter}, duplicate=True)
            self._release_away(db, now)
            self._end_current(db, counter, now, source, out)
            stop = self._choose(db, c.services, now)
            if stop is None:
                out.counters.add(counter)
                out.ja, out.en = "お待ちの方はいません", "No one is waiting"
                return out
            self._engage(db, stop, counter, now, source, out)
        out.ja, out.en = f"{out.ticket}番をお呼びしました", f"Calling number {out.ticket}"
        return out

    def call(self, counter: str, number: int, *, source: str = "api") -> Outcome:
        """Call a specific ticket (e.g. a held one) to ``counter``."""
        c = self._counter(counter)
        now = self.clock()
        out = Outcome()
        with self.store.transaction() as db:
            self._release_away(db, now)
            ticket = self._ticket_by_number(db, number, self.today(now))
            if ticket["state"] != TICKET_ACTIVE:
                raise QueueError("conflict", f"{number}番は手続が終わっています", f"ticket {number} is finished")
            engaged = self._engaged_elsewhere(db, ticket["id"])
            if engaged is not None and engaged["counter"] != counter:
                name = self._counters[engaged["counter"]]
                raise QueueError(
                    "conflict",
                    f"{number}番は{name.name_ja}で対応中です",
                    f"number {number} is engaged at {name.name_en}",
                )
            marks = ",".join("?" * len(c.services))
            stops = db.execute(
                f"SELECT * FROM stops WHERE ticket_id=? AND service IN ({marks})"
                " AND state IN ('waiting', 'held', 'away') ORDER BY position",
                (ticket["id"], *c.services),
            ).fetchall()
            if not stops:
                raise QueueError(
                    "not_found",
                    f"{number}番はこの窓口の手続がありません",
                    f"number {number} has nothing to do at this counter",
                )
            # The first stop here whose precedence is met (another one here may still wait for it).
            stop = next((s for s in stops if self._precedence_met(db, s)), None)
            if stop is None:
                raise QueueError(
                    "precedence",
                    f"{number}番は先に他の窓口の手続があります",
                    f"number {number} must finish another counter first",
                )
            self._end_current(db, counter, now, source, out)
            self._engage(db, stop, counter, now, source, out)
        out.ja, out.en = f"{number}番をお呼びしました", f"Calling number {number}"
        return out

    def _require_current(self, db, counter: str):
        stop = self._current(db, counter)
        if stop is None:
            raise QueueError("empty", "対応中の方はいません", "no one at this counter")
        return stop

    def _button(self, counter: str, event_id: str | None, device: str | None, act) -> Outcome:
        """The frame of every action on the visitor at ``counter`` (the staff
        buttons): one transaction; an event seen before changes nothing; no
        visitor at the counter is an error.  ``act(db, stop, now, out)`` does
        the rest."""
        self._counter(counter)
        now = self.clock()
        out = Outcome()
        with self.store.transaction() as db:
            if not self._first_time(db, event_id, device, now):
                return Outcome(counters={counter}, duplicate=True)
            act(db, self._require_current(db, counter), now, out)
            out.counters.add(counter)
        return out

    def recall(self, counter: str, *, source: str = "api", event_id: str | None = None, device: str | None = None) -> Outcome:
        """再呼出: announce the current ticket again."""

        def act(db, stop, now, out) -> None:
            if stop["state"] != StopState.CALLED.value:
                raise QueueError("conflict", "対応中のため再呼出できません", "already being served; no recall")
            db.execute("UPDATE stops SET recalls=recalls+1 WHERE id=?", (stop["id"],))
            ticket = self._ticket_row(db, stop["ticket_id"])
            self._log(db, now, "recall", source=source, ticket=ticket, stop=stop, counter=counter)
            out.ticket = ticket["number"]
            out.calls.append(Call(ticket["number"], counter, stop["service"], now, recall=True))
            out.ja, out.en = f"{out.ticket}番を再呼出しました", f"Calling number {out.ticket} again"

        return self._button(counter, event_id, device, act)

    def start(self, counter: str, *, source: str = "api") -> Outcome:
        """受付開始: the called visitor has arrived at the counter."""
        self._counter(counter)
        now = self.clock()
        out = Outcome()
        with self.store.transaction() as db:
            stop = self._require_current(db, counter)
            if stop["state"] == StopState.CALLED.value:
                db.execute("UPDATE stops SET state='serving', started_at=? WHERE id=?", (_iso(now), stop["id"]))
                ticket = self._ticket_row(db, stop["ticket_id"])
                self._log(db, now, "start", source=source, ticket=ticket, stop=stop, counter=counter)
                out.ticket = ticket["number"]
            out.counters.add(counter)
        if out.ticket is not None:
            out.ja, out.en = f"{out.ticket}番の受付を開始しました", f"Serving number {out.ticket}"
        return out

    def no_show(self, counter: str, *, source: str = "api", event_id: str | None = None, device: str | None = None) -> Outcome:
        """不在: the called visitor did not come.  Away for the grace period, then
        back at the old place; given up after ``max_no_shows``."""

        def act(db, stop, now, out) -> None:
            if stop["state"] != StopState.CALLED.value:
                raise QueueError("conflict", "対応中の方は不在にできません", "the visitor is being served: not a no-show")
            no_shows = stop["no_shows"] + 1
            ticket = self._ticket_row(db, stop["ticket_id"])
            if no_shows >= self.settings.max_no_shows:
                db.execute(
                    "UPDATE stops SET state='no_show', no_shows=?, done_at=? WHERE id=?",
                    (no_shows, _iso(now), stop["id"]),
                )
                self._close_ticket_if_done(db, stop["ticket_id"], now)
                out.ja, out.en = f"{ticket['number']}番を不在で終了しました", f"Number {ticket['number']} given up (no-show)"
            else:
                returns = now + timedelta(seconds=self.settings.no_show_grace_s)
                db.execute(
                    "UPDATE stops SET state='away', no_shows=?, counter=NULL, returns_at=? WHERE id=?",
                    (no_shows, _iso(returns), stop["id"]),
                )
                out.ja, out.en = f"{ticket['number']}番は不在です", f"Number {ticket['number']} did not come"
            self._set_counter(db, counter, None, now)
            self._log(db, now, "no_show", source=source, ticket=ticket, stop=stop, counter=counter, detail={"count": no_shows})
            self._touch(db, stop["ticket_id"], out)
            out.ticket = ticket["number"]

        return self._button(counter, event_id, device, act)

    def hold(self, counter: str, *, source: str = "api", event_id: str | None = None, device: str | None = None) -> Outcome:
        """保留: park the current visitor (e.g. to fill a form); call back by number."""

        def act(db, stop, now, out) -> None:
            db.execute("UPDATE stops SET state='held' WHERE id=?", (stop["id"],))
            self._set_counter(db, counter, None, now)
            ticket = self._ticket_row(db, stop["ticket_id"])
            self._log(db, now, "hold", source=source, ticket=ticket, stop=stop, counter=counter)
            self._touch(db, stop["ticket_id"], out)
            out.ticket = ticket["number"]
            out.ja, out.en = f"{out.ticket}番を保留にしました", f"Number {out.ticket} on hold"

        return self._button(counter, event_id, device, act)

    def finish(self, counter: str, *, source: str = "api", event_id: str | None = None, device: str | None = None) -> Outcome:
        """完了: this stop is done; the ticket moves on to its next stops."""

        def act(db, stop, now, out) -> None:
            self._finish_stop(db, stop, counter, now, source, out)
            out.ticket = self._ticket_row(db, stop["ticket_id"])["number"]
            out.ja, out.en = f"{out.ticket}番の手続が完了しました", f"Number {out.ticket} done here"

        return self._button(counter, event_id, device, act)

    def transfer(self, counter: str, service: str, *, source: str = "api") -> Outcome:
        """回付: the current visitor needs ``service`` instead; they keep their place."""
        self._counter(counter)
        if service not in self._services:
            raise QueueError("invalid", f"不明な業務です: {service}", f"unknown service {service!r}")
        now = self.clock()
        out = Outcome()
        with self.store.transaction() as db:
            stop = self._require_current(db, counter)
            ticket = self._ticket_row(db, stop["ticket_id"])
            other = db.execute(
                "SELECT id FROM stops WHERE ticket_id=? AND service=? AND id<>?"
                " AND state NOT IN ('done', 'no_show', 'skipped')",
                (ticket["id"], service, stop["id"]),
            ).fetchone()
            if other is not None:
                # The ticket already waits for that service: this stop merges into it.
                db.execute("UPDATE stops SET state='skipped', counter=NULL, done_at=? WHERE id=?", (_iso(now), stop["id"]))
            else:
                db.execute(
                    "UPDATE stops SET service=?, state='waiting', counter=NULL, called_at=NULL, started_at=NULL,"
                    " waiting_since=? WHERE id=?",
                    (service, _iso(now), stop["id"]),
                )
            self._set_counter(db, counter, None, now)
            self._log(db, now, "transfer", source=source, ticket=ticket, stop=stop, counter=counter, detail={"to": service})
            out.counters.add(counter)
            self._touch(db, ticket["id"], out)
            out.ticket = ticket["number"]
        name = self._services[service]
        out.ja, out.en = f"{out.ticket}番を{name.name_ja}へ回付しました", f"Number {out.ticket} sent to {name.name_en}"
        return out

    def add_stop(self, number: int, service: str, *, source: str = "api") -> Outcome:
        """A need found at the counter: add ``service`` to ticket ``number``
        (at its original place; precedence applies as at issue)."""
        if service not in self._services:
            raise QueueError("invalid", f"不明な業務です: {service}", f"unknown service {service!r}")
        now = self.clock()
        out = Outcome()
        with self.store.transaction() as db:
            ticket = self._ticket_by_number(db, number, self.today(now))
            existing = db.execute(
                "SELECT 1 FROM stops WHERE ticket_id=? AND service=? AND state NOT IN ('done', 'no_show', 'skipped')",
                (ticket["id"], service),
            ).fetchone()
            if existing:
                raise QueueError("conflict", f"{number}番には既にこの手続があります", f"number {number} already has {service}")
            position = db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM stops WHERE ticket_id=?", (ticket["id"],)).fetchone()[0]
            db.execute(
                "INSERT INTO stops (ticket_id, position, service, state, place, waiting_since) VALUES (?, ?, ?, 'waiting', ?, ?)",
                (ticket["id"], position, service, ticket["id"], _iso(now)),
            )
            if ticket["state"] != TICKET_ACTIVE:
                db.execute("UPDATE tickets SET state=?, done_at=NULL WHERE id=?", (TICKET_ACTIVE, ticket["id"]))
            self._log(db, now, "add_stop", source=source, ticket=ticket, detail={"service": service})
            out.ticket = number
            name = self._services[service]
            out.ja, out.en = f"{number}番に{name.name_ja}を追加しました", f"Added {name.name_en} to number {number}"
            out.counters.update(c.id for c in self.site.counters if service in c.services)
        return out

    def _first_time(self, db, event_id: str | None, device: str | None, now: datetime) -> bool:
        """Record ``event_id`` inside the action's transaction: an event
        delivered twice (MQTT QoS 1 is at-least-once) is applied once."""
        if event_id is None:
            return True
        if db.execute("SELECT 1 FROM seen_events WHERE event_id=?", (event_id,)).fetchone():
            return False
        db.execute("INSERT INTO seen_events (event_id, device, at) VALUES (?, ?, ?)", (event_id, device or "", _iso(now)))
        return True

    def seen(self, event_id: str) -> bool:
        return self.store.conn.execute("SELECT 1 FROM seen_events WHERE event_id=?", (event_id,)).fetchone() is not None

    def prune_seen(self, older_than: timedelta = timedelta(days=2)) -> int:
        with self.store.transaction() as db:
            return db.execute("DELETE FROM seen_events WHERE at < ?", (_iso(self.clock() - older_than),)).rowcount

    # ------------------------------------------------------------------ views
    def release_due(self) -> bool:
        """Bring no-show tickets back whose grace has passed.  True if any did."""
        with self.store.transaction() as db:
            return self._release_away(db, self.clock()) > 0

    def counter_view(self, counter: str) -> CounterView:
        c = self._counter(counter)
        db = self.store.conn
        stop = self._current(db, counter)
        view = None
        number = None
        if stop is not None:
            number = self._ticket_row(db, stop["ticket_id"])["number"]
            view = self._stop_view(stop)
        waiting = self._count_callable(db, c.services, self.today())
        return CounterView(id=counter, stop=view, ticket=number, waiting=waiting)

    def waiting_by_service(self) -> dict[str, int]:
        """Stops waiting per service (callable now or later), for estimates."""
        counts = {s.id: 0 for s in self.site.services}
        rows = self.store.conn.execute(
            "SELECT s.service, COUNT(*) FROM stops s JOIN tickets t ON t.id=s.ticket_id"
            " WHERE t.state='active' AND t.site=? AND t.day=? AND s.state IN ('waiting', 'away', 'held')"
            " GROUP BY s.service",
            (self.site.site.id, self.today()),
        )
        for service, n in rows:
            counts[service] = n
        return counts

    def ticket_estimate(self, number: int, day: str | None = None) -> float | None:
        """Minutes until ticket ``number`` is likely called next (0 while it
        is being called or served; None when it is finished, or when its
        open stops are all away (不在) or held (保留) — no line to count).

        For each stop it could be called to now: the typical work of the
        callable stops ahead of it (by original place) at the counters that
        serve it, ÷ those counters; the soonest of those.  A stop still waiting
        for an earlier service of the same ticket starts after that one
        (its estimate + its typical time).  Its error is measured by the
        simulator (docs/simulation.md).
        """
        db = self.store.conn
        day = day or self.today()
        ticket = self._ticket_by_number(db, number, day)
        if ticket["state"] != TICKET_ACTIVE:
            return None
        stops = db.execute(
            "SELECT * FROM stops WHERE ticket_id=? AND state NOT IN ('done', 'no_show', 'skipped')", (ticket["id"],)
        ).fetchall()
        if any(s["state"] in ENGAGED for s in stops):
            return 0.0
        estimates = []
        for stop in stops:
            if stop["state"] != StopState.WAITING.value:
                continue
            minutes = self._line_minutes(db, stop, day)
            if not self._precedence_met(db, stop):
                after = self._services[stop["service"]].after
                first = [b for b in stops if b["service"] in after and b["state"] == StopState.WAITING.value]
                if first:
                    minutes = max(minutes, min(
                        self._line_minutes(db, b, day) + self._services[b["service"]].typical_min for b in first
                    ))
            estimates.append(minutes)
        return min(estimates) if estimates else None

    def _line_minutes(self, db, stop, day: str) -> float:
        """The work ahead of ``stop`` (callable stops with a better original
        place, at any service its counters also serve) ÷ those counters."""
        counters = [c for c in self.site.counters if stop["service"] in c.services]
        shared = tuple({s for c in counters for s in c.services})
        sql, args = self._callable_query(shared, day)
        ahead = db.execute(
            f"SELECT COALESCE(SUM(i.typical_min), 0) FROM ({sql}) c JOIN service_info i ON i.service = c.service"
            " WHERE c.id <> ? AND (c.place < ? OR (c.place = ? AND c.position < ?))",
            (*args, stop["id"], stop["place"], stop["place"], stop["position"]),
        ).fetchone()[0]
        return ahead / max(1, len(counters))

    def estimate_minutes(self, waiting: dict[str, int] | None = None, *, exact: bool = False) -> dict[str, float]:
        """A first wait estimate per service: waiting × typical time ÷ counters
        serving it (whole minutes unless ``exact``).  Its error is measured
        by the simulator (docs/simulation.md)."""
        waiting = waiting if waiting is not None else self.waiting_by_service()
        result = {}
        for s in self.site.services:
            minutes = waiting[s.id] * s.typical_min / self._serving[s.id]
            result[s.id] = minutes if exact else round(minutes)
        return result

    def recent_calls(self, limit: int) -> list[Call]:
        rows = self.store.conn.execute(
            "SELECT at, number, counter, service, action FROM queue_log"
            " WHERE action IN ('call', 'recall') AND day=? ORDER BY id DESC LIMIT ?",
            (self.today(), limit),
        ).fetchall()
        return [Call(r["number"], r["counter"], r["service"], _dt(r["at"]), r["action"] == "recall") for r in rows]
