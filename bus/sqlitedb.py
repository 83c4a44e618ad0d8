"""One SQLite file with numbered migrations, used from one thread — what
central's store and the edge's payment journal have in common.

* WAL and ``synchronous=FULL``: a committed transaction survives a kill -9
  and a power cut.
* ``isolation_level=None`` and ``BEGIN IMMEDIATE``: we take the write lock up
  front, so a reader never has to upgrade mid-transaction.
* One connection, one thread: interleaved transactions from two threads would
  corrupt each other's BEGIN/COMMIT, so a second thread is refused loudly
  (this happened once with a thread-pool HTTP handler).
* ``PRAGMA user_version`` counts the migrations applied; a database newer
  than the code is refused.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


class DatabaseError(RuntimeError):
    pass


class Database:
    """A SQLite connection with ``schema`` (a list of SQL scripts, one per
    version) migrated to the latest version."""

    def __init__(self, path: str | Path, schema: Sequence[str], *, foreign_keys: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self._owner: int | None = None
        try:  # a file that is not a database fails at the first PRAGMA: close what we opened
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            if foreign_keys:
                self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA busy_timeout=5000")
            self._migrate(schema)
        except BaseException:
            self.conn.close()
            raise

    def _migrate(self, schema: Sequence[str]) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(schema):
            raise DatabaseError(f"{self.path}: database schema {version} is newer than this madoguchi ({len(schema)})")
        for number, script in enumerate(schema[version:], start=version + 1):
            logger.info("migrating %s to schema %d", self.path, number)
            with self.transaction() as conn:
                # executescript() would COMMIT our transaction: run the
                # statements one by one inside it instead.
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        owner = threading.get_ident()
        if self._owner is None:
            self._owner = owner
        elif self._owner != owner:
            raise DatabaseError(f"{self.path}: database used from a second thread")
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            # SQLite may have rolled back by itself (a full disk, an I/O
            # error): a second ROLLBACK would fail and hide the real error.
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (``sqlite3.complete_statement``
    keeps a trigger's ``BEGIN … END;`` body together)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise DatabaseError(f"incomplete SQL statement in a migration: {buffer.strip()[:80]!r}")
