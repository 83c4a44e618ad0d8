"""Monthly reconciliation against the payment agent's statement: a real SQLite
store, ledger rows written through the real Ledger API (bus PaymentEvents),
statement files imported through the real parser.

The hard cases of design §6: equal amounts at one terminal in one minute
(told apart by slip/approval, not swapped by time), same-day voids (absent is
right, present is an exception), a next-day refund pointing to its original,
a statement-only line, never matching by amount alone, fee rounding edges per
transaction and per month, pending e-money aged across 30 and 55 days, and a
re-imported statement that is never counted twice.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bus.models import ChargeLine, PaymentEvent, PaymentKind, PaymentState, PayMethod
from central.config import load
from central.fees import Settlement
from central.ledger import Ledger
from central.reconcile import (
    LedgerTxn,
    Line,
    ReconcileError,
    Reconciler,
    match,
    report_csv,
    report_html,
)
from central.statement import COLUMNS, agent_txn_id, import_statement
from central.store import Store

ROOT = Path(__file__).resolve().parents[2]
LOADED = load(ROOT / "config" / "central.toml")
SITE, CATALOG = LOADED.site, LOADED.catalog
JST = ZoneInfo("Asia/Tokyo")
MONTH = "2026-11"
HEADER = ",".join(names[0] for names in COLUMNS.values())


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "central.db")
    yield s
    s.close()


@pytest.fixture
def ledger(store):
    return Ledger(store, SITE, CATALOG)


class Book:
    """Writes payments through Ledger.apply_event, as a counter's Pi would."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.seq = 0

    def event(self, **kw) -> PaymentEvent:
        self.seq += 1
        base = {"event_id": uuid.uuid4(), "boot_id": "b", "seq": self.seq, "ts": datetime.now(JST), "charge_id": uuid.uuid4(),
                    "version": 1, "counter": "1", "terminal": "zvt", "terminal_id": "T1"}
        base.update(kw)
        if base["kind"] == "sale" and "lines" not in base:
            base["lines"] = [ChargeLine(code="juminhyo", name_ja="住民票の写し", name_en="Certificate of residence",
                                        quantity=1, unit_price=base["amount"], amount=base["amount"], account="総務手数料")]
        base.setdefault("lines", [])
        for key, enum in (("kind", PaymentKind), ("state", PaymentState), ("method", PayMethod)):
            base[key] = enum(base[key])
        return PaymentEvent(**base)

    def sale(self, amount: int, at: datetime, *, method="credit", brand="visa", slip=None, approval=None,
             state="approved", terminal_id="T1") -> str:
        pid = uuid.uuid4()
        self.ledger.apply_event("pi-1", self.event(payment_id=pid, kind="sale", state=state, method=method, brand=brand,
                                                  amount=amount, slip_no=slip, approval_no=approval, txn_at=at,
                                                  terminal_id=terminal_id))
        return str(pid)

    def void(self, sale_id: str, at: datetime, *, slip: str) -> str:
        original = self.ledger.get(sale_id)
        pid = uuid.uuid4()
        self.ledger.apply_event("pi-1", self.event(payment_id=pid, kind="void", original_id=uuid.UUID(sale_id),
                                                  state="approved", method=original.method, brand=original.brand,
                                                  amount=original.amount, slip_no=slip, txn_at=at))
        # The counter's Pi marks the original voided in the same journal step.
        self.ledger.apply_event("pi-1", self.event(payment_id=uuid.UUID(sale_id), kind="sale", state="voided",
                                                  version=2, method=original.method, brand=original.brand,
                                                  amount=original.amount, slip_no=original.slip_no,
                                                  approval_no=original.approval_no,
                                                  txn_at=datetime.fromisoformat(original.txn_at)))
        return str(pid)

    def refund(self, sale_id: str, at: datetime, *, slip: str, approval: str | None = None) -> str:
        original = self.ledger.get(sale_id)
        pid = uuid.uuid4()
        self.ledger.apply_event("pi-1", self.event(payment_id=pid, kind="refund", original_id=uuid.UUID(sale_id),
                                                  state="approved", method=original.method, brand=original.brand,
                                                  amount=original.amount, slip_no=slip, approval_no=approval,
                                                  txn_at=at))
        return str(pid)


