"""Named crash points, for tests that prove a payment or a receipt survives a
kill -9 at exactly one step.

``MADOGUCHI_CRASHPOINT=<name>`` in the environment makes the daemon kill
itself with SIGKILL (no clean-up, no flush: like a power cut of the process)
when it reaches ``crashpoint(<name>)``.  Unset, a crash point costs one dict
lookup.  The names are listed in docs/testing.md.
"""

from __future__ import annotations

import logging
import os
import signal

logger = logging.getLogger(__name__)


def crashpoint(name: str) -> None:
    if os.environ.get("MADOGUCHI_CRASHPOINT") == name:
        logger.warning("crash point %s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)
