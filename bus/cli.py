"""The ``madoguchi`` command.

Sub-commands are plugins registered under the ``madoguchi.commands`` entry
point group (see pyproject.toml): the edge and central packages each bring
their own, so a counter Pi with only the edge installed lists only the edge's
commands.  Each entry point is a callable ``register(subparsers)`` that adds
its parser and sets ``func`` to a function returning an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import PackageNotFoundError, entry_points, version

GROUP = "madoguchi.commands"


def _version() -> str:
    try:
        return version("madoguchi")
    except PackageNotFoundError:
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="madoguchi",
        description="madoguchi 窓口 — counters, tickets and payments for city halls",
    )
    parser.add_argument("--version", action="version", version=f"madoguchi {_version()}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug log output"
    )
    parser.add_argument(
        "--log-target", choices=("auto", "journal", "console"), default="auto",
        help="where the log goes: auto = the systemd journal when run by systemd, else stderr (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            register = ep.load()
        except ImportError as exc:
            # e.g. central's web dependencies are not installed on a counter Pi
            logging.getLogger(__name__).debug("sub-command %s unavailable: %s", ep.name, exc)
            continue
        register(sub)
    return parser


def setup_logging(debug: bool, target: str = "auto", identifier: str = "madoguchi") -> None:
    """stderr, or the journal with structured fields under systemd (bus/sdnotify.py)."""
    from bus.sdnotify import setup_logging as _setup

    _setup(logging.DEBUG if debug else logging.INFO, target=target, identifier=identifier)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose, args.log_target, f"madoguchi-{args.command}")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
