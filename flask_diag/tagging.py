"""Request tagging
===============

Pitfall 7: a test POSTs a car, then GETs the list, and the count is wrong.
Locally it passes; in production the two requests were served by two gunicorn
workers, each with its own in-memory list. Nothing in the response or the logs
said so.

:class:`RequestTagging` makes every request say who served it:

- a request id: a safe incoming ``X-Request-ID`` is reused, anything else
  (CR/LF, spaces, non-ASCII, longer than 128 characters) is replaced by a new
  random id, and the app sees the same value in ``environ``; the trace id of a
  W3C ``traceparent`` is kept too;
- response headers ``X-Request-ID``, ``X-Diag-PID`` (the worker process),
  ``X-Diag-Thread`` and ``Server-Timing: app;dur=<ms>``;
- structlog context variables ``request_id``, ``pid``, ``thread``, ``method``
  and ``path`` (and ``trace_id``) for every line logged during the request;
- the same values as tags on the request's Sentry scope, when the app
  initialised sentry-sdk.

Usable alone around any WSGI callable::

    from flask_diag import RequestTagging

    app.wsgi_app = RequestTagging(app.wsgi_app)          # Flask
    application = RequestTagging(get_wsgi_application())  # Django

The request's context variables are set when the request starts and
restored to their previous values when the server closes the response (also
when the app raises, and only after the last chunk of a streamed body), so
nothing of ours leaks into the next request the thread serves. Keys your own
code binds with ``bind_contextvars`` are yours to clear; structlog recommends
``clear_contextvars()`` at the start of each request, or
``bound_contextvars()``.

.. autoclass:: RequestTagging
"""

from __future__ import annotations

import time
import typing as t
from contextlib import AbstractContextManager
from contextvars import ContextVar
from contextvars import Token

from werkzeug.wsgi import ClosingIterator

from . import sentry
from .closing import close_iterable
from .context import current_pid_str
from .context import ENVIRON_KEY
from .context import init_request_info
from .context import is_file_wrapper
from .context import RequestInfo
from .internal import logger
from .internal import report_internal_error
from .logging import structlog_vars
from .sentry import is_active as sentry_is_active
from .server import forget_headers
from .settings import Settings
from .signals import request_finished
from .signals import request_tagged
from .signals import send_safely
from .speedups import python_defaults

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["RequestTagging"]

_VARS = structlog_vars("request_id", "pid", "thread", "method", "path")
_REQUEST_ID, _PID, _THREAD, _METHOD, _PATH = _VARS
(_TRACE_ID,) = structlog_vars("trace_id")
# The methods themselves, called with the variable: compiled, a call of a C
# global, without looking the method up on the variable's type each time.
_set_var = ContextVar.set
_reset_var = ContextVar.reset
_get_var = ContextVar.get
_perf_counter = time.perf_counter
_TWO_DIGITS = tuple(f"{n:02d}" for n in range(100))


