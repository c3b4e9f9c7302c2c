"""Loopback deadlock detection and the watchdog, in-process.

"This server" is a real listening socket of the test process that never
accepts: a server busy with the one request it can serve. The guard gets its
profile explicitly (capacity 1 on that listener), so every HTTP client's
call to it must fail at once, before anything reaches the socket. A second,
real HTTP server in a thread plays the external API. Real servers
(werkzeug, gunicorn) are in ``test_loopback_servers.py``.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import json
import multiprocessing
import pickle
import select
import socket
import sys
import threading
import time
import typing as t
import urllib.request
from collections.abc import Iterator

import gevent
import httpx
import pytest
import requests
import urllib3
from flask import Flask
from flask import request
from flask import Response
from flask import stream_with_context
from werkzeug.test import create_environ

import flask_diag
from flask_diag import Diag
from flask_diag import DiagHTTPError
from flask_diag import loopback
from flask_diag import LoopbackDeadlockError
from flask_diag import server as server_module
from flask_diag import signals
from flask_diag import watchdog
from flask_diag.loopback import _urls_in
from flask_diag.loopback import LoopbackGuard
from flask_diag.loopback import LoopbackWarning
from flask_diag.server import Listener
from flask_diag.server import ServerProfile
from flask_diag.settings import Settings
from flask_diag.testing import capture_logs
from flask_diag.testing import capture_signals
from flask_diag.watchdog import Watchdog

TIMEOUT = 10.0
FAST = 1.0  # a loopback deadlock must be reported within this many seconds


# -- fixtures ------------------------------------------------------------------


class Busy:
    """A listening socket nobody accepts on: a server busy with one request."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def profile(self, **fields: t.Any) -> ServerProfile:
        fields.setdefault("workers", 1)
        fields.setdefault("threads", 1)
        return ServerProfile(
            "werkzeug",
            worker_class="single",
            listeners=(Listener.from_socket(self.sock),),
            **fields,
        )

    def nothing_arrived(self) -> bool:
        """No connection ever reached the socket's accept queue."""
        readable, _, _ = select.select([self.sock], [], [], 0.05)
        return not readable


@pytest.fixture
def busy() -> Iterator[Busy]:
    server = Busy()
    try:
        yield server
    finally:
        server.sock.close()


class Api:
    """A real HTTP server in a thread; records what it received."""

    def __init__(self, delay: float = 0.0, callback: tuple[str, int] | None = None):
        self.received: list[tuple[str, str, bytes]] = []
        self.delay = delay
        self.callback = callback
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                owner.received.append((self.command, self.path, body))
                if owner.callback is not None:
                    # Call the busy server back, as a recognition API would
                    # fetch the image: the connection stays queued.
                    with socket.create_connection(owner.callback, timeout=TIMEOUT):
                        owner.release.wait(owner.delay)
                elif owner.delay:
                    owner.release.wait(owner.delay)
                payload = b'{"label": "cat"}'
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the caller went away

            do_GET = do_POST = handle_any

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT)


@pytest.fixture
def api() -> Iterator[t.Callable[..., Api]]:
    started: list[Api] = []

    def start(**options: t.Any) -> Api:
        server = Api(**options)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


