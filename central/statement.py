"""The payment agent's (指定納付受託者) monthly statement: read, check, import,
and generate.

The agent settles every cashless transaction of the month and deposits the
total net of its fee in the middle of the next month, with a statement file:
one CSV row per transaction it settled.  docs/reconciliation.md §1 has the
format, column by column.

* :func:`parse_statement` reads the bytes (UTF-8 with or without BOM, else
  Shift_JIS/cp932), checks the header first and then every row, and raises
  :class:`StatementError` listing *every* problem with its line number.
* :func:`import_statement` stores a checked file in one transaction: all its
  rows or none.  Imports are idempotent on (source, SHA-256 of the bytes); a
  different file for the same source and month supersedes the earlier one
  (which is kept, for audit).
* :func:`generate` writes a realistic statement from the ledger of a month —
  with deliberate faults on request — for tests, the demo and the docs.
* :func:`synthetic_ledger` fills a ledger with a month of plausible payments
  (test and demo data only).
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bus.models import utcnow
from central.store import Store

#: Column key → accepted header names (Japanese first, English second).
COLUMNS: dict[str, tuple[str, str]] = {
    "agent_txn_id": ("取引ID", "agent_txn_id"),
    "txn_at": ("取引日時", "txn_at"),
    "terminal_id": ("端末番号", "terminal_id"),
    "slip_no": ("伝票番号", "slip_no"),
    "approval_no": ("承認番号", "approval_no"),
    "brand": ("ブランド", "brand"),
    "type": ("取引区分", "type"),
    "gross": ("取引金額", "gross"),
    "fee": ("手数料", "fee"),
    "net": ("入金額", "net"),
    "original_agent_txn_id": ("元取引ID", "original_agent_txn_id"),
    "deposit_date": ("入金予定日", "deposit_date"),
}
_HEADER_KEY = {name: key for key, names in COLUMNS.items() for name in names}

#: 取引区分 → our type.
TYPES = {"売上": "sale", "返品": "refund", "取消": "void", "sale": "sale", "refund": "refund", "void": "void"}
TYPE_JA = {"sale": "売上", "refund": "返品", "void": "取消"}

#: Agent brand names that are neither a terminal name nor a brand name of
#: config/brands.toml (matched like terminal names: case, width, spaces and
#: ``-_.・`` ignored).  A city whose agent writes something else adds it here
#: or to the brand's ``terminal_names``.
AGENT_BRAND_NAMES = {
    "交通系電子マネー": "transit_ic",
    "交通系ic電子マネー": "transit_ic",
    "american express": "amex",
    "diners club international": "diners",
    "銀聯カード": "unionpay",
    "楽天edy": "edy",
}

MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
SOURCE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$")
_NUM_RE = re.compile(r"^[A-Za-z0-9-]{1,20}$")
_AMOUNT_RE = re.compile(r"^[+-]?(\d{1,3}(,\d{3})+|\d+)$")
_DATETIME_RE = re.compile(r"^(\d{4})[-/](\d{1,2})[-/](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?$")
_DATE_RE = re.compile(r"^(\d{4})[-/](\d{1,2})[-/](\d{1,2})$")
MAX_ERRORS_SHOWN = 50
MAX_AMOUNT = 9_999_999


class StatementError(ValueError):
    """A statement file that cannot be imported.  ``errors`` lists
    ``(line number, message)``; line 1 is the header, 0 the file as a whole."""

    def __init__(self, errors: list[tuple[int, str]], *, encoding: str | None = None) -> None:
        self.errors = sorted(errors, key=lambda e: e[0])
        self.encoding = encoding
        shown = [f"line {n}: {m}" if n else m for n, m in self.errors[:MAX_ERRORS_SHOWN]]
        if len(self.errors) > MAX_ERRORS_SHOWN:
            shown.append(f"… and {len(self.errors) - MAX_ERRORS_SHOWN} more")
        super().__init__(f"{len(self.errors)} problem(s), nothing imported:\n  " + "\n  ".join(shown))


@dataclass(frozen=True)
class StatementLine:
    """One settled transaction as the agent reports it.  Amounts are positive
    yen; ``type`` gives the direction (a refund takes ``net`` back)."""

    line_no: int
    agent_txn_id: str
    txn_at: datetime  # aware, the site's zone
    terminal_id: str
    slip_no: str | None
    approval_no: str | None
    brand_name: str
    brand: str  # catalog brand id
    type: str  # sale | refund | void
    gross: int
    fee: int
    net: int
    original_agent_txn_id: str | None
    deposit_date: date


@dataclass(frozen=True)
class ParsedStatement:
    encoding: str  # "utf-8-sig" | "utf-8" | "cp932"
    sha256: str
    lines: tuple[StatementLine, ...]


@dataclass(frozen=True)
class ImportResult:
    import_id: int
    created: bool  # False: this exact file was imported before (no-op)
    source: str
    month: str
    encoding: str
    sha256: str
    line_count: int
    supersedes: int | None
    message: str


def check_month(month: str) -> tuple[date, date]:
    """``YYYY-MM`` → (first day, first day of the next month).  ValueError otherwise."""
    m = MONTH_RE.match(month or "")
    if m is None:
        raise ValueError(f"month must be YYYY-MM, not {month!r}")
    start = date(int(m.group(1)), int(m.group(2)), 1)
    end = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    return start, end


def decode(data: bytes) -> tuple[str, str]:
    """The text and the encoding it was read with: UTF-8 with a BOM, UTF-8
    (strict), else cp932 (Windows Shift_JIS, what Japanese Excel writes).
    Raises StatementError naming the line of the first byte neither accepts."""
    if data.startswith(b"\xef\xbb\xbf"):
        try:
            return data[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError as exc:
            raise StatementError([(data[: exc.start + 3].count(b"\n") + 1, "not valid UTF-8 after a UTF-8 BOM")]) from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        utf8_bad = exc.start
    try:
        return data.decode("cp932"), "cp932"
    except UnicodeDecodeError as exc:
        # Name the line where the reading that got further stopped.
        line = data[: max(utf8_bad, exc.start)].count(b"\n") + 1
        raise StatementError([(line, "neither UTF-8 nor Shift_JIS (cp932): save the file as UTF-8 or Shift_JIS")]) from None


def brand_of(catalog: Any, name: str) -> str | None:
    """The catalog brand id the agent means by ``name``: a terminal name, a
    brand's Japanese or English name or id, or :data:`AGENT_BRAND_NAMES`."""
    brand = catalog.brand_for_terminal_name(name)
    if brand is not None:
        return brand.id
    key = _name_key(name)
    for b in catalog.brands.values():
        if key in (_name_key(b.name_ja), _name_key(b.name_en), _name_key(b.id)):
            return b.id
    for alias, brand_id in AGENT_BRAND_NAMES.items():
        if _name_key(alias) == key and brand_id in catalog.brands:
            return brand_id
    return None


