"""Receipts at the counter: the real edge daemon prints through the real
printer driver to a fake ESC/POS printer on TCP that answers status queries.

A receipt prints once; a printer that is out of paper keeps the job and prints
it when it recovers (and says so, on the display and in health); a re-print
says 再発行; a job cut off by a kill -9 is never printed again by itself.
"""

from __future__ import annotations

import json
import signal
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from drivers.printer import FakeEscposPrinter
from tests.conftest import zvt_toml
from tests.integration.test_payments import charge, wait_for, wait_state
from tests.support.procs import EdgeProcess

pytestmark = pytest.mark.timeout(90)

RECEIPT = "領収書".encode("cp932")
REPRINT = "再発行".encode("cp932")


@pytest.fixture
def printer():
    fake = FakeEscposPrinter()
    yield fake
    fake.close()


def printer_toml(printer) -> str:
    return f'[printer]\ndriver = "network"\nhost = "127.0.0.1"\ntcp_port = {printer.port}\nmode = "kanji"\n'


class Health:
    """The counter's retained health topic, as IT sees it."""

    def __init__(self, port: int, device: str) -> None:
        self.last: dict | None = None
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"madoguchi/v1/midori/device/{device}/health", qos=1)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.last = json.loads(msg.payload)

    def printer(self) -> tuple[str, str | None] | None:
        with self._lock:
            if self.last is None:
                return None
            p = self.last["peripherals"]["printer"]
            return p["status"], p.get("reason")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def paid(central, edge=None, **body):
    body = {"lines": [{"code": "juminhyo", "quantity": 2}], "method": "cash", "tendered": 1000, "start": True, **body}
    code, sent = charge(central, **body)
    assert code == 201, sent
    return wait_state(central, sent["payment_id"], "approved")


def test_a_receipt_prints_once_and_a_reprint_says_so(central_factory, edges, printer):
    central = central_factory()
    edge = edges("counter-1", "1", extra=printer_toml(printer))
    p = paid(central)
    job = printer.wait_for_jobs(1, timeout=10)[0]
    assert RECEIPT in job and REPRINT not in job
    assert b"600" in job and p["receipt_no"].encode() in job
    time.sleep(1.5)  # nothing else comes out
    assert len(printer.jobs) == 1
    code, _ = central.request("POST", f"/api/v1/payments/{p['payment_id']}/reprint", {"counter": "1"})
    assert code == 200
    jobs = printer.wait_for_jobs(2, timeout=10)
    assert REPRINT in jobs[1] and RECEIPT in jobs[1]
    wait_for(lambda: edge.daemon.printer_spool.printed == 2, 5, "both jobs marked done")
    assert [j.state for j in edge.daemon.journal.print_jobs_of(p["payment_id"])] == ["done", "done"]


def test_out_of_paper_the_receipt_waits_and_prints_on_recovery(central_factory, edges, printer, broker):
    central = central_factory()
    health = Health(broker.port, "counter-1")
    try:
        edge = edges("counter-1", "1", extra=printer_toml(printer))
        printer.set_paper("end")
        paid(central)
        # Staff see why, on the display; IT sees it in health; nothing printed.
        wait_for(lambda: any("用紙" in s.text_ja for s in edge.display.history), 10, "paper-end notice")
        wait_for(lambda: health.printer() == ("error", "paper_end"), 15, "printer health paper_end")
        assert printer.jobs == []
        printer.set_paper("ok")
        job = printer.wait_for_jobs(1, timeout=15)[0]
        assert RECEIPT in job
        wait_for(lambda: health.printer() == ("ok", None), 15, "printer health ok")
        time.sleep(1.0)
        assert len(printer.jobs) == 1
    finally:
        health.close()


def test_near_end_still_prints_with_a_warning(central_factory, edges, printer, broker):
    central = central_factory()
    health = Health(broker.port, "counter-1")
    try:
        edges("counter-1", "1", extra=printer_toml(printer))
        printer.set_paper("near_end")
        paid(central)
        assert RECEIPT in printer.wait_for_jobs(1, timeout=10)[0]
        wait_for(lambda: health.printer() == ("warning", "paper_near_end"), 15, "printer health near end")
    finally:
        health.close()


def test_a_job_cut_off_by_a_crash_is_not_printed_twice(central_factory, broker, printer, tmp_path):
    central = central_factory()
    edge = EdgeProcess(tmp_path / "edge", "counter-1", "1", broker.port, extra=printer_toml(printer))
    try:
        edge.start(crashpoint="print.before_send")
        wait_for(lambda: central.get("/api/v1/stats")["devices"]["counter-1"]["state"] == "online", 15, "edge online")
        p = paid(central)
        assert edge.wait_exit(20) == -signal.SIGKILL
        edge.start()
        wait_for(lambda: central.get("/api/v1/stats")["devices"]["counter-1"]["state"] == "online", 15, "edge online")
        time.sleep(2.0)
        # Nobody knows whether it reached the paper: it is not printed on its own.
        assert printer.jobs == []
        assert "not re-printed on their own" in edge.log_text()
        code, _ = central.request("POST", f"/api/v1/payments/{p['payment_id']}/reprint", {"counter": "1"})
        assert code == 200
        job = printer.wait_for_jobs(1, timeout=10)[0]
        assert REPRINT in job
    finally:
        edge.stop()


def test_void_and_refund_slips(central_factory, edges, printer, sim):
    sim.brand = "nanaco"
    central = central_factory()
    edges("counter-1", "1", extra=printer_toml(printer) + zvt_toml(sim))
    body = {"counter": "1", "reason": "申請取下げ"}
    # Cash: voided at once, a 取消 slip.
    cash = paid(central)
    printer.wait_for_jobs(1, timeout=10)
    code, void = central.request("POST", f"/api/v1/payments/{cash['payment_id']}/void", body)
    assert code == 200 and void["action"] == "void"
    job = printer.wait_for_jobs(2, timeout=10)[1]
    assert "取消".encode("cp932") in job and "利用控え".encode("cp932") in job
    # nanaco cannot be voided: a cash refund and its 返金伝票 with a signature line.
    code, sent = charge(central, lines=[{"code": "juminhyo", "quantity": 1}], method="emoney", brand="nanaco", start=True)
    assert code == 201
    wait_state(central, sent["payment_id"], "approved", timeout=30)
    printer.wait_for_jobs(3, timeout=10)
    code, refund = central.request("POST", f"/api/v1/payments/{sent['payment_id']}/void", body)
    assert code == 200 and refund["action"] == "refund"
    job = printer.wait_for_jobs(4, timeout=10)[3]
    assert "返金伝票".encode("cp932") in job and "署名".encode("cp932") in job and "領収書".encode("cp932") not in job