def make_app(
    profile: ServerProfile | None,
    *,
    mode: str = "raise",
    callback_after: float = 0.5,
) -> Flask:
    """A Flask app with the guard (given ``profile``) inside Diag's stack."""
    app = Flask("loopback_test")

    def call(client: str, url: str, **kwargs: t.Any) -> str:
        if client == "requests":
            return requests.post(url, timeout=5, **kwargs).text
        if client == "httpx":
            if isinstance(kwargs.get("data"), str):  # httpx: raw text is content
                kwargs["content"] = kwargs.pop("data")
            return httpx.post(url, timeout=5, **kwargs).text
        if client == "httpx-async":

            async def go() -> str:
                async with httpx.AsyncClient(timeout=5) as session:
                    return (await session.post(url, **kwargs)).text

            return asyncio.run(go())
        if client == "urllib":
            data = kwargs.get("data") or b""
            if isinstance(data, str):
                data = data.encode()
            with urllib.request.urlopen(url, data=data, timeout=5) as response:
                return str(response.read().decode())
        if client == "urllib3":
            with urllib3.PoolManager() as pool:
                return str(
                    pool.request("POST", url, body=kwargs.get("data")).data.decode()
                )
        if client == "http.client":
            parts = urllib3.util.parse_url(url)
            conn = http.client.HTTPConnection(parts.host, parts.port, timeout=5)
            try:
                conn.request("POST", parts.request_uri, body=kwargs.get("data"))
                return conn.getresponse().read().decode()
            finally:
                conn.close()
        if client == "socket":
            parts = urllib3.util.parse_url(url)
            with socket.create_connection((parts.host, parts.port), timeout=5):
                return "connected"
        raise AssertionError(client)

    @app.post("/call/<client>")
    def call_view(client: str) -> dict[str, str]:
        payload = request.get_json()
        kwargs = payload.get("kwargs", {})
        return {"answer": call(client, payload["url"], **kwargs)}

    @app.post("/catch-and-wrap")
    def catch_and_wrap() -> str:
        try:
            requests.get(request.get_json()["url"], timeout=5)
        except LoopbackDeadlockError as exc:
            raise RuntimeError("the report service failed") from exc
        return "unreachable"

    @app.get("/stream")
    def stream() -> Response:
        def generate() -> Iterator[str]:
            yield "guarded: "
            yield str(loopback.is_guarded())

        return Response(stream_with_context(generate()))

    @app.post("/in-thread")
    def in_thread() -> str:
        url = request.get_json()["url"]
        parts = urllib3.util.parse_url(url)
        box: list[str] = []

        def connect() -> None:
            with socket.create_connection((parts.host, parts.port), timeout=5):
                box.append("connected")

        thread = threading.Thread(target=connect)
        thread.start()
        thread.join(TIMEOUT)
        return box[0]

    app.wsgi_app = LoopbackGuard(  # type: ignore[method-assign]
        app.wsgi_app,
        profile=profile,
        loopback=mode,
        callback_after=callback_after,
    )
    Diag(app, loopback="off", watchdog="off")
    return app


def post(app: Flask, path: str, **json_body: t.Any) -> t.Any:
    with app.test_client() as client:
        return client.post(path, json=json_body)


# -- direct self-calls ---------------------------------------------------------

CLIENTS = [
    "requests",
    "httpx",
    "httpx-async",
    "urllib",
    "urllib3",
    "http.client",
    "socket",
]


