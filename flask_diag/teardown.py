"""Session-teardown checks
=======================

Pitfall 6: a module-global SQLAlchemy ``session = Session()`` is shared by
every request and thread; it keeps its connection checked out and its
transaction open between requests, and after the database's idle timeout
(MySQL's 8 h ``wait_timeout``, PostgreSQL's ``idle_session_timeout``) every
request fails with "server has gone away" / "terminating connection due to
idle-session timeout". Its relatives: connections left checked out, and
transactions left open, at the end of a request.

:class:`TeardownCheck` looks at the end of every request (when the response
iterable is closed, so a streamed response is checked after its last chunk)
for what the request should have released, and names it:

``connection_checked_out``
    a connection of a watched engine checked out during the request and
    never returned, with the stack where it was checked out;
``session_open``
    a ``Session`` the request used that still has an open transaction or
    pending changes (neither committed nor rolled back);
``scoped_session_not_removed``
    a ``scoped_session`` whose registry still holds the request's session
    after teardown (``remove()`` never called);
``shared_session``
    a plain (not scoped) ``Session`` used by more than one request or
    thread: the module-global session, named as such
    (``module-global 'app.session'``);
``no_secret_key``
    (Flask) the app has no secret key: at start-up when its module sets it
    only under ``if __name__ == "__main__":`` (pitfall 1), and at the first
    request that uses ``flask.session`` (and fails for want of the key).

Which engines and sessions are watched is opt-in::

    diag = Diag(app)
    diag.watch_engine(engine)            # pool events: connections
    diag.watch_session(db_session)       # a scoped_session or sessionmaker

    # plain WSGI (wrap() or the middleware alone)
    application = wrap(application)
    watch_engine(engine, application)

Flask-SQLAlchemy's ``db`` (its engines and ``db.session``) is watched
automatically. Nothing watched, the middleware costs one attribute check
per request; SQLAlchemy is an optional extra, imported only when something
is watched.

Each finding is logged through the ``flask_diag`` structlog logger as one
``teardown leak`` line (request id, pid, thread, what leaked, where),
announced by :data:`~flask_diag.signals.teardown_leak` with a
:class:`TeardownFinding`, and sent to Sentry as a warning when the
application initialised sentry-sdk. ``FLASK_DIAG_TEARDOWN=raise`` (for test
suites and CI) also answers the request with a 500 ``teardown_leak``
problem: the response is then held (up to 1 MiB) until the app's iterable is
exhausted, so that the status can still change.

.. autoclass:: TeardownCheck
.. autoclass:: TeardownFinding
    :members:
.. autoexception:: TeardownLeakError
.. autofunction:: watch_engine
.. autofunction:: watch_session
"""

from __future__ import annotations

import dataclasses
import threading
import typing as t
from threading import get_ident

from . import sentry
from .closing import add_quiet_callback
from .closing import close_iterable
from .closing import EndsAtClose
from .closing import quiet
from .context import current_pid
from .context import is_file_wrapper
from .context import request_info
from .context import thread_name
from .internal import find_in_stack
from .internal import logger
from .internal import report_internal_error
from .problem import DiagHTTPError
from .secret_key import is_no_secret_key
from .secret_key import secret_key_hint
from .secret_key import secret_key_site
from .settings import Settings
from .signals import send_safely
from .signals import teardown_leak

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "TeardownCheck",
    "TeardownFinding",
    "TeardownLeakError",
    "watch_engine",
    "watch_session",
]

STATUS = 500
CODE = "teardown_leak"
#: How much of a response raise mode holds back while it waits for the end.
HOLD_LIMIT = 1024 * 1024

_KIND_TEXT = {
    "connection_checked_out": "a database connection still checked out",
    "session_open": "a session with an open transaction or pending changes",
    "scoped_session_not_removed": "a scoped_session that was never removed",
    "shared_session": "a session shared between requests or threads",
    "no_secret_key": "no secret key for flask.session",
}


