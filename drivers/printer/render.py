"""Draw ESC/POS bytes as the paper would look: previews for docs and golden tests.

No existing ESC/POS renderer handles kanji, so this one interprets the subset of commands
our encoder emits, *from the bytes* (that is what makes it a test of the encoder):

``ESC @`` initialize, ``ESC a`` justification, ``ESC E`` emphasized, ``ESC R``
international character set (8 = Japan: 0x5C is ¥), ``ESC t`` code page (1 = half-width
katakana), ``GS !`` character size, ``FS C`` kanji code system (1 = Shift_JIS), ``FS &``
/ ``FS .`` kanji mode on/off, text, ``LF``, ``ESC d`` feed, ``GS v 0`` raster image,
``GS ( k`` QR code (model, module size, error correction, store, print), ``GS V`` cut
(drawn as a dashed line), ``DLE EOT`` (ignored: it prints nothing).

Anything else raises :class:`RenderError`, so an encoder change that emits something
new cannot go unnoticed.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from drivers.printer._commands import tokenize
from drivers.printer._paint import (
    CELL_H,
    LINE_GAP,
    Cell,
    Painter,
    from_raster_rows,
    painter,
)
from drivers.printer.document import PAPER_80MM, Paper
from drivers.printer.escpos import qr_image

__all__ = ["MARGIN_DOTS", "RenderError", "render", "render_png"]

#: White paper drawn either side of the printable width, in dots (80 mm paper is 640
#: dots wide at 180 dpi, 512 of them printable).
MARGIN_DOTS = 32


class RenderError(ValueError):
    """The bytes hold a command the renderer does not know, or a malformed one."""


@dataclass
class _State:
    align: str = "left"
    bold: bool = False
    width: int = 1
    height: int = 1
    kanji: bool = False
    sjis: bool = False
    japan: bool = False  # ESC R 8
    katakana: bool = False  # ESC t 1
    qr_model: int = 2
    qr_module: int = 3
    qr_ec: str = "L"
    qr_data: bytes | None = None
    line: list[Cell] = field(default_factory=list)
    line_align: str = "left"


class _Paper:
    """A roll that grows as lines are printed onto it."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.strips: list[Image.Image] = []
        self.cuts: list[int] = []  # y of each cut
        self.height = 0

    def add(self, img: Image.Image) -> None:
        self.strips.append(img)
        self.height += img.height

    def cut(self) -> None:
        self.cuts.append(self.height)


def _decode_text(raw: bytes, st: _State) -> list[Cell]:
    cells: list[Cell] = []
    i = 0
    while i < len(raw):
        b = raw[i]
        lead = 0x81 <= b <= 0x9F or 0xE0 <= b <= 0xFC
        if st.kanji and st.sjis and lead and i + 1 < len(raw):
            pair = raw[i : i + 2]
            try:
                ch = pair.decode("shift_jis")
            except UnicodeDecodeError as exc:
                raise RenderError(f"not a JIS X 0208 character: {pair.hex()}") from exc
            cells.append(Cell(ch, 2, st.width, st.height, st.bold))
            i += 2
            continue
        if b < 0x80:
            ch = chr(b)
            if st.japan and b == 0x5C:
                ch = "¥"
            elif st.japan and b == 0x7E:
                ch = "‾"
        elif st.katakana and 0xA1 <= b <= 0xDF:
            ch = bytes([b]).decode("shift_jis")
        else:
            raise RenderError(
                f"byte {b:#04x} outside kanji mode and without a code page"
            )
        cells.append(Cell(ch, 1, st.width, st.height, st.bold))
        i += 1
    return cells


