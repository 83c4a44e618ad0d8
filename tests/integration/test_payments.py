"""Payments end to end: the console's HTTP API → central's ledger → the
counter's Pi (journal, display, PAY button) → back to the ledger.

Real broker, real central process with its SQLite file, the real edge
daemon (in-process, MockFactory pins, FakeDisplay).  Cash needs no terminal;
the terminal scenarios are in test_payment_terminal.py and the kill -9 steps
in test_payment_crash.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta

import paho.mqtt.client as mqtt
import pytest

from drivers.buttons import press
from tests.support.procs import wait_for

pytestmark = pytest.mark.timeout(90)


def payment(central, pid):
    return central.get(f"/api/v1/payments/{pid}")


def wait_state(central, pid, *states, timeout=10.0):
    return wait_for(lambda: (p := payment(central, pid))["state"] in states and p, timeout, f"payment in {states}")


def charge(central, counter="1", **body):
    body.setdefault("payment_id", str(uuid.uuid4()))
    return central.request("POST", f"/api/v1/counters/{counter}/charges", body)


def press_pay(edge):
    press(edge.factory, edge.config.buttons.pay, pull_up=edge.config.buttons.pull_up)


@pytest.fixture
def office(central_factory, edges):
    central = central_factory()
    counter1 = edges("counter-1", "1")
    counter2 = edges("counter-2", "2")
    return central, counter1, counter2


def test_cash_payment_from_charge_to_ledger(office):
    central, edge, _ = office
    ticket = central.issue("juminhyo")["number"]
    status, sent = charge(central, lines=[{"code": "juminhyo", "quantity": 2}, {"code": "inkan-shomei", "quantity": 1}],
                          method="cash", tendered=1000, ticket=ticket)
    assert status == 201, sent
    assert sent["state"] == "sent" and sent["amount"] == 900
    assert [(line["code"], line["quantity"], line["amount"]) for line in sent["lines"]] == [
        ("juminhyo", 2, 600), ("inkan-shomei", 1, 300)]
    pid = sent["payment_id"]
    ready = wait_state(central, pid, "ready")
    assert "PAY" in ready["message_ja"]
    # The visitor sees the amount on the counter's display.
    wait_for(lambda: edge.screen and "900" in edge.screen.text_ja, what="amount on the display")
    assert "お支払い" in edge.screen.text_ja
    press_pay(edge)
    done = wait_state(central, pid, "approved")
    assert (done["tendered"], done["change"]) == (1000, 100)
    assert done["receipt_no"].startswith("1-") and done["txn_at"]
    assert "お釣り 100 円" in done["message_ja"]
    wait_for(lambda: any("お釣り 100 円" in s.text_ja for s in edge.display.history), what=f"change on the display {edge.display.history[-4:]}")
    # Every version reached the ledger and was acknowledged: the outbox is empty.
    wait_for(lambda: edge.daemon.journal.outbox_size() == 0, what="outbox drained")
    states = [entry["state"] for entry in payment(central, pid)["log"]]
    assert states[0] == "sent" and "ready" in states and states[-1] == "approved"
    # The same charge sent again (a retry with the same payment_id) is charged once.
    status, again = charge(central, lines=[{"code": "juminhyo", "quantity": 2}, {"code": "inkan-shomei", "quantity": 1}],
                           method="cash", tendered=1000, ticket=ticket, payment_id=pid)
    assert status == 201 and again["payment_id"] == pid and again["state"] == "approved"
    assert len(central.get("/api/v1/payments")) == 1


BAD_CHARGES = [
    ({"lines": [{"code": "jumnhyo", "quantity": 1}], "method": "cash"}, 422, "invalid", "juminhyo"),
    ({"lines": [{"code": "juminhyo", "quantity": 0}], "method": "cash"}, 422, None, "quantity"),
    ({"lines": [{"code": "juminhyo", "quantity": -2}], "method": "cash"}, 422, None, "quantity"),
    ({"lines": [{"code": "juminhyo", "quantity": 1.5}], "method": "cash"}, 422, None, "quantity"),
    ({"lines": [{"code": "juminhyo", "quantity": "2"}], "method": "cash"}, 422, None, "quantity"),
    ({"lines": [{"code": "juminhyo", "quantity": 1}], "method": "cash", "tendered": -100}, 422, None, "tendered"),
    ({"lines": [{"code": "juminhyo", "quantity": 1}], "method": "cash", "tendered": 100}, 422, "invalid", "足りません"),
    ({"lines": [{"code": "juminhyo", "quantity": 1}], "method": "credit", "tendered": 500}, 422, "invalid", "現金"),
    ({"lines": [{"code": "mynumber-saikofu", "quantity": 1}], "method": "credit"}, 422, "method_not_allowed", "マイナンバーカード再交付"),
    ({"lines": [{"code": "juminhyo", "quantity": 1}], "method": "bitcoin"}, 422, "invalid", "bitcoin"),
    ({"lines": [{"code": "juminhyo", "quantity": 1}], "method": "credit", "brand": "paypay"}, 422, "invalid", "paypay"),
    ({"lines": [{"code": "juminhyo", "quantity": 1}], "method": "cash", "amount": 1}, 422, None, "amount"),
    ({"lines": [], "method": "cash"}, 422, None, "lines"),
    ({"lines": [{"code": "juminhyo", "quantity": 1}], "method": "cash", "ticket": 999}, 404, "not_found", "999"),
]


def test_bad_charges_are_refused_and_nothing_is_recorded(office):
    """One central for all cases: each bad charge is refused with its reason,
    nothing reaches the ledger or the counter, and central keeps serving."""
    central, edge, _ = office
    for body, status, error, says in BAD_CHARGES:
        code, answer = charge(central, **body)
        assert code == status, (body, answer)
        if error is not None:
            assert answer["error"] == error, (body, answer)
            assert says in answer["message_ja"] + answer["message_en"], (body, answer)
        else:
            assert says in json.dumps(answer), (body, answer)
    code, answer = charge(central, counter="99", lines=[{"code": "juminhyo", "quantity": 1}], method="cash")
    assert code == 404 and answer["error"] == "not_found"
    assert central.get("/api/v1/payments") == []
    time.sleep(0.3)  # anything sent to the counter would have arrived by now
    assert edge.daemon.journal.recent() == []
    # Still serving: a good charge goes through.
    code, ok = charge(central, lines=[{"code": "juminhyo", "quantity": 1}], method="cash")
    assert code == 201, ok
    wait_state(central, ok["payment_id"], "ready")


def _paid_cash(central, edge, amount_code="juminhyo"):
    code, sent = charge(central, lines=[{"code": amount_code, "quantity": 1}], method="cash", tendered=500, start=True)
    assert code == 201, sent
    return wait_state(central, sent["payment_id"], "approved")


def test_void_rules(office, tmp_path):
    central, edge, _ = office
    paid = _paid_cash(central, edge)
    pid = paid["payment_id"]
    base = {"reason": "誤って請求"}  # the staff id recorded is the login's (docs/security.md)
    # From another counter: refused, nothing recorded.
    code, answer = central.request("POST", f"/api/v1/payments/{pid}/void", {"counter": "2", **base})
    assert code == 403 and answer["error"] == "wrong_counter" and "1 番窓口" in answer["message_ja"]
    # Naming another staff member than the login, or without a reason: refused.
    code, answer = central.request("POST", f"/api/v1/payments/{pid}/void", {"counter": "1", "staff_id": "s1", "reason": "x"})
    assert code == 403 and answer["error"] == "staff_mismatch" and "職員番号" in answer["message_ja"]
    code, answer = central.request("POST", f"/api/v1/payments/{pid}/void", {"counter": "1"})
    assert code == 422
    assert [p["payment_id"] for p in central.get("/api/v1/payments")] == [pid]
    # The right counter, staff id and reason: the sale is voided, the void points to it.
    code, void = central.request("POST", f"/api/v1/payments/{pid}/void", {"counter": "1", **base})
    assert code == 200 and void["action"] == "void" and void["kind"] == "void", void
    wait_state(central, void["payment_id"], "approved")
    assert wait_state(central, pid, "voided")["state"] == "voided"
    assert payment(central, void["payment_id"])["original_id"] == pid
    assert payment(central, void["payment_id"])["staff_id"] == central.staff_id("counter")
    # A second void of the same sale: refused.
    code, answer = central.request("POST", f"/api/v1/payments/{pid}/void", {"counter": "1", **base})
    assert code == 409


def test_void_a_day_later_is_refused(office):
    central, edge, _ = office
    paid = _paid_cash(central, edge)
    pid = paid["payment_id"]
    # The payment was taken yesterday: move its transaction date back in
    # central's database (as if the day had passed).
    db = sqlite3.connect(central.config.parent / "central.db")
    yesterday = datetime.now(UTC) - timedelta(days=1)
    with db:
        db.execute("UPDATE payments SET txn_at = ?, day = ? WHERE payment_id = ?",
                   (yesterday.isoformat(), yesterday.astimezone().date().isoformat(), pid))
    db.close()
    code, answer = central.request("POST", f"/api/v1/payments/{pid}/void", {"counter": "1", "reason": "x"})
    assert code == 409 and answer["error"] == "too_late" and "当日" in answer["message_ja"]
    assert payment(central, pid)["state"] == "approved"


def test_edge_rejects_malformed_charge_commands(office, broker):
    central, edge, _ = office
    topic = "madoguchi/v1/midori/device/counter-1/cmd/charge"
    now = datetime.now(UTC)
    good = {
        "schema": 1, "command_id": str(uuid.uuid4()), "issued_at": now.isoformat(),
        "expires_at": (now + timedelta(seconds=60)).isoformat(), "payment_id": str(uuid.uuid4()),
        "charge_id": str(uuid.uuid4()), "counter": "1", "method": "cash", "total": 300,
        "lines": [{"code": "juminhyo", "name_ja": "住民票の写し", "name_en": "Residence certificate", "quantity": 1,
                   "unit_price": 300, "amount": 300, "account": "総務手数料"}],
    }
    bad = [
        {**good, "total": -300},
        {**good, "total": 301},
        {**good, "total": 300.0},
        {**good, "lines": [{**good["lines"][0], "amount": 299}]},
        {**good, "method": "credit", "tendered": 1000},
        {**good, "unknown": 1},
    ]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for payload in bad:
            client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5)
        wait_for(lambda: edge.daemon.payments.stats["bad_command"] >= len(bad), what="all bad charges rejected")
        assert edge.daemon.journal.recent() == []
        # The next good one is taken.
        client.publish(topic, json.dumps(good), qos=1).wait_for_publish(5)
        wait_for(lambda: len(edge.daemon.journal.recent()) == 1, what="good charge journaled")
    finally:
        client.loop_stop()
        client.disconnect()
    assert edge.daemon.payments.stats["bad_command"] == len(bad)


def test_pay_starts_the_charge_sent_last_and_once(office):
    central, edge, _ = office
    ids = []
    for tendered in (1000, 2000):
        code, sent = charge(central, lines=[{"code": "juminhyo", "quantity": 1}], method="cash", tendered=tendered)
        assert code == 201
        wait_state(central, sent["payment_id"], "ready")
        ids.append(sent["payment_id"])
    press_pay(edge)
    press_pay(edge)  # an impatient second press
    assert wait_state(central, ids[1], "approved")["change"] == 1700
    time.sleep(1.0)
    assert payment(central, ids[0])["state"] == "ready"


def test_a_stand_alone_terminal_tells_staff_what_to_press(central_factory, edges):
    central = central_factory()
    edges("counter-1", "1", extra='[terminal]\ndriver = "manual"\n')
    code, sent = charge(central, lines=[{"code": "juminhyo", "quantity": 2}], method="credit", brand="visa", start=True)
    assert code == 201, sent
    pending = wait_state(central, sent["payment_id"], "pending")
    assert "「クレジット」を押す" in pending["message_ja"] and "600" in pending["message_ja"], pending["message_ja"]
    # An approval without the slip number is refused by the API, nothing changes.
    body = {"counter": "1", "approved": True}
    code, answer = central.request("POST", f"/api/v1/payments/{sent['payment_id']}/confirm", body)
    assert code == 422 and "伝票番号" in answer["message_ja"]
    code, _ = central.request("POST", f"/api/v1/payments/{sent['payment_id']}/confirm", {**body, "slip_no": "0042"})
    assert code == 200
    done = wait_state(central, sent["payment_id"], "approved")
    assert done["slip_no"] == "0042" and done["terminal"] == "manual"
