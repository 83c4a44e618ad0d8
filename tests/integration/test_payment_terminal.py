"""Card payments against the ZVT simulator on a pty, through the whole
product: console API → central → the counter's edge daemon (the real
ZvtTerminal driver on the pty) → back into central's ledger.

Each of the simulator's fault scenarios must end in the right state, with the
message that tells staff what to do, and the terminal's own journal must agree
with the ledger: never two approved sales, never an approved sale the ledger
does not show.
"""

from __future__ import annotations

import time
from datetime import UTC

import pytest

from drivers.terminal.base import Outcome, TxKind
from tests.conftest import zvt_toml
from tests.integration.test_payments import charge, payment, wait_state

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def card_office(central_factory, edges, sim, tmp_path):
    central = central_factory()
    edge = edges("counter-1", "1", extra=zvt_toml(sim))
    return central, edge


def approved_sales(sim):
    return [t for t in sim.transactions if t.kind is TxKind.SALE and t.outcome is Outcome.APPROVED
            and not t.reversed_by_terminal and not t.voided]


def card_charge(central, method="credit", brand="visa", code="juminhyo"):
    status, sent = charge(central, lines=[{"code": code, "quantity": 1}], method=method, brand=brand, start=True)
    assert status == 201, sent
    return sent["payment_id"]


@pytest.mark.parametrize(
    ("scenario", "final", "reason", "says"),
    [
        ("approve", "approved", None, "完了"),
        ("decline", "declined", "declined", "別の方法"),
        ("silent", "declined", "terminal_unavailable", "端末が応答しません"),
        ("crc_corruption", "approved", None, "完了"),
        ("slow_bytes", "approved", None, "完了"),
        ("duplicate_frames", "approved", None, "完了"),
    ],
)
def test_scenario_ends_in_the_right_state(card_office, sim, scenario, final, reason, says):
    central, edge = card_office
    sim.scenario = scenario
    pid = card_charge(central)
    p = wait_state(central, pid, final, timeout=30)
    assert p["reason"] == reason, p
    assert says in p["message_ja"], p
    sales = approved_sales(sim)
    if final == "approved":
        assert len(sales) == 1 and sales[0].amount == 300
        assert p["slip_no"] == sales[0].receipt_no and p["approval_no"] == sales[0].approval_no
        assert p["card_name"] == "VISA" and p["terminal"] == "zvt"
    else:
        assert sales == []
    if scenario == "silent":
        # Nothing was sent but the status enquiry: the sale never left the Pi.
        assert not any(c.startswith("06 01") for c in sim.received_commands)
    # The visitor's display says how it went.
    assert edge.screen is not None


@pytest.mark.parametrize(
    ("scenario", "resolved", "reason"),
    [
        ("completion_lost", "approved", None),
        ("drop_after_status", "approved", None),
        ("cable_pulled", "declined", "not_processed"),
    ],
)
def test_unknown_outcome_is_resolved_by_asking_the_terminal(card_office, sim, scenario, resolved, reason):
    central, edge = card_office
    sim.scenario = scenario
    pid = card_charge(central)
    p = wait_state(central, pid, "unknown", resolved if scenario == "completion_lost" else "unknown", timeout=30)
    if p["state"] == "unknown":
        assert "処理未了" in p["message_ja"], p
        # Staff plug the cable back in and press 端末に確認 on the console.
        if not sim.port:
            sim.replug()
        sim.scenario = "approve"
        status, _ = central.request("POST", f"/api/v1/payments/{pid}/resolve", {"counter": "1"})
        assert status == 200
    p = wait_state(central, pid, resolved, timeout=30)
    assert p["reason"] == reason, p
    # The sale was sent exactly once: never retried.
    assert sum(c.startswith("06 01") for c in sim.received_commands) == 1
    assert len(approved_sales(sim)) == (1 if resolved == "approved" else 0)
    if resolved == "approved":
        assert p["slip_no"] == approved_sales(sim)[0].receipt_no


def test_unknown_resolved_by_staff_needs_a_slip_number(card_office, sim):
    central, edge = card_office
    sim.scenario = "cable_pulled"
    pid = card_charge(central)
    wait_state(central, pid, "unknown", timeout=30)
    # The cable stays out: asking the terminal cannot help; staff read the terminal.
    status, answer = central.request("POST", f"/api/v1/payments/{pid}/resolve", {"counter": "1", "approved": True})
    assert status == 422 and "伝票番号" in answer["message_ja"]  # the staff id is the login's
    status, _ = central.request("POST", f"/api/v1/payments/{pid}/resolve",
                                {"counter": "1", "approved": False})
    assert status == 200
    p = wait_state(central, pid, "declined")
    assert p["reason"] == "staff" and p["staff_id"] == central.staff_id("counter")  # the login's


def test_void_of_a_card_payment_at_the_terminal(card_office, sim):
    central, edge = card_office
    pid = card_charge(central)
    wait_state(central, pid, "approved", timeout=30)
    status, void = central.request("POST", f"/api/v1/payments/{pid}/void",
                                   {"counter": "1", "reason": "金額誤り"})
    assert status == 200 and void["action"] == "void", void
    done = wait_state(central, void["payment_id"], "approved", timeout=30)
    assert wait_state(central, pid, "voided")
    assert approved_sales(sim) == []  # the terminal's sale is voided too
    assert any(c.startswith("06 30") for c in sim.received_commands)
    assert done["original_id"] == pid


