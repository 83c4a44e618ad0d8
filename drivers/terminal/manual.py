"""A stand-alone terminal operated by hand: staff key the amount in, the daemon records
what they confirm.

No line runs to the terminal, so nothing here can see a card. :meth:`ManualTerminal.sale`
blocks until staff confirm the result from the counter console (another thread calls
:meth:`ManualTerminal.confirm` or :meth:`ManualTerminal.cancel`), or until the time-out,
which leaves the payment :attr:`Outcome.UNKNOWN` (reason ``"not_confirmed"``): staff look
at the terminal's own journal and settle it by hand.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from drivers.terminal.base import (
    Health,
    OnStatus,
    Outcome,
    Terminal,
    TerminalError,
    TerminalUnavailable,
    Totals,
    TxKind,
    TxRecord,
    check_amount,
)

__all__ = ["ManualTerminal", "instructions"]

logger = logging.getLogger(__name__)

#: The word handed to ``on_status`` while the driver waits for staff.
WAITING_WORD = "waiting_for_staff"


def _yen(amount: int) -> str:
    return f"{amount:,} 円"


def instructions(kind: TxKind | str, amount: int, method_ja: str) -> list[str]:
    """The steps staff take on a stand-alone terminal, in Japanese.

    Args:
        kind: sale, void or refund.
        amount: yen.
        method_ja: the terminal's key for the payment method, e.g. ``"クレジット"``,
            ``"電子マネー"``, ``"QR"``, ``"交通系IC"``.

    Raises:
        ValueError: unknown kind, bad amount or empty method.
    """
    kind = TxKind(kind)
    check_amount(amount)
    if not method_ja:
        raise ValueError("method_ja is empty")
    if kind is TxKind.SALE:
        return [
            f"端末の「{method_ja}」を押す",
            f"金額 {_yen(amount)} を入力して確定する",
            "お客様にカードの挿入・タッチ、またはコードの読み取りをお願いする",
            "端末に「承認」または「完了」と表示されるのを待つ",
            "利用控えを受け取り、伝票番号と承認番号を画面に入力する",
        ]
    if kind is TxKind.VOID:
        return [
            f"端末の「取消」を押し、「{method_ja}」を選ぶ",
            "元の利用控えの伝票番号を入力する",
            f"金額 {_yen(amount)} を確認する",
            "お客様にカードの挿入・タッチをお願いする",
            "取消の利用控えを受け取り、伝票番号を画面に入力する",
        ]
    return [
        f"端末の「返品」を押し、「{method_ja}」を選ぶ",
        f"金額 {_yen(amount)} を入力して確定する",
        "お客様にカードの挿入・タッチをお願いする",
        "返品の利用控えを受け取り、伝票番号を画面に入力する",
    ]


@dataclass
class _Pending:
    kind: TxKind
    amount: int
    receipt_no: str | None = None  # the slip being voided
    result: TxRecord | None = None


class ManualTerminal(Terminal):
    """A stand-alone terminal; staff confirm each result.

    One command waits at a time; :meth:`confirm`, :meth:`cancel`, :meth:`abort`,
    :attr:`pending` and :meth:`health` may be called from any thread.

    Args:
        confirm_timeout_s: how long a command waits for staff, in seconds; then it
            returns ``UNKNOWN`` with reason ``"not_confirmed"``.
    """

    driver = "manual"

    def __init__(self, *, confirm_timeout_s: float = 600.0) -> None:
        if confirm_timeout_s <= 0:
            raise ValueError(f"confirm_timeout_s must be > 0, got {confirm_timeout_s}")
        self._timeout = confirm_timeout_s
        self._lock = threading.Lock()
        self._closed = False
        self._changed = threading.Condition(self._lock)
        self._pending: _Pending | None = None
        self._history: list[TxRecord] = []
        self._voided: set[str] = set()  # slip numbers of sales voided here

    # -- staff side ------------------------------------------------------------------

    @property
    def pending(self) -> tuple[TxKind, int] | None:
        """``(kind, amount)`` of the command waiting for staff, or ``None``."""
        with self._lock:
            return (self._pending.kind, self._pending.amount) if self._pending else None

    def confirm(
        self,
        approved: bool,
        *,
        slip_no: str | None = None,
        approval_no: str | None = None,
        card_name: str | None = None,
    ) -> None:
        """Record what the terminal showed for the waiting command.

        Args:
            approved: the terminal approved (承認) the transaction.
            slip_no: 伝票番号 from the slip; required when approved.
            approval_no: 承認番号 from the slip, if printed.
            card_name: the brand on the slip ("VISA", "nanaco" ...).

        Raises:
            ValueError: approved without a slip number.
            TerminalError: nothing is waiting.
        """
        if approved and not slip_no:
            raise ValueError("an approved transaction needs its slip number (伝票番号)")
        with self._lock:
            pending = self._pending
            if pending is None or pending.result is not None:
                raise TerminalError("no terminal command is waiting for confirmation")
            pending.result = TxRecord(
                kind=pending.kind,
                outcome=Outcome.APPROVED if approved else Outcome.DECLINED,
                amount=pending.amount,
                receipt_no=slip_no or None,
                approval_no=approval_no or None,
                card_name=card_name or None,
                at=datetime.now().replace(microsecond=0),
                reason=None if approved else "declined",
                message=None if approved else "staff reported the terminal declined",
            )
            self._changed.notify_all()

    def cancel(self) -> None:
        """Staff stopped the waiting command before the terminal did anything. No-op if
        nothing is waiting."""
        with self._lock:
            pending = self._pending
            if pending is None or pending.result is not None:
                return
            pending.result = TxRecord(
                kind=pending.kind, outcome=Outcome.ABORTED, amount=pending.amount,
                reason="cancelled", message="staff cancelled before the terminal was used",
            )
            self._changed.notify_all()

    # -- Terminal ------------------------------------------------------------------------

    def sale(self, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        return self._wait(_Pending(TxKind.SALE, check_amount(amount)), on_status)

    def void(self, receipt_no: str, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        if not isinstance(receipt_no, str) or not receipt_no.strip():
            raise ValueError("receipt_no is empty")
        return self._wait(_Pending(TxKind.VOID, check_amount(amount), receipt_no=receipt_no), on_status)

    def refund(self, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        return self._wait(_Pending(TxKind.REFUND, check_amount(amount)), on_status)

    def last_transaction(self) -> TxRecord | None:
        """The last result staff confirmed in this process (there is no line to ask the
        terminal); ``None`` if none."""
        with self._lock:
            return self._history[-1] if self._history else None

    def day_totals(self) -> Totals:
        """Approved sales not voided here, from memory since this process started."""
        with self._lock:
            history, voided = list(self._history), set(self._voided)
        by_card: dict[str, tuple[int, int]] = {}
        for r in history:
            if r.kind is TxKind.SALE and r.outcome is Outcome.APPROVED and r.receipt_no not in voided:
                count, amount = by_card.get(r.card_name or "other", (0, 0))
                by_card[r.card_name or "other"] = (count + 1, amount + r.amount)
        return Totals(
            count=sum(c for c, _ in by_card.values()), amount=sum(a for _, a in by_card.values()), by_card=by_card
        )

    def abort(self) -> None:
        self.cancel()

    def health(self) -> Health:
        if self.closed:
            return ("error", "closed", "manual terminal is closed")
        return ("ok", None, None)

    def _wait(self, pending: _Pending, on_status: OnStatus | None) -> TxRecord:
        with self._lock:
            if self._closed:
                raise TerminalUnavailable("manual terminal is closed")
            if self._pending is not None:
                raise TerminalUnavailable("manual terminal is busy with another command")
            self._pending = pending
        logger.info("manual terminal: waiting for staff to %s %d yen", pending.kind.value, pending.amount)
        if on_status is not None:
            try:
                on_status(WAITING_WORD)
            except Exception:
                logger.exception("manual terminal: on_status failed")
        deadline = time.monotonic() + self._timeout
        with self._lock:
            try:
                while pending.result is None and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._changed.wait(remaining)
                result = pending.result
                if result is None:
                    reason = "closed" if self._closed else "not_confirmed"
                    result = TxRecord(
                        kind=pending.kind, outcome=Outcome.UNKNOWN, amount=pending.amount, reason=reason,
                        message="staff did not confirm the result; check the terminal's journal",
                    )
                elif result.outcome in (Outcome.APPROVED, Outcome.DECLINED):
                    if pending.kind is TxKind.VOID and result.outcome is Outcome.APPROVED:
                        self._voided.add(pending.receipt_no or "")
                    self._history.append(result)
            finally:
                self._pending = None
        logger.info("manual terminal: %s of %d yen: %s", pending.kind.value, pending.amount, result.outcome.value)
        return result

    def _close(self) -> None:
        with self._lock:
            self._changed.notify_all()
