"""SQLite storage for central.

One file, WAL mode, ``synchronous=FULL``: a committed queue action survives a
kill -9 of central and a power cut.  Every state change is one transaction,
so a crash leaves the state of just before or just after an action, never half
of one.  The SQL is kept portable (no SQLite-only upserts in the engine) so the
move to PostgreSQL (design §8) stays small.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bus.sqlitedb import Database
from central.schema_auth import AUTH_SQL
from central.schema_dayclose import DAYCLOSE_SQL
from central.schema_fleet import FLEET_SQL
from central.schema_hardening import HARDENING_SQL
from central.schema_reconcile import RECONCILE_SQL

logger = logging.getLogger(__name__)

SCHEMA = [
    # 1: the queue
    """
    CREATE TABLE day_numbers (
        site TEXT NOT NULL,
        day TEXT NOT NULL,
        last INTEGER NOT NULL,
        PRIMARY KEY (site, day)
    );
    CREATE TABLE tickets (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL,
        day TEXT NOT NULL,
        number INTEGER NOT NULL,
        token TEXT NOT NULL UNIQUE,
        issued_at TEXT NOT NULL,
        state TEXT NOT NULL,
        procedures TEXT NOT NULL,
        done_at TEXT,
        UNIQUE (site, day, number)
    );
    CREATE TABLE stops (
        id INTEGER PRIMARY KEY,
        ticket_id INTEGER NOT NULL REFERENCES tickets(id),
        position INTEGER NOT NULL,
        service TEXT NOT NULL,
        state TEXT NOT NULL,
        place INTEGER NOT NULL,
        counter TEXT,
        waiting_since TEXT NOT NULL,
        called_at TEXT,
        started_at TEXT,
        done_at TEXT,
        returns_at TEXT,
        no_shows INTEGER NOT NULL DEFAULT 0,
        recalls INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX stops_by_state ON stops (state, service, place, position);
    CREATE INDEX stops_by_ticket ON stops (ticket_id, state);
    CREATE TABLE counters (
        id TEXT PRIMARY KEY,
        stop_id INTEGER REFERENCES stops(id),
        since TEXT
    );
    CREATE TABLE service_after (
        service TEXT NOT NULL,
        before TEXT NOT NULL,
        PRIMARY KEY (service, before)
    );
    CREATE TABLE service_info (
        service TEXT PRIMARY KEY,
        typical_min REAL NOT NULL
    );
    CREATE TABLE seen_events (
        event_id TEXT PRIMARY KEY,
        device TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE TABLE queue_log (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        day TEXT NOT NULL,
        ticket_id INTEGER,
        number INTEGER,
        stop_id INTEGER,
        service TEXT,
        counter TEXT,
        action TEXT NOT NULL,
        source TEXT NOT NULL,
        detail TEXT
    );
    """,
    # 2: payments (issue #3).  The ledger: one row per payment id, the
    # counter's latest version; payment_log is append-only.
    """
    CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        charge_id TEXT NOT NULL,
        counter TEXT NOT NULL,
        device TEXT,
        day TEXT NOT NULL,
        kind TEXT NOT NULL,
        original_id TEXT,
        ticket INTEGER,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        method TEXT NOT NULL,
        brand TEXT,
        card_name TEXT,
        amount INTEGER NOT NULL,
        tendered INTEGER,
        change INTEGER,
        terminal TEXT,
        terminal_id TEXT,
        slip_no TEXT,
        approval_no TEXT,
        txn_at TEXT,
        receipt_no TEXT,
        staff_id TEXT,
        reason TEXT,
        note TEXT,
        message_ja TEXT NOT NULL DEFAULT '',
        message_en TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX payments_by_day ON payments (day, counter);
    CREATE INDEX payments_by_original ON payments (original_id);
    CREATE TABLE payment_lines (
        payment_id TEXT NOT NULL REFERENCES payments(payment_id),
        position INTEGER NOT NULL,
        code TEXT NOT NULL,
        name_ja TEXT NOT NULL,
        name_en TEXT NOT NULL,
        quantity INTEGER NOT NULL,
        unit_price INTEGER NOT NULL,
        amount INTEGER NOT NULL,
        account TEXT NOT NULL,
        PRIMARY KEY (payment_id, position)
    );
    CREATE TABLE payment_log (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        payment_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        state TEXT NOT NULL,
        source TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX payment_log_by_payment ON payment_log (payment_id, id);
    """,
    # 3: day close (日次処理), issue #4 — central/schema_dayclose.py
    DAYCLOSE_SQL,
    # 4: statement import and reconciliation, issue #4 — central/schema_reconcile.py
    RECONCILE_SQL,
    # 5: the fleet — devices, requests, audit, alerts, issue #7 — central/schema_fleet.py
    FLEET_SQL,
    # 6: staff accounts and login sessions, issue #7 — central/schema_auth.py
    AUTH_SQL,
    # 7: no INSERT OR REPLACE on append-only tables; the login throttle's
    # indexes — central/schema_hardening.py
    HARDENING_SQL,
]


class Store(Database):
    """Central's database: the queue, the payment ledger, accounting."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA, foreign_keys=True)
