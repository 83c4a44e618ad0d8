"""A display for tests: remembers every screen and lets a test wait for one.

It ships in the package (like gpiozero's ``MockFactory``) so that the edge daemon and
scenario tests can run a whole counter without a screen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from drivers.display.base import Display, Health, Screen

__all__ = ["FakeDisplay"]


class FakeDisplay(Display):
    """A display that records what it was asked to show.

    Test controls:

    * :attr:`history`: every screen shown since the start (or the last :meth:`clear`),
      oldest first.
    * :meth:`wait_for`: block until a screen matching a predicate is (or was) shown.
    * :meth:`clear`: forget the history (``current`` and ``version`` are kept).
    * :meth:`set_health`: make :meth:`health` report a fault.

    All methods are thread-safe.
    """

    def __init__(self) -> None:
        super().__init__()
        self._changed = threading.Condition(self._lock)
        self._history: list[Screen] = []
        # Screens appended ever, and how many of those clear() dropped: lets wait_for()
        # keep its place across a clear() from another thread.
        self._appended = 0
        self._dropped = 0
        self._health: Health | None = None

    @property
    def history(self) -> list[Screen]:
        """A copy of the screens shown so far, oldest first."""
        with self._lock:
            return list(self._history)

    def clear(self) -> None:
        """Forget the history. :attr:`current` and :attr:`version` are unchanged."""
        with self._lock:
            self._dropped += len(self._history)
            self._history.clear()

    def wait_for(self, predicate: Callable[[Screen], bool], timeout: float = 5.0) -> Screen:
        """Return the first screen in the history, or shown later, for which
        ``predicate(screen)`` is true.

        Args:
            predicate: called with each screen in order, with the display's lock held
                (so it must not call :meth:`show`).
            timeout: how long to wait for a matching screen to be shown, in seconds.

        Raises:
            TimeoutError: no matching screen within ``timeout``; the message lists the last
                few screens shown, to make the failing test readable.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            index = self._dropped  # absolute index of the next screen to look at
            while True:
                index = max(index, self._dropped)
                while index < self._appended:
                    screen = self._history[index - self._dropped]
                    index += 1
                    if predicate(screen):
                        return screen
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = self._history[-5:]
                    shown = "\n  ".join(repr(s) for s in last) or "(none)"
                    raise TimeoutError(
                        f"no matching screen within {timeout:g} s; last {len(last)} shown:\n  {shown}"
                    )
                self._changed.wait(remaining)

    def set_health(self, status: str = "ok", reason: str | None = None, message: str | None = None) -> None:
        """Make :meth:`health` return ``(status, reason, message)`` (until closed)."""
        with self._lock:
            self._health = None if status == "ok" else (status, reason, message)

    def health(self) -> Health:
        """``"error"`` when closed, else what :meth:`set_health` set (``"ok"`` by default)."""
        with self._lock:
            if self._closed or self._health is None:
                return super().health()
            return self._health

    def _render(self, screen: Screen) -> None:
        self._history.append(screen)
        self._appended += 1
        self._changed.notify_all()

    def __repr__(self) -> str:
        return "FakeDisplay()"