@pytest.mark.parametrize("client", CLIENTS)
def test_self_call_fails_fast(busy: Busy, client: str) -> None:
    app = make_app(busy.profile())
    started = time.monotonic()
    with capture_logs() as logs:
        response = post(app, f"/call/{client}", url=f"{busy.url}/report")
    assert time.monotonic() - started < FAST
    assert response.status_code == 508
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["code"] == "loopback_deadlock"
    assert f"127.0.0.1:{busy.port}" in problem["detail"]
    assert "werkzeug development server, threaded=False" in problem["detail"]
    assert "threaded=True" in problem["hint"]
    assert problem["server_model"] == busy.profile().describe()
    if client not in ("socket", "httpx-async"):
        assert problem["own_url"] == f"{busy.url}/report"
        assert problem["outbound"].startswith(f"POST {busy.url}/report")
    assert busy.nothing_arrived()  # stopped before the connect
    (line,) = [log for log in logs if log["event"] == "loopback deadlock"]
    assert (line["kind"], line["action"]) == ("self_call", "raised")
    assert line["log_level"] == "warning"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_self_call_through_a_wildcard_listener(host: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen(4)
        port = sock.getsockname()[1]
        profile = ServerProfile(
            "gunicorn",
            worker_class="sync",
            workers=1,
            threads=1,
            listeners=(Listener.from_socket(sock),),
        )
        response = post(
            make_app(profile), "/call/requests", url=f"http://{host}:{port}/"
        )
        assert response.status_code == 508
        assert "gunicorn sync worker, 1 worker" in response.get_json()["detail"]
        assert "-k gthread" in response.get_json()["hint"]


def test_other_local_server_is_never_flagged(
    busy: Busy, api: t.Callable[..., Api]
) -> None:
    external = api()
    app = make_app(busy.profile(), mode="strict")
    with capture_logs() as logs:
        for client in CLIENTS:
            response = post(app, f"/call/{client}", url=f"{external.url}/x")
            assert response.status_code == 200, (client, response.get_data())
    assert not [log for log in logs if log["event"] == "loopback deadlock"]


def test_error_wrapped_by_the_app_still_answers_loopback_deadlock(busy: Busy) -> None:
    response = post(make_app(busy.profile()), "/catch-and-wrap", url=busy.url)
    assert response.status_code == 508
    assert response.get_json()["code"] == "loopback_deadlock"


def test_error_wrapped_and_raised_through_the_guard_is_raised_as_ours(
    busy: Busy,
) -> None:
    # A plain WSGI app (no framework turning the exception into a 500): the
    # client's wrapper propagates out of the app's call, and the guard raises
    # a copy of what really happened from it.
    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        try:
            requests.get(busy.url, timeout=5)
        except LoopbackDeadlockError as exc:
            raise RuntimeError("the report service failed") from exc
        raise AssertionError("the self-call was not stopped")

    guard = LoopbackGuard(app, profile=busy.profile())
    with pytest.raises(LoopbackDeadlockError) as raised:
        guard(create_environ("/report"), lambda *args: lambda data: None)
    wrapper = raised.value.__cause__
    assert isinstance(wrapper, RuntimeError)
    original = wrapper.__cause__
    assert isinstance(original, LoopbackDeadlockError)
    assert raised.value is not original
    assert raised.value.problem() == original.problem()
    assert not loopback._requests
    assert busy.nothing_arrived()


def _connect_to(address: tuple[str, int]) -> str:
    try:
        with socket.create_connection(address, timeout=FAST):
            return "connected"
    except LoopbackDeadlockError:
        return "LoopbackDeadlockError"


def _report_from_child(queue: t.Any, address: tuple[str, int]) -> None:
    queue.put((_connect_to(address), loopback.is_guarded()))


def _answer(start_response: t.Any, text: str) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [text.encode()]


def test_a_process_forked_by_the_view_is_not_guarded(busy: Busy) -> None:
    # The child's copy of the stack still holds the guard's call, but the
    # child serves no request of this server: its connections are its own.
    context = multiprocessing.get_context("fork")
    address = busy.sock.getsockname()
    seen: list[object] = []

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        queue = context.Queue()
        child = context.Process(target=_report_from_child, args=(queue, address))
        child.start()
        try:
            seen.append(queue.get(timeout=TIMEOUT))
        finally:
            child.join(TIMEOUT)
            if child.is_alive():
                child.kill()
        seen.append(_connect_to(address))  # the request itself
        return _answer(start_response, "ok")

    LoopbackGuard(app, profile=busy.profile())(create_environ("/"), lambda *a: None)
    assert seen == [("connected", False), "LoopbackDeadlockError"]


@pytest.mark.parametrize(
    "inner_options",
    [
        pytest.param({"loopback": "off"}, id="inner-off"),
        pytest.param(
            {"profile": ServerProfile("werkzeug", worker_class="single", listeners=())},
            id="inner-stepped-aside",
        ),
    ],
)
def test_an_app_called_in_process_keeps_the_outer_guard(
    busy: Busy, inner_options: dict[str, t.Any]
) -> None:
    # The request calls another WSGI app in-process, whose own guard is off
    # or stepped aside: the request is still the outer guard's.
    def inner_app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        return _answer(start_response, _connect_to(busy.sock.getsockname()))

    inner = LoopbackGuard(inner_app, **inner_options)

    def app(environ: t.Any, start_response: t.Any) -> t.Iterable[bytes]:
        return inner(create_environ("/inner"), start_response)

    outer = LoopbackGuard(app, profile=busy.profile())
    assert b"".join(outer(create_environ("/"), lambda *a: None)) == (
        b"LoopbackDeadlockError"
    )
    assert busy.nothing_arrived()


def test_an_app_called_in_process_leaves_the_request_listed(busy: Busy) -> None:
    # The inner guard's end is not the request's: what the hook keeps for
    # the request (its outbound calls, for the callback detector) stays.
    other = Busy()  # a server that is not this one
    seen: dict[str, object] = {}
    inner = LoopbackGuard(
        lambda environ, start_response: _answer(start_response, ""),
        profile=busy.profile(),
    )

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        seen["other"] = _connect_to(other.sock.getsockname())
        b"".join(inner(create_environ("/inner"), lambda *a: None))
        listed = loopback._requests.get(threading.get_ident())
        seen["listed"] = listed is not None and listed.environ is environ
        return _answer(start_response, "ok")

    try:
        LoopbackGuard(app, profile=busy.profile())(create_environ("/"), lambda *a: None)
    finally:
        other.sock.close()
    assert seen == {"other": "connected", "listed": True}
    assert not loopback._requests


def test_a_greenlet_the_view_starts_is_guarded(busy: Busy) -> None:
    # Not a gevent server (the guard steps aside there): a greenlet the view
    # starts runs in the request's thread and holds it up like the view.
    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        job = gevent.spawn(_connect_to, busy.sock.getsockname())
        job.join(TIMEOUT)
        return _answer(start_response, str(job.value))

    guard = LoopbackGuard(app, profile=busy.profile())
    assert b"".join(guard(create_environ("/"), lambda *a: None)) == (
        b"LoopbackDeadlockError"
    )
    assert busy.nothing_arrived()


def test_the_error_is_an_http_error_not_a_connection_error() -> None:
    error = LoopbackDeadlockError(
        "GET http://127.0.0.1:8000/x calls this server.",
        hint="Run threads.",
        outbound="GET http://127.0.0.1:8000/x (requests)",
        own_url="http://127.0.0.1:8000/x",
        server_model="gunicorn sync worker, 1 worker",
    )
    # Not an OSError: no HTTP client wraps or retries it.
    assert not isinstance(error, OSError)
    assert isinstance(error, DiagHTTPError)
    assert flask_diag.LoopbackDeadlockError is LoopbackDeadlockError
    assert str(error) == "GET http://127.0.0.1:8000/x calls this server. Run threads."
    problem = error.problem()
    assert (problem["status"], problem["code"]) == (508, "loopback_deadlock")
    assert problem["own_url"] == "http://127.0.0.1:8000/x"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.detail, copy.hint, copy.outbound) == (
        error.detail,
        error.hint,
        error.outbound,
    )
    assert error.copy() is not error and error.copy().problem() == problem


