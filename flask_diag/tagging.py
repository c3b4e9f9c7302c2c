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

The request runs in a copy of the caller's :mod:`contextvars` context, entered
again for each chunk of the body and for ``close()``. Whatever the request
binds (ours or the app's own ``bind_contextvars`` calls) is discarded with that
copy, so nothing leaks into the next request the thread serves, whether the
app returned, raised or streamed.

.. autoclass:: RequestTagging
"""

from __future__ import annotations

import time
import typing as t
from contextvars import Context
from contextvars import copy_context

from . import sentry
from .context import request_info
from .context import RequestInfo
from .internal import logger
from .internal import report_internal_error
from .logging import context_binder
from .settings import Settings
from .signals import request_finished
from .signals import request_tagged
from .signals import send_safely

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["RequestTagging"]

_bind = context_binder("request_id", "pid", "thread", "method", "path")
_bind_traced = context_binder(
    "request_id", "pid", "thread", "method", "path", "trace_id"
)


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
        if settings is None:
            settings = Settings.load(overrides)
        elif overrides:
            settings = settings.replace(**overrides)
        self.app = app
        self.settings = settings
        name = settings.request_id_header
        self._header_name = name
        self._header_key = "HTTP_" + name.upper().replace("-", "_")
        self._lower_name = name.lower()
        self._worker_headers = settings.worker_headers
        self._server_timing = settings.server_timing
        self._trust = settings.trust_request_id
        self._access_log = settings.access_log

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        ctx = copy_context()
        response: t.Iterable[bytes] = ctx.run(self._run, ctx, environ, start_response)
        return response

    def _run(
        self, ctx: Context, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        info = request_info(
            environ, header_key=self._header_key, trust_incoming=self._trust
        )
        response = _TaggedResponse(self, ctx, environ, info, start_response)
        try:
            if info.trace_id is None:
                _bind(info.request_id, info.pid, info.thread, info.method, info.path)
            else:
                _bind_traced(
                    info.request_id,
                    info.pid,
                    info.thread,
                    info.method,
                    info.path,
                    info.trace_id,
                )
            if sentry.is_active():
                sentry.tag_request(info)
            if request_tagged.receivers:
                send_safely(
                    request_tagged,
                    self,
                    environ=environ,
                    request_id=info.request_id,
                    trace_id=info.trace_id,
                    pid=info.pid,
                    thread=info.thread,
                )
        except Exception as exc:
            report_internal_error("tagging the request", exc)

        try:
            app_iter = self.app(environ, response.start_response)
        except BaseException:
            if self._access_log or request_finished.receivers:
                response.finish()
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(app_iter, file_wrapper):
            # Let the server send the file itself (sendfile, uWSGI offload):
            # report now, since wrapping would hide the file from the server.
            if self._access_log or request_finished.receivers:
                response.finish()
            return app_iter  # type: ignore[no-any-return]
        response.app_iter = app_iter
        response.iterator = iter(app_iter)
        return response

    def _finished(self, response: _TaggedResponse) -> None:
        """End-of-request reporting; runs in the request's context."""
        info = response.info
        status = None
        if response.status is not None:
            try:
                status = int(response.status.split(None, 1)[0])
            except ValueError:
                status = None
        duration = time.perf_counter() - info.started
        if self._access_log:
            logger.info(
                "request finished", status=status, duration_ms=round(duration * 1e3, 2)
            )
        if request_finished.receivers:
            send_safely(
                request_finished,
                self,
                environ=response.environ,
                request_id=info.request_id,
                status=status,
                duration=duration,
            )


class _TaggedResponse:
    """The app's response iterable, iterated and closed in the request context."""

    __slots__ = (
        "owner",
        "ctx",
        "environ",
        "info",
        "server_start_response",
        "status",
        "app_iter",
        "iterator",
    )

    def __init__(
        self,
        owner: RequestTagging,
        ctx: Context,
        environ: WSGIEnvironment,
        info: RequestInfo,
        start_response: StartResponse,
    ) -> None:
        self.owner = owner
        self.ctx = ctx
        self.environ = environ
        self.info = info
        self.server_start_response = start_response
        self.status: str | None = None
        self.app_iter: t.Iterable[bytes] = ()
        self.iterator: t.Iterator[bytes] = iter(())

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> t.Callable[[bytes], object]:
        owner = self.owner
        info = self.info
        self.status = status
        lower = owner._lower_name
        for name, _ in headers:
            if name.lower() == lower:
                # The app set its own id header: ours must be the only one.
                headers = [h for h in headers if h[0].lower() != lower]
                break
        headers = [*headers, (owner._header_name, info.request_id)]
        if owner._worker_headers:
            headers.append(("X-Diag-PID", str(info.pid)))
            headers.append(("X-Diag-Thread", info.thread))
        if owner._server_timing:
            elapsed = (time.perf_counter() - info.started) * 1000.0
            headers.append(("Server-Timing", f"app;dur={elapsed:.2f}"))
        return self.server_start_response(status, headers, exc_info)

    def __iter__(self) -> _TaggedResponse:
        return self

    def __next__(self) -> bytes:
        return self.ctx.run(next, self.iterator)

    def close(self) -> None:
        self.ctx.run(self._close)

    def _close(self) -> None:
        try:
            close = getattr(self.app_iter, "close", None)
            if close is not None:
                close()
        finally:
            if self.owner._access_log or request_finished.receivers:
                self.finish()

    def finish(self) -> None:
        try:
            self.owner._finished(self)
        except Exception as exc:
            report_internal_error("finishing the request", exc)