def jst(day: int, hh: int, mm: int, ss: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hh, mm, ss, tzinfo=JST)


def row(agent: str, at: datetime, gross: int, *, brand="VISA", type_="売上", slip="", approval="", terminal="T1",
        fee: int | None = None, original="", category="credit") -> str:
    fee = CATALOG.settlement.fee(gross, category) if fee is None else fee
    return (f"{agent},{at.strftime('%Y/%m/%d %H:%M:%S')},{terminal},{slip},{approval},{brand},{type_},{gross},{fee},"
            f"{gross - fee},{original},2026-12-15")


def statement(*rows: str) -> bytes:
    return ("\r\n".join([HEADER, *rows]) + "\r\n").encode("utf-8")


def reconciler(store, today=date(2026, 12, 10), catalog=CATALOG, **kw) -> Reconciler:
    return Reconciler(store, SITE, catalog, today=lambda: today, **kw)


def pairs(store, run_id: int) -> dict[str, tuple[str, str]]:
    """payment id → (agent id, key) of a run."""
    rows = store.conn.execute(
        "SELECT m.payment_id, l.agent_txn_id, m.match_key FROM matches m JOIN statement_lines l ON l.id = m.line_id "
        "WHERE m.run_id = ?", (run_id,))
    return {r[0]: (r[1], r[2]) for r in rows}


def buckets(rec: Reconciler, *, open_only=True) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in rec.exceptions(month=MONTH, open_only=open_only):
        out.setdefault(e["bucket"], []).append(e)
    return out


def do_import(store, data: bytes, *, source="agent", month=MONTH, catalog=CATALOG):
    return import_statement(store, data, catalog, source=source, month=month, filename="s.csv", actor="test")


# ---------------------------------------------------------------- matching keys


def test_two_equal_amounts_at_one_terminal_in_one_minute_are_told_apart_by_slip_and_approval(store, ledger):
    book = Book(ledger)
    a = book.sale(300, jst(5, 10, 0, 10), slip="0101", approval="111111")
    b = book.sale(300, jst(5, 10, 0, 40), slip="0102", approval="222222")
    # The agent's clock is off: by time alone, each line is nearer the *other* payment.
    do_import(store, statement(
        row("A-1", jst(5, 10, 0, 45), 300, slip="00101", approval="111111"),
        row("A-2", jst(5, 10, 0, 5), 300, slip="00102", approval="222222"),
    ))
    rec = reconciler(store)
    result = rec.run(MONTH)
    got = pairs(store, result.run_id)
    assert got[a] == ("A-1", "slip")
    assert got[b] == ("A-2", "slip")
    assert result.exceptions == {}


def test_key_3_needs_terminal_brand_amount_and_five_minutes_never_amount_alone(store, ledger):
    book = Book(ledger)
    p = book.sale(450, jst(6, 11, 0))  # no slip number known to the ledger (manual terminal)
    do_import(store, statement(
        row("B-1", jst(6, 11, 6), 450, slip="7"),                     # 6 min later: not the same payment
        row("B-2", jst(6, 11, 2), 450, slip="8", terminal="T2"),      # another terminal
        row("B-3", jst(6, 11, 1), 450, slip="9", brand="JCB"),        # another brand
    ))
    rec = reconciler(store)
    result = rec.run(MONTH)
    assert pairs(store, result.run_id) == {}
    got = buckets(rec)
    assert [e["payment_id"] for e in got["ledger_only"]] == [p]
    assert sorted(e["ident"] for e in got["statement_only"]) == [
        "statement_only:agent:B-1", "statement_only:agent:B-2", "statement_only:agent:B-3"]
    # Within the window, on the same terminal and brand, it matches by time.
    do_import(store, statement(row("B-4", jst(6, 11, 4, 59), 450, slip="7")))
    result = rec.run(MONTH)
    assert pairs(store, result.run_id) == {p: ("B-4", "time")}
    assert buckets(rec) == {}