def test_a_thread_of_its_own_is_not_guarded(busy: Busy) -> None:
    # A background thread does not hold up the request: no deadlock.
    response = post(make_app(busy.profile()), "/in-thread", url=busy.url)
    assert response.get_data(as_text=True) == "connected"


def test_guard_covers_the_call_and_leaves_nothing_behind(busy: Busy) -> None:
    # The view is guarded; the body is sent by the server after it, and a
    # response the test client never closes leaves no trace in the thread.
    app = make_app(busy.profile())
    with app.test_client() as client:
        response = client.get("/stream")
        assert threading.get_ident() not in loopback._requests
        assert response.get_data(as_text=True) == "guarded: False"
    assert not loopback._requests


def test_warn_mode_only_warns(busy: Busy) -> None:
    app = make_app(busy.profile(), mode="warn")
    with (
        pytest.warns(LoopbackWarning, match="calls this server"),
        capture_logs() as logs,
    ):
        response = post(
            app,
            "/call/socket",
            url=busy.url,
        )
    assert response.get_json() == {"answer": "connected"}
    (line,) = [log for log in logs if log["event"] == "loopback deadlock"]
    assert line["action"] == "warned"


# -- URLs of this server handed to someone else --------------------------------


@pytest.mark.parametrize(
    ("client", "kwargs"),
    [
        pytest.param("requests", {"json": {"image_url": "{own}"}}, id="requests-json"),
        pytest.param("requests", {"data": {"image_url": "{own}"}}, id="requests-form"),
        pytest.param("requests", {"params": {"url": "{own}"}}, id="requests-query"),
        pytest.param("httpx", {"json": {"image_url": "{own}"}}, id="httpx-json"),
        pytest.param("httpx", {"params": {"url": "{own}"}}, id="httpx-query"),
        pytest.param("urllib", {"data": "image_url={own}"}, id="urllib-body"),
        pytest.param("urllib3", {"data": '{{"u": "{own}"}}'}, id="urllib3-body"),
        pytest.param("http.client", {"data": "url={own}"}, id="http.client-body"),
    ],
)
def test_handoff_warns_before_sending(
    busy: Busy, api: t.Callable[..., Api], client: str, kwargs: dict[str, t.Any]
) -> None:
    external = api()
    own = f"{busy.url}/static/cat.png"
    kwargs = json.loads(json.dumps(kwargs).replace("{own}", own))
    if isinstance(kwargs.get("data"), str):
        kwargs["data"] = kwargs["data"].format(own=own)
    app = make_app(busy.profile())
    with (
        pytest.warns(LoopbackWarning, match="hands over") as warned,
        capture_logs() as logs,
    ):
        response = post(
            app, f"/call/{client}", url=f"{external.url}/recognize", kwargs=kwargs
        )
    assert response.status_code == 200
    assert len(external.received) == 1
    (line,) = [log for log in logs if log["event"] == "loopback deadlock"]
    assert (line["kind"], line["action"], line["own_url"]) == ("handoff", "warned", own)
    assert line["outbound"].startswith("POST http://127.0.0.1:")
    assert "send the data itself" in line["hint"]
    # The warning points at the app's line that made the call, not at us.
    assert warned[0].filename == __file__


