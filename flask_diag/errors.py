"""Error envelopes
===============

Pitfall 5: one view returns ``jsonify({"error": msg})`` with status 200,
another calls ``abort(500)`` and answers an HTML page, so the client's
``r.json()`` blows up; unknown routes, wrong methods and crashes in other
middleware each answer in yet another shape.

:class:`ErrorEnvelope` makes every error fail the same way: the right
status and one JSON body, ``application/problem+json`` (RFC 9457, see
:mod:`flask_diag.problem`)::

    HTTP/1.1 405 METHOD NOT ALLOWED
    Allow: GET, HEAD, OPTIONS
    Content-Type: application/problem+json
    X-Request-ID: 5f0c6e1d9a4b2c3e00000000075bcd15

    {"type":"about:blank","title":"Method Not Allowed","status":405,
     "detail":"The method is not allowed for the requested URL.",
     "instance":"/cars","code":"method_not_allowed",
     "request_id":"5f0c6e1d9a4b2c3e00000000075bcd15"}

It works around any WSGI callable, as the outermost safety net (the
request tagging middleware, when used, stays outside it so that its headers
are on error responses too)::

    from flask_diag import ErrorEnvelope

    application = ErrorEnvelope(get_wsgi_application())   # Django
    app.wsgi_app = ErrorEnvelope(app.wsgi_app)             # Flask, WSGI only

What it answers with an envelope:

- an exception raised by the app or by a middleware inside it, before the
  response started: 500 ``internal_error``, or the status of a werkzeug
  :class:`~werkzeug.exceptions.HTTPException` (its headers kept: ``Allow``,
  ``WWW-Authenticate``, ``Retry-After``), or what :meth:`~ErrorEnvelope.map_exception`
  says;
- an error response (4xx/5xx) the app did not choose: an empty body, or
  the stock error page of werkzeug/Flask or Django, recognised exactly. Its
  headers are kept, its body replaced.

What it leaves alone: every response below 400 (redirects included), and
error responses the app built on purpose: JSON bodies, custom HTML pages,
anything that is not a stock page. On a 2xx/3xx response it does nothing
but look at the first character of the status.

With the Flask extension (:class:`~flask_diag.Diag`), Flask's own errors
come out as envelopes too, through error handlers for ``HTTPException`` and
``Exception`` that ``init_app`` registers (handlers your app registered for
those classes before are kept; yours registered later replace them).
``abort(404, "no such car")`` keeps its message as ``detail``.

Production-safe: for 5xx the ``detail`` is generic; the exception's type,
message and frames are in a ``debug`` member only when
``FLASK_DIAG_DEBUG_ERRORS=on`` or the Flask app runs in debug mode. Every
5xx is logged once through the ``flask_diag`` structlog logger with the
exception, sent to Sentry once (when the application initialised
sentry-sdk; its ``event_id`` is put in the body when the SDK accepted the
event), and announced by :data:`~flask_diag.signals.error_enveloped`.

``HEAD`` requests get the headers and no body. An exception raised after
the response started (a streamed body) cannot change the status any more:
it is logged and sent to Sentry, then re-raised so that the server closes
the connection; nothing is appended to the body.

Known deployment mistakes get a ``hint`` member; the first is pitfall 1,
the secret key set only under ``if __name__ == "__main__":``.

Mapping exceptions to statuses in one place::

    diag = Diag(app)
    diag.map_exception(LookupError, 404, code="not_found")

    # or around any WSGI app
    application = wrap(get_wsgi_application())
    map_exception(application, ObjectDoesNotExist, 404, code="not_found")

.. autoclass:: ErrorEnvelope
    :members: map_exception

.. autofunction:: map_exception

.. autoclass:: ExceptionMap
    :members: add, lookup

.. autodata:: PROPAGATE_KEY
"""

from __future__ import annotations

import functools
import html
import json
import re
import typing as t

import sentry_sdk
from sentry_sdk.utils import event_from_exception
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import InternalServerError

from . import sentry
from . import sentry_delivery
from .closing import close_iterable
from .closing import inert_response
from .closing import werkzeug_body
from .context import ENVIRON_KEY
from .context import is_file_wrapper
from .context import request_info
from .internal import capture_internal_exceptions
from .internal import find_flask_app
from .internal import find_in_stack
from .internal import logger
from .internal import report_internal_error
from .problem import CAUSE_KEY
from .problem import code_for
from .problem import debug_info
from .problem import default_detail
from .problem import DiagHTTPError
from .problem import instance_of
from .problem import make_problem
from .problem import prefers_html
from .problem import PROBLEM_JSON
from .problem import render
from .problem import status_line
from .secret_key import is_no_secret_key
from .secret_key import secret_key_hint
from .server import forget_headers
from .settings import Settings
from .signals import error_enveloped
from .signals import send_safely
from .speedups import python_defaults