def test_the_agent_id_is_key_1_when_the_ledger_knows_it(store, ledger):
    book = Book(ledger)
    p = book.sale(300, jst(9, 9, 0), slip="5", approval="123456")
    q = book.sale(300, jst(9, 9, 1), slip="6", approval="654321")
    store.conn.execute("UPDATE payments SET agent_txn_id = 'AG-77' WHERE payment_id = ?", (p,))
    # Key 2 would give AG-77 to q; the agent id wins.
    do_import(store, statement(row("AG-77", jst(9, 9, 0), 300, slip="6", approval="654321"),
                               row("AG-78", jst(9, 9, 1), 300, slip="6", approval="654321")))
    result = reconciler(store).run(MONTH)
    got = pairs(store, result.run_id)
    assert got[p] == ("AG-77", "agent_txn_id")
    assert got[q] == ("AG-78", "slip")


def test_matching_is_deterministic_and_one_to_one_whatever_the_input_order():
    rng = random.Random(7)
    t0 = jst(10, 10, 0)
    ledger = [LedgerTxn(payment_id=f"p{i:03d}", kind="sale", state="approved", method="credit", brand="visa",
                        amount=rng.choice((300, 450)), terminal_id=f"T{rng.randint(1, 2)}", slip_no=None,
                        approval_no=None, txn_at=t0 + timedelta(seconds=rng.randrange(0, 900)), day="2026-11-10")
              for i in range(60)]
    lines = [Line(id=i, source="a", line_no=i + 2, agent_txn_id=f"L{i}", txn_at=t.txn_at + timedelta(seconds=rng.randint(-60, 60)),
                  terminal_id=t.terminal_id, slip_no=None, approval_no=None, brand="visa", brand_name="VISA",
                  type="sale", gross=t.amount, fee=0, net=t.amount) for i, t in enumerate(ledger)]
    first = sorted(match(ledger, lines), key=lambda m: m.payment_id)
    for _ in range(5):
        rng.shuffle(ledger)
        rng.shuffle(lines)
        assert sorted(match(ledger, lines), key=lambda m: m.payment_id) == first
    assert len({m.payment_id for m in first}) == len({m.line_id for m in first}) == len(first) == 60


# ---------------------------------------------------------------- voids and refunds


def test_a_same_day_void_must_be_absent_and_is_an_exception_when_present(store, ledger):
    book = Book(ledger)
    sale = book.sale(750, jst(12, 14, 0), slip="21", approval="777777")
    book.void(sale, jst(12, 14, 3), slip="22")
    kept = book.sale(300, jst(12, 15, 0), slip="23", approval="888888")
    do_import(store, statement(row("V-1", jst(12, 15, 0), 300, slip="23", approval="888888")))
    rec = reconciler(store)
    result = rec.run(MONTH)
    assert result.exceptions == {}
    assert result.summary["ledger"]["voids_absent"] == 2  # the voided sale and its void record
    assert result.summary["ledger"]["sales"] == {"count": 1, "amount": 300}
    assert pairs(store, result.run_id) == {kept: ("V-1", "slip")}
    # A corrected (sic) statement that settles the voided sale, and its 取消 too.
    do_import(store, statement(
        row("V-1", jst(12, 15, 0), 300, slip="23", approval="888888"),
        row("V-0", jst(12, 14, 0), 750, slip="21", approval="777777"),
        row("V-9", jst(12, 14, 3), 750, slip="22", type_="取消", original="V-0"),
    ))
    result = rec.run(MONTH)
    got = buckets(rec)
    assert list(got) == ["void_present"]
    (e,) = got["void_present"]
    assert e["payment_id"] == sale and e["amount"] == 750
    assert "V-0" in e["detail"] and "V-9" in e["detail"]


