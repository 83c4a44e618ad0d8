"""Schema 3 of central's database: day close (日次処理).  See central/dayclose.py."""

DAYCLOSE_SQL = """
CREATE TABLE day_closes_placeholder (id INTEGER PRIMARY KEY);
"""