if t.TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask
    from flask.typing import ResponseReturnValue

__all__ = [
    "ErrorEnvelope",
    "ExceptionMap",
    "ExceptionRule",
    "PROPAGATE_KEY",
    "map_exception",
    "init_flask",
    "secret_key_hint",
]

#: Set ``environ[PROPAGATE_KEY] = True`` in a middleware *outside* the
#: envelope that needs the exception itself, such as an interactive
#: debugger: the envelope then re-raises unexpected exceptions instead of
#: answering them (HTTP errors are still enveloped). werkzeug's debugger
#: (``flask run --debug``) around a Flask app in debug mode needs nothing.
PROPAGATE_KEY = "flask_diag.propagate_exceptions"

# Set by werkzeug's DebuggedApplication with ``evalex`` (``flask run
# --debug``) on every request (and by Flask's test client in ``with client:``).
_WERKZEUG_DEBUGGER = "werkzeug.debug.preserve_context"
# The status of the envelope already rendered for this request: an outer
# envelope (``Diag(app)`` plus ``wrap(app)``) passes it without reading it.
_ENVELOPED = "flask_diag.enveloped"
# ``(exception, event_id)`` of the error already logged and sent to Sentry.
_REPORTED = "flask_diag.error_reported"
# The exception Flask sent ``got_request_exception`` for (sentry-sdk's Flask
# integration captures it from that signal).
_FLASK_REPORTED = "flask_diag.flask_reported"

_FALLBACK_DETAIL = InternalServerError.description
# Error responses are read to recognise a stock page only up to this size.
_BODY_LIMIT = 64 * 1024
# Headers that describe the body: replaced together with it.
_BODY_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-encoding",
        "content-md5",
        "content-range",
        "transfer-encoding",
        "etag",
        "last-modified",
    }
)
# Content types of error bodies that may be a stock page; any other one (JSON,
# XML, images...) is the app's choice and never read.
_INSPECTED_TYPES = frozenset({"", "text/html", "text/plain"})

# werkzeug's ``HTTPException.get_body()`` (Flask's default error pages), and
# the form of werkzeug before 2.3.
_WERKZEUG_PAGE = re.compile(
    r"\A<!doctype html[^>\n]*>\n(?:<html lang=en>\n)?<title>\d{3} [^<\n]*</title>\n"
    r"<h1>[^<\n]*</h1>\n<p>(?P<description>.*)</p>\n?\Z",
    re.S | re.I,
)
# Django's ``django.views.defaults.ERROR_PAGE_TEMPLATE`` (no 4xx/500.html
# template) and the bare ``<h1>`` pages of older releases.
_DJANGO_PAGE = re.compile(
    r"\A\s*(?:<!doctype html>\s*<html lang=\"en\">\s*<head>\s*<title>[^<]*</title>"
    r"\s*</head>\s*<body>\s*)?<h1>[^<]*</h1>(?:<p>(?P<description>[^<]*)</p>)?"
    r"\s*(?:</body>\s*</html>)?\s*\Z",
    re.S | re.I,
)


class ExceptionRule(t.NamedTuple):
    """How :class:`ExceptionMap` answers one exception class."""

    status: int
    code: str
    #: A fixed text, or a function of the exception; ``None``: the status's
    #: generic text.
    detail: str | t.Callable[[BaseException], str] | None
    hint: str | None


class ExceptionMap:
    """Exception classes and the error each one is answered with.

    Shared by the Flask error handlers and the WSGI middleware of one app,
    so a mapping applies wherever the exception is caught. Subclasses match
    (the nearest class in the exception's MRO wins).
    """

    def __init__(self) -> None:
        self._rules: dict[type[BaseException], ExceptionRule] = {}

    def add(
        self,
        exc_class: type[BaseException],
        status: int,
        *,
        code: str | None = None,
        detail: str | t.Callable[[BaseException], str] | None = None,
        hint: str | None = None,
    ) -> None:
        """Answer ``exc_class`` (and subclasses) with ``status``.

        :param code: the ``code`` member; default: the name of ``status``.
        :param detail: the ``detail`` member: a text, or a function of the
            exception (e.g. ``str``, when its message is meant for clients).
            By default the generic text of the status: exception messages
            are not sent unless you say so.
        :param hint: the ``hint`` member.
        """
        if not (isinstance(exc_class, type) and issubclass(exc_class, BaseException)):
            raise TypeError(f"{exc_class!r} is not an exception class")
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(
                f"map_exception({exc_class.__name__}, {status!r}): the status must"
                " be an error status, 400 to 599."
            )
        self._rules[exc_class] = ExceptionRule(
            status, code or code_for(status), detail, hint
        )

    def lookup(self, exc: BaseException) -> ExceptionRule | None:
        """The rule for ``exc``, or ``None``."""
        if not self._rules:
            return None
        for cls in type(exc).__mro__:
            rule = self._rules.get(cls)
            if rule is not None:
                return rule
        return None


