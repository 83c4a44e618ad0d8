"""A display that writes each screen as one readable line: for a counter without a
screen, a laptop demo, or the journal of a headless test run."""

from __future__ import annotations

import logging
from typing import TextIO

from drivers.display.base import Display, Screen

__all__ = ["LogDisplay", "format_screen"]

logger = logging.getLogger(__name__)

# What each mode is called on the line (Japanese, English).
_MODE_LABELS: dict[str, tuple[str, str]] = {
    "idle": ("待機", "idle"),
    "calling": ("呼出", "calling"),
    "serving": ("対応中", "serving"),
    "notice": ("お知らせ", "notice"),
    "offline": ("接続なし", "offline"),
}


def _pair(ja: str, en: str) -> str:
    """``"ja / en"``, or whichever of the two is not empty."""
    return " / ".join(part for part in (ja, en) if part)


def format_screen(screen: Screen) -> str:
    """Return ``screen`` as one line, Japanese first and English beside it, e.g.
    ``[1番窓口 / Counter 1] 呼出 123 番 (住民異動 / Moving) — お待ちの方 4``."""
    parts: list[str] = []
    counter = _pair(screen.counter_ja, screen.counter_en)
    if counter:
        parts.append(f"[{counter}]")
    if screen.mode == "calling" and screen.recall:
        parts.append("再呼出 (recall)")
    else:
        parts.append(_MODE_LABELS[screen.mode][0])
    if screen.number is not None:
        parts.append(f"{screen.number} 番")
    elif screen.mode == "idle":
        parts.append("—")
    service = _pair(screen.service_ja, screen.service_en)
    if service:
        parts.append(f"({service})")
    line = " ".join(parts)
    text = _pair(screen.text_ja, screen.text_en)
    if text:
        line += f" — {text}"
    if screen.waiting is not None:
        line += f" — お待ちの方 {screen.waiting} (waiting)"
    return line


class LogDisplay(Display):
    """A display that renders every screen as one line of text.

    Args:
        name: names the display in each line (e.g. ``"counter-1"``).
        stream: a text stream to write the lines to (one per screen, flushed). When
            ``None`` (the default) the lines go to the logger ``drivers.display.log`` at
            INFO instead.

    Never raises from :meth:`show` unless the stream's ``write`` does (then
    :class:`~drivers.display.base.DisplayError`).
    """

    def __init__(self, name: str = "display", *, stream: TextIO | None = None) -> None:
        super().__init__()
        self._name = name
        self._stream = stream

    @property
    def name(self) -> str:
        """The name given to the constructor."""
        return self._name

    def _render(self, screen: Screen) -> None:
        line = format_screen(screen)
        if self._stream is None:
            logger.info("%s: %s", self._name, line)
        else:
            self._stream.write(f"{self._name}: {line}\n")
            self._stream.flush()

    def __repr__(self) -> str:
        return f"LogDisplay({self._name!r})"
