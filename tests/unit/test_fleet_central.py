"""Central's fleet registry on a real SQLite store: online/offline from the
status and the will, alerts opened, cleared and acknowledged, the audit
append-only, a config's text never in the audit (central/fleet.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import timedelta

import pytest

from bus import encode
from bus.configfile import load_toml
from bus.models import (
    DeviceState,
    Health,
    HealthState,
    PeripheralHealth,
    Request,
    Response,
    Status,
    utcnow,
)
from bus.topics import Topics, parse
from central.config import Site
from central.fleet import Fleet, FleetError, params_for_audit
from central.store import Store
from tests.support.procs import SITE_TOML

T = Topics("midori")


@pytest.fixture
def fleet(tmp_path):
    store = Store(tmp_path / "central.db")
    # No grace here: these tests are about what opens and clears; the grace
    # has its own test below.
    yield Fleet(store, load_toml(SITE_TOML, Site), publisher=None, alert_grace_s=0)
    store.close()


def status(state, boot="b1"):
    return Status(state=DeviceState(state), boot_id=boot, since=utcnow() if state == "online" else None)


def health(**peripherals):
    return Health(ts=utcnow(), uptime_s=1.0, peripherals={
        name: PeripheralHealth(status=HealthState(s), reason=r) for name, (s, r) in peripherals.items()})


def open_alerts(fleet):
    return {(a["device"], a["kind"]) for a in fleet.alerts() if a["open"]}


def test_offline_opens_an_alert_and_coming_back_clears_it(fleet):
    fleet.on_status("counter-1", status("online"))
    assert fleet.devices["counter-1"].public()["state"] == "online" and not open_alerts(fleet)
    fleet.on_status("counter-1", status("offline"))
    rec = fleet.devices["counter-1"].public()
    assert rec["state"] == "offline" and rec["state_since"]
    assert open_alerts(fleet) == {("counter-1", "offline")}
    fleet.on_status("counter-1", status("offline"))  # the retained will again: no second alert
    assert len(fleet.alerts()) == 1
    fleet.on_status("counter-1", status("online", "b2"))
    assert not open_alerts(fleet)
    # A late will of the old boot does not mark the new boot offline.
    fleet.on_status("counter-1", status("offline", "b1"))
    assert fleet.devices["counter-1"].state == "online"


def test_the_registry_survives_a_restart_of_central(tmp_path):
    site = load_toml(SITE_TOML, Site)
    store = Store(tmp_path / "central.db")
    fleet = Fleet(store, site, publisher=None)
    fleet.on_status("counter-2", status("online"))
    fleet.on_status("counter-2", status("offline"))
    went = fleet.devices["counter-2"].state_since
    store.close()
    store = Store(tmp_path / "central.db")
    try:
        again = Fleet(store, site, publisher=None)
        assert again.devices["counter-2"].state == "offline" and again.devices["counter-2"].state_since == went
        again.on_status("counter-2", status("offline"))  # the retained will on reconnect keeps "since"
        assert again.devices["counter-2"].state_since == went
    finally:
        store.close()


def test_a_peripheral_alert_waits_for_its_grace_offline_does_not(tmp_path):
    store = Store(tmp_path / "central.db")
    now = [1000.0]
    fleet = Fleet(store, load_toml(SITE_TOML, Site), publisher=None, alert_grace_s=10, clock=lambda: now[0])
    try:
        fleet.on_status("counter-1", status("online"))
        # Starting up: the terminal connects a second later. No alert.
        fleet.handle("counter-1", parse(T.health("counter-1")), encode(health(terminal=("error", "not_connected"))))
        now[0] += 1.5
        fleet.open_due_alerts()
        fleet.handle("counter-1", parse(T.health("counter-1")), encode(health(terminal=("ok", None))))
        now[0] += 30
        fleet.open_due_alerts()
        assert fleet.alerts(include_closed=True) == []
        # Paper out and it stays out: the alert opens at the grace, from the
        # tick (no new health message comes while nothing changes).
        fleet.handle("counter-1", parse(T.health("counter-1")), encode(health(printer=("error", "paper_end"))))
        now[0] += 9.9
        fleet.open_due_alerts()
        assert not open_alerts(fleet)
        now[0] += 0.2
        fleet.open_due_alerts()
        assert open_alerts(fleet) == {("counter-1", "printer:paper_end")}
        # Offline opens at once, and a pending peripheral condition is dropped.
        fleet.handle("counter-2", parse(T.health("counter-2")), encode(health(printer=("warning", "paper_near_end"))))
        fleet.on_status("counter-2", status("online"))
        fleet.on_status("counter-2", status("offline"))
        assert ("counter-2", "offline") in open_alerts(fleet)
        now[0] += 60
        fleet.open_due_alerts()
        assert ("counter-2", "printer:paper_near_end") not in open_alerts(fleet)
    finally:
        store.close()


def test_paper_near_end_then_out_then_refilled(fleet):
    fleet.on_status("counter-1", status("online"))
    fleet.handle("counter-1", parse(T.health("counter-1")), encode(health(printer=("warning", "paper_near_end"))))
    assert open_alerts(fleet) == {("counter-1", "printer:paper_near_end")}
    assert fleet.devices["counter-1"].public()["health"] == "warning"
    fleet.handle("counter-1", parse(T.health("counter-1")), encode(health(printer=("error", "paper_end"))))
    assert open_alerts(fleet) == {("counter-1", "printer:paper_end")}
    alert = next(a for a in fleet.alerts() if a["open"])
    assert alert["severity"] == "error" and alert["message_ja"] == "プリンタの用紙がありません"
    fleet.handle("counter-1", parse(T.health("counter-1")), encode(health(printer=("ok", None), terminal=("absent", None))))
    assert not open_alerts(fleet)


def test_acknowledging_is_audited_and_the_audit_is_append_only(fleet):
    fleet.on_status("counter-3", status("offline"))
    alert = fleet.alerts()[0]
    acked = fleet.acknowledge(alert["id"], "it-suzuki")
    assert acked["acked_by"] == "it-suzuki" and acked["open"]
    assert fleet.audit_log(device="counter-3")[0]["kind"] == "alert_ack"
    with pytest.raises(FleetError):
        fleet.acknowledge(999, "it")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), fleet.store.transaction() as tx:
        tx.execute("UPDATE fleet_audit SET requested_by = 'someone else'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"), fleet.store.transaction() as tx:
        tx.execute("DELETE FROM fleet_audit")


def test_requests_and_answers_seen_on_the_bus_are_audited(fleet):
    rid = uuid.uuid4()
    now = utcnow()
    toml = 'password = "s3cret"\n'
    req = Request(request_id=rid, requested_by="alice", issued_at=now, expires_at=now + timedelta(seconds=30),
                  params={"config": toml})
    fleet.handle("counter-1", parse(T.req("counter-1", "set-config")), encode(req))
    res = Response(request_id=rid, method="set-config", status="error", code="invalid_config", error="bad")
    fleet.handle("counter-1", parse(T.res("counter-1", "alice")), encode(res))
    fleet.handle("counter-1", parse(T.req("counter-1", "logs")), b"\xff not json")
    rows = fleet.audit_log(device="counter-1")
    malformed, answer, request = rows
    assert malformed["status"] == "malformed" and malformed["code"] == "not_json"
    assert request["requested_by"] == "alice" and request["via"] == "mqtt" and request["request_id"] == str(rid)
    assert "s3cret" not in str(request["params"]) and request["params"]["config"].startswith("<TOML ")
    assert answer["code"] == "invalid_config" and answer["via"] == "alice"
    assert params_for_audit("restart", {"force": True}) == {"force": True}


def test_a_request_to_an_offline_device_is_refused_and_audited(fleet):
    async def ask(method):
        return await fleet.request("counter-1", method, {}, requested_by="it")

    with pytest.raises(FleetError) as err:
        asyncio.run(ask("identify"))
    assert err.value.status == 409 and err.value.code == "offline"
    assert fleet.audit_log()[0]["status"] == "not_sent"
    with pytest.raises(FleetError) as err:
        asyncio.run(ask("format-disk"))
    assert err.value.status == 404
