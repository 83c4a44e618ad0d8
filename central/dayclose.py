"""Day close (日次処理表) of a site's fee payments, its CSV and Excel exports,
and adjustments to closed days (issue #4; docs/accounting.md).

What counts (design §5, §6):

* **Revenue is dated on the transaction date (収納日)**: the ledger's ``day``.
* A sale counts once it was approved — also when it was later voided or
  refunded, because the void (取消) or refund (返金) is a payment of its own
  that counts *negative* on its own day.  A same-day void therefore nets the
  sale to zero on the day; a refund on a later day reduces that later day.
* Unknown / pending payments (処理未了) and charges not started yet are
  listed, never counted.  Declined and cancelled ones count nothing.
* Cash expected = cash sales − cash voids − cash refunds (refunds are paid in
  cash).  Over/short (過不足) = counted − expected.

**Closing** stores the whole sheet as canonical JSON with its SHA-256, chained
to the previous close of the site, and what it counted per payment
(``day_close_entries``).  Nothing of a closed day is ever updated (the tables
refuse it).  A later change — a payment event for the day arriving after the
close, a correction by accounting, a cash recount — is an **adjustment**
(``day_adjustments``): listed on the closed day's adjustment sheet (調整) with
the figures after adjustment, and carried on the sheet of the next open day
(前日以前の締め後調整) so that it is booked.  A closed day is never closed
again and never edited.

The ledger calls :func:`record_late_changes` inside its own transaction for
every payment event it stores; :meth:`DayClose.sweep` finds any change that
reached the ledger another way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from central.config import Site
from central.exports import csv_row, keep_text
from central.store import Store

logger = logging.getLogger(__name__)

#: Format of the snapshot (the stored sheet); bump when its keys change.
SHEET_FORMAT = 1

#: A sale in these states was paid on its day (a void/refund counts on its own).
SALE_COUNTED = ("approved", "voided", "refunded")
#: 処理未了: nobody knows yet whether money moved.  Listed, never counted.
PENDING = ("unknown", "pending")
#: Charges that had not started at the terminal.  Listed with 処理未了.
NOT_STARTED = ("sent", "ready")
#: Japanese notes and coins (金種), largest first.
DENOMINATIONS = (10000, 5000, 2000, 1000, 500, 100, 50, 10, 5, 1)
#: Adjustment kinds.  ``late_event``: a payment of the closed day changed in
#: the ledger after the close; ``correction``: entered by accounting;
#: ``cash_recount``: the counted cash corrected.
ADJUSTMENT_KINDS = ("late_event", "correction", "cash_recount")
#: The day page and a close look this far back for unrecorded late changes.
SWEEP_DAYS = 14

DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
STAFF_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")

KIND_JA = {"sale": "売上", "void": "取消", "refund": "返金"}
STATE_JA = {
    "approved": "承認", "declined": "不成立", "unknown": "処理未了", "pending": "処理中", "voided": "取消済",
    "refunded": "返金済", "cancelled": "取下げ", "sent": "送信済", "ready": "支払待ち",
}
METHOD_JA = {"cash": "現金", "credit": "クレジット", "emoney": "電子マネー", "qr": "QRコード決済"}
ADJ_KIND_JA = {"late_event": "締め後の決済", "correction": "訂正", "cash_recount": "現金再実査"}


class DayCloseError(Exception):
    """A day-close action refused, with a reason for staff (JA + EN).

    ``code``: ``invalid`` (bad input), ``not_found``, ``closed`` (already
    closed), ``open`` (not closed: nothing to adjust), ``too_early`` (a day
    in the future)."""

    def __init__(self, code: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.code, self.ja, self.en = code, ja, en


# =========================================================================== helpers


def canonical(obj: Any) -> str:
    """The JSON text that is hashed: sorted keys, no spaces, UTF-8 kept."""
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_day(day: str) -> str:
    """``day`` as YYYY-MM-DD (a real date), else :class:`DayCloseError`."""
    if not isinstance(day, str) or not DAY_RE.match(day):
        raise DayCloseError("invalid", "日付は YYYY-MM-DD で指定してください", f"date must be YYYY-MM-DD, not {str(day)[:20]!r}")
    try:
        date.fromisoformat(day)
    except ValueError:
        raise DayCloseError("invalid", f"{day} は存在しない日付です", f"{day} is not a date") from None
    return day


def check_staff(staff: str) -> str:
    if not isinstance(staff, str) or not STAFF_RE.match(staff):
        raise DayCloseError("invalid", "職員番号（英数字 20 文字まで）を入力してください",
                            "staff id: letters, digits, - and _, up to 20")
    return staff


def _int(value: Any, what: str, *, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise DayCloseError("invalid", f"{what} は {lo:,}〜{hi:,} の整数で入力してください",
                            f"{what}: a whole number {lo}..{hi}, not {str(value)[:20]!r}")
    return value


def _sign(kind: str, state: str) -> int:
    """+1 a counted sale, −1 an approved void/refund, 0 anything else."""
    if kind == "sale":
        return 1 if state in SALE_COUNTED else 0
    return -1 if state == "approved" else 0


def _chunks(items: list[str], n: int = 400) -> Iterable[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class _Names:
    """Names of accounts, items, methods, brands and counters (catalog and
    site), with fall-backs for what the catalog no longer has."""

    def __init__(self, site: Site, catalog: Any) -> None:
        self.site = site
        self.catalog = catalog

    def account_code(self, line: dict) -> str:
        cat = self.catalog
        if cat is not None:
            item = cat.items.get(line.get("code"))
            if item is not None:
                return item.account_code
            for code, acc in cat.accounts.items():
                if acc.moku == line.get("account"):
                    return code
        return ""

    def account(self, code: str) -> dict:
        acc = self.catalog.accounts.get(code) if self.catalog is not None else None
        if acc is None:
            return {"code": code, "kan": "", "kou": "", "moku": "（科目不明）" if not code else code}
        return {"code": code, "kan": acc.kan, "kou": acc.kou, "moku": acc.moku}

    def method(self, method: str) -> str:
        m = self.catalog.methods.get(method) if self.catalog is not None else None
        return m.name_ja if m is not None else METHOD_JA.get(method, method)

    def method_en(self, method: str) -> str:
        m = self.catalog.methods.get(method) if self.catalog is not None else None
        return m.name_en if m is not None else method

    def brand(self, brand: str | None) -> str:
        if not brand:
            return ""
        b = self.catalog.brands.get(brand) if self.catalog is not None else None
        return b.name_ja if b is not None else brand

    def counter(self, counter: str) -> str:
        for c in self.site.counters:
            if c.id == counter:
                return c.name_ja
        return f"{counter}番窓口"

    def unknown_rule(self, brand: str | None) -> str:
        b = self.catalog.brands.get(brand) if (self.catalog is not None and brand) else None
        return b.unknown_note_ja if b is not None else ""


# =========================================================================== reading the ledger


def _lines(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        for r in conn.execute(
            f"SELECT payment_id, code, name_ja, name_en, quantity, unit_price, amount, account FROM payment_lines "
            f"WHERE payment_id IN ({marks}) ORDER BY payment_id, position", chunk,
        ):
            out[r["payment_id"]].append(dict(r))
    return out


def _payments(conn: sqlite3.Connection, where: str, args: tuple) -> list[dict]:
    """Payments (as dicts) with their fee lines; a void/refund carries the
    lines of the sale it cancels (it has none of its own)."""
    rows = [dict(r) for r in conn.execute(
        f"SELECT * FROM payments WHERE {where} ORDER BY COALESCE(txn_at, created_at), created_at, payment_id", args
    )]
    ids = [r["payment_id"] for r in rows]
    originals = sorted({r["original_id"] for r in rows if r["original_id"]} - set(ids))
    lines = _lines(conn, ids + originals)
    for r in rows:
        own = lines.get(r["payment_id"], [])
        r["lines"] = own if own or not r["original_id"] else lines.get(r["original_id"], [])
    return rows


def _effects(p: dict, names: _Names) -> dict[str, dict]:
    """What ``p`` counts, per revenue account: {account_code: {revenue, cash}}.
    Every account of its lines is present (with 0 if it counts nothing)."""
    sign = _sign(p["kind"], p["state"])
    cash = p["method"] == "cash"
    lines = p["lines"]
    out: dict[str, dict] = {}
    if not lines or sum(line["amount"] for line in lines) != p["amount"]:
        code = names.account_code(lines[0]) if lines else ""
        out[code] = {"revenue": sign * p["amount"], "cash": sign * p["amount"] if cash else 0}
        return out
    for line in lines:
        code = names.account_code(line)
        e = out.setdefault(code, {"revenue": 0, "cash": 0})
        e["revenue"] += sign * line["amount"]
        if cash:
            e["cash"] += sign * line["amount"]
    return out


# =========================================================================== late changes (the ledger hook)


def _close_row(conn: sqlite3.Connection, site_id: str, day: str):
    return conn.execute("SELECT * FROM day_closes WHERE site = ? AND day = ?", (site_id, day)).fetchone()


def _next_open_day(conn: sqlite3.Connection, site_id: str, start: str) -> str:
    d = date.fromisoformat(start)
    closed = {r[0] for r in conn.execute("SELECT day FROM day_closes WHERE site = ? AND day >= ?", (site_id, start))}
    while d.isoformat() in closed:
        d += timedelta(days=1)
    return d.isoformat()


def record_late_changes(
    conn: sqlite3.Connection,
    site: Site,
    catalog: Any,
    payment_ids: Iterable[str],
    *,
    source: str,
    now: datetime | None = None,
) -> list[dict]:
    """Record an adjustment for every payment in ``payment_ids`` whose effect
    on a **closed** day differs from what that day counted (its close entries
    plus the late-event adjustments already recorded).  Runs inside the
    caller's transaction (``conn``); idempotent; cheap when no day is closed.

    The ledger calls this after storing a payment event, so a payment of a
    closed day arriving late is booked as an adjustment, never as an edit.
    Returns the adjustments recorded."""
    site_id = site.site.id
    if conn.execute("SELECT 1 FROM day_closes WHERE site = ? LIMIT 1", (site_id,)).fetchone() is None:
        return []
    names = _Names(site, catalog)
    now = now or datetime.now(UTC)
    today = now.astimezone(ZoneInfo(site.site.timezone)).date().isoformat()
    recorded: list[dict] = []
    for pid in dict.fromkeys(payment_ids):
        live_rows = _payments(conn, "payment_id = ?", (pid,))
        live = live_rows[0] if live_rows else None
        days = {live["day"]} if live else set()
        days |= {r[0] for r in conn.execute(
            "SELECT c.day FROM day_close_entries e JOIN day_closes c ON c.id = e.close_id WHERE e.payment_id = ? AND c.site = ?",
            (pid, site_id))}
        days |= {r[0] for r in conn.execute(
            "SELECT day FROM day_adjustments WHERE payment_id = ? AND site = ? AND kind = 'late_event'", (pid, site_id))}
        for day in sorted(days):
            close = _close_row(conn, site_id, day)
            if close is None:
                continue
            known: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            known_state = None
            for e in conn.execute(
                "SELECT account_code, state, revenue, cash FROM day_close_entries WHERE close_id = ? AND payment_id = ?",
                (close["id"], pid),
            ):
                known[e["account_code"]][0] += e["revenue"]
                known[e["account_code"]][1] += e["cash"]
                known_state = e["state"]
            for a in conn.execute(
                "SELECT account_code, amount, cash_expected, state_after FROM day_adjustments "
                "WHERE site = ? AND day = ? AND payment_id = ? AND kind = 'late_event' ORDER BY id",
                (site_id, day, pid),
            ):
                known[a["account_code"]][0] += a["amount"]
                known[a["account_code"]][1] += a["cash_expected"]
                known_state = a["state_after"]
            on_day = live is not None and live["day"] == day
            effects = _effects(live, names) if on_day else {}
            live_state = live["state"] if on_day else None
            diffs = []
            for code in sorted(set(known) | set(effects)):
                k = known.get(code, [0, 0])
                rev = effects.get(code, {}).get("revenue", 0) - k[0]
                cash = effects.get(code, {}).get("cash", 0) - k[1]
                if rev or cash:
                    diffs.append((code, rev, cash))
            resolved = known_state != live_state and (known_state in PENDING or live_state == "unknown")
            if not diffs and not resolved:
                continue
            if not diffs:
                first = next(iter(effects or known), "")
                diffs = [(first, 0, 0)]
            booked = _next_open_day(conn, site_id, max(today, day))
            before = STATE_JA.get(known_state or "", "記録なし") if known_state else "記録なし"
            after = STATE_JA.get(live_state or "", live_state) if live_state else "他の日へ移動"
            reason = (f"締め後に届いた決済の変更: {before} → {after} "
                      f"/ payment changed after the close: {known_state or 'none'} → {live_state or 'moved to another day'}")
            ref = live or {}
            for code, rev, cash in diffs:
                cur = conn.execute(
                    "INSERT INTO day_adjustments (site, day, booked_day, close_id, kind, payment_id, account_code, method, brand,"
                    " counter, amount, cash_expected, cash_counted, state_before, state_after, reason, created_by, created_at)"
                    " VALUES (?, ?, ?, ?, 'late_event', ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
                    (site_id, day, booked, close["id"], pid, code, ref.get("method"), ref.get("brand"), ref.get("counter"),
                     rev, cash, known_state, live_state, reason, source[:60], now.astimezone(UTC).isoformat()),
                )
                recorded.append({"id": cur.lastrowid, "day": day, "booked_day": booked, "payment_id": pid,
                                 "account_code": code, "amount": rev, "cash_expected": cash})
            logger.warning("payment %s of closed day %s changed (%s → %s): adjustment booked on %s",
                           pid, day, known_state, live_state, booked)
    return recorded


# =========================================================================== the day close


class DayClose:
    """Day sheets, closing and adjustments of one site.

    ``store``: central's database (used from one thread, like the ledger);
    ``catalog``: the fee catalog (names, accounts, brands) or None;
    ``clock``: returns an aware datetime (tests inject one)."""

    def __init__(self, store: Store, site: Site, catalog: Any = None, *,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.site = site
        self.catalog = catalog
        self.zone = ZoneInfo(site.site.timezone)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.names = _Names(site, catalog)

    @property
    def site_id(self) -> str:
        return self.site.site.id

    def today(self) -> str:
        return self.clock().astimezone(self.zone).date().isoformat()

    def _local(self, iso: str | None) -> str:
        if not iso:
            return ""
        return datetime.fromisoformat(iso).astimezone(self.zone).strftime("%H:%M:%S")

    # ---------------------------------------------------------------- reads
    def is_closed(self, day: str) -> bool:
        return _close_row(self.store.conn, self.site_id, check_day(day)) is not None

    def closes(self, *, limit: int = 31) -> list[dict]:
        """The latest closes of the site (without snapshots)."""
        rows = self.store.conn.execute(
            "SELECT id, day, closed_at, closed_by, revenue, expected_cash, counted_cash, over_short, sha256 FROM day_closes"
            " WHERE site = ? ORDER BY day DESC LIMIT ?", (self.site_id, limit))
        return [dict(r) for r in rows]

    def sheet(self, day: str) -> dict:
        """The day sheet: the stored snapshot of a closed day (plus its
        adjustments and the figures after them), or the live figures of an
        open day.  Looks for unrecorded late changes first (:meth:`sweep`)."""
        check_day(day)
        self.sweep(day)
        self.sweep()
        conn = self.store.conn
        close = _close_row(conn, self.site_id, day)
        if close is None:
            return self._compute(conn, day)
        sheet = json.loads(close["snapshot"])
        sheet["close"]["sha256"] = close["sha256"]
        sheet["close"]["verified"] = sha256(close["snapshot"]) == close["sha256"]
        adjustments = self.adjustments(day=day)
        sheet["adjustments"] = adjustments
        sheet["adjusted"] = _adjusted(sheet, adjustments, self.names)
        return sheet

    def _compute(self, conn: sqlite3.Connection, day: str) -> dict:
        names = self.names
        payments = _payments(conn, "day = ?", (day,))
        cat = self.catalog
        by_account: dict[str, dict] = {}
        if cat is not None:
            for code in sorted(cat.accounts):
                by_account[code] = {**names.account(code), "count": 0, "amount": 0}
        by_item: dict[str, dict] = {}
        if cat is not None:
            for it in sorted(cat.items.values(), key=lambda i: i.account_code):
                by_item[it.code] = {"code": it.code, "name_ja": it.name_ja, "account_code": it.account_code,
                                    "unit_price": it.unit_price, "count": 0, "quantity": 0, "amount": 0}
        methods = list(cat.methods) if cat is not None else list(METHOD_JA)
        by_method = {m: {"method": m, "name_ja": names.method(m), "name_en": names.method_en(m), "count": 0, "amount": 0}
                     for m in methods}
        by_brand: dict[tuple[str, str], dict] = {}
        by_counter = {c.id: {"counter": c.id, "name_ja": c.name_ja, "count": 0, "amount": 0, "cash": 0}
                      for c in self.site.counters}
        summary = {k: {"count": 0, "amount": 0} for k in ("sales", "voids", "refunds", "revenue", "pending", "declined", "cancelled")}
        cash = {"sales": 0, "voids": 0, "refunds": 0}
        detail, voids, refunds, pending = [], [], [], []
        for p in payments:
            sign = _sign(p["kind"], p["state"])
            effects = _effects(p, names)
            d = self._detail(p, sign)
            detail.append(d)
            if p["kind"] == "void" and p["state"] == "approved":
                voids.append(d)
            elif p["kind"] == "refund" and p["state"] == "approved":
                refunds.append(d)
            if p["state"] in PENDING or p["state"] in NOT_STARTED:
                d = dict(d, rule_ja=names.unknown_rule(p["brand"]) if p["state"] in PENDING else "まだ決済が始まっていません")
                pending.append(d)
                summary["pending"]["count"] += 1
                summary["pending"]["amount"] += p["amount"]
            elif p["state"] == "declined":
                summary["declined"]["count"] += 1
            elif p["state"] == "cancelled":
                summary["cancelled"]["count"] += 1
            if sign == 0:
                continue
            key = {"sale": "sales", "void": "voids", "refund": "refunds"}[p["kind"]]
            summary[key]["count"] += 1
            summary[key]["amount"] += p["amount"]
            summary["revenue"]["count"] += sign
            summary["revenue"]["amount"] += sign * p["amount"]
            for code, e in effects.items():
                row = by_account.setdefault(code, {**names.account(code), "count": 0, "amount": 0})
                row["count"] += sign
                row["amount"] += e["revenue"]
            if sum(line["amount"] for line in p["lines"]) == p["amount"]:
                for line in p["lines"]:
                    it = by_item.setdefault(line["code"], {
                        "code": line["code"], "name_ja": line["name_ja"], "account_code": names.account_code(line),
                        "unit_price": line["unit_price"], "count": 0, "quantity": 0, "amount": 0})
                    it["count"] += sign
                    it["quantity"] += sign * line["quantity"]
                    it["amount"] += sign * line["amount"]
            else:
                it = by_item.setdefault("", {"code": "", "name_ja": "（内訳不明）", "account_code": "", "unit_price": 0,
                                             "count": 0, "quantity": 0, "amount": 0})
                it["count"] += sign
                it["amount"] += sign * p["amount"]
            m = by_method.setdefault(p["method"], {"method": p["method"], "name_ja": names.method(p["method"]),
                                                   "name_en": names.method_en(p["method"]), "count": 0, "amount": 0})
            m["count"] += sign
            m["amount"] += sign * p["amount"]
            if p["method"] != "cash":
                b = by_brand.setdefault((p["method"], p["brand"] or ""), {
                    "method": p["method"], "brand": p["brand"] or "", "name_ja": names.brand(p["brand"]) or "（ブランド不明）",
                    "count": 0, "amount": 0})
                b["count"] += sign
                b["amount"] += sign * p["amount"]
            c = by_counter.setdefault(p["counter"], {"counter": p["counter"], "name_ja": names.counter(p["counter"]),
                                                     "count": 0, "amount": 0, "cash": 0})
            c["count"] += sign
            c["amount"] += sign * p["amount"]
            if p["method"] == "cash":
                c["cash"] += sign * p["amount"]
                cash[key] += p["amount"]
        brand_order = list(cat.brands) if cat is not None else []
        brands = sorted(by_brand.values(), key=lambda b: (methods.index(b["method"]) if b["method"] in methods else 99,
                                                          brand_order.index(b["brand"]) if b["brand"] in brand_order else 999,
                                                          b["brand"]))
        expected = cash["sales"] - cash["voids"] - cash["refunds"]
        return {
            "format": SHEET_FORMAT,
            "site": {"id": self.site_id, "name_ja": self.site.site.name_ja, "name_en": self.site.site.name_en,
                     "timezone": self.site.site.timezone},
            "day": day,
            "status": "open",
            "generated_at": self.clock().astimezone(UTC).isoformat(),
            "close": None,
            "summary": summary,
            "by_account": [by_account[k] for k in sorted(by_account)],
            "by_item": sorted(by_item.values(), key=lambda i: (i["account_code"], list(by_item).index(i["code"]))),
            "by_method": list(by_method.values()),
            "by_brand": brands,
            "by_counter": list(by_counter.values()),
            "cash": {**cash, "expected": expected, "counted": None, "over_short": None, "change_fund": 0,
                     "denominations": []},
            "voids": voids,
            "refunds": refunds,
            "pending": pending,
            "payments": detail,
            "booked_adjustments": self.adjustments(booked_day=day),
            "adjustments": [],
        }

    def _detail(self, p: dict, sign: int) -> dict:
        names = self.names
        return {
            "payment_id": p["payment_id"],
            "time": self._local(p["txn_at"] or p["created_at"]),
            "txn_at": p["txn_at"],
            "counter": p["counter"],
            "kind": p["kind"], "kind_ja": KIND_JA.get(p["kind"], p["kind"]),
            "state": p["state"], "state_ja": STATE_JA.get(p["state"], p["state"]),
            "method": p["method"], "method_ja": names.method(p["method"]),
            # A refund is paid in cash: its brand is the sale's, shown so the clerk sees what was paid back.
            "brand": p["brand"] or "",
            "brand_ja": names.brand(p["brand"]) if (p["method"] != "cash" or p["kind"] == "refund") else "",
            "amount": p["amount"],
            "counted": sign != 0,
            "effect": sign * p["amount"],
            "items_ja": "、".join(f"{line['name_ja']}×{line['quantity']}" for line in p["lines"]),
            "lines": [{"code": line["code"], "name_ja": line["name_ja"], "quantity": line["quantity"],
                       "unit_price": line["unit_price"], "amount": line["amount"],
                       "account_code": names.account_code(line), "account": line["account"]} for line in p["lines"]],
            "tendered": p["tendered"], "change": p["change"],
            "terminal": p["terminal"] or "", "slip_no": p["slip_no"] or "", "approval_no": p["approval_no"] or "",
            "receipt_no": p["receipt_no"] or "", "staff_id": p["staff_id"] or "", "original_id": p["original_id"] or "",
            "ticket": p["ticket"], "reason": p["reason"] or "", "note": p["note"] or "",
        }

    def adjustments(self, *, day: str | None = None, booked_day: str | None = None) -> list[dict]:
        """Adjustments concerning closed day ``day``, or carried on ``booked_day``."""
        where, args = ["site = ?"], [self.site_id]
        if day is not None:
            where.append("day = ?")
            args.append(day)
        if booked_day is not None:
            where.append("booked_day = ?")
            args.append(booked_day)
        rows = self.store.conn.execute(
            f"SELECT * FROM day_adjustments WHERE {' AND '.join(where)} ORDER BY id", tuple(args))
        out = []
        for r in rows:
            a = dict(r)
            a["kind_ja"] = ADJ_KIND_JA.get(a["kind"], a["kind"])
            a["account"] = self.names.account(a["account_code"])["moku"] if a["account_code"] else ""
            a["method_ja"] = self.names.method(a["method"]) if a["method"] else ""
            a["local_time"] = datetime.fromisoformat(a["created_at"]).astimezone(self.zone).strftime("%Y-%m-%d %H:%M")
            out.append(a)
        return out

    # ---------------------------------------------------------------- close
    def close(
        self,
        day: str,
        *,
        closed_by: str,
        counted_cash: int | None = None,
        denominations: dict[int, int] | None = None,
        change_fund: int = 0,
    ) -> dict:
        """Close ``day``: freeze its sheet with the cash count.  Give
        ``counted_cash`` (yen collected, the change fund already taken out),
        or ``denominations`` ({yen: pieces} of the drawer) and ``change_fund``
        (釣銭準備金, taken out of the drawer total); with both, they must agree.
        Raises :class:`DayCloseError`: ``closed`` if it is closed already,
        ``too_early`` for a future day, ``invalid`` for bad input."""
        check_day(day)
        check_staff(closed_by)
        change_fund = _int(change_fund, "釣銭準備金", lo=0, hi=9_999_999)
        pieces: dict[int, int] = {}
        if denominations:
            for yen, n in denominations.items():
                if type(yen) is not int or yen not in DENOMINATIONS:
                    raise DayCloseError("invalid", f"金種 {str(yen)[:10]} はありません", f"no denomination {str(yen)[:10]!r}")
                pieces[yen] = _int(n, f"{yen}円の枚数", lo=0, hi=100_000)
            drawer = sum(yen * n for yen, n in pieces.items())
            if counted_cash is not None and _int(counted_cash, "現金実査額", lo=-9_999_999, hi=99_999_999) != drawer - change_fund:
                raise DayCloseError(
                    "invalid", f"金種の合計 {drawer:,} 円 − 釣銭準備金 {change_fund:,} 円が実査額 {counted_cash:,} 円と合いません",
                    f"denominations {drawer} − change fund {change_fund} ≠ counted {counted_cash}")
            counted_cash = drawer - change_fund
        elif counted_cash is None:
            raise DayCloseError("invalid", "現金実査額を入力してください", "counted_cash is required")
        else:
            counted_cash = _int(counted_cash, "現金実査額", lo=0, hi=99_999_999)
        if day > self.today():
            raise DayCloseError("too_early", f"{day} はまだ来ていません", f"{day} is in the future")
        self.sweep()
        now = self.clock().astimezone(UTC)
        with self.store.transaction() as conn:
            if _close_row(conn, self.site_id, day) is not None:
                raise DayCloseError("closed", f"{day} は締め済みです。変更は調整として記録してください",
                                    f"{day} is closed already; record an adjustment instead")
            sheet = self._compute(conn, day)
            prev = conn.execute("SELECT sha256 FROM day_closes WHERE site = ? ORDER BY id DESC LIMIT 1",
                                (self.site_id,)).fetchone()
            c = sheet["cash"]
            c["counted"] = counted_cash
            c["over_short"] = counted_cash - c["expected"]
            c["change_fund"] = change_fund
            c["denominations"] = [{"yen": yen, "pieces": pieces[yen], "amount": yen * pieces[yen]}
                                  for yen in DENOMINATIONS if yen in pieces]
            sheet["status"] = "closed"
            sheet["generated_at"] = now.isoformat()
            sheet["close"] = {"closed_at": now.isoformat(), "closed_by": closed_by,
                              "closed_at_local": now.astimezone(self.zone).strftime("%Y-%m-%d %H:%M"),
                              "prev_sha256": prev["sha256"] if prev else None}
            sheet.pop("adjustments", None)
            text = canonical(sheet)
            digest = sha256(text)
            cur = conn.execute(
                "INSERT INTO day_closes (site, day, closed_at, closed_by, revenue, expected_cash, counted_cash, over_short,"
                " snapshot, sha256, prev_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.site_id, day, now.isoformat(), closed_by, sheet["summary"]["revenue"]["amount"], c["expected"],
                 counted_cash, c["over_short"], text, digest, prev["sha256"] if prev else None),
            )
            close_id = cur.lastrowid
            for yen, n in pieces.items():
                conn.execute("INSERT INTO day_close_cash (close_id, denomination, pieces) VALUES (?, ?, ?)", (close_id, yen, n))
            for p in _payments(conn, "day = ?", (day,)):
                for code, e in _effects(p, self.names).items():
                    conn.execute(
                        "INSERT INTO day_close_entries (close_id, payment_id, account_code, version, state, revenue, cash)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (close_id, p["payment_id"], code, p["version"], p["state"], e["revenue"], e["cash"]),
                    )
        logger.info("day %s of site %s closed by %s: revenue %d yen, cash over/short %d yen",
                    day, self.site_id, closed_by, sheet["summary"]["revenue"]["amount"], c["over_short"])
        return self.sheet(day)

    def verify(self, day: str) -> bool:
        """Whether the stored snapshot of closed ``day`` still has its hash,
        and the chain to the previous close holds."""
        conn = self.store.conn
        close = _close_row(conn, self.site_id, check_day(day))
        if close is None:
            raise DayCloseError("open", f"{day} は締められていません", f"{day} is not closed")
        if sha256(close["snapshot"]) != close["sha256"]:
            return False
        prev = conn.execute("SELECT sha256 FROM day_closes WHERE site = ? AND id < ? ORDER BY id DESC LIMIT 1",
                            (self.site_id, close["id"])).fetchone()
        return (prev["sha256"] if prev else None) == close["prev_sha256"] == json.loads(close["snapshot"])["close"]["prev_sha256"]

    # ---------------------------------------------------------------- adjustments
    def adjust(
        self,
        day: str,
        *,
        by: str,
        reason: str,
        amount: int = 0,
        account_code: str = "",
        kind: str = "correction",
        payment_id: str | None = None,
        cash_expected: int = 0,
        cash_counted: int = 0,
    ) -> dict:
        """Record an adjustment to closed ``day`` (the only way to change a
        closed day): ``amount`` is the signed revenue change on
        ``account_code``; ``cash_expected`` / ``cash_counted`` the signed
        change to expected / counted cash (a recount: ``kind="cash_recount"``).
        Booked on the next open day.  Returns the adjustment."""
        check_day(day)
        check_staff(by)
        if kind not in ("correction", "cash_recount"):
            raise DayCloseError("invalid", "調整の種類は correction か cash_recount です", "kind: correction or cash_recount")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            raise DayCloseError("invalid", "調整の理由を入力してください（200 文字まで）", "a reason is required (up to 200 characters)")
        amount = _int(amount, "調整額", lo=-99_999_999, hi=99_999_999)
        cash_expected = _int(cash_expected, "現金予定額の調整", lo=-99_999_999, hi=99_999_999)
        cash_counted = _int(cash_counted, "現金実査額の調整", lo=-99_999_999, hi=99_999_999)
        if not (amount or cash_expected or cash_counted):
            raise DayCloseError("invalid", "調整額が 0 円です", "an adjustment changes something: all amounts are 0")
        if kind == "cash_recount" and (amount or cash_expected):
            raise DayCloseError("invalid", "現金再実査は実査額だけを調整します", "a cash recount changes counted cash only")
        if amount and (self.catalog is None or account_code not in self.catalog.accounts):
            known = "、".join(sorted(self.catalog.accounts)) if self.catalog is not None else ""
            raise DayCloseError("invalid", f"歳入科目コード {str(account_code)[:20]} はありません（{known}）",
                                f"unknown account code {str(account_code)[:20]!r}")
        conn = self.store.conn
        method = brand = counter = None
        if payment_id is not None:
            p = conn.execute("SELECT method, brand, counter FROM payments WHERE payment_id = ?", (str(payment_id)[:40],)).fetchone()
            if p is None:
                raise DayCloseError("not_found", "参照する支払いが見つかりません", f"no payment {str(payment_id)[:40]}")
            method, brand, counter = p["method"], p["brand"], p["counter"]
        now = self.clock().astimezone(UTC)
        with self.store.transaction() as conn:
            close = _close_row(conn, self.site_id, day)
            if close is None:
                raise DayCloseError("open", f"{day} は締められていません。未締めの日は台帳（取消・返金）で直します",
                                    f"{day} is not closed: an open day is corrected in the ledger (void, refund)")
            booked = _next_open_day(conn, self.site_id, max(self.today(), day))
            cur = conn.execute(
                "INSERT INTO day_adjustments (site, day, booked_day, close_id, kind, payment_id, account_code, method, brand,"
                " counter, amount, cash_expected, cash_counted, state_before, state_after, reason, created_by, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?, ?, ?)",
                (self.site_id, day, booked, close["id"], kind, payment_id, account_code if amount else (account_code or ""),
                 method, brand, counter, amount, cash_expected, cash_counted, reason.strip(), f"staff:{by}", now.isoformat()),
            )
            new_id = cur.lastrowid
        logger.info("adjustment %d to closed day %s by %s: %+d yen (%s), booked on %s", new_id, day, by, amount, reason, booked)
        return next(a for a in self.adjustments(day=day) if a["id"] == new_id)

    def sweep(self, day: str | None = None) -> int:
        """Record late changes the ledger did not report (payments of closed
        days changed without the hook), for ``day`` or the closed days of the
        last :data:`SWEEP_DAYS`.  Returns the number of adjustments recorded."""
        conn = self.store.conn
        if day is not None:
            closes = conn.execute("SELECT id, day FROM day_closes WHERE site = ? AND day = ?", (self.site_id, day)).fetchall()
        else:
            since = (date.fromisoformat(self.today()) - timedelta(days=SWEEP_DAYS)).isoformat()
            closes = conn.execute("SELECT id, day FROM day_closes WHERE site = ? AND day >= ?", (self.site_id, since)).fetchall()
        if not closes:
            return 0
        candidates: list[str] = []
        for c in closes:
            candidates += [r[0] for r in conn.execute(
                "SELECT p.payment_id FROM payments p WHERE p.day = ? AND NOT EXISTS (SELECT 1 FROM day_close_entries e"
                " WHERE e.close_id = ? AND e.payment_id = p.payment_id AND e.version = p.version)", (c["day"], c["id"]))]
            candidates += [r[0] for r in conn.execute(
                "SELECT DISTINCT e.payment_id FROM day_close_entries e LEFT JOIN payments p ON p.payment_id = e.payment_id"
                " WHERE e.close_id = ? AND (p.payment_id IS NULL OR p.day != ?)", (c["id"], c["day"]))]
        if not candidates:
            return 0
        with self.store.transaction() as tx:
            return len(record_late_changes(tx, self.site, self.catalog, candidates, source="central:sweep", now=self.clock()))


def _adjusted(sheet: dict, adjustments: list[dict], names: _Names) -> dict:
    """A closed day's figures after its adjustments: revenue, by account, cash."""
    by_account = {a["code"]: dict(a) for a in sheet["by_account"]}
    revenue = sheet["summary"]["revenue"]["amount"]
    expected = sheet["cash"]["expected"]
    counted = sheet["cash"]["counted"]
    for a in adjustments:
        revenue += a["amount"]
        expected += a["cash_expected"]
        counted += a["cash_counted"]
        if a["amount"]:
            row = by_account.setdefault(a["account_code"], {**names.account(a["account_code"]), "count": 0, "amount": 0})
            row["amount"] += a["amount"]
    return {
        "revenue": revenue,
        "adjustment_total": sum(a["amount"] for a in adjustments),
        "by_account": [by_account[k] for k in sorted(by_account)],
        "cash_expected": expected,
        "cash_counted": counted,
        "over_short": counted - expected,
    }


