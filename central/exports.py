"""Safe text in the files accounting opens in Excel.

A cell whose text begins with ``=``, ``+``, ``-`` or ``@`` is a formula to a
spreadsheet (CSV/formula injection, OWASP): a reason typed on a page such as
``=HYPERLINK("http://…")`` must stay text.  In CSV such text gets a leading
apostrophe (Excel shows the rest as text); in a workbook the cell is stored as
a string, so it reads exactly as typed.
"""

from __future__ import annotations

from typing import Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def is_formula_like(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 1 and value.startswith(FORMULA_START)


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV row: formula-like text gets a leading apostrophe."""
    return "'" + value if is_formula_like(value) else value


def csv_row(row) -> list:
    return [csv_cell(v) for v in row]


def keep_text(cell) -> None:
    """An openpyxl cell whose value came from text: never a formula."""
    if is_formula_like(cell.value):
        cell.data_type = "s"
