"""What every payment terminal driver does, and the records it returns.

A driver talks to one payment terminal (決済端末). Three rules hold for every driver; the
edge daemon relies on them (docs/terminal.md):

* :meth:`Terminal.sale`, :meth:`Terminal.void` and :meth:`Terminal.refund` raise
  :class:`TerminalUnavailable` only when the command was **certainly not accepted** by the
  terminal (the port cannot be opened, nothing answers the status enquiry sent first).
  Nothing was charged then.
* Once the command itself has been sent they never raise for an outcome: any doubt
  (timeout, lost connection, no completion, corrupt frames) returns
  :attr:`Outcome.UNKNOWN` with a ``reason`` word. The caller resolves it with
  :meth:`Terminal.last_transaction`, never by sending the sale again.
* :meth:`Terminal.last_transaction` never starts a transaction.
"""

from __future__ import annotations

import abc
import enum
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar

from drivers.base import Closeable
from drivers.errors import DriverError

__all__ = [
    "MAX_AMOUNT",
    "Health",
    "OnStatus",
    "Outcome",
    "Terminal",
    "TerminalError",
    "TerminalUnavailable",
    "Totals",
    "TxKind",
    "TxRecord",
    "check_amount",
    "mask_pan",
]

#: Largest amount a driver accepts, in yen (7 digits: what counter terminals key in).
MAX_AMOUNT = 9_999_999

#: ``(status, reason, message)`` as returned by ``health()``, like ``drivers.display``:
#: status ``"ok"``, ``"warning"`` or ``"error"``; reason a short word; both ``None`` when ok.
Health = tuple[str, str | None, str | None]

#: Callback for intermediate status texts (ZVT ``04 FF``), e.g. ``"insert_card"``.
OnStatus = Callable[[str], None]


class Outcome(str, enum.Enum):
    """How a transaction ended, as far as the driver saw."""

    APPROVED = "approved"
    DECLINED = "declined"
    ABORTED = "aborted"
    UNKNOWN = "unknown"


class TxKind(str, enum.Enum):
    """What a transaction did: a sale (売上), a void of a sale (取消) or a refund (返品)."""

    SALE = "sale"
    VOID = "void"
    REFUND = "refund"


@dataclass(frozen=True)
class TxRecord:
    """One transaction as the terminal reported it.

    Attributes:
        kind: sale, void or refund.
        outcome: see :class:`Outcome`.
        amount: yen.
        receipt_no: the slip number (伝票番号, ZVT BMP 87), 4 digits.
        trace_no: ZVT BMP 0B, 6 digits.
        approval_no: 承認番号 (ZVT BMP 3B), spaces stripped.
        terminal_id: ZVT BMP 29, 8 digits.
        card_name: the brand as the terminal names it ("VISA", "nanaco", ...).
        masked_pan: never more than the last 4 digits, e.g. ``"************1234"``.
        at: the terminal's date and time of the transaction (naive local time).
        result_code: ZVT BMP 27 / the ``06 1E`` code when not approved.
        reason: a short machine word when not approved (``"declined"``,
            ``"no_answer"``, ``"connection_lost"``, ``"completion_lost"``,
            ``"reversed_by_terminal"``, ``"cancelled"``, ...).
        message: one English sentence for logs.
    """

    kind: TxKind
    outcome: Outcome
    amount: int
    receipt_no: str | None = None
    trace_no: str | None = None
    approval_no: str | None = None
    terminal_id: str | None = None
    card_name: str | None = None
    masked_pan: str | None = None
    at: datetime | None = None
    result_code: int | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Totals:
    """The terminal's day totals (ZVT ``06 10``).

    Attributes:
        count: number of bookings.
        amount: net yen.
        by_card: ``{card name: (count, amount)}``.
    """

    count: int
    amount: int
    by_card: dict[str, tuple[int, int]] = field(default_factory=dict)


class TerminalError(DriverError):
    """Base class of the errors of ``drivers.terminal``."""


class TerminalUnavailable(TerminalError):
    """The command was certainly **not** accepted by the terminal: the port cannot be
    opened, nothing answers the status enquiry sent before it, the terminal says it is not
    ready, or the driver is closed or busy. Nothing was charged."""


def check_amount(amount: int) -> int:
    """Return ``amount`` if it is a valid yen amount (1 ... :data:`MAX_AMOUNT`).

    Raises:
        TypeError: not an int (``bool`` included).
        ValueError: out of range.
    """
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amount must be an int (yen), not {type(amount).__name__}")
    if amount <= 0 or amount > MAX_AMOUNT:
        raise ValueError(f"amount must be 1 ... {MAX_AMOUNT} yen, got {amount}")
    return amount


def mask_pan(pan: str | None) -> str | None:
    """Mask a card number so that at most its last 4 digits show (``*`` for the rest).

    Whatever the terminal sent (some send more digits than they should), the result
    never carries more than 4 digits.
    """
    if not pan:
        return None
    pan = "".join(ch for ch in pan if ch.isdigit() or ch == "*")
    if not pan:
        return None
    tail = pan[-4:]
    return "*" * (len(pan) - len(tail)) + tail


class Terminal(Closeable, abc.ABC):
    """A payment terminal. All methods block; call them from a worker thread.

    Subclasses set :attr:`driver`, ``self._lock`` and ``self._closed`` (see
    :class:`drivers.base.Closeable`) and implement the abstract methods.
    """

    driver: ClassVar[str]
    _lock: threading.Lock | threading.RLock

    @abc.abstractmethod
    def sale(self, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        """Charge ``amount`` yen.

        Args:
            amount: yen, 1 ... :data:`MAX_AMOUNT`.
            on_status: called (on the calling thread) with intermediate status words
                such as ``"insert_card"``; exceptions from it are logged and ignored.

        Raises:
            ValueError, TypeError: bad amount (nothing is sent).
            TerminalUnavailable: the sale was certainly not accepted.
        """

    @abc.abstractmethod
    def void(self, receipt_no: str, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        """Void (取消) the sale with slip number ``receipt_no`` of ``amount`` yen.

        Raises: as :meth:`sale`; ``ValueError`` also for a malformed ``receipt_no``.
        """

    @abc.abstractmethod
    def refund(self, amount: int, *, on_status: OnStatus | None = None) -> TxRecord:
        """Refund (返品) ``amount`` yen to a card. Raises: as :meth:`sale`."""

    @abc.abstractmethod
    def last_transaction(self) -> TxRecord | None:
        """Ask the terminal for its last transaction; ``None`` if it has none.

        Never starts a transaction.

        Raises:
            TerminalUnavailable: the terminal cannot be asked.
        """

    @abc.abstractmethod
    def day_totals(self) -> Totals:
        """The terminal's totals of the day so far (does not close the day).

        Raises:
            TerminalUnavailable: the terminal cannot be asked.
        """

    @abc.abstractmethod
    def abort(self) -> None:
        """Ask a running command to stop. Thread-safe, returns at once; the running
        call returns its own outcome (``ABORTED`` if the terminal agreed in time)."""

    @abc.abstractmethod
    def health(self) -> Health:
        """``(status, reason, message)`` from what the driver last saw; never blocks on
        the terminal."""