# =========================================================================== CSV

#: Columns of the detail CSV (one row per fee line of every payment of the day).
DETAIL_COLUMNS = [
    ("収納日", "day"), ("締め", "status"), ("時刻", "time"), ("窓口", "counter"), ("支払ID", "payment_id"),
    ("区分", "kind_ja"), ("状態", "state_ja"), ("計上", "counted"), ("支払方法", "method_ja"), ("ブランド", "brand_ja"),
    ("科目コード", "code"), ("科目", "name_ja"), ("歳入科目コード", "account_code"), ("歳入科目", "account"),
    ("数量", "quantity"), ("単価", "unit_price"), ("金額", "amount"), ("端末", "terminal"), ("伝票番号", "slip_no"),
    ("承認番号", "approval_no"), ("領収書番号", "receipt_no"), ("職員", "staff_id"), ("元取引ID", "original_id"),
    ("整理券", "ticket"),
]


def _csv_bytes(rows: list[list[Any]]) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerows(csv_row(row) for row in rows)
    # UTF-8 with a BOM: Excel (Japanese Windows) reads a CSV without one as Shift_JIS.
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def detail_csv(sheet: dict) -> bytes:
    """The day's payments, one row per fee line; 金額 and 数量 are signed (a
    void or refund negative) and 計上 says whether the row counts (1) — the
    sum of 金額 over 計上 = 1 is the day's revenue."""
    rows: list[list[Any]] = [[ja for ja, _ in DETAIL_COLUMNS]]
    status = "締め済" if sheet["status"] == "closed" else "未締め"
    for p in sheet["payments"]:
        sign = -1 if p["kind"] != "sale" else 1
        lines = p["lines"] or [{"code": "", "name_ja": "", "quantity": 0, "unit_price": 0, "amount": p["amount"],
                                "account_code": "", "account": ""}]
        for line in lines:
            values = {**p, **line, "day": sheet["day"], "status": status, "counted": 1 if p["counted"] else 0,
                      "quantity": sign * line["quantity"], "amount": sign * line["amount"],
                      "ticket": p["ticket"] if p["ticket"] is not None else ""}
            rows.append([values[key] for _, key in DETAIL_COLUMNS])
    return _csv_bytes(rows)