def test_emoney_that_cannot_be_voided_becomes_a_refund(card_office, sim):
    central, edge = card_office
    sim.present_card("nanaco")
    sim.brand = "nanaco"
    pid = card_charge(central, method="emoney", brand="nanaco")
    wait_state(central, pid, "approved", timeout=30)
    status, refund = central.request("POST", f"/api/v1/payments/{pid}/void",
                                     {"counter": "1", "reason": "申請取下げ"})
    assert status == 200 and refund["action"] == "refund" and refund["kind"] == "refund", refund
    done = wait_state(central, refund["payment_id"], "approved", timeout=30)
    assert done["method"] == "cash" and done["original_id"] == pid and done["amount"] == 300
    assert wait_state(central, pid, "refunded")
    # Nothing was asked of the terminal: nanaco cannot be voided there.
    assert not any(c.startswith("06 30") for c in sim.received_commands)


def test_a_slip_number_seen_before_does_not_hide_an_approval(card_office, sim):
    """Slip numbers restart after the terminal's day close: yesterday's 0001
    and today's 0001 are different sales (told apart by trace number)."""
    central, edge = card_office
    first = card_charge(central)
    assert wait_state(central, first, "approved", timeout=30)["slip_no"] == "0001"
    sim.end_of_day()
    sim.scenario = "completion_lost"
    second = card_charge(central)
    p = wait_state(central, second, "approved", "declined", timeout=30)
    assert p["state"] == "approved" and p["slip_no"] == "0001", p
    assert len(approved_sales(sim)) == 2


def test_an_unknown_payment_blocks_the_next_card_sale_until_settled(card_office, sim):
    central, edge = card_office
    sim.scenario = "cable_pulled"
    unknown = card_charge(central)
    wait_state(central, unknown, "unknown", timeout=30)
    sim.replug()
    sim.scenario = "approve"
    # Another card sale would become "the terminal's last transaction" and
    # hide the unknown one's answer: it does not start.
    second = card_charge(central)
    wait_state(central, second, "ready")
    time.sleep(1.0)
    assert payment(central, second)["state"] == "ready"
    assert any("処理未了の決済があります" in s.text_ja for s in edge.display.history)
    assert sum(c.startswith("06 01") for c in sim.received_commands) == 1
    # Cash is not held up.
    status, cash = charge(central, lines=[{"code": "juminhyo", "quantity": 1}], method="cash", start=True)
    assert status == 201 and wait_state(central, cash["payment_id"], "approved")
    # Settled by asking the terminal: the first sale never reached it.
    status, _ = central.request("POST", f"/api/v1/payments/{unknown}/resolve", {"counter": "1"})
    assert status == 200
    assert wait_state(central, unknown, "declined", timeout=30)["reason"] == "not_processed"
    status, _ = central.request("POST", f"/api/v1/payments/{second}/start", {"counter": "1"})
    assert status == 200
    assert wait_state(central, second, "approved", timeout=30)
    assert len(approved_sales(sim)) == 1


def test_repeated_commands_during_a_sale_do_not_disturb_it(card_office, sim):
    central, edge = card_office
    sim.hold("waiting_for_card")
    pid = card_charge(central)
    assert sim.reached("waiting_for_card").wait(20)
    wait_state(central, pid, "pending")
    # Staff press 端末に確認 and the charge is sent again while the visitor looks for the card.
    for _ in range(2):
        status, _ = central.request("POST", f"/api/v1/payments/{pid}/resolve", {"counter": "1"})
        assert status == 200
    status, again = charge(central, lines=[{"code": "juminhyo", "quantity": 1}], method="credit", brand="visa",
                           start=True, payment_id=pid)
    assert status == 201 and again["payment_id"] == pid
    time.sleep(0.5)
    sim.release()
    p = wait_state(central, pid, "approved", timeout=30)
    assert p["slip_no"] == approved_sales(sim)[0].receipt_no
    assert len(approved_sales(sim)) == 1


def test_a_void_that_never_reaches_the_counter_can_be_tried_again(central_factory, edges, sim):
    central = central_factory(extra="[payments]\ncommand_ttl_s = 5\n")
    edge = edges("counter-1", "1", extra=zvt_toml(sim))
    pid = card_charge(central)
    wait_state(central, pid, "approved", timeout=30)
    edge.stop()  # the counter's Pi is off
    body = {"counter": "1", "reason": "金額誤り"}
    status, void = central.request("POST", f"/api/v1/payments/{pid}/void", body)
    assert status == 200
    status, _ = central.request("POST", f"/api/v1/payments/{pid}/void", body)
    assert status == 409  # under way
    lost = wait_state(central, void["payment_id"], "cancelled", timeout=20)
    assert lost["reason"] == "not_delivered" and "届きませんでした" in lost["message_ja"]
    assert payment(central, pid)["state"] == "approved"
    status, again = central.request("POST", f"/api/v1/payments/{pid}/void", body)
    assert status == 200 and again["payment_id"] != void["payment_id"]


def test_an_unknown_settled_by_staff_keeps_the_time_the_sale_was_sent(card_office, sim):
    """The 収納日 is when the money moved, not when someone settled the
    unknown outcome (which may be the next morning)."""
    from datetime import datetime

    central, edge = card_office
    sim.scenario = "cable_pulled"
    pid = card_charge(central)
    wait_state(central, pid, "unknown", timeout=30)
    time.sleep(2.0)
    resolved_at = datetime.now(UTC)
    status, _ = central.request("POST", f"/api/v1/payments/{pid}/resolve",
                                {"counter": "1", "approved": True, "slip_no": "0042"})
    assert status == 200
    p = wait_state(central, pid, "approved")
    assert (resolved_at - datetime.fromisoformat(p["txn_at"])).total_seconds() > 1.5, p["txn_at"]
