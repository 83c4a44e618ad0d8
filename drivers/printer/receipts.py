"""The layouts we print: pure functions from plain data to a :class:`Document`.

* :func:`receipt`: 領収書 (a receipt, for any payment method) and 利用控え (the slip of a
  card, e-money or QR payment), with 再発行 on a re-print and 取消 on a void.
* :func:`status_ticket`: a small IT slip (device, address, version, time).
* :func:`queue_ticket`: the kiosk's numbered ticket with the counters in order and a QR
  code of the ticket's status page.

Japanese comes first; English is printed beside it where a visitor may need it (the
title, the total, the method, the change).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from drivers.printer.document import Block, Columns, Cut, Document, Feed, Qr, Rule, Text

__all__ = [
    "TRANSACTION_TYPES",
    "ReceiptData",
    "ReceiptLine",
    "format_datetime",
    "format_yen",
    "queue_ticket",
    "receipt",
    "status_ticket",
]

#: Transaction types of a card slip (取引内容), Japanese → English.
TRANSACTION_TYPES: dict[str, str] = {"売上": "Sale", "取消": "Void", "返品": "Refund"}

_WEEKDAYS = "月火水木金土日"


def format_yen(amount: int) -> str:
    """``1000`` → ``"¥1,000"``, ``-900`` → ``"-¥900"``. Yen are integers, always."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"yen must be an int, not {type(amount).__name__}")
    sign = "-" if amount < 0 else ""
    return f"{sign}¥{abs(amount):,}"


def format_datetime(at: datetime) -> str:
    """``2026-11-22 10:15`` → ``"2026年11月22日(日) 10:15"`` (as given: no time zone
    conversion)."""
    return f"{at.year}年{at.month}月{at.day}日({_WEEKDAYS[at.weekday()]}) {at:%H:%M}"


