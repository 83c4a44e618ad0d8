"""Monthly reconciliation: the ledger's cashless payments against the payment
agent's statement (design §6, docs/reconciliation.md).

* :func:`match` pairs ledger transactions with statement lines, one-to-one
  and deterministically, by the design's keys in order: the agent's
  transaction id; (terminal, slip no, approval no); (terminal, brand, amount,
  time ± 5 min).  Never by amount alone.
* :class:`Reconciler` runs it for a month against the current statement(s),
  checks amounts and settlement fees, files exceptions in buckets (stable
  across runs, with an age and an append-only history of notes) and keeps the
  audit log.  :meth:`Reconciler.report` is what the CLI, the page and the
  JSON API show.

Revenue is dated on the transaction date (収納日): the month of a payment is
the month of its ledger ``day``, never of the deposit.
"""

from __future__ import annotations

import bisect
import csv
import html
import io
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bus.models import utcnow
from central.exports import csv_row
from central.statement import TYPE_JA, audit, check_month
from central.store import Store

logger = logging.getLogger(__name__)

#: Key 3's window: the terminal's clock and the agent's may differ a little.
TIME_WINDOW_S = 300
#: Key 2 (terminal, slip, approval) only within a day: slip numbers restart
#: after the terminal's day close, and a 6-digit approval number can repeat in
#: a month of 100,000 transactions.
SLIP_WINDOW_S = 86_400
ESCALATE_DAYS = 30
DEADLINE_DAYS = 55

BUCKETS: dict[str, tuple[str, str]] = {
    "ledger_only": ("台帳のみ（明細にない）", "in the ledger, not on the statement"),
    "statement_only": ("明細のみ（台帳にない）", "on the statement, not in the ledger"),
    "amount_mismatch": ("金額相違", "amount differs"),
    "fee_mismatch": ("手数料相違", "fee differs from the contract"),
    "duplicate": ("重複", "settled twice"),
    "void_present": ("取消済みが明細にある", "a same-day void on the statement"),
    "refund_original": ("返品の元取引相違", "refund points to another original"),
    "unknown_settled": ("処理未了だが精算済み", "unknown in the ledger, settled by the agent"),
    "pending_emoney": ("電子マネー処理未了", "pending e-money (処理未了)"),
}

#: The ledger rows a month's statement is checked against.
_LEDGER_SQL = (
    "SELECT payment_id, kind, original_id, state, method, brand, amount, terminal_id, slip_no, approval_no, "
    "txn_at, day, counter, agent_txn_id FROM payments WHERE day >= ? AND day < ? AND method != 'cash' AND ("
    "(kind = 'sale' AND state IN ('approved', 'refunded', 'voided', 'unknown')) OR "
    "(kind IN ('refund', 'void') AND state = 'approved'))"
)


class ReconcileError(Exception):
    """A reconciliation request that cannot be carried out (no statement, unknown exception ...)."""


# ============================================================== matching


@dataclass(frozen=True)
class LedgerTxn:
    payment_id: str
    kind: str  # sale | refund | void
    state: str
    method: str
    brand: str | None
    amount: int
    terminal_id: str | None
    slip_no: str | None
    approval_no: str | None
    txn_at: datetime | None
    day: str
    original_id: str | None = None
    agent_txn_id: str | None = None
    counter: str = ""


@dataclass(frozen=True)
class Line:
    id: int
    source: str
    line_no: int
    agent_txn_id: str
    txn_at: datetime
    terminal_id: str
    slip_no: str | None
    approval_no: str | None
    brand: str
    brand_name: str
    type: str
    gross: int
    fee: int
    net: int
    original_agent_txn_id: str | None = None
    deposit_date: str = ""
    import_id: int = 0


@dataclass(frozen=True)
class Match:
    payment_id: str
    line_id: int
    key: str  # agent_txn_id | slip | time
    seconds_apart: int


def _norm(value: str | None) -> str:
    """Slip and approval numbers as keys: '00123' on the statement is 123 on the slip."""
    if not value:
        return ""
    value = value.strip().upper()
    return value.lstrip("0") or "0" if value.isdigit() else value