def summary_csv(sheet: dict) -> bytes:
    """The day sheet's totals: 区分, コード, 名称, 件数, 数量, 金額."""
    s = sheet["summary"]
    rows: list[list[Any]] = [["区分", "コード", "名称", "件数", "数量", "金額"]]
    rows += [["収納", "sales", "売上", s["sales"]["count"], "", s["sales"]["amount"]],
             ["収納", "voids", "取消", s["voids"]["count"], "", -s["voids"]["amount"]],
             ["収納", "refunds", "返金", s["refunds"]["count"], "", -s["refunds"]["amount"]],
             ["収納", "revenue", "差引収納額", s["revenue"]["count"], "", s["revenue"]["amount"]],
             ["処理未了", "pending", "処理未了（収納額に含まない）", s["pending"]["count"], "", s["pending"]["amount"]]]
    rows += [["歳入科目", a["code"], f"{a['kan']} {a['kou']} {a['moku']}".strip(), a["count"], "", a["amount"]] for a in sheet["by_account"]]
    rows += [["科目", i["code"], i["name_ja"], i["count"], i["quantity"], i["amount"]] for i in sheet["by_item"]]
    rows += [["支払方法", m["method"], m["name_ja"], m["count"], "", m["amount"]] for m in sheet["by_method"]]
    rows += [["ブランド", f"{b['method']}/{b['brand']}", b["name_ja"], b["count"], "", b["amount"]] for b in sheet["by_brand"]]
    rows += [["窓口", c["counter"], c["name_ja"], c["count"], "", c["amount"]] for c in sheet["by_counter"]]
    c = sheet["cash"]
    rows += [["現金", "expected", "現金収納予定額", "", "", c["expected"]]]
    if c["counted"] is not None:
        rows += [["現金", "counted", "現金実査額", "", "", c["counted"]], ["現金", "over_short", "過不足", "", "", c["over_short"]]]
    for a in sheet.get("adjustments", []):
        rows.append(["調整", str(a["id"]), a["reason"], "", "", a["amount"]])
    return _csv_bytes(rows)


