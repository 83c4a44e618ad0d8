"""The staff call buttons of a counter (呼出, 再呼出, 次へ, ...), on GPIO via gpiozero.

Each button is a momentary switch between a GPIO pin and ground, using the Pi's internal
pull-up (``pull_up=True``): pressed = pin low.

Debouncing is done here, not by gpiozero: ``bounce_time`` is ignored by gpiozero's
``MockPin`` (so tests would not see it) and differs between pin factories. We use a
lock-out debounce (:class:`Debouncer`): the first edge is a press, and further edges
within ``debounce_s`` are bounces. A press therefore reaches the caller at once, without
waiting for the contact to settle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from gpiozero import Button

from drivers.base import Closeable
from drivers.errors import DriverError

__all__ = ["ButtonError", "ButtonPanel", "Debouncer", "press"]

logger = logging.getLogger(__name__)


class ButtonError(DriverError):
    """A button's GPIO pin could not be opened (bad pin name, pin in use, no GPIO)."""


class Debouncer:
    """Lock-out debounce for one contact; pure logic, no GPIO, not thread-safe.

    :meth:`accept` says whether an edge at time ``now`` is a new press: it is, unless a
    press was *accepted*, or the contact was *released* (:meth:`release`), less than
    ``window_s`` seconds before.  The release counts because a contact bounces when it
    opens too: without it, letting go of a button could read as a second press.
    Rejected presses (bounces) do not extend the window, so a contact that chatters for
    longer than ``window_s`` can give a second press; choose the window longer than the
    switch's bounce time (a few ms for tactile switches) and shorter than a person's
    double press (~150 ms).

    Args:
        window_s: the lock-out window in seconds (>= 0; 0 accepts every edge).

    Raises:
        ValueError: ``window_s`` is negative.
    """

    def __init__(self, window_s: float = 0.05) -> None:
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self._window_s = window_s
        self._last: float | None = None
        self._released: float | None = None

    @property
    def window_s(self) -> float:
        """The lock-out window, in seconds."""
        return self._window_s

    def accept(self, now: float) -> bool:
        """Return ``True`` if an edge at ``now`` (seconds, monotonic) is a new press.

        An edge exactly ``window_s`` after the last accepted one is accepted. A clock that
        goes backwards (``now`` before the last accepted edge) counts as within the window.
        """
        # A negative difference (clock went backwards) is "within the window" too.
        for last in (self._last, self._released):
            if last is not None and now - last < self._window_s:
                return False
        self._last = now
        return True

    def release(self, now: float) -> None:
        """Note that the contact opened at ``now``: presses within the window after it
        are release bounce, not presses."""
        self._released = now

    def reset(self) -> None:
        """Forget the last edges: the next edge is accepted."""
        self._last = None
        self._released = None


