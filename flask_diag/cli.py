"""The ``flask diag`` command group, registered by :class:`~flask_diag.Diag`.

.. code-block:: console

    $ flask --app myapp diag settings
    enabled            on     FLASK_DIAG
    worker_headers     on     FLASK_DIAG_WORKER_HEADERS
    ...
    $ flask --app myapp diag check --server "gunicorn -w 4 myapp:app"
    $ flask diag probe http://127.0.0.1:8000/ -n 40 --session

The ``pdb`` and ``probe`` commands need no app: ``python -m flask_diag``
(:mod:`flask_diag.__main__`) runs the same command objects, and its ``check``
is :data:`import_check_command`, which shares the options and the error
handling of ``flask diag check`` and imports ``MODULE:APP`` instead of using
the current app. Each command is defined once, here.
"""

from __future__ import annotations

import typing as t
from collections.abc import Callable

import click
from flask import current_app
from flask.cli import AppGroup

from .pdb_client import DEFAULT_HOST
from .pdb_client import DEFAULT_PORT
from .pdb_client import HISTORY_FILE
from .probe import MAX_CONCURRENCY
from .probe import MAX_REQUESTS
from .settings import OPTIONS

if t.TYPE_CHECKING:
    from .doctor import Report

__all__ = ["diag_cli", "import_check_command", "pdb_command", "probe_command"]

F = t.TypeVar("F", bound=Callable[..., t.Any])

diag_cli = AppGroup("diag", help="flask_diag: diagnose deployment pitfalls.")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _usage_error(exc: Exception) -> t.NoReturn:
    """An argument the library refused (an app that cannot be imported, a
    ``--server`` that cannot be read, an unknown ``--ignore`` id, a URL that
    is not http): one line on stderr, status 2, under both entry points."""
    ctx = click.get_current_context()
    click.echo(f"{ctx.command_path}: error: {exc}", err=True)
    raise SystemExit(2)


@diag_cli.command("settings")
def settings_command() -> None:
    """Print the effective flask_diag settings of the app and their variables."""
    settings = current_app.extensions["diag"].settings_for(current_app)
    for name, option in OPTIONS.items():
        value = getattr(settings, name)
        if option.secret and value is not None:
            value = "(set, not shown)"
        click.echo(f"{name:<20} {_show(value):<12} {option.env}")


@diag_cli.command(
    "pdb",
    with_appcontext=False,
    help="Attach to a remote pdb session (flask_diag.set_trace), with line"
    " editing, history, and reconnection to the next breakpoint. PORT defaults"
    f" to $FLASK_DIAG_PDB_PORT, else {DEFAULT_PORT}. Ctrl-D at the prompt"
    " detaches, Ctrl-C while waiting quits.",
)
@click.argument("port", type=click.IntRange(1, 65535), required=False)
@click.option(
    "--host", help=f"Its address (default: $FLASK_DIAG_PDB_HOST, else {DEFAULT_HOST})."
)
@click.option("--once", is_flag=True, help="Exit after the first session.")
@click.option(
    "--wait",
    type=float,
    metavar="SECONDS",
    help="Give up when no breakpoint listens within SECONDS (default: until Ctrl-C).",
)
@click.option(
    "--history",
    metavar="FILE",
    default=HISTORY_FILE,
    show_default=True,
    help="The readline history file ('' for none).",
)
def pdb_command(
    port: int | None, host: str | None, once: bool, wait: float | None, history: str
) -> None:
    from .pdb_client import attach

    raise SystemExit(
        attach(port, host=host, once=once, wait=wait, history=history or None)
    )


_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: a stable document for CI.",
)


def _check_options(function: F) -> F:
    """The options of both ``check`` commands."""
    for option in reversed(
        [
            click.option(
                "--server",
                metavar="COMMAND|FILE",
                help='The server command ("gunicorn -w 4 --timeout 30 app:app")'
                " or a gunicorn config (.py) / uWSGI .ini file, for the server"
                " checks.",
            ),
            click.option("--https", is_flag=True, help="The app is served over HTTPS."),
            _format_option,
            click.option(
                "--ignore",
                multiple=True,
                metavar="DIAG0XX",
                help="Silence a check (repeatable, or comma-separated).",
            ),
            click.option(
                "--color/--no-color", default=None, help="Default: when a terminal."
            ),
        ]
    ):
        function = option(function)
    return function


def _report(check: Callable[[], Report], fmt: str, color: bool | None) -> t.NoReturn:
    """Run ``check``, print its report and exit with its status."""
    from .doctor import LoadError

    try:
        report = check()
    except (LoadError, ValueError) as exc:  # ServerSpecError is a ValueError
        _usage_error(exc)
    report.echo(fmt=fmt, color=color)
    raise SystemExit(report.exit_code)


@diag_cli.command("check")
@_check_options
def check_command(
    server: str | None,
    https: bool,
    fmt: str,
    ignore: tuple[str, ...],
    color: bool | None,
) -> None:
    """Find deployment pitfalls before the first request: the app as
    imported, its source, and the server it will run under. Exit status 1
    when any error is found, 2 when an option is wrong."""
    from .doctor import check_app

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    _report(
        lambda: check_app(app, server=server, https=https, ignore=ignore), fmt, color
    )


@click.command("check")
@click.argument("app", metavar="MODULE:APP")
@click.option("--chdir", metavar="DIR", help="Import from DIR.")
@_check_options
def import_check_command(
    app: str,
    chdir: str | None,
    server: str | None,
    https: bool,
    fmt: str,
    ignore: tuple[str, ...],
    color: bool | None,
) -> None:
    """Find deployment pitfalls in a WSGI app before the first request.
    MODULE:APP (as gunicorn takes it) is imported the way gunicorn does, as a
    module, never as __main__; then the app, its source and the server it
    will run under are checked. Exit status 1 when any error is found, 2 when
    the app cannot be imported or an option is wrong."""
    from .doctor import check_import

    _report(
        lambda: check_import(
            app, chdir=chdir, server=server, https=https, ignore=ignore
        ),
        fmt,
        color,
    )


@diag_cli.command("probe", with_appcontext=False)
@click.argument("url")
@click.option(
    "-n",
    "count",
    type=click.IntRange(1, MAX_REQUESTS),
    default=40,
    show_default=True,
    help="How many requests.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Seconds each request may take.",
)
@click.option("--session", is_flag=True, help="Keep one cookie jar, like one browser.")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=4,
    show_default=True,
    help="Requests in flight at once.",
)
@_format_option
def probe_command(
    url: str, count: int, timeout: float, session: bool, concurrency: int, fmt: str
) -> None:
    """Ask a running server which worker processes and threads answer URL
    (from flask_diag's X-Diag-PID / X-Diag-Thread headers): N requests, each
    on a new connection, with a timeout."""
    from .probe import probe

    try:
        result = probe(
            url,
            count=count,
            timeout=timeout,
            session=session,
            concurrency=concurrency,
        )
    except ValueError as exc:
        _usage_error(exc)
    click.echo(result.render(fmt))
    raise SystemExit(result.exit_code)