# =========================================================================== Excel workbook

FONT = "ＭＳ Ｐゴシック"
YEN = "#,##0"
SIGNED = '#,##0;"△"#,##0'  # the Japanese way of writing a negative amount


def workbook_bytes(sheet: dict) -> bytes:
    """The day sheet as an Excel workbook laid out for printing: 日次処理表
    (A4 portrait, one page wide, signature boxes), 明細, 取消・返金, 処理未了
    and 調整."""
    from openpyxl import Workbook

    wb = Workbook()
    _DayWriter(wb.active, sheet).write()
    _table_sheet(wb, "明細", sheet, "収納明細", _DETAIL_HEAD, [_detail_row(p) for p in sheet["payments"]], landscape=True)
    vr = [_detail_row(p) for p in sheet["voids"] + sheet["refunds"]]
    _table_sheet(wb, "取消・返金", sheet, "取消・返金一覧", _DETAIL_HEAD, vr, landscape=True)
    _table_sheet(wb, "処理未了", sheet, "処理未了一覧（収納額に含まない）", _PENDING_HEAD,
                 [[p["time"], p["counter"], p["state_ja"], p["method_ja"], p["brand_ja"], p["items_ja"], p["amount"],
                   p["terminal"], p["staff_id"], p["rule_ja"], p["payment_id"]] for p in sheet["pending"]], landscape=True)
    adj = sheet.get("adjustments", []) + sheet.get("booked_adjustments", [])
    _table_sheet(wb, "調整", sheet, "締め後の調整", _ADJ_HEAD,
                 [[a["day"], a["booked_day"], a["local_time"], a["kind_ja"], a["account_code"], a["account"], a["amount"],
                   a["cash_expected"], a["cash_counted"], a["reason"], a["created_by"], a["payment_id"] or ""] for a in adj],
                 landscape=True)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


