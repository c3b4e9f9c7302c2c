"""The Flask extension: :class:`Diag`.

.. code-block:: python

    from flask import Flask
    from flask_diag import Diag

    diag = Diag()

    def create_app():
        app = Flask(__name__)
        diag.init_app(app)
        return app

``init_app`` reads the settings once (defaults, then keyword arguments given
to :class:`Diag`, then ``app.config["DIAG_*"]``, then ``FLASK_DIAG_*``
environment variables), wraps ``app.wsgi_app`` in the middleware stack and
registers the ``flask diag`` command group.
"""

from __future__ import annotations

import os
import typing as t
import weakref

from flask import current_app
from flask import Flask

from .errors import ExceptionMap
from .errors import init_flask
from .settings import Settings
from .stack import build_stack

if t.TYPE_CHECKING:
    from .teardown import Watch

__all__ = ["Diag"]


class Diag:
    """flask_diag for one or more Flask apps.

    :param app: the app to set up now; or call :meth:`init_app` later.
    :param options: settings given in code, e.g. ``worker_headers=False``.
    """

    def __init__(self, app: Flask | None = None, **options: object) -> None:
        # Validate keyword arguments at once, before any app is involved.
        Settings.load(options, environ={})
        self._options = dict(options)
        self._exception_map = ExceptionMap()
        #: The teardown check's engines and sessions (made when first used).
        self._teardown_watch: Watch | None = None
        self._settings: weakref.WeakKeyDictionary[Flask, Settings] = (
            weakref.WeakKeyDictionary()
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the settings and wrap ``app.wsgi_app``.

        :raises RuntimeError: when flask_diag is already registered on ``app``.
        :raises DiagConfigError: when a setting is invalid.
        """
        if "diag" in app.extensions:
            raise RuntimeError(
                "A 'Diag' instance has already been registered on this Flask app."
                " Call init_app() once per app; to change settings, pass them to"
                " Diag(...) or set DIAG_* config keys before init_app()."
            )
        settings = Settings.load(self._options, config=app.config, environ=os.environ)
        self._settings[app] = settings
        app.extensions["diag"] = self
        from .cli import diag_cli

        app.cli.add_command(diag_cli)
        if settings.enabled:
            app.wsgi_app = build_stack(app.wsgi_app, settings)  # type: ignore[method-assign,assignment]
            if settings.errors != "off":
                # Flask's own errors (abort, routing 404/405, view
                # exceptions) as envelopes too, with the same exception map.
                init_flask(app, settings, self._exception_map)
            if settings.debugger:
                from .debugger import init_flask as init_debugger

                init_debugger(app, settings)
            if settings.teardown != "off":
                from .teardown import init_flask as init_teardown

                init_teardown(app, settings, self)

    def map_exception(
        self,
        exc_class: type[BaseException],
        status: int,
        *,
        code: str | None = None,
        detail: str | t.Callable[[BaseException], str] | None = None,
        hint: str | None = None,
    ) -> None:
        """Answer ``exc_class`` (and subclasses) with an error ``status``, in
        every app of this extension, before or after ``init_app``:

        .. code-block:: python

            diag.map_exception(LookupError, 404, code="not_found")

        ``detail`` is a text or a function of the exception (``str`` to send
        its message); by default the status's generic text. See
        :meth:`flask_diag.errors.ExceptionMap.add`.
        """
        self._exception_map.add(exc_class, status, code=code, detail=detail, hint=hint)

    def watch_engine(self, engine: t.Any) -> None:
        """Check a SQLAlchemy ``Engine`` at the end of every request: see
        :doc:`/middlewares/teardown`.

        .. code-block:: python

            engine = create_engine(url, pool_pre_ping=True)
            diag.watch_engine(engine)
        """
        from .teardown import watch_engine

        watch_engine(engine, self)

    def watch_session(self, session_factory: t.Any) -> None:
        """Check a SQLAlchemy ``scoped_session`` or ``sessionmaker`` at the
        end of every request: see :doc:`/middlewares/teardown`."""
        from .teardown import watch_session

        watch_session(session_factory, self)

    def settings_for(self, app: Flask | None = None) -> Settings:
        """The effective settings of ``app`` (default: the current app)."""
        if app is None:
            app = current_app
        # A LocalProxy (``current_app``) cannot key a WeakKeyDictionary.
        unwrap = getattr(app, "_get_current_object", None)
        if unwrap is not None:
            app = t.cast(Flask, unwrap())
        try:
            return self._settings[app]
        except KeyError:
            raise RuntimeError(
                f"flask_diag is not set up on {app!r}. Did you forget to call"
                " 'diag.init_app(app)'?"
            ) from None

    @property
    def settings(self) -> Settings:
        """The effective settings of the current app."""
        return self.settings_for()
