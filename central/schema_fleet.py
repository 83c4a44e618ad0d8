"""Schema 5 of central's database: the fleet (issue #7) — devices seen on the
bus, requests sent to them and their audit trail, alerts.  See central/fleet.py
and docs/fleet.md.

Placeholder until the fleet manager lands: an empty, valid migration keeps the
schema numbers stable (6 is the staff accounts of central/schema_auth.py).
"""

FLEET_SQL = """
CREATE TABLE fleet_placeholder (id INTEGER PRIMARY KEY);
"""
