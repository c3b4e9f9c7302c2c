"""Problem details (RFC 9457), shared by every flask_diag middleware.

An error answered by flask_diag is one JSON object of media type
``application/problem+json``::

    {
      "type": "about:blank",
      "title": "Not Found",
      "status": 404,
      "detail": "no such car",
      "instance": "/cars/42",
      "code": "not_found",
      "request_id": "5f0c6e1d9a4b2c3e00000000075bcd15"
    }

``type``, ``title``, ``status``, ``detail`` and ``instance`` are RFC 9457's
members; ``code`` (a stable snake_case name, see :data:`CODES`),
``request_id``, and when they apply ``event_id`` (the Sentry event),
``hint`` (the likely cause of a known deployment mistake) and ``debug``
(exception type, message and frames, only when debug output is on) are
extension members.

A flask_diag middleware that must refuse or abort a request raises
:class:`DiagHTTPError`; the error envelope renders it like any other error,
and it is a werkzeug :class:`~werkzeug.exceptions.HTTPException`, so Flask
and plain werkzeug apps answer it correctly even without the envelope::

    from flask_diag.problem import DiagHTTPError

    raise DiagHTTPError(
        508,
        "loopback_deadlock",
        "The view called http://127.0.0.1:8000/static/cat.jpg on this server,"
        " which has no free worker to answer it.",
        hint="Run more than one worker or thread, or read the file directly.",
    )

A middleware that answers by itself calls the exception as a WSGI app::

    return DiagHTTPError(403, "debugger_refused", "...")(environ, start_response)
"""

from __future__ import annotations

import html
import json
import re
import traceback
import typing as t
from urllib.parse import quote

from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import default_exceptions
from werkzeug.exceptions import HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.http import parse_accept_header
from werkzeug.wrappers import Response

from .context import ENVIRON_KEY

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "CAUSE_KEY",
    "PROBLEM_JSON",
    "CODES",
    "DiagHTTPError",
    "code_for",
    "title_for",
    "default_detail",
    "status_line",
    "make_problem",
    "debug_info",
    "instance_of",
    "prefers_html",
    "render_json",
    "render_html",
    "render",
]

#: The media type of a problem body (RFC 9457, section 3).
PROBLEM_JSON = "application/problem+json"

#: The stable machine names of error statuses: the ``code`` member. Spelled
#: out rather than derived from the reason phrases, so that a werkzeug
#: release renaming a phrase cannot change what clients match on. Names
#: follow RFC 9110 (413 is ``content_too_large``, 422
#: ``unprocessable_content``); 500 is ``internal_error``.
CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    402: "payment_required",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    407: "proxy_authentication_required",
    408: "request_timeout",
    409: "conflict",
    410: "gone",
    411: "length_required",
    412: "precondition_failed",
    413: "content_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    416: "range_not_satisfiable",
    417: "expectation_failed",
    418: "im_a_teapot",
    421: "misdirected_request",
    422: "unprocessable_content",
    423: "locked",
    424: "failed_dependency",
    425: "too_early",
    426: "upgrade_required",
    428: "precondition_required",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
    451: "unavailable_for_legal_reasons",
    500: "internal_error",
    501: "not_implemented",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
    505: "http_version_not_supported",
    506: "variant_also_negotiates",
    507: "insufficient_storage",
    508: "loop_detected",
    510: "not_extended",
    511: "network_authentication_required",
}

# RFC 9457 section 3.2: extension member names start with a letter, use
# letters, digits and underscores, and have at least three characters.
_MEMBER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{2,}")
_CORE_MEMBERS = frozenset(
    {
        "type",
        "title",
        "status",
        "detail",
        "instance",
        "code",
        "request_id",
        "event_id",
        "hint",
        "debug",
    }
)
_GENERIC_DETAIL = {
    4: "The request could not be handled.",
    5: "The server could not complete the request.",
}
# Characters kept as they are in ``instance``; everything else of the raw
# path is percent-encoded, so the member is always an ASCII URI reference.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_MAX_FRAMES = 100


def code_for(status: int) -> str:
    """The ``code`` member for ``status``: ``404`` gives ``"not_found"``.

    Statuses without a name give ``"client_error"`` or ``"server_error"``.
    """
    name = CODES.get(status)
    if name is not None:
        return name
    return "server_error" if status >= 500 else "client_error"


def title_for(status: int) -> str:
    """The ``title`` member: the reason phrase of ``status``, as the status
    line says it (RFC 9457 asks for that when ``type`` is ``about:blank``)."""
    phrase = HTTP_STATUS_CODES.get(status)
    if phrase is not None:
        return phrase
    return "Server Error" if status >= 500 else "Client Error"