_DETAIL_HEAD = [("時刻", 9), ("窓口", 6), ("区分", 6), ("状態", 8), ("支払方法", 11), ("ブランド", 12), ("科目", 34),
                ("金額", 10), ("計上額", 10), ("伝票番号", 9), ("承認番号", 9), ("領収書番号", 12), ("職員", 8),
                ("支払ID", 38)]
_PENDING_HEAD = [("時刻", 9), ("窓口", 6), ("状態", 9), ("支払方法", 11), ("ブランド", 12), ("科目", 30), ("金額", 10),
                 ("端末", 10), ("職員", 8), ("扱い", 60), ("支払ID", 38)]
_ADJ_HEAD = [("収納日", 11), ("計上日", 11), ("記録日時", 16), ("種類", 12), ("歳入科目コード", 12), ("歳入科目", 12),
             ("調整額", 10), ("現金予定", 10), ("現金実査", 10), ("理由", 50), ("記録者", 16), ("支払ID", 38)]
_MONEY_HEADS = {"金額", "計上額", "調整額", "現金予定", "現金実査"}


def _detail_row(p: dict) -> list[Any]:
    return [p["time"], p["counter"], p["kind_ja"], p["state_ja"], p["method_ja"], p["brand_ja"], p["items_ja"],
            p["amount"], p["effect"], p["slip_no"], p["approval_no"], p["receipt_no"], p["staff_id"], p["payment_id"]]


