"""What an announcement says, in Japanese and English (docs/voice.md).

Japanese::

    受付番号 123番の方、3番窓口へお越しください。

The ticket number is written *against* 番 with no space: Open JTalk then reads
it as one number (ひゃくにじゅうさんばん), the way Japanese offices call
numbers.  With a space before 番 (``123 番``) it reads the digits one by one
(いちにーさん ばん) — measured with ``open_jtalk -ot`` (docs/voice.md).  The space
after 受付番号 gives a short pause before the number.

A recall (再呼出) starts with 「再度お呼び出しいたします。」 so a visitor who
heard the first call knows it is the same number again, and so the two are
not mistaken for a duplicate.

English (espeak-ng reads "123" as "one hundred and twenty-three")::

    Ticket number 123, please come to Counter 3.

Counter names come from the site config through the board (``counter_ja`` /
``counter_en``).  They are normalised for speech only (NFKC, so ``３番`` reads
as 3番; no space between a number and 番; one line, no control characters:
Open JTalk speaks only the first line of its input).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

#: Longest counter name spoken (the bus allows 80 characters of display text).
MAX_NAME_CHARS = 40

RECALL_JA = "再度お呼び出しいたします。"
RECALL_EN = "Calling again: "

_SPACES = re.compile(r"\s+")
_NUMBER_SPACE_BAN = re.compile(r"(\d)\s+番")


def speakable(text: str, limit: int = MAX_NAME_CHARS) -> str:
    """``text`` as one clean line for a speech engine: NFKC, control
    characters dropped, white space collapsed, "12 番" → "12番", at most
    ``limit`` characters."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(" " if unicodedata.category(ch)[0] in "CZ" else ch for ch in text)
    text = _SPACES.sub(" ", text).strip()
    text = _NUMBER_SPACE_BAN.sub(r"\1番", text)
    return text[:limit].strip()


@dataclass(frozen=True)
class Announcement:
    """One call to announce: ticket ``ticket`` to counter ``counter``.

    Args:
        ticket: the ticket number (1–9999).
        counter: the counter id (used when ``counter_en`` is empty).
        counter_ja: the counter's Japanese name, e.g. "3番窓口".
        counter_en: its English name, e.g. "Counter 3".
        recall: True for a recall (再呼出).
    """

    ticket: int
    counter: str
    counter_ja: str
    counter_en: str = ""
    recall: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.ticket, bool) or not isinstance(self.ticket, int) or not 1 <= self.ticket <= 9999:
            raise ValueError(f"ticket must be an integer 1–9999, not {self.ticket!r}")

    @property
    def key(self) -> tuple[int, str, bool]:
        """What makes two announcements "the same" for de-duplication."""
        return (self.ticket, self.counter, self.recall)

    def japanese(self) -> str:
        counter = speakable(self.counter_ja) or f"{speakable(self.counter)}番窓口"
        text = f"受付番号 {self.ticket}番の方、{counter}へお越しください。"
        return RECALL_JA + text if self.recall else text

    def english(self) -> str:
        counter = speakable(self.counter_en) or f"counter {speakable(self.counter)}"
        text = f"icket number {self.ticket}, please come to {counter}."
        return f"{RECALL_EN}t{text}" if self.recall else f"T{text}"

    def describe(self) -> str:
        """For logs: "123 → 3番窓口 (再呼出)"."""
        return f"{self.ticket} → {self.counter_ja or self.counter}" + (" (再呼出)" if self.recall else "")
