"""Payment terminal drivers: one interface (:class:`Terminal`), three implementations.

* :class:`drivers.terminal.zvt.ZvtTerminal`: the public ZVT ECR protocol over serial or
  TCP (needs pyserial, so import it from its module).
* :class:`ManualTerminal`: a stand-alone terminal that staff operate by hand.
* :class:`drivers.terminal.sim.SimTerminal`: a ZVT terminal simulator on a pty, for
  tests and the demo.

The outcome rules every driver keeps are in :mod:`drivers.terminal.base` and
docs/terminal.md.
"""

from drivers.terminal.base import (
    MAX_AMOUNT,
    Health,
    OnStatus,
    Outcome,
    Terminal,
    TerminalError,
    TerminalUnavailable,
    Totals,
    TxKind,
    TxRecord,
    check_amount,
    mask_pan,
)
from drivers.terminal.manual import ManualTerminal, instructions

__all__ = [
    "MAX_AMOUNT",
    "Health",
    "ManualTerminal",
    "OnStatus",
    "Outcome",
    "Terminal",
    "TerminalError",
    "TerminalUnavailable",
    "Totals",
    "TxKind",
    "TxRecord",
    "check_amount",
    "instructions",
    "mask_pan",
]