class RequestTagging:
    """Tag each request with an id, the worker pid and thread.

    :param app: the WSGI application to wrap.
    :param settings: a :class:`~flask_diag.settings.Settings`; by default
        loaded from the environment (``FLASK_DIAG_*``).
    :param overrides: settings given in code, e.g. ``worker_headers=False``.

    .. code-block:: python

        app.wsgi_app = RequestTagging(app.wsgi_app, worker_headers=False)
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
        name = settings.request_id_header
        self._header_name = name
        self._header_key = settings.request_id_environ_key
        self._lower_name = name.lower()
        # Response header names seen not to be the id header: most responses
        # repeat a few (Content-Type, Content-Length), and a set lookup costs
        # less than lowercasing each name on every request.
        self._other_names: set[str] = set()
        self._worker_headers = settings.worker_headers
        self._server_timing = settings.server_timing
        self._trust = settings.trust_request_id
        self._access_log = settings.access_log

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        return self._serve(environ, start_response)

    def _serve(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        # Every line here runs on every request: the response object is the
        # request's RequestInfo too, and nothing optional costs more than
        # one test when it is off. (A method of its own, not ``__call__``:
        # compiled, its local variables are typed by ``tagging.pxd``.)
        info = environ.get(ENVIRON_KEY)
        if info is None:
            response = init_request_info(
                _TaggedResponse.__new__(_TaggedResponse),
                environ,
                self._header_key,
                self._trust,
            )
        elif type(info) is _TaggedResponse:
            # Wrapped twice (``Diag(app)`` and ``wrap(app)``): the outer one
            # tags; a second set of headers would duplicate them.
            return self.app(environ, start_response)
        else:  # another middleware saw the request first (a custom stack)
            response = environ[ENVIRON_KEY] = _TaggedResponse.copy_of(info)
        response.owner = self
        response.server_start_response = start_response
        # Setting context variables cannot fail; the Sentry step and each
        # signal receiver are guarded on their own, so one failing step never
        # keeps the others (``request_finished`` always has its
        # ``request_tagged``).
        # (Five fields, not a tuple: one allocation fewer per request.)
        response.request_id_token = _set_var(_REQUEST_ID, response.request_id)
        response.pid_token = _set_var(_PID, response.pid)
        response.thread_token = _set_var(_THREAD, response.thread)
        response.method_token = _set_var(_METHOD, response.method)
        response.path_token = _set_var(_PATH, response.path)
        if response.trace_id is not None:
            response.trace_token = _set_var(_TRACE_ID, response.trace_id)
        elif _get_var(_TRACE_ID) is not Ellipsis:
            # A trace id left by a request whose response was never closed
            # (a server that breaks PEP 3333): not this request's.
            response.trace_token = _set_var(_TRACE_ID, Ellipsis)
        if sentry_is_active():
            try:
                response.sentry_scope = sentry.enter_request_scope(response)
            except Exception as exc:
                report_internal_error("tagging the Sentry scope", exc)
        if request_tagged.receivers:
            send_safely(
                request_tagged,
                self,
                environ=environ,
                request_id=response.request_id,
                trace_id=response.trace_id,
                pid=response.pid,
                thread=response.thread,
            )
        if request_finished.receivers:
            # Only then: the response object is in ``environ``, and holding
            # ``environ`` back would make a reference cycle for the garbage
            # collector on every request.
            response.environ = environ

        try:
            # The response object is the app's ``start_response`` too.
            app_iter = self.app(environ, response)
        except BaseException:
            response.end()
            raise
        if type(app_iter) is not ClosingIterator and is_file_wrapper(environ, app_iter):
            # Let the server send the file itself (sendfile, uWSGI offload):
            # end the request's context now, since wrapping would hide the
            # file from the server.
            response.end()
            return app_iter
        response.app_iter = app_iter
        return response

    def _finished(self, response: _TaggedResponse) -> None:
        """End-of-request reporting; runs in the request's context."""
        info = response
        status = None
        if response.status is not None:
            try:
                status = int(response.status.split(None, 1)[0])
            except ValueError:
                status = None
        duration = time.perf_counter() - info.started
        if self._access_log:
            try:
                logger.info(
                    "request finished",
                    status=status,
                    duration_ms=round(duration * 1e3, 2),
                )
            except Exception as exc:  # a failing sink never keeps the signal
                report_internal_error("logging the finished request", exc)
        if request_finished.receivers:
            send_safely(
                request_finished,
                self,
                environ=response.environ if response.environ is not None else {},
                request_id=info.request_id,
                status=status,
                duration=duration,
            )


