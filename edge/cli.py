"""``madoguchi edge`` sub-command."""

from __future__ import annotations


def edge_command(sub) -> None:
    p = sub.add_parser("edge", help="run the edge daemon of one Pi (counter role)")
    p.add_argument("--config", default="/etc/madoguchi/edge.toml", help="edge.toml (default: %(default)s)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from edge.app import run

    return run(args.config)