def _name_key(name: str) -> str:
    import unicodedata

    return re.sub(r"[\s\-_.・]", "", unicodedata.normalize("NFKC", name)).casefold()


def _amount(text: str) -> int | None:
    if not _AMOUNT_RE.match(text):
        return None
    return int(text.replace(",", ""))


def _datetime(text: str, zone: ZoneInfo) -> datetime | None:
    m = _DATETIME_RE.match(text)
    if m is None:
        return None
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    try:
        return datetime(y, mo, d, h, mi, s, tzinfo=zone)
    except ValueError:
        return None


def _date(text: str) -> date | None:
    m = _DATE_RE.match(text)
    if m is None:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def parse_statement(data: bytes, catalog: Any, *, month: str | None = None, zone: str = "Asia/Tokyo") -> ParsedStatement:
    """Read and check a statement file.  Returns every line, or raises
    :class:`StatementError` with every problem found and its line number.

    ``month`` (``YYYY-MM``): a line dated after the month is refused (a
    statement cannot settle a transaction that had not happened); earlier
    lines are accepted — a late settlement (an e-money 処理未了 resolved
    later) appears on a later statement.
    """
    tz = ZoneInfo(zone)
    text, encoding = decode(data)
    end = check_month(month)[1] if month else None
    reader = csv.reader(io.StringIO(text, newline=""))
    errors: list[tuple[int, str]] = []
    try:
        header = next(reader)
    except StopIteration:
        raise StatementError([(0, "the file is empty (no header line)")], encoding=encoding) from None
    except csv.Error as exc:
        raise StatementError([(1, f"not CSV: {exc}")], encoding=encoding) from None
    # The header first: a wrong column makes every row wrong.
    position: dict[str, int] = {}
    for i, raw in enumerate(header):
        name = raw.strip()
        key = _HEADER_KEY.get(name)
        if key is None:
            errors.append((1, f"unknown column {name!r} (column {i + 1}); expected: {', '.join(c[0] for c in COLUMNS.values())}"))
        elif key in position:
            errors.append((1, f"column {name!r} appears twice"))
        else:
            position[key] = i
    for key, names in COLUMNS.items():
        if key not in position:
            errors.append((1, f"missing column {names[0]} ({names[1]})"))
    if errors:
        raise StatementError(errors, encoding=encoding)

    lines: list[StatementLine] = []
    seen: dict[str, int] = {}
    brands: dict[str, str | None] = {}
    width = len(header)
    try:
        for row in reader:
            n = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line (Excel leaves them at the end)
            if len(row) != width:
                errors.append((n, f"{len(row)} fields, the header has {width}"))
                continue
            cell = {key: row[i].strip() for key, i in position.items()}
            bad = len(errors)

            agent_id = cell["agent_txn_id"]
            if not _ID_RE.match(agent_id):
                errors.append((n, f"取引ID {agent_id[:40]!r}: 1–40 letters, digits, '-' or '_'"))
            elif agent_id in seen:
                errors.append((n, f"取引ID {agent_id} is a duplicate of line {seen[agent_id]}"))
            else:
                seen[agent_id] = n
            txn_at = _datetime(cell["txn_at"], tz)
            if txn_at is None:
                errors.append((n, f"取引日時 {cell['txn_at'][:30]!r} is not a date and time (YYYY-MM-DD HH:MM[:SS] or YYYY/MM/DD HH:MM[:SS])"))
            elif end is not None and txn_at.date() >= end:
                errors.append((n, f"取引日時 {cell['txn_at']} is after the statement month {month}"))
            terminal_id = cell["terminal_id"]
            if not _NUM_RE.match(terminal_id):
                errors.append((n, f"端末番号 {terminal_id[:30]!r}: required, 1–20 letters, digits or '-'"))
            for key, ja in (("slip_no", "伝票番号"), ("approval_no", "承認番号")):
                if cell[key] and not _NUM_RE.match(cell[key]):
                    errors.append((n, f"{ja} {cell[key][:30]!r}: 1–20 letters, digits or '-'"))
            if cell["brand"] not in brands:  # a few names, 100,000 lines: look each up once
                brands[cell["brand"]] = brand_of(catalog, cell["brand"]) if cell["brand"] else None
            brand = brands[cell["brand"]]
            if brand is None:
                errors.append((n, f"unknown brand {cell['brand'][:40]!r} (add it to the brand's terminal_names in brands.toml)"))
            kind = TYPES.get(cell["type"])
            if kind is None:
                errors.append((n, f"unknown 取引区分 {cell['type'][:20]!r} (売上, 返品 or 取消)"))
            amounts: dict[str, int] = {}
            for key, ja in (("gross", "取引金額"), ("fee", "手数料"), ("net", "入金額")):
                value = _amount(cell[key])
                if value is None:
                    errors.append((n, f"{ja} {cell[key][:20]!r} is not a whole number of yen"))
                elif value > MAX_AMOUNT:
                    errors.append((n, f"{ja} {value} is more than {MAX_AMOUNT:,} yen"))
                else:
                    amounts[key] = value
            if "gross" in amounts and amounts["gross"] <= 0:
                errors.append((n, f"取引金額 {amounts['gross']} must be > 0 (取引区分 says the direction)"))
            if "fee" in amounts and amounts["fee"] < 0:
                errors.append((n, f"手数料 {amounts['fee']} is negative"))
            if "net" in amounts and amounts["net"] < 0:
                errors.append((n, f"入金額 {amounts['net']} is negative"))
            if len(amounts) == 3 and amounts["gross"] != amounts["net"] + amounts["fee"]:
                errors.append((n, f"取引金額 {amounts['gross']} ≠ 入金額 {amounts['net']} + 手数料 {amounts['fee']}"))
            original = cell["original_agent_txn_id"] or None
            if kind in ("refund", "void") and original is None:
                errors.append((n, f"a {cell['type']} names its original in 元取引ID"))
            elif kind == "sale" and original is not None:
                errors.append((n, "a 売上 has no 元取引ID"))
            elif original is not None and not _ID_RE.match(original):
                errors.append((n, f"元取引ID {original[:40]!r}: 1–40 letters, digits, '-' or '_'"))
            deposit = _date(cell["deposit_date"])
            if deposit is None:
                errors.append((n, f"入金予定日 {cell['deposit_date'][:20]!r} is not a date (YYYY-MM-DD or YYYY/MM/DD)"))
            if len(errors) == bad:
                lines.append(StatementLine(
                    line_no=n, agent_txn_id=agent_id, txn_at=txn_at, terminal_id=terminal_id,
                    slip_no=cell["slip_no"] or None, approval_no=cell["approval_no"] or None,
                    brand_name=cell["brand"], brand=brand, type=kind, gross=amounts["gross"], fee=amounts["fee"],
                    net=amounts["net"], original_agent_txn_id=original, deposit_date=deposit,
                ))
    except csv.Error as exc:
        errors.append((reader.line_num, f"not CSV: {exc}"))
    if errors:
        raise StatementError(errors, encoding=encoding)
    return ParsedStatement(encoding=encoding, sha256=hashlib.sha256(data).hexdigest(), lines=tuple(lines))


