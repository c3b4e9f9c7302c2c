"""The "never break the app" guard.

Everything flask_diag does on its own account (sending signals, tagging the
Sentry scope, writing its log lines) runs under :func:`capture_internal_exceptions`:
a failure there is reported once through the ``flask_diag`` structlog logger
and swallowed, so the app's own response goes out unchanged. Exceptions raised
by the app itself are never caught here.

Modelled on sentry-sdk's ``capture_internal_exceptions``::

    with capture_internal_exceptions("sending request_tagged"):
        request_tagged.send(...)

On the hot path, where a ``with`` block costs more than the work it guards,
the middlewares use ``try``/``except`` and call :func:`report_internal_error`.
"""

from __future__ import annotations

import sys
import types
import typing as t

import structlog

if t.TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "capture_internal_exceptions",
    "report_internal_error",
    "logger",
    "find_in_stack",
    "find_flask_app",
]

#: flask_diag's own logger. It is structlog's lazy proxy: it follows whatever
#: configuration the application chose, and flask_diag never configures it.
logger = structlog.get_logger("flask_diag")


def report_internal_error(where: str, exc: BaseException) -> None:
    """Log a failure inside flask_diag; never raise.

    If the log sink itself is what fails, fall back to one line on stderr.
    """
    try:
        logger.error(
            "flask_diag internal error",
            where=where,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    except Exception:
        try:
            sys.stderr.write(
                f"flask_diag internal error in {where}: "
                f"{type(exc).__name__} (logging it failed too)\n"
            )
        except Exception:
            pass


class capture_internal_exceptions:  # noqa: N801 - used like a function
    """Context manager: report and swallow any :class:`Exception` in its block."""

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> bool:
        if exc is not None and isinstance(exc, Exception):
            report_internal_error(self.where, exc)
            return True
        return False


_M = t.TypeVar("_M")


def find_in_stack(app: object, kind: type[_M], *, limit: int = 32) -> list[_M]:
    """Every ``kind`` middleware in a chain, outermost first, following each
    middleware's ``.app`` (bounded: a cycle cannot hang start-up)::

        (envelope,) = find_in_stack(flask_app.wsgi_app, ErrorEnvelope)
    """
    found: list[_M] = []
    for _ in range(limit):
        if isinstance(app, kind):
            found.append(app)
        app = getattr(app, "app", None)
        if app is None:
            break
    return found


def find_flask_app(app: object, *, limit: int = 32) -> Flask | None:
    """The Flask app at the bottom of a middleware chain (following ``.app``
    and bound methods such as ``flask_app.wsgi_app``), or ``None``."""
    from flask import Flask

    for _ in range(limit):
        try:
            if isinstance(app, Flask):
                return app
            owner = getattr(app, "__self__", None)
            if isinstance(owner, Flask):
                return owner
            app = getattr(app, "app", None)
        except Exception:  # an odd wrapper's attribute: no Flask app then
            return None
        if app is None:
            return None
    return None