def test_a_next_day_refund_points_to_its_original(store, ledger):
    book = Book(ledger)
    sale = book.sale(450, jst(5, 10, 0), slip="31", approval="313131")
    refund = book.refund(sale, jst(6, 9, 30), slip="90", approval="313131")
    fee = CATALOG.settlement.fee(450, "credit")
    do_import(store, statement(
        row("R-1", jst(5, 10, 0), 450, slip="31", approval="313131"),
        row("R-2", jst(6, 9, 30), 450, slip="90", approval="313131", type_="返品", original="R-1"),
    ))
    rec = reconciler(store)
    result = rec.run(MONTH)
    assert result.exceptions == {}
    got = pairs(store, result.run_id)
    assert got[sale] == ("R-1", "slip") and got[refund] == ("R-2", "slip")
    s = result.summary
    assert s["ledger"]["refunds"] == {"count": 1, "amount": 450}
    assert s["gross_revenue"] == 0 and s["kokin_furikae"] == 0 and s["net_deposit"] == 0
    assert s["fees"]["credit"]["statement"] == s["fees"]["credit"]["expected"] == fee - fee

    # The same refund pointing to another sale of the statement: refund_original.
    other = book.sale(450, jst(5, 11, 0), slip="32", approval="323232")
    do_import(store, statement(
        row("R-1", jst(5, 10, 0), 450, slip="31", approval="313131"),
        row("R-3", jst(5, 11, 0), 450, slip="32", approval="323232"),
        row("R-2", jst(6, 9, 30), 450, slip="90", approval="313131", type_="返品", original="R-3"),
    ))
    result = rec.run(MONTH)
    got = buckets(rec)
    assert list(got) == ["refund_original"]
    assert got["refund_original"][0]["payment_id"] == refund
    assert other in pairs(store, result.run_id)


def test_a_refund_next_month_finds_its_original_in_last_months_run(store, ledger):
    book = Book(ledger)
    sale = book.sale(300, jst(30, 16, 0), slip="41", approval="414141")
    refund = book.refund(sale, jst(1, 9, 0, month=12), slip="1", approval="414141")
    do_import(store, statement(row("N-1", jst(30, 16, 0), 300, slip="41", approval="414141")))
    rec = reconciler(store, today=date(2027, 1, 20))
    rec.run(MONTH)
    do_import(store, statement(row("D-1", jst(1, 9, 0, month=12), 300, slip="1", approval="414141", type_="返品",
                                   original="N-1")), month="2026-12")
    result = rec.run("2026-12")
    assert result.exceptions == {}
    assert pairs(store, result.run_id) == {refund: ("D-1", "slip")}


# ---------------------------------------------------------------- statement side


def test_statement_only_duplicate_and_amount_mismatch(store, ledger):
    book = Book(ledger)
    p = book.sale(300, jst(13, 10, 0), slip="51", approval="515151")
    q = book.sale(1300, jst(13, 11, 0), slip="52", approval="525252")
    do_import(store, statement(
        row("S-1", jst(13, 10, 0), 300, slip="51", approval="515151"),
        row("S-2", jst(13, 10, 0), 300, slip="51", approval="515151"),   # settled twice
        row("S-3", jst(13, 11, 0), 1400, slip="52", approval="525252"),  # 100 yen more than the ledger
        row("S-4", jst(20, 12, 0), 500, slip="99", approval="999999"),   # nobody took this at our counters
    ))
    rec = reconciler(store)
    rec.run(MONTH)
    got = buckets(rec)
    assert sorted(got) == ["amount_mismatch", "duplicate", "statement_only"]
    assert got["duplicate"][0]["ident"] == "duplicate:agent:S-2"
    assert (got["amount_mismatch"][0]["payment_id"], got["amount_mismatch"][0]["amount"]) == (q, 100)
    assert got["statement_only"][0]["ident"] == "statement_only:agent:S-4"
    assert got["statement_only"][0]["age_days"] == (date(2026, 12, 10) - date(2026, 11, 20)).days
    assert p not in {e["payment_id"] for es in got.values() for e in es}


