"""Schema 6 of central's database: staff accounts, roles, login sessions,
API tokens and the login audit (issue #7 item 3).  See central/auth.py and
docs/security.md "Web login".

* ``staff``: one row per account.  ``id`` is the login name and the staff id
  recorded on voids, day closes and IT requests (lower-case letters, digits
  and ``-``, at most 20: it must fit the ledger's staff id).  ``name`` is a
  display name such as "窓口A" (no personal data needed).  ``password_hash``
  is ``scrypt$n=…,r=…,p=…$salt$hash`` (the parameters travel with the hash,
  so the default can be raised later); NULL for an account that never logs
  in with a password (a kiosk, which has only an API token).
* ``staff_sessions``: a browser login.  Only the SHA-256 of the session
  token is stored: a copy of the database does not log anybody in.
* ``staff_tokens``: one API token per account (``Authorization: Bearer``),
  again only its SHA-256; issuing a new one replaces the old.
* ``login_audit``: append-only (triggers refuse UPDATE and DELETE, like
  ``fleet_audit`` of schema 5): every login attempt, its result and the
  client's address (staff only: visitors never log in), every logout, every
  account change made with ``madoguchi staff``.  The login throttle counts
  failures here, so it survives a restart.

Schema 6 was an empty placeholder (``auth_placeholder``) in development
before this; it never shipped.  The first statement drops it, and schema 7
(central/schema_hardening.py) starts with :data:`AUTH_SQL_IF_MISSING`, so a
development database that still has the placeholder gets these tables then.

Schema 7 also replaces ``login_audit_by_staff`` with two indexes that hold
the result too (the throttle's queries read nothing but the index), and adds
a trigger that refuses ``INSERT OR REPLACE`` of an existing row.
"""

_TABLES = """
DROP TABLE IF EXISTS auth_placeholder;
CREATE TABLE staff (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('counter', 'accounting', 'it', 'kiosk')),
    password_hash TEXT,
    disabled INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE TABLE staff_sessions (
    token_sha256 TEXT PRIMARY KEY,
    staff_id TEXT NOT NULL REFERENCES staff(id),
    created_at TEXT NOT NULL,
    last_seen TEXT NOT NULL
);
CREATE INDEX staff_sessions_by_staff ON staff_sessions (staff_id);
CREATE TABLE staff_tokens (
    staff_id TEXT PRIMARY KEY REFERENCES staff(id),
    token_sha256 TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    last_used TEXT
);
CREATE TABLE login_audit (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    staff_id TEXT,
    result TEXT NOT NULL,
    client TEXT,
    detail TEXT
);
CREATE INDEX login_audit_by_staff ON login_audit (staff_id, client, at);
"""

_TRIGGERS = """
CREATE TRIGGER login_audit_no_update BEFORE UPDATE ON login_audit
BEGIN SELECT RAISE(ABORT, 'login_audit is append-only'); END;
CREATE TRIGGER login_audit_no_delete BEFORE DELETE ON login_audit
BEGIN SELECT RAISE(ABORT, 'login_audit is append-only'); END;
"""

AUTH_SQL = _TABLES + _TRIGGERS

#: Schema 6 again, each statement made harmless when its object exists
#: already (the first part of schema 7).
AUTH_SQL_IF_MISSING = (AUTH_SQL.replace("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS ")
                       .replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ")
                       .replace("CREATE TRIGGER ", "CREATE TRIGGER IF NOT EXISTS "))

__all__ = ["AUTH_SQL", "AUTH_SQL_IF_MISSING"]