class _Answer(t.NamedTuple):
    """What an error is answered with, before reporting and rendering."""

    status: int
    code: str
    detail: str
    hint: str | None
    #: Headers of the error kept on the envelope (``Allow``...).
    headers: list[tuple[str, str]]
    #: The exception to log, report and debug-print, if any.
    exception: BaseException | None
    extra: t.Mapping[str, object] | None = None


class _Rendering:
    """What answering an error reads from the settings, and the rendering
    itself: shared by :class:`ErrorEnvelope` and the Flask handler."""

    __slots__ = ("negotiate", "debug", "header_key", "trust", "confirm")

    def __init__(self, settings: Settings) -> None:
        self.negotiate = settings.errors == "negotiate"
        self.debug = settings.debug_errors
        self.confirm = settings.sentry_confirm
        if self.confirm is not None:
            sentry_delivery.watch_every_client()
        self.header_key = settings.request_id_environ_key
        self.trust = settings.trust_request_id

    def request_id(self, environ: WSGIEnvironment) -> str:
        info = request_info(
            environ, header_key=self.header_key, trust_incoming=self.trust
        )
        return info.request_id

    def envelope(
        self, environ: WSGIEnvironment, answer: _Answer, flask_app: object | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Report ``answer`` and render it (see :func:`finish`); a minimal
        500 when that fails."""
        try:
            return finish(
                environ,
                answer,
                self.request_id(environ),
                negotiate=self.negotiate,
                debug=self.debug or bool(getattr(flask_app, "debug", False)),
                confirm=self.confirm,
            )
        except Exception as internal:
            report_internal_error("building an error envelope", internal)
            return fallback(environ)


class ErrorEnvelope:
    """Answer every error of ``app`` with a problem body.

    :param app: the WSGI application to wrap.
    :param settings: a :class:`~flask_diag.settings.Settings`; by default
        loaded from the environment (``FLASK_DIAG_*``). Reads ``errors``
        (``json``, ``negotiate``; ``off`` passes every request through),
        ``debug_errors`` and the request id header settings.
    :param exception_map: an :class:`ExceptionMap` to share with other
        envelopes or the Flask handlers of the same app.
    :param overrides: settings given in code, e.g. ``errors="negotiate"``.

    .. code-block:: python

        application = ErrorEnvelope(application, errors="negotiate")
        application.map_exception(KeyError, 404, code="not_found")
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        settings: Settings | None = None,
        exception_map: ExceptionMap | None = None,
        **overrides: object,
    ) -> None:
        settings = Settings.for_middleware(settings, overrides)
        self.app = app
        self.settings = settings
        #: The :class:`ExceptionMap` consulted for exceptions.
        self.exceptions = exception_map if exception_map is not None else ExceptionMap()
        self._off = settings.errors == "off"
        self._rendering = _Rendering(settings)

    def map_exception(
        self,
        exc_class: type[BaseException],
        status: int,
        *,
        code: str | None = None,
        detail: str | t.Callable[[BaseException], str] | None = None,
        hint: str | None = None,
    ) -> None:
        """Answer ``exc_class`` (and its subclasses) with ``status``.

        See :meth:`ExceptionMap.add`. For example, an ORM's "not found":

        .. code-block:: python

            envelope.map_exception(NoResultFound, 404, code="not_found")
        """
        self.exceptions.add(exc_class, status, code=code, detail=detail, hint=hint)

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        return self._serve(environ, start_response)

    def _serve(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        # A method of its own, not ``__call__``: compiled, its local
        # variables are typed by ``errors.pxd``.
        if self._off:
            return self.app(environ, start_response)
        # Filled in here rather than by an ``__init__``: one Python call
        # fewer on every request. (``__new__`` of the class: compiled, it is
        # an extension type, which ``object.__new__`` refuses to make.)
        response = _GuardedResponse.__new__(_GuardedResponse)
        response.owner = self
        response.environ = environ
        response.server_start_response = start_response
        try:
            app_iter = self.app(environ, response)
        except Exception as exc:
            return response.answer_exception(exc)
        if (
            response.status is not None
            and response.held is None
            and inert_response(app_iter)
        ):
            # Started, below 400 or with an error response the app chose, and
            # a werkzeug body already in memory (Flask's common case): the
            # server's iteration and close cannot raise, nothing to guard.
            return app_iter
        if is_file_wrapper(environ, app_iter):
            # Let the server send the file itself (sendfile): no inspection.
            try:
                response.release()
            except BaseException:
                close_iterable(app_iter)  # the server will never see it
                raise
            return app_iter
        response.app_iter = app_iter
        return response

    # -- error path (never on a 2xx/3xx request) --------------------------------

    @functools.cached_property
    def _flask_app(self) -> object | None:
        """The Flask app inside (for its debug flag and hints), if any."""
        return find_flask_app(self.app)

    def _envelope(
        self,
        environ: WSGIEnvironment,
        answer: _Answer,
        *,
        kept_headers: t.Iterable[tuple[str, str]] = (),
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """Report ``answer`` and render it: ``(status, headers, body)``."""
        status, headers, body = self._rendering.envelope(
            environ, answer, self._flask_app
        )
        headers = [*kept_headers, *headers, ("Content-Length", str(len(body)))]
        return status_line(status), headers, body

    def _report_after_start(
        self, environ: WSGIEnvironment, exc: BaseException, status: str | None
    ) -> None:
        """Log and send an exception the response can no longer show."""
        with capture_internal_exceptions("reporting a failed response"):
            _report_once(
                environ,
                exc,
                self._rendering.request_id(environ),
                "response failed after it started",
                status=_status_code(status),
            )


class _GuardedResponse:
    """Per request: the app's ``start_response`` and the response iterable.

    On a status below 400 ``__call__`` forwards at once. A werkzeug body
    already in memory then goes to the server unwrapped
    (:func:`~flask_diag.closing.inert_response`); any other body is iterated
    chunk by chunk by a generator that catches what the iteration raises.
    Error statuses the app might not have chosen are held back until the
    body shows whether it is a stock page.
    """

    # The rarely used fields have defaults (below the class), so they cost
    # nothing on the common request. Compiled, the fields are declared in
    # ``errors.pxd``.
    app_iter: t.Iterable[bytes]  # set before the server can iterate
    #: The status forwarded to the server, once it has been.
    status: str | None
    held: tuple[str, list[tuple[str, str]], OptExcInfo | None] | None
    written: list[bytes] | None
    #: The server's ``write()`` for a status forwarded after being held.
    server_write: t.Callable[[bytes], object] | None
    sent: bool

    # Set by ``ErrorEnvelope.__call__``.
    owner: ErrorEnvelope
    environ: WSGIEnvironment
    server_start_response: StartResponse

    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> t.Callable[[bytes], object]:
        # ``status < "4"`` is true exactly when its first digit is 1, 2 or 3.
        if status < "4" and exc_info is None:
            self.status = status
            return self.server_start_response(status, headers, None)
        if exc_info is not None:
            # The app replaces its status: what was held of the old one
            # (status, ``write()`` data) is void.
            self.held = None
            self.written = None
            if status < "4":
                return self.restart(status, headers, exc_info)
        return self._start_error(status, headers, exc_info)

    def restart(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None,
    ) -> t.Callable[[bytes], object]:
        """Forward a status that replaces one the server may have been
        given already (``exc_info``: the server re-raises if the headers are
        out)."""
        if exc_info is not None and self.status is not None:
            forget_headers(self.server_start_response)
        write = self.server_start_response(status, headers, exc_info)
        self.status = status  # what the server took (it may re-raise)
        return write

    def _start_error(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None,
    ) -> t.Callable[[bytes], object]:
        if exc_info is None and status[:1] == "5":
            cause = self.environ.get(CAUSE_KEY)
            if isinstance(cause, DiagHTTPError) and not status.startswith(
                str(cause.status)
            ):
                # The request failed for a reason flask_diag found (a
                # loopback deadlock) and the app answered some other 5xx: a
                # client wrapped the error, or the wait was broken and the
                # client reported a dropped connection. Raised from here, it
                # leaves the app and is answered by ``answer_exception``.
                raise cause.copy()
        if _is_chosen(self.environ, status, headers):
            return self.restart(status, headers, exc_info)
        self.held = (status, headers, exc_info)
        return self._write

    def _write(self, data: bytes) -> object:
        # The legacy ``write()`` of an error response being held: kept with
        # the body, in order; once the status is out, the server's own.
        if self.held is None and self.server_write is not None:
            return self.server_write(data)
        if self.written is None:
            self.written = []
        self.written.append(data)
        return None

    def release(self) -> None:
        """Forward a held status unchanged (the body will not be read)."""
        held = self.held
        if held is not None:
            self.held = None
            self.server_write = write = self.restart(*held)
            for data in self.written or ():
                write(data)
            self.written = None

    def __iter__(self) -> t.Iterator[bytes]:
        # A plain loop rather than ``yield from``: closing this generator
        # must not close the app's iterator behind ``close()``'s back.
        sent = False
        try:
            iterator = iter(self.app_iter)
            for chunk in iterator:
                if self.held is not None:
                    yield from self._inspect(chunk, iterator)
                    return
                if chunk:
                    sent = True  # the server sends the headers with it
                yield chunk
            if self.held is not None:
                yield from self._inspect(b"", None)
        except Exception as exc:
            if sent or self.sent:
                self.owner._report_after_start(self.environ, exc, self.status)
                raise
            yield from self.answer_exception(exc)

    def _inspect(
        self, first: bytes, iterator: t.Iterator[bytes] | None
    ) -> t.Iterator[bytes]:
        """Read a held error body (bounded); envelope it if it is a stock page."""
        held = self.held
        assert held is not None
        self.held = None
        status, headers, exc_info = held
        chunks = list(self.written or ())
        if first:
            chunks.append(first)
        # ``write()`` calls made while the rest is read land here, in order.
        self.written = chunks
        size = sum(len(c) for c in chunks)
        # ``iter(iterator.__next__, None)`` rather than ``iterator`` itself:
        # a ``for`` loop calls ``iter()`` again, and an iterator whose
        # ``__iter__`` restarts (not every middleware's is idempotent) would
        # send the first chunks twice.
        rest = iter(iterator.__next__, None) if iterator is not None else None
        if rest is not None and size <= _BODY_LIMIT:
            for chunk in rest:
                chunks.append(chunk)
                size += len(chunk)
                if size > _BODY_LIMIT:
                    break
            else:
                rest = None
        self.written = None
        if rest is None:
            answer = self._answer_for_body(status, headers, b"".join(chunks))
            if answer is not None:
                line, new_headers, body = self.owner._envelope(
                    self.environ,
                    answer,
                    kept_headers=[
                        h for h in headers if h[0].lower() not in _BODY_HEADERS
                    ],
                )
                self.server_write = self.restart(line, new_headers, exc_info)
                if self.environ.get("REQUEST_METHOD") != "HEAD":
                    self.sent = True
                    yield body
                return
        # The app's own error response: unchanged.
        self.server_write = self.restart(status, headers, exc_info)
        for chunk in chunks:
            if chunk:
                self.sent = True
            yield chunk
        if rest is not None:
            for chunk in rest:
                self.sent = True
                yield chunk

    def _answer_for_body(
        self, status: str, headers: list[tuple[str, str]], body: bytes
    ) -> _Answer | None:
        """:func:`_answer_for_page`; for ``HEAD``, of the body a ``GET``
        would have had: a ``HEAD`` response has none, which must not make
        the app's own error page look like an empty one."""
        if not body and self.environ.get("REQUEST_METHOD") == "HEAD":
            seen = werkzeug_body(self.app_iter)
            if seen is not None:
                body = seen
            elif _declared_length(headers):
                return None  # a body the app did not send: its own, unseen
        return _answer_for_page(status, headers, body)

    def answer_exception(self, exc: Exception) -> list[bytes]:
        """Answer an exception raised before any of the body was sent."""
        environ = self.environ
        owner = self.owner
        if _propagates(environ, owner._flask_app):
            raise exc
        # With exc_info the server replaces a status it was given earlier,
        # or re-raises when the headers are already out (the app used
        # ``write()``).
        exc_info = (
            t.cast("OptExcInfo", (type(exc), exc, exc.__traceback__))
            if self.status is not None
            else None
        )
        self.held = None
        if exc_info is not None and not self._status_replaceable(exc_info):
            # The app sent its headers already (``write()``): too late for
            # another status. Reported as the failure it is, not as the 500
            # the client would never get.
            owner._report_after_start(environ, exc, self.status)
            raise exc
        if isinstance(exc, HTTPException) and _answers_itself(exc):
            # A werkzeug redirect or ``abort(response)`` raised by a plain
            # werkzeug app: its own response, as the app meant.
            def start(
                status: str, headers: list[tuple[str, str]], _: t.Any = None
            ) -> t.Callable[[bytes], object]:
                return self.restart(status, headers, exc_info)

            answered = exc.get_response(environ)(environ, start)
            try:
                return list(answered)
            finally:
                close_iterable(answered)
        answer = answer_for_exception(environ, exc, owner.exceptions, owner._flask_app)
        line, headers, body = owner._envelope(environ, answer)
        try:
            self.restart(line, headers, exc_info)
        except Exception:
            raise exc from None
        if environ.get("REQUEST_METHOD") == "HEAD":
            return []
        return [body]

    def _status_replaceable(self, exc_info: OptExcInfo) -> bool:
        """Whether the server still takes another status: asked with a
        provisional one, which the answer's own replaces. A server re-raises
        the exception of ``exc_info`` once the headers are out (PEP 3333)."""
        try:
            self.restart("500 Internal Server Error", [], exc_info)
        except Exception:
            return False
        return True

    def close(self) -> None:
        try:
            close_iterable(self.app_iter)
        except Exception as exc:
            self.owner._report_after_start(self.environ, exc, self.status)
            raise


python_defaults(
    _GuardedResponse,
    app_iter=None,
    status=None,
    held=None,
    written=None,
    server_write=None,
    sent=False,
)


def _propagates(environ: WSGIEnvironment, flask_app: object | None) -> bool:
    """Whether an unexpected exception goes to a debugger outside instead:
    one that asked (:data:`PROPAGATE_KEY`), or werkzeug's own around a Flask
    app in debug mode (``flask run --debug``), as Flask itself propagates
    exceptions in debug mode."""
    if environ.get(PROPAGATE_KEY):
        return True
    return _WERKZEUG_DEBUGGER in environ and bool(getattr(flask_app, "debug", False))


def _answers_itself(exc: HTTPException) -> bool:
    """A redirect (werkzeug's routing ones too) or an exception carrying a
    response: never an envelope."""
    return exc.response is not None or exc.code is None or exc.code < 400


def _is_chosen(
    environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]
) -> bool:
    """Whether an error response is surely the app's choice, from its
    status and headers alone: an envelope already, a content type that is
    not HTML or text, or a body too large to be a stock page."""
    code = _status_code(status)
    if code is None:
        return True
    if environ.get(_ENVELOPED) == code:
        return True
    for name, value in headers:
        lower = name.lower()
        if lower == "content-type":
            if value.split(";", 1)[0].strip().lower() not in _INSPECTED_TYPES:
                return True
        elif lower == "content-length":
            try:
                if int(value) > _BODY_LIMIT:
                    return True
            except ValueError:
                return True
    return False


def _declared_length(headers: list[tuple[str, str]]) -> bool:
    """Whether ``headers`` announce a body (a ``Content-Length`` above 0)."""
    for name, value in headers:
        if name.lower() == "content-length":
            return value.strip() not in ("", "0")
    return False


def _status_code(status: str | None) -> int | None:
    if not status:
        return None
    try:
        return int(status[:3])
    except ValueError:
        return None


def _answer_for_page(
    status: str, headers: list[tuple[str, str]], body: bytes
) -> _Answer | None:
    """An answer when ``body`` is empty or a stock error page, else ``None``."""
    code = _status_code(status)
    if code is None or code < 400:
        return None
    text = body.decode("utf-8", "replace")
    description: str | None
    if not text.strip():
        description = None
    else:
        match = _WERKZEUG_PAGE.match(text) or _DJANGO_PAGE.match(text)
        if match is None:
            return None
        raw = match.group("description") or ""
        description = html.unescape(re.sub(r"<br\s*/?>", "\n", raw)).strip() or None
    if code >= 500 or description is None:
        description = default_detail(code)
    return _Answer(code, code_for(code), description, None, [], None)


# -- shared with the Flask handlers -------------------------------------------------


def _original(exc: BaseException) -> BaseException:
    """The exception behind Flask's ``InternalServerError`` wrapper."""
    if isinstance(exc, InternalServerError):
        original = exc.original_exception
        if original is not None:
            return original
    return exc


def answer_for_exception(
    environ: WSGIEnvironment,
    exc: BaseException,
    exceptions: ExceptionMap,
    flask_app: object | None,
) -> _Answer:
    """How ``exc`` is answered: mapped, an HTTP error, or a 500 (also when
    describing it failed: a bug of ours, or a mapping's ``detail`` raising)."""
    try:
        return _describe(environ, exc, exceptions, flask_app)
    except Exception as internal:
        report_internal_error("describing an exception", internal)
        return _Answer(500, "internal_error", default_detail(500), None, [], exc)


def _describe(
    environ: WSGIEnvironment,
    exc: BaseException,
    exceptions: ExceptionMap,
    flask_app: object | None,
) -> _Answer:
    subject = _original(exc)
    rule = exceptions.lookup(subject)
    if rule is not None:
        detail = rule.detail(subject) if callable(rule.detail) else rule.detail
        return _Answer(
            rule.status,
            rule.code,
            detail if detail is not None else default_detail(rule.status),
            rule.hint or hint_for(subject, flask_app),
            [],
            subject,
        )
    if isinstance(subject, HTTPException) and not _answers_itself(subject):
        status = t.cast(int, subject.code)
        kept = [
            (name, value)
            for name, value in subject.get_headers(environ)
            if name.lower() not in _BODY_HEADERS
        ]
        if isinstance(subject, DiagHTTPError):
            return _Answer(
                status,
                subject.problem_code,
                subject.detail,
                subject.hint,
                kept,
                subject,
                subject.extra,
            )
        # 4xx: the message the code chose (``abort(404, "no such car")``);
        # 5xx: generic, whatever the message says.
        description = subject.description
        if status >= 500 or not description:
            description = default_detail(status)
        return _Answer(status, code_for(status), description, None, kept, subject)
    return _Answer(
        500,
        "internal_error",
        default_detail(500),
        hint_for(subject, flask_app),
        [],
        subject,
    )


def _already_reported(
    environ: WSGIEnvironment, exc: BaseException | None
) -> tuple[BaseException, str | None] | None:
    reported = environ.get(_REPORTED)
    if reported is not None and exc is not None and reported[0] is exc:
        return t.cast("tuple[BaseException, str | None]", reported)
    return None


def _report_once(
    environ: WSGIEnvironment,
    exc: BaseException | None,
    request_id: str,
    event: str,
    *,
    confirm: float | None = None,
    **fields: t.Any,
) -> str | None:
    """Log ``event`` (with ``fields``) and send ``exc`` to Sentry, once per
    exception and request however many envelopes see it; the event id."""
    reported = _already_reported(environ, exc)
    if reported is not None:
        return reported[1]
    # Sentry first: its logging integration then drops our log line's copy
    # of the same exception as a duplicate.
    captured = Captured(None)
    if exc is not None:
        flask_reported = environ.get(_FLASK_REPORTED) is exc
        captured = capture(
            exc, request_id, flask_reported=flask_reported, confirm=confirm
        )
        environ[_REPORTED] = (exc, captured.event_id)
    fields["request_id"] = request_id
    fields["event_id"] = captured.event_id
    if captured.unconfirmed is not None:
        # Sent, not (yet) accepted: not in the body, but in the log to find
        # it in Sentry should it arrive after all.
        fields["unconfirmed_event_id"] = captured.unconfirmed
    if exc is not None:
        fields["exc_info"] = (type(exc), exc, exc.__traceback__)
    logger.error(event, **fields)
    return captured.event_id


def finish(
    environ: WSGIEnvironment,
    answer: _Answer,
    request_id: str,
    *,
    negotiate: bool,
    debug: bool,
    confirm: float | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """Report an answer (log, Sentry, signal) and render it.

    Returns ``(status, headers, body)``; the headers are the answer's kept
    ones plus ``Content-Type`` (and ``Vary``), without ``Content-Length``.
    """
    status = answer.status
    exc = answer.exception
    event_id = None
    if status >= 500:
        event_id = _report_once(
            environ,
            exc,
            request_id,
            "request failed",
            confirm=confirm,
            status=status,
            code=answer.code,
        )
    problem = make_problem(
        status,
        code=answer.code,
        detail=answer.detail,
        instance=instance_of(environ),
        request_id=request_id,
        event_id=event_id,
        hint=answer.hint,
        debug=debug_info(exc) if debug and exc is not None and status >= 500 else None,
        extra=answer.extra,
    )
    if error_enveloped.receivers:
        send_safely(
            error_enveloped,
            None,
            environ=environ,
            problem=problem,
            exception=exc,
            event_id=event_id,
        )
    as_html = negotiate and prefers_html(environ.get("HTTP_ACCEPT"))
    body, content_type = render(problem, html=as_html)
    headers = [*answer.headers, ("Content-Type", content_type)]
    if negotiate:
        headers.append(("Vary", "Accept"))
    environ[_ENVELOPED] = status
    return status, headers, body


def fallback(environ: WSGIEnvironment) -> tuple[int, list[tuple[str, str]], bytes]:
    """A 500 envelope that cannot fail, for when building one did."""
    # Built by hand: whatever failed in the helpers must not fail here.
    problem: dict[str, object] = {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": _FALLBACK_DETAIL,
    }
    try:
        problem["instance"] = instance_of(environ)
    except Exception:
        pass
    problem["code"] = "internal_error"
    request_id = getattr(environ.get(ENVIRON_KEY), "request_id", None)
    if isinstance(request_id, str):
        problem["request_id"] = request_id
    environ[_ENVELOPED] = 500
    body = json.dumps(problem, ensure_ascii=True, separators=(",", ":")).encode()
    return 500, [("Content-Type", PROBLEM_JSON)], body


def capture(
    exc: BaseException,
    request_id: str,
    *,
    flask_reported: bool = False,
    confirm: float | None = None,
) -> Captured:
    """Send ``exc`` to Sentry once; its event id if Sentry has it.

    The id is ``None`` when Sentry is not initialised or the event was dropped
    (``before_send``, sampling), and when the transport is going to drop it:
    its queue is full, or the Sentry server told it to back off (HTTP 429,
    ``X-Sentry-Rate-Limits``). With ``confirm`` (seconds), also when Sentry
    did not answer 2xx for the event within that time, or failed recently
    (see :mod:`flask_diag.sentry_delivery`); without it an id means the SDK
    queued the event (an id sent but not confirmed is :attr:`Captured.unconfirmed`,
    for the log). When Flask already sent ``got_request_exception`` for
    ``exc`` and sentry-sdk's Flask integration is on, the integration has
    captured it: not sent twice, and the id is the one it reported.
    """
    if not sentry.is_active():
        return Captured(None)
    try:
        client = sentry_sdk.get_client()
        transport = getattr(client, "transport", None)
        if confirm is not None:
            sentry_delivery.watch(transport)
        event_id: str | None
        if flask_reported and client.get_integration("flask") is not None:
            event_id = sentry_sdk.last_event_id()
            healthy = _transport_healthy(transport)
        else:
            event, hint = event_from_exception(
                exc,
                client_options=client.options,
                mechanism={"type": "flask_diag", "handled": False},
            )
            tags = event.setdefault("tags", {})
            tags.setdefault("request_id", request_id)
            # Asked before capturing: a dropped event must not be quoted to
            # the user as if it could be found in Sentry.
            healthy = _transport_healthy(transport)
            event_id = sentry_sdk.capture_event(event, hint=hint)
        if event_id is None or not healthy:
            return Captured(None)
        if confirm is not None:
            accepted = sentry_delivery.delivered(transport, event_id, confirm)
            if accepted is False:
                # Maybe still on its way: for the log line only.
                return Captured(None, unconfirmed=event_id)
        return Captured(event_id)
    except Exception as internal:
        report_internal_error("sending an error to Sentry", internal)
        return Captured(None)


class Captured(t.NamedTuple):
    """What :func:`capture` did with an exception."""

    #: The id to quote: an event Sentry has (or the SDK queued, unconfirmed).
    event_id: str | None
    #: An event sent whose acceptance was not confirmed in time.
    unconfirmed: str | None = None


def _transport_healthy(transport: object) -> bool:
    """Whether the client's transport will take an event now."""
    is_healthy = getattr(transport, "is_healthy", None)
    if is_healthy is None:
        return True
    return bool(is_healthy())


# -- hints: known deployment mistakes -------------------------------------------------


def hint_for(exc: BaseException, flask_app: object | None) -> str | None:
    """The ``hint`` member for ``exc``, when it is a known mistake."""
    if is_no_secret_key(exc):
        return secret_key_hint(flask_app)
    return None


# -- Flask ---------------------------------------------------------------------------


class _FlaskErrorHandler:
    """The handler ``init_flask`` registers for ``HTTPException`` and
    ``Exception``: Flask's errors as envelopes."""

    def __init__(self, settings: Settings, exceptions: ExceptionMap) -> None:
        self.exceptions = exceptions
        self.rendering = _Rendering(settings)

    def __call__(self, e: Exception) -> ResponseReturnValue:
        from flask import current_app
        from flask import request

        if isinstance(e, HTTPException) and _answers_itself(e):
            # A redirect, or ``abort(response)``: answered as the app meant.
            return e
        environ = request.environ
        subject = _original(e)
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        if _propagates(environ, app) and not isinstance(subject, HTTPException):
            raise subject
        answer = answer_for_exception(environ, e, self.exceptions, app)
        status, headers, body = self.rendering.envelope(environ, answer, app)
        response = app.response_class(body, status=status, headers=headers)
        return t.cast("ResponseReturnValue", response)


def _flask_sent_exception(
    sender: object, exception: BaseException, **extra: t.Any
) -> None:
    """``got_request_exception`` receiver: remember which exception Flask
    announced (and sentry-sdk's Flask integration captured)."""
    try:
        from flask import request

        request.environ[_FLASK_REPORTED] = exception
    except Exception:  # no request context: nothing to remember
        pass


def init_flask(app: Flask, settings: Settings, exceptions: ExceptionMap) -> None:
    """Make ``app``'s own errors envelopes; called by ``Diag.init_app``.

    Registers one handler for ``HTTPException`` and ``Exception`` unless the
    app already has its own for that class, and shares ``exceptions`` with
    the envelopes in ``app.wsgi_app``.
    """
    from flask import got_request_exception

    handler = _FlaskErrorHandler(settings, exceptions)
    registered = app.error_handler_spec[None][None]
    for exc_class in (HTTPException, Exception):
        if exc_class not in registered:
            app.register_error_handler(exc_class, handler)
    got_request_exception.connect(_flask_sent_exception, app, weak=False)
    for envelope in find_in_stack(app.wsgi_app, ErrorEnvelope):
        envelope.exceptions = exceptions


def map_exception(
    app: object,
    exc_class: type[BaseException],
    status: int,
    *,
    code: str | None = None,
    detail: str | t.Callable[[BaseException], str] | None = None,
    hint: str | None = None,
) -> bool:
    """:meth:`ErrorEnvelope.map_exception` on the envelope(s) inside a
    stack built by :func:`~flask_diag.wrap`:

    .. code-block:: python

        application = wrap(get_wsgi_application())
        map_exception(application, ObjectDoesNotExist, 404, code="not_found")

    Returns ``False`` when ``app`` holds no envelope (``FLASK_DIAG=off`` or
    ``FLASK_DIAG_ERRORS=off``): there is nothing to map then, and start-up
    goes on.
    """
    envelopes = find_in_stack(app, ErrorEnvelope)
    for envelope in envelopes:
        envelope.map_exception(exc_class, status, code=code, detail=detail, hint=hint)
    return bool(envelopes)