def test_revenue_is_dated_on_the_transaction_date_in_the_site_zone(store, ledger):
    book = Book(ledger)
    book.sale(300, jst(30, 16, 59), slip="61", approval="616161")
    # 08:40 on 1 December in Tokyo is still 30 November in UTC: December's.
    book.sale(450, jst(1, 8, 40, month=12), slip="1", approval="000001")
    do_import(store, statement(row("T-1", jst(30, 16, 59), 300, slip="61", approval="616161")))
    result = reconciler(store).run(MONTH)
    assert result.ledger_count == 1 and result.exceptions == {}
    assert result.summary["statement"]["deposit_dates"] == ["2026-12-15"]


# ---------------------------------------------------------------- fees


def catalog_with(**settlement) -> object:
    return CATALOG.model_copy(update={"settlement": Settlement(**settlement)})


def test_fee_rounding_edges_per_transaction(store, ledger):
    book = Book(ledger)
    book.sale(455, jst(16, 10, 0), slip="71", approval="717171")                              # 2.2 % → 10.01
    book.sale(300, jst(16, 10, 5), method="qr", brand="paypay", slip="72", approval="727272")  # 2.9 % → 8.7
    assert CATALOG.settlement.rounding == "floor"
    do_import(store, statement(
        row("F-1", jst(16, 10, 0), 455, slip="71", approval="717171", fee=10),
        row("F-2", jst(16, 10, 5), 300, slip="72", approval="727272", brand="PayPay", fee=9, category="qr"),
    ))
    rec = reconciler(store)
    result = rec.run(MONTH)
    got = buckets(rec)
    assert list(got) == ["fee_mismatch"]
    (e,) = got["fee_mismatch"]
    assert e["ident"] == "fee_mismatch:agent:F-2" and e["amount"] == 1  # floor(8.7) = 8, the agent took 9
    fees = result.summary["fees"]
    assert (fees["credit"]["expected"], fees["credit"]["statement"]) == (10, 10)
    assert (fees["qr"]["expected"], fees["qr"]["statement"], fees["qr"]["variance"]) == (8, 9, 1)
    assert result.summary["kokin_furikae"] == 19
    assert result.summary["gross_revenue"] == 755 and result.summary["net_deposit"] == 755 - 19

    # Under a round-half-up contract 8.7 → 9 is right, and 10.01 → 10 still is.
    half_up = catalog_with(rounding="round_half_up", rates={k: str(v) for k, v in CATALOG.settlement.rates.items()})
    result = reconciler(store, catalog=half_up).run(MONTH)
    assert result.exceptions == {}
    assert buckets(reconciler(store)) == {}
    history = reconciler(store).exceptions(month=MONTH)[0]["history"]
    assert [h["action"] for h in history] == ["opened", "gone"]


def test_fee_rounded_per_month_is_a_setting(store, ledger):
    book = Book(ledger)
    for i in range(3):
        book.sale(300, jst(17, 10, i), method="qr", brand="paypay", slip=f"8{i}", approval=f"80000{i}")
    do_import(store, statement(*[
        row(f"M-{i}", jst(17, 10, i), 300, slip=f"8{i}", approval=f"80000{i}", brand="PayPay", category="qr")
        for i in range(3)
    ]))
    per_txn = reconciler(store).run(MONTH)
    assert per_txn.exceptions == {}
    assert per_txn.summary["fees"]["qr"]["expected"] == 3 * 8
    per_month = reconciler(store, fee_scope="month").run(MONTH)
    assert per_month.summary["fees"]["qr"]["expected"] == 26  # floor(900 × 0.029 = 26.1)
    assert per_month.exceptions == {"fee_mismatch": 1}


# ---------------------------------------------------------------- pending e-money