@dataclasses.dataclass(frozen=True)
class TeardownFinding:
    """One resource that outlived its request (or the app's secret key).

    Sent with :data:`~flask_diag.signals.teardown_leak` as ``finding``::

        def on_leak(sender, environ, finding, **extra):
            print(finding.kind, finding.what, finding.where)
    """

    #: ``connection_checked_out``, ``session_open``,
    #: ``scoped_session_not_removed``, ``shared_session`` or ``no_secret_key``.
    kind: str
    #: What leaked, e.g. ``"connection of postgresql+psycopg://u:***@127.0.0.1/db"``.
    what: str
    #: One sentence: what is wrong and why it matters.
    message: str
    #: How to fix it.
    fix: str
    #: ``file:line in function`` of the app's code involved (the checkout,
    #: the session's first use in the request, where the key is set).
    where: str | None = None
    #: The stack (outermost first) where the resource was taken.
    stack: tuple[str, ...] = ()
    #: The request, when the finding belongs to one.
    request_id: str | None = None
    method: str | None = None
    path: str | None = None
    pid: int = 0
    thread: str = ""
    #: Extra facts: the engine URL (password hidden), the module-global
    #: name holding a shared session, the threads and requests that used it.
    details: t.Mapping[str, object] = dataclasses.field(default_factory=dict)


class TeardownLeakError(DiagHTTPError):
    """Raise mode: the request left something open. Answered ``500`` with
    ``code: "teardown_leak"`` and the member ``leaks`` (the finding kinds);
    where each resource was taken is in the log line, never in the body."""

    def __init__(self, findings: t.Sequence[TeardownFinding]) -> None:
        kinds = list(dict.fromkeys(f.kind for f in findings))
        listed = "; ".join(_KIND_TEXT.get(k, k) for k in kinds)
        super().__init__(
            STATUS,
            CODE,
            f"This request left resources open at its end: {listed}.",
            hint=" ".join(dict.fromkeys(f.fix for f in findings)),
            extra={"leaks": kinds},
        )
        self.findings = tuple(findings)


# -- what is watched ----------------------------------------------------------------


class _Request(EndsAtClose):
    """One checked request, as the SQLAlchemy listeners see it, and (once
    the app has answered) its response iterable: iteration goes straight to
    the app's, and ``close()`` ends the request. One object per request."""

    __slots__ = (
        "environ",
        "ident",
        "checkouts",
        "sessions",
        "last",
        "check",
        "previous",
        "body",
        "app_iter",
        "ended",
    )

    def __init__(
        self,
        environ: WSGIEnvironment | None,
        ident: int,
        check: TeardownCheck,
        previous: _Request | None,
    ) -> None:
        self.environ = environ
        self.ident = ident
        #: Connection record -> what the listeners know of its checkout.
        self.checkouts: dict[object, t.Any] = {}
        #: Session -> where the request first used it.
        self.sessions: dict[object, t.Any] = {}
        #: The latest checkout: ``(pool proxy, stack)``.
        self.last: tuple[object, t.Any] | None = None
        self.check = check
        #: The request this thread was serving before (a nested app).
        self.previous = previous
        self.body: t.Iterable[bytes] = ()
        self.app_iter: t.Iterable[bytes] = ()
        #: Set once :meth:`TeardownCheck.finish` has run: never restored as
        #: a thread's current request, never closed again.
        self.ended = False

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(self.body)

    @quiet
    def end(self) -> None:
        """The response is closed: the request is over."""
        check = self.check
        findings = check.finish(self)
        if findings and check.raise_mode:
            _too_late(findings)


def _too_late(findings: list[TeardownFinding]) -> None:
    """Raise mode, after the status went out: only a log line is left."""
    try:
        logger.error(
            "teardown leak found after the response started",
            request_id=findings[0].request_id,
            hint="the status could no longer be changed to 500",
        )
    except Exception as exc:  # the server's close() never raises for us
        report_internal_error("logging a late teardown leak", exc)


