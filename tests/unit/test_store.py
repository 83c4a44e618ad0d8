"""Central's SQLite schema migrates forward: a database written by the
previous release (schema 1: the queue only) gains the payment ledger
(schema 2) on start-up, keeping its tickets."""

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