class ButtonPanel(Closeable):
    """A set of named push buttons, each on its own GPIO pin.

    ``on_press(name, t)`` is called once per debounced press, with the button's name and
    the time of the press from ``clock`` (seconds). **It runs on gpiozero's own thread**
    (for MockFactory: the thread that drives the pin): it must be quick and thread-safe,
    normally just ``loop.call_soon_threadsafe(queue.put_nowait, ...)`` to hand the press to
    the caller's asyncio loop. An exception from ``on_press`` is logged and swallowed, so
    one bad handler does not stop the next press from being seen.

    Args:
        pins: ``{name: pin}``, e.g. ``{"call": 17, "recall": "GPIO27"}``; any pin spec
            gpiozero accepts (BCM number, ``"GPIO17"``, ``"BOARD11"``).
        on_press: the callback, see above.
        pin_factory: a gpiozero pin factory (e.g. ``MockFactory()`` in tests); ``None``
            uses gpiozero's default (``GPIOZERO_PIN_FACTORY``; lgpio on a Pi 5).
        debounce_s: lock-out debounce window per button, in seconds (see
            :class:`Debouncer`).
        pull_up: ``True`` (default) for switches to ground with the internal pull-up;
            ``False`` for switches to 3.3 V with the internal pull-down.
        clock: returns the time in seconds; used for debouncing and passed to
            ``on_press``.

    Raises:
        ButtonError: a pin cannot be opened (the message names the button and the pin);
            buttons already opened are closed again.
        ValueError: ``pins`` is empty, a name is empty, or ``debounce_s`` is negative.
    """

    def __init__(
        self,
        pins: Mapping[str, int | str],
        on_press: Callable[[str, float], None],
        *,
        pin_factory: Any = None,
        debounce_s: float = 0.05,
        pull_up: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not pins:
            raise ValueError("a button panel needs at least one pin")
        for name in pins:
            if not isinstance(name, str) or not name:
                raise ValueError(f"button names must be non-empty strings, got {name!r}")
        if debounce_s < 0:
            raise ValueError(f"debounce_s must be >= 0, got {debounce_s}")
        self._pins: dict[str, int | str] = dict(pins)
        self._on_press = on_press
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._debouncers = {name: Debouncer(debounce_s) for name in self._pins}
        self._stats = {name: {"accepted": 0, "bounced": 0} for name in self._pins}
        self._buttons: dict[str, Button] = {}
        try:
            for name, pin in self._pins.items():
                try:
                    button = Button(pin, pull_up=pull_up, bounce_time=None, pin_factory=pin_factory)
                except Exception as exc:  # gpiozero's errors, and lgpio's/OS errors below it
                    raise ButtonError(f"button {name!r}: cannot open GPIO pin {pin!r}: {exc}") from exc
                self._buttons[name] = button
                button.when_pressed = self._callback_for(name)
                button.when_released = self._release_callback_for(name)
        except BaseException:
            self._close_buttons()
            raise
        logger.info(
            "button panel: opened %s",
            ", ".join(f"{name} on {button.pin}" for name, button in self._buttons.items()),
        )

    # -- public API ---------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """The button names, in the order given."""
        return tuple(self._pins)

    def pin_of(self, name: str) -> int | str:
        """The pin ``name`` was configured with, as given.

        Raises:
            KeyError: no button is called ``name``.
        """
        try:
            return self._pins[name]
        except KeyError:
            raise KeyError(f"no button named {name!r}; buttons: {', '.join(self._pins)}") from None

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per button, ``{"accepted": presses passed on, "bounced": edges dropped}``."""
        with self._lock:
            return {name: dict(counts) for name, counts in self._stats.items()}

    def health(self) -> tuple[str, str | None, str | None]:
        """``("ok", None, None)``, or ``("error", "closed", message)`` after :meth:`close`."""
        if self.closed:
            return ("error", "closed", "button panel is closed")
        return ("ok", None, None)

    def _close(self) -> None:
        """Release all pins; no presses are reported afterwards (see :meth:`close`)."""
        self._close_buttons()
        logger.info("button panel: closed")

    def __repr__(self) -> str:
        pins = ", ".join(f"{name}={pin!r}" for name, pin in self._pins.items())
        return f"ButtonPanel({pins}{', closed' if self.closed else ''})"

    # -- internals ----------------------------------------------------------------

    def _callback_for(self, name: str) -> Callable[[], None]:
        # gpiozero calls a callback with no parameters with no arguments; a closure keeps
        # the name without relying on how gpiozero inspects partials.
        def pressed() -> None:
            self._pressed(name)

        pressed.__name__ = f"pressed_{name}"
        return pressed

    def _release_callback_for(self, name: str) -> Callable[[], None]:
        def released() -> None:
            now = self._clock()
            with self._lock:
                if not self._closed:
                    self._debouncers[name].release(now)

        released.__name__ = f"released_{name}"
        return released

    def _pressed(self, name: str) -> None:
        now = self._clock()
        with self._lock:
            if self._closed:
                return
            accepted = self._debouncers[name].accept(now)
            self._stats[name]["accepted" if accepted else "bounced"] += 1
        if not accepted:
            logger.debug("button panel: %s bounced at %.3f", name, now)
            return
        logger.debug("button panel: %s pressed at %.3f", name, now)
        try:
            self._on_press(name, now)
        except Exception:
            logger.exception("button panel: handler for %s failed", name)

    def _close_buttons(self) -> None:
        for name, button in reversed(list(self._buttons.items())):
            try:
                button.when_pressed = None
                button.when_released = None
                button.close()
            except Exception:
                logger.exception("button panel: closing %s failed", name)
        self._buttons.clear()


def press(
    pin_factory: Any,
    pin: int | str,
    *,
    hold_s: float = 0.03,
    bounces: int = 0,
    release_bounces: int = 0,
    pull_up: bool = True,
) -> None:
    """Press a button on a simulated pin: **for gpiozero's MockFactory only** (tests, demo).

    Drives ``pin`` to its active level (low with ``pull_up=True``) for ``hold_s`` seconds,
    then back. With ``bounces=n`` the contact first bounces: n times active then inactive,
    about 1 ms each, as a real switch does. Blocks for the whole press; with MockFactory
    the ``when_pressed`` callbacks run in the calling thread during the call.

    Args:
        pin_factory: a ``gpiozero.pins.mock.MockFactory`` (the one the panel uses).
        pin: the pin spec, as given to the panel.
        hold_s: how long the button is held, in seconds.
        bounces: how many bounces before the contact settles when pressed.
        release_bounces: how many bounces when the contact opens again.
        pull_up: as given to the panel (which level is "pressed").

    Raises:
        TypeError: the factory's pins cannot be driven (not a MockFactory).
    """
    mock_pin = pin_factory.pin(pin)
    if not (hasattr(mock_pin, "drive_low") and hasattr(mock_pin, "drive_high")):
        raise TypeError(f"press() needs a MockFactory pin, got {type(mock_pin).__name__}")
    active, inactive = (
        (mock_pin.drive_low, mock_pin.drive_high) if pull_up else (mock_pin.drive_high, mock_pin.drive_low)
    )
    for _ in range(bounces):
        active()
        time.sleep(0.001)
        inactive()
        time.sleep(0.001)
    active()
    time.sleep(hold_s)
    inactive()
    for _ in range(release_bounces):
        time.sleep(0.001)
        active()
        time.sleep(0.001)
        inactive()
