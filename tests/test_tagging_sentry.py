"""Sentry tagging, and "never break the app" under injected faults.

Events are checked as Sentry's ingestion receives them: sentry-sdk sends them
over HTTP to a real endpoint on 127.0.0.1 (``sentry_endpoint.py``), so the
scopes, event processors, serialisation and transport all take part. The
tags flask_diag must put on every event of a request: ``request_id`` (the
``X-Request-ID`` of the response), ``worker.pid``, ``worker.thread``, and
``trace_id`` for a W3C ``traceparent``.

The fault-injection tests run each request twice, through the app alone and
through the app wrapped by flask_diag, with the same fault, and compare what
the server would send, byte for byte, except flask_diag's own headers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sentry_sdk
import structlog
from flask import Flask
from flask import request
from flask import Response
from sentry_endpoint import ReceivedEvent
from sentry_endpoint import SentryEndpoint
from sentry_sdk.integrations.wsgi import SentryWsgiMiddleware
from sentry_sdk.transport import Transport
from werkzeug.test import create_environ

import flask_diag.sentry
from flask_diag import Diag
from flask_diag import signals
from flask_diag import wrap
from flask_diag.testing import capture_logs

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

APPS = Path(__file__).resolve().parent / "apps"
HOST = "127.0.0.1"
#: flask_diag's own response headers: the only difference it may make.
DIAG_HEADERS = frozenset(
    {"x-request-id", "x-diag-pid", "x-diag-thread", "server-timing"}
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
INTERNAL_ERROR = "flask_diag internal error"


# -- helpers -----------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What a WSGI server would send for one request."""

    status: str | None = None
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    #: ``"Type: message"`` of an exception that escaped to the server.
    raised: str | None = None
    seconds: float = 0.0

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def app_part(self) -> tuple[t.Any, ...]:
        """Everything but flask_diag's own headers, in the order sent."""
        own = [(k, v) for k, v in self.headers if k.lower() not in DIAG_HEADERS]
        return (self.status, own, self.body, self.raised)


def call(
    app: WSGIApplication, path: str = "/", headers: dict[str, str] | None = None
) -> Outcome:
    """Serve one request as a WSGI server does: iterate, then ``close()``."""
    out = Outcome()
    chunks: list[bytes] = []
    environ = create_environ(path, headers=headers)

    def start_response(
        status: str, response_headers: list[tuple[str, str]], exc_info: t.Any = None
    ) -> Callable[[bytes], object]:
        out.status = status
        out.headers = list(response_headers)
        return chunks.append

    started = time.perf_counter()
    try:
        iterable = app(environ, start_response)
        try:
            for chunk in iterable:
                chunks.append(chunk)
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
    except Exception as exc:
        out.raised = f"{type(exc).__name__}: {exc}"
    out.seconds = time.perf_counter() - started
    out.body = b"".join(chunks)
    return out


def is_error(type_name: str) -> Callable[[ReceivedEvent], bool]:
    return lambda event: type_name in event.exception_types


def is_message(text: str) -> Callable[[ReceivedEvent], bool]:
    return lambda event: event.message == text


def assert_request_tags(
    event: ReceivedEvent, headers: t.Mapping[str, str] | Outcome
) -> None:
    """The event carries the request's id, worker pid and thread as tags."""
    get = headers.header if isinstance(headers, Outcome) else headers.get
    tags = event.tags
    assert tags.get("request_id") == get("X-Request-ID"), tags
    assert str(tags.get("worker.pid")) == get("X-Diag-PID"), tags
    assert tags.get("worker.thread") == get("X-Diag-Thread"), tags
    # What the endpoint received is the real envelope of this event.
    assert event.envelope_headers["event_id"] == event.event_id


def sentry_flask_app() -> Flask:
    """A Flask app whose views raise, log and capture messages.

    ``TESTING`` stays off: an unhandled error becomes a 500 response, as on
    a real server, and the Flask integration captures it on the way.
    """
    app = Flask("sentry_flask_app")

    @app.get("/boom")
    def boom() -> str:
        raise ZeroDivisionError("boom")

    @app.get("/message")
    def message() -> str:
        structlog.get_logger().info("in view")
        sentry_sdk.capture_message(request.query_string.decode() or "hi")
        return "sent"

    return app


