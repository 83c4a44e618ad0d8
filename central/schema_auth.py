"""Schema 6 of central's database: staff accounts, roles and login sessions
(issue #7).  See central/auth.py and docs/security.md.

Placeholder until web login lands: an empty, valid migration keeps the schema
numbers stable (5 is the fleet of central/schema_fleet.py).
"""

AUTH_SQL = """
CREATE TABLE auth_placeholder (id INTEGER PRIMARY KEY);
"""