def render(
    data: bytes, *, paper: Paper = PAPER_80MM, font_path: str | None = None
) -> Image.Image:
    """Return the paper that ``data`` prints as a 1-bit image (black ink on white), the
    printable width plus :data:`MARGIN_DOTS` either side, each cut drawn as a dashed line.

    Raises:
        RenderError: an unknown command, a malformed one, or a byte that is not text in
            the current mode.
        FontNotFound: no CJK font installed.
    """
    paint: Painter = painter(font_path)
    tokens, _ = tokenize(data, final=True)
    st = _State()
    roll = _Paper(paper.dots)

    def print_line(force: bool) -> None:
        if not st.line and not force:
            return
        strip = Image.new(
            "1",
            (
                paper.dots,
                CELL_H * max([c.h for c in st.line] or [st.height]) + LINE_GAP,
            ),
            1,
        )
        paint.draw_line(strip, 0, st.line, st.line_align, paper.dots)
        roll.add(strip)
        st.line = []

    def place(img: Image.Image, align: str) -> None:
        strip = Image.new("1", (paper.dots, img.height), 1)
        x = {
            "left": 0,
            "center": (paper.dots - img.width) // 2,
            "right": paper.dots - img.width,
        }[align]
        strip.paste(img, (max(0, x), 0))
        roll.add(strip)

    for tok in tokens:
        if tok.kind == "text":
            if not st.line:
                st.line_align = st.align
            st.line += _decode_text(tok.raw, st)
            if sum(c.cols * c.w for c in st.line) * 12 > paper.dots:
                raise RenderError(
                    "a line is wider than the paper (the printer would wrap it)"
                )
        elif tok.kind == "ctl":
            if tok.raw == b"\n":
                print_line(force=True)
            elif tok.raw != b"\r":
                raise RenderError(f"unsupported control character {tok.raw.hex()}")
        elif tok.kind == "cmd":
            name, args = tok.name, tok.args
            if name == "ESC @":
                st = _State()
            elif name == "ESC a":
                st.align = {
                    0: "left",
                    1: "center",
                    2: "right",
                    48: "left",
                    49: "center",
                    50: "right",
                }[args[0]]
            elif name == "ESC E":
                st.bold = bool(args[0] & 1)
            elif name == "ESC R":
                st.japan = args[0] == 8
            elif name == "ESC t":
                st.katakana = args[0] == 1
            elif name == "GS !":
                st.width, st.height = (args[0] >> 4) + 1, (args[0] & 0x0F) + 1
            elif name == "FS C":
                st.sjis = args[0] in (1, 49)
            elif name == "FS &":
                st.kanji = True
            elif name == "FS .":
                st.kanji = False
            elif name == "ESC d":
                print_line(force=True)
                for _ in range(args[0] - 1):
                    print_line(force=True)
            elif name == "DLE EOT":
                pass
            elif name == "GS v 0":
                print_line(force=False)
                width_bytes = int.from_bytes(args[1:3], "little")
                height = int.from_bytes(args[3:5], "little")
                if width_bytes * 8 > paper.dots:
                    raise RenderError("raster image wider than the paper")
                place(from_raster_rows(width_bytes, height, tok.data), st.align)
            elif name == "GS ( k":
                _qr(tok.data, st, place, print_line)
            elif name == "GS V":
                print_line(force=False)
                roll.cut()
            else:
                raise RenderError(f"unsupported command {name} ({tok.raw.hex(' ')})")
        else:
            raise RenderError(f"unknown or incomplete command: {tok.raw[:8].hex(' ')}")
    print_line(force=False)
    return _draw_roll(roll)


def _qr(
    body: bytes,
    st: _State,
    place: Callable[[Image.Image, str], None],
    print_line: Callable[[bool], None],
) -> None:
    if len(body) < 2 or body[0] != 0x31:
        raise RenderError(f"unsupported GS ( k symbol type: {body[:2].hex()}")
    fn, rest = body[1], body[2:]
    if fn == 65:
        st.qr_model = rest[0] - 48
    elif fn == 67:
        st.qr_module = rest[0]
    elif fn == 69:
        st.qr_ec = {48: "L", 49: "M", 50: "Q", 51: "H"}[rest[0]]
    elif fn == 80:
        st.qr_data = rest[1:]
    elif fn == 81:
        if st.qr_data is None:
            raise RenderError("QR print without stored data")
        if st.qr_model != 2:
            raise RenderError("only QR model 2 is rendered")
        print_line(False)
        place(qr_image(st.qr_data, st.qr_module, st.qr_ec), st.align)
    else:
        raise RenderError(f"unsupported GS ( k function {fn}")


def _draw_roll(roll: _Paper) -> Image.Image:
    width = roll.width + 2 * MARGIN_DOTS
    height = max(roll.height, 1) + 2 * MARGIN_DOTS
    img = Image.new("1", (width, height), 1)
    y = MARGIN_DOTS
    for strip in roll.strips:
        img.paste(strip, (MARGIN_DOTS, y))
        y += strip.height
    draw = ImageDraw.Draw(img)
    for cut in roll.cuts:
        cy = MARGIN_DOTS + cut + MARGIN_DOTS // 2
        if cy >= height:
            img2 = Image.new("1", (width, cy + 2), 1)
            img2.paste(img, (0, 0))
            img, draw, height = img2, ImageDraw.Draw(img2), cy + 2
        for x in range(0, width, 12):
            draw.line((x, cy, x + 5, cy), fill=0)
    return img


def render_png(
    data: bytes, *, paper: Paper = PAPER_80MM, font_path: str | None = None
) -> bytes:
    """:func:`render` as PNG file bytes (deterministic for the same bytes, font and
    Pillow)."""
    buf = io.BytesIO()
    render(data, paper=paper, font_path=font_path).save(
        buf, format="PNG", optimize=True
    )
    return buf.getvalue()