# ---------------------------------------------------------------- import


def audit(conn, actor: str, action: str, month: str | None, detail: str) -> None:
    """Append to the audit log (never updated, never deleted: triggers refuse)."""
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, month, detail) VALUES (?, ?, ?, ?, ?)",
        (utcnow().isoformat(), actor[:40], action, month, detail[:2000]),
    )


def import_statement(
    store: Store,
    data: bytes,
    catalog: Any,
    *,
    source: str,
    month: str,
    filename: str = "",
    actor: str = "cli",
    zone: str = "Asia/Tokyo",
) -> ImportResult:
    """Check and store a statement file: every line, or (on any problem)
    nothing — :class:`StatementError` lists the problems.

    Idempotent: the same bytes for the same ``source`` are a no-op
    (``created`` False).  Another file for the same source and month is a
    corrected statement: it becomes the month's statement and the earlier
    import stays, marked superseded, for audit.
    """
    if not SOURCE_RE.match(source or ""):
        raise ValueError(f"source must match {SOURCE_RE.pattern}, not {source!r}")
    check_month(month)
    digest = hashlib.sha256(data).hexdigest()
    conn = store.conn
    known = conn.execute(
        "SELECT id, month, imported_at, encoding, line_count FROM statement_imports WHERE source = ? AND sha256 = ?",
        (source, digest),
    ).fetchone()
    if known is not None:
        note = "" if known["month"] == month else f" (for {known['month']}, not {month})"
        message = f"already imported as #{known['id']} on {known['imported_at'][:19]}{note}: nothing changed"
        with store.transaction() as tx:
            audit(tx, actor, "import_repeat", month, f"{filename}: sha256 {digest[:16]} = import #{known['id']}{note}")
        return ImportResult(known["id"], False, source, known["month"], known["encoding"], digest,
                            known["line_count"], None, message)
    parsed = parse_statement(data, catalog, month=month, zone=zone)
    sales = sum(x.gross for x in parsed.lines if x.type == "sale")
    refunds = sum(x.gross for x in parsed.lines if x.type != "sale")
    fee = sum(x.fee if x.type == "sale" else -x.fee for x in parsed.lines)
    net = sum(x.net if x.type == "sale" else -x.net for x in parsed.lines)
    with store.transaction() as tx:
        previous = tx.execute(
            "SELECT id FROM statement_imports WHERE source = ? AND month = ? ORDER BY id DESC LIMIT 1", (source, month)
        ).fetchone()
        supersedes = previous["id"] if previous else None
        cur = tx.execute(
            "INSERT INTO statement_imports (source, month, sha256, filename, encoding, line_count, sales_gross, "
            "refunds_gross, fee_total, net_total, supersedes, imported_at, imported_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (source, month, digest, Path(filename).name[:200], parsed.encoding, len(parsed.lines), sales, refunds,
             fee, net, supersedes, utcnow().isoformat(), actor[:40]),
        )
        import_id = cur.lastrowid
        tx.executemany(
            "INSERT INTO statement_lines (import_id, line_no, agent_txn_id, txn_at, txn_day, terminal_id, slip_no, "
            "approval_no, brand_name, brand, type, gross, fee, net, original_agent_txn_id, deposit_date) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(import_id, x.line_no, x.agent_txn_id, x.txn_at.isoformat(), x.txn_at.date().isoformat(), x.terminal_id,
              x.slip_no, x.approval_no, x.brand_name, x.brand, x.type, x.gross, x.fee, x.net,
              x.original_agent_txn_id, x.deposit_date.isoformat()) for x in parsed.lines],
        )
        detail = (f"{Path(filename).name}: {len(parsed.lines)} lines, {parsed.encoding}, sha256 {digest[:16]}, "
                  f"sales {sales} refunds/voids {refunds} fee {fee} net {net}")
        if supersedes:
            detail += f"; supersedes #{supersedes}"
        audit(tx, actor, "import", month, f"#{import_id} source {source}: {detail}")
    message = f"imported as #{import_id}: {len(parsed.lines)} lines, read as {parsed.encoding}"
    if supersedes:
        message += f"; replaces #{supersedes} as the {month} statement of {source} (kept for audit)"
    return ImportResult(import_id, True, source, month, parsed.encoding, digest, len(parsed.lines), supersedes, message)


