"""Assembling the middleware stack: :func:`wrap`.

:func:`wrap` puts the whole flask_diag stack around any WSGI callable, for
``wsgi-debug.py``-style entry points that are not Flask apps or that must not
change the app's code::

    # wsgi_diag.py -- run with: gunicorn wsgi_diag:application
    from flask_diag import wrap
    from myproject.wsgi import application

    application = wrap(application)

The Flask extension (:class:`~flask_diag.Diag`) builds the same stack around
``app.wsgi_app``. Middlewares are listed outermost first; each is skipped
when its setting is off.
"""

from __future__ import annotations

import os
import typing as t
from collections.abc import Mapping

from .settings import Settings
from .tagging import RequestTagging

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["wrap", "build_stack"]


def build_stack(app: WSGIApplication, settings: Settings) -> WSGIApplication:
    """Wrap ``app`` in every middleware that ``settings`` switches on.

    Returns ``app`` itself when ``settings.enabled`` is off.
    """
    if not settings.enabled:
        return app
    # Innermost first: the tagging middleware stays outermost so that every
    # response, including the ones other middlewares build, carries its
    # headers, and every log line written by them has the request context.
    if settings.teardown != "off":
        from .teardown import TeardownCheck

        # Innermost: the end of the request is when the app's own response
        # iterable is closed, and a leak found in ``raise`` mode is answered
        # by the envelope further out.
        app = TeardownCheck(app, settings=settings)
    if settings.watchdog is not None:
        from .watchdog import Watchdog

        app = Watchdog(app, settings=settings)
    if settings.loopback != "off":
        from .loopback import LoopbackGuard

        # Inside the envelope, which answers its LoopbackDeadlockError.
        app = LoopbackGuard(app, settings=settings)
    if settings.debugger:
        from .debugger import DebuggerGate

        # Inside the envelope: clients the gate refuses, and every request
        # after the debugger's expiry, get the ordinary error envelope.
        app = DebuggerGate(app, settings=settings)
    if settings.errors != "off":
        from .errors import ErrorEnvelope

        # Directly inside tagging: the safety net for every middleware
        # inside it and the app, and its envelopes get tagging's headers.
        app = ErrorEnvelope(app, settings=settings)
    if settings.tagging:
        app = RequestTagging(app, settings=settings)
    return app


def wrap(
    app: WSGIApplication,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: object,
) -> WSGIApplication:
    """Return ``app`` wrapped in the flask_diag stack.

    :param app: any WSGI callable: ``flask_app`` (or ``flask_app.wsgi_app``),
        Django's ``application``, a plain function.
    :param environ: where ``FLASK_DIAG_*`` variables are read; the process
        environment by default.
    :param overrides: settings given in code (see :doc:`/settings`); the
        environment still wins over them.
    :raises DiagConfigError: when a setting is invalid, at start-up.
    """
    settings = Settings.load(
        overrides, environ=os.environ if environ is None else environ
    )
    return build_stack(app, settings)
