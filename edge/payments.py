"""Payments at the counter: charges from central become journaled payments,
the terminal is driven from a worker thread, results go back through the
journal's outbox.

The rules (design §5, docs/payments.md):

* A payment is written to the journal **before** the terminal is touched
  for a transaction.  Just before, the terminal is asked (read-only) what its
  last transaction is; that baseline is journaled with the payment, so an
  unknown outcome can later be told apart from an older transaction.
* A doubtful outcome is ``unknown`` (処理未了).  It is resolved by asking the
  terminal what its last transaction was and comparing with the baseline, or
  by staff who read the terminal's screen — never by sending the sale again.
  While a cashless payment is unknown, no other cashless payment starts at
  this counter (it would hide the unknown one's answer).
* After a crash, a payment found ``pending`` may have run: it becomes
  ``unknown`` and is resolved the same way.
* Events leave through the outbox and are re-sent until central acknowledges
  them; central keeps one row per payment id, so nothing is doubled.
* A receipt is printed once; a re-print says 再発行.

All state lives on the daemon's loop; the terminal and the printer run in
their own single worker threads and only hand results back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from bus import PayloadError, decode, encode
from bus.models import (
    ChargeCommand,
    ChargeLine,
    LedgerAck,
    PaymentAction,
    PaymentCommand,
    PaymentEvent,
    PaymentKind,
    PaymentState,
    PayMethod,
    utcnow,
)
from bus.sdnotify import log_fields
from bus.topics import Topics
from drivers.terminal.base import (
    Outcome,
    Terminal,
    TerminalError,
    TerminalUnavailable,
    TxKind,
    TxRecord,
)
from drivers.terminal.manual import instructions as manual_instructions
from edge.crashpoints import crashpoint
from edge.journal import Journal, JournalError, Payment
from edge.session import Received

logger = logging.getLogger(__name__)

#: How often unacknowledged outbox events are sent again (seconds).
OUTBOX_RESEND_S = 5.0
#: How often the terminal is asked again about unknown outcomes (seconds).
RESOLVE_EVERY_S = 30.0
#: A charge left ready (nobody pressed PAY) longer than this is withdrawn:
#: PAY must never start a charge from an earlier visitor.
READY_MAX_AGE_S = 30 * 60

S = PaymentState

METHOD_NAMES = {
    "cash": ("現金", "Cash"),
    "credit": ("クレジット", "Credit card"),
    "emoney": ("電子マネー", "E-money"),
    "qr": ("QRコード決済", "QR payment"),
}

#: What staff must do, by (state, reason).  Shown on the console and the display.
STAFF_MESSAGES: dict[tuple[str, str | None], tuple[str, str]] = {
    ("ready", None): ("PAY を押すと決済を始めます", "Press PAY to start"),
    ("pending", None): ("決済中です。端末の案内に従ってください", "Payment running: follow the terminal"),
    ("approved", None): ("決済が完了しました", "Payment approved"),
    ("declined", "declined"): ("カードが使えませんでした。別の方法でお支払いいただいてください（課金なし）",
                               "Declined: ask for another method (nothing charged)"),
    ("declined", "terminal_unavailable"): ("端末が応答しません。電源と接続を確認するか、現金でお受けください（課金なし）",
                                           "Terminal not answering: check power/cable or take cash (nothing charged)"),
    ("declined", "not_processed"): ("端末では処理されていませんでした（課金なし）。もう一度お受けできます",
                                    "The terminal did not process it (nothing charged); you may charge again"),
    ("declined", "reversed_by_terminal"): ("端末が自動で取り消しました（課金なし）。もう一度お受けできます",
                                           "The terminal reversed it itself (nothing charged); you may charge again"),
    ("declined", "aborted"): ("中止しました（課金なし）", "Aborted (nothing charged)"),
    ("declined", "staff"): ("職員が「課金なし」と確認しました", "Staff confirmed: nothing charged"),
    ("unknown", None): ("処理未了：端末の画面と利用控えで結果を確かめ、コンソールで確定してください。同じ決済をやり直さないでください",
                        "Outcome unknown: check the terminal's screen and slip, then confirm on the console. Do not charge again"),
    ("unknown", "interrupted"): ("処理未了（再起動）：端末に確認しています。やり直さないでください",
                                 "Unknown (restart): asking the terminal. Do not charge again"),
    ("unknown", "not_confirmed"): ("処理未了：端末の結果をコンソールで確定してください",
                                   "Unknown: confirm the terminal's result on the console"),
    ("unknown", "mismatch"): ("処理未了：端末の最後の取引が一致しません。利用控えを確認して確定してください",
                              "Unknown: the terminal's last transaction does not match; check the slip and confirm"),
    ("unknown", "internal_error"): ("処理未了（内部エラー）：端末の画面と利用控えで結果を確かめ、コンソールで確定してください",
                                    "Unknown (internal error): check the terminal and confirm on the console"),
    ("declined", "terminal_busy"): ("端末が使用中です。後でもう一度操作してください", "Terminal busy: try again later"),
    ("cancelled", "expired"): ("時間が経ったため請求を取り下げました（課金なし）", "Charge expired (nothing charged)"),
    ("voided", None): ("取り消しました", "Voided"),
    ("refunded", None): ("返金しました（返金伝票をお渡しください）", "Refunded (hand over the refund slip)"),
    ("cancelled", None): ("請求を取り下げました（課金なし）", "Charge withdrawn (nothing charged)"),
}


def staff_message(state: str, reason: str | None) -> tuple[str, str]:
    return STAFF_MESSAGES.get((state, reason)) or STAFF_MESSAGES.get((state, None)) or ("", "")


class PaymentRole:
    """A counter's payments.  ``terminal`` may be None (cash only).

    ``clock`` gives central's time as this Pi sees it (a Pi has no RTC; see
    edge/counter.py); ``zone`` is the office's time zone, for the business
    day, receipt numbers and the terminal's local times.
    """

    def __init__(
        self,
        *,
        device: str,
        counter: str,
        topics: Topics,
        session: Any,
        journal: Journal,
        terminal: Terminal | None,
        boot_id: str,
        next_seq: Callable[[], int],
        notify: Callable[[str, str], None],
        printer: Any = None,
        clock: Any = None,
        zone: ZoneInfo | None = None,
        repeat_guard_s: float = 0.8,
    ) -> None:
        self.device = device
        self.counter = counter
        self.topics = topics
        self.session = session
        self.journal = journal
        self.terminal = terminal
        self.printer = printer
        self.boot_id = boot_id
        self.next_seq = next_seq
        self.notify = notify
        self.clock = clock
        self.zone = zone or ZoneInfo("Asia/Tokyo")
        self.repeat_guard_s = repeat_guard_s
        self.stats = {"charges": 0, "bad_command": 0, "refused": 0, "published": 0, "acked": 0, "errors": 0}
        self._terminal_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"terminal-{device}")
        #: The payment the terminal is working on (one at a time).
        self.busy: str | None = None
        self._tasks: set[asyncio.Task] = set()
        #: (payment_id, version) → when it was last handed to the broker.
        self._sent_at: dict[tuple[str, int], float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_pay = float("-inf")

    def now(self) -> datetime:
        """Central's time (corrected for this Pi's clock), in UTC."""
        return self.clock.now() if self.clock is not None else utcnow()

    # ------------------------------------------------------------ life
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """After a restart: a payment left ``pending`` may have run."""
        self._loop = loop
        for p in self.journal.in_state(S.PENDING.value):
            logger.warning("%s: payment %s was pending at start-up: outcome unknown, asking the terminal", self.device, p.payment_id,
                           extra=_fields(p))
            self._save(p.evolve(state=S.UNKNOWN.value, reason="interrupted"))
        if self.journal.in_state(S.UNKNOWN.value):
            self._spawn(self.resolve_all(), "resolve-unknown")
        self._spawn(self._housekeeping(), "payments-housekeeping")

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.terminal is not None:
            try:
                self.terminal.abort()
            except TerminalError:
                pass
        self._terminal_pool.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _housekeeping(self) -> None:
        elapsed = 0.0
        while True:
            await asyncio.sleep(1.0)
            elapsed += 1.0
            try:
                self.flush_outbox()
                self._expire_ready()
                if elapsed >= RESOLVE_EVERY_S:
                    elapsed = 0.0
                    if self.busy is None and self.journal.in_state(S.UNKNOWN.value):
                        await self.resolve_all()
            except Exception:  # housekeeping must go on
                self.stats["errors"] += 1
                logger.exception("%s: payment housekeeping failed", self.device)

    def _expire_ready(self) -> None:
        now = self.now()
        for p in self.journal.in_state(S.READY.value):
            if (now - datetime.fromisoformat(p.created_at)).total_seconds() > READY_MAX_AGE_S:
                logger.info("%s: charge %s was ready for over %d min: withdrawn", self.device, p.payment_id, READY_MAX_AGE_S // 60)
                self._save(p.evolve(state=S.CANCELLED.value, reason="expired"))

    # ------------------------------------------------------------ events
    def _event(self, p: Payment) -> PaymentEvent:
        c, r = p.charge, p.result
        return PaymentEvent(
            event_id=uuid.uuid4(), boot_id=self.boot_id, seq=self.next_seq(), ts=utcnow(),
            payment_id=uuid.UUID(p.payment_id), charge_id=uuid.UUID(p.charge_id), version=p.version,
            kind=PaymentKind(p.kind), original_id=uuid.UUID(p.original_id) if p.original_id else None,
            counter=self.counter, ticket=c.get("ticket"), state=PaymentState(p.state), method=PayMethod(p.method),
            brand=c.get("brand"), card_name=r.get("card_name"), amount=p.amount,
            tendered=r.get("tendered", c.get("tendered")), change=r.get("change"),
            lines=[ChargeLine.model_validate(line, strict=False) for line in c.get("lines", [])] if p.kind == "sale" else [],
            terminal=c.get("terminal", "none"), terminal_id=r.get("terminal_id"), slip_no=r.get("slip_no"),
            approval_no=r.get("approval_no"),
            txn_at=datetime.fromisoformat(r["txn_at"]) if r.get("txn_at") else None,
            receipt_no=r.get("receipt_no"), staff_id=p.staff_id, reason=p.reason, note=p.note,
            message_ja=p.message_ja, message_en=p.message_en,
        )

    def _with_messages(self, p: Payment) -> Payment:
        ja, en = staff_message(p.state, p.reason)
        if p.state == S.APPROVED.value and p.kind == "void":
            ja, en = "取り消しました（取消票をお渡しください）", "Voided (hand over the void slip)"
        elif p.state == S.APPROVED.value and p.kind == "refund":
            ja, en = (f"現金で {p.amount:,} 円を返金し、返金伝票に署名をもらってください",
                      f"Refund {p.amount:,} yen in cash; have the refund slip signed")
        elif p.state == S.APPROVED.value and p.method == "cash" and p.result.get("change") is not None and p.kind == "sale":
            ja, en = f"お釣り {p.result['change']:,} 円をお渡しください", f"Give change: {p.result['change']:,} yen"
        elif p.state == S.PENDING.value and p.charge.get("terminal") == "manual" and p.kind in ("sale", "void"):
            # A stand-alone terminal: what to press on it, step by step.
            steps = manual_instructions(p.kind, p.amount, METHOD_NAMES[p.method][0])
            ja = ("端末で操作してください: " + " → ".join(f"{i}. {s}" for i, s in enumerate(steps, 1)))[:200]
            en = f"Key {p.amount:,} yen into the terminal ({METHOD_NAMES[p.method][1]}), then confirm the result here"
        return p if (p.message_ja, p.message_en) == (ja, en) else _with(p, message_ja=ja, message_en=en)

    def _save(self, *payments: Payment) -> None:
        """Journal payments (with staff messages filled in) and their events,
        in one transaction, then try to publish."""
        rows = []
        for p in payments:
            p = self._with_messages(p)
            rows.append((p, self.topics.event(self.device, "payment"), encode(self._event(p))))
        self.journal.save(*rows)
        for p, _, _ in rows:
            logger.info("%s: payment %s %s v%d %s%s", self.device, p.payment_id, p.kind, p.version, p.state,
                        f" ({p.reason})" if p.reason else "", extra=_fields(p))
        self.flush_outbox()
        for p, _, _ in rows:
            crashpoint(f"payment.after_publish.{p.state}")

    def _republish(self, p: Payment) -> None:
        """Send the current version again (a repeated command; the outbox may
        be empty because central acknowledged it).  The version is NOT bumped:
        a sale running in the worker owns the next version."""
        self.journal.resend(p.payment_id, p.version, self.topics.event(self.device, "payment"), encode(self._event(p)))
        self._sent_at.pop((p.payment_id, p.version), None)
        self.flush_outbox()

    def flush_outbox(self) -> None:
        """Send outbox events not sent in the last few seconds (QoS 1)."""
        if not self.session.connected or self._loop is None:
            return
        now = self._loop.time()
        for _row, pid, version, topic, payload in self.journal.outbox():
            if now - self._sent_at.get((pid, version), float("-inf")) < OUTBOX_RESEND_S:
                continue
            if self.session.publish_raw(topic, payload, qos=1):
                self._sent_at[(pid, version)] = now
                self.stats["published"] += 1

    # ------------------------------------------------------------ bus in
    def on_message(self, msg: Received) -> bool:
        name = None
        for n in ("charge", "payment", "ledger-ack"):
            if msg.topic == self.topics.cmd(self.device, n):
                name = n
        if name is None:
            return False
        model = {"charge": ChargeCommand, "payment": PaymentCommand, "ledger-ack": LedgerAck}[name]
        try:
            cmd = decode(model, msg.payload)
        except PayloadError as exc:
            self.stats["bad_command"] += 1
            logger.warning("%s: rejected %s command: %s", self.device, name, exc)
            return True
        if isinstance(cmd, LedgerAck):
            dropped = self.journal.acknowledge(str(cmd.payment_id), cmd.version)
            self.stats["acked"] += dropped
            for key in [k for k in self._sent_at if k[0] == str(cmd.payment_id) and k[1] <= cmd.version]:
                del self._sent_at[key]
            acked = self.journal.get(str(cmd.payment_id))
            crashpoint(f"payment.after_ack.{acked.state if acked else 'unknown'}")
            return True
        if cmd.expired(self.now()):
            # A command that sat in the broker for long is stale: central has
            # marked it "not delivered" and staff may have acted otherwise.
            self.stats["refused"] += 1
            logger.warning("%s: %s command for %s expired at %s: not taken", self.device, name, cmd.payment_id, cmd.expires_at)
            return True
        if isinstance(cmd, ChargeCommand):
            self.on_charge(cmd)
        else:
            self.on_payment_command(cmd)
        return True

    def on_charge(self, cmd: ChargeCommand) -> None:
        pid = str(cmd.payment_id)
        existing = self.journal.get(pid)
        if existing is not None:
            # Delivered twice: answer with where it is now, change nothing.
            logger.info("%s: charge %s again: already %s", self.device, pid, existing.state)
            self._republish(existing)
            return
        if cmd.counter != self.counter:
            self.stats["refused"] += 1
            logger.warning("%s: charge %s is for counter %s, not %s", self.device, pid, cmd.counter, self.counter)
            return
        if cmd.method is not PayMethod.CASH and self.terminal is None:
            self.stats["refused"] += 1
            self.notify("この窓口には決済端末がありません", "No payment terminal at this counter")
            self._save(self._new(cmd, state=S.DECLINED.value, reason="terminal_unavailable"))
            return
        self.stats["charges"] += 1
        p = self._new(cmd, state=S.READY.value)
        self._save(p)
        self.notify(f"お支払い {cmd.total:,} 円（{cmd.method_ja or METHOD_NAMES[cmd.method.value][0]}）",
                    f"Amount due: {cmd.total:,} yen ({cmd.method_en or METHOD_NAMES[cmd.method.value][1]})")
        if cmd.start:
            self.start_payment(pid)

    def _new(self, cmd: ChargeCommand, *, state: str, reason: str | None = None) -> Payment:
        now = self.now().isoformat()
        charge = cmd.model_dump(mode="json", include={"ticket", "lines", "total", "brand", "tendered", "receipt", "method_ja", "method_en"})
        charge["terminal"] = self.terminal.driver if self.terminal is not None and cmd.method is not PayMethod.CASH else "none"
        return Payment(
            payment_id=str(cmd.payment_id), charge_id=str(cmd.charge_id), kind="sale", state=state, version=1,
            method=cmd.method.value, amount=cmd.total, charge=charge, created_at=now, updated_at=now,
            staff_id=cmd.staff_id, reason=reason,
        )

    def on_pay_button(self, monotonic: float | None = None) -> None:
        """The physical PAY button: start the charge staff sent last.

        A second press within the repeat guard is ignored (an impatient
        double press must not start the next charge too)."""
        monotonic = time.monotonic() if monotonic is None else monotonic
        if monotonic - self._last_pay < self.repeat_guard_s:
            logger.info("%s: PAY pressed again within %.1f s: ignored", self.device, self.repeat_guard_s)
            return
        self._last_pay = monotonic
        ready = self.journal.in_state(S.READY.value)
        if not ready:
            self.notify("お支払い待ちはありません", "No payment waiting")
            return
        self.start_payment(ready[-1].payment_id)

    def on_payment_command(self, cmd: PaymentCommand) -> None:
        pid = str(cmd.payment_id)
        p = self.journal.get(pid)
        if p is None:
            self.stats["refused"] += 1
            logger.warning("%s: %s for unknown payment %s", self.device, cmd.action.value, pid)
            return
        a = cmd.action
        if a is PaymentAction.START:
            if cmd.tendered is not None:
                p = self._tender(p, cmd.tendered)
            if p is not None:
                self.start_payment(pid)
        elif a is PaymentAction.TENDER:
            self._tender(p, cmd.tendered)
        elif a is PaymentAction.CANCEL:
            self.cancel(p)
        elif a is PaymentAction.CONFIRM:
            confirm = getattr(self.terminal, "confirm", None)
            if self.busy == pid and confirm is not None:
                try:
                    confirm(cmd.approved, slip_no=cmd.slip_no, approval_no=cmd.approval_no, card_name=None)
                except (ValueError, TerminalError) as exc:
                    self.notify("確定できません", f"Cannot confirm: {exc}")
            elif p.state == S.UNKNOWN.value:
                self.resolve_by_staff(p, cmd)
            else:
                self.stats["refused"] += 1
                logger.warning("%s: confirm for %s in state %s ignored", self.device, pid, p.state)
        elif a is PaymentAction.RESOLVE:
            if p.state != S.UNKNOWN.value:
                self._republish(p)
            elif cmd.approved is None:
                self._spawn(self.resolve_all(), "resolve-unknown")
            else:
                self.resolve_by_staff(p, cmd)
        elif a is PaymentAction.VOID:
            self._spawn(self.void(p, cmd), f"void-{pid[:8]}")
        elif a is PaymentAction.REFUND:
            self.refund(p, cmd)
        elif a is PaymentAction.REPRINT:
            self.reprint(p)

    def _tender(self, p: Payment, tendered: int | None) -> Payment | None:
        if p.method != "cash":
            self.stats["refused"] += 1
            self.notify("お預かり金額は現金のときだけです", "Amount tendered is for cash only")
            return None
        if p.state != S.READY.value or tendered is None or tendered < p.amount:
            self.stats["refused"] += 1
            self.notify("お預かり金額が不足しています", "Amount tendered is less than the total")
            return None
        p = p.evolve(charge={**p.charge, "tendered": tendered})
        self._save(p)
        return p

    # ------------------------------------------------------------ the sale
    def _unknown_at_terminal(self) -> Payment | None:
        """A cashless payment of this counter whose outcome is unknown."""
        return next((q for q in self.journal.in_state(S.UNKNOWN.value) if q.method != "cash"), None)

    def start_payment(self, pid: str) -> None:
        p = self.journal.get(pid)
        if p is None or p.state != S.READY.value:
            self.stats["refused"] += 1
            logger.info("%s: start of %s refused: %s", self.device, pid, p.state if p else "unknown payment")
            return
        if p.method == "cash":
            # Cash never touches the terminal: ready → approved in one step.
            tendered = p.charge.get("tendered") or p.amount
            self._approve(p, {"tendered": tendered, "change": tendered - p.amount})
            return
        if self.busy is not None:
            self.stats["refused"] += 1
            self.notify("別の決済を処理中です", "Another payment is running")
            return
        blocking = self._unknown_at_terminal()
        if blocking is not None:
            # Its answer is "the terminal's last transaction": another sale
            # first would hide it.  Staff settle it on the console first.
            self.stats["refused"] += 1
            logger.warning("%s: start of %s refused: %s is still unknown", self.device, pid, blocking.payment_id)
            self.notify("処理未了の決済があります。先にコンソールで確定してください",
                        "An earlier payment is still unknown: settle it on the console first")
            return
        self.busy = pid
        self._spawn(self._run_sale(p), f"sale-{pid[:8]}")

    def _visitor_prompt(self, method: str) -> tuple[str, str]:
        if method == "qr":
            return "QRコードを端末にかざしてください", "Please show your QR code to the terminal"
        return "カードを端末にタッチまたは挿入してください", "Please tap or insert your card"

    def _on_status(self, text: str) -> None:
        # Terminal thread → loop: intermediate status for the display.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.notify, "端末: " + text[:40], "Terminal: " + text[:40])

    async def _baseline(self, p: Payment) -> dict | None | bool:
        """The terminal's last transaction before this one (read-only), or
        False if the terminal cannot be asked (then nothing is sent)."""
        loop = asyncio.get_running_loop()
        try:
            before = await loop.run_in_executor(self._terminal_pool, self.terminal.last_transaction)
        except TerminalError as exc:
            logger.error("%s: terminal unavailable before %s %s: %s", self.device, p.kind, p.payment_id, exc)
            return False
        return _identity(before)

    async def _run_sale(self, ready: Payment) -> None:
        loop = asyncio.get_running_loop()
        pid = ready.payment_id
        try:
            before = await self._baseline(ready)
            p = self.journal.get(pid)
            if p is None or p.state != S.READY.value:
                return  # withdrawn while we asked
            if before is False:
                # Certainly not taken: the sale was never sent.
                self._save(p.evolve(state=S.DECLINED.value, reason="terminal_unavailable"))
                self.notify(*staff_message("declined", "terminal_unavailable"))
                return
            # Journal first: from here on, a crash means "the terminal may have run it".
            # sent_at: when the sale went to the terminal — its 収納日 if the
            # terminal never tells us its own time (staff resolve it later).
            pending = p.evolve(state=S.PENDING.value, reason=None,
                               result={**p.result, "before": before, "sent_at": self.now().isoformat()})
            self._save(pending)
            crashpoint("payment.after_journal")
            self.notify(*self._visitor_prompt(p.method))
            try:
                record = await loop.run_in_executor(self._terminal_pool, lambda: self.terminal.sale(p.amount, on_status=self._on_status))
            except TerminalUnavailable as exc:
                # The sale was certainly not taken by the terminal.
                logger.error("%s: terminal unavailable for %s: %s", self.device, pid, exc, extra=_fields(p))
                self._save(self.journal.get(pid).evolve(state=S.DECLINED.value, reason="terminal_unavailable"))
                self.notify(*staff_message("declined", "terminal_unavailable"))
                return
            except Exception as exc:  # a driver bug after the sale may have been sent
                logger.exception("%s: terminal failed during %s", self.device, pid, extra=_fields(p))
                record = TxRecord(kind=TxKind.SALE, outcome=Outcome.UNKNOWN, amount=p.amount, reason="driver_error", message=str(exc)[:100])
            self._apply_record(self.journal.get(pid), record)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._internal_error(pid)
        finally:
            self.busy = None

    def _internal_error(self, pid: str) -> None:
        """Our own bug while a transaction may have run: never leave it
        pending (nobody would resolve it), never guess — unknown."""
        self.stats["errors"] += 1
        logger.exception("%s: internal error while handling %s", self.device, pid)
        try:
            p = self.journal.get(pid)
            if p is not None and p.state == S.PENDING.value:
                self._save(p.evolve(state=S.UNKNOWN.value, reason="internal_error"))
        except Exception:
            logger.exception("%s: cannot mark %s unknown; it stays pending until restart", self.device, pid)

    def _apply_record(self, p: Payment, record: TxRecord) -> None:
        if record.outcome is Outcome.APPROVED:
            self._approve(p, _result_of(record, self.zone))
        elif record.outcome in (Outcome.DECLINED, Outcome.ABORTED):
            reason = "declined" if record.outcome is Outcome.DECLINED else "aborted"
            if record.reason == "reversed_by_terminal":
                reason = record.reason
            self._save(p.evolve(state=S.DECLINED.value, reason=reason, result={**p.result, **_result_of(record, self.zone)}))
            self.notify("お支払いできませんでした", "Payment not completed")
        else:
            self._save(p.evolve(state=S.UNKNOWN.value, reason=record.reason if record.reason in ("not_confirmed",) else None,
                                note=(record.reason or "")[:40] or None))
            self.notify("処理未了：職員が確認します", "Checking the payment, please wait")
            # Ask the terminal once the worker is free (not the sale again: its last transaction).
            asyncio.get_running_loop().call_later(0.5, lambda: self._spawn(self.resolve_all(), "resolve-unknown"))

    def _receipt_no(self) -> str:
        """``<counter>-<YYYYMMDD>-<n>``: n counts this counter's receipts of the day."""
        today = self.now().astimezone(self.zone).strftime("%Y%m%d")
        prefix = f"{self.counter}-{today}-"
        n = self.journal.count_receipts(prefix)
        return f"{prefix}{n + 1:04d}"

    def _approve(self, p: Payment, result: dict[str, Any]) -> None:
        result = {**result, "receipt_no": self._receipt_no()}
        # The money moved when the sale was sent (or when the terminal says),
        # not when someone settled an unknown outcome: the 収納日 stays right.
        result.setdefault("txn_at", p.result.get("txn_at") or p.result.get("sent_at") or self.now().isoformat())
        approved = p.evolve(state=S.APPROVED.value, reason=None, result={**p.result, **result})
        self._save(approved)
        crashpoint("payment.after_approval")
        if approved.method == "cash":
            self.notify(f"お釣り {result['change']:,} 円", f"Change: {result['change']:,} yen")
        else:
            self.notify("お支払いありがとうございました", "Thank you")
        self.queue_print(approved, reprint=False)

    # ------------------------------------------------------------ unknown outcomes
    async def resolve_all(self) -> None:
        """Ask the terminal about every unknown payment (oldest first).

        A payment taken on a stand-alone (manual) terminal cannot be asked
        about: staff resolve it."""
        if self.terminal is None or self.busy is not None or self.terminal.driver == "manual":
            return
        loop = asyncio.get_running_loop()
        for p in self.journal.in_state(S.UNKNOWN.value):
            if self.busy is not None:
                return
            if p.method == "cash" or p.charge.get("terminal") != self.terminal.driver:
                continue
            try:
                last = await loop.run_in_executor(self._terminal_pool, self.terminal.last_transaction)
            except TerminalError as exc:
                logger.warning("%s: cannot ask the terminal about %s: %s", self.device, p.payment_id, exc)
                return
            try:
                self._match(p, last)
            except Exception:
                self.stats["errors"] += 1
                logger.exception("%s: cannot settle %s from the terminal's answer", self.device, p.payment_id)

    def _match(self, p: Payment, last: TxRecord | None) -> None:
        """Decide an unknown payment from the terminal's last transaction,
        compared with the one it had just before this payment (journaled)."""
        fresh = self.journal.get(p.payment_id)
        if fresh is None or fresh.state != S.UNKNOWN.value:
            return
        p = fresh
        if "before" not in p.result:
            logger.warning("%s: %s has no baseline of the terminal: staff decide", self.device, p.payment_id)
            if p.reason != "mismatch":
                self._save(p.evolve(reason="mismatch"))
            return
        kind = TxKind.SALE if p.kind == "sale" else TxKind.VOID
        if _identity(last) == p.result["before"]:
            # The terminal's last transaction is the one it had before: this
            # payment never reached it.
            logger.info("%s: %s not processed by the terminal (its last is unchanged)", self.device, p.payment_id)
            self._settle_unknown(p, S.DECLINED.value, "not_processed", {})
            return
        if last is None or last.kind is not kind or last.amount != p.amount:
            logger.warning("%s: %s: the terminal's last transaction (%s) does not match", self.device, p.payment_id,
                           f"{last.kind.value} {last.amount} yen" if last else "none")
            if p.reason != "mismatch":
                self._save(p.evolve(reason="mismatch"))
            return
        if last.outcome is Outcome.APPROVED:
            self._settle_unknown(p, S.APPROVED.value, None, _result_of(last, self.zone))
        elif last.outcome in (Outcome.DECLINED, Outcome.ABORTED):
            self._settle_unknown(p, S.DECLINED.value, last.reason if last.reason == "reversed_by_terminal" else "declined",
                                 _result_of(last, self.zone))
        # Outcome.UNKNOWN: the terminal does not know either; stays unknown.

    def _settle_unknown(self, p: Payment, state: str, reason: str | None, result: dict[str, Any], *, staff_id: str | None = None) -> None:
        if p.kind == "sale":
            if state == S.APPROVED.value:
                self._approve(_with(p, staff_id=staff_id or p.staff_id), result)
            else:
                self._save(p.evolve(state=state, reason=reason, result={**p.result, **result}, staff_id=staff_id or p.staff_id))
            return
        # A void whose outcome was unknown.
        if state == S.APPROVED.value:
            self._void_done(_with(p, staff_id=staff_id or p.staff_id), result)
        else:
            self._save(p.evolve(state=state, reason=reason, staff_id=staff_id or p.staff_id))

    def resolve_by_staff(self, p: Payment, cmd: PaymentCommand) -> None:
        if cmd.approved and p.method != "cash" and not cmd.slip_no:
            self.stats["refused"] += 1
            self.notify("伝票番号を入力してください", "Enter the slip number")
            return
        result = {"slip_no": cmd.slip_no, "approval_no": cmd.approval_no} if cmd.approved else {}
        logger.info("%s: %s resolved by staff %s: %s", self.device, p.payment_id, cmd.staff_id,
                    "approved" if cmd.approved else "not charged")
        self._settle_unknown(p, S.APPROVED.value if cmd.approved else S.DECLINED.value,
                             None if cmd.approved else "staff", {k: v for k, v in result.items() if v}, staff_id=cmd.staff_id)

    # ------------------------------------------------------------ cancel, void, refund
    def cancel(self, p: Payment) -> None:
        if p.state == S.READY.value:
            # (A sale being prepared for it sees the change and does not start.)
            self._save(p.evolve(state=S.CANCELLED.value))
            self.notify("請求を取り下げました", "Charge withdrawn")
        elif self.busy == p.payment_id and self.terminal is not None:
            # The terminal decides: an abort before the card is read ends
            # "aborted"; after, the sale's own outcome stands.
            self.terminal.abort()
            cancel = getattr(self.terminal, "cancel", None)
            if cancel is not None:
                cancel()
        else:
            self.stats["refused"] += 1
            logger.info("%s: cancel of %s in state %s refused", self.device, p.payment_id, p.state)

    async def void(self, original: Payment, cmd: PaymentCommand) -> None:
        """取消: a new void record, journaled before the terminal is asked."""
        existing = self.journal.get(str(cmd.new_id))
        if existing is not None:
            self._republish(existing)  # a repeated command
            return
        now = self.now().isoformat()
        void = Payment(
            payment_id=str(cmd.new_id), charge_id=original.charge_id, kind="void", original_id=original.payment_id,
            state=S.PENDING.value, version=1, method=original.method, amount=original.amount,
            # The original's lines, for the 取消 slip (the ledger gets none: they are the original's).
            charge={"ticket": original.charge.get("ticket"), "brand": original.charge.get("brand"),
                    "terminal": original.charge.get("terminal", "none"), "lines": original.charge.get("lines", []),
                    "receipt": "slip", "method_ja": original.charge.get("method_ja"), "method_en": original.charge.get("method_en")},
            created_at=now, updated_at=now, staff_id=cmd.staff_id, note=cmd.reason,
        )
        if original.kind != "sale" or original.state != S.APPROVED.value:
            # Central checked; this only happens when central's view was stale.
            self.stats["refused"] += 1
            logger.warning("%s: void of %s in state %s refused", self.device, original.payment_id, original.state)
            self._save(_with(void, state=S.DECLINED.value, reason="declined", note=f"original is {original.state}"))
            return
        if original.method == "cash":
            self._void_done(void, {})
            return
        if self.terminal is None:
            self._save(_with(void, state=S.DECLINED.value, reason="terminal_unavailable"))
            return
        if self.busy is not None or self._unknown_at_terminal() is not None:
            self.notify("端末が使用中です。後で取り消してください", "Terminal busy: void later")
            self._save(_with(void, state=S.DECLINED.value, reason="terminal_busy"))
            return
        self.busy = void.payment_id
        loop = asyncio.get_running_loop()
        slip = original.result.get("slip_no") or ""
        try:
            before = await self._baseline(void)
            if before is False:
                self._save(_with(void, state=S.DECLINED.value, reason="terminal_unavailable"))
                return
            void = _with(void, result={"before": before, "sent_at": self.now().isoformat()})
            self._save(void)
            try:
                record = await loop.run_in_executor(self._terminal_pool, lambda: self.terminal.void(slip, original.amount, on_status=self._on_status))
            except TerminalUnavailable as exc:
                logger.error("%s: terminal unavailable for void %s: %s", self.device, void.payment_id, exc)
                self._save(self.journal.get(void.payment_id).evolve(state=S.DECLINED.value, reason="terminal_unavailable"))
                return
            except ValueError as exc:  # e.g. the original has no slip number the terminal understands
                logger.error("%s: void %s not sent: %s", self.device, void.payment_id, exc)
                self._save(self.journal.get(void.payment_id).evolve(state=S.DECLINED.value, reason="declined",
                                                                    note=str(exc)[:200]))
                return
            except Exception as exc:
                logger.exception("%s: terminal failed during void %s", self.device, void.payment_id)
                record = TxRecord(kind=TxKind.VOID, outcome=Outcome.UNKNOWN, amount=void.amount, reason="driver_error",
                                  message=str(exc)[:100])
            void = self.journal.get(void.payment_id)
            if record.outcome is Outcome.APPROVED:
                self._void_done(void, _result_of(record, self.zone))
            elif record.outcome in (Outcome.DECLINED, Outcome.ABORTED):
                self._save(void.evolve(state=S.DECLINED.value, reason="declined"))
                self.notify("端末で取り消せませんでした", "The terminal refused the void")
            else:
                self._save(void.evolve(state=S.UNKNOWN.value))
        except asyncio.CancelledError:
            raise
        except Exception:
            self._internal_error(void.payment_id)
        finally:
            self.busy = None

    def _void_done(self, void: Payment, result: dict[str, Any]) -> None:
        original = self.journal.get(void.original_id)
        result = {**result, "receipt_no": self._receipt_no()}
        result.setdefault("txn_at", void.result.get("sent_at") or self.now().isoformat())
        done = (void.evolve(state=S.APPROVED.value, result={**void.result, **result}) if self.journal.get(void.payment_id)
                else _with(void, state=S.APPROVED.value, result=result))
        self._save(done, original.evolve(state=S.VOIDED.value))
        self.notify("取り消しました", "Voided")
        self.queue_print(done, reprint=False)

    def refund(self, original: Payment, cmd: PaymentCommand) -> None:
        """返金: an e-money payment that cannot be voided is paid back in cash,
        out of band; the record points to its original."""
        if self.journal.get(str(cmd.new_id)) is not None:
            self._republish(self.journal.get(str(cmd.new_id)))
            return
        now = self.now().isoformat()
        refund = Payment(
            payment_id=str(cmd.new_id), charge_id=original.charge_id, kind="refund", original_id=original.payment_id,
            state=S.APPROVED.value, version=1, method="cash", amount=original.amount,
            charge={"ticket": original.charge.get("ticket"), "brand": original.charge.get("brand"), "terminal": "none",
                    "lines": original.charge.get("lines", []), "receipt": "receipt", "method_ja": "現金（返金）",
                    "method_en": "Cash refund"},
            result={"txn_at": now, "receipt_no": self._receipt_no()}, created_at=now, updated_at=now,
            staff_id=cmd.staff_id, note=cmd.reason,
        )
        if original.kind != "sale" or original.state != S.APPROVED.value:
            self.stats["refused"] += 1
            self._save(_with(refund, state=S.DECLINED.value, reason="declined", note=f"original is {original.state}"))
            return
        self._save(refund, original.evolve(state=S.REFUNDED.value))
        self.notify(f"現金で {original.amount:,} 円を返金してください", f"Refund {original.amount:,} yen in cash")
        self.queue_print(refund, reprint=False)

    # ------------------------------------------------------------ printing
    def queue_print(self, p: Payment, *, reprint: bool) -> None:
        if self.printer is None:
            return
        self.printer.submit(p, reprint=reprint)

    def reprint(self, p: Payment) -> None:
        if p.state not in (S.APPROVED.value, S.VOIDED.value, S.REFUNDED.value):
            self.stats["refused"] += 1
            return
        self.queue_print(p, reprint=True)


