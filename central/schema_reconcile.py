"""Schema 4 of central's database: statement imports and reconciliation.  See central/reconcile.py."""

RECONCILE_SQL = """
CREATE TABLE reconcile_placeholder (id INTEGER PRIMARY KEY);
"""
