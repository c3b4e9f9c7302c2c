"""In-process tests of the request-tagging middleware.

The same behaviour on real servers is in ``test_tagging_servers.py``, and
Sentry tagging and fault injection in ``test_tagging_sentry.py``.
"""

from __future__ import annotations

import os
import re
import threading
import time
import typing as t

import pytest
import structlog
from flask import Flask
from flask import Response
from flask import stream_with_context
from werkzeug.test import Client
from werkzeug.wrappers import Request as WRequest
from werkzeug.wrappers import Response as WResponse

from flask_diag import context
from flask_diag import RequestTagging
from flask_diag import wrap
from flask_diag.context import clean_request_id
from flask_diag.context import ENVIRON_KEY
from flask_diag.context import new_request_id
from flask_diag.context import parse_traceparent
from flask_diag.testing import capture_logs
from flask_diag.testing import capture_signals

HEX32 = re.compile(r"[0-9a-f]{32}")


def _get(client: t.Any, *args: t.Any, **kwargs: t.Any) -> t.Any:
    """A request whose response is closed, as a real server closes it."""
    response = client.get(*args, **kwargs)
    response.close()
    return response


def test_headers_on_every_response(client: t.Any) -> None:
    response = _get(client, "/")
    assert response.status_code == 200
    assert HEX32.fullmatch(response.headers["X-Request-ID"])
    assert response.headers["X-Diag-PID"] == str(os.getpid())
    assert response.headers["X-Diag-Thread"] == threading.current_thread().name
    assert re.fullmatch(r"app;dur=\d+\.\d\d", response.headers["Server-Timing"])


def test_request_ids_are_unique(client: t.Any) -> None:
    ids = {_get(client, "/").headers["X-Request-ID"] for _ in range(200)}
    assert len(ids) == 200


def test_safe_incoming_request_id_is_reused_and_seen_by_the_app(
    diag_app: Flask,
) -> None:
    seen = {}

    @diag_app.get("/echo")
    def echo() -> str:
        from flask import request

        seen["header"] = request.headers["X-Request-ID"]
        seen["info"] = request.environ[ENVIRON_KEY].request_id
        return "ok"

    response = _get(diag_app.test_client(), "/echo", headers={"X-Request-ID": "abc-1"})
    assert response.headers["X-Request-ID"] == "abc-1"
    assert seen == {"header": "abc-1", "info": "abc-1"}


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("a\r\nSet-Cookie: pwned=1", id="crlf-injection"),
        pytest.param("a\nb", id="lf"),
        pytest.param("x" * 10_000, id="10kB"),
        pytest.param("x" * 129, id="129-chars"),
        pytest.param("caf\xc3\xa9", id="non-ascii-latin1-decoded"),
        pytest.param("café", id="non-ascii"),
        pytest.param("has space", id="space"),
        pytest.param('quote"', id="quote"),
        pytest.param("<script>alert(1)</script>", id="html"),
        pytest.param("", id="empty"),
    ],
)
def test_malformed_request_id_never_reaches_header_or_log(
    diag_app: Flask, raw: str
) -> None:
    structlog.configure(processors=[structlog.contextvars.merge_contextvars])
    seen = {}

    @diag_app.get("/echo")
    def echo() -> str:
        from flask import request

        seen["app"] = request.headers.get("X-Request-ID")
        return "ok"

    with capture_logs() as logs:
        response = _get(
            diag_app.test_client(), "/echo", environ_base={"HTTP_X_REQUEST_ID": raw}
        )
        structlog.get_logger().info("after")
    assert HEX32.fullmatch(response.headers["X-Request-ID"])
    assert raw not in response.headers.values()
    assert seen["app"] == response.headers["X-Request-ID"]
    for line in logs:
        assert raw not in repr(line) or raw == ""


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        pytest.param("abc", True, id="short"),
        pytest.param("A.b_c:d-1", True, id="charset"),
        pytest.param("x" * 128, True, id="128"),
        pytest.param("x" * 129, False, id="129"),
        pytest.param("a b", False, id="space"),
        pytest.param("a/b", False, id="slash"),
        pytest.param(None, False, id="none"),
    ],
)
def test_clean_request_id(value: str | None, ok: bool) -> None:
    assert (clean_request_id(value) is not None) is ok