def default_detail(status: int) -> str:
    """A generic ``detail`` for ``status``, holding no data of the request.

    werkzeug's description of the status where it has one, e.g. for 500
    "The server encountered an internal error and was unable to complete
    your request. ..."
    """
    exc_class = default_exceptions.get(status)
    description = getattr(exc_class, "description", None)
    if isinstance(description, str) and description:
        return description
    return _GENERIC_DETAIL.get(status // 100, _GENERIC_DETAIL[5])


def status_line(status: int) -> str:
    """The WSGI status string, e.g. ``"404 NOT FOUND"`` becomes
    ``"404 Not Found"``."""
    return f"{status} {title_for(status)}"


#: The environ key of an error flask_diag found to be the cause of the
#: request's failure, recorded where it was found (the loopback hook, on a
#: server that cannot serve a call back). When the app then answers some
#: other 5xx, the error envelope answers this error instead (and the guard
#: raises it in place of an exception that wraps it): a client that wrapped
#: it, or a view that caught it, does not hide what really happened.
CAUSE_KEY = "flask_diag.cause"


class DiagHTTPError(HTTPException):
    """An error flask_diag answers with a problem body.

    Raise it from a flask_diag middleware (or from your own code) to fail a
    request with a stable ``code`` and, optionally, a ``hint``:

    .. code-block:: python

        raise DiagHTTPError(409, "stale_worker_state", "The car list differs"
                            " between workers.", hint="Store cars in a database.")

    :param status: the HTTP status, 400 to 599.
    :param code: the ``code`` member; default: the name of ``status`` in
        :data:`CODES`.
    :param detail: the ``detail`` member. Unlike an exception's message, it is
        sent for 5xx statuses too: write it for the client, without secrets.
    :param hint: the ``hint`` member: the likely cause and its fix.
    :param headers: extra response headers, e.g. ``[("Retry-After", "5")]``.
    :param extra: further extension members, e.g. ``{"outbound_url": url}``;
        names of three or more letters, digits and underscores.

    It is a werkzeug :class:`~werkzeug.exceptions.HTTPException`, whose
    ``code`` attribute is the *status* (werkzeug and Flask read it); the
    ``code`` member is :attr:`problem_code`. Called as a WSGI app, or
    returned unhandled by Flask, it answers ``application/problem+json``.
    """

    def __init__(
        self,
        status: int,
        code: str | None = None,
        detail: str | None = None,
        *,
        hint: str | None = None,
        headers: t.Iterable[tuple[str, str]] = (),
        extra: t.Mapping[str, object] | None = None,
    ) -> None:
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(
                f"status must be an error status (400-599), not {status!r}"
            )
        if extra:
            for name in extra:
                if not _MEMBER_NAME.fullmatch(name) or name in _CORE_MEMBERS:
                    raise ValueError(
                        f"{name!r} cannot be an extension member: use three or more"
                        " letters, digits and underscores, starting with a letter,"
                        f" and none of {', '.join(sorted(_CORE_MEMBERS))}."
                    )
        self.status = status
        self.problem_code = code or code_for(status)
        self.detail = detail if detail is not None else default_detail(status)
        self.hint = hint
        self.extra_headers = list(headers)
        self.extra = dict(extra) if extra else {}
        super().__init__(description=self.detail)
        # werkzeug and Flask read the status from ``code``.
        self.code = status

    def copy(self) -> DiagHTTPError:
        """A new exception with the same members, to raise once more."""
        return DiagHTTPError(
            self.status,
            self.problem_code,
            self.detail,
            hint=self.hint,
            headers=self.extra_headers,
            extra=self.extra,
        )

    def get_headers(
        self,
        environ: WSGIEnvironment | None = None,
        scope: dict[str, t.Any] | None = None,
    ) -> list[tuple[str, str]]:
        return [("Content-Type", PROBLEM_JSON), *self.extra_headers]

    def problem(self, environ: WSGIEnvironment | None = None) -> dict[str, t.Any]:
        """This error as a problem dict (``request_id`` and ``instance`` are
        read from ``environ`` when given)."""
        info = environ.get(ENVIRON_KEY) if environ is not None else None
        return make_problem(
            self.status,
            code=self.problem_code,
            detail=self.detail,
            instance=instance_of(environ) if environ is not None else None,
            request_id=getattr(info, "request_id", None),
            hint=self.hint,
            extra=self.extra,
        )

    def get_response(
        self,
        environ: WSGIEnvironment | t.Any | None = None,
        scope: dict[str, t.Any] | None = None,
    ) -> Response:
        # ``environ`` may be a werkzeug Request: HTTPException accepts both.
        if environ is not None and not isinstance(environ, dict):
            environ = getattr(environ, "environ", None)
        body = render_json(self.problem(environ))
        return Response(body, self.status, self.get_headers(environ))


def instance_of(environ: WSGIEnvironment) -> str:
    """The ``instance`` member: the request's path (``SCRIPT_NAME`` and
    ``PATH_INFO``, no query string), percent-encoded into an ASCII URI
    reference whatever bytes the client sent."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        # PEP 3333: the server decoded the raw path as latin-1.
        raw = path.encode("latin-1")
    except UnicodeEncodeError:  # a server that decoded otherwise
        raw = path.encode("utf-8", "surrogateescape")
    return quote(raw, safe=_PATH_SAFE) or "/"


def make_problem(
    status: int,
    *,
    code: str | None = None,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    request_id: str | None = None,
    event_id: str | None = None,
    hint: str | None = None,
    debug: t.Mapping[str, t.Any] | None = None,
    type: str = "about:blank",
    extra: t.Mapping[str, object] | None = None,
) -> dict[str, t.Any]:
    """Build a problem dict, members in a fixed order.

    Absent optional members (``request_id``, ``event_id``, ``hint``,
    ``debug``) are left out rather than sent as ``null``.

    >>> make_problem(404, detail="no such car", instance="/cars/1")["code"]
    'not_found'
    """
    problem: dict[str, t.Any] = {
        "type": type,
        "title": title or title_for(status),
        "status": status,
        "detail": detail if detail is not None else default_detail(status),
    }
    if instance is not None:
        problem["instance"] = instance
    problem["code"] = code or code_for(status)
    if request_id is not None:
        problem["request_id"] = request_id
    if event_id is not None:
        problem["event_id"] = event_id
    if hint is not None:
        problem["hint"] = hint
    if extra:
        for name, value in extra.items():
            if name not in problem:
                problem[name] = value
    if debug is not None:
        problem["debug"] = dict(debug)
    return problem


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def debug_info(exc: BaseException) -> dict[str, t.Any]:
    """The ``debug`` member: the exception's type, message and frames
    (innermost last), and the type and message of its cause.

    Only for debug output: messages and file paths are what production
    responses must never show.
    """
    frames = [
        {
            "file": frame.filename,
            "line": frame.lineno,
            "function": frame.name,
            "code": frame.line or "",
        }
        for frame in traceback.extract_tb(exc.__traceback__)[-_MAX_FRAMES:]
    ]
    info: dict[str, t.Any] = {
        "type": _type_name(exc),
        "message": str(exc),
        "frames": frames,
    }
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None:
        info["cause"] = {"type": _type_name(cause), "message": str(cause)}
    return info


def prefers_html(accept: str | None) -> bool:
    """``True`` when an ``Accept`` header prefers ``text/html`` to JSON, as a
    browser's does; ``*/*``, a missing or a broken header mean JSON."""
    if not accept:
        return False
    try:
        parsed = parse_accept_header(accept, MIMEAccept)
        best = parsed.best_match([PROBLEM_JSON, "application/json", "text/html"])
    except Exception:  # a header werkzeug cannot parse: the API default
        return False
    return best == "text/html"


def render_json(problem: t.Mapping[str, t.Any]) -> bytes:
    """The problem as compact JSON bytes, ASCII only (``\\u`` escapes)."""
    return json.dumps(
        problem, ensure_ascii=True, separators=(",", ":"), default=str
    ).encode("ascii")


def render_html(problem: t.Mapping[str, t.Any]) -> bytes:
    """A small HTML page with the same members, every value escaped."""
    esc = html.escape
    status = problem.get("status", "")
    title = f"{status} {problem.get('title', '')}".strip()
    rows = []
    for name, value in problem.items():
        if name in ("title", "detail", "debug"):
            continue
        rows.append(f"<dt>{esc(str(name))}</dt><dd>{esc(str(value))}</dd>")
    parts = [
        "<!doctype html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{esc(title)}</title></head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>{esc(str(problem.get('detail', '')))}</p>",
        f"<dl>{''.join(rows)}</dl>",
    ]
    debug = problem.get("debug")
    if isinstance(debug, t.Mapping):
        lines = [f"{debug.get('type')}: {debug.get('message')}"]
        for frame in debug.get("frames", ()):
            lines.append(
                f'  File "{frame.get("file")}", line {frame.get("line")},'
                f" in {frame.get('function')}\n    {frame.get('code')}"
            )
        parts.append(f"<pre>{esc(chr(10).join(lines))}</pre>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts).encode("utf-8")


def render(problem: t.Mapping[str, t.Any], *, html: bool = False) -> tuple[bytes, str]:
    """``(body, content_type)`` of the problem as JSON, or as HTML."""
    if html:
        return render_html(problem), "text/html; charset=utf-8"
    return render_json(problem), PROBLEM_JSON
