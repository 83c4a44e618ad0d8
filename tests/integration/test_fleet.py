"""The fleet manager end to end (issue #7 item 2, docs/fleet.md): a real
Mosquitto, a real central process, real edge daemons as child processes (with
a fake ESC/POS printer on TCP and the ZVT simulator on a pty), the
``madoguchi devices`` CLI and the admin page in Chromium.

One central and one counter (counter-1) serve the whole module; the tests run
in file order and the restart test starts counter-1 again the way systemd
would.  counter-2 is the device that goes offline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest

from bus import encode
from bus.models import MAX_REQUEST_BYTES, Request, utcnow
from central.devices_cli import Bus, send_and_wait
from drivers.printer import FakeEscposPrinter
from drivers.terminal.sim import SimTerminal
from tests.integration.test_payments import charge, wait_state
from tests.support.browser import require_chromium
from tests.support.procs import (
    REPO,
    CentralProcess,
    EdgeProcess,
    central_toml,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
KEEPALIVE_S = 5  # tests/support/procs.py's EdgeProcess


# ------------------------------------------------------------------ the module's office


@pytest.fixture(scope="module")
def office(broker, tmp_path_factory):
    work = tmp_path_factory.mktemp("fleet")
    http_port = free_port()
    central = CentralProcess(central_toml(work / "central", broker.port, http_port), http_port, work / "central.log").start()
    printer = FakeEscposPrinter()
    sim = SimTerminal(link=work / "ttyPT", ecr_answer_timeout_s=1.0, card_wait_s=0.05)
    extra = (f'[printer]\ndriver = "network"\nhost = "127.0.0.1"\ntcp_port = {printer.port}\n'
             f'[terminal]\ndriver = "zvt"\nport = "{sim.link}"\nt3_s = 2\nt4_s = 3\n')
    edge = EdgeProcess(work / "edges", "counter-1", "1", broker.port, extra=extra).start()
    # Running low from the start (near end still prints): the alert is checked
    # last, so the spool's idle status read (every 10 s) has long happened.
    printer.set_paper("near_end")
    try:
        wait_online(central, "counter-1")
        yield central, edge, printer, sim
    finally:
        sim.release()
        edge.stop()
        central.stop()
        sim.close()
        printer.close()


def device(central, name):
    return central.get(f"/api/v1/fleet/devices/{name}")


def wait_online(central, name, timeout=20.0):
    return wait_for(lambda: (d := device(central, name))["state"] == "online" and d["version"] and d["peripherals"] and d,
                    timeout, f"{name} online with info and health")


def ask(central, name, method, **params):
    status, body = central.request("POST", f"/api/v1/fleet/devices/{name}/requests/{method}", {"params": params})
    assert status == 200, (status, body)
    return body


def audit_of(central, request_id):
    return central.get(f"/api/v1/fleet/audit?request_id={request_id}")


def audited(central, request_id, *, status, code=None):
    """The request's audit: who, what, and the device's answer (status, code)."""
    rows = wait_for(lambda: (r := audit_of(central, request_id)) and any(x["kind"] == "response" for x in r) and r,
                    5, f"audit of {request_id}")
    request = next(r for r in rows if r["kind"] == "request")
    response = next(r for r in rows if r["kind"] == "response")
    assert response["status"] == status and response["code"] == code, rows
    return request, response


def cli(broker, *args, timeout=30):
    return subprocess.run([sys.executable, "-m", "bus.cli", "devices", "--site", "midori", "--port", str(broker.port), *args],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=timeout, env={**os.environ, "PYTHONUTF8": "1"})


class RawRequester:
    """IT's requests as raw MQTT (what `madoguchi devices request` sends), to send bad ones too."""

    def __init__(self, broker_port: int) -> None:
        self.bus = Bus({"site": "midori", "broker": "127.0.0.1", "port": broker_port, "username": None,
                        "password": None, "ca": None})

    def send(self, name, method, payload: bytes, request_id=None, timeout=5.0):
        return send_and_wait(self.bus, name, method, payload, request_id or uuid.uuid4(), "it-test", timeout)

    def close(self):
        self.bus.close()


def request_payload(*, request_id=None, life_s=60, issued_ago_s=0, **params) -> tuple[uuid.UUID, bytes]:
    rid = request_id or uuid.uuid4()
    issued = utcnow() - timedelta(seconds=issued_ago_s)
    req = Request(request_id=rid, requested_by="it-test", issued_at=issued, expires_at=issued + timedelta(seconds=life_s),
                  params=params)
    return rid, encode(req)


@pytest.fixture(scope="module")
def raw(broker):
    r = RawRequester(broker.port)
    yield r
    r.close()


# ------------------------------------------------------------------ the registry and the CLI