class _TaggedResponse(RequestInfo):
    """The app's response iterable; ``close()`` ends the request's context.

    It is also the request's :class:`~flask_diag.context.RequestInfo` in
    ``environ`` (one object per request instead of two). Iteration goes
    straight to the app's own iterator (no per-chunk cost): the request's
    context variables stay set until the server calls ``close()``, so lines
    logged while a body streams keep their request id.
    """

    # The rarely used fields have defaults (below the class), so they cost
    # nothing on the common request; init_request_info fills in the request's
    # own fields. Compiled, the fields are declared in ``tagging.pxd``.
    owner: RequestTagging
    server_start_response: StartResponse
    environ: WSGIEnvironment | None
    status: str | None
    app_iter: t.Iterable[bytes]  # set before the server can iterate
    # Set before the app is called, so before end() can run.
    request_id_token: Token[t.Any]
    pid_token: Token[t.Any]
    thread_token: Token[t.Any]
    method_token: Token[t.Any]
    path_token: Token[t.Any]
    trace_token: Token[t.Any] | None
    sentry_scope: AbstractContextManager[t.Any] | None
    ended: bool

    @classmethod
    def copy_of(cls, info: RequestInfo) -> _TaggedResponse:
        return cls(
            info.request_id,
            info.trace_id,
            info.pid,
            info.thread,
            info.method,
            info.path,
            info.started,
        )

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> t.Callable[[bytes], object]:
        """The app's ``start_response``: adds the headers, then calls the
        server's."""
        owner = self.owner
        lower = owner._lower_name
        other_names = owner._other_names
        for name, _ in headers:
            if name in other_names:
                continue
            if name.lower() == lower:
                # The app set its own id header: ours must be the only one.
                headers = [h for h in headers if h[0].lower() != lower]
                break
            if len(other_names) < 256:  # bounded: names are the app's choice
                other_names.add(name)
        headers = [*headers, (owner._header_name, self.request_id)]
        if owner._worker_headers:
            headers.append(("X-Diag-PID", current_pid_str()))
            headers.append(("X-Diag-Thread", self.thread))
        if owner._server_timing:
            # Milliseconds with two decimals, from whole hundredths: cheaper
            # than formatting a float.
            hundredths = int((_perf_counter() - self.started) * 100000.0 + 0.5)
            if hundredths < 0:  # a start time from another clock
                hundredths = 0
            headers.append(
                (
                    "Server-Timing",
                    f"app;dur={hundredths // 100}.{_TWO_DIGITS[hundredths % 100]}",
                )
            )
        if exc_info is not None:
            # A status replacing one given earlier (the error envelope's
            # answer to a body that failed before its first chunk).
            forget_headers(self.server_start_response)
        write = self.server_start_response(status, headers, exc_info)
        self.status = status  # what the server took (it may re-raise)
        return write

    def __iter__(self) -> t.Iterator[bytes]:
        return iter(self.app_iter)

    def close(self) -> None:
        """Close the app's iterable, then end the request however that went.

        (What :class:`~flask_diag.closing.EndsAtClose` does, written here so
        that the compiled class runs it as a typed method of its own.)
        """
        if self.ended:
            return
        try:
            close_iterable(self.app_iter)
        finally:
            self.end()

    def end(self) -> None:
        """Report the finished request and restore the context; runs once."""
        if self.ended:
            return
        self.ended = True
        owner = self.owner
        if owner._access_log or request_finished.receivers:
            try:
                owner._finished(self)
            except Exception as exc:
                report_internal_error("finishing the request", exc)
        if self.sentry_scope is not None:
            try:
                self.sentry_scope.__exit__(None, None, None)
            except Exception as exc:
                report_internal_error("leaving the Sentry scope", exc)
        try:
            if self.trace_token is not None:
                _reset_var(_TRACE_ID, self.trace_token)
            _reset_var(_REQUEST_ID, self.request_id_token)
            _reset_var(_PID, self.pid_token)
            _reset_var(_THREAD, self.thread_token)
            _reset_var(_METHOD, self.method_token)
            _reset_var(_PATH, self.path_token)
        except ValueError:
            # close() came from another thread or context than the request:
            # the request's own context is gone with it; nothing to restore.
            pass


python_defaults(
    _TaggedResponse,
    environ=None,
    status=None,
    app_iter=None,
    trace_token=None,
    sentry_scope=None,
    ended=False,
)
