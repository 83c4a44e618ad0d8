"""ZvtTerminal against SimTerminal on a real pty: every scenario, and how an unknown
outcome is resolved by asking the terminal (last_transaction)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import serial

from drivers.terminal import zvt_proto as p
from drivers.terminal.base import Outcome, TerminalUnavailable, TxKind
from drivers.terminal.sim import STEPS, Scenario, SimTerminal
from drivers.terminal.zvt import ZvtTerminal

# Short timers so that the doubtful scenarios end quickly.
TIMERS = {"t1_s": 0.3, "t3_s": 0.5, "t4_s": 0.6, "inter_byte_s": 0.2}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def no_leaks():
    threads, fds = threading.active_count(), _fds()
    yield
    deadline = time.monotonic() + 2
    while (threading.active_count() > threads or _fds() > fds) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= threads, threading.enumerate()
    assert _fds() <= fds


@pytest.fixture
def sim(tmp_path):
    with SimTerminal(link=tmp_path / "pt", ack_timeout_s=0.2, ecr_answer_timeout_s=0.5) as s:
        yield s


@pytest.fixture
def term(sim):
    with ZvtTerminal(str(sim.link), **TIMERS) as t:
        yield t


def test_sale_approved_with_slip_data_and_status_words(sim, term):
    seen: list[str] = []
    record = term.sale(300, on_status=seen.append)
    assert record.outcome is Outcome.APPROVED and record.kind is TxKind.SALE
    booked = sim.transactions[-1]
    assert (record.amount, record.receipt_no, record.trace_no) == (300, booked.receipt_no, booked.trace_no)
    assert record.approval_no == booked.approval_no and len(record.approval_no) == 7
    assert record.card_name == "VISA" and record.terminal_id == "29001234"
    assert record.masked_pan.startswith("*" * 12) and sum(c.isdigit() for c in record.masked_pan) == 4
    assert record.at is not None and abs((record.at - booked.at).total_seconds()) < 1
    assert seen == ["insert_card", "waiting_for_host"]
    assert sim.received_commands == ["05 01", "06 01"]
    assert term.health() == ("ok", None, None)


def test_brand_per_sale(sim, term):
    sim.present_card("nanaco")
    assert term.sale(550).card_name == "nanaco"
    assert term.sale(550).card_name == "VISA"


def test_decline(sim, term):
    sim.scenario = "decline"
    record = term.sale(1300)
    assert record.outcome is Outcome.DECLINED and record.reason == "declined" and record.result_code == 5
    assert record.receipt_no is None
    assert term.last_transaction() is None  # a decline books nothing


def test_silent_terminal_is_unavailable_before_the_sale_is_sent(sim, term):
    sim.scenario = Scenario.SILENT
    with pytest.raises(TerminalUnavailable):
        term.sale(300)
    assert "05 01" in sim.received_commands and "06 01" not in sim.received_commands
    assert sim.transactions == []
    assert term.health()[0] == "error"
    with pytest.raises(TerminalUnavailable):
        term.last_transaction()


def test_crc_corruption_is_naked_and_repeated(sim, term):
    sim.scenario = "crc_corruption"
    record = term.sale(450)
    assert record.outcome is Outcome.APPROVED
    assert sim.naks_received == 1
    assert len(sim.transactions) == 1 and not sim.transactions[0].reversed_by_terminal


def test_drop_after_status_is_unknown_then_found_approved(sim, term):
    sim.scenario = "drop_after_status"
    record = term.sale(300)
    assert record.outcome is Outcome.UNKNOWN and record.reason == "connection_lost"
    booked = sim.transactions[-1]
    assert record.receipt_no == booked.receipt_no  # the status information did arrive
    with pytest.raises(TerminalUnavailable):  # cable still out
        term.last_transaction()
    sim.replug()
    sim.scenario = "approve"
    found = term.last_transaction()
    assert found.outcome is Outcome.APPROVED and found.kind is TxKind.SALE
    assert (found.receipt_no, found.amount) == (booked.receipt_no, 300)
    assert sim.received_commands.count("06 01") == 1  # never sent again


def test_completion_lost_is_unknown_then_found_approved(sim, term):
    sim.scenario = "completion_lost"
    t0 = time.monotonic()
    record = term.sale(750)
    assert time.monotonic() - t0 < 2
    assert record.outcome is Outcome.UNKNOWN and record.reason == "completion_lost"
    found = term.last_transaction()
    assert found.outcome is Outcome.APPROVED and found.receipt_no == sim.transactions[-1].receipt_no
    assert found.amount == 750


def test_cable_pulled_before_anything_happens_sale_absent(sim, term):
    first = term.sale(300)
    sim.scenario = "cable_pulled"
    record = term.sale(350)
    assert record.outcome is Outcome.UNKNOWN and record.reason == "connection_lost"
    assert record.receipt_no is None
    sim.replug()
    sim.scenario = "approve"
    found = term.last_transaction()
    # The terminal's last transaction is the earlier sale: the 350 yen one never happened.
    assert found.receipt_no == first.receipt_no and found.amount == 300
    assert [t.amount for t in sim.transactions] == [300]


def test_slow_bytes(sim, term):
    sim.scenario = "slow_bytes"
    assert term.sale(300).outcome is Outcome.APPROVED


def test_bytes_slower_than_the_inter_byte_timeout_are_dropped(sim, tmp_path):
    sim.scenario = "slow_bytes"
    sim.byte_delay_s = 0.15
    with (
        ZvtTerminal(str(sim.link), t1_s=0.3, t3_s=0.5, t4_s=0.6, inter_byte_s=0.05) as slow_ecr,
        pytest.raises(TerminalUnavailable),  # even the status enquiry's answer breaks up
    ):
        slow_ecr.sale(300)
    assert "06 01" not in sim.received_commands


def test_duplicate_status_information_counts_once(sim, term):
    sim.scenario = "duplicate_frames"
    record = term.sale(300)
    assert record.outcome is Outcome.APPROVED
    assert len(sim.transactions) == 1


def test_void_of_an_approved_sale(sim, term):
    sale = term.sale(1600)
    void = term.void(sale.receipt_no, 1600)
    assert void.outcome is Outcome.APPROVED and void.kind is TxKind.VOID and void.amount == 1600
    assert void.receipt_no != sale.receipt_no
    assert sim.transactions[0].voided
    again = term.void(sale.receipt_no, 1600)
    assert again.outcome is Outcome.DECLINED and again.result_code == 0xB4  # already reversed
    last = term.last_transaction()
    assert last.kind is TxKind.VOID and last.receipt_no == void.receipt_no


def test_nanaco_cannot_be_voided(sim, term):
    sim.present_card("nanaco")
    sale = term.sale(300)
    refused = term.void(sale.receipt_no, 300)
    assert refused.outcome is Outcome.DECLINED and refused.result_code == 0xB5


def test_refund(sim, term):
    record = term.refund(500)
    assert record.outcome is Outcome.APPROVED and record.kind is TxKind.REFUND and record.amount == 500
    assert term.last_transaction().kind is TxKind.REFUND


def test_totals_add_up(sim, term):
    term.sale(300)
    sim.present_card("JCB")
    term.sale(450)
    sim.present_card("Suica")
    term.sale(1000)
    voided = term.sale(200)
    term.void(voided.receipt_no, 200)
    term.refund(100)
    totals = term.day_totals()
    assert totals.count == 3 and totals.amount == 1750
    assert totals.by_card == {"VISA": (1, 300), "JCB": (1, 450), "other": (1, 1000)}


def test_abort_from_another_thread(sim, term):
    sim.card_wait_s = None  # the customer never shows a card
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=term.sale(300)), name="test-sale")
    worker.start()
    assert sim.reached("waiting_for_card").wait(2)
    term.abort()
    worker.join(3)
    record = result["r"]
    assert record.outcome is Outcome.ABORTED and record.reason == "cancelled" and record.result_code == 0x6C
    assert "06 B0" in sim.received_commands
    assert sim.transactions[-1].outcome is Outcome.ABORTED


def test_second_command_while_one_runs_is_refused(sim, term):
    sim.card_wait_s = None
    worker = threading.Thread(target=term.sale, args=(300,), name="test-sale")
    worker.start()
    assert sim.reached("waiting_for_card").wait(2)
    with pytest.raises(TerminalUnavailable, match="busy"):
        term.sale(300)
    sim.present_card()
    worker.join(3)
    assert sim.received_commands.count("06 01") == 1


def test_terminal_reverses_when_the_ecr_never_answers_status_information(sim, term):
    # A bare ECR that acknowledges frames on the link but never answers 04 0F, as if the
    # cash register died at that moment.
    with serial.Serial(str(sim.link), 9600, timeout=0) as port:
        def read(timeout: float) -> bytes:
            port.timeout = timeout
            return port.read(256)

        link = p.FramedLink(read, port.write, ack_timeout_s=0.3)
        link.send(p.cmd_authorisation(300))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not sim.reached("reversed_by_terminal").is_set():
            raw = link.receive(0.05)
            if raw is not None and p.parse_apdu(raw).command not in (p.ACK_APDU, p.CMD_STATUS_INFO):
                link.send(p.APDU_ACK)
    assert sim.reached("reversed_by_terminal").is_set()
    assert sim.transactions[-1].reversed_by_terminal
    found = term.last_transaction()
    assert found.outcome is Outcome.ABORTED and found.reason == "reversed_by_terminal" and found.amount == 300
    assert term.day_totals().amount == 0


def test_hold_pauses_the_terminal_at_a_step(sim, term):
    sim.hold("status_info_acked")
    result = {}
    worker = threading.Thread(target=lambda: result.update(r=term.sale(300)), name="test-sale")
    worker.start()
    assert sim.reached("status_info_acked").wait(2)
    time.sleep(0.1)
    assert worker.is_alive()  # held: no completion yet
    sim.release()
    worker.join(3)
    assert result["r"].outcome is Outcome.APPROVED
    with pytest.raises(ValueError):
        sim.reached("no_such_step")
    assert "status_info_sent" in STEPS


def test_port_missing_at_start_then_reopened_after_replug(sim, term):
    term.sale(300)
    sim.pull_cable()
    assert not sim.link.exists()
    with pytest.raises(TerminalUnavailable):
        term.sale(300)
    assert term.health()[0] == "error"
    sim.replug()
    assert term.sale(300).outcome is Outcome.APPROVED
    assert term.health() == ("ok", None, None)


def test_replugged_while_idle_is_reopened_at_once(sim, term):
    term.sale(300)
    sim.pull_cable()
    sim.replug()
    assert term.sale(300).outcome is Outcome.APPROVED


def test_no_port_at_all(tmp_path):
    with ZvtTerminal(str(tmp_path / "nothing"), **TIMERS) as t:
        assert t.health()[0] in ("warning", "error")
        with pytest.raises(TerminalUnavailable):
            t.sale(300)
        assert t.health()[0] == "error"
    assert t.health()[1] == "closed"
    with pytest.raises(TerminalUnavailable):
        t.sale(300)


def test_bad_amounts_send_nothing(sim, term):
    for amount in (0, -1, 10_000_000):
        with pytest.raises(ValueError):
            term.sale(amount)
    with pytest.raises(TypeError):
        term.sale(300.0)
    with pytest.raises(ValueError):
        term.void("12345", 300)
    assert sim.received_commands == []


def test_standalone_simulator_process(tmp_path):
    link = tmp_path / "pt"
    proc = subprocess.Popen([sys.executable, "-m", "drivers.terminal.sim", "--link", str(link)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().startswith("/dev/pts/")
        with ZvtTerminal(str(link), **TIMERS) as t:
            assert t.sale(300).outcome is Outcome.APPROVED
        proc.terminate()
        assert proc.wait(5) == 0
        assert not link.exists()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