def plain_app(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """The same views as a bare WSGI callable, no Flask."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise ZeroDivisionError("escaped")
    if path == "/message":
        structlog.get_logger().info("in view")
        sentry_sdk.capture_message(environ.get("QUERY_STRING") or "hi")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


# -- the endpoint itself -------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "encoding"),
    [
        pytest.param({}, "gzip", id="gzip-default"),
        pytest.param(
            {"_experiments": {"transport_compression_level": 0}}, None, id="plain"
        ),
    ],
)
def test_endpoint_reads_what_the_sdk_sends(
    sentry_endpoint: SentryEndpoint,
    sentry_init: Callable[..., t.Any],
    options: dict[str, t.Any],
    encoding: str | None,
) -> None:
    sentry_init(**options)
    event_id = sentry_sdk.capture_message("over http")
    (event,) = sentry_endpoint.wait_for_events(1)
    assert event.event_id == event_id == event.envelope_headers["event_id"]
    assert event.message == "over http"
    assert event.http_headers.get("Content-Encoding") == encoding
    assert "sentry_key=public" in event.http_headers["X-Sentry-Auth"]
    assert event.envelope.project == "1"
    assert sentry_endpoint.errors == []


# -- 1. Flask: events carry the request's tags -----------------------------------


@pytest.mark.parametrize(
    ("path", "status", "match"),
    [
        pytest.param("/boom", 500, is_error("ZeroDivisionError"), id="unhandled-error"),
        pytest.param("/message", 200, is_message("hi"), id="capture-message"),
    ],
)
def test_flask_events_carry_request_tags(
    sentry_endpoint: SentryEndpoint,
    sentry_init: Callable[..., t.Any],
    path: str,
    status: int,
    match: Callable[[ReceivedEvent], bool],
) -> None:
    sentry_init()
    app = sentry_flask_app()
    Diag(app)
    response = app.test_client().get(path)
    response.close()
    assert response.status_code == status
    assert response.headers["X-Diag-PID"] == str(os.getpid())
    assert response.headers["X-Diag-Thread"] == threading.current_thread().name
    sentry_sdk.flush(timeout=5)  # everything sent: a duplicate would show
    (event,) = sentry_endpoint.wait_for_events(1, where=match)
    assert_request_tags(event, response.headers)


@dataclasses.dataclass
class GunicornProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL to its own process group after a bounded wait."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
    # The group was created for this process (start_new_session): workers
    # it may leave behind are ours too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        process.wait(10)


@pytest.fixture
def gunicorn_app(
    tmp_path: Path, http: requests.Session
) -> Iterator[Callable[..., GunicornProcess]]:
    """``gunicorn_app(spec, env=...)``: gunicorn sync, 1 worker, tests/apps.

    A private helper (``servers.py`` has the shared one): waits until the
    app answers, bounded; the process is always stopped by its pid.
    """
    started: list[GunicornProcess] = []

    def start(app_spec: str, *, env: dict[str, str]) -> GunicornProcess:
        port = _free_port()
        full_env = {
            k: v
            for k, v in os.environ.items()
            if k != "FLASK_DIAG" and not k.startswith("FLASK_DIAG_")
        }
        full_env.update(env)
        full_env["PYTHONUNBUFFERED"] = "1"
        log_path = tmp_path / f"gunicorn-{len(started)}.log"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            "1",
            "--worker-class",
            "sync",
            "--no-control-socket",
            app_spec,
        ]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=APPS,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = GunicornProcess(process, port, log_path)
        started.append(server)
        deadline = time.monotonic() + 20.0
        while True:
            if process.poll() is not None:
                pytest.fail(f"gunicorn exited:\n{server.log_text()}")
            with contextlib.suppress(requests.RequestException):
                if http.get(server.url + "/", timeout=1).status_code == 200:
                    return server
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not answer in 20s:\n{server.log_text()}")
            time.sleep(0.05)

    try:
        yield start
    finally:
        for server in started:
            _stop(server.process)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session that ignores proxy settings from the environment."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


@pytest.mark.server
def test_gunicorn_events_carry_worker_tags(
    sentry_endpoint: SentryEndpoint,
    gunicorn_app: Callable[..., GunicornProcess],
    http: requests.Session,
) -> None:
    server = gunicorn_app(
        "sentry_app:app", env={"DIAG_TEST_SENTRY_DSN": sentry_endpoint.dsn()}
    )
    boom = http.get(server.url + "/boom", timeout=10)
    message = http.get(
        server.url + "/message", headers={"X-Request-ID": "gunicorn-msg-1"}, timeout=10
    )
    assert boom.status_code == 500
    assert message.status_code == 200
    assert message.headers["X-Request-ID"] == "gunicorn-msg-1"
    # The worker answered, not the master.
    assert boom.headers["X-Diag-PID"] != str(server.process.pid)
    (error,) = sentry_endpoint.wait_for_events(1, where=is_error("ZeroDivisionError"))
    (captured,) = sentry_endpoint.wait_for_events(
        1, where=is_message("hi from gunicorn")
    )
    assert_request_tags(error, boom.headers)
    assert_request_tags(captured, message.headers)
    assert error.tags["request_id"] != captured.tags["request_id"]


# -- 2. plain WSGI: Sentry's own request scope, and no leaks ---------------------


@pytest.mark.parametrize(
    "order",
    [
        pytest.param("sentry-outside", id="SentryWsgiMiddleware(wrap(app))"),
        pytest.param("sentry-inside", id="wrap(SentryWsgiMiddleware(app))"),
    ],
)
@pytest.mark.parametrize(
    "errors",
    [
        pytest.param("off", id="escapes-to-server"),
        pytest.param("json", id="error-envelope"),
    ],
)
def test_exception_escaping_plain_app_is_captured_with_tags(
    sentry_endpoint: SentryEndpoint,
    sentry_init: Callable[..., t.Any],
    order: str,
    errors: str,
) -> None:
    sentry_init()
    if order == "sentry-outside":
        app: WSGIApplication = SentryWsgiMiddleware(wrap(plain_app, errors=errors))
    else:
        app = wrap(SentryWsgiMiddleware(plain_app), errors=errors)
    outcome = call(app, "/boom", headers={"X-Request-ID": "escaped-1"})
    if errors == "off":
        assert outcome.raised == "ZeroDivisionError: escaped"
    else:
        assert outcome.raised is None
        assert outcome.status is not None and outcome.status.startswith("500 ")
        assert outcome.header("X-Request-ID") == "escaped-1"
    sentry_sdk.flush(timeout=5)  # everything sent: a duplicate would show
    (event,) = sentry_endpoint.wait_for_events(1, where=is_error("ZeroDivisionError"))
    assert event.tags["request_id"] == "escaped-1"
    assert event.tags["worker.pid"] == os.getpid()
    assert event.tags["worker.thread"] == threading.current_thread().name
    if errors == "off":
        # Captured by Sentry's WSGI middleware as the exception left the app,
        # so the tags were on the scope that middleware captures with.
        assert event.data["exception"]["values"][-1]["mechanism"]["type"] == "wsgi"


def test_plain_app_messages_are_tagged_per_request(
    sentry_endpoint: SentryEndpoint, sentry_init: Callable[..., t.Any]
) -> None:
    sentry_init()
    app = wrap(plain_app)  # no SentryWsgiMiddleware: flask_diag scopes it
    first = call(app, "/message?first", headers={"X-Request-ID": "first-1"})
    second = call(app, "/message?second")
    sentry_sdk.capture_message("outside")
    events = sentry_endpoint.wait_for_events(
        3, where=lambda e: e.message in {"first", "second", "outside"}
    )
    by_message = {event.message: event for event in events}
    assert first.header("X-Request-ID") == "first-1"
    assert_request_tags(by_message["first"], first)
    assert_request_tags(by_message["second"], second)
    assert by_message["second"].tags["request_id"] != "first-1"
    outside = by_message["outside"].tags
    assert not {"request_id", "worker.pid", "worker.thread"} & set(outside), outside


# -- 3. W3C trace id --------------------------------------------------------------


@pytest.mark.parametrize("stack", ["flask", "plain-wsgi"])
def test_traceparent_trace_id_is_tagged_and_logged(
    sentry_endpoint: SentryEndpoint, sentry_init: Callable[..., t.Any], stack: str
) -> None:
    sentry_init()
    if stack == "flask":
        flask_app = sentry_flask_app()
        Diag(flask_app)
        app: WSGIApplication = flask_app
    else:
        app = wrap(plain_app)
    with capture_logs() as logs:
        traced = call(app, "/message?traced", headers={"traceparent": TRACEPARENT})
        untraced = call(app, "/message?untraced")
    assert traced.raised is None and untraced.raised is None
    events = sentry_endpoint.wait_for_events(
        2, where=lambda e: e.message in {"traced", "untraced"}
    )
    by_message = {event.message: event for event in events}
    assert by_message["traced"].tags["trace_id"] == TRACE_ID
    assert_request_tags(by_message["traced"], traced)
    assert "trace_id" not in by_message["untraced"].tags
    view_lines = [line for line in logs if line["event"] == "in view"]
    assert len(view_lines) == 2, logs
    assert view_lines[0]["trace_id"] == TRACE_ID
    assert view_lines[0]["request_id"] == traced.header("X-Request-ID")
    assert "trace_id" not in view_lines[1]
    assert view_lines[1]["request_id"] == untraced.header("X-Request-ID")


# -- 4. fault injection: the app's response is unchanged --------------------------

PATHS = [
    pytest.param("/", id="bytes"),
    pytest.param("/stream", id="stream"),
    pytest.param("/boom", id="unhandled-error"),
    pytest.param("/message", id="capture-message"),
]
CAPTURING = {"/boom", "/message"}


def fault_app(*, diag: bool, **options: t.Any) -> Flask:
    """The app under test; ``diag=False`` is the reference.

    Error envelopes are off (``errors="off"``): they change error responses
    on purpose. Everything else flask_diag does must leave the response as
    the app made it.
    """
    app = Flask("fault_app")

    @app.get("/")
    def index() -> Response:
        response = Response(b"own \x00\xff body", 203, mimetype="application/x-own")
        response.headers["X-App"] = "own"
        response.set_cookie("session", "s1")
        response.headers.add("Vary", "Cookie")
        return response

    @app.get("/stream")
    def stream() -> Response:
        return Response(iter([b"one ", b"two ", b"three"]), headers={"X-App": "s"})

    @app.get("/boom")
    def boom() -> str:
        raise ZeroDivisionError("boom")

    @app.get("/message")
    def message() -> tuple[str, int, dict[str, str]]:
        sentry_sdk.capture_message("fault test")
        return "captured", 201, {"X-App": "message"}

    if diag:
        Diag(app, errors="off", **options)
    return app


def assert_unchanged(plain: Outcome, diag: Outcome) -> None:
    assert diag.app_part() == plain.app_part()
    if plain.raised is None:
        # flask_diag's own work still happened around the fault.
        assert diag.header("X-Request-ID")
        assert diag.header("X-Diag-PID") == str(os.getpid())


@pytest.fixture(params=["refused", "hanging"])
def dead_sentry_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A DSN on 127.0.0.1 where Sentry does not answer.

    ``refused``: the port is bound but never listens, so connecting fails at
    once. ``hanging``: it listens but never accepts, so the transport's
    request hangs until the socket is closed at teardown (before the client
    is closed, when this fixture is requested after ``sentry_init``).
    """
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        if request.param == "hanging":
            sock.listen(16)
        yield f"http://public@{HOST}:{sock.getsockname()[1]}/1"


@pytest.mark.parametrize("path", PATHS)
def test_fault_sentry_unreachable(
    sentry_init: Callable[..., t.Any], dead_sentry_dsn: str, path: str
) -> None:
    seen: list[dict[str, t.Any]] = []

    def before_send(event: dict[str, t.Any], hint: object) -> dict[str, t.Any]:
        seen.append(event)
        return event

    sentry_init(dsn=dead_sentry_dsn, before_send=before_send, shutdown_timeout=1)
    plain = call(fault_app(diag=False), path)
    diag = call(fault_app(diag=True), path)
    assert_unchanged(plain, diag)
    assert diag.seconds < 2.0
    if path in CAPTURING:
        # Sentry did try to send the events (and they had our tags).
        assert len(seen) == 2
        assert seen[-1]["tags"]["request_id"] == diag.header("X-Request-ID")


class BrokenTransport(Transport):
    """A transport whose ``capture_envelope`` raises while ``broken``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.broken = True

    def capture_envelope(self, envelope: t.Any) -> None:
        self.calls += 1
        if self.broken:
            raise ConnectionError("transport down")


@pytest.mark.parametrize("path", PATHS)
def test_fault_transport_raises(sentry_init: Callable[..., t.Any], path: str) -> None:
    transport = BrokenTransport()
    sentry_init(transport=transport)
    try:
        plain = call(fault_app(diag=False), path)
        calls_plain = transport.calls
        with capture_logs() as logs:
            diag = call(fault_app(diag=True), path)
    finally:
        transport.broken = False  # let the teardown flush cleanly
    assert_unchanged(plain, diag)
    if path in CAPTURING:
        assert calls_plain > 0  # the fault was really hit
        assert transport.calls == 2 * calls_plain
    # The transport's failure is the app's (sentry-sdk's) to report, not ours.
    assert [line for line in logs if line["event"] == INTERNAL_ERROR] == []


@pytest.mark.parametrize("path", PATHS)
def test_fault_signal_receivers_raise(path: str) -> None:
    calls: list[tuple[str, str, dict[str, t.Any]]] = []
    connected = []
    # Two failing receivers and a good one per signal: whatever the order
    # blinker calls them in, one failure comes before another receiver.
    for sig in (signals.request_tagged, signals.request_finished):
        for name, broken in [("broken-1", True), ("good", False), ("broken-2", True)]:

            def receiver(
                sender: object,
                _sig: str = sig.name,
                _name: str = name,
                _broken: bool = broken,
                **kwargs: t.Any,
            ) -> None:
                calls.append((_sig, _name, kwargs))
                if _broken:
                    raise RuntimeError(f"receiver {_name} failed")

            sig.connect(receiver, weak=False)
            connected.append((sig, receiver))
    try:
        plain = call(fault_app(diag=False), path)
        assert calls == []
        with capture_logs() as logs:
            diag = call(fault_app(diag=True), path)
    finally:
        for sig, receiver in connected:
            sig.disconnect(receiver)
    assert_unchanged(plain, diag)
    request_id = diag.header("X-Request-ID")
    assert sorted((sig, name) for sig, name, _ in calls) == [
        ("request-finished", "broken-1"),
        ("request-finished", "broken-2"),
        ("request-finished", "good"),
        ("request-tagged", "broken-1"),
        ("request-tagged", "broken-2"),
        ("request-tagged", "good"),
    ]
    assert {kwargs["request_id"] for _, _, kwargs in calls} == {request_id}
    assert diag.status is not None
    assert {
        kwargs["status"] for sig, _, kwargs in calls if sig == "request-finished"
    } == {int(diag.status.split()[0])}
    errors = [line for line in logs if line["event"] == INTERNAL_ERROR]
    assert len(errors) == 4, logs
    assert all(line["log_level"] == "error" for line in errors)
    assert all("signal receiver" in line["where"] for line in errors)
    assert {type(line["exc_info"][1]) for line in errors} == {RuntimeError}


def _broken_sink(
    logger: object, method_name: str, event_dict: t.MutableMapping[str, t.Any]
) -> t.NoReturn:
    raise RuntimeError("log sink down")


@pytest.mark.parametrize("path", PATHS)
def test_fault_log_sink_raises(path: str, capsys: pytest.CaptureFixture[str]) -> None:
    attempts: list[str] = []

    def sink(
        logger: object, method_name: str, event_dict: t.MutableMapping[str, t.Any]
    ) -> t.NoReturn:
        attempts.append(event_dict["event"])
        _broken_sink(logger, method_name, event_dict)

    structlog.configure(processors=[sink])
    plain = call(fault_app(diag=False), path)
    assert attempts == []
    diag = call(fault_app(diag=True, access_log=True), path)
    assert_unchanged(plain, diag)
    # flask_diag tried its access log line, then to report that failure.
    assert attempts == ["request finished", INTERNAL_ERROR]
    assert (
        "flask_diag internal error in logging the finished request: RuntimeError"
        " (logging it failed too)"
    ) in capsys.readouterr().err
    assert structlog.contextvars.get_contextvars() == {}


@pytest.mark.parametrize("path", PATHS)
def test_fault_sentry_tagging_raises(
    sentry_endpoint: SentryEndpoint,
    sentry_init: Callable[..., t.Any],
    monkeypatch: pytest.MonkeyPatch,
    path: str,
) -> None:
    sentry_init()

    def broken(info: object) -> t.NoReturn:
        raise RuntimeError("sentry bridge bug")

    monkeypatch.setattr(flask_diag.sentry, "enter_request_scope", broken)
    plain = call(fault_app(diag=False), path)
    with capture_logs() as logs:
        diag = call(fault_app(diag=True), path)
    assert_unchanged(plain, diag)
    errors = [line for line in logs if line["event"] == INTERNAL_ERROR]
    assert [line["where"] for line in errors] == ["tagging the Sentry scope"], logs
    assert str(errors[0]["exc_info"][1]) == "sentry bridge bug"
    assert structlog.contextvars.get_contextvars() == {}
    if path in CAPTURING:
        # Sentry itself still reports the app's events, both times.
        sentry_endpoint.wait_for_events(
            2, where=lambda e: bool(e.exception_types) or e.message == "fault test"
        )