def _yen_field(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int (yen), not {type(value).__name__}")


@dataclass(frozen=True)
class ReceiptLine:
    """One fee line: ``name_ja`` × ``quantity`` at ``unit_price`` yen is ``amount`` yen.

    Raises:
        ValueError: ``amount != quantity * unit_price``, or a quantity below 1.
    """

    name_ja: str
    quantity: int
    unit_price: int
    amount: int

    def __post_init__(self) -> None:
        if not isinstance(self.name_ja, str) or not self.name_ja:
            raise ValueError("ReceiptLine.name_ja must be a non-empty str")
        for name in ("quantity", "unit_price", "amount"):
            _yen_field(f"ReceiptLine.{name}", getattr(self, name))
        if self.quantity < 1:
            raise ValueError(f"ReceiptLine.quantity must be >= 1, got {self.quantity}")
        if self.amount != self.quantity * self.unit_price:
            raise ValueError(
                f"ReceiptLine {self.name_ja!r}: amount {self.amount} != {self.quantity} × {self.unit_price}"
            )


# A masked card number shows at most its last four digits.
_MAX_CARD_DIGITS = 4


@dataclass(frozen=True)
class ReceiptData:
    """What a receipt or slip says.

    Attributes:
        kind: ``"receipt"`` (領収書), ``"slip"`` (利用控え, card/e-money/QR) or
            ``"refund"`` (返金伝票: money paid back in cash, out of band).
        office: e.g. ``"みどり市役所 市民課"``.
        counter: e.g. ``"1番窓口"``.
        issued_at: when the payment was made (printed as given).
        receipt_no: our payment number, e.g. ``"R-20261122-0001"``.
        lines: the fee lines (the revenue account is not printed and not given).
        total: the sum of the lines' amounts, in yen.
        method_ja, method_en: ``"現金"``/``"Cash"``, ``"クレジット"``/``"Credit"`` ...
        brand: ``"VISA"``, ``"nanaco"``, ``"PayPay"`` ... (cashless).
        tendered, change: お預り and おつり (cash), ``change == tendered - total``.
        card_no: the masked card number (at most the last 4 digits visible).
        slip_no: 伝票番号 of the terminal.
        approval_no: 承認番号.
        terminal_id: 端末番号.
        transaction: 取引内容, one of :data:`TRANSACTION_TYPES` (``"売上"`` by default
            on a slip).
        reprint: a re-print: 再発行 REPRINT at the top.
        void: the payment was voided (取消): 取消 VOID at the top.
        notes: footer lines; by default ``"上記の金額を領収しました。"`` on a receipt and
            ``"お客様控え"`` on a slip.

    Raises:
        ValueError: inconsistent amounts, an unmasked card number, an unknown kind or
            transaction type.
    """

    kind: Literal["receipt", "slip", "refund"]
    office: str
    counter: str
    issued_at: datetime
    receipt_no: str
    lines: tuple[ReceiptLine, ...]
    total: int
    method_ja: str
    method_en: str = ""
    brand: str = ""
    tendered: int | None = None
    change: int | None = None
    card_no: str = ""
    slip_no: str = ""
    approval_no: str = ""
    terminal_id: str = ""
    transaction: str = ""
    reprint: bool = False
    void: bool = False
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", tuple(self.lines))
        object.__setattr__(self, "notes", tuple(self.notes))
        if self.kind not in ("receipt", "slip", "refund"):
            raise ValueError(
                f"ReceiptData.kind must be 'receipt', 'slip' or 'refund', got {self.kind!r}"
            )
        if not isinstance(self.issued_at, datetime):
            raise TypeError("ReceiptData.issued_at must be a datetime")
        if not self.lines or not all(
            isinstance(line, ReceiptLine) for line in self.lines
        ):
            raise ValueError("ReceiptData.lines must be one or more ReceiptLine")
        _yen_field("ReceiptData.total", self.total)
        _yen_field("ReceiptData.tendered", self.tendered, optional=True)
        _yen_field("ReceiptData.change", self.change, optional=True)
        if self.total != sum(line.amount for line in self.lines):
            raise ValueError(f"ReceiptData.total {self.total} != the sum of the lines")
        if (self.tendered is None) != (self.change is None):
            raise ValueError("ReceiptData.tendered and change go together")
        if self.tendered is not None and self.change != self.tendered - self.total:
            raise ValueError(
                f"ReceiptData.change {self.change} != tendered {self.tendered} - total {self.total}"
            )
        if len(re.findall(r"\d", self.card_no)) > _MAX_CARD_DIGITS:
            raise ValueError(
                "ReceiptData.card_no must be masked (at most the last 4 digits)"
            )
        if self.transaction and self.transaction not in TRANSACTION_TYPES:
            raise ValueError(
                f"ReceiptData.transaction must be one of {sorted(TRANSACTION_TYPES)}, got {self.transaction!r}"
            )
        for name in (
            "office",
            "counter",
            "receipt_no",
            "method_ja",
            "method_en",
            "brand",
            "card_no",
            "slip_no",
            "approval_no",
            "terminal_id",
        ):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(
                    f"ReceiptData.{name} must be a str, not {type(value).__name__}"
                )
            if "\n" in value:
                raise ValueError(f"ReceiptData.{name} must be one line")


def _banner(ja: str, en: str) -> list[Block]:
    return [Rule("*"), Text(ja, size=2, align="center", bold=True, note=en), Rule("*")]


def receipt(data: ReceiptData) -> Document:
    """The 領収書 or 利用控え for ``data``, ending with a cut."""
    slip = data.kind == "slip"
    blocks: list[Block] = []
    if data.reprint:
        blocks += _banner("再発行", "REPRINT")
    if data.void or data.transaction == "取消":
        blocks += _banner("取消", "VOID")
    if data.kind == "refund":
        # Money paid back out of band (an e-money sale that cannot be voided).
        blocks += [
            Text("返金伝票", size=2, align="center", bold=True),
            Text("Refund slip", align="center"),
        ]
    elif slip:
        blocks += [
            Text("利用控え", size=2, align="center", bold=True),
            Text("Payment slip", align="center"),
        ]
    else:
        blocks += [
            Text("領収書", size=2, align="center", bold=True),
            Text("Receipt", align="center"),
        ]
    blocks += [
        Feed(1),
        Text(data.office, align="center"),
        Text(data.counter, align="center"),
        Feed(1),
        Columns("日時", format_datetime(data.issued_at)),
        Columns("受付番号", data.receipt_no),
        Rule(),
    ]
    for line in data.lines:
        blocks.append(
            Columns(f"{line.name_ja} ×{line.quantity}", format_yen(line.amount))
        )
        if line.quantity > 1:
            blocks.append(Text(f"  (単価 {format_yen(line.unit_price)})"))
    blocks += [
        Rule(),
        Columns("合計", format_yen(data.total), size=2, bold=True, note="Total"),
        Columns(
            "お支払方法",
            " ".join(p for p in (data.method_ja, data.method_en) if p),
            note="Payment",
        ),
    ]
    if data.tendered is not None and data.change is not None:
        blocks += [
            Columns("お預り", format_yen(data.tendered), note="Tendered"),
            Columns("おつり", format_yen(data.change), note="Change"),
        ]
    details = [
        ("カード会社", data.brand),
        ("会員番号", data.card_no),
        (
            "取引内容",
            f"{data.transaction} {TRANSACTION_TYPES[data.transaction]}"
            if data.transaction
            else "",
        ),
        ("伝票番号", data.slip_no),
        ("承認番号", data.approval_no),
        ("端末番号", data.terminal_id),
    ]
    details = [(label, value) for label, value in details if value]
    if details:
        blocks.append(Rule())
        blocks += [Columns(label, value) for label, value in details]
    blocks.append(Rule())
    notes = data.notes or (
        ("お客様控え",) if slip
        else ("上記の金額を返金しました。", "返金を受けた方の署名：") if data.kind == "refund"
        else ("上記の金額を領収しました。",)
    )
    blocks += [Text(note) for note in notes]
    if data.reprint:
        blocks.append(Text("この用紙は再発行したものです。"))
    blocks += [Feed(1), Text(data.office, align="right"), Cut()]
    return Document(tuple(blocks))


def status_ticket(
    *,
    device_id: str,
    ip: str,
    version: str,
    at: datetime,
    extra: Mapping[str, str] | None = None,
) -> Document:
    """A small IT slip: which device this is and how to reach it.

    Args:
        device_id: e.g. ``"edge-counter-01"``.
        ip: the device's address(es), e.g. ``"192.0.2.15"``.
        version: the madoguchi version running.
        at: when the slip was printed.
        extra: more ``label: value`` lines (e.g. ``{"Printer": "TM-T88VI"}``), in order.
    """
    blocks: list[Block] = [
        Text("機器情報", size=2, align="center", bold=True, note="Device status"),
        Rule(),
        Columns("Device", device_id),
        Columns("IP", ip),
        Columns("Version", version),
        Columns("Time", at.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    blocks += [
        Columns(str(label), str(value)) for label, value in (extra or {}).items()
    ]
    blocks += [Rule(), Cut()]
    return Document(tuple(blocks))


def queue_ticket(
    *,
    number: int,
    issued_at: datetime,
    office: str,
    counters: Sequence[str],
    url: str,
    wait_minutes: int | None = None,
    waiting: int | None = None,
    service_ja: str = "",
) -> Document:
    """The kiosk's ticket (整理券).

    Args:
        number: the ticket number, printed big.
        issued_at: when the ticket was taken.
        office: e.g. ``"みどり市役所"``.
        counters: the counters to visit, in order (e.g. ``["1番 住民異動", "5番 国民健康保険"]``).
        url: the ticket's status page, printed as a QR code.
        wait_minutes: the expected wait, or ``None`` when unknown (not printed).
        waiting: people ahead, or ``None`` (not printed).
        service_ja: the service chosen, e.g. ``"転入"``.
    """
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ValueError(f"number must be an int >= 0, got {number!r}")
    blocks: list[Block] = [
        Text(office, align="center"),
        Text("受付番号", align="center", note="Your number"),
        Text(str(number), size=4, align="center", bold=True),
    ]
    if service_ja:
        blocks.append(Text(service_ja, size=2, align="center"))
    blocks += [Text(format_datetime(issued_at), align="center"), Rule()]
    if counters:
        blocks.append(Text("お進みいただく窓口", note="Counters"))
        blocks += [Text(f"{i}. {name}") for i, name in enumerate(counters, 1)]
    if waiting is not None:
        blocks.append(Columns("お待ちの方", f"{waiting}人", note="Waiting"))
    if wait_minutes is not None:
        blocks.append(Columns("待ち時間の目安", f"約{wait_minutes}分", note="Wait"))
    blocks += [
        Rule(),
        Text("呼出状況はこちら", align="center", note="Status"),
        Qr(url, size=5, align="center"),
        Feed(1),
        Text("番号が呼ばれるまでお待ちください。", align="center"),
        Cut(),
    ]
    return Document(tuple(blocks))