def test_pending_emoney_is_aged_escalated_at_30_days_and_overdue_at_the_deadline(store, ledger):
    book = Book(ledger)
    suica = book.sale(300, jst(3, 10, 0), method="emoney", brand="transit_ic", state="unknown")
    edy = book.sale(450, jst(3, 11, 0), method="emoney", brand="edy", state="unknown")
    book.sale(300, jst(3, 12, 0), method="credit", brand="visa", state="unknown")  # the day close's, not ours
    do_import(store, statement())

    def levels(today: date, catalog=CATALOG) -> dict[str, tuple[int, str, int]]:
        rec = reconciler(store, today=today, catalog=catalog)
        rec.run(MONTH)
        return {e["payment_id"]: (e["age_days"], e["level"], e["deadline_days"]) for e in buckets(rec)["pending_emoney"]}

    assert levels(date(2026, 12, 2)) == {suica: (29, "ok", 55), edy: (29, "ok", 55)}
    assert levels(date(2026, 12, 3)) == {suica: (30, "escalate", 55), edy: (30, "escalate", 55)}
    assert levels(date(2026, 12, 27)) == {suica: (54, "escalate", 55), edy: (54, "escalate", 55)}
    assert levels(date(2026, 12, 28)) == {suica: (55, "overdue", 55), edy: (55, "overdue", 55)}
    # The brand's investigate_days is the deadline when it has one.
    brands = dict(CATALOG.brands)
    brands["transit_ic"] = brands["transit_ic"].model_copy(update={"investigate_days": 40})
    shorter = CATALOG.model_copy(update={"brands": brands})
    assert levels(date(2026, 12, 13), shorter) == {suica: (40, "overdue", 40), edy: (40, "escalate", 55)}
    report = reconciler(store, today=date(2026, 12, 28)).report(MONTH)
    assert report["buckets"]["pending_emoney"] == {
        "ja": "電子マネー処理未了", "en": "pending e-money (処理未了)", "open": 2, "amount": 750, "oldest_days": 55,
        "level": "overdue"}
    assert report["summary"]["ledger"]["unknown_not_emoney"] == 1


def test_an_unknown_payment_the_agent_settled_is_flagged_to_be_resolved_as_paid(store, ledger):
    book = Book(ledger)
    p = book.sale(300, jst(4, 10, 0), method="emoney", brand="waon", state="unknown")
    do_import(store, statement(row("U-1", jst(4, 10, 1), 300, brand="WAON", slip="3", category="emoney")))
    rec = reconciler(store)
    rec.run(MONTH)
    got = buckets(rec)
    assert list(got) == ["unknown_settled"]
    assert got["unknown_settled"][0]["payment_id"] == p


# ---------------------------------------------------------------- imports, history, audit


def test_a_reimported_statement_is_never_counted_twice(store, ledger):
    book = Book(ledger)
    book.sale(300, jst(18, 10, 0), slip="91", approval="919191")
    data = statement(row("I-1", jst(18, 10, 0), 300, slip="91", approval="919191"),
                     row("I-2", jst(18, 10, 30), 500, slip="92", approval="929292"))
    first = do_import(store, data)
    again = do_import(store, data)
    assert first.created and not again.created and again.import_id == first.import_id
    assert "already imported" in again.message
    assert store.conn.execute("SELECT COUNT(*) FROM statement_lines").fetchone()[0] == 2
    rec = reconciler(store)
    result = rec.run(MONTH)
    assert result.line_count == 2 and result.summary["statement"]["sales"] == {"count": 2, "amount": 800}
    assert list(buckets(rec)) == ["statement_only"]

    # The agent's corrected file replaces it; the first is kept, for audit, and not counted.
    corrected = do_import(store, statement(row("I-1", jst(18, 10, 0), 300, slip="91", approval="919191")))
    assert corrected.created and corrected.supersedes == first.import_id
    result = rec.run(MONTH)
    assert result.line_count == 1 and result.summary["statement"]["sales"] == {"count": 1, "amount": 300}
    assert buckets(rec) == {}
    assert [i["current"] for i in rec.report(MONTH)["imports"]] == [True, False]
    actions = [a["action"] for a in rec.audit_log(month=MONTH)][::-1]
    assert actions == ["import", "import_repeat", "match", "import", "match"]

    # Another agent's statement of the same month counts beside it, not instead.
    do_import(store, statement(row("Q-1", jst(18, 12, 0), 300, brand="PayPay", category="qr", slip="1")), source="qr-agent")
    assert rec.run(MONTH).line_count == 2