@pytest.mark.parametrize(
    "client", ["requests", "httpx", "urllib", "urllib3", "http.client"]
)
def test_handoff_strict_fails_before_anything_is_sent(
    busy: Busy, api: t.Callable[..., Api], client: str
) -> None:
    external = api()
    own = f"{busy.url}/static/cat.png"
    app = make_app(busy.profile(), mode="strict")
    started = time.monotonic()
    response = post(
        app,
        f"/call/{client}",
        url=f"{external.url}/recognize",
        kwargs={"data": f'{{"image_url": "{own}"}}'},
    )
    assert time.monotonic() - started < FAST
    assert response.status_code == 508
    problem = response.get_json()
    assert problem["code"] == "loopback_deadlock"
    assert problem["own_url"] == own
    assert own in problem["detail"]
    assert not external.received


def test_handoff_on_a_reused_connection_is_seen_in_the_bytes_sent(
    busy: Busy, api: t.Callable[..., Api]
) -> None:
    external = api()
    own = f"{busy.url}/static/cat.png"
    app = Flask("reused")

    @app.get("/")
    def view() -> str:
        with requests.Session() as session:
            session.get(f"{external.url}/warm-up", timeout=5)  # opens the connection
            return session.post(
                f"{external.url}/recognize", json={"u": own}, timeout=5
            ).text

    app.wsgi_app = LoopbackGuard(
        app.wsgi_app, profile=busy.profile(), loopback="strict"
    )  # type: ignore[method-assign]
    Diag(app, loopback="off", watchdog="off")
    response = app.test_client().get("/")
    assert response.status_code == 508
    assert [path for _, path, _ in external.received] == ["/warm-up"]


def test_own_name_behind_a_proxy(busy: Busy) -> None:
    app = make_app(busy.profile(), mode="strict")
    with app.test_client() as client:
        response = client.post(
            "/call/requests",
            json={"url": "http://myapp.invalid/report"},
            headers={"Host": "myapp.invalid"},
        )
    assert response.status_code == 508
    assert "own name 'myapp.invalid'" in response.get_json()["detail"]
    # In the default mode a name is only a warning: another backend may
    # answer behind the proxy. (.invalid never resolves: the call then fails.)
    app = make_app(busy.profile())
    with pytest.warns(LoopbackWarning, match="own name"), app.test_client() as client:
        response = client.post(
            "/call/requests",
            json={"url": "http://myapp.invalid/report"},
            headers={"Host": "myapp.invalid"},
        )
    assert response.status_code == 500


@pytest.mark.parametrize(
    ("texts", "target", "expected"),
    [
        pytest.param(
            [b'{"u": "http://a:1/x.png"}'], None, ["http://a:1/x.png"], id="json"
        ),
        pytest.param(
            [b'{"u": "http:\\/\\/a:1\\/x.png"}'],
            None,
            ["http://a:1/x.png"],
            id="json-escaped",
        ),
        pytest.param(
            [b"u=http%3A%2F%2Fa%3A1%2Fx.png"], None, ["http://a:1/x.png"], id="form"
        ),
        pytest.param(
            [b"GET /r?u=http%3A%2F%2Fa%3A1%2Fx HTTP/1.1\r\n"],
            None,
            ["http://a:1/x"],
            id="query",
        ),
        pytest.param(
            [], "http://api/r?u=http://a:1/x", ["http://a:1/x"], id="nested-in-target"
        ),
        pytest.param([], "http://a:1/x", [], id="target-itself"),
        pytest.param(["see http://a:1/x."], None, ["http://a:1/x"], id="trailing-dot"),
        pytest.param([b"no url here"], None, [], id="none"),
    ],
)
def test_urls_in_payloads(
    texts: list[str | bytes], target: str | None, expected: list[str]
) -> None:
    assert _urls_in(texts, target) == expected


# -- servers that can serve a second request -----------------------------------