def _page_setup(ws, *, landscape: bool, title_rows: str) -> None:
    ws.page_setup.paperSize = ws.PAPERSIZE_A4
    ws.page_setup.orientation = "landscape" if landscape else "portrait"
    ws.sheet_properties.pageSetUpPr.fitToPage = True
    ws.page_setup.fitToWidth = 1
    ws.page_setup.fitToHeight = 0
    ws.print_title_rows = title_rows
    ws.print_options.horizontalCentered = True
    ws.page_margins.left = ws.page_margins.right = 0.5
    ws.page_margins.top = ws.page_margins.bottom = 0.6
    ws.oddFooter.center.text = "&P / &N"
    ws.oddFooter.center.font = FONT
    ws.oddFooter.right.text = "madoguchi"


def _table_sheet(wb, name: str, sheet: dict, title: str, head: list[tuple[str, int]], rows: list[list[Any]],
                 *, landscape: bool) -> None:
    from openpyxl.styles import Alignment, Border, Font, PatternFill, Side
    from openpyxl.utils import get_column_letter

    ws = wb.create_sheet(name)
    thin = Side(style="thin", color="808080")
    ws.append([f"{title}　{sheet['site']['name_ja']}　収納日 {_wareki(sheet['day'])}（{sheet['day']}）"])
    ws["A1"].font = Font(name=FONT, size=12, bold=True)
    ws.append([h for h, _ in head])
    for i, (h, width) in enumerate(head, 1):
        cell = ws.cell(row=2, column=i)
        cell.font = Font(name=FONT, size=10, bold=True)
        cell.fill = PatternFill("solid", fgColor="D9E1F2")
        cell.border = Border(top=thin, bottom=thin, left=thin, right=thin)
        cell.alignment = Alignment(horizontal="center")
        ws.column_dimensions[get_column_letter(i)].width = width
    money = {i for i, (h, _) in enumerate(head, 1) if h in _MONEY_HEADS}
    for row in rows:
        ws.append(row)
        for cell in ws[ws.max_row]:
            keep_text(cell)
        r = ws.max_row
        for i in range(1, len(head) + 1):
            cell = ws.cell(row=r, column=i)
            cell.font = Font(name=FONT, size=10)
            cell.border = Border(bottom=Side(style="hair", color="A0A0A0"))
            if i in money:
                cell.number_format = SIGNED if h_signed(head[i - 1][0]) else YEN
    if rows:
        r = ws.max_row + 1
        ws.cell(row=r, column=1, value="合計").font = Font(name=FONT, size=10, bold=True)
        for i in money:
            col = get_column_letter(i)
            cell = ws.cell(row=r, column=i, value=f"=SUM({col}3:{col}{r - 1})")
            cell.number_format = SIGNED
            cell.font = Font(name=FONT, size=10, bold=True)
            cell.border = Border(top=Side(style="double"))
    else:
        ws.cell(row=3, column=1, value="該当なし / none").font = Font(name=FONT, size=10, color="606060")
    ws.freeze_panes = "A3"
    if rows:
        ws.auto_filter.ref = f"A2:{get_column_letter(len(head))}{ws.max_row - 1}"
    _page_setup(ws, landscape=landscape, title_rows="1:2")


