"""The queue policies, on the real engine: what each one calls next."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from central.config import Counter, Procedure, QueueSettings, Service, Site, SiteInfo
from central.queue import QueueEngine
from central.store import Store


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 4, 1, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += timedelta(minutes=minutes)


SITE = Site(
    site=SiteInfo(id="p", name_ja="p", name_en="p"),
    services=(
        Service(id="juminido", name_ja="住民異動", name_en="a", typical_min=18),
        Service(id="kokuho", name_ja="国保", name_en="b", after=("juminido",), typical_min=12),
        Service(id="shomei", name_ja="証明", name_en="c", typical_min=4),
    ),
    counters=(
        Counter(id="1", name_ja="1", name_en="1", services=("juminido", "shomei")),
        Counter(id="2", name_ja="2", name_en="2", services=("kokuho",)),
    ),
    procedures=(
        Procedure(id="move", name_ja="転入", name_en="move", services=("juminido", "kokuho")),
        Procedure(id="cert", name_ja="証明", name_en="cert", services=("shomei",)),
        Procedure(id="addr", name_ja="転居", name_en="addr", services=("juminido",)),
        Procedure(id="nhi", name_ja="国保", name_en="nhi", services=("kokuho",)),
    ),
)


def engine(tmp_path, policy: str, **params) -> tuple[QueueEngine, Clock]:
    clock = Clock()
    return QueueEngine(Store(tmp_path / "q.db"), SITE, QueueSettings(policy=policy, **params), clock=clock), clock


def called(out) -> int:
    assert out.calls, "nobody was called"
    return out.calls[0].number


def test_lifetime_calls_by_original_place(tmp_path):
    q, clock = engine(tmp_path, "lifetime")
    move = q.issue(["move"]).number
    clock.advance(1)
    cert = q.issue(["cert"]).number
    assert called(q.call_next("1")) == move
    assert called(q.call_next("1")) == cert


def test_madoguchi_lets_a_certificate_go_before_a_move_in(tmp_path):
    q, clock = engine(tmp_path, "madoguchi", unblock_min=0)
    move = q.issue(["move"]).number
    clock.advance(1)
    cert = q.issue(["cert"]).number
    assert called(q.call_next("1")) == cert  # 4 minutes of work left against 30
    assert called(q.call_next("1")) == move


def test_madoguchi_ages_a_long_visit_past_short_ones(tmp_path):
    q, clock = engine(tmp_path, "madoguchi", unblock_min=0, aging=1.0)
    move = q.issue(["move"]).number
    clock.advance(40)  # 40 minutes in the building outweigh 26 minutes more work
    q.issue(["cert"])
    assert called(q.call_next("1")) == move


def test_madoguchi_unblocks_when_the_next_counter_is_free(tmp_path):
    q, clock = engine(tmp_path, "madoguchi", aging=0.0, unblock_min=30)
    addr = q.issue(["addr"]).number  # 住民異動 only: 18 minutes left
    move = q.issue(["move"]).number  # 住民異動 then 国保: 30 left, but 国保 is free
    assert called(q.call_next("1")) == move
    assert called(q.call_next("1")) == addr


def test_madoguchi_does_not_unblock_into_a_queue(tmp_path):
    q, clock = engine(tmp_path, "madoguchi", aging=0.0, unblock_min=30)
    for _ in range(4):  # 国保 already has 4 × 12 minutes in line at its one counter
        q.issue(["nhi"])
    move = q.issue(["move"]).number
    addr = q.issue(["addr"]).number
    assert called(q.call_next("1")) == addr  # freeing `move` for 国保 is worth nothing now
    assert called(q.call_next("1")) == move


def test_madoguchi_starvation_bound(tmp_path):
    q, clock = engine(tmp_path, "madoguchi", unblock_min=0, aging=0.0, starve_min=30)
    move = q.issue(["move"]).number
    clock.advance(45)  # waited 15 minutes past the bound: 30 minutes of priority
    q.issue(["cert"])
    assert called(q.call_next("1")) == move


def test_separate_requeues_at_the_back_lifetime_keeps_the_place(tmp_path):
    for policy, first in (("separate", "nhi"), ("lifetime", "move")):
        q, clock = engine(tmp_path / policy, policy)
        move = q.issue(["move"]).number
        assert called(q.call_next("1")) == move
        clock.advance(5)
        nhi = q.issue(["nhi"]).number  # came later, for 国保 only
        clock.advance(10)
        q.finish("1")  # `move` reaches 国保 after `nhi` took its place there
        expected = {"nhi": nhi, "move": move}[first]
        assert called(q.call_next("2")) == expected, policy


def test_a_tickets_own_estimate_counts_the_line_ahead(tmp_path):
    q, clock = engine(tmp_path, "lifetime")
    first = [q.issue(["cert"]).number for _ in range(3)]
    mine = q.issue(["cert"]).number
    # three certificates ahead, 4 minutes each, one counter serves certificates
    assert q.ticket_estimate(mine) == 12
    q.call_next("1")
    assert q.ticket_estimate(first[0]) == 0  # being called
    assert q.ticket_estimate(mine) == 8
    move = q.issue(["move"]).number
    # counter 1 serves 住民異動 and certificates: three certificates are ahead
    assert q.ticket_estimate(move) == 12
    assert q.ticket_estimate(first[0]) == 0


def test_no_estimate_for_a_ticket_that_is_away_or_done(tmp_path):
    q, clock = engine(tmp_path, "lifetime")
    cert = q.issue(["cert"]).number
    q.call_next("1")
    q.no_show("1")
    assert q.ticket_estimate(cert) is None  # away: not in any line now
    clock.advance(10)
    q.call_next("1")
    q.finish("1")
    assert q.ticket_estimate(cert) is None  # done