class Watch:
    """The engines and sessions one app (one :class:`~flask_diag.Diag`, or
    one stack) watches, and its requests in flight, by thread."""

    def __init__(self) -> None:
        #: ``True`` once anything is watched: the middleware's one check.
        self.active = False
        #: Thread ident -> the request it is serving.
        self.current: dict[int, _Request] = {}
        self.engines: list[t.Any] = []
        self.scoped: list[t.Any] = []
        self.session_classes: set[type] = set()
        self.lock = threading.Lock()
        self.checker: t.Callable[[Watch, _Request], list[TeardownFinding]] | None = None

    def watch_engine(self, engine: t.Any) -> None:
        from . import teardown_sqlalchemy

        teardown_sqlalchemy.watch_engine(self, engine)
        self._activate(teardown_sqlalchemy.check)

    def watch_session(self, factory: t.Any) -> None:
        from . import teardown_sqlalchemy

        teardown_sqlalchemy.watch_session(self, factory)
        self._activate(teardown_sqlalchemy.check)

    def _activate(
        self, checker: t.Callable[[Watch, _Request], list[TeardownFinding]]
    ) -> None:
        # The check is kept here: no import statement per request.
        self.checker = checker
        self.active = True


_diag_lock = threading.Lock()


def _watch_of(target: object) -> Watch | None:
    """The :class:`Watch` of a Diag, a TeardownCheck or a stack holding one."""
    from .extension import Diag

    if isinstance(target, Watch):
        return target
    if isinstance(target, Diag):
        with _diag_lock:
            if target._teardown_watch is None:
                target._teardown_watch = Watch()
            return target._teardown_watch
    check = _find_check(target)
    return check.watch if check is not None else None


def _find_check(app: object) -> TeardownCheck | None:
    """The TeardownCheck in ``app``'s middleware chain (a Flask app: in its
    ``wsgi_app``)."""
    if hasattr(app, "wsgi_app") and hasattr(app, "import_name"):
        app = app.wsgi_app
    return next(iter(find_in_stack(app, TeardownCheck)), None)


def watch_engine(engine: t.Any, target: object) -> None:
    """Report connections of ``engine`` (a SQLAlchemy ``Engine``) checked
    out during a request and not returned at its end.

    ``target`` is a :class:`~flask_diag.Diag`, or a stack built by
    :func:`~flask_diag.wrap` (or any middleware chain holding a
    :class:`TeardownCheck`)::

        application = wrap(application)
        watch_engine(engine, application)

    Sessions bound to ``engine`` are checked too. Does nothing when the
    target has no teardown check (``FLASK_DIAG_TEARDOWN=off``).
    """
    watch = _watch_of(target)
    if watch is not None:
        watch.watch_engine(engine)


def watch_session(session_factory: t.Any, target: object) -> None:
    """Report sessions of ``session_factory`` (a ``scoped_session`` or a
    ``sessionmaker``) left open, and a scoped_session never removed, at the
    end of a request. ``target`` as for :func:`watch_engine`."""
    watch = _watch_of(target)
    if watch is not None:
        watch.watch_session(session_factory)


# -- the middleware -------------------------------------------------------------------


