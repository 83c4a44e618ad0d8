"""Central's SQLite schema migrates forward: a database written by the
previous release (schema 1: the queue only) gains the payment ledger
(schema 2) on start-up, keeping its tickets; schema 7 makes every
append-only table refuse INSERT OR REPLACE (central/schema_hardening.py)."""

from __future__ import annotations

import sqlite3

import pytest

from central.store import SCHEMA, Store


def test_a_schema_1_database_is_migrated_and_keeps_its_data(tmp_path):
    path = tmp_path / "central.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA[0])
    old.execute("INSERT INTO day_numbers (site, day, last) VALUES ('midori', '2026-11-21', 41)")
    old.execute("PRAGMA user_version=1")
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(SCHEMA) >= 2
        assert store.conn.execute("SELECT last FROM day_numbers").fetchone()[0] == 41
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"payments", "payment_lines", "payment_log", "tickets"} <= tables
    finally:
        store.close()


def test_a_newer_database_is_refused(tmp_path):
    path = tmp_path / "central.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={len(SCHEMA) + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this madoguchi"):
        Store(path)


# ------------------------------------------------------------------ schema 7: append-only means append-only

#: Values for columns whose CHECK constraints a generic filler would break.
_CHECKED = {
    ("statement_lines", "type"): "sale", ("statement_lines", "gross"): 100, ("statement_lines", "fee"): 2,
    ("statement_lines", "net"): 98, ("matches", "match_key"): "slip",
    ("recon_exception_notes", "action"): "note",
}


def _append_only_tables(db) -> list[str]:
    """Every table with a ``…_no_delete`` trigger: what the schema itself
    says is append-only (a new one cannot be left out of the test)."""
    return sorted(r[0] for r in db.execute("SELECT tbl_name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%_no_delete'"))


def _keys(db, table: str) -> list[tuple[str, ...]]:
    """The primary key and every UNIQUE key of ``table``."""
    info = db.execute(f"PRAGMA table_info({table})").fetchall()
    keys = [tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))]
    for index in db.execute(f"PRAGMA index_list({table})").fetchall():
        if index[2] and index[3] != "pk":  # unique, not the primary key again
            keys.append(tuple(r[2] for r in db.execute(f"PRAGMA index_info({index[1]})").fetchall()))
    return keys


class _Rows:
    """Rows for any table: every NOT NULL column filled, each value new."""

    def __init__(self, db) -> None:
        self.db, self.n = db, 1000

    def row(self, table: str) -> dict:
        out = {}
        for _, name, kind, notnull, _, pk in self.db.execute(f"PRAGMA table_info({table})").fetchall():
            self.n += 1
            if (table, name) in _CHECKED:
                out[name] = _CHECKED[(table, name)]
            elif notnull or pk:
                out[name] = self.n if "INT" in kind.upper() else f"v{self.n}"
        return out

    def insert(self, table: str, row: dict, verb: str = "INSERT") -> None:
        self.db.execute(f"{verb} INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def test_insert_or_replace_is_refused_on_every_append_only_table_for_every_key(tmp_path):
    """REPLACE deletes the row in its way without firing a DELETE trigger
    (unless recursive_triggers) and writes its own: a rewritten audit row.
    Schema 7 refuses it on every table the schema calls append-only, for
    the primary key and each UNIQUE key; ordinary inserts still work."""
    path = tmp_path / "central.db"
    Store(path).close()
    db = sqlite3.connect(path, isolation_level=None)  # foreign keys off: rows need no parents here
    try:
        tables = _append_only_tables(db)
        assert {"login_audit", "fleet_audit", "day_closes", "day_close_cash", "day_close_entries", "day_adjustments",
                "statement_imports", "statement_lines", "match_runs", "matches", "recon_exception_notes",
                "audit_log", "queue_log", "payment_log"} <= set(tables)
        assert db.execute("PRAGMA recursive_triggers").fetchone()[0] == 0
        rows = _Rows(db)
        for table in tables:
            first = rows.row(table)
            rows.insert(table, first)  # a normal insert works
            rows.insert(table, rows.row(table))
            count = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            before = db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
            for key in _keys(db, table):
                rewritten = {**rows.row(table), **{c: first[c] for c in key}}  # same key, everything else new
                for verb in ("INSERT OR REPLACE", "REPLACE"):
                    with pytest.raises(sqlite3.IntegrityError, match=f"{table} is append-only"):
                        rows.insert(table, rewritten, verb)
            assert db.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall() == before, table
            rows.insert(table, rows.row(table))
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == count + 1, table
        # With an INTEGER PRIMARY KEY left out the row gets the next id, as always.
        db.execute("INSERT INTO login_audit (at, result) VALUES ('2026-12-01T00:00:00', 'logout')")
    finally:
        db.close()


def test_a_schema_6_database_migrates_to_7_and_keeps_its_audit(tmp_path):
    path = tmp_path / "central.db"
    old = sqlite3.connect(path, isolation_level=None)
    for script in SCHEMA[:6]:
        old.executescript(script)
    old.execute("INSERT INTO login_audit (at, staff_id, result, client) VALUES ('2026-11-30T01:00:00+00:00', 'k0107', 'ok', '10.0.0.5')")
    old.execute("INSERT OR REPLACE INTO login_audit (id, at, staff_id, result) VALUES (1, 'x', 'k0107', 'rewritten')")  # schema 6 let it
    old.execute("PRAGMA user_version=6")
    old.close()
    store = Store(path)
    try:
        db = store.conn
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(SCHEMA) >= 7
        assert db.execute("SELECT COUNT(*) FROM login_audit").fetchone()[0] == 1
        indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'login_audit'")}
        assert {"login_audit_by_pair", "login_audit_by_client"} <= indexes and "login_audit_by_staff" not in indexes
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("INSERT OR REPLACE INTO login_audit (id, at, result) VALUES (1, 'y', 'ok')")
    finally:
        store.close()


def test_the_queue_and_payment_logs_refuse_update_and_delete(tmp_path):
    store = Store(tmp_path / "central.db")
    try:
        db = store.conn
        db.execute("INSERT INTO payment_log (at, payment_id, version, state, source) VALUES ('t', 'p1', 1, 'approved', 'edge')")
        db.execute("INSERT INTO queue_log (at, day, action, source) VALUES ('t', '2026-12-04', 'issue', 'api')")
        for table in ("payment_log", "queue_log"):
            with pytest.raises(sqlite3.IntegrityError, match=f"{table} is append-only"):
                db.execute(f"UPDATE {table} SET at = 'changed'")
            with pytest.raises(sqlite3.IntegrityError, match=f"{table} is append-only"):
                db.execute(f"DELETE FROM {table}")
            assert db.execute(f"SELECT at FROM {table}").fetchall()[0][0] == "t"
    finally:
        store.close()
