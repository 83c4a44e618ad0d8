"""Document → ESC/POS bytes, in one of two modes.

``kanji``
    For Japanese-model printers (Epson TM-T88 JP, TM-m30 JP, Star mC-Print3 in its ESC/POS
    emulation …): text is sent as Shift_JIS after ``FS C 1`` (code system Shift_JIS) and
    ``FS &`` (kanji mode on). Only JIS X 0208 characters are sent as text. Common symbols
    outside it are mapped (``①`` → ``(1)``, ``㈱`` → ``(株)``, ``～`` → ``〜`` …); a line
    that still holds a character the printer has no glyph for (``麵``, ``髙``, ``é``) is
    drawn with the CJK font and sent as a ``GS v 0`` raster image instead, so that a name
    is never printed wrong; a character the font lacks as well (emoji) becomes ``〓``.
    A ``?`` is never printed in place of a character.

``image``
    For printers without kanji: the whole document is drawn with the CJK font and sent as
    ``GS v 0`` raster images. Slower to print, and about 20 times the bytes.

Both modes lay the document out the same way (same line breaks, same glyph grid), so a
preview of either (:mod:`drivers.printer.render`) looks the same.

The QR code (``GS ( k``) and raster (``GS v 0``) commands are byte-for-byte those that
python-escpos 3.1 emits (``Dummy().qr(..., native=True)``, ``Dummy().image(...,
impl="bitImageRaster")``); the tests check it. Text does not go through python-escpos,
whose text encoder knows no kanji.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import qrcode
import qrcode.constants
from PIL import Image

from drivers.printer import _commands as cmd
from drivers.printer._paint import (
    GETA,
    Cell,
    FontNotFound,
    Painter,
    painter,
    to_raster_rows,
)
from drivers.printer.document import (
    PAPER_80MM,
    Columns,
    Cut,
    Document,
    Feed,
    Paper,
    Qr,
    Rule,
    Text,
    char_columns,
)

__all__ = ["MODES", "RASTER_STRIP_ROWS", "Mode", "encode", "printable_text", "qr_image"]

Mode = Literal["kanji", "image"]
#: The encoder's modes.
MODES: frozenset[str] = frozenset({"kanji", "image"})

#: Rows per ``GS v 0`` command in image mode (python-escpos splits images at 960 too; a
#: printer's receive buffer need not hold a whole receipt).
RASTER_STRIP_ROWS = 960

# Symbols outside JIS X 0208 that have a customary spelling inside it. Letters (kanji
# variants such as 髙 or 﨑, accented Latin) are deliberately absent: a name is printed
# as an image rather than changed.
_SUBSTITUTES: dict[str, str] = {
    **{chr(0x2460 + i): f"({i + 1})" for i in range(20)},  # ①..⑳
    **{chr(0x2474 + i): f"({i + 1})" for i in range(20)},  # ⑴..⒇
    **{chr(0x2776 + i): f"({i + 1})" for i in range(10)},  # ❶..❿
    **dict(
        zip(
            "ⅠⅡⅢⅣⅤⅥⅦⅧⅨⅩ",
            ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X"],
            strict=True,
        )
    ),
    **dict(
        zip(
            "ⅰⅱⅲⅳⅴⅵⅶⅷⅸⅹ",
            ["i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix", "x"],
            strict=True,
        )
    ),
    "㈱": "(株)",
    "㈲": "(有)",
    "㈹": "(代)",
    "№": "No.",
    "℡": "TEL",
    "™": "TM",
    "～": "〜",  # FULLWIDTH TILDE (cp932's 0x8160) -> WAVE DASH (JIS X 0208's)
    "－": "−",  # FULLWIDTH HYPHEN-MINUS -> MINUS SIGN
    "—": "―",  # EM DASH -> HORIZONTAL BAR (JIS X 0208 1-29)
    "–": "-",
    "∥": "‖",
    "￢": "¬",
    "￠": "¢",
    "￡": "£",
    "¦": "|",
    "\\": "＼",  # 0x5C prints ¥ with the Japanese character set (ESC R 8)
    "~": "〜",  # 0x7E prints ‾ with the Japanese character set
    "\t": " ",
}

# Not to be printed at all: variation selectors, joiners, other format characters.
_DROP_CATEGORIES = ("Cc", "Cf", "Mn", "Me", "Cs", "Co", "Cn")

# Characters a line must not start with (a simple 行頭禁則).
_NO_LINE_START = set(
    "、。，．,.)）」』】〕〉》ー・：；:;!?！？ぁぃぅぇぉっゃゅょァィゥェォッャュョ"
)


def _sjis(ch: str) -> bool:
    try:
        ch.encode("shift_jis")
    except UnicodeEncodeError:
        return False
    return True


def printable_text(text: str, paint: Painter | None) -> str:
    """``text`` with every character made printable: kept when Shift_JIS (JIS X 0208)
    has it, mapped when a customary substitute exists, kept for drawing when the font has
    it (``paint`` given), else replaced by ``〓``. Control and format characters are
    dropped (``"\\n"`` too: split lines first)."""
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", text):
        if ch in _SUBSTITUTES:
            out.append(_SUBSTITUTES[ch])
        elif _sjis(ch) and ch.isprintable():
            out.append(ch)
        elif unicodedata.category(ch) in _DROP_CATEGORIES:
            continue
        elif not unicodedata.category(ch).startswith("L") and _sjis(
            folded := unicodedata.normalize("NFKC", ch)
        ):
            out.append(folded)  # e.g. ㎡ -> m2, ½ -> 1⁄2 is not SJIS and stays below
        elif paint is not None and paint.has_glyph(ch):
            out.append(ch)
        else:
            out.append(GETA)
    return "".join(out)


# -- layout: blocks -> lines of cells ------------------------------------------------------


@dataclass(frozen=True)
class _Line:
    cells: tuple[Cell, ...]
    align: str = "left"


@dataclass(frozen=True)
class _QrLine:
    data: bytes
    module: int
    ec: str
    align: str


@dataclass(frozen=True)
class _CutLine:
    partial: bool


_Item = _Line | _QrLine | _CutLine


def _cells(text: str, size: int, bold: bool) -> list[Cell]:
    return [
        Cell(ch, char_columns(ch), size, size, bold) for ch in text if char_columns(ch)
    ]


def _width(cells: list[Cell]) -> int:
    return sum(c.cols * c.w for c in cells)


def _wrap(cells: list[Cell], columns: int) -> list[list[Cell]]:
    """Greedy line breaking by width, keeping ASCII words whole where a space allows
    and not starting a line with closing punctuation."""
    lines: list[list[Cell]] = []
    line: list[Cell] = []
    for cell in cells:
        if line and _width(line) + cell.cols * cell.w > columns:
            carry: list[Cell] = []
            if (
                cell.ch.isascii()
                and cell.ch.isalnum()
                and line[-1].ch.isascii()
                and line[-1].ch.isalnum()
            ):
                spaces = [i for i, c in enumerate(line) if c.ch == " "]
                if spaces and spaces[-1] > 0:
                    carry = line[spaces[-1] + 1 :]
                    line = line[: spaces[-1]]
            elif cell.ch in _NO_LINE_START and len(line) > 1:
                carry = line[-1:]
                line = line[:-1]
            lines.append(line)
            line = carry
        if cell.ch == " " and not line and lines:
            continue  # no space at the start of a continued line
        line.append(cell)
    lines.append(line)
    return lines


def _layout(doc: Document, paper: Paper, paint: Painter | None) -> Iterator[_Item]:
    columns = paper.columns
    for block in doc.blocks:
        if isinstance(block, Text):
            note = (
                _cells(" " + printable_text(block.note, paint), 1, False)
                if block.note
                else []
            )
            paragraphs = block.text.split("\n")
            for index, paragraph in enumerate(paragraphs):
                cells = _cells(printable_text(paragraph, paint), block.size, block.bold)
                lines = _wrap(cells, columns)
                if index == len(paragraphs) - 1 and note:
                    if _width(lines[-1]) + _width(note) <= columns:
                        lines[-1] = lines[-1] + note
                    else:
                        lines += _wrap(note[1:], columns)
                for line in lines:
                    yield _Line(tuple(line), block.align)
        elif isinstance(block, Columns):
            left = _cells(printable_text(block.left, paint), block.size, block.bold)
            if block.note:
                left += _cells(" " + printable_text(block.note, paint), 1, False)
            right = _cells(printable_text(block.right, paint), block.size, block.bold)
            gap = columns - _width(left) - _width(right)
            if gap >= block.size:
                yield _Line(tuple(left + _cells(" " * gap, 1, False) + right))
            else:
                for line in _wrap(left, columns):
                    yield _Line(tuple(line))
                for line in _wrap(right, columns):
                    yield _Line(tuple(line), "right")
        elif isinstance(block, Rule):
            char = printable_text(block.char, paint) or "-"
            yield _Line(
                tuple(
                    _cells(char * (columns // max(1, char_columns(char[0]))), 1, False)[
                        :columns
                    ]
                )
            )
        elif isinstance(block, Qr):
            yield _QrLine(block.data.encode("utf-8"), block.size, block.ec, block.align)
        elif isinstance(block, Feed):
            for _ in range(block.lines):
                yield _Line(())
        elif isinstance(block, Cut):
            yield _CutLine(block.partial)


# -- QR as an image (image mode, renderer) -------------------------------------------------

_QR_EC = {
    "L": qrcode.constants.ERROR_CORRECT_L,
    "M": qrcode.constants.ERROR_CORRECT_M,
    "Q": qrcode.constants.ERROR_CORRECT_Q,
    "H": qrcode.constants.ERROR_CORRECT_H,
}


def qr_image(data: bytes, module: int, ec: str) -> Image.Image:
    """The QR code a printer prints for ``GS ( k`` (model 2, smallest version, no quiet
    zone: the paper margin is the quiet zone) as a 1-bit image, ink = 0."""
    code = qrcode.QRCode(
        version=None, error_correction=_QR_EC[ec], box_size=module, border=0
    )
    code.add_data(data)
    code.make(fit=True)
    return code.make_image().get_image().convert("1")


def _place(canvas: Image.Image, img: Image.Image, y: int, align: str) -> None:
    x = {
        "left": 0,
        "center": (canvas.width - img.width) // 2,
        "right": canvas.width - img.width,
    }[align]
    canvas.paste(img, (max(0, x), y))


# -- encoders ------------------------------------------------------------------------------


def _raster_line(img: Image.Image) -> bytes:
    width_bytes, data = to_raster_rows(img)
    return cmd.raster(width_bytes, img.height, data)


def _encode_kanji(items: list[_Item], paper: Paper, paint: Painter | None) -> bytes:
    out = bytearray(
        cmd.INIT
        + cmd.INTL_JAPAN
        + cmd.CODEPAGE_KATAKANA
        + cmd.KANJI_SJIS
        + cmd.KANJI_ON
    )
    align, size, bold = "left", 1, False  # the state after ESC @

    def set_align(wanted: str) -> None:
        nonlocal align
        if wanted != align:
            out.extend(cmd.align({"left": 0, "center": 1, "right": 2}[wanted]))
            align = wanted

    for index, item in enumerate(items):
        if isinstance(item, _CutLine):
            if index == len(items) - 1:
                out.extend(cmd.KANJI_OFF)
            out.extend(cmd.cut(item.partial))
            continue
        if isinstance(item, _QrLine):
            set_align(item.align)
            out.extend(cmd.qr_code(item.data, item.module, item.ec))
            continue
        if not all(_sjis(c.ch) for c in item.cells):
            if paint is None:
                raise FontNotFound("a line needs a CJK font to be printed as an image")
            out.extend(
                _raster_line(paint.line_image(item.cells, item.align, paper.dots))
            )
            continue
        if item.cells:
            set_align(item.align)
        for cell in item.cells:
            if cell.w != size:
                out.extend(cmd.char_size(cell.w, cell.h))
                size = cell.w
            if cell.bold != bold and not cell.ch.isspace():
                out.extend(cmd.bold(cell.bold))
                bold = cell.bold
            out.extend(cell.ch.encode("shift_jis"))
        out.extend(cmd.LF)
    if not items or not isinstance(items[-1], _CutLine):
        out.extend(cmd.KANJI_OFF)
    return bytes(out)


def _encode_image(items: list[_Item], paper: Paper, paint: Painter) -> bytes:
    out = bytearray(cmd.INIT)
    pending: list[Image.Image] = []

    def flush() -> None:
        height = sum(img.height for img in pending)
        if not height:
            return
        page = Image.new("1", (paper.dots, height), 1)
        y = 0
        for img in pending:
            page.paste(img, (0, y))
            y += img.height
        pending.clear()
        for top in range(0, height, RASTER_STRIP_ROWS):
            out.extend(
                _raster_line(
                    page.crop(
                        (0, top, paper.dots, min(height, top + RASTER_STRIP_ROWS))
                    )
                )
            )

    for item in items:
        if isinstance(item, _CutLine):
            flush()
            out.extend(cmd.cut(item.partial))
        elif isinstance(item, _QrLine):
            qr = qr_image(item.data, item.module, item.ec)
            strip = Image.new("1", (paper.dots, qr.height), 1)
            _place(strip, qr, 0, item.align)
            pending.append(strip)
        else:
            pending.append(paint.line_image(item.cells, item.align, paper.dots))
    flush()
    return bytes(out)


def encode(
    doc: Document,
    *,
    mode: Mode = "kanji",
    paper: Paper = PAPER_80MM,
    font_path: str | None = None,
) -> bytes:
    """Return the ESC/POS bytes that print ``doc``.

    Args:
        doc: what to print.
        mode: ``"kanji"`` (Shift_JIS text, for Japanese-model printers) or ``"image"``
            (everything as raster images, for any ESC/POS printer).
        paper: the paper width (:data:`~drivers.printer.document.PAPER_80MM`, 42 columns,
            or :data:`~drivers.printer.document.PAPER_58MM`, 32 columns).
        font_path: a CJK font file for drawing; by default fonts-noto-cjk's Noto Sans
            Mono CJK JP (or IPAex Gothic).

    The output starts with ``ESC @``; in kanji mode it leaves kanji mode (``FS .``) before
    the last cut, so a job ends with its cut. It is deterministic: the same document gives
    the same bytes.

    Raises:
        ValueError: unknown ``mode``.
        FontNotFound: image mode, or a kanji-mode line with characters outside JIS X
            0208, and no CJK font is installed.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    if not isinstance(doc, Document):
        raise TypeError(f"encode() needs a Document, not {type(doc).__name__}")
    try:
        paint: Painter | None = painter(font_path)
    except FontNotFound:
        if mode == "image" or font_path is not None:
            raise
        paint = None  # kanji mode still prints JIS X 0208 text; the rest becomes 〓
    items = list(_layout(doc, paper, paint))
    if mode == "kanji":
        return _encode_kanji(items, paper, paint)
    assert paint is not None
    return _encode_image(items, paper, paint)
