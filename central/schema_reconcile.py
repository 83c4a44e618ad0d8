"""Schema 4 of central's database: the payment agent's monthly statements and
their reconciliation with the ledger (issue #4).  See central/reconcile.py and
docs/reconciliation.md.

Tables:

* ``statement_imports`` — one row per imported statement file, keyed
  (source, sha256 of the bytes); the current statement of a (source, month)
  is its newest import, older ones stay for audit.
* ``statement_lines`` — the file's rows as read (signed nothing: the type
  says the direction), with their line number in the file.
* ``match_runs`` / ``matches`` — each ``match`` run and the pairs it made
  (ledger payment ↔ statement line, with the key that matched).
* ``recon_exceptions`` — one row per problem and month, stable across runs
  (``ident``), with its status; ``recon_exception_notes`` is its history.
* ``audit_log`` — every import, match run and resolution.

Append-only tables (imports, lines, runs, matches, notes, audit log) refuse
UPDATE and DELETE with triggers (``RAISE(ABORT)``), so not even a hand-typed
``sqlite3`` session can rewrite history without dropping the trigger first.

``payments.agent_txn_id`` is added for the agent's transaction id, should a
terminal or the agent's API ever tell the ledger (key 1 of the matching).
"""

from __future__ import annotations

_APPEND_ONLY = [
    "statement_imports",
    "statement_lines",
    "match_runs",
    "matches",
    "recon_exception_notes",
    "audit_log",
]


_TABLES = """
ALTER TABLE payments ADD COLUMN agent_txn_id TEXT;
CREATE INDEX payments_by_agent_txn ON payments (agent_txn_id);

CREATE TABLE statement_imports (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    month TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    filename TEXT NOT NULL,
    encoding TEXT NOT NULL,
    line_count INTEGER NOT NULL,
    sales_gross INTEGER NOT NULL,
    refunds_gross INTEGER NOT NULL,
    fee_total INTEGER NOT NULL,
    net_total INTEGER NOT NULL,
    supersedes INTEGER REFERENCES statement_imports(id),
    imported_at TEXT NOT NULL,
    imported_by TEXT NOT NULL,
    UNIQUE (source, sha256)
);
CREATE INDEX statement_imports_by_month ON statement_imports (month, source, id);

CREATE TABLE statement_lines (
    id INTEGER PRIMARY KEY,
    import_id INTEGER NOT NULL REFERENCES statement_imports(id),
    line_no INTEGER NOT NULL,
    agent_txn_id TEXT NOT NULL,
    txn_at TEXT NOT NULL,
    txn_day TEXT NOT NULL,
    terminal_id TEXT NOT NULL,
    slip_no TEXT,
    approval_no TEXT,
    brand_name TEXT NOT NULL,
    brand TEXT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('sale', 'refund', 'void')),
    gross INTEGER NOT NULL CHECK (gross > 0),
    fee INTEGER NOT NULL CHECK (fee >= 0),
    net INTEGER NOT NULL,
    original_agent_txn_id TEXT,
    deposit_date TEXT NOT NULL,
    UNIQUE (import_id, agent_txn_id),
    CHECK (gross = net + fee)
);
CREATE INDEX statement_lines_by_agent_txn ON statement_lines (agent_txn_id);

CREATE TABLE match_runs (
    id INTEGER PRIMARY KEY,
    month TEXT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    import_ids TEXT NOT NULL,
    fee_scope TEXT NOT NULL,
    ledger_count INTEGER NOT NULL,
    line_count INTEGER NOT NULL,
    matched_count INTEGER NOT NULL,
    exception_count INTEGER NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX match_runs_by_month ON match_runs (month, id);

CREATE TABLE matches (
    run_id INTEGER NOT NULL REFERENCES match_runs(id),
    payment_id TEXT NOT NULL,
    line_id INTEGER NOT NULL REFERENCES statement_lines(id),
    match_key TEXT NOT NULL CHECK (match_key IN ('agent_txn_id', 'slip', 'time')),
    seconds_apart INTEGER NOT NULL,
    PRIMARY KEY (run_id, payment_id),
    UNIQUE (run_id, line_id)
);

CREATE TABLE recon_exceptions (
    id INTEGER PRIMARY KEY,
    month TEXT NOT NULL,
    ident TEXT NOT NULL,
    bucket TEXT NOT NULL,
    payment_id TEXT,
    line_id INTEGER REFERENCES statement_lines(id),
    brand TEXT,
    amount INTEGER NOT NULL,
    txn_day TEXT NOT NULL,
    deadline_days INTEGER,
    detail TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    first_run INTEGER NOT NULL REFERENCES match_runs(id),
    last_run INTEGER NOT NULL REFERENCES match_runs(id),
    created_at TEXT NOT NULL,
    UNIQUE (month, ident)
);
CREATE INDEX recon_exceptions_by_status ON recon_exceptions (status, month);

CREATE TABLE recon_exception_notes (
    id INTEGER PRIMARY KEY,
    exception_id INTEGER NOT NULL REFERENCES recon_exceptions(id),
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('opened', 'resolved', 'reopened', 'note', 'gone', 'back')),
    note TEXT NOT NULL
);
CREATE INDEX recon_exception_notes_by_exception ON recon_exception_notes (exception_id, id);

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    month TEXT,
    detail TEXT NOT NULL
);
"""

_TRIGGERS = "".join(
    f"""
CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
"""
    for table in _APPEND_ONLY
)

RECONCILE_SQL = _TABLES + _TRIGGERS

__all__ = ["RECONCILE_SQL"]
