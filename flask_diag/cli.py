"""The ``flask diag`` command group, registered by :class:`~flask_diag.Diag`.

.. code-block:: console

    $ flask --app myapp diag settings
    enabled            on     FLASK_DIAG
    worker_headers     on     FLASK_DIAG_WORKER_HEADERS
    ...
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

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
@click.option("--host", default="127.0.0.1", show_default=True, help="Its address.")
@click.option("--once", is_flag=True, help="Exit after the first session.")
@click.option("--wait", type=float, help="Give up after SECONDS without a session.")
def pdb_command(port: int | None, host: str, once: bool, wait: float | None) -> None:
    """Attach to a remote pdb session (flask_diag.set_trace), with line
    editing, history, and reconnection to the next breakpoint."""
    from .pdb_client import attach

    raise SystemExit(attach(port, host=host, once=once, wait=wait))