def test_new_request_ids_change_after_fork_prefix() -> None:
    a, b = new_request_id(), new_request_id()
    assert a != b and a[:16] == b[:16] and HEX32.fullmatch(a)


def test_request_ids_stay_unique_across_batches_and_threads() -> None:
    # Ids are made 256 at a time: threads that empty a batch together each
    # make a new one, and no id is handed out twice.
    results: list[list[str]] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait(timeout=10)
        results.append([new_request_id() for _ in range(3000)])

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    ids = [request_id for batch in results for request_id in batch]
    assert len(ids) == 24000
    assert len(set(ids)) == len(ids)
    assert all(HEX32.fullmatch(request_id) for request_id in ids)
    assert len({request_id[:16] for request_id in ids}) == 1  # this process's


def test_a_forked_child_has_its_own_prefix_and_never_its_parents_ids() -> None:
    new_request_id()  # the parent's batch is started, not used up
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.write(write, " ".join(new_request_id() for _ in range(300)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_ids = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    parent_ids = {new_request_id() for _ in range(300)}
    assert len(child_ids) == 300
    assert not child_ids & parent_ids
    child_prefixes = {request_id[:16] for request_id in child_ids}
    assert len(child_prefixes) == 1  # the child's own, drawn after the fork
    assert child_prefixes.isdisjoint(request_id[:16] for request_id in parent_ids)


def test_a_thread_of_a_new_uwsgi_worker_never_takes_its_masters_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uWSGI forks without Python's fork hooks: a worker finds out at its
    # first request that its pid changed. While one thread makes the new
    # values (os.urandom lets others run), another that already finds the pid
    # current must find the new prefix too, not the master's.
    masters = new_request_id()[:16]  # the "master" made ids: a batch is open
    monkeypatch.setattr(context, "_CHECK_PID", True)
    monkeypatch.setattr(context, "_pid", -1)  # the master's pid, in the worker
    real_urandom = os.urandom
    taken: list[str] = []

    def urandom(size: int) -> bytes:
        if not taken:  # another thread's first request runs meanwhile
            taken.append("")
            info = context.init_request_info(
                context.RequestInfo.__new__(context.RequestInfo), {}, "X", True
            )
            taken.append(info.request_id)
        return real_urandom(size)

    monkeypatch.setattr(os, "urandom", urandom)
    context.init_request_info(
        context.RequestInfo.__new__(context.RequestInfo), {}, "X", True
    )
    assert HEX32.fullmatch(taken[1])
    assert taken[1][:16] != masters
    assert new_request_id()[:16] != masters


def test_init_request_info_refuses_none() -> None:
    with pytest.raises(TypeError):
        context.init_request_info(None, {}, "X", True)  # type: ignore[type-var]


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        pytest.param(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            id="valid",
        ),
        pytest.param(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", None, id="zero"
        ),
        pytest.param(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None, id="ff"
        ),
        pytest.param("garbage", None, id="garbage"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_traceparent(header: str | None, trace_id: str | None) -> None:
    assert parse_traceparent(header) == trace_id


def test_log_lines_carry_request_context_and_it_is_cleared(client: t.Any) -> None:
    structlog.configure(processors=[structlog.contextvars.merge_contextvars])
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with capture_logs() as logs:
        response = _get(client, "/", headers={"traceparent": traceparent})
    (line,) = logs
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["pid"] == os.getpid()
    assert line["thread"] == threading.current_thread().name
    assert line["method"] == "GET" and line["path"] == "/"
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert structlog.contextvars.get_contextvars() == {}


def test_context_is_cleared_when_the_app_raises() -> None:
    def boom(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        assert structlog.contextvars.get_contextvars()["path"] == "/boom"
        raise KeyError("boom")

    with pytest.raises(KeyError):
        Client(RequestTagging(boom)).get("/boom")
    assert structlog.contextvars.get_contextvars() == {}


def test_context_survives_into_a_streamed_body_and_is_cleared_after(
    diag_app: Flask,
) -> None:
    structlog.configure(processors=[structlog.contextvars.merge_contextvars])
    log = structlog.get_logger()

    @diag_app.get("/stream")
    def stream() -> Response:
        def body() -> t.Iterator[str]:
            for i in range(3):
                log.info("chunk", i=i)
                yield f"{i}\n"

        return Response(stream_with_context(body()))

    with capture_logs() as logs:
        response = diag_app.test_client().get("/stream")
        assert response.get_data() == b"0\n1\n2\n"
        assert (
            structlog.contextvars.get_contextvars()["request_id"]
            == (response.headers["X-Request-ID"])
        )
        response.close()
    assert [line["request_id"] for line in logs] == [
        response.headers["X-Request-ID"]
    ] * 3
    assert structlog.contextvars.get_contextvars() == {}


def test_previous_context_values_are_restored(client: t.Any) -> None:
    structlog.contextvars.bind_contextvars(request_id="outer", user="me")
    _get(client, "/")
    assert structlog.contextvars.get_contextvars() == {
        "request_id": "outer",
        "user": "me",
    }


def test_worker_headers_can_be_switched_off(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_DIAG_WORKER_HEADERS", "off")
    app.wsgi_app = wrap(app.wsgi_app)  # type: ignore[method-assign]
    response = _get(app.test_client(), "/")
    assert "X-Request-ID" in response.headers
    assert "X-Diag-PID" not in response.headers
    assert "X-Diag-Thread" not in response.headers


def test_server_timing_can_be_switched_off(app: Flask) -> None:
    app.wsgi_app = RequestTagging(app.wsgi_app, server_timing=False)  # type: ignore[method-assign]
    assert "Server-Timing" not in _get(app.test_client(), "/").headers


def test_custom_request_id_header(app: Flask) -> None:
    app.wsgi_app = RequestTagging(app.wsgi_app, request_id_header="X-Correlation-ID")  # type: ignore[method-assign]
    response = _get(app.test_client(), "/", headers={"X-Correlation-ID": "corr-7"})
    assert response.headers["X-Correlation-ID"] == "corr-7"
    assert "X-Request-ID" not in response.headers


def test_untrusted_incoming_id_is_replaced(app: Flask) -> None:
    app.wsgi_app = RequestTagging(app.wsgi_app, trust_request_id=False)  # type: ignore[method-assign]
    response = _get(app.test_client(), "/", headers={"X-Request-ID": "abc"})
    assert HEX32.fullmatch(response.headers["X-Request-ID"])


def test_app_own_request_id_header_is_not_duplicated(app: Flask) -> None:
    @app.get("/own")
    def own() -> Response:
        return Response("x", headers={"x-request-id": "app-chosen"})

    app.wsgi_app = RequestTagging(app.wsgi_app)  # type: ignore[method-assign]
    response = _get(app.test_client(), "/own")
    assert response.headers.getlist("X-Request-ID") == [
        response.headers["X-Request-ID"]
    ]
    assert response.headers["X-Request-ID"] != "app-chosen"


def test_app_id_header_is_found_after_many_other_header_names(app: Flask) -> None:
    # Header names seen not to be the id header are remembered (at most 256):
    # a made-up name per response neither grows that without bound nor hides
    # the app's own id header, in any case.
    @app.get("/named/<int:number>")
    def named(number: int) -> Response:
        return Response("x", headers={f"X-Made-Up-{number}": "1"})

    @app.get("/own/<name>")
    def own(name: str) -> Response:
        return Response("x", headers={name: "app-chosen"})

    tagging = RequestTagging(app.wsgi_app)
    app.wsgi_app = tagging  # type: ignore[method-assign]
    client = app.test_client()
    for name in ("X-Request-ID", "x-request-id", "X-Request-ID"):  # cache empty
        response = _get(client, f"/own/{name}")
        assert response.headers.getlist("X-Request-ID") == [
            response.headers["X-Request-ID"]
        ]
        assert response.headers["X-Request-ID"] != "app-chosen"
    for number in range(300):
        assert _get(client, f"/named/{number}").headers[f"X-Made-Up-{number}"] == "1"
    assert len(tagging._other_names) == 256
    for name in ("x-request-id", "X-REQUEST-ID", "X-Request-Id"):
        response = _get(client, f"/own/{name}")
        assert response.headers.getlist("X-Request-ID") == [
            response.headers["X-Request-ID"]
        ]
        assert response.headers["X-Request-ID"] != "app-chosen"


def test_plain_wsgi_app_gets_the_same_headers_and_context() -> None:
    structlog.configure(processors=[structlog.contextvars.merge_contextvars])

    def plain(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        structlog.get_logger().info("plain")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain"]

    with capture_logs() as logs:
        response = _get(Client(wrap(plain)), "/x")
    assert response.get_data() == b"plain"
    assert logs[0]["request_id"] == response.headers["X-Request-ID"]
    assert response.headers["X-Diag-PID"] == str(os.getpid())


def test_file_wrapper_responses_pass_through_untouched(tmp_path: t.Any) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"file body")

    class FileWrapper:
        def __init__(self, f: t.Any, block_size: int = 8192) -> None:
            self.f = f

        def __iter__(self) -> t.Iterator[bytes]:
            return iter(lambda: self.f.read(4), b"")

        def close(self) -> None:
            self.f.close()

    returned = {}

    def files(environ: dict[str, t.Any], start_response: t.Any) -> t.Any:
        start_response("200 OK", [("Content-Type", "text/plain")])
        returned["it"] = environ["wsgi.file_wrapper"](open(path, "rb"))  # noqa: SIM115
        return returned["it"]

    app = RequestTagging(files)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "wsgi.file_wrapper": FileWrapper,
    }
    result = app(environ, lambda status, headers, exc_info=None: None)
    assert result is returned["it"]
    assert b"".join(result) == b"file body"
    result.close()
    assert structlog.contextvars.get_contextvars() == {}


def test_signals_sent_and_a_raising_receiver_is_contained(client: t.Any) -> None:
    from flask_diag import signals

    def broken(sender: object, **kwargs: object) -> None:
        raise RuntimeError("receiver bug")

    signals.request_tagged.connect(broken)
    try:
        with capture_signals() as sent, capture_logs() as logs:
            response = _get(client, "/")
    finally:
        signals.request_tagged.disconnect(broken)
    assert response.status_code == 200 and response.get_data() == b"hello"
    names = [s.name for s in sent]
    assert names == ["request-tagged", "request-finished"]
    assert sent[0].kwargs["request_id"] == response.headers["X-Request-ID"]
    assert sent[1].kwargs["status"] == 200
    errors = [line for line in logs if line["event"] == "flask_diag internal error"]
    assert len(errors) == 1 and "receiver" in errors[0]["where"]


def test_access_log_line(app: Flask) -> None:
    app.wsgi_app = RequestTagging(app.wsgi_app, access_log=True)  # type: ignore[method-assign]
    with capture_logs() as logs:
        response = _get(app.test_client(), "/")
    (line,) = [x for x in logs if x["event"] == "request finished"]
    assert line["status"] == 200
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["duration_ms"] >= 0


def test_werkzeug_request_sees_cleaned_header() -> None:
    @WRequest.application
    def app(request: WRequest) -> WResponse:
        return WResponse(request.headers.get("X-Request-ID", ""))

    response = _get(Client(wrap(app)), "/", environ_base={"HTTP_X_REQUEST_ID": "a b"})
    assert response.get_data(as_text=True) == response.headers["X-Request-ID"]


def test_wrapping_twice_tags_once(app: Flask) -> None:
    app.wsgi_app = RequestTagging(RequestTagging(app.wsgi_app))  # type: ignore[method-assign]
    with capture_signals() as sent:
        response = _get(app.test_client(), "/")
    assert len(response.headers.getlist("X-Request-ID")) == 1
    assert len(response.headers.getlist("X-Diag-PID")) == 1
    assert [s.name for s in sent] == ["request-tagged", "request-finished"]


def test_request_info_in_threads_threading_does_not_know() -> None:
    """A thread started with ``_thread`` (as some servers do) is not in
    threading's registry until asked: the info still names it, safely."""
    import _thread

    from flask_diag.context import request_info

    names: list[str] = []
    done = threading.Event()

    def serve() -> None:
        try:
            names.append(request_info({"PATH_INFO": "/"}).thread)
            names.append(request_info({"PATH_INFO": "/"}).thread)  # cached now
        finally:
            done.set()

    _thread.start_new_thread(serve, ())
    assert done.wait(5)
    assert len(names) == 2 and names[0] == names[1], names
    assert names[0].startswith("Dummy-"), names


# -- PEP 3333 edge cases (found in review) ---------------------------------------


class _Body:
    """A response iterable that counts its ``close()`` calls."""

    def __init__(self) -> None:
        self.closes = 0

    def __iter__(self) -> t.Iterator[bytes]:
        return iter([b"x"])

    def close(self) -> None:
        self.closes += 1


def test_a_second_close_does_not_close_the_apps_iterable_again() -> None:
    body = _Body()

    def app(environ: t.Any, start_response: t.Any) -> _Body:
        start_response("200 OK", [])
        return body

    response = RequestTagging(app)(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None
    )
    list(response)
    response.close()  # type: ignore[attr-defined]
    response.close()  # type: ignore[attr-defined]
    assert body.closes == 1


def test_the_status_reported_is_the_one_the_server_took() -> None:
    # start_response(exc_info) after the headers went out: the server
    # re-raises and the response stays the 200 it sent.
    import io
    import sys
    import wsgiref.handlers

    def app(environ: t.Any, start_response: t.Any) -> t.Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first chunk"
        try:
            raise RuntimeError("boom mid-body")
        except RuntimeError:
            start_response("500 Internal Server Error", [], sys.exc_info())
        yield b"never"

    out = io.BytesIO()
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "x",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    handler = wsgiref.handlers.SimpleHandler(
        io.BytesIO(), out, io.StringIO(), environ, multithread=False
    )
    with capture_signals() as sent:
        handler.run(RequestTagging(app))
    assert out.getvalue().split(b"\r\n", 1)[0].endswith(b" 200 OK")
    (finished,) = [s for s in sent if s.name == "request-finished"]
    assert finished.kwargs["status"] == 200


def test_a_failing_log_sink_does_not_keep_request_finished() -> None:
    def sink(logger: object, method_name: str, event_dict: t.Any) -> t.NoReturn:
        raise OSError("log sink down")

    structlog.configure(processors=[sink])

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    with capture_signals() as sent:
        response = RequestTagging(app, access_log=True)(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None
        )
        list(response)
        response.close()  # type: ignore[attr-defined]
    assert [s.kwargs["status"] for s in sent if s.name == "request-finished"] == [200]


def test_a_trace_id_left_by_an_unclosed_response_is_not_the_next_requests() -> None:
    # A server that never closes a response (against PEP 3333) leaves its
    # context set on the thread: the next request without a traceparent
    # must not log that trace id as its own.
    seen: list[dict[str, t.Any]] = []

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        seen.append(structlog.contextvars.get_contextvars())
        start_response("200 OK", [])
        return [b"ok"]

    tagged = RequestTagging(app)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    first = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_TRACEPARENT": trace}

    def unclosed() -> None:
        list(tagged(first, lambda *a: None))  # never closed

    def both() -> None:
        unclosed()
        response = tagged({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None)
        list(response)
        response.close()  # type: ignore[attr-defined]

    thread = threading.Thread(target=both)
    thread.start()
    thread.join(10)
    assert seen[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert "trace_id" not in seen[1]


def test_server_timing_is_never_negative_nor_rounded_wrong() -> None:
    """A request another middleware saw first keeps that middleware's start
    time; one from another clock (later than now) shows 0, never a negative
    duration. Durations are rounded to hundredths of a millisecond."""
    from flask_diag.context import ENVIRON_KEY
    from flask_diag.context import RequestInfo

    def app(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def with_start(started: float) -> t.Any:
        def outer(environ: dict[str, t.Any], start_response: t.Any) -> t.Any:
            environ[ENVIRON_KEY] = RequestInfo(
                "r-1", None, os.getpid(), "t", "GET", "/", started
            )
            return RequestTagging(app)(environ, start_response)

        return outer

    future = Client(with_start(time.perf_counter() + 60)).get("/")
    assert future.headers["Server-Timing"] == "app;dur=0.00"
    past = Client(with_start(time.perf_counter() - 1.23456)).get("/")
    value = float(past.headers["Server-Timing"].removeprefix("app;dur="))
    assert re.fullmatch(r"app;dur=\d+\.\d\d", past.headers["Server-Timing"])
    assert 1234.5 <= value < 1300
