"""Schema 3 of central's database: day close (日次処理, issue #4).  See
central/dayclose.py and docs/accounting.md.

Tables:

* ``day_closes`` — one row per closed (site, 収納日): who closed it and when,
  the cash count, the headline figures, and the whole day sheet as canonical
  JSON (``snapshot``) with its SHA-256 (``sha256``) and the previous close's
  hash of the same site (``prev_sha256``: a hash chain, so a close that is
  removed or rewritten shows).  ``UNIQUE (site, day)``: a day is closed once.
* ``day_close_cash`` — the cash count by denomination (金種), if staff gave one.
* ``day_close_entries`` — what the close counted, per payment and revenue
  account (歳入科目): the payment's version and state then, its revenue and
  cash effect.  A later change of that payment is measured against these rows
  (plus the adjustments already recorded), never against the live ledger.
* ``day_adjustments`` — an adjustment (調整) to a closed day: a payment event
  that arrived after the close, a correction by accounting, a cash recount.
  ``day`` is the closed 収納日 it corrects, ``booked_day`` the open day on
  whose sheet it is carried; who, why, amount (signed revenue change), the
  change to expected and counted cash, the account and the payment it refers to.

All four are append-only: UPDATE and DELETE are refused by triggers
(``RAISE(ABORT)``), so a closed day cannot be edited, only adjusted.  The
triggers are plain SQL and exist in PostgreSQL too (as rules or trigger
functions) when central moves there (design §8).
"""

from __future__ import annotations

_APPEND_ONLY = ["day_closes", "day_close_cash", "day_close_entries", "day_adjustments"]

_TABLES = """
CREATE TABLE day_closes (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    day TEXT NOT NULL,
    closed_at TEXT NOT NULL,
    closed_by TEXT NOT NULL,
    revenue INTEGER NOT NULL,
    expected_cash INTEGER NOT NULL,
    counted_cash INTEGER NOT NULL,
    over_short INTEGER NOT NULL,
    snapshot TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    prev_sha256 TEXT,
    UNIQUE (site, day)
);
CREATE TABLE day_close_cash (
    close_id INTEGER NOT NULL REFERENCES day_closes(id),
    denomination INTEGER NOT NULL,
    pieces INTEGER NOT NULL,
    PRIMARY KEY (close_id, denomination)
);
CREATE TABLE day_close_entries (
    close_id INTEGER NOT NULL REFERENCES day_closes(id),
    payment_id TEXT NOT NULL,
    account_code TEXT NOT NULL,
    version INTEGER NOT NULL,
    state TEXT NOT NULL,
    revenue INTEGER NOT NULL,
    cash INTEGER NOT NULL,
    PRIMARY KEY (close_id, payment_id, account_code)
);
CREATE INDEX day_close_entries_by_payment ON day_close_entries (payment_id);
CREATE TABLE day_adjustments (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    day TEXT NOT NULL,
    booked_day TEXT NOT NULL,
    close_id INTEGER NOT NULL REFERENCES day_closes(id),
    kind TEXT NOT NULL,
    payment_id TEXT,
    account_code TEXT NOT NULL,
    method TEXT,
    brand TEXT,
    counter TEXT,
    amount INTEGER NOT NULL,
    cash_expected INTEGER NOT NULL,
    cash_counted INTEGER NOT NULL,
    state_before TEXT,
    state_after TEXT,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX day_adjustments_by_day ON day_adjustments (site, day);
CREATE INDEX day_adjustments_by_booked ON day_adjustments (site, booked_day);
CREATE INDEX day_adjustments_by_payment ON day_adjustments (payment_id);
"""


def _triggers() -> str:
    out = []
    for table in _APPEND_ONLY:
        for op in ("UPDATE", "DELETE"):
            out.append(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table}\n"
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: record an adjustment instead'); END;\n"
            )
    return "".join(out)


DAYCLOSE_SQL = _TABLES + _triggers()
