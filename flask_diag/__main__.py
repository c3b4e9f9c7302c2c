"""``python -m flask_diag``: command-line tools that need no app.

.. code-block:: console

    $ python -m flask_diag pdb 4444          # attach to a remote pdb session
    $ python -m flask_diag pdb --help
    $ python -m flask_diag check app:app --server "gunicorn -w 4 app:app"
    $ python -m flask_diag probe http://127.0.0.1:8000/ -n 40 --session

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
    _add_check(commands)
    _add_probe(commands)
    return parser


def _add_pdb(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from .pdb_client import DEFAULT_HOST
    from .pdb_client import DEFAULT_PORT
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
        help=f"the port (default: $FLASK_DIAG_PDB_PORT, else {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--host", help=f"default: $FLASK_DIAG_PDB_HOST, else {DEFAULT_HOST}"
    )
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


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="json: a stable document for CI (default: %(default)s)",
    )


def _add_check(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="find deployment pitfalls in a WSGI app before the first request",
        description="Import MODULE:APP the way gunicorn does (as a module, never"
        " as __main__) and check the app, its source and the server it will run"
        " under. Exit status 1 when any error is found, 2 when the app cannot be"
        " imported.",
    )
    parser.add_argument("app", metavar="MODULE:APP", help="as gunicorn takes it")
    parser.add_argument("--chdir", metavar="DIR", help="import from DIR")
    parser.add_argument(
        "--server",
        metavar="COMMAND|FILE",
        help='the server command ("gunicorn -w 4 --timeout 30 app:app") or a'
        " gunicorn config (.py) / uWSGI .ini file",
    )
    parser.add_argument(
        "--https", action="store_true", help="the app is served over HTTPS"
    )
    _add_format(parser)
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="DIAG0XX",
        help="silence a check (repeatable, or comma-separated)",
    )
    colour = parser.add_mutually_exclusive_group()
    colour.add_argument("--color", dest="color", action="store_true", default=None)
    colour.add_argument("--no-color", dest="color", action="store_false")
    parser.set_defaults(run=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from .doctor import check_import
    from .doctor import LoadError
    from .doctor import ServerSpecError

    try:
        report = check_import(
            args.app,
            chdir=args.chdir,
            server=args.server,
            https=args.https,
            ignore=args.ignore,
        )
    except (LoadError, ServerSpecError, ValueError) as exc:
        sys.stderr.write(f"python -m flask_diag check: error: {exc}\n")
        return 2
    report.echo(fmt=args.format, color=args.color)
    return report.exit_code


def _add_probe(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "probe",
        help="which worker processes and threads answer a URL",
        description="Send N requests (each on a new connection, with a timeout)"
        " and count the X-Diag-PID / X-Diag-Thread headers of the answers.",
    )
    parser.add_argument("url")
    parser.add_argument("-n", type=int, default=40, dest="count", help="default: 40")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per request (5)"
    )
    parser.add_argument(
        "--session", action="store_true", help="keep one cookie jar (one client)"
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=4,
        help="requests in flight at once (default: 4)",
    )
    _add_format(parser)
    parser.set_defaults(run=_run_probe)


def _run_probe(args: argparse.Namespace) -> int:
    from .probe import probe

    try:
        result = probe(
            args.url,
            count=args.count,
            timeout=args.timeout,
            session=args.session,
            concurrency=args.concurrency,
        )
    except ValueError as exc:
        sys.stderr.write(f"python -m flask_diag probe: error: {exc}\n")
        return 2
    print(result.render(args.format))
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m flask_diag``; returns the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
