"""Schema 5 of central's database: the fleet (issue #7) — devices seen on the
bus, the audit log of every request to a device and every answer, alerts.
See central/fleet.py and docs/fleet.md.

* ``fleet_devices``: the latest of each device (one row per device id),
  rebuilt from the retained status/info/health whenever central connects.
* ``fleet_audit``: append-only (triggers refuse UPDATE and DELETE), one row
  per request seen on the bus, per answer seen, and per action of IT on the
  admin page (an alert acknowledged).  Named so, because schema 4 already has
  an ``audit_log`` for reconciliation.
* ``fleet_alerts``: open while the problem lasts (``cleared_at`` set when it
  goes away), acknowledged by IT (``acked_at``/``acked_by``); every change is
  in ``fleet_audit`` too.
"""

_TABLES = """
CREATE TABLE fleet_devices (
    device TEXT PRIMARY KEY,
    role TEXT,
    counter TEXT,
    state TEXT NOT NULL,
    state_since TEXT,
    boot_id TEXT,
    last_seen TEXT,
    info TEXT,
    health TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE fleet_audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT,
    device TEXT NOT NULL,
    method TEXT,
    requested_by TEXT,
    via TEXT,
    params TEXT,
    status TEXT NOT NULL,
    code TEXT,
    detail TEXT
);
CREATE INDEX fleet_audit_by_request ON fleet_audit (request_id, id);
CREATE INDEX fleet_audit_by_device ON fleet_audit (device, id);
CREATE TABLE fleet_alerts (
    id INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    message_ja TEXT NOT NULL,
    message_en TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    cleared_at TEXT,
    acked_at TEXT,
    acked_by TEXT
);
CREATE INDEX fleet_alerts_open ON fleet_alerts (device, kind, cleared_at);
"""

_TRIGGERS = """
CREATE TRIGGER fleet_audit_no_update BEFORE UPDATE ON fleet_audit
BEGIN SELECT RAISE(ABORT, 'fleet_audit is append-only'); END;
CREATE TRIGGER fleet_audit_no_delete BEFORE DELETE ON fleet_audit
BEGIN SELECT RAISE(ABORT, 'fleet_audit is append-only'); END;
"""

FLEET_SQL = _TABLES + _TRIGGERS

__all__ = ["FLEET_SQL"]