def test_bounded_server_warns_once_may_deadlock_under_load(
    api: t.Callable[..., Api],
) -> None:
    own = api()  # answers: this server has a second worker free
    profile = ServerProfile(
        "gunicorn",
        worker_class="sync",
        workers=2,
        threads=1,
        listeners=(Listener("inet", "127.0.0.1", own.port),),
    )
    app = make_app(profile, mode="strict")
    loopback._warned_under_load.clear()
    with (
        pytest.warns(LoopbackWarning, match="deadlocks under load"),
        capture_logs() as logs,
    ):
        for _ in range(3):
            response = post(app, "/call/requests", url=f"{own.url}/ping")
            assert response.status_code == 200
    lines = [log for log in logs if log["event"] == "loopback deadlock"]
    assert [(line["kind"], line["action"]) for line in lines] == [
        ("under_load", "warned")
    ]
    assert "gunicorn sync worker, 2 workers" in lines[0]["message"]


@pytest.mark.parametrize(
    "profile",
    [
        pytest.param(
            ServerProfile(
                "werkzeug", worker_class="threaded", workers=1, multithread=True
            ),
            id="thread-per-request",
        ),
        pytest.param(
            ServerProfile("gunicorn", worker_class="gevent", workers=1, threads=1000),
            id="gevent",
        ),
        pytest.param(ServerProfile("unknown", workers=1, threads=1), id="no-listener"),
    ],
)
def test_unbounded_servers_are_left_alone(profile: ServerProfile, busy: Busy) -> None:
    profile = ServerProfile(
        **{
            **profile.__dict__,
            "listeners": ()
            if profile.server == "unknown"
            else busy.profile().listeners,
        }
    )
    app = make_app(profile, mode="strict")
    seen: list[object] = []

    @app.before_request
    def guarded() -> None:
        # Stepped aside: the hook would find no request to guard.
        seen.append(loopback.is_guarded())

    response = post(app, "/call/socket", url=busy.url)
    assert response.get_json() == {"answer": "connected"}
    assert seen == [False]


def test_test_client_is_not_a_server() -> None:
    app = Flask("plain")
    seen = {}

    @app.get("/")
    def view() -> str:
        seen["profile"] = request.environ[server_module.ENVIRON_KEY]
        seen["guarded"] = loopback.is_guarded()
        return "ok"

    Diag(app)
    app.test_client().get("/")
    assert seen["profile"].listeners == ()
    assert seen["guarded"] is False


def test_off_is_a_pass_through(busy: Busy) -> None:
    app = make_app(busy.profile(), mode="off")
    assert post(app, "/call/socket", url=busy.url).get_json() == {"answer": "connected"}


def test_diag_puts_the_guard_inside_the_envelope(
    busy: Busy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loopback, "detect", lambda environ, frame: busy.profile())
    monkeypatch.setenv("FLASK_DIAG_LOOPBACK", "strict")
    app = Flask("wired")

    @app.get("/")
    def view() -> str:
        return requests.get(busy.url, timeout=5).text

    Diag(app)
    response = app.test_client().get("/")
    assert response.status_code == 508
    assert response.headers["X-Request-ID"] == response.get_json()["request_id"]
    assert Settings.load().loopback == "strict"  # read from the environment


def test_signal_names_the_call(busy: Busy) -> None:
    with capture_signals() as sent:
        post(make_app(busy.profile()), "/call/requests", url=f"{busy.url}/x")
    (signal,) = [s for s in sent if s.name == "loopback-detected"]
    assert signal.kwargs["kind"] == "self_call"
    assert signal.kwargs["action"] == "raised"
    assert signal.kwargs["own_url"] == f"{busy.url}/x"
    assert isinstance(signal.sender, LoopbackGuard)


# -- a callback stuck in the queue ---------------------------------------------


@pytest.mark.parametrize("mode", ["raise", "strict"])
def test_callback_stuck_in_the_queue(
    busy: Busy, api: t.Callable[..., Api], mode: str
) -> None:
    # The API gets no URL it could be caught by, calls this server back and
    # waits (bounded) for an answer that cannot come.
    external = api(delay=3.0, callback=("127.0.0.1", busy.port))
    app = make_app(busy.profile(), mode=mode, callback_after=0.2)
    started = time.monotonic()
    with capture_logs() as logs:
        response = post(app, "/call/requests", url=f"{external.url}/recognize")
    elapsed = time.monotonic() - started
    lines = [log for log in logs if log.get("kind") == "callback"]
    assert len(lines) == 1
    line = lines[0]
    assert line["queued"] >= 1
    assert line["from_peer"] is True
    assert "readinto" in line["stack"] or "recv" in line["stack"]
    assert line["request_id"]
    if mode == "strict":
        assert line["action"] == "broken"
        assert elapsed < 2.0
        assert response.status_code == 508
        assert "waiting in its queue" not in response.get_json()["detail"]
        assert "wait in its queue" in response.get_json()["detail"]
    else:
        assert line["action"] == "warned"
        assert response.status_code == 200  # the API gave up after its delay
        assert elapsed >= 2.9


