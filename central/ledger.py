"""Central's payment ledger: charges priced from the fee catalog, payments as
the counters report them.

The counter's Pi owns a payment's outcome (it is wired to the terminal);
central owns what may be charged.  So:

* a charge is validated and priced here (catalog, allowed methods, brand,
  amounts), stored as a ``sent`` row, and sent to the counter;
* the counter's ``event/payment`` messages are the truth about the outcome:
  the ledger keeps the highest ``version`` of each ``payment_id`` (an event
  delivered twice, or re-sent from the counter's outbox, changes nothing) and
  acknowledges it;
* a void (取消) or refund (返金) is checked here — same counter, same day,
  staff id and reason, the brand's void rule — and then carried out by the
  counter like a sale.

Every change is one transaction; every event received is appended to
``payment_log`` (never updated, never deleted).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bus.models import ChargeLine, PaymentEvent, PayMethod, utcnow
from bus.sdnotify import log_fields
from central.config import Site
from central.dayclose import record_late_changes
from central.store import Store

logger = logging.getLogger(__name__)

#: States after which a payment never changes again (except a sale → voided/refunded).
FINAL = {"declined", "voided", "refunded", "cancelled"}


class PaymentError(Exception):
    """A charge or payment action refused, with a reason for staff (JA + EN)."""

    def __init__(self, code: str, ja: str, en: str) -> None:
        super().__init__(en)
        self.code, self.ja, self.en = code, ja, en


@dataclass(frozen=True)
class PaymentRow:
    payment_id: str
    charge_id: str
    counter: str
    device: str | None
    day: str
    kind: str
    original_id: str | None
    ticket: int | None
    state: str
    version: int
    method: str
    brand: str | None
    card_name: str | None
    amount: int
    tendered: int | None
    change: int | None
    terminal: str | None
    terminal_id: str | None
    slip_no: str | None
    approval_no: str | None
    txn_at: str | None
    receipt_no: str | None
    staff_id: str | None
    reason: str | None
    note: str | None
    message_ja: str
    message_en: str
    created_at: str
    updated_at: str
    lines: tuple[dict[str, Any], ...] = ()

    def public(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["lines"] = list(self.lines)
        return out


COLUMNS = [f for f in PaymentRow.__dataclass_fields__ if f != "lines"]


class Ledger:
    def __init__(self, store: Store, site: Site, catalog: Any) -> None:
        self.store = store
        self.site = site
        self.catalog = catalog
        self.zone = ZoneInfo(site.site.timezone)

    def today(self) -> str:
        return datetime.now(self.zone).date().isoformat()

    def _local_day(self, iso: str) -> str:
        return datetime.fromisoformat(iso).astimezone(self.zone).date().isoformat()

    # ------------------------------------------------------------ reads
    def _rows(self, where: str, args: tuple) -> list[PaymentRow]:
        conn = self.store.conn
        rows = conn.execute(f"SELECT * FROM payments WHERE {where} ORDER BY created_at", args).fetchall()
        out = []
        for r in rows:
            lines = conn.execute(
                "SELECT code, name_ja, name_en, quantity, unit_price, amount, account FROM payment_lines "
                "WHERE payment_id = ? ORDER BY position", (r["payment_id"],)
            ).fetchall()
            out.append(PaymentRow(**{c: r[c] for c in COLUMNS}, lines=tuple(dict(line) for line in lines)))
        return out

    def get(self, payment_id: str) -> PaymentRow:
        rows = self._rows("payment_id = ?", (payment_id,))
        if not rows:
            raise PaymentError("not_found", "その支払いは見つかりません", f"no payment {payment_id[:40]}")
        return rows[0]

    def list(self, *, day: str | None = None, counter: str | None = None) -> list[PaymentRow]:
        where, args = ["day = ?"], [day or self.today()]
        if counter is not None:
            where.append("counter = ?")
            args.append(counter)
        return self._rows(" AND ".join(where), tuple(args))

    # ------------------------------------------------------------ charges
    def create_charge(
        self,
        *,
        counter: str,
        lines: list[tuple[str, int]],
        method: str,
        brand: str | None,
        tendered: int | None,
        ticket: int | None,
        staff_id: str | None,
        payment_id: str | None = None,
    ) -> tuple[PaymentRow, list[ChargeLine], bool]:
        """Validate and price a charge; returns the ``sent`` row, its priced
        lines, and whether it is new (False: the same ``payment_id`` was
        already charged — a retry — and nothing changed)."""
        if self.catalog is None:
            raise PaymentError("unavailable", "料金表が設定されていません", "no fee catalog configured")
        if counter not in {c.id for c in self.site.counters}:
            raise PaymentError("not_found", f"窓口 {counter[:20]} はありません", f"no counter {counter[:20]!r}")
        device = self.site.device_of_counter(counter)
        if device is None:
            raise PaymentError("invalid", "この窓口には端末（Pi）がありません", f"counter {counter} has no device to take payments")
        try:
            priced = self.catalog.price(lines)
        except (KeyError, ValueError, TypeError) as exc:
            message = exc.args[0] if exc.args else str(exc)
            raise PaymentError("invalid", f"請求内容が不正です: {message}", f"invalid charge: {message}") from None
        try:
            pay = PayMethod(method)
        except ValueError:
            raise PaymentError("invalid", f"支払方法 {method[:20]} はありません", f"unknown method {method[:20]!r}") from None
        allowed = set(self.catalog.allowed_methods([p.code for p in priced]))
        if pay.value not in allowed:
            names = "、".join(p.name_ja for p in priced if pay.value not in self.catalog.item(p.code).methods)
            raise PaymentError(
                "method_not_allowed",
                f"{names} は{_method_ja(pay.value)}で支払えません（使える方法: {'・'.join(_method_ja(m) for m in sorted(allowed))}）",
                f"{pay.value} is not accepted for {', '.join(p.code for p in priced if pay.value not in self.catalog.item(p.code).methods)}",
            )
        if brand is not None:
            b = self.catalog.brands.get(brand)
            if b is None or b.method != pay.value:
                raise PaymentError("invalid", f"ブランド {brand[:20]} はこの支払方法にありません",
                                   f"brand {brand[:20]!r} is not a {pay.value} brand")
        total = sum(p.amount for p in priced)
        if pay is PayMethod.CASH:
            if tendered is not None and tendered < total:
                raise PaymentError("invalid", f"お預かり金額 {tendered:,} 円が合計 {total:,} 円に足りません",
                                   f"tendered {tendered} is less than the total {total}")
        elif tendered is not None:
            raise PaymentError("invalid", "お預かり金額は現金のときだけです", "tendered is for cash only")
        if payment_id is not None:
            try:
                payment_id = str(uuid.UUID(payment_id))
            except ValueError:
                raise PaymentError("invalid", "payment_id が不正です", "payment_id is not a UUID") from None
            existing = self._rows("payment_id = ?", (payment_id,))
            if existing:
                # A retry of the same charge (the answer was lost): the same
                # row, nothing sent twice.  Anything else under the same id is a bug.
                row = existing[0]
                if row.kind != "sale" or row.counter != counter or row.amount != total or row.method != pay.value:
                    raise PaymentError("conflict", "同じIDの別の請求があります", "another charge has this payment_id")
                return row, [ChargeLine(**line) for line in row.lines], False
        if ticket is not None:
            found = self.store.conn.execute(
                "SELECT 1 FROM tickets WHERE site = ? AND day = ? AND number = ?", (self.site.site.id, self.today(), ticket)
            ).fetchone()
            if found is None:
                raise PaymentError("not_found", f"本日の {ticket} 番の整理券はありません", f"no ticket {ticket} today")
        charge_lines = [
            ChargeLine(code=p.code, name_ja=p.name_ja[:80], name_en=p.name_en[:80], quantity=p.quantity,
                       unit_price=p.unit_price, amount=p.amount, account=p.account[:40])
            for p in priced
        ]
        now = utcnow().isoformat()
        row = PaymentRow(
            payment_id=payment_id or str(uuid.uuid4()), charge_id=str(uuid.uuid4()), counter=counter, device=device.id,
            day=self.today(), kind="sale", original_id=None, ticket=ticket, state="sent", version=0, method=pay.value,
            brand=brand, card_name=None, amount=total, tendered=tendered, change=None, terminal=None, terminal_id=None,
            slip_no=None, approval_no=None, txn_at=None, receipt_no=None, staff_id=staff_id, reason=None, note=None,
            message_ja="窓口の端末へ送信しました", message_en="Sent to the counter", created_at=now, updated_at=now,
            lines=tuple(line.model_dump() for line in charge_lines),
        )
        with self.store.transaction() as conn:
            self._insert(conn, row)
            self._log(conn, row.payment_id, 0, "sent", "api", f"{len(charge_lines)} lines, {total} yen, {pay.value}")
        logger.info("counter %s: charge %s sent: %d yen %s", counter, row.payment_id, total, pay.value,
                    extra=log_fields(ticket=ticket, payment_id=row.payment_id, counter=counter))
        return row, charge_lines, True

    def _insert(self, conn, row: PaymentRow) -> None:
        conn.execute(
            f"INSERT INTO payments ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
            tuple(getattr(row, c) for c in COLUMNS),
        )
        for position, line in enumerate(row.lines):
            conn.execute(
                "INSERT INTO payment_lines (payment_id, position, code, name_ja, name_en, quantity, unit_price, amount, account) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.payment_id, position, line["code"], line["name_ja"], line["name_en"], line["quantity"],
                 line["unit_price"], line["amount"], line["account"]),
            )

    @staticmethod
    def _log(conn, payment_id: str, version: int, state: str, source: str, detail: str = "") -> None:
        conn.execute(
            "INSERT INTO payment_log (at, payment_id, version, state, source, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (utcnow().isoformat(), payment_id, version, state, source, detail[:500]),
        )

    # ------------------------------------------------------------ events from counters
    def apply_event(self, device: str, event: PaymentEvent) -> bool:
        """Store a counter's payment event.  True if it changed the ledger
        (False: an old or repeated version).  Raises PaymentError when the
        event contradicts the ledger (another counter's payment)."""
        pid = str(event.payment_id)
        conn = self.store.conn
        stored = conn.execute("SELECT counter, version, kind FROM payments WHERE payment_id = ?", (pid,)).fetchone()
        if stored is not None and stored["counter"] != event.counter:
            raise PaymentError("wrong_counter", "別の窓口の支払いです", f"payment {pid} belongs to counter {stored['counter']}")
        if stored is not None and stored["version"] >= event.version:
            with self.store.transaction() as tx:
                self._log(tx, pid, event.version, event.state.value, f"device:{device}", "repeat (already stored)")
            return False
        txn_day = self._local_day(event.txn_at.isoformat()) if event.txn_at else None
        values = dict(
            state=event.state.value, version=event.version, card_name=event.card_name, tendered=event.tendered,
            change=event.change, terminal=event.terminal, terminal_id=event.terminal_id, slip_no=event.slip_no,
            approval_no=event.approval_no, txn_at=event.txn_at.isoformat() if event.txn_at else None,
            receipt_no=event.receipt_no, staff_id=event.staff_id, reason=event.reason, note=event.note,
            message_ja=event.message_ja, message_en=event.message_en, updated_at=utcnow().isoformat(),
        )
        with self.store.transaction() as tx:
            if stored is None:
                # A payment central did not send (or whose row was lost with a
                # restored database): the counter's record is the truth.
                row = PaymentRow(
                    payment_id=pid, charge_id=str(event.charge_id), counter=event.counter, device=device,
                    day=txn_day or self.today(), kind=event.kind.value,
                    original_id=str(event.original_id) if event.original_id else None, ticket=event.ticket,
                    method=event.method.value, brand=event.brand, amount=event.amount, created_at=values["updated_at"],
                    lines=tuple(line.model_dump() for line in event.lines), **values,
                )
                self._insert(tx, row)
            else:
                sets = ", ".join(f"{k} = ?" for k in values)
                args = list(values.values())
                if txn_day is not None:
                    # Revenue is dated on the transaction date (収納日).
                    sets += ", day = ?"
                    args.append(txn_day)
                tx.execute(f"UPDATE payments SET {sets} WHERE payment_id = ?", (*args, pid))
            self._log(tx, pid, event.version, event.state.value, f"device:{device}", event.reason or "")
            # A payment of a closed day changed: an adjustment, never an edit (docs/accounting.md §4).
            record_late_changes(tx, self.site, self.catalog, [pid], source=f"device:{device}")
        logger.info("counter %s: payment %s %s v%d %s%s", event.counter, pid, event.kind.value, event.version,
                    event.state.value, f" ({event.reason})" if event.reason else "",
                    extra=log_fields(ticket=event.ticket, payment_id=pid, counter=event.counter))
        return True

    # ------------------------------------------------------------ void / refund
    def prepare_void(self, payment_id: str, *, counter: str, staff_id: str, reason: str) -> tuple[PaymentRow, str]:
        """Check a void (取消) request; returns the original and the action the
        counter must carry out: "void" at the terminal, or "refund" (返金, out
        of band) when the brand cannot be voided.  Inserts the new record."""
        original = self.get(payment_id)
        if original.kind != "sale":
            raise PaymentError("invalid", "取消できるのは売上だけです", "only a sale can be voided")
        if original.counter != counter:
            raise PaymentError("wrong_counter", f"この支払いは {original.counter} 番窓口のものです。その窓口で取り消してください",
                               f"payment belongs to counter {original.counter}; void it there")
        if original.state != "approved":
            raise PaymentError("conflict", f"この支払いは取り消せません（状態: {original.state}）",
                               f"cannot void a payment in state {original.state}")
        txn_day = self._local_day(original.txn_at) if original.txn_at else original.day
        if txn_day != self.today():
            raise PaymentError("too_late", f"取消は当日のみです（{txn_day} の支払い）。会計課に返金手続きを依頼してください",
                               f"a void is same-day only (paid {txn_day}); ask accounting for a refund")
        if self._rows("original_id = ? AND state IN ('sent', 'pending', 'unknown', 'approved')", (payment_id,)):
            raise PaymentError("conflict", "この支払いは取消・返金の処理中か処理済みです", "a void or refund is already under way")
        action = "void"
        if original.method != "cash":
            brand = self.catalog.brands.get(original.brand) if original.brand else None
            rule = getattr(brand, "void", "same_day") if brand else "same_day"
            refused = self.store.conn.execute(
                "SELECT 1 FROM payments WHERE original_id = ? AND kind = 'void' AND state = 'declined' AND reason = 'declined'",
                (payment_id,),
            ).fetchone()
            if rule == "never" or refused is not None:
                # Cannot be voided at the terminal (by rule, or the terminal
                # refused it already): paid back out of band.
                action = "refund"
            elif rule == "last_only":
                # Transit IC: only the terminal's last transaction can be
                # voided.  Anything that reached the terminal after it (any
                # outcome) makes it not the last one.
                # Times come with different UTC offsets (terminal +09:00, Pi
                # UTC): compared as instants, not as strings.
                since = datetime.fromisoformat(original.txn_at or original.updated_at)
                rows = self.store.conn.execute(
                    "SELECT COALESCE(txn_at, updated_at) FROM payments WHERE counter = ? AND payment_id != ? "
                    "AND method != 'cash' AND state NOT IN ('sent', 'ready', 'cancelled') "
                    "AND reason IS NOT 'terminal_unavailable' AND day >= ?",
                    (counter, payment_id, original.day),
                ).fetchall()
                if any(datetime.fromisoformat(at) > since for (at,) in rows):
                    action = "refund"
        now = utcnow().isoformat()
        new = PaymentRow(
            payment_id=str(uuid.uuid4()), charge_id=original.charge_id, counter=counter, device=original.device,
            day=self.today(), kind=action, original_id=payment_id, ticket=original.ticket, state="sent", version=0,
            method=original.method if action == "void" else "cash", brand=original.brand, card_name=None,
            amount=original.amount, tendered=None, change=None, terminal=None, terminal_id=None, slip_no=None,
            approval_no=None, txn_at=None, receipt_no=None, staff_id=staff_id, reason=None, note=reason[:200],
            message_ja="窓口の端末へ送信しました", message_en="Sent to the counter", created_at=now, updated_at=now,
        )
        with self.store.transaction() as conn:
            self._insert(conn, new)
            self._log(conn, new.payment_id, 0, "sent", f"staff:{staff_id}", f"{action} of {payment_id}: {reason}")
        logger.info("counter %s: %s %s of payment %s sent", counter, action, new.payment_id, payment_id,
                    extra=log_fields(ticket=original.ticket, payment_id=new.payment_id, counter=counter))
        return new, action

    def expire_unsent(self, ttl_s: float) -> int:
        """Charges, voids and refunds still ``sent`` after their command
        expired never reached the counter (it was offline, the broker lost
        it): the counter will refuse them now, so the ledger says so and
        staff may act again.  Should the counter's record arrive after all,
        its higher version wins."""
        cutoff = (utcnow() - timedelta(seconds=ttl_s + 5)).isoformat()
        rows = self.store.conn.execute(
            "SELECT payment_id FROM payments WHERE state = 'sent' AND created_at < ?", (cutoff,)
        ).fetchall()
        if not rows:
            return 0
        with self.store.transaction() as conn:
            for (pid,) in rows:
                conn.execute(
                    "UPDATE payments SET state = 'cancelled', reason = 'not_delivered', message_ja = ?, message_en = ?, "
                    "updated_at = ? WHERE payment_id = ? AND state = 'sent'",
                    ("窓口の端末に届きませんでした（課金なし）。端末の接続を確かめ、もう一度操作してください",
                     "Never reached the counter (nothing charged): check its connection and try again",
                     utcnow().isoformat(), pid),
                )
                self._log(conn, pid, 0, "cancelled", "central", "not delivered before the command expired")
        logger.warning("%d payment command(s) never reached their counter: marked not delivered", len(rows))
        return len(rows)

    def receipt_kind(self, codes: list[str], method: str) -> str:
        """What the counter prints for a charge: the items' flows say, per
        method, 領収書 (receipt), 利用控え (slip) or both."""
        kinds = {self.catalog.item(code).flow.receipt.get(method, "receipt") for code in codes}
        if "both" in kinds or kinds == {"receipt", "slip"}:
            return "both"
        return "slip" if kinds == {"slip"} else "receipt"

    def check_counter(self, payment_id: str, counter: str) -> PaymentRow:
        p = self.get(payment_id)
        if p.counter != counter:
            raise PaymentError("wrong_counter", f"この支払いは {p.counter} 番窓口のものです", f"payment belongs to counter {p.counter}")
        return p

    def log(self, payment_id: str) -> list[dict[str, Any]]:
        rows = self.store.conn.execute(
            "SELECT at, version, state, source, detail FROM payment_log WHERE payment_id = ? ORDER BY id", (payment_id,)
        )
        return [dict(r) for r in rows]


def _method_ja(method: str) -> str:
    return {"cash": "現金", "credit": "クレジット", "emoney": "電子マネー", "qr": "QRコード決済"}.get(method, method)
