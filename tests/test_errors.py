"""In-process tests of the error envelope (issue 3, pitfall 5).

Each error case against a Flask app (through the extension), a plain WSGI
app (through :func:`flask_diag.wrap`) and a Django ``application``, checking
the status, ``Content-Type``, the problem members and that ``request_id``
is the ``X-Request-ID`` header. The same on gunicorn is in
``test_errors_servers.py``.

:func:`run_wsgi` is a small server that follows PEP 3333 to the letter
(werkzeug's test client re-raises any ``start_response(..., exc_info)``),
for the cases where it matters when the headers went out.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import sys
import textwrap
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from flask import abort
from flask import Flask
from flask import jsonify
from flask import redirect
from flask import request
from flask import Response
from flask import session
from flask import stream_with_context
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from servers import allowed
from servers import free_port
from servers import line_of
from werkzeug.datastructures import Headers
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import InternalServerError
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound
from werkzeug.exceptions import TooManyRequests
from werkzeug.exceptions import Unauthorized
from werkzeug.test import Client
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request as WRequest
from werkzeug.wrappers import Response as WResponse

import flask_diag.errors
import flask_diag.logging
from flask_diag import Diag
from flask_diag import DiagHTTPError
from flask_diag import ErrorEnvelope
from flask_diag import signals
from flask_diag import wrap
from flask_diag.errors import map_exception
from flask_diag.errors import PROPAGATE_KEY
from flask_diag.problem import CAUSE_KEY
from flask_diag.problem import CODES
from flask_diag.problem import prefers_html
from flask_diag.secret_key import main_only_secret_key
from flask_diag.testing import capture_logs
from flask_diag.testing import capture_signals

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
PITFALL1 = ROOT / "examples" / "pitfall1_secret_key"
PROBLEM_JSON = "application/problem+json"
MEMBERS = ("type", "title", "status", "detail", "instance", "code", "request_id")
GENERIC_500 = (
    "The server encountered an internal error and was unable to complete your"
    " request. Either the server is overloaded or there is an error in the"
    " application."
)
SECRET = "hunter2"
SECRET_PATH = "/home/deploy/app/secrets.py"


# -- helpers ----------------------------------------------------------------------


def assert_envelope(
    response: t.Any,
    status: int,
    code: str,
    *,
    detail: str | None = None,
    instance: str | None = None,
) -> dict[str, t.Any]:
    """The response is an envelope for ``status``; returns the problem."""
    assert response.status_code == status, response.data
    assert response.headers["Content-Type"] == PROBLEM_JSON
    problem = json.loads(response.data)
    assert set(MEMBERS) <= set(problem), problem
    assert problem["type"] == "about:blank"
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["title"] and isinstance(problem["title"], str)
    assert problem["request_id"] == response.headers["X-Request-ID"]
    if detail is not None:
        assert problem["detail"] == detail
    if instance is not None:
        assert problem["instance"] == instance
    assert int(response.headers["Content-Length"]) == len(response.data)
    return t.cast(dict[str, t.Any], problem)


@dataclasses.dataclass
class Result:
    """What :func:`run_wsgi` saw."""

    status: str | None
    headers: Headers
    body: bytes
    error: BaseException | None
    closed: bool

    @property
    def status_code(self) -> int:
        assert self.status is not None
        return int(self.status[:3])

    @property
    def data(self) -> bytes:
        return self.body


def run_wsgi(app: WSGIApplication, environ: WSGIEnvironment) -> Result:
    """Serve one request as PEP 3333 says a server must.

    The headers count as sent with the first non-empty chunk (or ``write``);
    ``start_response`` with ``exc_info`` replaces the status before that and
    re-raises after. An exception from the app ends the response (the
    server would close the connection); ``close()`` is always called.
    """
    state: dict[str, t.Any] = {"status": None, "headers": [], "sent": False}
    body: list[bytes] = []

    def write(data: bytes) -> None:
        assert state["status"] is not None, "write() before start_response()"
        state["sent"] = True
        body.append(data)

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> t.Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if state["sent"]:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif state["status"] is not None:
            raise AssertionError("start_response() called twice without exc_info")
        assert isinstance(status, str) and re.fullmatch(r"\d{3} .+", status), status
        for name, value in headers:
            assert isinstance(name, str) and isinstance(value, str)
            assert "\n" not in value and "\r" not in value
        state["status"] = status
        state["headers"] = list(headers)
        return write

    error: BaseException | None = None
    result: t.Any = None
    closed = False
    try:
        result = app(environ, start_response)
        for chunk in result:
            assert isinstance(chunk, bytes)
            if chunk:
                assert state["status"] is not None
                state["sent"] = True
            body.append(chunk)
    except Exception as exc:
        error = exc
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:
                error = error or exc
            closed = True
    return Result(
        state["status"], Headers(state["headers"]), b"".join(body), error, closed
    )


def environ_for(
    path: str = "/", method: str = "GET", **kwargs: t.Any
) -> dict[str, t.Any]:
    environ: dict[str, t.Any] = EnvironBuilder(
        path, method=method, **kwargs
    ).get_environ()
    return environ


def logged(logs: list[t.Any], event: str) -> list[t.Any]:
    return [line for line in logs if line["event"] == event]


# -- a Flask app that fails in every way ------------------------------------------


class CarNotFound(LookupError):
    pass


def make_flask_app(**diag_options: t.Any) -> tuple[Flask, Diag]:
    app = Flask("errors_app")
    app.config["TESTING"] = True
    app.config["MAX_CONTENT_LENGTH"] = 1024

    @app.get("/")
    def index() -> str:
        return "hello"

    @app.get("/cars/<int:car_id>")
    def car(car_id: int) -> t.Any:
        if car_id == 1:
            return {"car": "Beetle"}
        abort(404, "no such car")

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError(f"connect failed: password={SECRET} in {SECRET_PATH}")

    @app.get("/abort500")
    def abort500() -> str:
        abort(500, f"password={SECRET}")

    @app.get("/auth")
    def auth() -> str:
        abort(401, www_authenticate=WWWAuthenticate("basic", {"realm": "cars"}))

    @app.get("/busy")
    def busy() -> str:
        abort(429, retry_after=30)

    @app.get("/maintenance")
    def maintenance() -> str:
        abort(503, retry_after=120)

    @app.post("/upload")
    def upload() -> str:
        return str(len(request.get_data()))

    @app.get("/none")
    def none() -> t.Any:
        return None

    @app.get("/lookup")
    def lookup() -> str:
        raise CarNotFound(f"car 7 not in {SECRET_PATH}")

    @app.get("/diag-error")
    def diag_error() -> str:
        raise DiagHTTPError(
            508,
            "loopback_deadlock",
            "The view called this server, which cannot answer it.",
            hint="Run more than one worker.",
            extra={"outbound_url": "http://127.0.0.1:8000/x"},
        )

    @app.get("/own-json")
    def own_json() -> t.Any:
        return jsonify({"error": "invalid car"}), 422

    @app.get("/own-200-error")
    def own_200_error() -> t.Any:
        return jsonify({"error": "looks like an error"})

    @app.get("/own-html")
    def own_html() -> t.Any:
        return "<p>a custom page</p>", 404

    @app.get("/redirect")
    def go() -> t.Any:
        return redirect("/")

    @app.get("/slash/")
    def slash() -> str:
        return "slash"

    @app.get("/stream-late")
    def stream_late() -> Response:
        def generate() -> Iterator[str]:
            yield "first chunk\n"
            raise RuntimeError(f"stream broke, password={SECRET}")

        return Response(stream_with_context(generate()), mimetype="text/plain")

    @app.get("/stream-early")
    def stream_early() -> Response:
        def generate() -> Iterator[str]:
            raise RuntimeError("broke before the first chunk")
            yield "never"

        return Response(generate(), mimetype="text/plain")

    @app.get("/login")
    def login() -> str:
        session["user"] = "alice"
        return "logged in"

    @app.get("/close-fails")
    def close_fails() -> Response:
        response = Response("sent in full")

        @response.call_on_close
        def fail() -> None:
            raise RuntimeError("cleanup after the response broke")

        return response

    diag = Diag(app, **diag_options)
    return app, diag


@pytest.fixture
def flask_app() -> Flask:
    app, diag = make_flask_app()
    diag.map_exception(CarNotFound, 404, code="car_not_found")
    return app


@pytest.fixture
def fclient(flask_app: Flask) -> t.Any:
    return flask_app.test_client()


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "detail"),
    [
        pytest.param("GET", "/cars/2", 404, "not_found", "no such car", id="abort-404"),
        pytest.param("GET", "/nowhere", 404, "not_found", None, id="routing-404"),
        pytest.param("DELETE", "/", 405, "method_not_allowed", None, id="routing-405"),
        pytest.param("GET", "/crash", 500, "internal_error", GENERIC_500, id="crash"),
        pytest.param(
            "GET", "/abort500", 500, "internal_error", GENERIC_500, id="abort-500"
        ),
        pytest.param(
            "GET", "/none", 500, "internal_error", GENERIC_500, id="bad-return"
        ),
        pytest.param("GET", "/auth", 401, "unauthorized", None, id="401"),
        pytest.param("GET", "/busy", 429, "too_many_requests", None, id="429"),
        pytest.param("GET", "/maintenance", 503, "service_unavailable", None, id="503"),
        pytest.param("GET", "/lookup", 404, "car_not_found", None, id="mapped"),
        pytest.param("GET", "/diag-error", 508, "loopback_deadlock", None, id="diag"),
    ],
)
def test_flask_errors_are_envelopes(
    fclient: t.Any, method: str, path: str, status: int, code: str, detail: str | None
) -> None:
    response = fclient.open(path, method=method)
    problem = assert_envelope(response, status, code, detail=detail, instance=path)
    assert "debug" not in problem


def test_flask_error_headers_survive(fclient: t.Any) -> None:
    response = fclient.delete("/")
    assert allowed(response) == {"GET", "HEAD", "OPTIONS"}
    response = fclient.get("/auth")
    assert response.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert fclient.get("/busy").headers["Retry-After"] == "30"
    assert fclient.get("/maintenance").headers["Retry-After"] == "120"


def test_flask_413(fclient: t.Any) -> None:
    response = fclient.post("/upload", data=b"x" * 2048)
    assert_envelope(response, 413, "content_too_large")
    assert fclient.post("/upload", data=b"x" * 10).data == b"10"


def test_diag_http_error_members(fclient: t.Any) -> None:
    problem = assert_envelope(fclient.get("/diag-error"), 508, "loopback_deadlock")
    assert problem["detail"] == "The view called this server, which cannot answer it."
    assert problem["hint"] == "Run more than one worker."
    assert problem["outbound_url"] == "http://127.0.0.1:8000/x"


def test_diag_http_error_answers_itself_without_the_envelope() -> None:
    app, _ = make_flask_app(errors="off")
    response = app.test_client().get("/diag-error")
    assert response.status_code == 508
    assert response.headers["Content-Type"] == PROBLEM_JSON
    problem = response.json
    assert problem["code"] == "loopback_deadlock"
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert problem["hint"] == "Run more than one worker."
    # Called as a WSGI app, by a middleware that answers by itself.
    error = DiagHTTPError(403, "debugger_refused", "Not from this network.")
    result = run_wsgi(error, environ_for("/console"))
    assert result.status_code == 403
    assert result.headers["Content-Type"] == PROBLEM_JSON
    assert json.loads(result.body) == {
        "type": "about:blank",
        "title": "Forbidden",
        "status": 403,
        "detail": "Not from this network.",
        "instance": "/console",
        "code": "debugger_refused",
    }


@pytest.mark.parametrize(
    ("answered", "replaced"),
    [
        ("500 INTERNAL SERVER ERROR", True),
        ("502 BAD GATEWAY", True),
        # The cause's own status, and statuses below 500, are the app's.
        ("503 SERVICE UNAVAILABLE", False),
        ("404 NOT FOUND", False),
    ],
)
def test_a_recorded_cause_answers_a_5xx_the_app_made_of_it(
    answered: str, replaced: bool
) -> None:
    # What the loopback guard records when a view catches its error: a
    # plain WSGI app that answers some 5xx after flask_diag found the cause.
    cause = DiagHTTPError(
        503, "upstream_down", "The upstream is down.", extra={"upstream": "db"}
    )

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        environ[CAUSE_KEY] = cause
        start_response(answered, [("Content-Type", "text/plain")])
        return [b"it went wrong"]

    result = run_wsgi(wrap(app, environ={}), environ_for("/report"))
    if replaced:
        problem = assert_envelope(result, 503, "upstream_down", instance="/report")
        assert problem["detail"] == "The upstream is down."
        assert problem["upstream"] == "db"
    else:  # a response the app made on purpose, left alone
        assert result.status == answered
        assert result.body == b"it went wrong"


def test_diag_http_error_copy_is_a_new_error_with_the_same_members() -> None:
    error = DiagHTTPError(
        429, "slow_down", "Later.", hint="Wait.", headers=[("Retry-After", "5")]
    )
    copy = error.copy()
    assert copy is not error and type(copy) is DiagHTTPError
    assert copy.problem() == error.problem()
    assert copy.get_headers() == error.get_headers()


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((302,), {}, "error status"),
        ((600,), {}, "error status"),
        ((400,), {"extra": {"ab": 1}}, "extension member"),
        ((400,), {"extra": {"status": 1}}, "extension member"),
        ((400,), {"extra": {"1abc": 1}}, "extension member"),
    ],
)
def test_diag_http_error_checks_its_arguments(
    args: tuple[int], kwargs: dict[str, t.Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DiagHTTPError(*args, **kwargs)


@pytest.mark.parametrize(
    ("path", "status", "content_type"),
    [
        pytest.param("/own-json", 422, "application/json", id="own-json-4xx"),
        pytest.param("/own-200-error", 200, "application/json", id="own-200"),
        pytest.param("/own-html", 404, "text/html; charset=utf-8", id="own-html-page"),
        pytest.param("/redirect", 302, "text/html; charset=utf-8", id="redirect"),
        pytest.param("/slash", 308, "text/html; charset=utf-8", id="routing-redirect"),
    ],
)
def test_flask_responses_built_on_purpose_are_left_alone(
    fclient: t.Any, path: str, status: int, content_type: str
) -> None:
    app, _ = make_flask_app(errors="off")
    expected = app.test_client().get(path)
    response = fclient.get(path)
    assert response.status_code == expected.status_code == status
    assert response.headers["Content-Type"] == content_type
    assert response.data == expected.data
    assert response.headers.get("Location") == expected.headers.get("Location")


@pytest.mark.parametrize(
    ("path", "status", "allow"),
    [
        pytest.param("/nowhere", 404, None, id="404"),
        pytest.param("/crash", 500, None, id="500"),
        pytest.param("/upload", 405, {"OPTIONS", "POST"}, id="405"),
    ],
)
def test_flask_head_gets_headers_and_no_body(
    fclient: t.Any, path: str, status: int, allow: set[str] | None
) -> None:
    response = fclient.head(path)
    assert response.status_code == status
    assert response.headers["Content-Type"] == PROBLEM_JSON
    assert response.data == b""
    assert int(response.headers["Content-Length"]) > 0
    assert (allowed(response) or None) == allow
    assert "X-Request-ID" in response.headers


def test_negotiate_gives_browsers_html_and_api_clients_json() -> None:
    app, _ = make_flask_app(errors="negotiate")
    client = app.test_client()
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    response = client.get("/cars/2", headers={"Accept": browser})
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Vary"] == "Accept"
    page = response.get_data(as_text=True)
    assert "<h1>404 Not Found</h1>" in page
    assert "<p>no such car</p>" in page
    assert f"<dd>{response.headers['X-Request-ID']}</dd>" in page
    assert "<dd>not_found</dd>" in page
    for accept in (None, "*/*", "application/json", "application/problem+json"):
        headers = {"Accept": accept} if accept else {}
        api = client.get("/cars/2", headers=headers)
        assert_envelope(api, 404, "not_found", detail="no such car")
        assert api.headers["Vary"] == "Accept"


def test_negotiated_html_page_escapes_everything() -> None:
    app, _ = make_flask_app(errors="negotiate")

    @app.get("/xss")
    def xss() -> str:
        abort(400, "<script>alert(1)</script>")

    response = app.test_client().get("/xss?<b>", headers={"Accept": "text/html"})
    page = response.get_data(as_text=True)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        ("text/html", True),
        ("text/html,application/xhtml+xml,*/*;q=0.8", True),
        ("application/json, text/html;q=0.5", False),
        ("*/*", False),
        ("", False),
        ("text/html;q=0.1, application/json", False),
        (";;;,,,q=x", False),
    ],
)
def test_prefers_html(accept: str, html: bool) -> None:
    assert prefers_html(accept) is html


def test_errors_off_leaves_flask_alone() -> None:
    app, _ = make_flask_app(errors="off")
    response = app.test_client().get("/nowhere")
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert not any(isinstance(m, ErrorEnvelope) for m in _chain(app.wsgi_app)), (
        "no envelope in the stack"
    )
    assert error_handlers(app) == {}


def error_handlers(app: Flask) -> dict[type, t.Any]:
    return dict(app.error_handler_spec[None][None])


def _chain(app: t.Any) -> list[t.Any]:
    chain = []
    while app is not None:
        chain.append(app)
        app = getattr(app, "app", None)
    return chain


def test_stack_order_tagging_outermost_then_envelope() -> None:
    app, _ = make_flask_app()
    kinds = [type(m).__name__ for m in _chain(app.wsgi_app)]
    assert kinds[:2] == ["RequestTagging", "ErrorEnvelope"]


def test_app_error_handlers_are_kept() -> None:
    app = Flask("own_handlers")

    @app.errorhandler(404)
    def not_found(e: Exception) -> t.Any:
        return {"mine": True}, 404

    @app.errorhandler(Exception)
    def everything(e: Exception) -> t.Any:
        return {"mine": "exception"}, 500

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError("x")

    Diag(app)
    client = app.test_client()
    assert client.get("/nowhere").json == {"mine": True}
    assert client.get("/crash").json == {"mine": "exception"}
    # The HTTPException handler is flask_diag's: 405 is an envelope.
    assert_envelope(client.post("/crash"), 405, "method_not_allowed")


def test_map_exception_before_and_after_init_app() -> None:
    diag = Diag()
    diag.map_exception(KeyError, 404, code="no_key", detail=lambda e: f"no {e}")
    app = Flask("mapped")

    @app.get("/key")
    def key() -> str:
        raise KeyError("car")

    @app.get("/perm")
    def perm() -> str:
        raise PermissionError("nope")

    diag.init_app(app)
    diag.map_exception(PermissionError, 403, detail="You may not.", hint="Log in.")
    client = app.test_client()
    assert_envelope(client.get("/key"), 404, "no_key", detail="no 'car'")
    problem = assert_envelope(
        client.get("/perm"), 403, "forbidden", detail="You may not."
    )
    assert problem["hint"] == "Log in."


@pytest.mark.parametrize(
    ("status", "ok"),
    [(404, True), (599, True), (302, False), (200, False), (600, False)],
)
def test_map_exception_status_is_checked(status: int, ok: bool) -> None:
    diag = Diag()
    if ok:
        diag.map_exception(LookupError, status)
    else:
        with pytest.raises(ValueError, match="error status"):
            diag.map_exception(LookupError, status)
    with pytest.raises(TypeError):
        diag.map_exception("LookupError", 404)  # type: ignore[arg-type]


def test_mapped_5xx_is_logged_and_uses_generic_detail() -> None:
    diag = Diag()
    diag.map_exception(TimeoutError, 504)
    app = Flask("mapped5xx")

    @app.get("/slow")
    def slow() -> str:
        raise TimeoutError(f"upstream {SECRET}")

    diag.init_app(app)
    with capture_logs() as logs:
        response = app.test_client().get("/slow")
    problem = assert_envelope(response, 504, "gateway_timeout")
    assert SECRET not in response.get_data(as_text=True)
    (line,) = logged(logs, "request failed")
    assert line["status"] == 504
    assert line["request_id"] == problem["request_id"]


def test_a_failing_mapping_detail_gives_a_500_envelope() -> None:
    """A ``detail`` function that raises is our fault to contain: the
    Flask handler and the WSGI envelope both answer a logged 500."""

    def broken_detail(exc: BaseException) -> str:
        raise ValueError("detail bug")

    diag = Diag()
    diag.map_exception(CarNotFound, 404, detail=broken_detail)
    app = Flask("broken_detail")

    @app.get("/lookup")
    def lookup() -> str:
        raise CarNotFound("car 7")

    diag.init_app(app)
    wrapped = wrap(plain_app, environ={})
    map_exception(wrapped, CarNotFound, 404, detail=broken_detail)
    for client in (app.test_client(), Client(wrapped)):
        with capture_logs() as logs:
            response = client.get("/lookup")
        problem = assert_envelope(response, 500, "internal_error", detail=GENERIC_500)
        assert logged(logs, "flask_diag internal error")
        (line,) = logged(logs, "request failed")
        assert line["request_id"] == problem["request_id"]
        assert line["exc_info"][0] is CarNotFound


# -- logging, signals, debug output -------------------------------------------------


def test_every_5xx_is_logged_once_with_the_exception(fclient: t.Any) -> None:
    with capture_logs() as logs:
        response = fclient.get("/crash")
        fclient.get("/cars/2")  # a 4xx is not logged
        fclient.get("/none")
    failed = logged(logs, "request failed")
    assert len(failed) == 2
    first = failed[0]
    assert first["request_id"] == response.headers["X-Request-ID"]
    assert first["status"] == 500 and first["code"] == "internal_error"
    assert first["log_level"] == "error"
    exc_type, exc, _tb = first["exc_info"]
    assert exc_type is RuntimeError and SECRET in str(exc)
    assert failed[1]["exc_info"][0] is TypeError  # the view returned None


def test_error_enveloped_signal(fclient: t.Any) -> None:
    with capture_signals() as sent:
        response = fclient.get("/crash")
        fclient.get("/cars/2")
    enveloped = [s for s in sent if s.name == "error-enveloped"]
    assert len(enveloped) == 2
    first = enveloped[0].kwargs
    assert first["problem"] == response.json
    assert isinstance(first["exception"], RuntimeError)
    assert first["event_id"] is None
    assert first["environ"]["PATH_INFO"] == "/crash"
    assert enveloped[1].kwargs["problem"]["code"] == "not_found"


def test_a_failing_signal_receiver_changes_nothing(fclient: t.Any) -> None:
    def broken(sender: object, **kwargs: t.Any) -> None:
        raise ValueError("receiver bug")

    signals.error_enveloped.connect(broken)
    try:
        with capture_logs() as logs:
            response = fclient.get("/cars/2")
    finally:
        signals.error_enveloped.disconnect(broken)
    assert_envelope(response, 404, "not_found", detail="no such car")
    assert logged(logs, "flask_diag internal error")


def test_secrets_never_leak_without_debug(fclient: t.Any) -> None:
    for path in ("/crash", "/abort500", "/lookup"):
        with capture_logs():
            text = fclient.get(path).get_data(as_text=True)
        assert SECRET not in text and SECRET_PATH not in text, path
        assert "Traceback" not in text and ".py" not in text, path


@pytest.mark.parametrize("how", ["setting", "flask-debug"])
def test_debug_output_when_asked(how: str) -> None:
    if how == "setting":
        app, _ = make_flask_app(debug_errors=True)
    else:
        app, _ = make_flask_app()
        app.debug = True
    with capture_logs():
        response = app.test_client().get("/crash")
    problem = assert_envelope(response, 500, "internal_error", detail=GENERIC_500)
    debug = problem["debug"]
    assert debug["type"] == "RuntimeError"
    assert SECRET in debug["message"] and SECRET_PATH in debug["message"]
    assert debug["frames"][-1]["function"] == "crash"
    assert debug["frames"][-1]["file"] == __file__
    assert "raise RuntimeError" in debug["frames"][-1]["code"]
    # 4xx: no debug member, the code's message.
    problem = assert_envelope(app.test_client().get("/cars/2"), 404, "not_found")
    assert "debug" not in problem


def test_internal_failure_gives_a_minimal_envelope(
    fclient: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: t.Any, **kwargs: t.Any) -> t.Any:
        raise ValueError("bug in flask_diag")

    monkeypatch.setattr(flask_diag.errors, "make_problem", broken)
    with capture_logs() as logs:
        response = fclient.get("/cars/2")
    problem = assert_envelope(response, 500, "internal_error", instance="/cars/2")
    assert logged(logs, "flask_diag internal error")
    assert "bug in flask_diag" not in response.get_data(as_text=True)
    assert problem["request_id"] == response.headers["X-Request-ID"]


def test_propagate_key_hands_exceptions_to_an_outer_debugger() -> None:
    app, _ = make_flask_app()
    inner = app.wsgi_app

    def debugger(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        environ[PROPAGATE_KEY] = True
        return inner(environ, start_response)

    app.wsgi_app = debugger  # type: ignore[method-assign]
    client = app.test_client()
    with pytest.raises(RuntimeError, match="connect failed"):
        client.get("/crash")
    # HTTP errors are still envelopes.
    assert_envelope(client.get("/cars/2"), 404, "not_found")


def test_werkzeug_debugger_gets_exceptions_in_flask_debug_mode() -> None:
    from werkzeug.debug import DebuggedApplication

    app, _ = make_flask_app()
    app.debug = True
    client = Client(DebuggedApplication(app, evalex=True))
    response = client.get("/crash")
    assert response.status_code == 500
    assert response.headers["Content-Type"].startswith("text/html")
    assert "RuntimeError" in response.get_data(as_text=True)  # the debugger page
    assert_envelope(client.get("/cars/2"), 404, "not_found")
    # Without debug mode the debugger around it sees an envelope.
    app.debug = False
    assert_envelope(client.get("/crash"), 500, "internal_error")


# -- streaming ----------------------------------------------------------------------


def test_exception_after_the_response_started_is_logged_and_reraised(
    flask_app: Flask,
) -> None:
    with capture_logs() as logs:
        result = run_wsgi(flask_app, environ_for("/stream-late"))
    assert result.status_code == 200
    assert isinstance(result.error, RuntimeError)
    assert result.body == b"first chunk\n"  # nothing appended, no half JSON
    assert result.closed
    (line,) = logged(logs, "response failed after it started")
    assert line["request_id"] == result.headers["X-Request-ID"]
    assert line["exc_info"][1] is result.error
    assert line["status"] == 200
    assert not logged(logs, "request failed")


def test_exception_in_a_close_callback_is_logged_and_reraised(
    flask_app: Flask,
) -> None:
    # A body in memory, but a ``call_on_close`` function that raises: the
    # response is guarded although its iteration cannot fail.
    with capture_logs() as logs:
        result = run_wsgi(flask_app, environ_for("/close-fails"))
    assert result.status_code == 200
    assert result.body == b"sent in full"
    assert isinstance(result.error, RuntimeError)
    (line,) = logged(logs, "response failed after it started")
    assert line["exc_info"][1] is result.error
    assert line["request_id"] == result.headers["X-Request-ID"]


# -- start_response called twice, write(), close() (PEP 3333) ---------------------


def _exc_info() -> t.Any:
    try:
        raise LookupError("replaced")
    except LookupError:
        return sys.exc_info()


def test_an_error_replacing_a_started_success_is_enveloped() -> None:
    # 200 first, then a stock 500 page given with exc_info and a werkzeug
    # body in memory: the 500 is answered, not sent as the 200.
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        page = InternalServerError().get_response(environ)
        return page(environ, lambda s, h, e=None: start_response(s, h, _exc_info()))

    result = run_wsgi(wrap(app, environ={}), environ_for("/"))
    assert_envelope(result, 500, "internal_error")


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        ("302 FOUND", [("Location", "/login")], b""),
        ("500 INTERNAL SERVER ERROR", [("Content-Type", "application/json")], b"{}"),
    ],
    ids=["redirect", "own-json-500"],
)
def test_a_held_error_the_app_replaces_is_forgotten(
    status: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    # A stock-looking 404 is held, then replaced (exc_info) by a redirect or
    # by the app's own JSON 500: what the app chose last goes out, once.
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response("404 NOT FOUND", [("Content-Type", "text/html")])
        start_response(status, headers, _exc_info())
        return [body]

    result = run_wsgi(wrap(app, environ={}), environ_for("/"))
    assert result.error is None
    assert result.status == status
    assert result.body == body
    for name, value in headers:
        assert result.headers[name] == value


def test_write_while_a_held_error_body_is_read_keeps_its_place() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        write = start_response("404 Not Found", [("Content-Type", "text/plain")])

        def body() -> Iterator[bytes]:
            yield b"no car "
            write(b"with that id")
            yield b"."

        return body()

    result = run_wsgi(wrap(app, environ={}), environ_for("/"))
    assert result.status == "404 Not Found"
    assert result.body == b"no car with that id."


def test_an_aborted_response_is_closed() -> None:
    events: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        response = WResponse(b"maintenance", 503, mimetype="text/plain")
        response.call_on_close(lambda: events.append("closed"))
        abort(response)

    result = run_wsgi(wrap(app, environ={}), environ_for("/"))
    assert (result.status_code, result.body) == (503, b"maintenance")
    assert events == ["closed"]


def test_a_file_response_whose_status_the_server_refuses_is_closed() -> None:
    # A held error sent as a file: the status goes to the server when the
    # app returns; when the server refuses it, the file is closed anyway.
    opened = io.BytesIO(b"<p>gone</p>")

    class FileWrapper:
        def __init__(self, filelike: t.Any) -> None:
            self.filelike = filelike

        def __iter__(self) -> Iterator[bytes]:
            return iter([self.filelike.read()])

        def close(self) -> None:
            self.filelike.close()

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        start_response("404 Not Found", [("Content-Type", "text/html")])
        return environ["wsgi.file_wrapper"](opened)

    def refuse(*args: t.Any) -> t.NoReturn:
        raise ValueError("the server refuses this status")

    environ = environ_for("/")
    environ["wsgi.file_wrapper"] = FileWrapper
    with pytest.raises(ValueError, match="refuses"):
        ErrorEnvelope(app)(environ, refuse)
    assert opened.closed


def test_head_of_the_apps_own_error_page_is_left_alone_as_for_get() -> None:
    # A HEAD response has no body: the page GET would send decides, as for
    # GET, not its absence (RFC 9110: HEAD's headers are GET's).
    app = Flask("own_page")

    @app.get("/cars/<int:n>")
    def car(n: int) -> tuple[str, int]:
        return "<h2>Sorry, car not in stock</h2><a href=/>home</a>", 404

    Diag(app)
    answers = {m: run_wsgi(app, environ_for("/cars/1", m)) for m in ("GET", "HEAD")}
    for result in answers.values():
        assert result.status_code == 404
        assert result.headers["Content-Type"] == "text/html; charset=utf-8"
    assert answers["HEAD"].headers["Content-Length"] == str(len(answers["GET"].body))
    assert answers["HEAD"].body == b""
    # A stock page stays an envelope on HEAD too.
    stock = run_wsgi(app, environ_for("/nowhere", "HEAD"))
    assert stock.status_code == 404 and stock.headers["Content-Type"] == PROBLEM_JSON
    assert stock.body == b""


def test_head_of_a_plain_app_that_declares_a_body_is_left_alone() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response(
            "404 Not Found", [("Content-Type", "text/html"), ("Content-Length", "50")]
        )
        return []  # HEAD: the body GET would have, not sent

    result = run_wsgi(wrap(app, environ={}), environ_for("/", "HEAD"))
    assert result.status == "404 Not Found"
    assert result.headers["Content-Type"] == "text/html"


def test_a_plain_success_goes_out_as_werkzeugs_own_iterator() -> None:
    # The success path's cost: a body already in memory is not wrapped by
    # the envelope (no generator, no object of ours between it and the
    # server); a streamed one is guarded.
    from werkzeug.wsgi import ClosingIterator

    app, _ = make_flask_app(errors="off", tagging=False)
    envelope = ErrorEnvelope(app)
    for path, guarded in (("/", False), ("/stream-late", True)):
        started: list[str] = []
        app_iter = envelope(
            environ_for(path),
            lambda status, headers, exc_info=None, seen=started: seen.append(status),
        )
        assert (type(app_iter) is not ClosingIterator) is guarded, path
        assert started == ["200 OK"]
        try:
            assert next(iter(app_iter))
        finally:
            app_iter.close()  # type: ignore[attr-defined]


def test_exception_before_the_first_chunk_is_an_envelope(flask_app: Flask) -> None:
    with capture_logs() as logs:
        result = run_wsgi(flask_app, environ_for("/stream-early"))
    assert result.error is None
    problem = assert_envelope(result, 500, "internal_error", instance="/stream-early")
    assert b"broke" not in result.body
    (line,) = logged(logs, "request failed")
    assert line["request_id"] == problem["request_id"]


# -- pitfall 1: the secret key under __main__ ------------------------------------


def load_example(path: Path, name: str) -> t.Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_pitfall1_hint_names_file_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(PITFALL1)
    module = load_example(PITFALL1 / "app.py", "pitfall1_app_under_test")
    try:
        with capture_logs():
            response = module.app.test_client().get("/login")
    finally:
        del sys.modules["pitfall1_app_under_test"]
    problem = assert_envelope(response, 500, "internal_error", detail=GENERIC_500)
    line = line_of(PITFALL1 / "app.py", "app.secret_key =")
    assert f"(app.py, line {line})" in problem["hint"]
    assert "__main__" in problem["hint"] and "gunicorn" in problem["hint"]
    assert "debug" not in problem


def test_pitfall1_fixed_app_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_KEY", "test-secret")
    module = load_example(PITFALL1 / "app_fixed.py", "pitfall1_fixed_under_test")
    try:
        response = module.app.test_client().get("/login")
    finally:
        del sys.modules["pitfall1_fixed_under_test"]
    assert response.status_code == 200
    assert "Set-Cookie" in response.headers


def test_secret_key_hint_without_a_known_site(fclient: t.Any) -> None:
    with capture_logs():
        problem = fclient.get("/login").json
    assert problem["code"] == "internal_error"
    assert problem["hint"].startswith("No secret key is set")


@pytest.mark.parametrize(
    ("source", "found"),
    [
        pytest.param(
            """
            app = Flask(__name__)
            if __name__ == "__main__":
                app.secret_key = "dev"
                app.run()
            """,
            3,
            id="attribute",
        ),
        pytest.param(
            """
            app = Flask(__name__)
            if "__main__" == __name__:
                app.config["SECRET_KEY"] = "dev"
            """,
            3,
            id="config-item-reversed-test",
        ),
        pytest.param(
            """
            app = Flask(__name__)
            def main():
                pass
            if __name__ == "__main__":
                main()
                app.config.update(SECRET_KEY="dev", DEBUG=True)
            """,
            6,
            id="config-update",
        ),
        pytest.param(
            """
            app = Flask(__name__)
            app.secret_key = os.environ["KEY"]
            if __name__ == "__main__":
                app.secret_key = "dev"
            """,
            None,
            id="also-set-at-import",
        ),
        pytest.param(
            """
            app = Flask(__name__)
            app.config.from_object("settings")
            if __name__ == "__main__":
                app.secret_key = "dev"
            """,
            None,
            id="config-loaded-elsewhere",
        ),
        pytest.param(
            """
            app = Flask(__name__)
            if __name__ == "__main__":
                app.run()
            else:
                app.secret_key = "x"
            """,
            None,
            id="set-in-else",
        ),
        pytest.param("def broken(:\n", None, id="syntax-error"),
    ],
)
def test_main_only_secret_key(tmp_path: Path, source: str, found: int | None) -> None:
    path = tmp_path / "module.py"
    path.write_text(textwrap.dedent(source).lstrip("\n"))
    site = main_only_secret_key(str(path))
    if found is None:
        assert site is None
    else:
        assert site is not None and site[1] == found
        assert site[0].endswith("module.py")


# -- plain WSGI -----------------------------------------------------------------------


def plain_app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
    """A plain WSGI app (werkzeug request parsing, no Flask)."""
    path = environ.get("PATH_INFO", "")
    if path == "/":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello\n"]
    if path == "/crash":
        raise RuntimeError(f"password={SECRET} at {SECRET_PATH}")
    if path == "/not-found":
        raise NotFound("no such car")
    if path == "/method":
        raise MethodNotAllowed(valid_methods=["GET", "HEAD"])
    if path == "/auth":
        raise Unauthorized(www_authenticate=WWWAuthenticate("bearer"))
    if path == "/busy":
        raise TooManyRequests(retry_after=7)
    if path == "/lookup":
        raise CarNotFound("car 7")
    if path == "/diag":
        raise DiagHTTPError(403, "debugger_refused", "Not from this network.")
    if path == "/stock-page":
        return NotFound("gone fishing")(environ, start_response)
    if path == "/empty-404":
        start_response("404 Not Found", [("Content-Length", "0")])
        return []
    if path == "/own-text":
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"name is required\n"]
    if path == "/own-json":
        body = b'{"error": "invalid"}'
        start_response("400 Bad Request", [("Content-Type", "application/json")])
        return [body]
    if path == "/redirect":
        start_response("302 Found", [("Location", "/")])
        return []
    if path == "/write":
        write = start_response("404 Not Found", [("Content-Type", "text/html")])
        page = NotFound().get_body().encode()
        write(page[:20])
        return [page[20:]]
    if path == "/lazy":

        def lazy() -> Iterator[bytes]:
            start_response("500 Internal Server Error", [("Content-Type", "text/html")])
            yield b""
            yield b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error"
            yield b"</title>\n<h1>Internal Server Error</h1>\n<p>x</p>\n"

        return lazy()
    if path == "/stream-late":

        def late() -> Iterator[bytes]:
            yield b"partial"
            raise RuntimeError("late")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return late()
    if path == "/big-page":
        start_response("404 Not Found", [("Content-Type", "text/html")])
        return [b"<p>" + b"x" * 100_000 + b"</p>"]
    if path == "/echo-json":
        req = WRequest(environ)
        data = req.get_json()  # 400/415 when the body does not fit
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(data).encode()]
    raise NotFound()


@pytest.fixture
def wrapped() -> t.Any:
    app = wrap(plain_app, environ={})
    map_exception(app, CarNotFound, 404, code="car_not_found")
    return app


@pytest.mark.parametrize(
    ("path", "status", "code", "detail"),
    [
        pytest.param("/crash", 500, "internal_error", GENERIC_500, id="exception"),
        pytest.param("/not-found", 404, "not_found", "no such car", id="NotFound"),
        pytest.param("/nowhere", 404, "not_found", None, id="default-404"),
        pytest.param("/method", 405, "method_not_allowed", None, id="405"),
        pytest.param("/auth", 401, "unauthorized", None, id="401"),
        pytest.param("/busy", 429, "too_many_requests", None, id="429"),
        pytest.param("/lookup", 404, "car_not_found", None, id="mapped"),
        pytest.param(
            "/diag", 403, "debugger_refused", "Not from this network.", id="diag"
        ),
        pytest.param("/stock-page", 404, "not_found", "gone fishing", id="stock-page"),
        pytest.param("/empty-404", 404, "not_found", None, id="empty-body"),
        pytest.param("/write", 404, "not_found", None, id="write-callable"),
        pytest.param("/lazy", 500, "internal_error", GENERIC_500, id="lazy-start"),
    ],
)
def test_plain_wsgi_errors_are_envelopes(
    wrapped: t.Any, path: str, status: int, code: str, detail: str | None
) -> None:
    with capture_logs():
        response = Client(wrapped).get(path)
    assert_envelope(response, status, code, detail=detail, instance=path)


def test_plain_wsgi_error_headers_survive(wrapped: t.Any) -> None:
    client = Client(wrapped)
    assert client.get("/method").headers["Allow"] == "GET, HEAD"
    assert client.get("/auth").headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/busy").headers["Retry-After"] == "7"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/own-text", 400, id="own-text"),
        pytest.param("/own-json", 400, id="own-json"),
        pytest.param("/redirect", 302, id="redirect"),
        pytest.param("/big-page", 404, id="large-custom-page"),
        pytest.param("/", 200, id="ok"),
    ],
)
def test_plain_wsgi_responses_built_on_purpose_are_left_alone(
    wrapped: t.Any, path: str, status: int
) -> None:
    bare = Client(plain_app).get(path)
    response = Client(wrapped).get(path)
    assert response.status_code == bare.status_code == status
    assert response.data == bare.data
    assert response.headers.get("Content-Type") == bare.headers.get("Content-Type")


def test_plain_werkzeug_redirects_and_responses_answer_themselves() -> None:
    from werkzeug.exceptions import abort as werkzeug_abort
    from werkzeug.routing import RequestRedirect
    from werkzeug.wrappers import Response as WResponse

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        if environ["PATH_INFO"] == "/old":
            raise RequestRedirect("http://localhost/new")
        werkzeug_abort(WResponse("I'm a teapot", 418, content_type="text/plain"))

    client = Client(wrap(app, environ={}))
    response = client.get("/old")
    assert response.status_code == 308
    assert response.headers["Location"] == "http://localhost/new"
    response = client.get("/teapot")
    assert response.status_code == 418
    assert response.data == b"I'm a teapot"
    assert "X-Request-ID" in response.headers


def test_plain_wsgi_head(wrapped: t.Any) -> None:
    with capture_logs():
        for path, status in (("/crash", 500), ("/method", 405), ("/stock-page", 404)):
            result = run_wsgi(wrapped, environ_for(path, method="HEAD"))
            assert result.status_code == status
            assert result.headers["Content-Type"] == PROBLEM_JSON
            assert result.body == b""
            assert int(result.headers["Content-Length"]) > 0


def test_plain_wsgi_stream_failure_is_reraised(wrapped: t.Any) -> None:
    with capture_logs() as logs:
        result = run_wsgi(wrapped, environ_for("/stream-late"))
    assert result.status_code == 200 and result.body == b"partial"
    assert isinstance(result.error, RuntimeError) and result.closed
    assert len(logged(logs, "response failed after it started")) == 1


def test_middleware_inside_the_envelope_is_covered() -> None:
    def auth_middleware(app: WSGIApplication) -> WSGIApplication:
        def middleware(
            environ: WSGIEnvironment, start_response: StartResponse
        ) -> t.Any:
            if "HTTP_AUTHORIZATION" not in environ:
                raise DiagHTTPError(401, "missing_token", "Send a bearer token.")
            if environ.get("PATH_INFO") == "/bug":
                raise AttributeError("middleware bug")
            return app(environ, start_response)

        return middleware

    client = Client(wrap(auth_middleware(plain_app), environ={}))
    assert_envelope(
        client.get("/"), 401, "missing_token", detail="Send a bearer token."
    )
    with capture_logs():
        response = client.get("/bug", headers={"Authorization": "Bearer x"})
    assert_envelope(response, 500, "internal_error")
    assert client.get("/", headers={"Authorization": "Bearer x"}).data == b"hello\n"


def test_file_wrapper_passes_through() -> None:
    class FileWrapper:
        def __init__(self, f: t.Any, block_size: int = 8192) -> None:
            self.f = f

        def __iter__(self) -> Iterator[bytes]:
            yield self.f

        def close(self) -> None:
            pass

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
        start_response("404 Not Found", [("Content-Type", "text/html")])
        return environ["wsgi.file_wrapper"](b"<p>file</p>")

    environ = environ_for("/")
    environ["wsgi.file_wrapper"] = FileWrapper
    envelope = ErrorEnvelope(app, settings=None)
    result = envelope(environ, lambda s, h, e=None: lambda d: None)
    assert isinstance(result, FileWrapper)


def test_error_envelope_alone_and_its_request_id() -> None:
    envelope = ErrorEnvelope(plain_app)
    envelope.map_exception(CarNotFound, 410)
    with capture_logs():
        result = run_wsgi(envelope, environ_for("/lookup"))
    problem = json.loads(result.body)
    assert result.status_code == 410 and problem["code"] == "gone"
    assert re.fullmatch(r"[0-9a-f]{32}", problem["request_id"])


def test_plain_wsgi_debug_output() -> None:
    app = wrap(plain_app, environ={"FLASK_DIAG_DEBUG_ERRORS": "on"})
    with capture_logs():
        problem = t.cast(dict[str, t.Any], Client(app).get("/crash").json)
    assert problem["debug"]["type"] == "RuntimeError"
    assert SECRET in problem["debug"]["message"]
    assert problem["debug"]["frames"][-1]["function"] == "plain_app"


def test_plain_wsgi_secrets_never_leak(wrapped: t.Any) -> None:
    with capture_logs():
        text = Client(wrapped).get("/crash").get_data(as_text=True)
    assert SECRET not in text and SECRET_PATH not in text


def test_wrapped_twice_envelopes_once() -> None:
    app, _ = make_flask_app()
    outer = wrap(app, environ={})
    with capture_logs() as logs:
        response = Client(outer).get("/crash")
    assert_envelope(response, 500, "internal_error")
    assert len(logged(logs, "request failed")) == 1
    # A stream failing after it started: logged (and sent) once, too.
    with capture_logs() as logs:
        streamed = run_wsgi(outer, environ_for("/stream-late"))
    assert isinstance(streamed.error, RuntimeError)
    assert len(logged(logs, "response failed after it started")) == 1


def test_wrapped_twice_in_negotiate_mode_reports_each_error_once() -> None:
    # HEAD with an HTML preference: the outer envelope sees an error status
    # with no body; it must know the inner one answered it already.
    app, _ = make_flask_app(errors="negotiate")
    outer = wrap(app, environ={"FLASK_DIAG_ERRORS": "negotiate"})
    client = Client(outer)
    for path, status in (("/crash", 500), ("/cars/2", 404), ("/nowhere", 404)):
        with capture_logs() as logs:
            response = client.head(path, headers={"Accept": "text/html"})
        assert response.status_code == status, path
        assert response.get_data() == b""
        assert len(logged(logs, "request failed")) == (status >= 500), path


def test_flask_under_wrap_without_the_extension() -> None:
    app = Flask("bare_flask")

    @app.get("/cars/<int:car_id>")
    def car(car_id: int) -> str:
        abort(404, "no such car")

    @app.get("/crash")
    def crash() -> str:
        raise RuntimeError(SECRET)

    client = Client(wrap(app, environ={}))
    assert_envelope(client.get("/cars/1"), 404, "not_found", detail="no such car")
    assert allowed(client.post("/cars/1")) == {"GET", "HEAD", "OPTIONS"}
    with capture_logs() as logs:
        response = client.get("/crash")
    assert_envelope(response, 500, "internal_error", detail=GENERIC_500)
    (line,) = logged(logs, "request failed")
    assert "exc_info" not in line  # Flask rendered it; only its page was seen


# -- Django ---------------------------------------------------------------------------


@pytest.fixture
def django_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[t.Any]:
    """The ``django_errors`` project of ``tests/apps``, in this process."""
    monkeypatch.syspath_prepend(str(APPS))
    import django
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.test.utils import override_settings
    from django_errors import settings as project

    names = [name for name in dir(project) if name.isupper()]
    if not settings.configured:
        settings.configure(**{name: getattr(project, name) for name in names})
    django.setup(set_prefix=False)
    # Configured by another test first: the settings that matter here.
    overrides = (
        "ROOT_URLCONF",
        "DEBUG",
        "DEBUG_PROPAGATE_EXCEPTIONS",
        "ALLOWED_HOSTS",
        "MIDDLEWARE",
        "DATA_UPLOAD_MAX_MEMORY_SIZE",
    )
    with override_settings(**{name: getattr(project, name) for name in overrides}):
        yield get_wsgi_application()


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("GET", "/nowhere", 404, "not_found", id="routing-404"),
        pytest.param("POST", "/get-only", 405, "method_not_allowed", id="405"),
        pytest.param("GET", "/crash", 500, "internal_error", id="crash"),
        pytest.param("GET", "/missing-object", 500, "internal_error", id="unmapped"),
        pytest.param("GET", "/forbidden", 403, "forbidden", id="403"),
        pytest.param("GET", "/suspicious", 400, "bad_request", id="400"),
        pytest.param("POST", "/upload", 400, "bad_request", id="too-big"),
    ],
)
def test_django_errors_are_envelopes(
    django_app: t.Any, method: str, path: str, status: int, code: str
) -> None:
    client = Client(wrap(django_app, environ={}))
    with capture_logs():
        response = client.open(path, method=method, data=b"x" * 2048)
    problem = assert_envelope(response, status, code, instance=path)
    assert SECRET not in response.get_data(as_text=True)
    if status == 405:
        assert response.headers["Allow"] == "GET"
    if status == 404:
        assert (
            problem["detail"] == "The requested resource was not found on this server."
        )


def test_django_own_json_and_head(django_app: t.Any) -> None:
    client = Client(wrap(django_app, environ={}))
    response = client.get("/own-json")
    assert response.status_code == 422
    assert response.json == {"error": "invalid car", "field": "name"}
    head = client.head("/nowhere")
    assert head.status_code == 404 and head.data == b""
    assert head.headers["Content-Type"] == PROBLEM_JSON
    assert client.get("/").data == b"ok\n"


def test_django_propagated_exceptions_are_mapped(django_app: t.Any) -> None:
    from django.core.exceptions import ObjectDoesNotExist
    from django.test.utils import override_settings

    app = wrap(django_app, environ={})
    map_exception(app, ObjectDoesNotExist, 404, code="not_found")
    client = Client(app)
    with override_settings(DEBUG_PROPAGATE_EXCEPTIONS=True), capture_logs() as logs:
        assert_envelope(client.get("/missing-object"), 404, "not_found")
        response = client.get("/crash")
    assert_envelope(response, 500, "internal_error", detail=GENERIC_500)
    (line,) = logged(logs, "request failed")
    assert line["exc_info"][0] is RuntimeError  # the exception itself this time


# -- malformed requests (hypothesis) --------------------------------------------------


def _hypothesis_apps() -> list[t.Any]:
    app, _ = make_flask_app()

    @app.post("/json")
    def post_json() -> t.Any:
        return {"got": request.get_json()}

    @app.post("/form")
    def post_form() -> t.Any:
        return {"fields": len(request.form), "files": len(request.files)}

    return [app, wrap(plain_app, environ={})]


HYPOTHESIS_APPS = _hypothesis_apps()
latin1 = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=40)
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST"]),
    st.just("POST"),
    st.sampled_from(["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]),
    st.sampled_from(["get", "PROPFIND", "BREW", "CONNECT", "M-SEARCH", ""]),
    st.text(
        st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12
    ),
)
paths = st.one_of(
    st.sampled_from(["/json", "/form", "/upload", "/echo-json"]),
    st.sampled_from(["/", "/crash", "/nowhere", "/cars/2", "/stock-page", "/write"]),
    st.binary(max_size=30).map(lambda b: "/" + b.decode("latin-1")),
)
content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=xyz",
            "text/plain; charset=utf-99",
            "application/json; charset=latin-1",
            "",
        ]
    ),
    latin1,
)
header_values = st.one_of(latin1, st.text(max_size=5).map(lambda s: s * 2000))


@hypothesis_settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    app_index=st.integers(0, len(HYPOTHESIS_APPS) - 1),
    method=methods,
    path=paths,
    query=st.binary(max_size=30),
    content_type=content_types,
    content_length=st.one_of(
        st.none(), st.sampled_from(["abc", "-1", "99999999999", "0", "5"])
    ),
    body=st.binary(max_size=300),
    headers=st.dictionaries(
        st.text(
            st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ_"), min_size=1, max_size=12
        ),
        header_values,
        max_size=4,
    ),
    accept=st.one_of(st.none(), latin1, st.just("text/html")),
)
def test_malformed_requests_get_envelopes(
    app_index: int,
    method: str,
    path: str,
    query: bytes,
    content_type: str,
    content_length: str | None,
    body: bytes,
    headers: dict[str, str],
    accept: str | None,
) -> None:
    app = HYPOTHESIS_APPS[app_index]
    environ = environ_for("/", method="POST", data=body)
    environ.update({f"HTTP_{name}": value for name, value in headers.items()})
    environ["REQUEST_METHOD"] = method
    environ["PATH_INFO"] = path
    environ["QUERY_STRING"] = query.decode("latin-1")
    environ["CONTENT_TYPE"] = content_type
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    if accept is not None:
        environ["HTTP_ACCEPT"] = accept
    with capture_logs():
        result = run_wsgi(app, environ)
    assert result.error is None, result.error
    assert result.status is not None
    status = result.status_code
    request_id = result.headers["X-Request-ID"]
    if status < 400:
        return
    assert result.headers["Content-Type"] == PROBLEM_JSON
    if method == "HEAD":
        assert result.body == b""
        return
    problem = json.loads(result.body)
    assert set(MEMBERS) <= set(problem)
    assert problem["status"] == status
    assert problem["request_id"] == request_id
    assert problem["code"] == CODES.get(status, problem["code"])
    problem["instance"].encode("ascii")  # a URI reference, ASCII only
    assert SECRET not in result.body.decode()


def test_instance_of_a_non_utf8_path(fclient: t.Any) -> None:
    environ = environ_for("/")
    environ["PATH_INFO"] = "/caf\xe9/\xff\x00 x"
    result = run_wsgi(fclient.application, environ)
    problem = json.loads(result.body)
    assert result.status_code == 404
    assert problem["instance"] == "/caf%E9/%FF%00%20x"


def test_structlog_json_renders_the_log_line(fclient: t.Any) -> None:
    """The 5xx line renders with structlog's JSON chain (exc_info included)."""
    import io

    out = io.StringIO()
    structlog.configure(
        processors=flask_diag.logging.recommended_processors(json=True),
        logger_factory=structlog.WriteLoggerFactory(out),
    )
    response = fclient.get("/crash")
    (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
    assert line["event"] == "request failed"
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["exception"][0]["exc_type"] == "RuntimeError"
    assert os.getpid() == line["pid"]


# -- Sentry (a real endpoint on 127.0.0.1) -------------------------------------------


def _only_event(endpoint: t.Any, event_id: str) -> t.Any:
    """The event ``event_id``, after checking it is the only one received."""
    import sentry_sdk

    (event,) = endpoint.wait_for_events(1, where=lambda e: e.event_id == event_id)
    sentry_sdk.flush(timeout=5)
    assert [e.event_id for e in endpoint.events] == [event_id]
    return event


def _mechanism(event: t.Any) -> str:
    return t.cast(str, event.data["exception"]["values"][-1]["mechanism"]["type"])


def test_sentry_gets_each_5xx_once_with_the_request_id(
    sentry_endpoint: t.Any, sentry_init: t.Any, fclient: t.Any
) -> None:
    sentry_init()
    with capture_logs() as logs:
        response = fclient.get("/crash")
        fclient.get("/cars/2")  # 4xx: no event
    problem = assert_envelope(response, 500, "internal_error")
    event = _only_event(sentry_endpoint, problem["event_id"])
    assert event.tags["request_id"] == response.headers["X-Request-ID"]
    assert str(event.tags["worker.pid"]) == response.headers["X-Diag-PID"]
    assert event.exception_types[-1] == "RuntimeError"
    assert _mechanism(event) == "flask_diag"
    (line,) = logged(logs, "request failed")
    assert line["event_id"] == problem["event_id"]


def test_sentry_flask_integration_path_is_not_reported_twice(
    sentry_endpoint: t.Any, sentry_init: t.Any, fclient: t.Any
) -> None:
    """A view returning None fails in Flask's ``handle_exception``, which
    sends ``got_request_exception``: sentry-sdk's Flask integration captures
    it there, and the body carries that event's id."""
    sentry_init()
    with capture_logs():
        response = fclient.get("/none")
    problem = assert_envelope(response, 500, "internal_error")
    event = _only_event(sentry_endpoint, problem["event_id"])
    assert _mechanism(event) == "flask"
    assert event.exception_types[-1] == "TypeError"
    assert event.tags["request_id"] == response.headers["X-Request-ID"]


def test_sentry_without_default_integrations_still_once(
    sentry_endpoint: t.Any, sentry_init: t.Any, fclient: t.Any
) -> None:
    sentry_init(default_integrations=False, auto_enabling_integrations=False)
    with capture_logs():
        response = fclient.get("/none")
    problem = assert_envelope(response, 500, "internal_error")
    assert _mechanism(_only_event(sentry_endpoint, problem["event_id"])) == "flask_diag"


def test_sentry_dropped_event_gives_no_event_id(
    sentry_endpoint: t.Any, sentry_init: t.Any, fclient: t.Any
) -> None:
    sentry_init(before_send=lambda event, hint: None)
    with capture_logs():
        problem = assert_envelope(fclient.get("/crash"), 500, "internal_error")
    assert "event_id" not in problem
    import sentry_sdk

    sentry_sdk.flush(timeout=5)
    assert sentry_endpoint.events == []


def test_sentry_rate_limited_event_gives_no_event_id(
    sentry_endpoint: t.Any, sentry_init: t.Any, fclient: t.Any
) -> None:
    """Sentry answers 429 (over quota): it did not accept the event, and the
    SDK drops the next ones until the limit expires. No body may quote an id
    that can never be found in Sentry."""
    import sentry_sdk

    sentry_endpoint.rate_limit = 60
    sentry_init()
    with capture_logs() as logs:
        first = assert_envelope(fclient.get("/crash"), 500, "internal_error")
    assert "event_id" not in first, first  # sent, answered 429
    (line,) = logged(logs, "request failed")
    assert line["event_id"] is None
    assert len(sentry_endpoint.wait_for_events(1)) == 1
    with capture_logs() as logs:
        second = assert_envelope(fclient.get("/crash"), 500, "internal_error")
    assert "event_id" not in second, second  # not even sent
    (line,) = logged(logs, "request failed")
    assert line["event_id"] is None
    sentry_sdk.flush(timeout=5)
    assert len(sentry_endpoint.events) == 1


@pytest.mark.parametrize(
    ("status", "path"),
    [
        (500, "/crash"),
        (503, "/crash"),
        (413, "/crash"),
        (400, "/crash"),
        (503, "/none"),
    ],
)
def test_sentry_refusing_the_event_gives_no_event_id(
    sentry_endpoint: t.Any, sentry_init: t.Any, fclient: t.Any, status: int, path: str
) -> None:
    # ``/none`` is captured by sentry-sdk's Flask integration, not by us.
    sentry_endpoint.fail_status = status
    sentry_init()
    with capture_logs() as logs:
        response = fclient.get(path)
    problem = assert_envelope(response, 500, "internal_error")
    assert "event_id" not in problem, problem
    (line,) = logged(logs, "request failed")
    assert line["event_id"] is None
    # The event did reach the endpoint: it was refused, not lost on the way;
    # the log line names it, apart, to find it should it be kept after all.
    (event,) = sentry_endpoint.wait_for_events(1)
    assert event.tags["request_id"] == response.headers["X-Request-ID"]
    assert line["unconfirmed_event_id"] == event.event_id


def test_sentry_unreachable_gives_the_same_response_without_event_id(
    sentry_init: t.Any, fclient: t.Any
) -> None:
    import time

    with capture_logs():
        reference = fclient.get("/crash")  # Sentry not initialised
    sentry_init(dsn=f"http://public@127.0.0.1:{free_port()}/1")
    started = time.monotonic()
    with capture_logs() as logs:
        response = fclient.get("/crash")
    took = time.monotonic() - started
    problem = assert_envelope(response, 500, "internal_error")
    assert "event_id" not in problem, problem
    expected = json.loads(reference.get_data())
    for member in ("type", "title", "status", "detail", "code", "instance"):
        assert problem[member] == expected[member]
    assert response.headers["Content-Type"] == reference.headers["Content-Type"]
    (line,) = logged(logs, "request failed")
    assert line["event_id"] is None
    assert took < 2.0, took  # refused at once: no wait for the whole timeout


def test_sentry_confirm_off_quotes_the_queued_id(
    sentry_init: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``FLASK_DIAG_SENTRY_CONFIRM=off``: the id is quoted once queued, even
    though this Sentry cannot be reached (the documented trade-off)."""
    monkeypatch.setenv("FLASK_DIAG_SENTRY_CONFIRM", "off")
    app, _ = make_flask_app()
    sentry_init(dsn=f"http://public@127.0.0.1:{free_port()}/1")
    with capture_logs():
        problem = assert_envelope(
            app.test_client().get("/crash"), 500, "internal_error"
        )
    assert re.fullmatch(r"[0-9a-f]{32}", problem["event_id"]), problem


def test_sentry_confirm_off_still_leaves_out_ids_the_sdk_will_drop(
    sentry_endpoint: t.Any, sentry_init: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the wait, a transport that is backing off (HTTP 429 seen) is
    asked before capturing: that event is never sent, no id is quoted."""
    import sentry_sdk

    monkeypatch.setenv("FLASK_DIAG_SENTRY_CONFIRM", "off")
    app, _ = make_flask_app()
    client = app.test_client()
    sentry_endpoint.rate_limit = 60
    sentry_init()
    with capture_logs():
        first = assert_envelope(client.get("/crash"), 500, "internal_error")
    assert re.fullmatch(r"[0-9a-f]{32}", first["event_id"]), first  # queued
    sentry_endpoint.wait_for_events(1)
    sentry_sdk.flush(timeout=5)  # the 429 has come back
    with capture_logs():
        second = assert_envelope(client.get("/crash"), 500, "internal_error")
    assert "event_id" not in second, second
    sentry_sdk.flush(timeout=5)
    assert len(sentry_endpoint.events) == 1


def test_sentry_slow_answer_waits_once_then_not_until_it_recovers(
    sentry_endpoint: t.Any, sentry_init: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sentry takes longer than ``FLASK_DIAG_SENTRY_CONFIRM``: the first error
    waits that long and quotes no id; the next ones do not wait while Sentry
    has not answered; once it accepted an event again, ids come back."""
    import time

    import sentry_sdk

    monkeypatch.setenv("FLASK_DIAG_SENTRY_CONFIRM", "0.5")
    app, _ = make_flask_app()
    client = app.test_client()
    sentry_endpoint.delay = 2.0
    sentry_init()
    timings = []
    problems = []
    for _ in range(2):
        started = time.monotonic()
        with capture_logs():
            problems.append(
                assert_envelope(client.get("/crash"), 500, "internal_error")
            )
        timings.append(time.monotonic() - started)
    assert all("event_id" not in p for p in problems), problems
    assert 0.5 <= timings[0] < 1.5, timings  # waited for the bound, no more
    assert timings[1] < 0.3, timings  # no second wait during the outage
    # Sentry recovers: the queued events are answered 2xx ...
    sentry_endpoint.delay = 0.0
    sentry_sdk.flush(timeout=10)
    assert len(sentry_endpoint.wait_for_events(2)) == 2
    # ... and the next error's id is quoted again, and is the one received.
    with capture_logs():
        problem = assert_envelope(client.get("/crash"), 500, "internal_error")
    assert "event_id" in problem, problem
    event = sentry_endpoint.wait_for_events(
        1, where=lambda e: e.event_id == problem.get("event_id")
    )
    assert event, problem


def test_sentry_print_envelopes_still_confirms(
    sentry_endpoint: t.Any,
    sentry_init: t.Any,
    fclient: t.Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``SENTRY_PRINT_ENVELOPES=1`` wraps sentry-sdk's transport in a printer
    posing as it; the outcome is read from the transport inside."""
    monkeypatch.setenv("SENTRY_PRINT_ENVELOPES", "1")
    client = sentry_init()
    assert type(client.transport).__name__ == "_EnvelopePrinterTransport"
    for _ in range(2):
        with capture_logs():
            response = fclient.get("/crash")
        problem = assert_envelope(response, 500, "internal_error")
        assert "event_id" in problem, problem
        sentry_endpoint.wait_for_events(
            1, where=lambda e, p=problem: e.event_id == p["event_id"]
        )


def test_sentry_slow_refusals_do_not_make_every_error_wait(
    sentry_endpoint: t.Any, sentry_init: t.Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway that answers 503 after longer than the bound: the first
    error waits the bound; the refusal, when it comes, keeps the next ones
    from waiting (it is no sign that Sentry is back)."""
    import time

    import sentry_sdk

    monkeypatch.setenv("FLASK_DIAG_SENTRY_CONFIRM", "0.3")
    app, _ = make_flask_app()
    client = app.test_client()
    sentry_endpoint.fail_status = 503
    sentry_endpoint.delay = 0.8
    sentry_init()
    timings = []
    for _ in range(3):
        started = time.monotonic()
        with capture_logs():
            response = client.get("/crash")
        timings.append(time.monotonic() - started)
        assert "event_id" not in assert_envelope(response, 500, "internal_error")
        sentry_sdk.flush(timeout=5)  # the 503 has come back
    assert timings[0] >= 0.3, timings
    assert max(timings[1:]) < 0.25, timings


def test_sentry_plain_wsgi_and_stream_failures(
    sentry_endpoint: t.Any, sentry_init: t.Any, wrapped: t.Any
) -> None:
    sentry_init()
    with capture_logs():
        response = Client(wrapped).get("/crash")
        streamed = run_wsgi(wrapped, environ_for("/stream-late"))
    problem = assert_envelope(response, 500, "internal_error")
    events = sentry_endpoint.wait_for_events(2)
    by_id = {e.event_id: e for e in events}
    event = by_id[problem["event_id"]]
    assert event.tags["request_id"] == response.headers["X-Request-ID"]
    assert event.exception_types[-1] == "RuntimeError"
    (late,) = [e for e in events if e.event_id != problem["event_id"]]
    assert late.tags["request_id"] == streamed.headers["X-Request-ID"]
    assert isinstance(streamed.error, RuntimeError)
