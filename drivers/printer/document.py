"""What to print, independent of any printer: a :class:`Document` is a tuple of blocks.

The model is small on purpose: a receipt is lines of text (one size, one alignment, bold
or not), label/amount columns, rules, a QR code, blank lines and a cut. The encoder
(:mod:`drivers.printer.escpos`) lays the blocks out on a :class:`Paper` of a given width in
*columns*: one column is a half-width character (ASCII, half-width katakana, ``¥``), a
full-width character (kanji, kana, ``×``, ``①``) takes two — see :func:`char_columns`.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALIGNS",
    "PAPER_58MM",
    "PAPER_80MM",
    "Block",
    "Columns",
    "Cut",
    "Document",
    "Feed",
    "Paper",
    "Qr",
    "Rule",
    "Text",
    "char_columns",
    "text_columns",
]

Align = Literal["left", "center", "right"]

#: The alignments of :class:`Text` and :class:`Qr`.
ALIGNS: frozenset[str] = frozenset({"left", "center", "right"})

#: Largest character size (GS ! allows 8; 4 is already 48 mm tall on a 80 mm roll).
MAX_SIZE = 4


@dataclass(frozen=True)
class Paper:
    """A paper roll and the printer's printable width on it.

    Attributes:
        columns: characters per line at font A (12 × 24 dots) and size 1.
        dots: printable width in dots (the width of a raster image), ``columns * 12`` or
            a little more.
    """

    columns: int
    dots: int

    def __post_init__(self) -> None:
        if not 16 <= self.columns <= 64:
            raise ValueError(f"Paper.columns must be 16..64, got {self.columns}")
        if self.dots < self.columns * 12 or self.dots % 8:
            raise ValueError(
                f"Paper.dots must be a multiple of 8 and >= columns * 12, got {self.dots}"
            )

    @classmethod
    def for_columns(cls, columns: int) -> Paper:
        """The paper for a configured width in columns: 42 → :data:`PAPER_80MM`, 32 →
        :data:`PAPER_58MM`, others ``columns * 12`` dots (rounded up to 8).

        Raises:
            ValueError: ``columns`` outside 16..64.
        """
        for paper in (PAPER_80MM, PAPER_58MM):
            if paper.columns == columns:
                return paper
        return cls(columns=columns, dots=(columns * 12 + 7) // 8 * 8)


#: 80 mm roll, 42 columns (512 dots at 180 dpi: Epson TM-T88 and most Japanese models).
PAPER_80MM = Paper(columns=42, dots=512)
#: 58 mm roll, 32 columns (384 dots).
PAPER_58MM = Paper(columns=32, dots=384)


def char_columns(ch: str) -> int:
    """How many columns the character ``ch`` takes on the paper: 1 or 2 (0 for combining
    marks and other zero-width characters).

    A character that Shift_JIS (JIS X 0201 + JIS X 0208) encodes in one byte is half-width
    and one in two bytes is full-width: that is what a Japanese printer does. For the
    rest (which are printed as an image), Unicode's East Asian Width decides: wide,
    full-width and *ambiguous* characters take two columns, as in Japanese fonts.
    """
    if len(ch) != 1:
        raise ValueError(f"char_columns() needs one character, got {ch!r}")
    try:
        return len(ch.encode("shift_jis"))
    except UnicodeEncodeError:
        pass
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F", "A") else 1


def text_columns(text: str) -> int:
    """The width of ``text`` in columns at size 1 (the sum of :func:`char_columns`)."""
    return sum(char_columns(ch) for ch in text)


def _check_size(kind: str, size: object) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"{kind}.size must be an int 1..{MAX_SIZE}, got {size!r}")


def _check_str(kind: str, field: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{kind}.{field} must be a str, not {type(value).__name__}")


def _check_bool(kind: str, field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{kind}.{field} must be a bool, not {type(value).__name__}")


@dataclass(frozen=True)
class Text:
    """A paragraph, wrapped to the paper width (a ``"\\n"`` starts a new line).

    Attributes:
        text: what to print.
        size: 1 (normal) or 2..4 (that many times as wide and as high).
        align: ``"left"``, ``"center"`` or ``"right"``.
        bold: printed emphasized (ESC E).
        note: a short text at size 1, not bold, printed right after ``text`` on its last
            line — the English beside the Japanese (``"再発行"`` + ``"REPRINT"``).
    """

    text: str
    size: int = 1
    align: Align = "left"
    bold: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        _check_str("Text", "text", self.text)
        _check_str("Text", "note", self.note)
        _check_size("Text", self.size)
        _check_bool("Text", "bold", self.bold)
        if self.align not in ALIGNS:
            raise ValueError(
                f"Text.align must be one of {sorted(ALIGNS)}, got {self.align!r}"
            )


@dataclass(frozen=True)
class Columns:
    """A label on the left and a value flush right on the same line, e.g.
    ``"住民票の写し ×2" … "¥600"``. When both don't fit, the label is wrapped and the value
    goes flush right on a line of its own.

    Attributes:
        left: the label.
        right: the value (an amount).
        size: character size of ``left`` and ``right`` (1..4).
        bold: both printed emphasized.
        note: a short text at size 1 right after ``left`` (``"合計"`` + ``"Total"``).
    """

    left: str
    right: str
    size: int = 1
    bold: bool = False
    note: str = ""

    def __post_init__(self) -> None:
        _check_str("Columns", "left", self.left)
        _check_str("Columns", "right", self.right)
        _check_str("Columns", "note", self.note)
        _check_size("Columns", self.size)
        _check_bool("Columns", "bold", self.bold)
        if "\n" in self.left + self.right + self.note:
            raise ValueError("Columns texts must be one line each")


@dataclass(frozen=True)
class Rule:
    """A line across the paper made of ``char`` (one character, e.g. ``"-"`` or ``"="``)."""

    char: str = "-"

    def __post_init__(self) -> None:
        _check_str("Rule", "char", self.char)
        if (
            len(self.char) != 1
            or char_columns(self.char) == 0
            or not self.char.isprintable()
        ):
            raise ValueError(
                f"Rule.char must be one printable character, got {self.char!r}"
            )


@dataclass(frozen=True)
class Qr:
    """A QR code (model 2).

    Attributes:
        data: the content, e.g. a URL (encoded as UTF-8).
        size: module size in dots, 1..16 (6 makes a URL about 25 mm wide at 180 dpi).
        align: ``"left"``, ``"center"`` or ``"right"``.
        ec: error correction level, ``"L"``, ``"M"``, ``"Q"`` or ``"H"``.
    """

    data: str
    size: int = 6
    align: Align = "center"
    ec: Literal["L", "M", "Q", "H"] = "M"

    def __post_init__(self) -> None:
        _check_str("Qr", "data", self.data)
        if not self.data:
            raise ValueError("Qr.data must not be empty")
        if len(self.data.encode("utf-8")) > 1000:
            raise ValueError("Qr.data is too long for a receipt (more than 1000 bytes)")
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int)
            or not 1 <= self.size <= 16
        ):
            raise ValueError(f"Qr.size must be an int 1..16, got {self.size!r}")
        if self.align not in ALIGNS:
            raise ValueError(
                f"Qr.align must be one of {sorted(ALIGNS)}, got {self.align!r}"
            )
        if self.ec not in ("L", "M", "Q", "H"):
            raise ValueError(f"Qr.ec must be L, M, Q or H, got {self.ec!r}")


@dataclass(frozen=True)
class Feed:
    """``lines`` blank lines (1..10)."""

    lines: int = 1

    def __post_init__(self) -> None:
        if (
            isinstance(self.lines, bool)
            or not isinstance(self.lines, int)
            or not 1 <= self.lines <= 10
        ):
            raise ValueError(f"Feed.lines must be an int 1..10, got {self.lines!r}")


@dataclass(frozen=True)
class Cut:
    """Feed the paper past the cutter and cut it (partially: a tab holds the receipt, the
    usual setting for counters). ``partial=False`` cuts through."""

    partial: bool = True

    def __post_init__(self) -> None:
        _check_bool("Cut", "partial", self.partial)


Block = Text | Columns | Rule | Qr | Feed | Cut
_BLOCK_TYPES = (Text, Columns, Rule, Qr, Feed, Cut)


@dataclass(frozen=True)
class Document:
    """Blocks printed top to bottom. A list given as ``blocks`` is stored as a tuple.

    Raises:
        TypeError: a block is not one of :data:`Block`.
    """

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        blocks = tuple(self.blocks)
        for block in blocks:
            if not isinstance(block, _BLOCK_TYPES):
                raise TypeError(
                    f"Document blocks must be Text, Columns, Rule, Qr, Feed or Cut, not {type(block).__name__}"
                )
        object.__setattr__(self, "blocks", blocks)

    def __add__(self, other: Document) -> Document:
        if not isinstance(other, Document):
            return NotImplemented
        return Document(self.blocks + other.blocks)

    def texts(self) -> list[str]:
        """Every text of the document in order (for tests and logs of *layout*, never of
        a real receipt's content)."""
        out: list[str] = []
        for block in self.blocks:
            if isinstance(block, Text):
                out += [block.text, block.note]
            elif isinstance(block, Columns):
                out += [block.left, block.note, block.right]
        return [t for t in out if t]