# -- the watchdog --------------------------------------------------------------


def take_a_nap(seconds: float) -> None:
    time.sleep(seconds)


def watchdog_app(limit: float) -> Flask:
    app = Flask("watchdog_test")

    @app.get("/nap")
    def nap() -> str:
        take_a_nap(float(request.args["seconds"]))
        return "rested"

    @app.get("/wait-on")
    def wait_on() -> str:
        port = int(request.args["port"])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", "/")
            conn.getresponse()
        except TimeoutError:
            pass
        finally:
            conn.close()
        return "waited"

    app.wsgi_app = Watchdog(app.wsgi_app, watchdog=limit)  # type: ignore[method-assign]
    return app


def stuck_lines(
    logs: list[t.MutableMapping[str, t.Any]],
) -> list[t.MutableMapping[str, t.Any]]:
    return [log for log in logs if log["event"] == "request stuck"]


def test_watchdog_logs_a_stuck_request_once() -> None:
    app = watchdog_app(0.2)
    with capture_logs() as logs, capture_signals() as sent:
        response = app.test_client().get(
            "/nap?seconds=0.8", headers={"X-Request-ID": "nap-1"}
        )
        assert response.get_data(as_text=True) == "rested"
    (line,) = stuck_lines(logs)
    assert line["log_level"] == "warning"
    assert line["request_id"] == "nap-1"
    assert line["path"] == "/nap"
    assert line["thread"] == threading.current_thread().name
    assert 0.2 <= line["duration_s"] < 0.8
    assert "in take_a_nap" in line["stack"]
    assert line["stack"].rstrip().endswith("time.sleep(seconds)")
    assert line["blocked_in_socket"] is False
    (signal,) = [s for s in sent if s.name == "request-stuck"]
    assert signal.kwargs["request_id"] == "nap-1"
    assert "take_a_nap" in signal.kwargs["stack"]


def test_watchdog_reports_each_stuck_request_of_a_thread_once() -> None:
    """Two slow requests in a row on one thread, the watchdog wrapped twice:
    one line for each request."""
    app = watchdog_app(0.2)
    app.wsgi_app = Watchdog(app.wsgi_app, watchdog=0.2)  # type: ignore[method-assign]
    client = app.test_client()
    with capture_logs() as logs:
        for request_id in ("slow-1", "slow-2"):
            client.get("/nap?seconds=0.7", headers={"X-Request-ID": request_id})
    assert [line["request_id"] for line in stuck_lines(logs)] == ["slow-1", "slow-2"]


class FakeGreenlet:
    """What the watchdog reads of a greenlet: its parent and, while it
    waits, its frame (here the frame of the thread running the test)."""

    def __init__(self, ident: int) -> None:
        self.parent = object()
        self.ident = ident

    @property
    def gr_frame(self) -> t.Any:
        return sys._current_frames().get(self.ident)


