"""The ``flask diag`` command group, registered by :class:`~flask_diag.Diag`.

.. code-block:: console

    $ flask --app myapp diag settings
    enabled            on     FLASK_DIAG
    worker_headers     on     FLASK_DIAG_WORKER_HEADERS
    ...
    $ flask --app myapp diag check --server "gunicorn -w 4 myapp:app"
    $ flask diag probe http://127.0.0.1:8000/ -n 40 --session
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .pdb_client import DEFAULT_HOST
from .probe import MAX_CONCURRENCY
from .probe import MAX_REQUESTS
from .settings import OPTIONS

__all__ = ["diag_cli"]

diag_cli = AppGroup("diag", help="flask_diag: diagnose deployment pitfalls.")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@diag_cli.command("settings")
def settings_command() -> None:
    """Print the effective flask_diag settings of the app and their variables."""
    settings = current_app.extensions["diag"].settings_for(current_app)
    for name, option in OPTIONS.items():
        click.echo(f"{name:<20} {_show(getattr(settings, name)):<12} {option.env}")


@diag_cli.command("pdb", with_appcontext=False)
@click.argument("port", type=click.IntRange(1, 65535), required=False)
@click.option(
    "--host", help=f"Its address (default: $FLASK_DIAG_PDB_HOST, else {DEFAULT_HOST})."
)
@click.option("--once", is_flag=True, help="Exit after the first session.")
@click.option("--wait", type=float, help="Give up after SECONDS without a session.")
def pdb_command(
    port: int | None, host: str | None, once: bool, wait: float | None
) -> None:
    """Attach to a remote pdb session (flask_diag.set_trace), with line
    editing, history, and reconnection to the next breakpoint."""
    from .pdb_client import attach

    raise SystemExit(attach(port, host=host, once=once, wait=wait))


_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: a stable document for CI.",
)


@diag_cli.command("check")
@click.option(
    "--server",
    metavar="COMMAND|FILE",
    help='The server command ("gunicorn -w 4 --timeout 30 app:app") or a '
    "gunicorn config (.py) / uWSGI .ini file, for the server checks.",
)
@click.option("--https", is_flag=True, help="The app is served over HTTPS.")
@_format_option
@click.option(
    "--ignore",
    multiple=True,
    metavar="DIAG0XX",
    help="Silence a check (repeatable, or comma-separated).",
)
@click.option("--color/--no-color", default=None, help="Default: when a terminal.")
def check_command(
    server: str | None,
    https: bool,
    fmt: str,
    ignore: tuple[str, ...],
    color: bool | None,
) -> None:
    """Find deployment pitfalls before the first request: the app as
    imported, its source, and the server it will run under. Exit status 1
    when any error is found."""
    from .doctor import check_app
    from .doctor import LoadError
    from .doctor import ServerSpecError

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    try:
        report = check_app(app, server=server, https=https, ignore=ignore)
    except (LoadError, ServerSpecError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    report.echo(fmt=fmt, color=color)
    raise SystemExit(report.exit_code)


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
    (from flask_diag's X-Diag-PID / X-Diag-Thread headers)."""
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
        raise click.UsageError(str(exc)) from None
    click.echo(result.render(fmt))
    raise SystemExit(result.exit_code)
