"""Schema 7 of central's database: what the security review of the web login
found in the storage (docs/security.md "Web login", "Append-only means
append-only").

* **No REPLACE on append-only tables.**  The audit and log tables refuse
  UPDATE and DELETE with triggers, but ``INSERT OR REPLACE`` (and a REPLACE
  conflict resolution of any kind) removes the row that is in the way
  *without* firing a DELETE trigger — SQLite fires it only with
  ``PRAGMA recursive_triggers`` on — and writes its own: a rewritten audit
  row that no trigger saw.  A ``BEFORE INSERT`` trigger per table refuses an
  insert whose primary key or any UNIQUE key is already there.  A plain
  INSERT of such a row failed before too (then with "UNIQUE constraint
  failed"); now it fails with "<table> is append-only" — nothing in madoguchi
  inserts a duplicate on purpose, and ``INSERT OR IGNORE`` is not used on
  these tables.  The tables are every table with an ``…_no_delete`` trigger
  (``tests/unit/test_store.py`` finds them in ``sqlite_master`` and checks
  each key of each, so a new append-only table cannot be forgotten).
* **The queue's and the payments' logs are append-only too.**  ``queue_log``
  and ``payment_log`` (schemas 1 and 2) were append-only by design only;
  they get the same UPDATE/DELETE triggers as the audit tables.
* **The login throttle reads an index only.**  ``login_audit_by_staff``
  (staff_id, client, at) left the result out, so "the last successful login
  of this pair" read every row the pair ever had.  It is replaced by
  ``login_audit_by_pair`` (staff_id, client, result, at) and
  ``login_audit_by_client`` (client, result, at), which also serves the
  per-address cap (password spraying).

The schemas these tables come from (3, 4, 5) have shipped, so this is a new
migration rather than an edit of theirs.  It starts with schema 6 once more
in an ``IF NOT EXISTS`` form: a development database still holding the empty
schema 6 placeholder gets the staff tables here, before the index on them.
"""

from __future__ import annotations

from central.schema_auth import AUTH_SQL_IF_MISSING

#: Every append-only table and its keys (the primary key first, then each
#: UNIQUE constraint), as schemas 3-6 declare them.
APPEND_ONLY_KEYS: dict[str, tuple[tuple[str, ...], ...]] = {
    # schema 3, central/schema_dayclose.py
    "day_closes": (("id",), ("site", "day")),
    "day_close_cash": (("close_id", "denomination"),),
    "day_close_entries": (("close_id", "payment_id", "account_code"),),
    "day_adjustments": (("id",),),
    # schema 4, central/schema_reconcile.py
    "statement_imports": (("id",), ("source", "sha256")),
    "statement_lines": (("id",), ("import_id", "agent_txn_id")),
    "match_runs": (("id",),),
    "matches": (("run_id", "payment_id"), ("run_id", "line_id")),
    "recon_exception_notes": (("id",),),
    "audit_log": (("id",),),
    # schema 5, central/schema_fleet.py
    "fleet_audit": (("id",),),
    # schema 6, central/schema_auth.py
    "login_audit": (("id",),),
    # schemas 1 and 2, central/store.py: the queue's and the payments' event
    # logs, append-only by design ("never updated, never deleted") but until
    # schema 7 without a trigger to say so (_LOGS below adds them).
    "queue_log": (("id",),),
    "payment_log": (("id",),),
}

#: UPDATE and DELETE refused on the two logs of schemas 1 and 2, as schemas
#: 3-6 do on their audit tables.
_LOGS = "".join(
    f"CREATE TRIGGER {t}_no_update BEFORE UPDATE ON {t}\nBEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;\n"
    f"CREATE TRIGGER {t}_no_delete BEFORE DELETE ON {t}\nBEGIN SELECT RAISE(ABORT, '{t} is append-only'); END;\n"
    for t in ("queue_log", "payment_log"))


def _no_replace(table: str, keys: tuple[tuple[str, ...], ...]) -> str:
    # NEW.x IS NOT NULL: a NULL key never conflicts (and an INTEGER PRIMARY
    # KEY left out is assigned after this trigger ran).
    tests = [
        "(" + " AND ".join(f"NEW.{c} IS NOT NULL" for c in key)
        + f" AND EXISTS (SELECT 1 FROM {table} WHERE " + " AND ".join(f"{c} = NEW.{c}" for c in key) + "))"
        for key in keys
    ]
    return (f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table}\n"
            f"WHEN {' OR '.join(tests)}\n"
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;\n")


_INDEXES = """
DROP INDEX IF EXISTS login_audit_by_staff;
CREATE INDEX login_audit_by_pair ON login_audit (staff_id, client, result, at);
CREATE INDEX login_audit_by_client ON login_audit (client, result, at);
"""

HARDENING_SQL = (AUTH_SQL_IF_MISSING + _INDEXES + _LOGS
                 + "".join(_no_replace(table, keys) for table, keys in APPEND_ONLY_KEYS.items()))

__all__ = ["APPEND_ONLY_KEYS", "HARDENING_SQL"]