class TeardownCheck:
    """Report what a request leaves behind: see the module's documentation.

    :param app: the WSGI application to wrap.
    :param settings: a :class:`~flask_diag.settings.Settings`; by default
        loaded from the environment (``FLASK_DIAG_TEARDOWN``).
    :param overrides: settings given in code, e.g. ``teardown="raise"``.

    .. code-block:: python

        application = TeardownCheck(application, teardown="raise")
        application.watch_engine(engine)
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        settings: Settings | None = None,
        **overrides: object,
    ) -> None:
        settings = Settings.for_middleware(settings, overrides)
        self.app = app
        self.settings = settings
        #: What this middleware watches; replaced by the Diag's own in
        #: ``init_app`` so that ``diag.watch_engine`` reaches it.
        self.watch = Watch()
        self.off = settings.teardown == "off"
        self.raise_mode = settings.teardown == "raise"
        # One-time work for the first request (Flask: secret key,
        # Flask-SQLAlchemy); ``None`` once done.
        self.pending: list[t.Callable[[], object]] | None = None
        self._pending_lock = threading.Lock()
        self.key_reported = False
        self.receivers: tuple[t.Callable[..., None], ...] = ()

    def watch_engine(self, engine: t.Any) -> None:
        """:func:`watch_engine` for this middleware."""
        self.watch.watch_engine(engine)

    def watch_session(self, session_factory: t.Any) -> None:
        """:func:`watch_session` for this middleware."""
        self.watch.watch_session(session_factory)

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        if self.pending is not None:
            self._first_request()
        watch = self.watch
        if not watch.active or self.off:
            return self.app(environ, start_response)
        if self.raise_mode:
            return self._held(watch, environ, start_response)
        request = self._begin(watch, environ)
        try:
            app_iter = self.app(environ, start_response)
        except BaseException:
            self.finish(request)
            raise
        if add_quiet_callback(app_iter, request.end):
            # What Flask (werkzeug) returns: ours runs after the app's own
            # close callbacks, and the envelope still sees an inert body.
            return app_iter
        if is_file_wrapper(environ, app_iter):
            self.finish(request)  # the server sends it; we cannot wait
            return app_iter
        request.body = request.app_iter = app_iter
        return request

    def _begin(self, watch: Watch, environ: WSGIEnvironment) -> _Request:
        """Start checking a request: this thread serves it now."""
        ident = get_ident()
        current = watch.current
        request = _Request(environ, ident, self, current.get(ident))
        current[ident] = request
        return request

    def _first_request(self) -> None:
        with self._pending_lock:
            pending, self.pending = self.pending, None
        for task in pending or ():
            try:
                task()
            except Exception as exc:
                report_internal_error("teardown check at the first request", exc)

    def finish(self, request: _Request) -> list[TeardownFinding]:
        """End ``request``: restore the thread's previous request, check,
        report. Returns the findings."""
        current = self.watch.current
        ident = request.ident
        request.ended = True
        # From the request's thread, or from another (a server closing the
        # response elsewhere, a nested response closed late) while it is
        # still the thread's current one: the thread's previous request
        # that is not over becomes current again.
        if ident == get_ident() or current.get(ident) is request:
            previous = request.previous
            while previous is not None and previous.ended:
                previous = previous.previous
            if previous is None:
                current.pop(ident, None)
            else:
                current[ident] = previous
        request.previous = None
        if not request.checkouts and not request.sessions:
            request.environ = None
            return []  # the common case: nothing to look at
        try:
            checker = self.watch.checker
            findings = checker(self.watch, request) if checker is not None else []
        except Exception as exc:
            report_internal_error("checking the end of a request", exc)
            findings = []
        environ = request.environ
        for finding in findings:
            report(finding, environ, self)
        # The request may outlive its response (a server that keeps the
        # iterable): do not keep the environ alive with it.
        request.environ = None
        return findings

    # -- raise mode ------------------------------------------------------------

    def _held(
        self, watch: Watch, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        request = self._begin(watch, environ)
        held = _HeldStart(start_response)
        try:
            app_iter = self.app(environ, held)
        except BaseException:
            self.finish(request)
            raise
        if is_file_wrapper(environ, app_iter):
            # A file the server sends itself (sendfile): passed through, so
            # checked now; too late to change the status.
            self._commit(held, request, app_iter)
            findings = self.finish(request)
            if findings:
                _too_late(findings)
            return app_iter
        if held.committed:
            # Headers already out (the app used ``write()``): too late to
            # change the status.
            request.body = request.app_iter = app_iter
            return request
        chunks: list[bytes] = []
        size = 0
        iterator = iter(app_iter)
        try:
            for chunk in iterator:
                chunks.append(chunk)
                size += len(chunk)
                if size > HOLD_LIMIT:
                    break
            else:
                iterator = None  # type: ignore[assignment]
        except BaseException:
            self._close_and_finish(request, app_iter)
            raise
        if iterator is not None:
            # Too large to hold: sent as it is, checked at the end anyway.
            self._commit(held, request, app_iter)
            request.body = _chain(chunks, iterator)
            request.app_iter = app_iter
            return request
        findings = self._close_and_finish(request, app_iter)
        if findings:
            raise TeardownLeakError(findings)
        held.commit()
        return chunks

    def _commit(
        self, held: _HeldStart, request: _Request, app_iter: t.Iterable[bytes]
    ) -> None:
        """Forward the held status; when the server (or a middleware further
        out) refuses it, the request ends here, not at a close that will
        never come."""
        try:
            held.commit()
        except BaseException:
            self._close_and_finish(request, app_iter)
            raise

    def _close_and_finish(
        self, request: _Request, app_iter: t.Iterable[bytes]
    ) -> list[TeardownFinding]:
        """Close the app's iterable, then end ``request``, however the close
        went (raise mode: the server never sees the iterable)."""
        try:
            close_iterable(app_iter)
        finally:
            findings = self.finish(request)
        return findings


def _chain(first: list[bytes], rest: t.Iterator[bytes]) -> t.Iterator[bytes]:
    yield from first
    # A plain loop, not ``yield from``: closing this generator (or its
    # garbage collection) must not close the app's iterator behind the
    # request's ``close()``, which closes the app's iterable once.
    for chunk in rest:  # noqa: UP028
        yield chunk


class _HeldStart:
    """``start_response`` for raise mode: forwarded only once the body is
    known to be clean (or when it cannot be held)."""

    __slots__ = ("server", "args", "committed", "write")

    def __init__(self, server: StartResponse) -> None:
        self.server = server
        self.args: tuple[str, list[tuple[str, str]], OptExcInfo | None] | None = None
        self.committed = False
        self.write: t.Callable[[bytes], object] | None = None

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> t.Callable[[bytes], object]:
        if self.committed:
            return self.server(status, headers, exc_info)
        self.args = (status, headers, exc_info)
        return self._write

    def _write(self, data: bytes) -> object:
        # The legacy ``write()``: headers must go out now.
        self.commit()
        assert self.write is not None
        return self.write(data)

    def commit(self) -> None:
        if not self.committed and self.args is not None:
            self.committed = True
            self.write = self.server(*self.args)


# -- reporting -----------------------------------------------------------------------


def request_fields(environ: WSGIEnvironment | None) -> dict[str, t.Any]:
    """The request id, method, path, pid and thread of a finding."""
    if environ is None:
        return {"pid": current_pid(), "thread": thread_name()}
    info = request_info(environ)
    return {
        "request_id": info.request_id,
        "method": info.method,
        "path": info.path,
        "pid": info.pid,
        "thread": info.thread,
    }


def report(
    finding: TeardownFinding, environ: WSGIEnvironment | None, sender: object
) -> None:
    """Log ``finding``, send the signal, send it to Sentry; never raise."""
    try:
        logger.warning(
            "teardown leak",
            kind=finding.kind,
            request_id=finding.request_id,
            method=finding.method,
            path=finding.path,
            pid=finding.pid,
            thread=finding.thread,
            leaked=finding.what,
            where=finding.where,
            message=finding.message,
            fix=finding.fix,
            # Text, as structlog's renderers expect a ``stack``.
            stack="\n".join(finding.stack),
            **{k: v for k, v in finding.details.items() if k not in _LOG_FIELDS},
        )
    except Exception as exc:
        report_internal_error("logging a teardown leak", exc)
    if teardown_leak.receivers:
        send_safely(teardown_leak, sender, environ=environ, finding=finding)
    if sentry.is_active():
        tags = sentry.request_tags(finding.request_id, finding.pid, finding.thread)
        tags["teardown.kind"] = finding.kind
        try:
            sentry.capture_warning(
                finding.message,
                tags=tags,
                context_name="teardown leak",
                context={
                    "what": finding.what,
                    "where": finding.where,
                    "fix": finding.fix,
                    "method": finding.method,
                    "path": finding.path,
                    "stack": list(finding.stack),
                    **finding.details,
                },
            )
        except Exception as exc:
            report_internal_error("sending a teardown leak to Sentry", exc)


_LOG_FIELDS = frozenset(
    {"kind", "request_id", "method", "path", "pid", "thread", "leaked", "where"}
    | {"message", "fix", "stack", "event"}
)


# -- Flask ---------------------------------------------------------------------------


def init_flask(app: t.Any, settings: Settings, diag: object) -> None:
    """Called by ``Diag.init_app``: share the Diag's watch with the app's
    check, watch Flask-SQLAlchemy, check the secret key (now, and at the
    first use of ``flask.session``)."""
    check = _find_check(app.wsgi_app)
    watch = _watch_of(diag)
    if check is None or watch is None:
        return
    check.watch = watch
    _startup_secret_key(app, check)
    _watch_session_use(app, check)
    tasks: list[t.Callable[[], object]] = []
    if not _watch_flask_sqlalchemy(app, watch):
        # ``db.init_app(app)`` may come after ``Diag(app)``.
        tasks.append(lambda: _watch_flask_sqlalchemy(app, watch))
    check.pending = tasks or None


def _watch_flask_sqlalchemy(app: t.Any, watch: Watch) -> bool:
    db = app.extensions.get("sqlalchemy")
    if db is None:
        return False
    from . import teardown_sqlalchemy

    teardown_sqlalchemy.watch_flask_sqlalchemy(watch, app, db)
    watch._activate(teardown_sqlalchemy.check)
    return True


_NO_KEY_FIX = (
    "Set app.secret_key (or SECRET_KEY) when the module is imported, e.g."
    ' app.secret_key = os.environ["SECRET_KEY"]; code under'
    " 'if __name__ == \"__main__\":' does not run under gunicorn or uWSGI."
)


def _secret_key_finding(app: t.Any, site: tuple[str, int] | None) -> TeardownFinding:
    return TeardownFinding(
        kind="no_secret_key",
        what=f"Flask app {app.import_name!r} has no secret key",
        message=secret_key_hint(app),
        fix=_NO_KEY_FIX,
        where=f"{site[0]}:{site[1]}" if site is not None else None,
        pid=current_pid(),
        thread=thread_name(),
        details={"app": app.import_name},
    )


def _startup_secret_key(app: t.Any, check: TeardownCheck) -> None:
    # At start-up only the certain case is reported: the module sets the key
    # under ``__main__`` alone and is not running as ``__main__``. A key set
    # after ``Diag(app)`` is normal and is checked at the first request.
    try:
        if app.secret_key or app.import_name == "__main__":
            return
        site = secret_key_site(app)
        if site is not None:
            report(_secret_key_finding(app, site), None, check)
            check.key_reported = True
    except Exception as exc:
        report_internal_error("checking the secret key", exc)


def _watch_session_use(app: t.Any, check: TeardownCheck) -> None:
    """Report the first request that uses ``flask.session`` without a key
    (Flask raises ``RuntimeError``), once per app: from Flask's
    ``got_request_exception``, or flask_diag's ``error_enveloped`` when the
    error envelope's handler answered the exception."""
    from flask import got_request_exception

    from .signals import error_enveloped

    def seen(exception: object, environ: WSGIEnvironment | None) -> None:
        if check.key_reported or not is_no_secret_key(exception):
            return
        from flask import current_app
        from flask import has_app_context

        if not has_app_context():
            return
        if current_app._get_current_object() is not app:  # type: ignore[attr-defined]
            return
        check.key_reported = True
        finding = dataclasses.replace(
            _secret_key_finding(app, secret_key_site(app)), **request_fields(environ)
        )
        report(finding, environ, check)

    def on_flask(sender: object, exception: BaseException, **extra: t.Any) -> None:
        from flask import request

        seen(exception, request.environ)

    def on_envelope(sender: object, **kwargs: t.Any) -> None:
        seen(kwargs.get("exception"), kwargs.get("environ"))

    # Weak: the receivers live as long as the app's check, which holds them.
    check.receivers = (on_flask, on_envelope)
    got_request_exception.connect(on_flask, app)
    error_enveloped.connect(on_envelope)