def match(
    ledger: Iterable[LedgerTxn],
    lines: Iterable[Line],
    *,
    agent_ids: dict[str, str] | None = None,
    window_s: int = TIME_WINDOW_S,
) -> list[Match]:
    """Pair ledger transactions with statement lines, one-to-one.

    Keys, in order, each over everything the earlier keys left unmatched:

    1. the agent's transaction id — the ledger's own (``agent_txn_id``) or
       ``agent_ids`` (agent id → payment id, learned in earlier runs);
    2. (terminal, slip no, approval no), within a day (:data:`SLIP_WINDOW_S`);
       a missing approval number must be missing on both sides;
    3. (terminal, brand, amount) with the times at most ``window_s`` apart.

    The kind must agree (売上 ↔ sale, 返品 ↔ refund, 取消 ↔ void).  Within
    keys 2 and 3 every possible pair of the month is ranked — nearest in time
    first, then the lowest line id, then the lowest payment id — and taken in
    that order unless one side is already matched: one-to-one, and the result
    does not depend on the order of the input.  Never by amount alone.
    """
    txns = {t.payment_id: t for t in ledger}
    todo = sorted(lines, key=lambda x: (x.txn_at, x.id))
    # Whole seconds since the epoch, computed once (this loop runs 100,000s of times).
    t_at = {pid: int(t.txn_at.timestamp()) for pid, t in txns.items() if t.txn_at}
    x_at = {x.id: int(x.txn_at.timestamp()) for x in todo}
    taken: set[str] = set()
    done: set[int] = set()
    out: list[Match] = []
    far = 10**9

    def take(pid: str, line_id: int, key: str) -> None:
        taken.add(pid)
        done.add(line_id)
        out.append(Match(pid, line_id, key, abs(t_at[pid] - x_at[line_id]) if pid in t_at else far))

    # 1. agent transaction id
    by_agent: dict[str, str] = {}
    for agent, pid in (agent_ids or {}).items():
        if pid in txns:
            by_agent[agent] = pid
    for t in txns.values():
        if t.agent_txn_id:
            by_agent[t.agent_txn_id] = t.payment_id
    for x in todo:
        pid = by_agent.get(x.agent_txn_id)
        if pid is not None and pid not in taken and txns[pid].kind == x.type:
            take(pid, x.id, "agent_txn_id")

    def greedy(edges: list[tuple[int, int, str]], key: str) -> None:
        # Nearest first over the whole month, then the lowest line id, then
        # the lowest payment id: one global order, so no line takes a payment
        # that is nearer to another line just because it came first.
        edges.sort()
        for _, line_id, pid in edges:
            if line_id not in done and pid not in taken:
                take(pid, line_id, key)

    # 2. (terminal, slip, approval)
    by_slip: dict[tuple, list[str]] = defaultdict(list)
    for t in txns.values():
        if t.payment_id not in taken and t.terminal_id and t.slip_no and t.txn_at:
            by_slip[(t.kind, _norm(t.terminal_id), _norm(t.slip_no), _norm(t.approval_no))].append(t.payment_id)
    edges: list[tuple[int, int, str]] = []
    for x in todo:
        if x.id in done or not x.slip_no:
            continue
        at = x_at[x.id]
        for pid in by_slip.get((x.type, _norm(x.terminal_id), _norm(x.slip_no), _norm(x.approval_no)), ()):
            if pid not in taken and (d := abs(t_at[pid] - at)) <= SLIP_WINDOW_S:
                edges.append((d, x.id, pid))
    greedy(edges, "slip")

    # 3. (terminal, brand, amount, time ± window)
    by_amount: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for t in txns.values():
        if t.payment_id not in taken and t.terminal_id and t.txn_at:
            by_amount[(t.kind, _norm(t.terminal_id), t.brand, t.amount)].append((t_at[t.payment_id], t.payment_id))
    for bucket in by_amount.values():
        bucket.sort()
    edges = []
    for x in todo:
        if x.id in done:
            continue
        bucket = by_amount.get((x.type, _norm(x.terminal_id), x.brand, x.gross))
        if not bucket:
            continue
        at = x_at[x.id]
        lo = bisect.bisect_left(bucket, (at - window_s, ""))
        hi = bisect.bisect_right(bucket, (at + window_s, "\uffff"))
        # Key 3 is for a side without slip numbers (a stand-alone terminal):
        # two known, different slips are two different transactions, however
        # close in time and amount — never paired by amount and time.
        edges.extend((abs(ts - at), x.id, pid) for ts, pid in bucket[lo:hi]
                     if pid not in taken and not _slips_conflict(txns[pid], x))
    greedy(edges, "time")
    return out


def _slips_conflict(t: LedgerTxn, x: Line) -> bool:
    """Both sides carry a slip number and they differ (or the approvals do)."""
    if t.slip_no and x.slip_no and _norm(t.slip_no) != _norm(x.slip_no):
        return True
    return bool(t.approval_no and x.approval_no and _norm(t.approval_no) != _norm(x.approval_no))


# ============================================================== the month


@dataclass
class Finding:
    """An exception as one match run finds it (before it is stored)."""

    ident: str
    bucket: str
    amount: int
    txn_day: str
    detail: str
    payment_id: str | None = None
    line_id: int | None = None
    brand: str | None = None
    deadline_days: int | None = None


@dataclass(frozen=True)
class RunResult:
    run_id: int
    month: str
    matched: int
    ledger_count: int
    line_count: int
    exceptions: dict[str, int]
    summary: dict[str, Any]


def _lines_of(rows) -> list[Line]:
    return [
        Line(id=r["id"], source=r["source"], line_no=r["line_no"], agent_txn_id=r["agent_txn_id"],
             txn_at=datetime.fromisoformat(r["txn_at"]), terminal_id=r["terminal_id"], slip_no=r["slip_no"],
             approval_no=r["approval_no"], brand=r["brand"], brand_name=r["brand_name"], type=r["type"],
             gross=r["gross"], fee=r["fee"], net=r["net"], original_agent_txn_id=r["original_agent_txn_id"],
             deposit_date=r["deposit_date"], import_id=r["import_id"])
        for r in rows
    ]


