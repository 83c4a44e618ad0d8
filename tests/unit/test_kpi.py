"""KPIs (central/kpi.py) from a handful of tickets driven through the real
queue engine on an injected clock, and payments through the real ledger."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from bus.models import PaymentState
from central import config as central_config
from central import kpi
from central.accounting_web import render_kpi
from central.config import QueueSettings
from central.dayclose import DayCloseError
from central.ledger import Ledger
from central.queue import QueueEngine
from central.store import Store
from tests.support.daydata import at, event

REPO = Path(__file__).resolve().parents[2]
DAY = "2026-11-20"


class Clock:
    def __init__(self, when):
        self.when = when

    def __call__(self):
        return self.when


@pytest.fixture(scope="module")
def loaded():
    return central_config.load(REPO / "config" / "central.toml")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "central.db")
    yield s
    s.close()


@pytest.fixture
def day(store, loaded):
    """Three visitors with known times (JST):

    * 1: 09:00 転入 + 国保.  住民異動 called 09:20 at 1, started 09:22, done 09:42;
      国保 called 09:50 at 2, started 09:51, done 10:01.  In the building 61 min.
    * 2: 09:10 住民票.  Called 09:25 at 3, done 09:30 (never "started").  20 min.
    * 3: 13:05 住民票.  Called 13:06, 不在 13:08, called again 13:14, 不在 13:16: given up.
    """
    clock = Clock(at(DAY, "09:00"))
    q = QueueEngine(store, loaded.site, QueueSettings(no_show_grace_s=300, max_no_shows=2), clock=clock)

    def step(hhmm, action):
        clock.when = at(DAY, hhmm)
        action()

    step("09:00", lambda: q.issue(["tennyu", "kokuho-kanyu"]))
    step("09:10", lambda: q.issue(["juminhyo"]))
    step("09:20", lambda: q.call_next("1"))
    step("09:22", lambda: q.start("1"))
    step("09:25", lambda: q.call_next("3"))
    step("09:30", lambda: q.finish("3"))
    step("09:42", lambda: q.finish("1"))
    step("09:50", lambda: q.call_next("2"))
    step("09:51", lambda: q.start("2"))
    step("10:01", lambda: q.finish("2"))
    step("13:05", lambda: q.issue(["juminhyo"]))
    step("13:06", lambda: q.call_next("3"))
    step("13:08", lambda: q.no_show("3"))
    step("13:14", lambda: q.call_next("3"))
    step("13:16", lambda: q.no_show("3"))

    ledger = Ledger(store, loaded.site, loaded.catalog)
    c = loaded.catalog
    for hhmm in ("09:30", "10:00", "11:00"):
        ledger.apply_event("counter-1", event(c, items=[("juminhyo", 1)], txn_at=at(DAY, hhmm)))
    ledger.apply_event("counter-3", event(c, counter="3", items=[("koseki-zenbu", 1)], method="credit", brand="visa",
                                          txn_at=at(DAY, "12:00"), slip_no="1"))
    ledger.apply_event("counter-3", event(c, counter="3", items=[("juminhyo", 1)], method="qr", brand="paypay",
                                          txn_at=at(DAY, "12:10"), slip_no="2"))
    voided = event(c, items=[("juminhyo", 3)], txn_at=at(DAY, "12:20"))
    ledger.apply_event("counter-1", voided)
    ledger.apply_event("counter-1", voided.model_copy(update={"version": 2, "state": PaymentState.VOIDED}))
    ledger.apply_event("counter-1", event(c, items=[("juminhyo", 1)], method="emoney", brand="waon", state="unknown",
                                          txn_at=at(DAY, "12:30")))
    return kpi.compute(store, loaded.site, "2026-11-16", "2026-11-22")


def service(k, sid):
    return next(s for s in k["services"] if s["service"] == sid)


def test_waits_service_times_and_no_shows_per_service(day):
    assert service(day, "juminido")["wait"] == {"n": 1, "mean": 20.0, "p90": 20.0}
    assert service(day, "juminido")["service_time"] == {"n": 1, "mean": 20.0, "p90": 20.0}  # started → done
    # 国保's wait starts when 住民異動 ended (09:42), not at issue.
    assert service(day, "kokuho")["wait"] == {"n": 1, "mean": 8.0, "p90": 8.0}
    assert service(day, "kokuho")["service_time"]["mean"] == 10.0
    # 証明書: 15 min, and 1 min to the *first* call of the visitor who did not show up.
    assert service(day, "shomei")["wait"] == {"n": 2, "mean": 8.0, "p90": 15.0}
    assert service(day, "shomei")["service_time"] == {"n": 1, "mean": 5.0, "p90": 5.0}  # called → done
    assert service(day, "shomei")["no_show_rate"] == 50.0
    assert service(day, "juminido")["no_show_rate"] == 0.0
    assert [s["service"] for s in day["services"]] == ["juminido", "kokuho", "shomei"]  # site order, used ones


def test_time_in_building_visitors_per_hour_and_day_totals(day):
    [d] = day["days"]
    assert d["day"] == DAY and d["weekday_ja"] == "金"
    assert d["in_building"] == {"n": 2, "mean": 40.5, "p90": 61.0}  # 61 and 20 min; the no-show left no done stop
    assert d["visitors"] == 3
    assert d["no_show_rate"] == 25.0  # 1 of 4 ended stops
    hours = {h["hour"]: h["visitors"] for h in day["hours"]}
    assert hours == {8: 0, 9: 2, 10: 0, 11: 0, 12: 0, 13: 1, 14: 0, 15: 0, 16: 0, 17: 0}
    assert day["total"]["visitors"] == 3


def test_cashless_share_counts_paid_sales_only(day):
    [d] = day["days"]
    # Counted: 3 cash × 300, VISA 450, PayPay 300.  Not: the voided sale, the unknown WAON.
    assert (d["payments"], d["cashless_count"], d["amount"], d["cashless_amount"]) == (5, 2, 1650, 750)
    assert d["share_count"] == 40.0
    assert d["share_amount"] == 45.5


def test_percentile_is_nearest_rank():
    assert kpi.p90([]) is None
    assert kpi.p90([5]) == 5
    assert kpi.p90(list(range(1, 11))) == 9
    assert kpi.p90(list(range(1, 12))) == 10
    assert kpi.stats([1, 2]) == {"n": 2, "mean": 1.5, "p90": 2}


def test_bad_ranges_are_refused(store, loaded):
    for start, end in (("2026-11-20", "2026-11-19"), ("2026-01-01", "2026-12-31"), ("2026-11-31", "2026-12-01")):
        with pytest.raises(DayCloseError):
            kpi.compute(store, loaded.site, start, end)


def test_csv_tables_have_a_bom(day):
    for table, first in (("days", "日付"), ("services", "業務"), ("hours", "時間帯")):
        data = kpi.csv_bytes(day, table)
        assert data.startswith(b"\xef\xbb\xbf")
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
        assert rows[0][0] == first
    rows = list(csv.reader(io.StringIO(kpi.csv_bytes(day, "days").decode("utf-8-sig"), newline="")))
    assert rows[1][:5] == [DAY, "金", "5", "2", "40.0"]
    with pytest.raises(DayCloseError):
        kpi.csv_bytes(day, "nope")


def test_page_has_svg_charts_with_a_bar_per_value(day):
    charts = kpi.charts(day)
    assert set(charts) == {"chart-cashless", "chart-hours", "chart-building", "chart-services"}
    assert len(re.findall(r'<rect class="bar"', charts["chart-cashless"])) == 2  # one day × (count, amount)
    assert len(re.findall(r'<rect class="bar"', charts["chart-hours"])) == 10
    assert "目標 40%" in charts["chart-cashless"]
    html = render_kpi(day)
    assert html.count("<svg") == 4 and "<script src" not in html and "http" not in html.split("<body>")[0]
    assert 'id="card-share-count"' in html and "40.0 %" in html


def test_text_in_charts_is_escaped():
    svg = kpi.bar_chart("<b>&", ["<x>"], [("a<", [1.0], "#000")])
    assert "<b>" not in svg and "&lt;b&gt;&amp;" in svg and "&lt;x&gt;" in svg
