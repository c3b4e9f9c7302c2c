"""``python -m flask_diag``: command-line tools that need no app.

.. code-block:: console

    $ python -m flask_diag pdb 4444          # attach to a remote pdb session
    $ python -m flask_diag pdb --help
    $ python -m flask_diag check app:app --server "gunicorn -w 4 app:app"
    $ python -m flask_diag probe http://127.0.0.1:8000/ -n 40 --session

The commands are those of ``flask diag`` (:mod:`flask_diag.cli`), run
without an app: ``pdb`` and ``probe`` are the same command objects, and
``check`` takes ``MODULE:APP`` (and ``--chdir``) to import the app itself.
Define a new command in :mod:`flask_diag.cli` and add it to :data:`cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from .cli import import_check_command
from .cli import pdb_command
from .cli import probe_command

__all__ = ["cli", "main"]

PROG = "python -m flask_diag"

cli = click.Group(
    "flask_diag",
    help="flask_diag: diagnose deployment pitfalls.",
    commands=[pdb_command, import_check_command, probe_command],
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m flask_diag``; returns the exit status."""
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name=PROG)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