def test_registry_and_cli_list_show_the_device(office, broker):
    central, _, _, _ = office
    d = device(central, "counter-1")
    assert d["role"] == "counter" and d["counter"] == "1" and d["ip"] == "127.0.0.1"
    assert d["version"] and len(d["config_hash"]) == 16 and d["last_seen"] and d["uptime_s"] is not None
    assert d["peripherals"]["printer"]["driver"] == "network" and d["peripherals"]["terminal"]["driver"] == "zvt"
    assert d["peripherals"]["printer"]["status"] in ("ok", "warning")

    out = cli(broker, "list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("機器 Device") and "状態 State" in lines[0] and "健康 Health" in lines[0]
    row = next(line for line in lines if line.startswith("counter-1 "))
    assert "オンライン online" in row and "counter" in row and "127.0.0.1" in row and d["version"] in row
    shown = cli(broker, "show", "counter-1")
    assert shown.returncode == 0 and "printer (network)" in shown.stdout and d["config_hash"] in shown.stdout
    missing = cli(broker, "show", "counter-9")
    assert missing.returncode == 4 and "counter-9" in missing.stderr


# ------------------------------------------------------------------ requests that work, audited


def test_identify_status_ticket_logs_get_config_are_answered_and_audited(office):
    central, edge, printer, _ = office
    body = ask(central, "counter-1", "identify", seconds=2)
    assert body["status"] == "ok" and body["data"] == {"seconds": 2}
    wait_for(lambda: "この機器です" in edge.log_text(), 5, "the display flashing")
    request, response = audited(central, body["request_id"], status="ok")
    assert request["requested_by"] == "it" and request["via"] == "web" and request["method"] == "identify"
    assert request["params"] == {"seconds": 2} and response["device"] == "counter-1"

    jobs_before = len(printer.jobs)
    body = ask(central, "counter-1", "status-ticket")
    assert body["status"] == "ok" and body["data"] == {"printed": True}
    job = printer.wait_for_jobs(jobs_before + 1, timeout=10)[-1]
    assert b"counter-1" in job and b"127.0.0.1" in job
    audited(central, body["request_id"], status="ok")

    body = ask(central, "counter-1", "logs", lines=5)
    assert body["status"] == "ok" and 1 <= len(body["data"]["lines"]) <= 5
    assert any("counter-1" in line for line in body["data"]["lines"])
    _, response = audited(central, body["request_id"], status="ok")
    assert response["detail"].endswith("log lines")  # the lines themselves are not kept in the audit

    body = ask(central, "counter-1", "get-config")
    assert body["status"] == "ok" and 'id = "counter-1"' in body["data"]["config"]
    assert body["data"]["file_hash"] == body["data"]["running_hash"] == device(central, "counter-1")["config_hash"]
    audited(central, body["request_id"], status="ok")


def test_set_config_with_an_invalid_value_is_refused_and_the_old_config_runs(office):
    central, edge, _, _ = office
    before = edge.config.read_bytes()
    running = device(central, "counter-1")
    bad = before.decode().replace("keepalive_s = 5", "keepalive_s = 1")
    assert bad != before.decode()
    body = ask(central, "counter-1", "set-config", config=bad)
    assert body["status"] == "error" and body["code"] == "invalid_config"
    assert "mqtt.keepalive_s" in body["error"] and "greater than or equal to 5" in body["error"]
    assert edge.config.read_bytes() == before
    assert not edge.config.with_name(edge.config.name + ".bak").exists()
    # Still running, still the old config, still answering.
    assert edge.proc.poll() is None
    now = ask(central, "counter-1", "get-config")["data"]
    assert now["file_hash"] == now["running_hash"] == running["config_hash"] and now["restart_pending"] is False
    request, _ = audited(central, body["request_id"], status="error", code="invalid_config")
    assert request["params"]["config"].startswith("<TOML ")  # never the text (it may hold passwords)

    # Changing who the device is is refused too.
    body = ask(central, "counter-1", "set-config", config=before.decode().replace('id = "counter-1"', 'id = "counter-7"'))
    assert body["code"] == "invalid_config" and "device.id cannot change" in body["error"]
    assert edge.config.read_bytes() == before


def test_a_valid_set_config_from_the_cli_is_written_atomically_and_asks_for_a_restart(office, broker, tmp_path):
    central, edge, _, _ = office
    before = edge.config.read_bytes()
    new = before.decode() + '[counter]\nintent_timeout_s = 4.0\n'
    source = tmp_path / "edge.toml"
    source.write_text(new, encoding="utf-8")
    out = cli(broker, "--as", "alice", "--json", "request", "counter-1", "set-config", f"config=@{source}")
    assert out.returncode == 0, out.stdout + out.stderr
    answer = json.loads(out.stdout)
    assert answer["status"] == "ok" and answer["data"]["restart_needed"] is True
    assert answer["data"]["changed"] == ["counter.intent_timeout_s"] and answer["data"]["written"] is True
    assert edge.config.read_text(encoding="utf-8") == new
    assert edge.config.with_name(edge.config.name + ".bak").read_bytes() == before
    assert not list(edge.config.parent.glob(".*.tmp"))
    # Written, not applied: the old config runs until the restart.
    got = ask(central, "counter-1", "get-config")["data"]
    assert got["restart_pending"] is True and got["running_hash"] != got["file_hash"]
    # Central audited the CLI's request (it sees every request on the bus).
    request, response = audited(central, answer["request_id"], status="ok")
    assert request["requested_by"] == "alice" and request["via"] == "mqtt" and request["method"] == "set-config"
    assert response["via"] == "alice"  # the response topic's requester level

    refused = cli(broker, "request", "counter-1", "identify", "seconds=600")
    assert refused.returncode == 1 and "invalid_params" in refused.stderr


# ------------------------------------------------------------------ bad input


def test_bad_requests_are_refused_with_a_reason_and_audited(office, raw):
    central, edge, _, _ = office
    cases = []
    rid, payload = request_payload()
    cases.append(("reboot-now", payload, rid, "unknown_method"))
    rid, payload = request_payload()
    big = json.loads(payload)
    big["params"] = {"config": "x" * (MAX_REQUEST_BYTES + 10)}
    cases.append(("set-config", json.dumps(big).encode(), rid, "too_large"))
    cases.append(("logs", b'{"schema": 1, "request_id": "not json', None, "not_json"))
    rid, payload = request_payload(life_s=30, issued_ago_s=40)
    cases.append(("logs", payload, rid, "expired"))
    rid, payload = request_payload(lines="all")
    cases.append(("logs", payload, rid, "invalid_params"))
    for method, payload, rid, code in cases:
        res = raw.send("counter-1", method, payload, request_id=rid)
        assert res is not None, f"no answer to the {code} case"
        assert res.status == "error" and res.code == code and res.error, (code, res)
        if code in ("unknown_method", "expired", "invalid_params"):
            request, _ = audited(central, rid, status="error", code=code)
            assert request["requested_by"] == "it-test" and request["method"] == method
        else:
            # Not readable as a request: central audits it as malformed, and the device's refusal.
            rows = wait_for(lambda c=code: [r for r in central.get("/api/v1/fleet/audit?device=counter-1&limit=30")
                                            if r["code"] == c], 5, f"audit of {code}")
            assert {r["kind"] for r in rows} == {"request", "response"}
            assert next(r for r in rows if r["kind"] == "request")["status"] == "malformed"
    rid, payload = request_payload()
    assert "unknown method 'reboot-now'" in raw.send("counter-1", "reboot-now", payload, request_id=rid).error

    # The same request id twice: done once.
    rid, payload = request_payload(lines=3)
    assert raw.send("counter-1", "logs", payload, request_id=rid).status == "ok"
    again = raw.send("counter-1", "logs", payload, request_id=rid)
    assert again.status == "error" and again.code == "replayed"
    rows = audit_of(central, str(rid))
    assert [r["status"] for r in rows if r["kind"] == "response"] == ["error", "ok"]  # newest first
    assert edge.proc.poll() is None


# ------------------------------------------------------------------ restart


def test_restart_is_refused_during_a_payment_and_forced_restart_replay_still_refused(office, raw):
    central, edge, _, sim = office
    remembered_rid, remembered = request_payload(life_s=600, lines=1)
    assert raw.send("counter-1", "logs", remembered, request_id=remembered_rid).status == "ok"

    sim.hold("waiting_for_card")
    status, sent = charge(central, lines=[{"code": "juminhyo", "quantity": 1}], method="credit", brand="visa",
                          start=True)
    assert status == 201, sent
    assert sim.reached("waiting_for_card").wait(20)
    wait_state(central, sent["payment_id"], "pending")

    body = ask(central, "counter-1", "restart")
    assert body["status"] == "error" and body["code"] == "payment_in_progress" and "force" in body["error"]
    time.sleep(0.5)
    assert edge.proc.poll() is None
    audited(central, body["request_id"], status="error", code="payment_in_progress")

    body = ask(central, "counter-1", "restart", force=True)
    assert body["status"] == "ok" and body["data"]["forced"] is True and body["data"]["exit_code"] == 75
    request, _ = audited(central, body["request_id"], status="ok")
    assert request["params"] == {"force": True}
    assert edge.wait_exit(15) == 75  # systemd's Restart= starts it again; here the test does
    sim.release()
    wait_for(lambda: device(central, "counter-1")["state"] == "offline", 5, "counter-1 offline")

    edge.start()
    wait_online(central, "counter-1")
    again = raw.send("counter-1", "logs", remembered, request_id=remembered_rid, timeout=10)
    assert again is not None and again.status == "error" and again.code == "replayed"


# ------------------------------------------------------------------ offline, alerts, the admin page


def test_a_device_going_offline_is_seen_within_the_keepalive_and_the_page_turns_red(office, broker, new_page):
    require_chromium()
    central, _, _, _ = office
    edge = EdgeProcess(office[1].workdir, "counter-2", "2", broker.port).start()
    try:
        wait_online(central, "counter-2")
        page = new_page(width=1400, height=900)
        central.login_browser(page, "it")  # IT staff: the account named "it" is what the audit records
        page.goto(f"{central.url}/admin")
        row = page.locator('#devices tr[data-device="counter-2"]')
        row.locator("td.state", has_text="オンライン").wait_for(timeout=5000)
        assert page.locator('#devices tr[data-device="counter-1"]').count() == 1
        assert row.locator("button[data-method=identify]").is_enabled()

        # A hung Pi (or a pulled cable): the TCP connection stays open, only the
        # keep-alive tells.  The broker publishes the will 1.5 × keep-alive after
        # the device's last packet — plus the broker's check period: Mosquitto
        # 2.0.11 (bookworm, this machine) looks only every 5 s (src/keepalive.c,
        # "last_keepalive_check + 5"), later 2.0 releases every second.
        # Measured here: 7.3–10.0 s for a 5 s keep-alive (docs/fleet.md).
        os.kill(edge.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(lambda: device(central, "counter-2")["state"] == "offline", 20, "counter-2 offline")
        hung = time.monotonic() - stopped
        print(f"\nhung device seen offline after {hung:.2f} s (keep-alive {KEEPALIVE_S} s: 1.5 × = {1.5 * KEEPALIVE_S:.1f} s "
              f"+ the broker's check period)")
        assert hung <= 1.5 * KEEPALIVE_S + 6.0
        os.kill(edge.proc.pid, signal.SIGCONT)
        wait_online(central, "counter-2")

        # kill -9: the kernel closes the socket, the broker publishes the will at once.
        edge.kill()
        killed = time.monotonic()
        wait_for(lambda: device(central, "counter-2")["state"] == "offline", 20, "counter-2 offline")
        print(f"killed device seen offline after {time.monotonic() - killed:.2f} s")
        assert time.monotonic() - killed <= 1.5 * KEEPALIVE_S

        alert = wait_for(lambda: [a for a in central.get("/api/v1/fleet/alerts") if a["device"] == "counter-2"
                                  and a["kind"] == "offline" and a["open"]], 5, "offline alert")[0]
        assert alert["message_ja"].startswith("オフライン") and alert["severity"] == "error"

        # The page: the row turns red, the buttons are off, the alert is listed.
        row.locator("td.state", has_text="オフライン").wait_for(timeout=5000)
        bg = row.locator("td.state").evaluate("e => getComputedStyle(e).backgroundColor")
        assert bg == "rgb(211, 47, 47)", bg
        assert not row.locator("button[data-method=identify]").is_enabled()
        open_alert = page.locator(f'#alerts tr[data-id="{alert["id"]}"]')
        open_alert.wait_for(timeout=5000)
        assert open_alert.get_attribute("data-open") == "true" and open_alert.get_attribute("data-device") == "counter-2"
        if os.environ.get("MADOGUCHI_SCREENSHOTS") == "1":  # docs/img/admin.png (README)
            page.wait_for_timeout(300)  # fonts settled
            page.screenshot(path=str(REPO / "docs" / "img" / "admin.png"), full_page=True)
        status, body = central.request("POST", "/api/v1/fleet/devices/counter-2/requests/identify", {"params": {}})
        assert status == 409 and body["error"] == "offline"

        # IT acknowledges the alert; it stays until the device is back.
        open_alert.locator("button").click()
        open_alert.locator("span.acked", has_text="確認済 it").wait_for(timeout=5000)
        acked = next(a for a in central.get("/api/v1/fleet/alerts") if a["id"] == alert["id"])
        assert acked["acked_by"] == "it" and acked["open"]
        assert any(r["kind"] == "alert_ack" for r in central.get("/api/v1/fleet/audit?device=counter-2"))
    finally:
        if edge.proc and edge.proc.poll() is None:
            os.kill(edge.proc.pid, signal.SIGCONT)
        edge.stop()


def test_printer_running_low_raises_an_alert(office):
    central, _, _, _ = office
    alert = wait_for(lambda: [a for a in central.get("/api/v1/fleet/alerts") if a["kind"] == "printer:paper_near_end"
                              and a["device"] == "counter-1" and a["open"]], 20, "paper near end alert")[0]
    assert alert["severity"] == "warning" and "残りわずか" in alert["message_ja"]
    assert device(central, "counter-1")["peripherals"]["printer"]["reason"] == "paper_near_end"