class Reconciler:
    """Reconciliation of one site's ledger with the agent's statements.

    ``today`` (a callable returning the site-local date) ages exceptions;
    ``fee_scope`` says where the contract rounds the fee: ``"transaction"``
    (each line's fee rounded, the default) or ``"month"`` (the month's gross
    per category, rounded once).
    """

    def __init__(
        self,
        store: Store,
        site: Any,
        catalog: Any,
        *,
        today: Callable[[], date] | None = None,
        fee_scope: str = "transaction",
    ) -> None:
        if fee_scope not in ("transaction", "month"):
            raise ValueError("fee_scope is 'transaction' or 'month'")
        self.store = store
        self.site = site
        self.catalog = catalog
        self.zone = ZoneInfo(site.site.timezone)
        self.fee_scope = fee_scope
        self._today = today or (lambda: datetime.now(self.zone).date())

    def today(self) -> date:
        return self._today()

    # ------------------------------------------------------------ inputs
    def current_imports(self, month: str) -> list[dict[str, Any]]:
        """The month's statement of each source: its newest import."""
        rows = self.store.conn.execute(
            "SELECT * FROM statement_imports s WHERE month = ? AND id = "
            "(SELECT MAX(id) FROM statement_imports WHERE source = s.source AND month = s.month) ORDER BY source",
            (month,),
        ).fetchall()
        return [dict(r) for r in rows]

    def imports(self, month: str | None = None) -> list[dict[str, Any]]:
        """Every import (of ``month``), superseded ones too, newest first."""
        sql = "SELECT * FROM statement_imports" + (" WHERE month = ?" if month else "") + " ORDER BY id DESC"
        return [dict(r) for r in self.store.conn.execute(sql, (month,) if month else ())]

    def ledger_txns(self, month: str, lines: list[Line] | None = None) -> list[LedgerTxn]:
        """The ledger side of a month: its payments, less those a later
        month's statement settled (late settlements), plus the earlier
        payments this month's statement may settle late — those no other
        month's latest run matched, back to the earliest line's date."""
        start, end = check_month(month)
        rows = self.store.conn.execute(_LEDGER_SQL, (start.isoformat(), end.isoformat())).fetchall()
        claimed = self._matched_elsewhere(month)
        rows = [r for r in rows if r["payment_id"] not in claimed]
        if lines:
            earliest = min(x.txn_at.astimezone(self.zone).date() for x in lines)
            if earliest < start:
                earlier = self.store.conn.execute(_LEDGER_SQL, (earliest.isoformat(), start.isoformat())).fetchall()
                rows += [r for r in earlier if r["payment_id"] not in claimed]
        return [
            LedgerTxn(payment_id=r["payment_id"], kind=r["kind"], state=r["state"], method=r["method"], brand=r["brand"],
                      amount=r["amount"], terminal_id=r["terminal_id"], slip_no=r["slip_no"], approval_no=r["approval_no"],
                      txn_at=datetime.fromisoformat(r["txn_at"]) if r["txn_at"] else None, day=r["day"],
                      original_id=r["original_id"], agent_txn_id=r["agent_txn_id"], counter=r["counter"])
            for r in rows
        ]

    def statement_lines(self, month: str) -> list[Line]:
        """The lines of the month's current statement(s)."""
        ids = [i["id"] for i in self.current_imports(month)]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        return _lines_of(self.store.conn.execute(
            f"SELECT l.*, s.source FROM statement_lines l JOIN statement_imports s ON s.id = l.import_id "
            f"WHERE l.import_id IN ({marks}) ORDER BY l.id", ids,
        ))

    def _latest_runs(self, exclude_month: str | None = None) -> list[int]:
        rows = self.store.conn.execute(
            "SELECT MAX(id) AS id, month FROM match_runs GROUP BY month"
        ).fetchall()
        return [r["id"] for r in rows if r["month"] != exclude_month]

    def _matched_elsewhere(self, month: str) -> set[str]:
        """Payments matched in the latest run of another month."""
        runs = self._latest_runs(exclude_month=month)
        if not runs:
            return set()
        marks = ",".join("?" * len(runs))
        rows = self.store.conn.execute(f"SELECT payment_id FROM matches WHERE run_id IN ({marks})", runs)
        return {r[0] for r in rows}

    def _learned_agent_ids(self, month: str) -> dict[str, str]:
        """agent id → payment id, from the latest run of every other month
        (a refund this month pointing to a sale settled last month)."""
        runs = self._latest_runs(exclude_month=month)
        if not runs:
            return {}
        marks = ",".join("?" * len(runs))
        rows = self.store.conn.execute(
            f"SELECT l.agent_txn_id, m.payment_id FROM matches m JOIN statement_lines l ON l.id = m.line_id "
            f"WHERE m.run_id IN ({marks})", runs,
        )
        return {r[0]: r[1] for r in rows}

    # ------------------------------------------------------------ the run
    def run(self, month: str, *, actor: str = "cli") -> RunResult:
        """Match the month's ledger against its current statement(s), check
        amounts and fees, file the exceptions, log the run.  Raises
        :class:`ReconcileError` when no statement of the month was imported."""
        check_month(month)
        imports = self.current_imports(month)
        if not imports:
            raise ReconcileError(f"no statement imported for {month}: import the agent's file first")
        ids = [i["id"] for i in imports]
        lines = self.statement_lines(month)
        txns = self.ledger_txns(month, lines)
        learned = self._learned_agent_ids(month)
        pairs = match(txns, lines, agent_ids=learned)
        findings, summary = self._check(month, txns, lines, pairs, learned, imports)
        with self.store.transaction() as tx:
            run_id = tx.execute(
                "INSERT INTO match_runs (month, at, actor, import_ids, fee_scope, ledger_count, line_count, "
                "matched_count, exception_count, summary) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (month, utcnow().isoformat(), actor[:40], json.dumps(ids), self.fee_scope, len(txns), len(lines),
                 len(pairs), len(findings), json.dumps(summary, ensure_ascii=False)),
            ).lastrowid
            tx.executemany(
                "INSERT INTO matches (run_id, payment_id, line_id, match_key, seconds_apart) VALUES (?, ?, ?, ?, ?)",
                [(run_id, m.payment_id, m.line_id, m.key, m.seconds_apart) for m in pairs],
            )
            self._store_findings(tx, month, run_id, findings, actor)
            counts = Counter(f.bucket for f in findings)
            audit(tx, actor, "match", month,
                  f"run #{run_id}: imports {ids}, ledger {len(txns)}, lines {len(lines)}, matched {len(pairs)}, "
                  f"exceptions {dict(sorted(counts.items()))}")
        logger.info("reconcile %s: run #%d matched %d of %d ledger / %d lines, %d exception(s)",
                    month, run_id, len(pairs), len(txns), len(lines), len(findings))
        return RunResult(run_id, month, len(pairs), len(txns), len(lines), dict(counts), summary)

    def _category(self, brand: str | None) -> str | None:
        b = self.catalog.brands.get(brand) if brand else None
        return b.fee_category if b else None

    def _check(self, month, txns: list[LedgerTxn], lines: list[Line], pairs: list[Match], learned, imports):
        by_pid = {t.payment_id: t for t in txns}
        by_line = {x.id: x for x in lines}
        line_of = {m.payment_id: by_line[m.line_id] for m in pairs}
        matched_lines = {m.line_id for m in pairs}
        agent_to_pid = dict(learned)
        agent_to_pid.update({by_line[m.line_id].agent_txn_id: m.payment_id for m in pairs})
        settlement = self.catalog.settlement
        found: dict[str, Finding] = {}

        def add(f: Finding) -> None:
            if f.ident in found:
                found[f.ident].detail += "; " + f.detail
            else:
                found[f.ident] = f

        def where(x: Line) -> str:
            return f"{x.source} line {x.line_no}, 取引ID {x.agent_txn_id}"

        # matched pairs
        for m in pairs:
            t, x = by_pid[m.payment_id], by_line[m.line_id]
            if t.kind == "void" or (t.kind == "sale" and t.state == "voided"):
                sale = t.original_id if t.kind == "void" else t.payment_id
                sale_amount = by_pid[sale].amount if sale in by_pid else t.amount
                add(Finding(f"void_present:{sale}", "void_present", sale_amount, t.day,
                            f"当日取消した取引が明細にあります / voided the same day, yet on the statement "
                            f"({TYPE_JA[x.type]}, {where(x)})", payment_id=sale, line_id=x.id, brand=t.brand))
                continue
            if t.state == "unknown":
                add(Finding(f"unknown_settled:{t.payment_id}", "unknown_settled", x.gross, t.day,
                            f"台帳は処理未了、代行会社は精算済み: 支払済として確定してください / unknown in the ledger, "
                            f"settled by the agent ({where(x)}): resolve the payment as paid",
                            payment_id=t.payment_id, line_id=x.id, brand=t.brand))
            if x.gross != t.amount:
                add(Finding(f"amount_mismatch:{t.payment_id}", "amount_mismatch", x.gross - t.amount, t.day,
                            f"台帳 {t.amount:,} 円 / 明細 {x.gross:,} 円 ({where(x)}, key {m.key})",
                            payment_id=t.payment_id, line_id=x.id, brand=t.brand))
            if t.kind == "refund" and x.original_agent_txn_id:
                points_to = agent_to_pid.get(x.original_agent_txn_id)
                if points_to is not None and points_to != t.original_id:
                    add(Finding(f"refund_original:{t.payment_id}", "refund_original", x.gross, t.day,
                                f"明細の元取引 {x.original_agent_txn_id} は台帳の元取引と別の支払いです / the statement's "
                                f"original is payment {points_to}, the ledger's is {t.original_id} ({where(x)})",
                                payment_id=t.payment_id, line_id=x.id, brand=t.brand))

        # unmatched ledger
        voids_absent = 0
        unknown_other = 0
        for t in txns:
            if t.payment_id in line_of:
                continue
            if t.kind == "void" or t.state == "voided":
                voids_absent += 1
            elif t.state == "unknown":
                if t.method == "emoney":
                    brand = self.catalog.brands.get(t.brand) if t.brand else None
                    deadline = (brand.investigate_days if brand and brand.investigate_days else DEADLINE_DAYS)
                    note = brand.unknown_note_ja if brand else ""
                    add(Finding(f"pending_emoney:{t.payment_id}", "pending_emoney", t.amount, t.day,
                                f"電子マネー処理未了（{t.counter}番窓口, 端末 {t.terminal_id or '-'}）{note}",
                                payment_id=t.payment_id, brand=t.brand, deadline_days=deadline))
                else:
                    unknown_other += 1
            else:
                what = "返品" if t.kind == "refund" else "売上"
                add(Finding(f"ledger_only:{t.payment_id}", "ledger_only", t.amount, t.day,
                            f"{what} {t.amount:,} 円 ({t.counter}番窓口, 端末 {t.terminal_id or '-'}, 伝票 {t.slip_no or '-'}, "
                            f"{t.txn_at.astimezone(self.zone).strftime('%m/%d %H:%M') if t.txn_at else '-'})",
                            payment_id=t.payment_id, brand=t.brand))

        # unmatched lines: duplicates or statement-only
        elsewhere = self._agent_ids_elsewhere([x for x in lines if x.id not in matched_lines], imports)
        seen_key: dict[tuple, Line] = {}
        for x in sorted(lines, key=lambda x: (x.id not in matched_lines, x.txn_at, x.id)):
            # Slip numbers restart every day: a duplicate is the same slip on the same day.
            key = (x.type, _norm(x.terminal_id), _norm(x.slip_no), _norm(x.approval_no), x.gross,
                   x.txn_at.astimezone(self.zone).date())
            first = seen_key.setdefault(key, x) if x.slip_no else x
            if x.id in matched_lines:
                continue
            day = x.txn_at.date().isoformat()
            if first is not x:
                add(Finding(f"duplicate:{x.source}:{x.agent_txn_id}", "duplicate", x.gross, day,
                            f"{where(x)} は {first.agent_txn_id}（line {first.line_no}）と同じ取引です / "
                            f"the same terminal, slip, approval and amount as line {first.line_no}",
                            line_id=x.id, brand=x.brand))
            elif x.agent_txn_id in elsewhere:
                add(Finding(f"duplicate:{x.source}:{x.agent_txn_id}", "duplicate", x.gross, day,
                            f"{where(x)} は {elsewhere[x.agent_txn_id]} にもあります / also on {elsewhere[x.agent_txn_id]}",
                            line_id=x.id, brand=x.brand))
            else:
                extra = f", 元取引 {x.original_agent_txn_id}" if x.original_agent_txn_id else ""
                add(Finding(f"statement_only:{x.source}:{x.agent_txn_id}", "statement_only", x.gross, day,
                            f"{TYPE_JA[x.type]} {x.gross:,} 円 {x.brand_name} 端末 {x.terminal_id} 伝票 {x.slip_no or '-'} "
                            f"{x.txn_at.strftime('%m/%d %H:%M')} ({where(x)}{extra})", line_id=x.id, brand=x.brand))

        # fees
        fees: dict[str, dict[str, int]] = {}
        sign = {"sale": 1, "refund": -1, "void": -1}
        month_gross: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for x in lines:
            cat = self._category(x.brand) or "?"
            row = fees.setdefault(cat, {"count": 0, "gross": 0, "expected": 0, "statement": 0, "net": 0})
            s = sign[x.type]
            row["count"] += 1
            row["gross"] += s * x.gross
            row["statement"] += s * x.fee
            row["net"] += s * x.net
            if cat == "?":
                continue
            if self.fee_scope == "transaction":
                expected = settlement.fee(x.gross, cat)
                row["expected"] += s * expected
                if expected != x.fee:
                    add(Finding(f"fee_mismatch:{x.source}:{x.agent_txn_id}", "fee_mismatch", x.fee - expected,
                                x.txn_at.date().isoformat(),
                                f"手数料 明細 {x.fee} 円 / 契約 {expected} 円 ({x.gross:,} 円 × {settlement.rates[cat]} "
                                f"{settlement.rounding}; {where(x)})", line_id=x.id, brand=x.brand))
            else:
                month_gross[cat][0 if s > 0 else 1] += x.gross
        if self.fee_scope == "month":
            last_day = (check_month(month)[1] - timedelta(days=1)).isoformat()
            for cat, (plus, minus) in month_gross.items():
                row = fees[cat]
                row["expected"] = settlement.fee(plus, cat) - settlement.fee(minus, cat)
                if row["expected"] != row["statement"]:
                    add(Finding(f"fee_mismatch:month:{cat}", "fee_mismatch", row["statement"] - row["expected"],
                                last_day, f"{cat}: 手数料 明細 {row['statement']} 円 / 契約 {row['expected']} 円 "
                                f"(月合計 {plus - minus:,} 円 × {settlement.rates[cat]} {settlement.rounding})"))
        for row in fees.values():
            row["variance"] = row["statement"] - row["expected"]
        total = {k: sum(r[k] for r in fees.values()) for k in ("count", "gross", "expected", "statement", "net", "variance")}

        def tally(items: Iterable[int]) -> dict[str, int]:
            items = list(items)
            return {"count": len(items), "amount": sum(items)}

        summary = {
            "month": month,
            "fee_scope": self.fee_scope,
            "rounding": settlement.rounding,
            "rates": {k: str(v) for k, v in settlement.rates.items()},
            "imports": [{k: i[k] for k in ("id", "source", "filename", "encoding", "sha256", "line_count", "imported_at",
                                           "supersedes")} for i in imports],
            "ledger": {
                "sales": tally(t.amount for t in txns if t.kind == "sale" and t.state in ("approved", "refunded")),
                "refunds": tally(t.amount for t in txns if t.kind == "refund"),
                "voided_sales": tally(t.amount for t in txns if t.kind == "sale" and t.state == "voided"),
                "unknown": tally(t.amount for t in txns if t.state == "unknown"),
                "voids_absent": voids_absent,
                "unknown_not_emoney": unknown_other,
            },
            "statement": {
                "sales": tally(x.gross for x in lines if x.type == "sale"),
                "refunds": tally(x.gross for x in lines if x.type == "refund"),
                "voids": tally(x.gross for x in lines if x.type == "void"),
                "deposit_dates": sorted({x.deposit_date for x in lines}),
            },
            "matched": {**tally(by_line[m.line_id].gross for m in pairs),
                        "by_key": dict(Counter(m.key for m in pairs))},
            "fees": {**{k: fees[k] for k in sorted(fees)}, "total": total},
            # The books: gross revenue and the fee as an expenditure, never netted.
            "gross_revenue": total["gross"],
            "kokin_furikae": total["statement"],
            "net_deposit": total["net"],
        }
        return list(found.values()), summary

    def _agent_ids_elsewhere(self, lines: list[Line], imports) -> dict[str, str]:
        """Agent ids of these lines that are also on another current statement
        (another month, or another source)."""
        if not lines:
            return {}
        mine = {i["id"] for i in imports}
        current = self.store.conn.execute(
            "SELECT id, source, month FROM statement_imports s WHERE id = "
            "(SELECT MAX(id) FROM statement_imports WHERE source = s.source AND month = s.month)"
        ).fetchall()
        others = {r["id"]: f"{r['source']} {r['month']}" for r in current if r["id"] not in mine}
        if not others:
            return {}
        wanted = {x.agent_txn_id for x in lines}
        out: dict[str, str] = {}
        marks = ",".join("?" * len(others))
        for r in self.store.conn.execute(
            f"SELECT agent_txn_id, import_id FROM statement_lines WHERE import_id IN ({marks})", list(others)
        ):
            if r[0] in wanted:
                out.setdefault(r[0], others[r[1]])
        return out

    def _store_findings(self, tx, month: str, run_id: int, findings: list[Finding], actor: str) -> None:
        now = utcnow().isoformat()
        existing = {r["ident"]: r for r in tx.execute(
            "SELECT e.id, e.ident, e.status, (SELECT action FROM recon_exception_notes n WHERE n.exception_id = e.id "
            "ORDER BY n.id DESC LIMIT 1) AS last_action FROM recon_exceptions e WHERE month = ?", (month,))}
        who = f"match #{run_id}"
        notes: list[tuple] = []
        for f in findings:
            old = existing.pop(f.ident, None)
            if old is None:
                eid = tx.execute(
                    "INSERT INTO recon_exceptions (month, ident, bucket, payment_id, line_id, brand, amount, txn_day, "
                    "deadline_days, detail, status, first_run, last_run, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?)",
                    (month, f.ident, f.bucket, f.payment_id, f.line_id, f.brand, f.amount, f.txn_day, f.deadline_days,
                     f.detail[:2000], run_id, run_id, now),
                ).lastrowid
                notes.append((eid, now, who, "opened", f.detail[:500]))
                continue
            status = old["status"]
            if status == "resolved" and old["last_action"] == "gone":
                status = "open"  # it had gone away by itself, and is back
                notes.append((old["id"], now, who, "back", "found again"))
            tx.execute(
                "UPDATE recon_exceptions SET status = ?, amount = ?, detail = ?, line_id = ?, brand = ?, deadline_days = ?, "
                "last_run = ? WHERE id = ?",
                (status, f.amount, f.detail[:2000], f.line_id, f.brand, f.deadline_days, run_id, old["id"]),
            )
        for old in existing.values():
            if old["status"] == "open":
                tx.execute("UPDATE recon_exceptions SET status = 'resolved' WHERE id = ?", (old["id"],))
                notes.append((old["id"], now, who, "gone",
                              "この照合では見つかりません（明細の差し替え・台帳の確定など）/ no longer found by this run"))
        tx.executemany(
            "INSERT INTO recon_exception_notes (exception_id, at, actor, action, note) VALUES (?, ?, ?, ?, ?)", notes
        )

    # ------------------------------------------------------------ exceptions
    def exceptions(self, *, month: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        """Exceptions with their age (days since the transaction date),
        escalation level and history, oldest first."""
        where, args = [], []
        if month:
            where.append("month = ?")
            args.append(month)
        if open_only:
            where.append("status = 'open'")
        sql = "SELECT * FROM recon_exceptions" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY txn_day, id"
        rows = [dict(r) for r in self.store.conn.execute(sql, args)]
        if not rows:
            return []
        history: dict[int, list[dict]] = defaultdict(list)
        ids = [r["id"] for r in rows]
        for chunk in range(0, len(ids), 500):
            part = ids[chunk: chunk + 500]
            for n in self.store.conn.execute(
                f"SELECT * FROM recon_exception_notes WHERE exception_id IN ({','.join('?' * len(part))}) ORDER BY id",
                part,
            ):
                history[n["exception_id"]].append({k: n[k] for k in ("at", "actor", "action", "note")})
        today = self.today()
        for r in rows:
            r["age_days"] = (today - date.fromisoformat(r["txn_day"])).days
            r["level"] = self._level(r)
            r["history"] = history[r["id"]]
            r["bucket_ja"], r["bucket_en"] = BUCKETS.get(r["bucket"], (r["bucket"], r["bucket"]))
        return rows

    @staticmethod
    def _level(r: dict[str, Any]) -> str:
        """``resolved``; else ``overdue`` (past the deadline), ``escalate``
        (30 days or more), or ``ok``."""
        if r["status"] != "open":
            return "resolved"
        if r["deadline_days"] is not None and r["age_days"] >= r["deadline_days"]:
            return "overdue"
        if r["age_days"] >= ESCALATE_DAYS:
            return "escalate"
        return "ok"

    def resolve(self, exception_id: int, *, by: str, note: str, reopen: bool = False) -> dict[str, Any]:
        """Close (or with ``reopen`` open again) an exception, with who and
        why.  The note is appended to its history and to the audit log."""
        by, note = (by or "").strip(), (note or "").strip()
        if not by or not note:
            raise ReconcileError("who (--by) and a note (--note) are both required")
        row = self.store.conn.execute("SELECT * FROM recon_exceptions WHERE id = ?", (exception_id,)).fetchone()
        if row is None:
            raise ReconcileError(f"no exception #{exception_id}")
        action = "reopened" if reopen else "resolved"
        status = "open" if reopen else "resolved"
        if row["status"] == status:
            action = "note"
        with self.store.transaction() as tx:
            tx.execute("UPDATE recon_exceptions SET status = ? WHERE id = ?", (status, exception_id))
            tx.execute(
                "INSERT INTO recon_exception_notes (exception_id, at, actor, action, note) VALUES (?, ?, ?, ?, ?)",
                (exception_id, utcnow().isoformat(), by[:40], action, note[:1000]),
            )
            audit(tx, by, f"exception_{action}", row["month"], f"#{exception_id} {row['ident']}: {note[:1000]}")
        return next(e for e in self.exceptions(month=row["month"]) if e["id"] == exception_id)

    def audit_log(self, *, month: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        sql = "SELECT * FROM audit_log" + (" WHERE month = ?" if month else "") + " ORDER BY id DESC LIMIT ?"
        return [dict(r) for r in self.store.conn.execute(sql, ((month,) if month else ()) + (limit,))]

    # ------------------------------------------------------------ report
    def report(self, month: str) -> dict[str, Any]:
        """The month as the page, the CSV and the JSON API show it: the latest
        match run's summary, the exceptions (aged today) by bucket, the
        imports.  ``run`` is None when the month was never matched."""
        check_month(month)
        run = self.store.conn.execute(
            "SELECT * FROM match_runs WHERE month = ? ORDER BY id DESC LIMIT 1", (month,)
        ).fetchone()
        exceptions = self.exceptions(month=month)
        buckets = {}
        for bucket, (ja, en) in BUCKETS.items():
            mine = [e for e in exceptions if e["bucket"] == bucket and e["status"] == "open"]
            buckets[bucket] = {
                "ja": ja, "en": en, "open": len(mine), "amount": sum(e["amount"] for e in mine),
                "oldest_days": max((e["age_days"] for e in mine), default=None),
                "level": "overdue" if any(e["level"] == "overdue" for e in mine)
                else "escalate" if any(e["level"] == "escalate" for e in mine) else "ok" if mine else "none",
            }
        current = {i["id"] for i in self.current_imports(month)}
        return {
            "month": month,
            "today": self.today().isoformat(),
            "run": None if run is None else {
                k: run[k] for k in ("id", "at", "actor", "fee_scope", "ledger_count", "line_count", "matched_count",
                                    "exception_count")
            },
            "summary": json.loads(run["summary"]) if run else None,
            "buckets": buckets,
            "exceptions": exceptions,
            "imports": [{**i, "current": i["id"] in current} for i in self.imports(month)],
            "stale": run is not None and sorted(json.loads(run["import_ids"])) != sorted(current),
        }


# ============================================================== rendering

LEVEL_JA = {"ok": "", "escalate": "要対応（30日超）", "overdue": "期限超過", "resolved": "解決済み", "none": ""}


class _SafeWriter:
    """csv.writer whose text cells can't become formulas (central/exports.py)."""

    def __init__(self, writer) -> None:
        self._w = writer

    def writerow(self, row) -> None:
        self._w.writerow(csv_row(row))


def report_csv(report: dict[str, Any]) -> bytes:
    """The report for Excel: UTF-8 with BOM, CRLF.  A summary block (one
    row per figure), then the fee table, then one row per exception."""
    buf = io.StringIO(newline="")
    w = _SafeWriter(csv.writer(buf, lineterminator="\r\n"))
    s = report["summary"] or {}
    w.writerow(["照合月 month", report["month"], "基準日 as of", report["today"]])
    if s:
        w.writerow(["項目", "item", "件数 count", "金額 yen"])
        for ja, en, part in (("台帳 売上", "ledger sales", s["ledger"]["sales"]),
                             ("台帳 返品", "ledger refunds", s["ledger"]["refunds"]),
                             ("明細 売上", "statement sales", s["statement"]["sales"]),
                             ("明細 返品", "statement refunds", s["statement"]["refunds"]),
                             ("照合済み", "matched", s["matched"])):
            w.writerow([ja, en, part["count"], part.get("amount", part.get("gross"))])
        w.writerow(["収入（総額）", "gross revenue", "", s["gross_revenue"]])
        w.writerow(["公金振替（手数料）", "settlement fee (expenditure)", "", s["kokin_furikae"]])
        w.writerow(["入金額", "net deposit", "", s["net_deposit"]])
        w.writerow([])
        w.writerow(["手数料区分 category", "件数 count", "取引金額 gross", "契約手数料 expected", "明細手数料 statement",
                    "差異 variance", "入金額 net"])
        for cat, row in s["fees"].items():
            w.writerow([cat, row["count"], row["gross"], row["expected"], row["statement"], row["variance"], row["net"]])
    w.writerow([])
    w.writerow(["ID", "区分 bucket", "状態 status", "取引日 txn day", "経過日数 age", "段階 level", "金額 yen",
                "ブランド brand", "支払ID payment", "内容 detail", "最終メモ last note"])
    for e in report["exceptions"]:
        last = e["history"][-1] if e["history"] else {}
        w.writerow([e["id"], e["bucket"], e["status"], e["txn_day"], e["age_days"], e["level"], e["amount"],
                    e["brand"] or "", e["payment_id"] or "", e["detail"],
                    f"{last.get('at', '')[:16]} {last.get('actor', '')}: {last.get('note', '')}" if last else ""])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def report_html(report: dict[str, Any], *, site_name: str = "") -> str:
    """The report as a plain HTML page (no script, no CDN): Japanese first,
    English beside."""
    e = html.escape
    s = report["summary"]

    def yen(v: Any) -> str:
        return "" if v is None else f"{v:,}"

    out = [
        "<!doctype html><html lang='ja'><head><meta charset='utf-8'>",
        f"<title>決済代行明細の照合 {e(report['month'])} / Reconciliation</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<style>",
        "body{font-family:'Noto Sans CJK JP','Noto Sans JP',sans-serif;margin:1.5rem;color:#1b1b1b;max-width:72rem}",
        "h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:2px solid #1d4e89}",
        ".en{color:#5a5a5a;font-size:.85em;font-weight:normal}",
        "table{border-collapse:collapse;margin:.3rem 0}th,td{border:1px solid #c8c8c8;padding:.25rem .55rem;text-align:left}",
        "th{background:#eef2f7}td.n{text-align:right;font-variant-numeric:tabular-nums}",
        ".cards{display:flex;flex-wrap:wrap;gap:.6rem}.card{border:1px solid #c8c8c8;border-radius:6px;padding:.5rem .8rem;min-width:10rem}",
        ".card b{display:block;font-size:1.3rem}",
        ".ok{background:#fff}.escalate{background:#fff3cd}.overdue{background:#f8d7da}.resolved{color:#777}",
        ".none{color:#999}.warn{background:#fff3cd;padding:.4rem .7rem;border:1px solid #e0c36c}",
        "nav a{margin-right:1rem}",
        "</style></head><body>",
        f"<h1>決済代行明細の照合 {e(report['month'])} <span class='en'>Payment agent statement reconciliation</span></h1>",
        f"<p>{e(site_name)} 基準日 {e(report['today'])} <span class='en'>as of</span></p>",
    ]
    if s is None:
        out.append("<p class='warn'>この月はまだ照合していません。明細を取り込み、照合を実行してください。"
                   "<span class='en'>Not matched yet: import the statement, then run the match.</span></p>")
    else:
        run = report["run"]
        if report["stale"]:
            out.append("<p class='warn'>照合後に明細が差し替えられました。照合をやり直してください。"
                       "<span class='en'>A newer statement was imported after this run: match again.</span></p>")
        out.append(f"<p>照合 #{run['id']} {e(run['at'][:16].replace('T', ' '))} UTC（{e(run['actor'])}）"
                   f" <span class='en'>match run</span></p>")
        total = s["fees"]["total"]
        cards = [
            ("照合済み", "matched", f"{s['matched']['count']:,} 件", f"{s['matched']['amount']:,} 円"),
            ("収入（総額）", "gross revenue", f"{s['gross_revenue']:,} 円", "収納日で計上 / by transaction date"),
            ("公金振替（手数料）", "settlement fee, an expenditure", f"{s['kokin_furikae']:,} 円",
             f"契約 {total['expected']:,} 円 / expected"),
            ("入金額", "net deposit", f"{s['net_deposit']:,} 円", "入金予定日 " + ", ".join(s["statement"]["deposit_dates"])),
            ("未解決の例外", "open exceptions", f"{sum(b['open'] for b in report['buckets'].values()):,} 件", ""),
        ]
        out.append("<div class='cards'>")
        for ja, en, big, small in cards:
            out.append(f"<div class='card'>{e(ja)} <span class='en'>{e(en)}</span><b>{e(big)}</b>"
                       f"<span class='en'>{e(small)}</span></div>")
        out.append("</div>")
        out.append("<h2>台帳と明細 <span class='en'>Ledger and statement</span></h2><table>"
                   "<tr><th></th><th>台帳 <span class='en'>ledger</span></th><th>明細 <span class='en'>statement</span></th></tr>")
        led, st = s["ledger"], s["statement"]
        for ja, en, a, b in (("売上", "sales", led["sales"], st["sales"]),
                             ("返品", "refunds", led["refunds"], st["refunds"]),
                             ("当日取消（明細には載らない）", "same-day voids (must be absent)", led["voided_sales"], st["voids"]),
                             ("処理未了", "unknown", led["unknown"], None)):
            right = "" if b is None else f"{b['count']:,} 件 / {b['amount']:,} 円"
            out.append(f"<tr><th>{e(ja)} <span class='en'>{e(en)}</span></th>"
                       f"<td class='n'>{a['count']:,} 件 / {a['amount']:,} 円</td><td class='n'>{right}</td></tr>")
        keys = ", ".join(f"{k} {v:,}" for k, v in sorted(s["matched"]["by_key"].items()))
        out.append(f"</table><p class='en'>照合キー別 / matched by key: {e(keys)}</p>")
        out.append("<h2>決済手数料 <span class='en'>Settlement fees</span></h2>"
                   f"<p>契約: {', '.join(f'{e(k)} {float(v) * 100:g}%' for k, v in s['rates'].items())}、"
                   f"端数処理 {e(s['rounding'])}（{'1件ごと' if s['fee_scope'] == 'transaction' else '月合計'}）"
                   f" <span class='en'>rounding per {e(s['fee_scope'])}</span></p>"
                   "<table><tr><th>区分 <span class='en'>category</span></th><th>件数</th><th>取引金額 <span class='en'>gross</span></th>"
                   "<th>契約手数料 <span class='en'>expected</span></th><th>明細手数料 <span class='en'>statement</span></th>"
                   "<th>差異 <span class='en'>variance</span></th><th>入金額 <span class='en'>net</span></th></tr>")
        for cat, row in s["fees"].items():
            cls = " class='escalate'" if row["variance"] else ""
            label = "合計 total" if cat == "total" else cat
            out.append(f"<tr{cls}><th>{e(label)}</th><td class='n'>{row['count']:,}</td><td class='n'>{yen(row['gross'])}</td>"
                       f"<td class='n'>{yen(row['expected'])}</td><td class='n'>{yen(row['statement'])}</td>"
                       f"<td class='n'>{row['variance']:+,}</td><td class='n'>{yen(row['net'])}</td></tr>")
        out.append("</table><p>収入は総額で計上し、手数料は公金振替（支出）として別に計上します（相殺しません）。"
                   "<span class='en'>Revenue is booked gross; the fee is a separate expenditure (公金振替), never netted.</span></p>")
    out.append("<h2>例外 <span class='en'>Exceptions</span></h2><table><tr><th>区分 <span class='en'>bucket</span></th>"
               "<th>未解決 <span class='en'>open</span></th><th>金額 <span class='en'>yen</span></th>"
               "<th>最長経過日数 <span class='en'>oldest, days</span></th><th>段階 <span class='en'>level</span></th></tr>")
    for b in report["buckets"].values():
        out.append(f"<tr class='{b['level']}'><th>{e(b['ja'])} <span class='en'>{e(b['en'])}</span></th>"
                   f"<td class='n'>{b['open']}</td><td class='n'>{yen(b['amount']) if b['open'] else ''}</td>"
                   f"<td class='n'>{'' if b['oldest_days'] is None else b['oldest_days']}</td>"
                   f"<td>{e(LEVEL_JA.get(b['level'], ''))} <span class='en'>{e(b['level'] if b['level'] not in ('none', 'ok') else '')}</span></td></tr>")
    out.append("</table>")
    if report["exceptions"]:
        out.append("<table><tr><th>ID</th><th>区分</th><th>取引日 <span class='en'>txn day</span></th>"
                   "<th>経過 <span class='en'>age</span></th><th>金額</th><th>内容 <span class='en'>detail</span></th>"
                   "<th>対応 <span class='en'>history</span></th></tr>")
        for x in report["exceptions"]:
            hist = "<br>".join(f"{e(h['at'][:10])} {e(h['actor'])} {e(h['action'])}"
                               + ("" if h["action"] == "opened" else f": {e(h['note'][:160])}")
                               for h in x["history"][-3:])
            deadline = f" / 期限 {x['deadline_days']}日" if x["deadline_days"] else ""
            out.append(f"<tr class='{x['level']}'><td>{x['id']}</td><td>{e(x['bucket_ja'])}<br><span class='en'>{e(x['bucket_en'])}</span></td>"
                       f"<td>{e(x['txn_day'])}</td><td class='n'>{x['age_days']}日{e(deadline)}</td><td class='n'>{x['amount']:,}</td>"
                       f"<td>{e(x['detail'])}</td><td>{hist}</td></tr>")
        out.append("</table>")
    out.append("<p class='en'>黄: 30日以上 / amber: 30 days or more; 赤: 期限（電子マネー処理未了は55日）超過 / red: past the deadline"
               " (pending e-money: 55 days or the brand's investigate_days).</p>")
    out.append("<h2>取り込んだ明細 <span class='en'>Imported statements</span></h2><table><tr><th>#</th><th>source</th>"
               "<th>file</th><th>文字コード <span class='en'>encoding</span></th><th>行数 <span class='en'>lines</span></th>"
               "<th>SHA-256</th><th>取込 <span class='en'>imported</span></th><th></th></tr>")
    for i in report["imports"]:
        state = "現行 current" if i["current"] else "差し替え済み superseded"
        out.append(f"<tr class='{'ok' if i['current'] else 'resolved'}'><td>{i['id']}</td><td>{e(i['source'])}</td>"
                   f"<td>{e(i['filename'])}</td><td>{e(i['encoding'])}</td><td class='n'>{i['line_count']:,}</td>"
                   f"<td><code>{e(i['sha256'][:16])}…</code></td><td>{e(i['imported_at'][:16].replace('T', ' '))} {e(i['imported_by'])}</td>"
                   f"<td>{e(state)}</td></tr>")
    out.append("</table></body></html>")
    return "\n".join(out)


__all__ = [
    "BUCKETS", "LedgerTxn", "Line", "Match", "ReconcileError", "Reconciler", "RunResult", "match", "report_csv",
    "report_html",
]
