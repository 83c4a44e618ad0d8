"""The counter's number display: one interface (:class:`Display`), several screens.

* :class:`HdmiDisplay`: a page for a Chromium kiosk on the counter's HDMI screen.
* :class:`LogDisplay`: one line of text per screen (no screen, demos, journals).
* :class:`FakeDisplay`: for tests; keeps a history and can wait for a screen.
"""

from drivers.display.base import MODES, Display, DisplayError, Health, Screen
from drivers.display.fake import FakeDisplay
from drivers.display.hdmi import HdmiDisplay
from drivers.display.log import LogDisplay, format_screen

__all__ = [
    "MODES",
    "Display",
    "DisplayError",
    "FakeDisplay",
    "HdmiDisplay",
    "Health",
    "LogDisplay",
    "Screen",
    "format_screen",
]
