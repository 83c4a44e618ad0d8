"""Drawing text the way a thermal printer does: a grid of 12 × 24-dot cells (font A),
full-width characters two cells wide, bigger sizes by doubling dots, bold by printing
each dot twice one dot to the right.

The image mode of the encoder, the image lines of kanji mode and the renderer all draw
with this module, so a preview of kanji-mode bytes and an image-mode print look the same.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFont

from drivers.errors import DriverError

CELL_W = 12  # dots per column (font A)
CELL_H = 24  # dots per character row (font A)
LINE_GAP = 6  # dots between rows: line spacing 30 dots, the 1/6 inch default at 180 dpi
_BASELINE = 21  # the ideographic em box of Noto Sans CJK is 21 dots above, 3 below it
_GLYPH_H = CELL_H + LINE_GAP  # a glyph may reach into the gap (descenders)

#: Fonts tried in order when none is given: Debian's fonts-noto-cjk (the "Noto Sans Mono
#: CJK JP" face of the collection, index 5, whose Latin letters are exactly half-width),
#: then IPAex Gothic (fonts-ipaexfont-gothic).
FONT_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 5),
    ("/usr/share/fonts/opentype/ipaexfont-gothic/ipaexg.ttf", 0),
)

#: JIS's substitute for a character that cannot be shown (〓, geta mark).
GETA = "\u3013"


class FontNotFound(DriverError):
    """No CJK font to draw Japanese text with (install fonts-noto-cjk)."""


@dataclass(frozen=True)
class Cell:
    """One character on a line: ``cols`` columns wide (1 or 2), magnified ``w`` × ``h``."""

    ch: str
    cols: int
    w: int = 1
    h: int = 1
    bold: bool = False


def line_height(cells: Sequence[Cell]) -> int:
    """Dots a line of ``cells`` advances the paper (an empty line advances one row)."""
    return CELL_H * max((c.h for c in cells), default=1) + LINE_GAP


def line_width(cells: Sequence[Cell]) -> int:
    """Dots a line of ``cells`` is wide."""
    return sum(CELL_W * c.cols * c.w for c in cells)


@functools.lru_cache(maxsize=4)
def painter(font_path: str | None = None) -> Painter:
    """The painter for ``font_path`` (or the first of :data:`FONT_CANDIDATES` present);
    painters are cached, as is every glyph they draw.

    Raises:
        FontNotFound: the font does not exist, or none of the candidates is installed.
    """
    if font_path is not None:
        if not os.path.exists(font_path):
            raise FontNotFound(f"font {font_path!r} not found")
        return Painter(font_path, 0)
    for path, index in FONT_CANDIDATES:
        if os.path.exists(path):
            return Painter(path, index)
    raise FontNotFound(
        "no CJK font found: install fonts-noto-cjk (or fonts-ipaexfont-gothic)"
    )


class Painter:
    """Draws cells with one font. Thread-safe for reading (glyphs are cached)."""

    def __init__(self, path: str, index: int) -> None:
        self.path = path
        # BASIC layout: one glyph per character, no shaping, the same on every machine.
        self._font = ImageFont.truetype(
            path, CELL_H, index=index, layout_engine=ImageFont.Layout.BASIC
        )
        self._notdef = bytes(self._font.getmask("\U0010fffd"))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - painters live as long as the process
    def has_glyph(self, ch: str) -> bool:
        """``True`` when the font draws ``ch`` (not its "missing glyph" box)."""
        if ch.isspace():
            return True
        return bytes(self._font.getmask(ch)) != self._notdef

    @functools.lru_cache(maxsize=4096)  # noqa: B019
    def glyph(self, cell: Cell) -> Image.Image:
        """The 1-bit image of ``cell``: ``12·cols·w`` × ``30·h`` dots, ink = 1."""
        width = CELL_W * cell.cols
        img = Image.new("L", (width, _GLYPH_H), 0)
        if not cell.ch.isspace():
            draw = ImageDraw.Draw(img)
            draw.fontmode = "L"
            advance = self._font.getlength(cell.ch)
            # Centre the glyph in its cells: a proportional glyph then still sits on the grid.
            x = (width - advance) / 2
            draw.text((x, _BASELINE), cell.ch, fill=255, font=self._font, anchor="ls")
        out = img.point(lambda v: 255 if v >= 112 else 0).convert("1")
        if cell.bold:
            shifted = Image.new("1", out.size, 0)
            shifted.paste(out.crop((0, 0, width - 1, _GLYPH_H)), (1, 0))
            out = ImageChops.logical_or(out, shifted)
        if cell.w != 1 or cell.h != 1:
            out = out.resize(
                (width * cell.w, _GLYPH_H * cell.h), Image.Resampling.NEAREST
            )
        return out

    def draw_line(
        self, canvas: Image.Image, y: int, cells: Sequence[Cell], align: str, width: int
    ) -> int:
        """Draw ``cells`` on the 1-bit ``canvas`` (ink = 0, paper = 1) with the top of the
        line at ``y``, aligned within ``width`` dots; return the line's height."""
        height = line_height(cells)
        max_h = max((c.h for c in cells), default=1)
        used = line_width(cells)
        x = {"left": 0, "center": (width - used) // 2, "right": width - used}[align]
        x = max(0, x)
        for cell in cells:
            g = self.glyph(cell)
            top = y + CELL_H * (max_h - cell.h)
            # Only as much of the glyph as fits in the line (descenders of big characters).
            g = g.crop((0, 0, g.width, min(g.height, y + height - top)))
            canvas.paste(0, (x, top), mask=g)
            x += g.width
        return height

    def line_image(self, cells: Sequence[Cell], align: str, width: int) -> Image.Image:
        """A 1-bit image ``width`` dots wide holding one line of ``cells``."""
        img = Image.new("1", (width, line_height(cells)), 1)
        self.draw_line(img, 0, cells, align, width)
        return img


def to_raster_rows(img: Image.Image) -> tuple[int, bytes]:
    """The GS v 0 data of a 1-bit image (ink = 0 in Pillow): ``(bytes per row, rows)``,
    bit 7 of each byte leftmost, 1 = a dot to print."""
    if img.width % 8:
        padded = Image.new("1", ((img.width + 7) // 8 * 8, img.height), 1)
        padded.paste(img, (0, 0))
        img = padded
    # Pillow packs mode "1" as 1 bit per pixel, MSB first, 1 = white: invert for ink.
    data = bytes(b ^ 0xFF for b in img.tobytes())
    return img.width // 8, data


def from_raster_rows(width_bytes: int, height: int, data: bytes) -> Image.Image:
    """The inverse of :func:`to_raster_rows`: a 1-bit image (ink = 0)."""
    return Image.frombytes(
        "1", (width_bytes * 8, height), bytes(b ^ 0xFF for b in data)
    )