def test_watchdog_lists_requests_served_in_greenlets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under gevent or eventlet (patched or not) a waiting request is on no
    thread's stack: it is listed by greenlet, and its stack is the one of the
    greenlet."""
    import types

    greenlet = FakeGreenlet(threading.get_ident())
    module = types.SimpleNamespace(getcurrent=lambda: greenlet)
    monkeypatch.setitem(sys.modules, "greenlet", module)
    monkeypatch.setattr(watchdog, "_watch_pid", -1)  # choose again
    monkeypatch.setattr(watchdog, "_current_task", None)
    app = watchdog_app(0.2)
    with capture_logs() as logs:
        app.test_client().get("/nap?seconds=0.7", headers={"X-Request-ID": "gr-1"})
    assert watchdog._current_task is not None
    (line,) = stuck_lines(logs)
    assert line["request_id"] == "gr-1"
    assert "in take_a_nap" in line["stack"]
    assert watchdog._registered == {}


def test_greenlet_servers_are_recognised(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    assert watchdog._greenlet_getcurrent() is None  # this process: threads
    main = types.SimpleNamespace(parent=None)
    monkeypatch.setitem(
        sys.modules, "greenlet", types.SimpleNamespace(getcurrent=lambda: main)
    )
    assert watchdog._greenlet_getcurrent() is None  # a thread's main greenlet
    spawned = types.SimpleNamespace(parent=main)
    getcurrent = lambda: spawned  # noqa: E731
    monkeypatch.setitem(
        sys.modules, "greenlet", types.SimpleNamespace(getcurrent=getcurrent)
    )
    assert watchdog._greenlet_getcurrent() is getcurrent
    monkeypatch.setitem(sys.modules, "greenlet", types.SimpleNamespace())
    assert watchdog._greenlet_getcurrent() is None  # an API we do not know


def test_watchdog_off_outside_does_not_hide_one_that_is_on() -> None:
    app = watchdog_app(0.2)
    app.wsgi_app = Watchdog(app.wsgi_app, watchdog="off")  # type: ignore[method-assign]
    with capture_logs() as logs:
        app.test_client().get("/nap?seconds=0.6", headers={"X-Request-ID": "in-1"})
    assert [line["request_id"] for line in stuck_lines(logs)] == ["in-1"]


def test_watchdog_skips_a_request_that_ended_while_its_stack_was_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import traceback

    ended = threading.Event()
    format_stack = traceback.format_stack

    def slow_format(frame: t.Any) -> list[str]:
        lines = format_stack(frame)
        ended.wait(5)  # the request ends meanwhile
        return lines

    monkeypatch.setattr(watchdog.traceback, "format_stack", slow_format)
    app = watchdog_app(0.2)
    with capture_logs() as logs:
        app.test_client().get("/nap?seconds=0.5")
        ended.set()
        time.sleep(0.4)  # the monitor finishes its report, or not
    assert stuck_lines(logs) == []


def test_watchdog_is_quiet_for_quick_requests() -> None:
    app = watchdog_app(0.5)
    with capture_logs() as logs:
        for _ in range(5):
            app.test_client().get("/nap?seconds=0")
        time.sleep(0.7)
    assert stuck_lines(logs) == []


def test_watchdog_names_a_socket_wait_on_our_own_address(busy: Busy) -> None:
    app = watchdog_app(0.2)
    with capture_logs() as logs:

        @app.before_request
        def mark_server() -> None:
            request.environ[server_module.ENVIRON_KEY] = busy.profile()

        app.test_client().get(f"/wait-on?port={busy.port}")
    (line,) = stuck_lines(logs)
    assert line["blocked_in_socket"] is True
    assert line["blocked_on"] == f"127.0.0.1:{busy.port}"
    assert line["own_address"] is True


def test_watchdog_sends_a_sentry_message(
    sentry_init: t.Any, sentry_endpoint: t.Any
) -> None:
    sentry_init()
    app = watchdog_app(0.2)
    app.test_client().get("/nap?seconds=0.6", headers={"X-Request-ID": "nap-2"})
    (event,) = sentry_endpoint.wait_for_events(1)
    assert event.message.startswith("Request stuck for")
    assert event.data["level"] == "warning"
    assert event.tags["request_id"] == "nap-2"
    assert "take_a_nap" in event.data["contexts"]["stuck request"]["stack"]


def test_watchdog_off_is_a_pass_through() -> None:
    app = Flask("x")

    @app.get("/")
    def view() -> str:
        # Whether anything watches this thread's request while it runs.
        return repr(watchdog.under_watch().get(threading.get_ident()))

    app.wsgi_app = Watchdog(app.wsgi_app, watchdog="off")  # type: ignore[method-assign]
    assert app.wsgi_app.limit is None
    assert app.test_client().get("/").get_data(as_text=True) == "None"
    # The control: with a limit, the same view sees its request watched.
    app.wsgi_app = Watchdog(app.wsgi_app.app, watchdog=5)  # type: ignore[method-assign]
    assert app.test_client().get("/").get_data(as_text=True).endswith(", 5.0)")
    assert Settings.load(environ={"FLASK_DIAG_WATCHDOG": "2.5"}).watchdog == 2.5
    assert Settings.load(environ={"FLASK_DIAG_WATCHDOG": "off"}).watchdog is None
    with pytest.raises(flask_diag.DiagConfigError, match="number of seconds"):
        Settings.load(environ={"FLASK_DIAG_WATCHDOG": "-1"})
    with pytest.raises(flask_diag.DiagConfigError, match="raise, strict, warn, off"):
        Settings.load(environ={"FLASK_DIAG_LOOPBACK": "yes"})
    assert signals.request_stuck is signals.namespace.signal("request-stuck")