def h_signed(head: str) -> bool:
    return head in {"計上額", "調整額", "現金予定", "現金実査"}


def _wareki(day: str) -> str:
    """令和 date for a 2019-05-01 or later day (what Japanese forms print)."""
    d = date.fromisoformat(day)
    if d >= date(2019, 5, 1):
        year = d.year - 2018
        return f"令和{'元' if year == 1 else year}年{d.month}月{d.day}日"
    return f"{d.year}年{d.month}月{d.day}日"


class _DayWriter:
    """The 日次処理表 sheet: columns A コード, B 名称, C 単価, D 件数, E 数量, F 金額."""

    WIDTHS = (("A", 13), ("B", 34), ("C", 9), ("D", 9), ("E", 9), ("F", 15))

    def __init__(self, ws, sheet: dict) -> None:
        from openpyxl.styles import Alignment, Border, Font, PatternFill, Side

        self.ws, self.s = ws, sheet
        self.Font, self.Alignment, self.Border, self.Side, self.PatternFill = Font, Alignment, Border, Side, PatternFill
        self.thin = Side(style="thin", color="000000")
        self.row = 1

    def font(self, size: float = 10, bold: bool = False, color: str = "000000"):
        return self.Font(name=FONT, size=size, bold=bold, color=color)

    def put(self, row: int, col: str, value: Any, *, fmt: str | None = None, bold: bool = False, size: float = 10,
            align: str | None = None, color: str = "000000", formula: bool = False):
        cell = self.ws[f"{col}{row}"]
        cell.value = value
        if not formula:  # our own totals are formulas; text from anywhere else stays text
            keep_text(cell)
        cell.font = self.font(size, bold, color)
        if fmt:
            cell.number_format = fmt
        if align:
            cell.alignment = self.Alignment(horizontal=align, vertical="center")
        return cell

    def box(self, first: str, last: str, *, fill: str | None = None) -> None:
        for row in self.ws[f"{first}:{last}"]:
            for cell in row:
                cell.border = self.Border(top=self.thin, bottom=self.thin, left=self.thin, right=self.thin)
                if fill:
                    cell.fill = self.PatternFill("solid", fgColor=fill)

    def heading(self, text: str, heads: list[tuple[str, str]]) -> None:
        self.row += 1
        self.put(self.row, "A", text, bold=True, size=11)
        self.row += 1
        for col, label in heads:
            self.put(self.row, col, label, bold=True, align="center")
        self.box(f"A{self.row}", f"F{self.row}", fill="D9E1F2")
        self.row += 1

    def total_row(self, label: str, first: int, cols: Iterable[str]) -> None:
        r = self.row
        self.put(r, "A", label, bold=True)
        self.ws.merge_cells(f"A{r}:B{r}")
        for col in cols:
            fmt = YEN if col != "F" else SIGNED
            self.put(r, col, f"=SUM({col}{first}:{col}{r - 1})", fmt=fmt, bold=True, formula=True)
        self.box(f"A{r}", f"F{r}", fill="F2F2F2")
        for col in "ABCDEF":
            c = self.ws[f"{col}{r}"]
            c.border = self.Border(top=self.Side(style="double"), bottom=self.thin, left=self.thin, right=self.thin)
        self.row += 1

    def write(self) -> None:
        ws, s = self.ws, self.s
        ws.title = "日次処理表"
        for col, width in self.WIDTHS:
            ws.column_dimensions[col].width = width
        # Title and signature boxes (決裁欄: 課長・係長・担当).
        self.put(1, "A", "日次処理表（手数料等収納）", bold=True, size=16)
        ws.merge_cells("A1:C1")
        ws.row_dimensions[1].height = 26
        for col, label in zip("DEF", ("課長", "係長", "担当")):
            self.put(1, col, label, align="center")
        self.box("D1", "F1", fill="F2F2F2")
        ws.merge_cells("D2:D4")
        ws.merge_cells("E2:E4")
        ws.merge_cells("F2:F4")
        self.box("D2", "F4")
        for r in (2, 3, 4):
            ws.row_dimensions[r].height = 18
        close = s.get("close") or {}
        info = [
            ("収納日", f"{_wareki(s['day'])}（{s['day']}）"),
            ("所属", f"{s['site']['name_ja']}"),
            ("締め", f"締め済 {close.get('closed_at_local', '')}　締め者 {close.get('closed_by', '')}"
             if s["status"] == "closed" else "未締め（速報・数値は変わることがあります）"),
        ]
        for i, (label, value) in enumerate(info, 2):
            self.put(i, "A", label, bold=True)
            self.put(i, "B", value, color="C00000" if s["status"] != "closed" and label == "締め" else "000000")
            ws.merge_cells(f"B{i}:C{i}")
        self.row = 5
        if close.get("sha256"):
            self.put(5, "A", "照合値", size=8, color="606060")
            self.put(5, "B", f"SHA-256 {close['sha256'][:32]}…", size=8, color="606060")
            ws.merge_cells("B5:F5")
        self.row = 6

        sm = s["summary"]
        self.heading("1. 収納額 Revenue", [("A", "区分"), ("B", ""), ("D", "件数"), ("F", "金額（円）")])
        for label, key, sign in (("売上", "sales", 1), ("取消（当日）", "voids", -1), ("返金", "refunds", -1)):
            r = self.row
            self.put(r, "A", label)
            self.put(r, "D", sm[key]["count"], fmt=YEN)
            self.put(r, "F", sign * sm[key]["amount"], fmt=SIGNED)
            self.box(f"A{r}", f"F{r}")
            self.row += 1
        r = self.row
        self.put(r, "A", "差引収納額", bold=True)
        self.put(r, "D", sm["revenue"]["count"], fmt=YEN, bold=True)
        self.put(r, "F", sm["revenue"]["amount"], fmt=SIGNED, bold=True, size=12)
        self.box(f"A{r}", f"F{r}", fill="FFF2CC")
        self.row += 1
        r = self.row
        self.put(r, "A", f"処理未了 {sm['pending']['count']} 件 {sm['pending']['amount']:,} 円は収納額に含みません"
                         "（結果が確定した日に計上）", size=9, color="C00000")
        ws.merge_cells(f"A{r}:F{r}")
        self.row += 1

        self.heading("2. 歳入科目別 By revenue account", [("A", "科目コード"), ("B", "款・項・目"), ("D", "件数"), ("F", "金額（円）")])
        first = self.row
        for a in s["by_account"]:
            r = self.row
            self.put(r, "A", a["code"])
            self.put(r, "B", f"{a['kan']} {a['kou']} {a['moku']}".strip())
            ws.merge_cells(f"B{r}:C{r}")
            self.put(r, "D", a["count"], fmt=YEN)
            self.put(r, "F", a["amount"], fmt=SIGNED)
            self.box(f"A{r}", f"F{r}")
            self.row += 1
        self.total_row("計", first, "DF")

        self.heading("3. 科目別 By fee item", [("A", "コード"), ("B", "科目"), ("C", "単価"), ("D", "件数"), ("E", "数量"), ("F", "金額（円）")])
        first = self.row
        for i in s["by_item"]:
            r = self.row
            self.put(r, "A", i["code"], size=8)
            self.put(r, "B", i["name_ja"])
            self.put(r, "C", i["unit_price"], fmt=YEN)
            self.put(r, "D", i["count"], fmt=YEN)
            self.put(r, "E", i["quantity"], fmt=YEN)
            self.put(r, "F", i["amount"], fmt=SIGNED)
            self.box(f"A{r}", f"F{r}")
            self.row += 1
        self.total_row("計", first, "DEF")

        self.heading("4. 支払方法・ブランド別 By method and brand", [("A", "支払方法"), ("B", "ブランド"), ("D", "件数"), ("F", "金額（円）")])
        first_rows = []
        for m in s["by_method"]:
            r = self.row
            first_rows.append(r)
            self.put(r, "A", m["name_ja"], bold=True)
            self.put(r, "B", "（計）", bold=True)
            self.put(r, "D", m["count"], fmt=YEN, bold=True)
            self.put(r, "F", m["amount"], fmt=SIGNED, bold=True)
            self.box(f"A{r}", f"F{r}", fill="F7F7F7")
            self.row += 1
            for b in (b for b in s["by_brand"] if b["method"] == m["method"]):
                r = self.row
                self.put(r, "B", f"　{b['name_ja']}")
                self.put(r, "D", b["count"], fmt=YEN)
                self.put(r, "F", b["amount"], fmt=SIGNED)
                self.box(f"A{r}", f"F{r}")
                self.row += 1
        r = self.row
        self.put(r, "A", "計", bold=True)
        ws.merge_cells(f"A{r}:B{r}")
        self.put(r, "D", "=" + "+".join(f"D{x}" for x in first_rows) if first_rows else 0, fmt=YEN, bold=True,
                 formula=True)
        self.put(r, "F", "=" + "+".join(f"F{x}" for x in first_rows) if first_rows else 0, fmt=SIGNED, bold=True,
                 formula=True)
        self.box(f"A{r}", f"F{r}", fill="F2F2F2")
        self.row += 1

        self.heading("5. 窓口別 By counter", [("A", "窓口"), ("B", "名称"), ("D", "件数"), ("E", ""), ("F", "金額（円）")])
        first = self.row
        for c in s["by_counter"]:
            r = self.row
            self.put(r, "A", c["counter"])
            self.put(r, "B", f"{c['name_ja']}（うち現金 {c['cash']:,} 円）")
            ws.merge_cells(f"B{r}:C{r}")
            self.put(r, "D", c["count"], fmt=YEN)
            self.put(r, "F", c["amount"], fmt=SIGNED)
            self.box(f"A{r}", f"F{r}")
            self.row += 1
        self.total_row("計", first, "DF")

        cash = s["cash"]
        self.heading("6. 現金 Cash", [("A", "項目"), ("B", ""), ("F", "金額（円）")])
        items = [("現金売上", cash["sales"], False), ("現金取消", -cash["voids"], False), ("現金返金", -cash["refunds"], False),
                 ("現金収納予定額（売上−取消−返金）", cash["expected"], True)]
        if cash["counted"] is not None:
            items += [("現金実査額", cash["counted"], True), ("過不足（実査−予定）", cash["over_short"], True)]
        else:
            items += [("現金実査額", None, True), ("過不足（実査−予定）", None, True)]
        for label, value, bold in items:
            r = self.row
            self.put(r, "A", label, bold=bold)
            ws.merge_cells(f"A{r}:C{r}")
            self.put(r, "F", value, fmt=SIGNED, bold=bold, color="C00000" if label.startswith("過不足") and value else "000000")
            self.box(f"A{r}", f"F{r}", fill="FFF2CC" if label.startswith("過不足") else None)
            self.row += 1
        if cash["denominations"]:
            self.row += 1
            r = self.row
            for col, label in (("A", "金種"), ("B", ""), ("D", "枚数"), ("F", "金額（円）")):
                self.put(r, col, label, bold=True, align="center")
            self.box(f"A{r}", f"F{r}", fill="D9E1F2")
            self.row += 1
            first = self.row
            for d in cash["denominations"]:
                r = self.row
                self.put(r, "A", f"{d['yen']:,} 円")
                self.put(r, "D", d["pieces"], fmt=YEN)
                self.put(r, "F", d["amount"], fmt=YEN)
                self.box(f"A{r}", f"F{r}")
                self.row += 1
            self.total_row("現金在高", first, "F")
            r = self.row
            self.put(r, "A", "釣銭準備金（控除）")
            ws.merge_cells(f"A{r}:C{r}")
            self.put(r, "F", -cash["change_fund"], fmt=SIGNED)
            self.box(f"A{r}", f"F{r}")
            self.row += 1

        adjustments = s.get("adjustments") or []
        booked = s.get("booked_adjustments") or []
        if adjustments or booked or s["status"] == "closed":
            self.heading("7. 締め後の調整 Adjustments", [("A", "収納日"), ("B", "理由"), ("D", "種類"), ("F", "調整額（円）")])
            for a in adjustments + booked:
                r = self.row
                self.put(r, "A", a["day"])
                self.put(r, "B", a["reason"][:60], size=8)
                ws.merge_cells(f"B{r}:C{r}")
                self.put(r, "D", a["kind_ja"], size=8)
                ws.merge_cells(f"D{r}:E{r}")
                self.put(r, "F", a["amount"], fmt=SIGNED)
                self.box(f"A{r}", f"F{r}")
                self.row += 1
            if not adjustments and not booked:
                self.put(self.row, "A", "なし / none", color="606060")
                self.row += 1
            adj = s.get("adjusted")
            if adj:
                r = self.row
                self.put(r, "A", "調整後収納額", bold=True)
                ws.merge_cells(f"A{r}:C{r}")
                self.put(r, "F", adj["revenue"], fmt=SIGNED, bold=True)
                self.box(f"A{r}", f"F{r}", fill="FFF2CC")
                self.row += 1
                r = self.row
                self.put(r, "A", "調整後過不足", bold=True)
                ws.merge_cells(f"A{r}:C{r}")
                self.put(r, "F", adj["over_short"], fmt=SIGNED, bold=True)
                self.box(f"A{r}", f"F{r}")
                self.row += 1
        self.row += 1
        self.put(self.row, "A", f"作成 madoguchi {s['generated_at'][:19].replace('T', ' ')} UTC　"
                                f"明細 {len(s['payments'])} 件（明細シート）", size=8, color="606060")
        ws.merge_cells(f"A{self.row}:F{self.row}")
        _page_setup(ws, landscape=False, title_rows="1:1")
        ws.print_area = f"A1:F{self.row}"
