"""The counter's payment journal: one SQLite file, written before the
terminal is touched.

Why a journal on the Pi and not just central's ledger: the terminal is wired
to this Pi, so this Pi is the only place that knows what it was asked to do.
A payment row is committed (``synchronous=FULL``, WAL) *before* the sale is
sent; after a kill -9 or a power cut the row says "a sale may have run", and
the daemon asks the terminal instead of guessing (edge/payments.py).

Every state change writes the payment row and its event for central into the
``outbox`` table in the same transaction (the transactional-outbox pattern):
an event is never lost between "journaled" and "published", and it stays in
the outbox until central acknowledges that version (``cmd/ledger-ack``).

Print jobs live here too, so a receipt is printed once: a job is marked
``printing`` before the bytes leave, and a job found in that state after a
crash is ``uncertain`` — staff decide whether to re-print (marked 再発行).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bus.sqlitedb import Database, DatabaseError

#: Raised for a journal that cannot be used (newer schema, second thread, a version clash).
JournalError = DatabaseError

logger = logging.getLogger(__name__)

SCHEMA = [
    """
    CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        charge_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        original_id TEXT,
        state TEXT NOT NULL,
        version INTEGER NOT NULL,
        method TEXT NOT NULL,
        amount INTEGER NOT NULL,
        charge TEXT NOT NULL,
        result TEXT NOT NULL DEFAULT '{}',
        staff_id TEXT,
        reason TEXT,
        note TEXT,
        message_ja TEXT NOT NULL DEFAULT '',
        message_en TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX payments_by_state ON payments (state);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        payment_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX outbox_by_payment ON outbox (payment_id, version);
    CREATE TABLE print_jobs (
        id INTEGER PRIMARY KEY,
        job_key TEXT NOT NULL UNIQUE,
        payment_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        reprint INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        created_at TEXT NOT NULL,
        printed_at TEXT
    );
    CREATE INDEX print_jobs_by_state ON print_jobs (state, id);
    """,
]


@dataclass(frozen=True)
class Payment:
    """One journal row.  ``charge`` is the charge command as JSON-able data
    (lines, method, tendered ...); ``result`` what the terminal reported."""

    payment_id: str
    charge_id: str
    kind: str
    state: str
    version: int
    method: str
    amount: int
    charge: dict[str, Any]
    created_at: str
    updated_at: str
    original_id: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    staff_id: str | None = None
    reason: str | None = None
    note: str | None = None
    message_ja: str = ""
    message_en: str = ""

    def evolve(self, **changes: Any) -> Payment:
        """The next version of this payment."""
        return replace(self, version=self.version + 1, **changes)


@dataclass(frozen=True)
class PrintJob:
    id: int
    job_key: str
    payment_id: str
    kind: str
    reprint: bool
    state: str
    attempts: int
    error: str | None


class Journal(Database):
    """The edge's SQLite journal.  Used from the daemon's loop thread only."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, SCHEMA)

    _tx = Database.transaction

    # ------------------------------------------------------------ payments
    @staticmethod
    def _row(row: sqlite3.Row) -> Payment:
        return Payment(
            payment_id=row["payment_id"], charge_id=row["charge_id"], kind=row["kind"], state=row["state"],
            version=row["version"], method=row["method"], amount=row["amount"], charge=json.loads(row["charge"]),
            created_at=row["created_at"], updated_at=row["updated_at"], original_id=row["original_id"],
            result=json.loads(row["result"]), staff_id=row["staff_id"], reason=row["reason"], note=row["note"],
            message_ja=row["message_ja"], message_en=row["message_en"],
        )

    def get(self, payment_id: str) -> Payment | None:
        row = self.conn.execute("SELECT * FROM payments WHERE payment_id = ?", (payment_id,)).fetchone()
        return self._row(row) if row else None

    def in_state(self, *states: str) -> list[Payment]:
        marks = ",".join("?" * len(states))
        rows = self.conn.execute(f"SELECT * FROM payments WHERE state IN ({marks}) ORDER BY created_at", states)
        return [self._row(r) for r in rows]

    def recent(self, limit: int = 50) -> list[Payment]:
        rows = self.conn.execute("SELECT * FROM payments ORDER BY created_at DESC LIMIT ?", (limit,))
        return [self._row(r) for r in rows]

    def save(self, *payments: tuple[Payment, str, bytes]) -> None:
        """Write payments with their outbox events, all in one transaction.

        Each item is ``(payment, topic, event payload)``.  A payment's version
        must be one more than the stored one (or 1 for a new payment): two
        writers racing on one payment is a bug, and it stops here."""
        now = datetime.now().astimezone().isoformat()
        with self._tx() as conn:
            for p, topic, payload in payments:
                stored = conn.execute("SELECT version FROM payments WHERE payment_id = ?", (p.payment_id,)).fetchone()
                expected = 1 if stored is None else stored[0] + 1
                if p.version != expected:
                    raise DatabaseError(f"payment {p.payment_id}: version {p.version}, expected {expected}")
                conn.execute(
                    """INSERT OR REPLACE INTO payments (payment_id, charge_id, kind, original_id, state, version,
                       method, amount, charge, result, staff_id, reason, note, message_ja, message_en, created_at, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                    (p.payment_id, p.charge_id, p.kind, p.original_id, p.state, p.version, p.method, p.amount,
                     json.dumps(p.charge, ensure_ascii=False), json.dumps(p.result, ensure_ascii=False),
                     p.staff_id, p.reason, p.note, p.message_ja, p.message_en, p.created_at, now),
                )
                conn.execute(
                    "INSERT INTO outbox (payment_id, version, topic, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                    (p.payment_id, p.version, topic, payload, now),
                )

    def count_receipts(self, prefix: str) -> int:
        """How many payments carry a receipt number starting with ``prefix``."""
        row = self.conn.execute(
            "SELECT COUNT(*) FROM payments WHERE json_extract(result, '$.receipt_no') LIKE ? || '%'", (prefix,)
        ).fetchone()
        return row[0]

    def resend(self, payment_id: str, version: int, topic: str, payload: bytes) -> None:
        """Queue the event of the current version again (no new version)."""
        now = datetime.now().astimezone().isoformat()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO outbox (payment_id, version, topic, payload, created_at) VALUES (?, ?, ?, ?, ?)",
                (payment_id, version, topic, payload, now),
            )

    # ------------------------------------------------------------ outbox
    def outbox(self, limit: int = 100) -> list[tuple[int, str, int, str, bytes]]:
        """Unacknowledged events, oldest first: ``(id, payment_id, version, topic, payload)``."""
        rows = self.conn.execute(
            "SELECT id, payment_id, version, topic, payload FROM outbox ORDER BY id LIMIT ?", (limit,)
        )
        return [tuple(r) for r in rows]

    def acknowledge(self, payment_id: str, version: int) -> int:
        """Central stored ``payment_id`` up to ``version``: drop those events."""
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM outbox WHERE payment_id = ? AND version <= ?", (payment_id, version))
            return cur.rowcount

    def outbox_size(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    # ------------------------------------------------------------ print jobs
    def add_print_job(self, job_key: str, payment_id: str, kind: str, *, reprint: bool = False) -> bool:
        """Queue a print job; False if a job with this key exists (printed once)."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO print_jobs (job_key, payment_id, kind, reprint, state, created_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (job_key, payment_id, kind, int(reprint), datetime.now().astimezone().isoformat()),
            )
            return cur.rowcount == 1

    def print_jobs(self, *states: str) -> list[PrintJob]:
        marks = ",".join("?" * len(states))
        rows = self.conn.execute(f"SELECT * FROM print_jobs WHERE state IN ({marks}) ORDER BY id", states)
        return [
            PrintJob(r["id"], r["job_key"], r["payment_id"], r["kind"], bool(r["reprint"]), r["state"], r["attempts"], r["error"])
            for r in rows
        ]

    def print_jobs_of(self, payment_id: str) -> list[PrintJob]:
        rows = self.conn.execute("SELECT * FROM print_jobs WHERE payment_id = ? ORDER BY id", (payment_id,))
        return [
            PrintJob(r["id"], r["job_key"], r["payment_id"], r["kind"], bool(r["reprint"]), r["state"], r["attempts"], r["error"])
            for r in rows
        ]

    def set_print_state(self, job_id: int, state: str, *, error: str | None = None, attempt: bool = False) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE print_jobs SET state = ?, error = ?, attempts = attempts + ?, "
                "printed_at = CASE WHEN ? = 'done' THEN ? ELSE printed_at END WHERE id = ?",
                (state, error, int(attempt), state, datetime.now().astimezone().isoformat(), job_id),
            )

    def recover_print_jobs(self) -> int:
        """At start-up: a job left ``printing`` may or may not be on paper."""
        with self._tx() as conn:
            return conn.execute("UPDATE print_jobs SET state = 'uncertain' WHERE state = 'printing'").rowcount