def test_resolutions_have_a_history_and_the_audit_log_is_append_only(store, ledger):
    book = Book(ledger)
    book.sale(300, jst(19, 10, 0), slip="93", approval="939393")
    do_import(store, statement(row("Z-1", jst(19, 10, 0), 300, slip="93", approval="939393"),
                               row("Z-2", jst(19, 10, 0), 1300, slip="95", approval="959595")))
    rec = reconciler(store)
    rec.run(MONTH)
    (e,) = rec.exceptions(month=MONTH)
    with pytest.raises(ReconcileError):
        rec.resolve(e["id"], by="", note="x")
    done = rec.resolve(e["id"], by="k.sato", note="代行会社に照会: 12月分で精算")
    assert done["status"] == "resolved" and done["level"] == "resolved"
    assert [(h["actor"], h["action"]) for h in done["history"]] == [("match #1", "opened"), ("k.sato", "resolved")]
    # Staff's decision stands when the next run still finds it.
    rec.run(MONTH)
    assert rec.exceptions(month=MONTH)[0]["status"] == "resolved"
    again = rec.resolve(e["id"], by="k.sato", note="12月分に無し: 再調査", reopen=True)
    assert again["status"] == "open"
    conn = store.conn
    for sql in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log",
                "UPDATE recon_exception_notes SET note = 'x'", "DELETE FROM recon_exception_notes",
                "DELETE FROM statement_lines", "UPDATE statement_imports SET sha256 = 'x'", "DELETE FROM matches"):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    log = rec.audit_log(month=MONTH)
    assert [a["action"] for a in log[:2]] == ["exception_reopened", "match"]
    assert "k.sato" in {a["actor"] for a in log}


def test_no_statement_no_run_and_reports_render(store, ledger):
    rec = reconciler(store)
    with pytest.raises(ReconcileError, match="no statement"):
        rec.run(MONTH)
    assert rec.report(MONTH)["summary"] is None
    assert "まだ照合していません" in report_html(rec.report(MONTH))
    Book(ledger).sale(300, jst(20, 10, 0), slip="94", approval="949494")
    do_import(store, statement(row("H-1", jst(20, 10, 0), 300, slip="94", approval="949494", fee=7)))
    rec.run(MONTH)
    report = rec.report(MONTH)
    page = report_html(report)
    assert "公金振替" in page and "手数料相違" in page and "<script" not in page
    text = report_csv(report).decode("utf-8-sig")
    assert "fee_mismatch" in text and "公金振替（手数料）" in text


def test_generated_statements_reconcile_cleanly_and_each_fault_lands_in_its_bucket(store):
    from central.statement import generate, synthetic_ledger

    synthetic_ledger(store, SITE, CATALOG, MONTH, per_day=40, seed=3, voids=0.03, refunds=0.03, unknown=0.02)
    clean = generate(store, CATALOG, MONTH, seed=3)
    do_import(store, clean.to_bytes("cp932"))
    rec = reconciler(store)
    result = rec.run(MONTH)
    assert set(result.exceptions) <= {"pending_emoney"}
    assert result.matched == result.line_count
    assert result.summary["fees"]["total"]["variance"] == 0
    assert result.summary["ledger"]["refunds"]["count"] > 0 and result.summary["ledger"]["voids_absent"] > 0
    faulty = generate(store, CATALOG, MONTH, seed=3, faults=True)
    assert [f for f, _ in faulty.faults] == ["missing", "amount", "fee", "duplicate", "refund", "extra", "void_present"]
    do_import(store, faulty.to_bytes("utf-8"))
    result = rec.run(MONTH)
    assert result.exceptions.pop("pending_emoney", 0) >= 0
    assert result.exceptions == {"ledger_only": 1, "amount_mismatch": 1, "fee_mismatch": 1, "duplicate": 1,
                                 "statement_only": 2, "void_present": 1}
    assert agent_txn_id("x", 1) == agent_txn_id("x", 1) != agent_txn_id("x", 2)


