"""Receipts, slips and tickets on ESC/POS printers, in Japanese.

* :mod:`~drivers.printer.document`: what to print (:class:`Document` of blocks), printer-independent.
* :mod:`~drivers.printer.receipts`: our layouts: :func:`receipt` (領収書 / 利用控え),
  :func:`status_ticket`, :func:`queue_ticket`.
* :mod:`~drivers.printer.escpos`: :func:`encode` a document to ESC/POS bytes, ``kanji``
  (Shift_JIS text) or ``image`` (raster) mode.
* :class:`Printer`: a printer on USB, serial or the network; reads its status before printing.
* :class:`FakeEscposPrinter`: a fake network printer that answers status queries (tests, demo).
* :mod:`~drivers.printer.render`: draw ESC/POS bytes as the paper would look (previews, golden tests).
"""

from drivers.printer.document import (
    PAPER_58MM,
    PAPER_80MM,
    Block,
    Columns,
    Cut,
    Document,
    Feed,
    Paper,
    Qr,
    Rule,
    Text,
    char_columns,
    text_columns,
)
from drivers.printer.escpos import MODES, encode
from drivers.printer.fake import FakeEscposPrinter
from drivers.printer.printer import (
    Health,
    Printer,
    PrinterError,
    PrinterNotReady,
    PrinterStatus,
)
from drivers.printer.receipts import (
    ReceiptData,
    ReceiptLine,
    format_yen,
    queue_ticket,
    receipt,
    status_ticket,
)

__all__ = [
    "MODES",
    "PAPER_58MM",
    "PAPER_80MM",
    "Block",
    "Columns",
    "Cut",
    "Document",
    "FakeEscposPrinter",
    "Feed",
    "Health",
    "Paper",
    "Printer",
    "PrinterError",
    "PrinterNotReady",
    "PrinterStatus",
    "Qr",
    "ReceiptData",
    "ReceiptLine",
    "Rule",
    "Text",
    "char_columns",
    "encode",
    "format_yen",
    "queue_ticket",
    "receipt",
    "status_ticket",
    "text_columns",
]