# ---------------------------------------------------------------- generate

FAULTS = ("missing", "extra", "amount", "fee", "duplicate", "refund", "void_present")


@dataclass
class Generated:
    """A generated statement: header + rows as text, and the faults put in."""

    header: list[str]
    rows: list[list[str]]
    faults: list[tuple[str, str]] = field(default_factory=list)

    def to_bytes(self, encoding: str = "utf-8") -> bytes:
        """``utf-8``, ``utf-8-sig`` (with BOM, what Excel likes) or ``cp932``; CRLF line ends."""
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, lineterminator="\r\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buf.getvalue().encode(encoding)


def agent_txn_id(payment_id: str, seed: int = 0) -> str:
    """The agent's id for a payment in generated statements: 12 digits, the
    same in every month's file (so a refund can point to its original)."""
    digest = hashlib.sha256(f"{seed}:{payment_id}".encode()).hexdigest()
    return f"{int(digest[:15], 16) % 10**12:012d}"


def generate(
    store: Store,
    catalog: Any,
    month: str,
    *,
    zone: str = "Asia/Tokyo",
    seed: int = 0,
    faults: bool | Iterable[str] = False,
) -> Generated:
    """A realistic statement of ``month`` from the ledger's cashless payments:
    approved (and later refunded) sales as 売上, approved card refunds as
    返品 pointing to their original, same-day voids absent.  The agent's
    brand names, its ids, the terminal's clock a few seconds off, fees per
    the contract rate and rounding (per transaction), deposit on the 15th of
    the next month.  Deterministic for a given ledger and ``seed``.

    ``faults`` (True = all of :data:`FAULTS`) puts in, where the ledger has a
    candidate: a missing line, a statement-only line, an amount mismatch, a
    fee 1 yen off, a duplicate (same slip, another agent id), a 返品 of a sale
    the ledger never refunded, and the sale line of a same-day-voided sale.
    ``Generated.faults`` says what was done to which id.
    """
    start, end = check_month(month)
    tz = ZoneInfo(zone)
    wanted = set(FAULTS if faults is True else (faults or ()))
    unknown = wanted - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault(s) {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    rng = random.Random(seed)
    rows = store.conn.execute(
        "SELECT payment_id, kind, original_id, state, method, brand, amount, terminal_id, slip_no, approval_no, txn_at, "
        "counter FROM payments WHERE day >= ? AND day < ? AND method != 'cash' AND txn_at IS NOT NULL "
        "ORDER BY txn_at, payment_id",
        (start.isoformat(), end.isoformat()),
    ).fetchall()
    deposit = date(end.year, end.month, 15).isoformat()
    out: list[dict[str, Any]] = []
    voided: list[dict[str, Any]] = []

    def line(p, kind: str, original: str | None = None, gross: int | None = None) -> dict[str, Any]:
        brand = catalog.brands.get(p["brand"], None)
        at = datetime.fromisoformat(p["txn_at"]).astimezone(tz) + timedelta(seconds=rng.randint(-40, 40))
        gross = p["amount"] if gross is None else gross
        fee = catalog.settlement.fee(gross, brand.fee_category) if brand else 0
        approval = p["approval_no"] or (f"{rng.randrange(10**6):06d}" if p["method"] == "credit" else "")
        return {
            "agent_txn_id": agent_txn_id(p["payment_id"], seed), "txn_at": at.strftime("%Y/%m/%d %H:%M:%S"),
            "terminal_id": p["terminal_id"] or f"T{p['counter']}", "slip_no": p["slip_no"] or f"{rng.randrange(1, 10**5):05d}",
            "approval_no": approval, "brand": brand.terminal_names[0] if brand else (p["brand"] or "?"),
            "type": TYPE_JA[kind], "gross": gross, "fee": fee, "net": gross - fee,
            "original_agent_txn_id": original or "", "deposit_date": deposit,
        }

    for p in rows:
        if p["kind"] == "sale" and p["state"] in ("approved", "refunded"):
            out.append(line(p, "sale"))
        elif p["kind"] == "sale" and p["state"] == "voided":
            voided.append(p)
        elif p["kind"] == "refund" and p["state"] == "approved":
            out.append(line(p, "refund", agent_txn_id(p["original_id"], seed)))
    applied: list[tuple[str, str]] = []
    sales = [r for r in out if r["type"] == "売上"]
    if wanted and sales:
        picks = rng.sample(range(len(sales)), min(len(sales), 5))
        chosen = [sales[i] for i in picks] + [sales[picks[0]]] * (5 - len(picks))
        if "missing" in wanted:
            out.remove(chosen[0])
            applied.append(("missing", chosen[0]["agent_txn_id"]))
        if "amount" in wanted and len(picks) > 1:
            r = chosen[1]
            r["gross"] += 100
            r["fee"] = catalog.settlement.fee(r["gross"], catalog.brands[brand_of(catalog, r["brand"])].fee_category)
            r["net"] = r["gross"] - r["fee"]
            applied.append(("amount", r["agent_txn_id"]))
        if "fee" in wanted and len(picks) > 2:
            r = chosen[2]
            r["fee"] += 1
            r["net"] -= 1
            applied.append(("fee", r["agent_txn_id"]))
        if "duplicate" in wanted and len(picks) > 3:
            r = dict(chosen[3])
            r["agent_txn_id"] = f"{(int(r['agent_txn_id']) + 7) % 10**12:012d}"
            out.insert(out.index(chosen[3]) + 1, r)
            applied.append(("duplicate", f"{r['agent_txn_id']} repeats {chosen[3]['agent_txn_id']}"))
        if "refund" in wanted and len(picks) > 4:
            r = dict(chosen[4])
            r.update(agent_txn_id=f"{(int(r['agent_txn_id']) + 13) % 10**12:012d}", type="返品",
                     original_agent_txn_id=chosen[4]["agent_txn_id"], slip_no=f"{rng.randrange(1, 10**5):05d}")
            out.append(r)
            applied.append(("refund", f"{r['agent_txn_id']} refunds {chosen[4]['agent_txn_id']}"))
    if "extra" in wanted:
        last = min(end - timedelta(days=1), start + timedelta(days=20))
        at = datetime.combine(last, time(11, 47, 5))
        brand = catalog.brands.get("visa") or next(b for b in catalog.brands.values())
        fee = catalog.settlement.fee(1300, brand.fee_category)
        r = {"agent_txn_id": f"{rng.randrange(10**12):012d}", "txn_at": at.strftime("%Y/%m/%d %H:%M:%S"),
             "terminal_id": "T9", "slip_no": "09999", "approval_no": "999999", "brand": brand.terminal_names[0],
             "type": "売上", "gross": 1300, "fee": fee, "net": 1300 - fee, "original_agent_txn_id": "",
             "deposit_date": deposit}
        out.append(r)
        applied.append(("extra", r["agent_txn_id"]))
    if "void_present" in wanted and voided:
        p = voided[0]
        out.append(line(p, "sale"))
        applied.append(("void_present", f"{agent_txn_id(p['payment_id'], seed)} = voided payment {p['payment_id']}"))
    out.sort(key=lambda r: (r["txn_at"], r["agent_txn_id"]))
    header = [COLUMNS[k][0] for k in COLUMNS]
    return Generated(header, [[str(r[k]) for k in COLUMNS] for r in out], applied)


# ---------------------------------------------------------------- synthetic ledger (test and demo data)

_OPENING = [(8, 4.0), (9, 13.0), (10, 16.0), (11, 13.0), (12, 8.5), (13, 12.0), (14, 12.0), (15, 10.0), (16, 7.6), (17, 3.0)]


def synthetic_ledger(
    store: Store,
    site: Any,
    catalog: Any,
    month: str,
    *,
    per_day: int = 60,
    seed: int = 0,
    voids: float = 0.01,
    refunds: float = 0.005,
    unknown: float = 0.003,
    cash_share: float = 0.6,
) -> int:
    """Insert a month of plausible payments into the ledger (business days,
    design §7's hourly shares, cash and cashless, a few same-day voids, card
    refunds a day later and e-money left 処理未了).  ``cash_share`` of the
    payments are cash (design §7: about 20 % cashless today, 40 % the
    target).  Test and demo data: one transaction, no events.  Returns the
    number of payment rows written."""
    from central.ledger import Ledger, PaymentRow

    start, end = check_month(month)
    rng = random.Random(seed)
    tz = ZoneInfo(site.site.timezone)
    ledger = Ledger(store, site, catalog)
    counters = [c.id for c in site.counters if site.device_of_counter(c.id) is not None] or [c.id for c in site.counters]
    items = [code for code, item in catalog.items.items() if "credit" in item.methods]
    by_method = {m: [b.id for b in catalog.brands.values() if b.method == m] for m in ("credit", "emoney", "qr")}
    slips: dict[str, int] = {}
    now = utcnow().isoformat()
    written = 0
    hours = [h for h, _ in _OPENING]
    weights = [w for _, w in _OPENING]

    def row(**kw: Any) -> PaymentRow:
        base = {"charge_id": str(uuid.uuid4()), "device": site.device_of_counter(kw["counter"]).id
                    if site.device_of_counter(kw["counter"]) else None, "ticket": None, "version": 3, "card_name": None,
                    "tendered": None, "change": None, "receipt_no": None, "staff_id": None, "reason": None, "note": None,
                    "message_ja": "", "message_en": "", "created_at": now, "updated_at": now, "original_id": None}
        base.update(kw)
        return PaymentRow(**base)

    with store.transaction() as tx:
        day = start
        while day < end:
            if day.weekday() < 5:
                moments = []
                for _ in range(per_day):
                    hour = rng.choices(hours, weights)[0]
                    minute = rng.randrange(30, 60) if hour == 8 else rng.randrange(0, 15) if hour == 17 else rng.randrange(60)
                    moments.append(time(hour, minute, rng.randrange(60)))
                for moment in sorted(moments):  # slip numbers count up through the day
                    at = datetime.combine(day, moment, tz)
                    counter = rng.choice(counters)
                    code = rng.choice(items)
                    quantity = min(rng.choice((1, 1, 1, 2, 2, 3)), catalog.items[code].max_quantity)
                    priced = catalog.price([(code, quantity)])
                    amount = sum(p.amount for p in priced)
                    lines = tuple({"code": p.code, "name_ja": p.name_ja, "name_en": p.name_en, "quantity": p.quantity,
                                       "unit_price": p.unit_price, "amount": p.amount, "account": p.account} for p in priced)
                    method = rng.choices(("cash", "credit", "emoney", "qr"),
                                         (cash_share, (1 - cash_share) * 0.5, (1 - cash_share) * 0.3, (1 - cash_share) * 0.2))[0]
                    pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    if method == "cash":
                        ledger._insert(tx, row(payment_id=pid, counter=counter, day=day.isoformat(), kind="sale",
                                               state="approved", method="cash", brand=None, amount=amount,
                                               terminal="none", terminal_id=None, slip_no=None, approval_no=None,
                                               txn_at=at.isoformat(), lines=lines))
                        written += 1
                        continue
                    brand = rng.choice(by_method[method])
                    terminal_id = f"T{counter}"
                    key = f"{terminal_id}:{day}"
                    slips[key] = slips.get(key, 0) + 1
                    slip = f"{slips[key]:05d}"
                    approval = f"{rng.randrange(10**6):06d}" if method == "credit" else None
                    roll = rng.random()
                    state = "approved"
                    if method == "emoney" and roll < unknown:
                        state = "unknown"
                    elif roll < unknown + voids:
                        state = "voided"
                    elif roll < unknown + voids + refunds and method == "credit" and day + timedelta(days=1) < end:
                        state = "refunded"
                    sale = row(payment_id=pid, counter=counter, day=day.isoformat(), kind="sale", state=state,
                               method=method, brand=brand, card_name=catalog.brands[brand].terminal_names[0],
                               amount=amount, terminal="zvt", terminal_id=terminal_id,
                               slip_no=None if state == "unknown" else slip,
                               approval_no=None if state == "unknown" else approval,
                               txn_at=at.isoformat(), lines=lines)
                    ledger._insert(tx, sale)
                    written += 1
                    if state == "voided":
                        slips[key] += 1
                        ledger._insert(tx, row(payment_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                                               counter=counter, day=day.isoformat(), kind="void", original_id=pid,
                                               state="approved", method=method, brand=brand, amount=amount,
                                               terminal="zvt", terminal_id=terminal_id, slip_no=f"{slips[key]:05d}",
                                               approval_no=approval, reason=None, staff_id="s01", note="取消",
                                               txn_at=(at + timedelta(minutes=3)).isoformat()))
                        written += 1
                    elif state == "refunded":
                        later = at + timedelta(days=1, hours=1)
                        ledger._insert(tx, row(payment_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                                               counter=counter, day=later.date().isoformat(), kind="refund",
                                               original_id=pid, state="approved", method=method, brand=brand,
                                               amount=amount, terminal="zvt", terminal_id=terminal_id,
                                               slip_no=f"{rng.randrange(50000, 99999):05d}", approval_no=approval,
                                               staff_id="s01", note="返品", txn_at=later.isoformat()))
                        written += 1
            day += timedelta(days=1)
    return written