def test_the_page_and_the_json_api_are_read_only_views_of_the_month(store, ledger):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from central.reconcile_web import reconcile_router

    Book(ledger).sale(300, jst(3, 10, 0), method="emoney", brand="transit_ic", state="unknown")
    do_import(store, statement(row("W-1", jst(20, 10, 0), 500, slip="1", approval="1")))
    reconciler(store).run(MONTH)
    app = FastAPI()
    app.include_router(reconcile_router(store, SITE, CATALOG, today=lambda: date(2026, 12, 28)))
    client = TestClient(app)
    page = client.get("/accounting/reconcile")  # last month by default
    assert page.status_code == 200 and "2026-11" in page.text
    assert "<script" not in page.text and "://" not in page.text  # no CDN, nothing fetched
    assert "電子マネー処理未了" in page.text and "class='overdue'" in page.text and "公金振替" in page.text
    data = client.get("/api/v1/reconcile/2026-11").json()
    assert data["buckets"]["pending_emoney"]["level"] == "overdue"
    assert data["buckets"]["statement_only"]["open"] == 1
    assert data["summary"]["gross_revenue"] == 500
    assert client.get("/api/v1/reconcile/2026-13").status_code == 422
    assert client.get("/api/v1/reconcile/2026-11/report.csv").content.startswith(b"\xef\xbb\xbf")
    empty = client.get("/api/v1/reconcile/2026-10").json()
    assert empty["summary"] is None and empty["exceptions"] == []
    before = store.conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0]
    client.get("/accounting/reconcile?month=2026-11")
    assert store.conn.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0] == before


def test_a_duplicate_line_never_covers_another_payment_with_a_different_slip(store, ledger):
    """The agent settled A twice and never settled B (same terminal, amount,
    two minutes apart): B is ledger-only and the second A a duplicate — key 3
    (amount and time) must not pair two known, different slips."""
    book = Book(ledger)
    book.sale(300, jst(5, 10, 0), slip="0101", approval="111111")
    b = book.sale(300, jst(5, 10, 2), slip="0102", approval="222222")
    do_import(store, statement(
        row("A-1", jst(5, 10, 0, 5), 300, slip="0101", approval="111111"),
        row("A-DUP", jst(5, 10, 0, 6), 300, slip="0101", approval="111111"),
    ))
    rec = reconciler(store)
    rec.run(MONTH)
    got = buckets(rec)
    assert sorted(got) == ["duplicate", "ledger_only"]
    assert got["ledger_only"][0]["payment_id"] == b
    assert got["duplicate"][0]["ident"] == "duplicate:agent:A-DUP"


def test_the_same_slip_on_another_day_is_not_a_duplicate(store, ledger):
    """Slip numbers restart every day: 0001 of 11/06 is not 0001 of 11/05."""
    book = Book(ledger)
    book.sale(300, jst(5, 9, 0), method="emoney", brand="waon", slip="0001")
    do_import(store, statement(
        row("E-1", jst(5, 9, 0, 3), 300, brand="WAON", slip="0001"),
        row("E-2", jst(6, 9, 2), 300, brand="WAON", slip="0001"),
    ))
    rec = reconciler(store)
    rec.run(MONTH)
    got = buckets(rec)
    assert sorted(got) == ["statement_only"]
    assert got["statement_only"][0]["ident"] == "statement_only:agent:E-2"


def test_a_late_settlement_on_next_months_statement_matches_and_clears_last_month(store, ledger):
    book = Book(ledger)
    late = book.sale(300, jst(31, 16, 0, month=10), slip="0777", approval="777777")
    do_import(store, statement(row("O-0", jst(2, 10, 0, month=10), 500, slip="0001", approval="000001")),
              month="2026-10")
    rec = reconciler(store)
    rec.run("2026-10")
    october = [e for e in rec.exceptions(month="2026-10", open_only=True) if e["bucket"] == "ledger_only"]
    assert [e["payment_id"] for e in october] == [late]
    # November's statement settles it late (dated October).
    do_import(store, statement(row("N-1", jst(31, 16, 0, 20, month=10), 300, slip="0777", approval="777777")))
    result = rec.run(MONTH)
    assert pairs(store, result.run_id)[late] == ("N-1", "slip")
    rec.run("2026-10")
    assert not [e for e in rec.exceptions(month="2026-10", open_only=True) if e["bucket"] == "ledger_only"]
