"""The queue engine (design §4) on a real SQLite file, the sample site and an
injected clock: no-show grace is tested by moving the clock, never by sleeping."""

from __future__ import annotations

import os
import re
import tempfile
from collections import Counter as Tally
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from bus.configfile import load_toml
from central.config import QueueSettings, Site
from central.queue import Call, QueueEngine, QueueError
from central.store import Store

SITE_FILE = Path(__file__).resolve().parents[2] / "config" / "site.toml"
SITE = load_toml(SITE_FILE, Site)
TOKYO = ZoneInfo("Asia/Tokyo")
# 2025-04-01 09:30 in Tokyo.
T0 = datetime(2025, 4, 1, 0, 30, tzinfo=UTC)
GRACE_S = 300
FINISHED = {"done", "no_show", "skipped"}
ENGAGED = {"called", "serving"}


class Clock:
    """A clock the test moves by hand (aware datetimes, like the real one)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "q.db"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    yield s
    s.close()


def make_engine(store, clock, *, grace_s=GRACE_S, max_no_shows=2, site=SITE) -> QueueEngine:
    return QueueEngine(store, site, QueueSettings(no_show_grace_s=grace_s, max_no_shows=max_no_shows), clock=clock)


@pytest.fixture
def engine(store, clock) -> QueueEngine:
    return make_engine(store, clock)


def stop(engine: QueueEngine, number: int, service: str):
    (found,) = [s for s in engine.ticket(number).stops if s.service == service]
    return found


def called(out) -> list[tuple[int, str, str]]:
    return [(c.number, c.counter, c.service) for c in out.calls]


def at_counter(engine: QueueEngine, counter: str) -> tuple[int, str] | None:
    view = engine.counter_view(counter)
    return None if view.stop is None else (view.ticket, view.stop.service)


def queue_error(code: str, fn, *args, **kwargs) -> QueueError:
    with pytest.raises(QueueError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, info.value
    assert info.value.ja and info.value.en
    return info.value


# ---------------------------------------------------------------- issue


def test_numbers_count_per_tokyo_day_and_restart_at_one(engine, clock):
    assert [engine.issue(["tennyu"]).number for _ in range(3)] == [1, 2, 3]
    assert engine.ticket(1).day == "2025-04-01"
    clock.now = datetime(2025, 4, 1, 14, 59, 59, tzinfo=UTC)  # 23:59:59 in Tokyo
    assert engine.issue(["tennyu"]).number == 4
    clock.now = datetime(2025, 4, 1, 15, 30, tzinfo=UTC)  # 00:30 the next day in Tokyo
    first = engine.issue(["juminhyo"])
    assert (first.number, first.day) == (1, "2025-04-02")
    assert engine.issue(["tennyu"]).number == 2
    assert [t.number for t in engine.tickets("2025-04-01")] == [1, 2, 3, 4]
    assert [t.number for t in engine.tickets()] == [1, 2]
    # Today's number 1 is the new ticket, not yesterday's.
    assert engine.ticket(1).procedures == ("juminhyo",)
    assert engine.ticket(1, "2025-04-01").procedures == ("tennyu",)


def test_yesterdays_leftover_tickets_are_not_called_today(engine, clock):
    """Numbers restart every day: calling a ticket left over from yesterday
    would put "1番" on the display for today's number 1's holder."""
    engine.issue(["tennyu"])
    engine.issue(["tennyu"])
    clock.now = datetime(2025, 4, 2, 0, 30, tzinfo=UTC)
    today = engine.issue(["tennyu"])
    out = engine.call_next("1")
    assert called(out) == [(1, "1", "juminido")]
    assert stop(engine, 1, "juminido").state == "called"
    assert [s.state for t in engine.tickets("2025-04-01") for s in t.stops] == ["waiting", "waiting"]
    assert engine.counter_view("1").stop.id == today.stops[0].id
    assert engine.call_next("1").calls == []


def test_wait_estimates_count_only_todays_tickets(engine, clock):
    for _ in range(5):
        engine.issue(["tennyu", "kokuho-kanyu"])
    waiting = engine.waiting_by_service()
    assert (waiting["juminido"], waiting["kokuho"], waiting["shomei"]) == (5, 5, 0)
    assert engine.estimate_minutes()["juminido"] == 5 * 15  # typical 15 min, one counter
    clock.now = datetime(2025, 4, 2, 0, 0, tzinfo=UTC)  # next morning, nobody here yet
    assert set(engine.waiting_by_service().values()) == {0}
    assert set(engine.estimate_minutes().values()) == {0}
    engine.issue(["juminhyo"])
    # 証明書: one waiting, 4 min, two counters serve it.
    assert engine.estimate_minutes()["shomei"] == 2


@pytest.mark.parametrize(
    ("procedures", "services"),
    [
        (["jidoteate", "tennyu"], ["juminido", "kodomo"]),
        (["tennyu", "jidoteate"], ["juminido", "kodomo"]),
        # Stable otherwise: the certificate stays first, 国保 moves behind 住民異動.
        (["kokuho-kanyu", "juminhyo", "tennyu"], ["shomei", "juminido", "kokuho"]),
        (["inu-toroku", "nenkin-henko", "tenkyo"], ["juminido", "inu", "nenkin"]),
        (["juminhyo"], ["shomei"]),
    ],
)
def test_itinerary_honours_after(engine, procedures, services):
    ticket = engine.issue(procedures)
    assert [s.service for s in ticket.stops] == services
    assert [s.position for s in ticket.stops] == list(range(len(services)))
    assert all(s.state == "waiting" and s.place == ticket.stops[0].place for s in ticket.stops)
    assert ticket.procedures == tuple(procedures)


def test_duplicate_services_are_merged(engine):
    ticket = engine.issue(["tennyu", "tenkyo", "tennyu", "kokuho-kanyu"])
    assert [s.service for s in ticket.stops] == ["juminido", "kokuho"]
    assert ticket.procedures == ("tennyu", "tenkyo", "kokuho-kanyu")


@pytest.mark.parametrize(
    "procedures",
    [[], ["nosuch"], ["tennyu", "nosuch"], ["tennyu"] * 13],
    ids=["empty", "unknown", "one-unknown", "too-many"],
)
def test_bad_procedures_are_invalid_and_issue_nothing(engine, procedures):
    queue_error("invalid", engine.issue, procedures)
    assert engine.tickets() == []
    assert engine.issue(["tennyu"] * 12).number == 1


def test_unknown_procedure_is_named(engine):
    err = queue_error("invalid", engine.issue, ["tennyu", "tenyu"])
    assert "tenyu" in err.en and "tenyu" in err.ja


def test_tokens_are_unique_and_unguessable_looking(engine):
    tickets = [engine.issue(["juminhyo"]) for _ in range(40)]
    tokens = [t.token for t in tickets]
    assert len(set(tokens)) == len(tokens)
    for t in tickets:
        assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", t.token), t.token
        assert engine.ticket_by_token(t.token) == engine.ticket(t.number)
    # Not a counter or a timestamp: no shared prefix, no common characters by position.
    assert len(os.path.commonprefix(tokens)) < 3
    assert engine.ticket_by_token("1") is None
    assert engine.ticket_by_token(tokens[0][:-1]) is None


# ---------------------------------------------------------------- one place at a time


def test_a_ticket_called_at_one_counter_is_not_callable_elsewhere(engine):
    a = engine.issue(["tennyu", "juminhyo"])  # 住民異動 (counter 1) and 証明書 (counters 1, 3)
    assert called(engine.call_next("1")) == [(a.number, "1", "juminido")]
    assert engine.call_next("3").calls == []
    assert at_counter(engine, "3") is None
    engine.start("1")
    assert engine.call_next("3").calls == []
    engine.finish("1")
    assert called(engine.call_next("3")) == [(a.number, "3", "shomei")]


def test_call_by_number_of_a_ticket_engaged_elsewhere_is_a_conflict(engine):
    a = engine.issue(["tennyu", "juminhyo", "kokuho-kanyu"])
    engine.call_next("1")
    before = engine.ticket(a.number)
    err = queue_error("conflict", engine.call, "3", a.number)
    assert "1" in err.en
    queue_error("conflict", engine.call, "2", a.number)
    assert engine.ticket(a.number) == before
    assert at_counter(engine, "1") == (a.number, "juminido")
    assert at_counter(engine, "3") is None and at_counter(engine, "2") is None


# ---------------------------------------------------------------- original place


def test_a_ticket_keeps_its_original_place_between_counters(engine):
    a = engine.issue(["tennyu", "kokuho-kanyu"])
    b = engine.issue(["kokuho-kanyu"])
    assert called(engine.call_next("1")) == [(a.number, "1", "juminido")]
    # A is at counter 1 and must finish 住民異動 first: B is the one callable.
    assert called(engine.call_next("2")) == [(b.number, "2", "kokuho")]
    c = engine.issue(["kokuho-kanyu"])
    engine.finish("1")
    # A comes before C (A's place is older), not behind it.
    out = engine.call_next("2")
    assert called(out) == [(a.number, "2", "kokuho")]
    assert stop(engine, b.number, "kokuho").state == "done"
    assert called(engine.call_next("2")) == [(c.number, "2", "kokuho")]
    assert engine.call_next("2").calls == []


def test_a_later_ticket_never_overtakes_an_earlier_one(engine, clock):
    numbers = []
    issued = [engine.issue(["juminhyo"]).number for _ in range(3)]
    for counter in ["3", "1", "3"]:
        clock.advance(30)
        issued.append(engine.issue(["juminhyo"]).number)
        out = engine.call_next(counter)
        numbers.append(out.calls[0].number)
    numbers += [engine.call_next(c).calls[0].number for c in ["1", "3", "1"]]
    assert numbers == sorted(numbers) == issued
    assert engine.call_next("1").calls == [] and engine.call_next("3").calls == []


# ---------------------------------------------------------------- precedence


def test_precedence_blocks_until_the_earlier_service_is_done(engine):
    a = engine.issue(["kokuho-kanyu", "tennyu"])
    assert engine.call_next("2").calls == []
    assert engine.counter_view("2").waiting == 0
    err = queue_error("precedence", engine.call, "2", a.number)
    assert str(a.number) in err.en
    assert stop(engine, a.number, "kokuho").state == "waiting"
    engine.call_next("1")
    queue_error("conflict", engine.call, "2", a.number)
    engine.finish("1")
    assert engine.counter_view("2").waiting == 1
    assert called(engine.call_next("2")) == [(a.number, "2", "kokuho")]


def test_call_by_number_takes_the_stop_that_is_callable(engine):
    """Counter 3 serves 児童手当 and 証明書: a ticket whose 児童手当 still waits for
    住民異動 can be called there by number for its certificate (as call_next would)."""
    a = engine.issue(["tennyu", "jidoteate", "juminhyo"])
    assert [s.service for s in a.stops] == ["juminido", "kodomo", "shomei"]
    out = engine.call("3", a.number)
    assert called(out) == [(a.number, "3", "shomei")]
    assert stop(engine, a.number, "kodomo").state == "waiting"


def test_call_next_on_a_busy_counter_finishes_the_current_visit(engine, clock):
    a = engine.issue(["tennyu"])
    b = engine.issue(["tennyu"])
    engine.call_next("1")
    engine.start("1")
    clock.advance(600)
    out = engine.call_next("1")
    assert called(out) == [(b.number, "1", "juminido")]
    done = stop(engine, a.number, "juminido")
    assert (done.state, done.done_at) == ("done", clock.now)
    assert engine.ticket(a.number).state == "done"
    assert at_counter(engine, "1") == (b.number, "juminido")
    # Nobody left: the current visit still ends and the counter is free.
    out = engine.call_next("1")
    assert out.calls == [] and "1" in out.counters
    assert stop(engine, b.number, "juminido").state == "done"
    assert at_counter(engine, "1") is None


# ---------------------------------------------------------------- recall, start, empty counter


def test_recall_announces_again_until_the_visitor_arrives(engine, clock):
    a = engine.issue(["tennyu"])
    engine.call_next("1")
    clock.advance(20)
    out = engine.recall("1")
    assert out.calls == [Call(a.number, "1", "juminido", clock.now, recall=True)]
    assert out.ticket == a.number and out.counters == {"1"}
    engine.recall("1")
    assert stop(engine, a.number, "juminido").recalls == 2
    assert engine.recent_calls(5)[0].recall is True
    engine.start("1")
    assert stop(engine, a.number, "juminido").state == "serving"
    queue_error("conflict", engine.recall, "1")
    assert stop(engine, a.number, "juminido").recalls == 2


@pytest.mark.parametrize("action", ["recall", "finish", "hold", "no_show", "start"])
def test_actions_need_someone_at_the_counter(engine, action):
    engine.issue(["tennyu"])
    queue_error("empty", getattr(engine, action), "1")
    queue_error("not_found", getattr(engine, action), "9")
    assert stop(engine, 1, "juminido").state == "waiting"


def test_transfer_and_unknown_things(engine):
    queue_error("empty", engine.transfer, "1", "shomei")
    queue_error("invalid", engine.transfer, "1", "nosuch")
    queue_error("not_found", engine.call_next, "9")
    queue_error("not_found", engine.call, "1", 42)
    queue_error("not_found", engine.add_stop, 42, "shomei")
    a = engine.issue(["kokuho-kanyu"])
    queue_error("not_found", engine.call, "1", a.number)  # nothing to do at counter 1


# ---------------------------------------------------------------- no-show


def test_no_show_goes_away_for_the_grace_period_and_returns_at_its_old_place(engine, clock):
    a, b, c, d = (engine.issue(["tennyu"]).number for _ in range(4))
    engine.call_next("1")
    out = engine.no_show("1")
    assert out.ticket == a and "1" in out.counters
    away = stop(engine, a, "juminido")
    assert away.state == "away" and away.no_shows == 1
    assert away.returns_at == T0 + timedelta(seconds=GRACE_S)
    assert at_counter(engine, "1") is None
    assert called(engine.call_next("1")) == [(b, "1", "juminido")]
    clock.advance(GRACE_S - 1)
    assert engine.release_due() is False
    assert called(engine.call_next("1")) == [(c, "1", "juminido")]
    clock.advance(1)
    # Back at its old place: before D, who was issued after it.
    assert called(engine.call_next("1")) == [(a, "1", "juminido")]
    assert stop(engine, a, "juminido").returns_at is None
    # Second no-show (max_no_shows=2): given up, and the ticket closes.
    engine.no_show("1")
    gone = stop(engine, a, "juminido")
    assert (gone.state, gone.no_shows) == ("no_show", 2)
    assert engine.ticket(a).state == "done"
    assert a not in [t.number for t in engine.tickets(active_only=True)]
    clock.advance(GRACE_S * 10)
    assert called(engine.call_next("1")) == [(d, "1", "juminido")]
    assert engine.call_next("1").calls == []
    assert stop(engine, a, "juminido").state == "no_show"


def test_release_due_brings_no_shows_back(engine, clock):
    a = engine.issue(["tennyu"]).number
    engine.call_next("1")
    engine.no_show("1")
    assert engine.counter_view("1").waiting == 0
    clock.advance(GRACE_S)
    assert engine.release_due() is True
    assert stop(engine, a, "juminido").state == "waiting"
    assert engine.counter_view("1").waiting == 1
    assert engine.release_due() is False


def test_a_given_up_stop_leaves_the_rest_of_the_ticket_open(store, clock):
    engine = make_engine(store, clock, max_no_shows=1)
    a = engine.issue(["juminhyo", "jidoteate"]).number  # 証明書, 児童手当 (both at counter 3)
    engine.call_next("3")
    engine.no_show("3")
    assert stop(engine, a, "shomei").state == "no_show"
    assert engine.ticket(a).state == "active"
    assert called(engine.call_next("3")) == [(a, "3", "kodomo")]
    engine.finish("3")
    assert engine.ticket(a).state == "done"


def test_call_by_number_during_the_grace_period(engine):
    a = engine.issue(["tennyu"]).number
    engine.issue(["tennyu"])
    engine.call_next("1")
    engine.no_show("1")
    # The visitor turns up at once: staff call them by number.
    assert called(engine.call("1", a)) == [(a, "1", "juminido")]
    s = stop(engine, a, "juminido")
    assert (s.state, s.returns_at, s.no_shows) == ("called", None, 1)


# ---------------------------------------------------------------- hold


def test_hold_frees_the_counter_until_called_back_by_number(engine):
    a = engine.issue(["tennyu"]).number
    b = engine.issue(["tennyu"]).number
    engine.call_next("1")
    out = engine.hold("1")
    assert out.ticket == a and "1" in out.counters
    assert stop(engine, a, "juminido").state == "held"
    assert at_counter(engine, "1") is None
    assert called(engine.call_next("1")) == [(b, "1", "juminido")]
    out = engine.call_next("1")  # B done; A is held, not next
    assert out.calls == []
    assert stop(engine, a, "juminido").state == "held"
    assert called(engine.call("1", a)) == [(a, "1", "juminido")]
    assert at_counter(engine, "1") == (a, "juminido")
    engine.finish("1")
    assert engine.ticket(a).state == "done"


def test_a_held_certificate_is_called_back_while_another_stop_waits_for_precedence(engine):
    a = engine.issue(["tennyu", "jidoteate", "juminhyo"]).number  # 住民異動, 児童手当, 証明書
    engine.call("3", a)
    assert at_counter(engine, "3") == (a, "shomei")
    engine.hold("3")
    assert called(engine.call("3", a)) == [(a, "3", "shomei")]


# ---------------------------------------------------------------- transfer, add a stop


def test_transfer_keeps_the_original_place(engine, clock):
    a = engine.issue(["tennyu"]).number
    clock.advance(60)
    b = engine.issue(["juminhyo"]).number
    engine.call_next("1")
    clock.advance(60)
    out = engine.transfer("1", "shomei")
    assert out.ticket == a and "証明書発行" in out.ja
    moved = stop(engine, a, "shomei")
    assert moved.state == "waiting" and moved.counter is None
    assert moved.place < stop(engine, b, "shomei").place
    assert at_counter(engine, "1") is None
    assert called(engine.call_next("3")) == [(a, "3", "shomei")]
    assert called(engine.call_next("1")) == [(b, "1", "shomei")]


def test_transfer_into_a_service_already_on_the_ticket_merges(engine):
    a = engine.issue(["tennyu", "juminhyo"]).number
    engine.call_next("1")
    engine.transfer("1", "shomei")
    states = {s.service: s.state for s in engine.ticket(a).stops}
    assert states == {"juminido": "skipped", "shomei": "waiting"}
    assert engine.ticket(a).state == "active"
    assert at_counter(engine, "1") is None
    assert called(engine.call_next("3")) == [(a, "3", "shomei")]
    engine.finish("3")
    assert engine.ticket(a).state == "done"


def test_add_stop_reopens_a_done_ticket_at_its_original_place(engine):
    a = engine.issue(["tennyu"]).number
    engine.call_next("1")
    engine.finish("1")
    assert engine.ticket(a).state == "done"
    b = engine.issue(["kokuho-kanyu"]).number
    out = engine.add_stop(a, "kokuho")
    assert out.ticket == a and "2" in out.counters
    ticket = engine.ticket(a)
    assert ticket.state == "active"
    assert [(s.service, s.state) for s in ticket.stops] == [("juminido", "done"), ("kokuho", "waiting")]
    assert ticket.stops[1].place == ticket.stops[0].place
    assert a in [t.number for t in engine.tickets(active_only=True)]
    queue_error("conflict", engine.add_stop, a, "kokuho")
    assert called(engine.call_next("2")) == [(a, "2", "kokuho")]
    assert called(engine.call_next("2")) == [(b, "2", "kokuho")]


def test_add_stop_respects_precedence(engine):
    a = engine.issue(["tennyu"]).number
    engine.add_stop(a, "kokuho")
    assert engine.call_next("2").calls == []
    engine.call_next("1")
    engine.finish("1")
    assert called(engine.call_next("2")) == [(a, "2", "kokuho")]


# ---------------------------------------------------------------- finishing


def test_finishing_the_last_stop_closes_the_ticket(engine, clock):
    a = engine.issue(["tennyu", "kokuho-kanyu"]).number
    other = engine.issue(["juminhyo"]).number
    engine.call_next("1")
    out = engine.finish("1")
    assert out.ticket == a and "1" in out.counters
    assert engine.ticket(a).state == "active"
    engine.call_next("2")
    clock.advance(90)
    engine.finish("2")
    assert engine.ticket(a).state == "done"
    assert [t.number for t in engine.tickets(active_only=True)] == [other]
    assert [t.number for t in engine.tickets()] == [a, other]
    queue_error("conflict", engine.call, "2", a)


# ---------------------------------------------------------------- event de-duplication


def test_the_same_event_applies_once(engine):
    a = engine.issue(["tennyu"]).number
    b = engine.issue(["tennyu"]).number
    assert called(engine.call_next("1", event_id="btn-1-0001", device="counter-1")) == [(a, "1", "juminido")]
    before = engine.tickets()
    again = engine.call_next("1", event_id="btn-1-0001", device="counter-1")
    assert again.calls == [] and again.ticket is None
    assert engine.tickets() == before
    assert at_counter(engine, "1") == (a, "juminido")
    assert engine.seen("btn-1-0001") and not engine.seen("btn-1-0002")
    # Also for the other button actions.
    engine.recall("1", event_id="btn-1-0002")
    engine.recall("1", event_id="btn-1-0002")
    assert stop(engine, a, "juminido").recalls == 1
    engine.finish("1", event_id="btn-1-0003")
    engine.call_next("1")
    engine.finish("1", event_id="btn-1-0003")  # a late duplicate must not finish B
    assert stop(engine, b, "juminido").state == "called"


def test_an_event_that_failed_is_not_marked_seen(engine):
    queue_error("empty", engine.finish, "1", event_id="btn-1-0009")
    assert not engine.seen("btn-1-0009")


# ---------------------------------------------------------------- durability


def test_state_survives_reopening_the_database(store, db_path, clock):
    engine = make_engine(store, clock)
    a = engine.issue(["tennyu", "kokuho-kanyu"]).number
    b = engine.issue(["kokuho-kanyu"]).number
    engine.issue(["juminhyo"])
    engine.call_next("1")
    engine.call_next("2")
    engine.start("2")
    engine.call_next("3")
    engine.hold("3")
    before = engine.tickets()
    store.close()

    store2 = Store(db_path)
    try:
        engine2 = make_engine(store2, clock)
        assert engine2.tickets() == before
        assert at_counter(engine2, "1") == (a, "juminido")
        assert at_counter(engine2, "2") == (b, "kokuho")
        assert engine2.counter_view("2").stop.state == "serving"
        assert at_counter(engine2, "3") is None
        assert engine2.issue(["tennyu"]).number == 4
        engine2.finish("1")
        assert called(engine2.call_next("2")) == [(a, "2", "kokuho")]
    finally:
        store2.close()


# ---------------------------------------------------------------- a site of its own


def test_a_chain_of_precedence_on_a_site_of_its_own(store, clock):
    site = Site.model_validate(
        {
            "site": {"id": "t", "name_ja": "テスト", "name_en": "Test"},
            "services": [
                {"id": "a", "name_ja": "A", "name_en": "A"},
                {"id": "b", "name_ja": "B", "name_en": "B", "after": ["a"]},
                {"id": "c", "name_ja": "C", "name_en": "C", "after": ["b"]},
            ],
            "counters": [{"id": "x", "name_ja": "X", "name_en": "X", "services": ["a", "b", "c"]}],
            "procedures": [
                {"id": "pc", "name_ja": "C", "name_en": "C", "services": ["c"]},
                {"id": "pab", "name_ja": "AB", "name_en": "AB", "services": ["b", "a"]},
            ],
        }
    )
    engine = make_engine(store, clock, site=site)
    t = engine.issue(["pc", "pab"])
    assert [s.service for s in t.stops] == ["a", "b", "c"]
    seen = [called(engine.call_next("x")) for _ in range(4)]
    assert seen == [[(1, "x", "a")], [(1, "x", "b")], [(1, "x", "c")], []]
    assert engine.ticket(1).state == "done"


# ---------------------------------------------------------------- property: random sequences


PROCEDURES = [p.id for p in SITE.procedures]
COUNTERS = [c.id for c in SITE.counters]
AFTER = {s.id: set(s.after) for s in SITE.services}
SERVES = {c.id: set(c.services) for c in SITE.counters}
GRACE_MACHINE_S = 30
MAX_NO_SHOWS_MACHINE = 2


class QueueMachine(RuleBasedStateMachine):
    """Random staff and kiosk actions on the sample site; after each step the
    state in the database must make sense, and call_next must have chosen the
    oldest place among what was callable (computed here from the rows)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.store = Store(Path(self.dir.name) / "q.db")
        # Not a crash test: spare the disk 10 000 fsyncs.
        self.store.conn.execute("PRAGMA synchronous=OFF")
        self.clock = Clock(T0)
        self.engine = QueueEngine(
            self.store,
            SITE,
            QueueSettings(no_show_grace_s=GRACE_MACHINE_S, max_no_shows=MAX_NO_SHOWS_MACHINE),
            clock=self.clock,
        )

    def teardown(self) -> None:
        self.store.close()
        self.dir.cleanup()

    # -- reading the rows ---------------------------------------------------
    def rows(self):
        conn = self.store.conn
        tickets = {r["id"]: dict(r) for r in conn.execute("SELECT * FROM tickets")}
        stops = [dict(r) for r in conn.execute("SELECT * FROM stops ORDER BY id")]
        counters = {r["id"]: r["stop_id"] for r in conn.execute("SELECT * FROM counters")}
        return tickets, stops, counters

    def callable_at(self, counter: str) -> list[dict]:
        """What call_next(counter) may choose from: the rows as they are, once
        the counter's current visit has ended and due no-shows have returned."""
        tickets, stops, counters = self.rows()
        now = self.clock()
        today = now.astimezone(TOKYO).date().isoformat()
        for s in stops:
            if s["state"] == "away" and datetime.fromisoformat(s["returns_at"]) <= now:
                s["state"] = "waiting"
            if s["id"] == counters[counter]:
                s["state"] = "done"
        by_ticket = defaultdict(list)
        for s in stops:
            by_ticket[s["ticket_id"]].append(s)
        result = []
        for s in stops:
            ticket = tickets[s["ticket_id"]]
            if s["state"] != "waiting" or s["service"] not in SERVES[counter]:
                continue
            if ticket["state"] != "active" or ticket["day"] != today:
                continue
            mates = by_ticket[s["ticket_id"]]
            if any(m["state"] in ENGAGED for m in mates):
                continue
            if any(m["service"] in AFTER[s["service"]] and m["state"] not in FINISHED for m in mates):
                continue
            result.append(s)
        return result

    def tickets_row(self, ticket_id: int) -> dict:
        return dict(self.store.conn.execute("SELECT * FROM tickets WHERE id=?", (ticket_id,)).fetchone())

    def current(self, counter: str) -> int | None:
        return self.store.conn.execute("SELECT stop_id FROM counters WHERE id=?", (counter,)).fetchone()[0]

    def busy_counters(self) -> list[str]:
        return [r[0] for r in self.store.conn.execute("SELECT id FROM counters WHERE stop_id IS NOT NULL ORDER BY id")]

    def stop_row(self, stop_id: int) -> dict:
        return dict(self.store.conn.execute("SELECT * FROM stops WHERE id=?", (stop_id,)).fetchone())

    def snapshot(self):
        """Every row of the queue's tables, for "nothing changed" checks."""
        cur = self.store.conn.cursor()
        cur.row_factory = None
        return [cur.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in ("tickets", "stops", "counters")]

    # -- rules ------------------------------------------------------------------
    @initialize(batch=st.lists(st.lists(st.sampled_from(PROCEDURES), min_size=1, max_size=3), min_size=0, max_size=8))
    def morning_queue(self, batch):
        for procedures in batch:
            self.engine.issue(procedures)

    @rule(procedures=st.lists(st.sampled_from(PROCEDURES), min_size=1, max_size=4))
    def issue(self, procedures):
        t = self.engine.issue(procedures)
        assert all(s.state == "waiting" for s in t.stops)

    @rule(counter=st.sampled_from(COUNTERS))
    def call_next(self, counter):
        candidates = self.callable_at(counter)
        out = self.engine.call_next(counter)
        chosen = self.current(counter)
        event(f"call_next among {min(len(candidates), 3)}{'+' if len(candidates) >= 3 else ''} callable")
        if not candidates:
            assert out.calls == [] and chosen is None
            return
        assert len(out.calls) == 1 and chosen is not None
        assert chosen in {s["id"] for s in candidates}, "called a stop that was not callable"
        place, no_shows = next((s["place"], s["no_shows"]) for s in candidates if s["id"] == chosen)
        assert place == min(s["place"] for s in candidates), "skipped an earlier place"
        if no_shows:
            event("call_next: a no-show came back")

    @rule(counter=st.sampled_from(COUNTERS), data=st.data())
    def call(self, counter, data):
        # A number of today's, often a held or away one (what staff call by number).
        tickets, stops, _ = self.rows()
        today = self.clock().astimezone(TOKYO).date().isoformat()
        numbers = sorted(t["number"] for t in tickets.values() if t["day"] == today)
        parked = sorted(
            {tickets[s["ticket_id"]]["number"] for s in stops if s["state"] in ("held", "away")} & set(numbers)
        )
        pool = parked if parked and data.draw(st.booleans()) else numbers + [len(numbers) + 1]
        number = data.draw(st.sampled_from(pool), label="number")
        engaged_at = [
            r[0]
            for r in self.store.conn.execute(
                "SELECT s.counter FROM stops s JOIN tickets t ON t.id=s.ticket_id"
                " WHERE t.day=? AND t.number=? AND s.state IN ('called', 'serving')",
                (today, number),
            )
        ]
        before = self.snapshot()
        try:
            out = self.engine.call(counter, number)
        except QueueError as err:
            event(f"call refused: {err.code}")
            assert err.code in {"not_found", "conflict", "precedence"}, err
            assert self.snapshot() == before, "a refused call changed the state"
            return
        assert [(c.number, c.counter) for c in out.calls] == [(number, counter)]
        chosen = self.stop_row(self.current(counter))
        assert self.tickets_row(chosen["ticket_id"])["number"] == number and chosen["state"] == "called"
        assert set(engaged_at) <= {counter}, "called a ticket engaged elsewhere"

    # Weighted towards no-shows: a stop's second no-show needs a few steps to reach.
    @rule(
        data=st.data(),
        action=st.sampled_from(["finish", "finish", "no_show", "no_show", "no_show", "hold", "start", "recall"]),
    )
    def staff(self, data, action):
        # Mostly at a counter that has someone (at an empty one it is only "empty").
        busy = self.busy_counters()
        pool = busy if busy and data.draw(st.integers(0, 9)) else COUNTERS
        counter = data.draw(st.sampled_from(pool), label="counter")
        before = self.snapshot()
        current = self.current(counter)
        state = None if current is None else self.stop_row(current)["state"]
        try:
            getattr(self.engine, action)(counter)
        except QueueError as err:
            event(f"{action} refused: {err.code}")
            assert self.snapshot() == before, "a refused action changed the state"
            if err.code == "empty":
                assert current is None
            else:
                # Only a called visitor can be recalled or marked absent.
                assert (action, err.code, state) in {
                    ("recall", "conflict", "serving"),
                    ("no_show", "conflict", "serving"),
                }, err
            return
        assert current is not None, f"{action} succeeded on an empty counter"
        after = self.stop_row(current)["state"]
        expected = {
            "finish": {"done"},
            "no_show": {"away", "no_show"},
            "hold": {"held"},
            "start": {"serving"},
            "recall": {"called"},
        }[action]
        assert after in expected, (action, state, after)
        event(f"{action}: {state} → {after}")
        if action in ("finish", "no_show", "hold"):
            assert self.current(counter) is None
        else:
            assert self.current(counter) == current
        if after == "away":
            returns = datetime.fromisoformat(self.stop_row(current)["returns_at"])
            assert returns == self.clock() + timedelta(seconds=GRACE_MACHINE_S)

    # Within the no-show grace (30 s), at it, past it; now and then to the next day.
    @rule(seconds=st.sampled_from([1, 10, 29, 30, 31, 60, 300, 12 * 3600]))
    def advance(self, seconds):
        self.clock.advance(seconds)

    # -- invariants ---------------------------------------------------------
    @invariant()
    def consistent(self):
        tickets, stops, counters = self.rows()
        by_id = {s["id"]: s for s in stops}
        engaged = Tally(s["ticket_id"] for s in stops if s["state"] in ENGAGED)
        assert all(n == 1 for n in engaged.values()), "a ticket in two places"
        current = [v for v in counters.values() if v is not None]
        assert len(current) == len(set(current)), "two counters on one stop"
        for counter, stop_id in counters.items():
            if stop_id is not None:
                s = by_id[stop_id]
                assert s["state"] in ENGAGED and s["counter"] == counter, (counter, s)
        # Every engaged stop is some counter's current one (none is lost).
        assert {s["id"] for s in stops if s["state"] in ENGAGED} == set(current)
        # Nobody is at a counter whose service must wait for another of their stops.
        for s in stops:
            if s["state"] in ENGAGED:
                mates = [m for m in stops if m["ticket_id"] == s["ticket_id"]]
                assert not any(m["service"] in AFTER[s["service"]] and m["state"] not in FINISHED for m in mates), s
        days = defaultdict(list)
        for t in tickets.values():
            days[t["day"]].append(t["number"])
        for numbers in days.values():
            assert sorted(numbers) == list(range(1, len(numbers) + 1))
        open_stops = Tally(s["ticket_id"] for s in stops if s["state"] not in FINISHED)
        for t in tickets.values():
            assert (t["state"] == "done") == (open_stops[t["id"]] == 0), t
        for s in stops:
            assert (s["state"] == "away") == (s["returns_at"] is not None), s
            # Given up exactly at the max_no_shows-th no-show.
            assert (s["state"] == "no_show") == (s["no_shows"] >= MAX_NO_SHOWS_MACHINE), s


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
