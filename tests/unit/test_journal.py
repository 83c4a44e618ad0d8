"""The edge's payment journal (edge/journal.py) and the pure helpers of the
payment role: versions, the outbox, print jobs after a crash, what a
terminal record leaves in the journal."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from drivers.terminal.base import Outcome, TxKind, TxRecord
from edge.journal import Journal, JournalError, Payment
from edge.payments import _identity, _result_of


def payment(pid="p1", version=1, state="ready", **kw) -> Payment:
    now = "2026-11-22T01:00:00+00:00"
    return Payment(payment_id=pid, charge_id="c1", kind="sale", state=state, version=version, method="credit",
                   amount=300, charge={"lines": []}, created_at=now, updated_at=now, **kw)


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


def test_versions_must_follow_each_other(journal):
    journal.save((payment(), "t", b"1"))
    with pytest.raises(JournalError, match="version 3, expected 2"):
        journal.save((payment(version=3), "t", b"3"))
    with pytest.raises(JournalError, match="version 1, expected 2"):
        journal.save((payment(version=1), "t", b"1again"))
    journal.save((payment(version=2, state="pending"), "t", b"2"))
    assert journal.get("p1").state == "pending"


def test_a_failed_batch_writes_nothing(journal):
    journal.save((payment(), "t", b"1"))
    with pytest.raises(JournalError):
        journal.save((payment("p2"), "t", b"x"), (payment(version=5), "t", b"y"))
    assert journal.get("p2") is None
    assert [row[1:3] for row in journal.outbox()] == [("p1", 1)]


def test_outbox_until_acknowledged_and_resend_keeps_the_version(journal):
    journal.save((payment(), "t", b"v1"))
    journal.save((payment(version=2, state="pending"), "t", b"v2"))
    assert [(r[1], r[2]) for r in journal.outbox()] == [("p1", 1), ("p1", 2)]
    assert journal.acknowledge("p1", 1) == 1
    assert [(r[1], r[2]) for r in journal.outbox()] == [("p1", 2)]
    assert journal.acknowledge("p1", 2) == 1 and journal.outbox_size() == 0
    journal.resend("p1", 2, "t", b"v2 again")
    assert [(r[2], r[4]) for r in journal.outbox()] == [(2, b"v2 again")]
    assert journal.get("p1").version == 2


def test_survives_reopening(tmp_path):
    j = Journal(tmp_path / "j.db")
    j.save((payment(state="pending", result={"before": None}), "t", b"x"))
    j.close()
    again = Journal(tmp_path / "j.db")
    try:
        p = again.get("p1")
        assert (p.state, p.result) == ("pending", {"before": None})
        assert again.outbox_size() == 1
    finally:
        again.close()


def test_print_jobs_once_and_uncertain_after_a_crash(journal):
    assert journal.add_print_job("p1:receipt", "p1", "receipt") is True
    assert journal.add_print_job("p1:receipt", "p1", "receipt") is False
    job = journal.print_jobs("queued")[0]
    journal.set_print_state(job.id, "printing", attempt=True)
    assert journal.recover_print_jobs() == 1
    assert [(j.state, j.attempts) for j in journal.print_jobs_of("p1")] == [("uncertain", 1)]
    assert journal.print_jobs("queued") == []


def test_receipt_numbers_are_counted_per_prefix(journal):
    journal.save((payment(result={"receipt_no": "1-20261122-0001"}), "t", b""))
    journal.save((payment("p2", result={"receipt_no": "1-20261122-0002"}), "t", b""))
    journal.save((payment("p3", result={"receipt_no": "1-20261121-0001"}), "t", b""))
    assert journal.count_receipts("1-20261122-") == 2
    assert journal.count_receipts("2-20261122-") == 0


def record(**kw) -> TxRecord:
    base = dict(kind=TxKind.SALE, outcome=Outcome.APPROVED, amount=300, receipt_no="0001", trace_no="000010",
                approval_no="A 123 45", terminal_id="29001234", card_name="VISA", masked_pan="************1234",
                at=datetime(2026, 11, 22, 16, 30))
    return TxRecord(**{**base, **kw})


def test_terminal_time_is_office_time_and_card_data_is_not_kept():
    kept = _result_of(record(), ZoneInfo("Asia/Tokyo"))
    assert kept["txn_at"] == "2026-11-22T16:30:00+09:00"  # 07:30 UTC: the same business day in Tokyo
    assert kept["approval_no"] == "A12345"  # what the bus takes: letters, digits, '-'
    assert "masked_pan" not in kept and not any("1234" == v[-4:] for k, v in kept.items() if k != "terminal_id")
    assert len(_result_of(record(card_name="X" * 80), ZoneInfo("Asia/Tokyo"))["card_name"]) == 40


def test_identity_tells_a_wrapped_slip_number_apart():
    yesterday = record(receipt_no="0001", trace_no="000001", at=datetime(2026, 11, 21, 10, 0))
    today = record(receipt_no="0001", trace_no="000057", at=datetime(2026, 11, 22, 9, 0))
    assert _identity(yesterday) != _identity(today)
    assert _identity(today) == _identity(record(receipt_no="0001", trace_no="000057", at=datetime(2026, 11, 22, 9, 0)))
    assert _identity(None) is None


def test_a_full_disk_is_reported_as_such_not_as_a_failed_rollback(tmp_path):
    # SQLite rolls the transaction back by itself on SQLITE_FULL; a second
    # ROLLBACK used to fail and hide the real error from the log.
    import sqlite3

    from bus.sqlitedb import Database

    db = Database(tmp_path / "full.db", ["CREATE TABLE t (b BLOB);"])
    db.conn.execute("PRAGMA max_page_count=20")  # a disk of 20 pages
    with pytest.raises(sqlite3.OperationalError, match="full"), db.transaction() as conn:
        for _ in range(50):
            conn.execute("INSERT INTO t VALUES (zeroblob(4000))")
    assert not db.conn.in_transaction
    with db.transaction() as conn:  # still usable
        conn.execute("INSERT INTO t VALUES (x'00')")
    db.close()
