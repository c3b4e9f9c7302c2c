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
