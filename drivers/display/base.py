"""What a counter's number display shows, and the interface every display implements.

A :class:`Screen` is one complete picture of the display (not a diff): the caller sends a
new one whenever anything changes, and the display shows exactly that. A
:class:`Display` numbers the screens it is given with a monotonically increasing
``version`` so that a viewer (the HDMI page) can tell a re-call of the same number from a
repeated update.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

from drivers.base import Closeable
from drivers.errors import DriverError

__all__ = ["MODES", "Display", "DisplayError", "Health", "Screen"]

#: The modes a :class:`Screen` can be in.
#:
#: ``idle``: nobody is being called (the number shows as "—"); ``calling``: a ticket is
#: being called (the number flashes); ``serving``: the ticket is at the counter;
#: ``notice``: a message only (e.g. a lunch break); ``offline``: the counter has lost its
#: connection and must not show stale numbers.
MODES: frozenset[str] = frozenset({"idle", "calling", "serving", "notice", "offline"})

#: ``(status, reason, message)`` as returned by ``health()``: status is one of
#: ``"ok"``, ``"warning"``, ``"error"``, ``"absent"``; reason is a short machine-readable
#: word, message a sentence for a person. Both are ``None`` when status is ``"ok"``.
Health = tuple[str, str | None, str | None]

_TEXT_FIELDS = (
    "counter_ja",
    "counter_en",
    "service_ja",
    "service_en",
    "text_ja",
    "text_en",
)


class DisplayError(DriverError):
    """A display could not show a screen (or was used after ``close()``)."""


def _check_count(field: str, value: object) -> None:
    # bool is an int subclass; True as a ticket number is always a bug upstream.
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Screen.{field} must be an int or None, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"Screen.{field} must be >= 0, got {value}")


@dataclass(frozen=True)
class Screen:
    """One complete picture for a counter display.

    Texts come in pairs: Japanese first (always shown), English beside or below it
    (shown smaller, left out when empty).

    Attributes:
        mode: one of :data:`MODES`.
        number: the ticket number being called or served, or ``None``.
        recall: ``True`` when this is a re-call (再呼出) of the same number: the display
            flashes it again.
        counter_ja, counter_en: the counter's name, e.g. ``"1番窓口"`` / ``"Counter 1"``.
        service_ja, service_en: the service of the ticket, e.g. ``"住民異動"``.
        text_ja, text_en: a message line, e.g. ``"お待ちの方はいません"``.
        waiting: how many tickets are waiting for this counter (shown small, for staff),
            or ``None`` when unknown.

    Raises:
        ValueError: ``mode`` is not one of :data:`MODES`, or a count is negative.
        TypeError: a field has the wrong type (e.g. ``number=True`` or ``"12"``).
    """

    mode: str
    number: int | None = None
    recall: bool = False
    counter_ja: str = ""
    counter_en: str = ""
    service_ja: str = ""
    service_en: str = ""
    text_ja: str = ""
    text_en: str = ""
    waiting: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Screen.mode must be one of {sorted(MODES)}, got {self.mode!r}")
        _check_count("number", self.number)
        _check_count("waiting", self.waiting)
        if not isinstance(self.recall, bool):
            raise TypeError(f"Screen.recall must be a bool, not {type(self.recall).__name__}")
        for name in _TEXT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"Screen.{name} must be a str, not {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """Return the screen as a dict of JSON-able values (str, int, bool, None)."""
        return dataclasses.asdict(self)


class Display(Closeable, abc.ABC):
    """A counter's number display.

    Subclasses implement :meth:`_render` (and optionally :meth:`_close` and
    :meth:`health`); this base class does the bookkeeping: the current screen, the
    ``version`` counter, the closed state and the context-manager protocol.

    :meth:`show` is thread-safe and never blocks for long: implementations must render
    quickly (hand slow work to their own thread).
    """

    def __init__(self) -> None:
        # An RLock so that _render() may read the public properties.
        self._lock = threading.RLock()
        self._current: Screen | None = None
        self._version = 0
        self._closed = False

    # -- public API ---------------------------------------------------------------

    def show(self, screen: Screen) -> None:
        """Show ``screen``, replacing whatever was shown before.

        Every call increases :attr:`version` by one, even when the screen is equal to the
        current one (that is how a re-call is flashed again).

        Raises:
            TypeError: ``screen`` is not a :class:`Screen`.
            DisplayError: the display is closed, or rendering failed (then
                :attr:`current` and :attr:`version` keep their previous values).
        """
        if not isinstance(screen, Screen):
            raise TypeError(f"show() needs a Screen, not {type(screen).__name__}")
        with self._lock:
            if self._closed:
                raise DisplayError(f"{self!r} is closed")
            previous = (self._current, self._version)
            self._current = screen
            self._version += 1
            try:
                self._render(screen)
            except DisplayError:
                self._current, self._version = previous
                raise
            except Exception as exc:
                self._current, self._version = previous
                raise DisplayError(f"{self!r} failed to render: {exc}") from exc

    @property
    def current(self) -> Screen | None:
        """The screen shown now, or ``None`` before the first :meth:`show`."""
        with self._lock:
            return self._current

    @property
    def version(self) -> int:
        """How many screens have been shown: 0 at start, +1 on every :meth:`show`."""
        with self._lock:
            return self._version

    def health(self) -> Health:
        """Return ``(status, reason, message)``; see :data:`Health`.

        The base implementation says ``"ok"`` until the display is closed.
        """
        if self.closed:
            return ("error", "closed", f"{self!r} is closed")
        return ("ok", None, None)

    # -- for subclasses -----------------------------------------------------------

    @abc.abstractmethod
    def _render(self, screen: Screen) -> None:
        """Show ``screen``. Called with the display's lock held, after :attr:`current`
        and :attr:`version` have been updated; must return quickly. An exception undoes
        the update and reaches the caller of :meth:`show` as a :class:`DisplayError`."""

    def _close(self) -> None:
        """Release resources; called once, by the first :meth:`close`."""