def _with(p: Payment, **changes: Any) -> Payment:
    """``p`` changed in place of its current version (not a new version)."""
    return replace(p, **changes)


def _identity(record: TxRecord | None) -> dict | None:
    """What tells one terminal transaction from another: its slip and trace
    numbers and time (slip numbers alone wrap at 9999 and restart after the
    terminal's day close)."""
    if record is None:
        return None
    return {"slip": record.receipt_no, "trace": record.trace_no, "at": record.at.isoformat() if record.at else None,
            "kind": record.kind.value, "amount": record.amount}


def _clean(value: str | None, limit: int = 20) -> str | None:
    """A terminal's number as the bus takes it (letters, digits, '-')."""
    if value is None:
        return None
    return re.sub(r"[^A-Za-z0-9-]", "", value)[:limit] or None


def _result_of(record: TxRecord, zone: ZoneInfo) -> dict[str, Any]:
    """What the journal keeps of a terminal record: no card data beyond what
    the slip shows (the masked number is not kept at all).  A terminal's time
    is local time of the office."""
    out: dict[str, Any] = {
        "slip_no": _clean(record.receipt_no), "approval_no": _clean(record.approval_no),
        "terminal_id": _clean(record.terminal_id), "card_name": (record.card_name or "")[:40] or None,
        "trace_no": _clean(record.trace_no),
    }
    if record.at is not None:
        at = record.at if record.at.tzinfo else record.at.replace(tzinfo=zone)
        out["txn_at"] = at.isoformat()
    return {k: v for k, v in out.items() if v is not None}


def _fields(p: Payment) -> dict[str, str]:
    """Journal fields of a log line about ``p`` (bus/sdnotify.py)."""
    return log_fields(ticket=p.charge.get("ticket"), payment_id=p.payment_id)


__all__ = ["JournalError", "PaymentRole", "staff_message"]
