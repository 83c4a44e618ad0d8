"""drivers.terminal.manual: a stand-alone terminal whose results staff confirm."""

from __future__ import annotations

import threading
import time

import pytest

from drivers.terminal import (
    ManualTerminal,
    Outcome,
    TerminalError,
    TerminalUnavailable,
    TxKind,
    instructions,
)


def _run(term, fn, *args):
    """Run a blocking command in a thread; wait until it is pending."""
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(r=fn(*args)), name="test-manual")
    worker.start()
    deadline = time.monotonic() + 2
    while term.pending is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert term.pending is not None
    return worker, box


def test_sale_confirmed_approved():
    with ManualTerminal(confirm_timeout_s=5) as term:
        worker, box = _run(term, term.sale, 300)
        assert term.pending == (TxKind.SALE, 300)
        term.confirm(True, slip_no="0042", approval_no="1234567", card_name="VISA")
        worker.join(2)
        record = box["r"]
        assert record.outcome is Outcome.APPROVED and record.receipt_no == "0042"
        assert record.approval_no == "1234567" and record.card_name == "VISA" and record.at is not None
        assert term.pending is None
        assert term.last_transaction() == record


def test_declined_and_cancelled():
    with ManualTerminal(confirm_timeout_s=5) as term:
        worker, box = _run(term, term.sale, 300)
        term.confirm(False)
        worker.join(2)
        assert box["r"].outcome is Outcome.DECLINED and box["r"].reason == "declined"
        worker, box = _run(term, term.refund, 500)
        term.cancel()
        worker.join(2)
        assert box["r"].outcome is Outcome.ABORTED and box["r"].reason == "cancelled"
        assert term.last_transaction().outcome is Outcome.DECLINED  # a cancel is not a terminal result


def test_approved_needs_a_slip_number_and_something_to_confirm():
    with ManualTerminal(confirm_timeout_s=5) as term:
        with pytest.raises(ValueError):
            term.confirm(True)
        with pytest.raises(TerminalError):
            term.confirm(True, slip_no="1")
        worker, box = _run(term, term.sale, 300)
        with pytest.raises(ValueError):
            term.confirm(True, slip_no="")
        term.abort()
        worker.join(2)
        assert box["r"].outcome is Outcome.ABORTED


def test_timeout_is_unknown_not_confirmed():
    with ManualTerminal(confirm_timeout_s=0.1) as term:
        seen = []
        record = term.sale(300, on_status=seen.append)
        assert record.outcome is Outcome.UNKNOWN and record.reason == "not_confirmed"
        assert seen == ["waiting_for_staff"]
        assert term.last_transaction() is None


def test_busy_closed_and_bad_amounts():
    term = ManualTerminal(confirm_timeout_s=5)
    worker, box = _run(term, term.sale, 300)
    with pytest.raises(TerminalUnavailable):
        term.sale(100)
    term.close()
    worker.join(2)
    assert box["r"].outcome is Outcome.UNKNOWN and box["r"].reason == "closed"
    with pytest.raises(TerminalUnavailable):
        term.sale(300)
    assert term.health()[0] == "error"
    with pytest.raises(ValueError):
        ManualTerminal().sale(0)


def test_totals_leave_out_voided_sales():
    with ManualTerminal(confirm_timeout_s=5) as term:
        for amount, slip, brand in ((300, "1", "VISA"), (450, "2", "nanaco"), (200, "3", "VISA")):
            worker, _ = _run(term, term.sale, amount)
            term.confirm(True, slip_no=slip, card_name=brand)
            worker.join(2)
        worker, box = _run(term, term.void, "3", 200)
        term.confirm(True, slip_no="4")
        worker.join(2)
        assert box["r"].kind is TxKind.VOID
        totals = term.day_totals()
        assert (totals.count, totals.amount) == (2, 750)
        assert totals.by_card == {"VISA": (1, 300), "nanaco": (1, 450)}


def test_instructions_in_japanese():
    steps = instructions(TxKind.SALE, 1300, "クレジット")
    assert steps[0] == "端末の「クレジット」を押す"
    assert "金額 1,300 円" in steps[1]
    assert any("取消" in s for s in instructions("void", 300, "電子マネー"))
    assert any("返品" in s for s in instructions("refund", 300, "QR"))
    with pytest.raises(ValueError):
        instructions("sale", 0, "QR")
    with pytest.raises(ValueError):
        instructions("nonsense", 300, "QR")
