"""The one base exception of the drivers package.

Every driver wraps the exceptions of the library it talks to (gpiozero, pyserial,
python-escpos, ...) in a subclass of :class:`DriverError` where they enter our code, so
callers need to catch only our own exceptions.
"""

from __future__ import annotations

__all__ = ["DriverError"]


class DriverError(Exception):
    """Base class for all errors raised by madoguchi drivers."""
