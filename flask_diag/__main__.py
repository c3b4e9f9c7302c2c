"""``python -m flask_diag``: command-line tools that need no app.

.. code-block:: console

    $ python -m flask_diag pdb 4444          # attach to a remote pdb session
    $ python -m flask_diag pdb --help

Each tool is a subcommand with its own ``_add_<name>`` function below; add
one there and register it in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m flask_diag`` parser and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m flask_diag",
        description="flask_diag: diagnose deployment pitfalls.",
    )
    commands = parser.add_subparsers(dest="command", required=True, title="commands")
    _add_pdb(commands)
    return parser


def _add_pdb(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .pdb_client import DEFAULT_HOST
    from .pdb_client import HISTORY_FILE

    parser = commands.add_parser(
        "pdb",
        help="attach to a remote pdb session (flask_diag.set_trace)",
        description="Attach to the remote pdb of flask_diag.set_trace() with line"
        " editing and history; when a session ends, wait for the next breakpoint."
        " Ctrl-D at the prompt detaches, Ctrl-C while waiting quits.",
    )
    parser.add_argument(
        "port",
        nargs="?",
        type=int,
        help="the port (default: $FLASK_DIAG_PDB_PORT, else 4444)",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="default: %(default)s")
    parser.add_argument(
        "--once", action="store_true", help="exit after the first session"
    )
    parser.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="give up when no breakpoint listens within SECONDS (default: until"
        " Ctrl-C)",
    )
    parser.add_argument(
        "--history",
        default=HISTORY_FILE,
        metavar="FILE",
        help="the readline history file (default: %(default)s; '' for none)",
    )
    parser.set_defaults(run=_run_pdb)


def _run_pdb(args: argparse.Namespace) -> int:
    from .pdb_client import attach

    return attach(
        args.port,
        host=args.host,
        once=args.once,
        wait=args.wait,
        history=args.history or None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m flask_diag``; returns the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
