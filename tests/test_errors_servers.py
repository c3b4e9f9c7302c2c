"""The error envelope under real gunicorn (issue 3, pitfalls 1 and 5).

Every test starts gunicorn on 127.0.0.1 (``servers.py``; stopped by its pid
at teardown, whatever happens) and checks what a client sees: on every
error path ``requests.get(...).json()`` works, with the right status, the
problem members and the ``X-Request-ID`` header's id. Sentry events go to a
real HTTP endpoint on 127.0.0.1 (``sentry_endpoint.py``).
"""

from __future__ import annotations

import json
import re
import socket
import time
import typing as t
from pathlib import Path

import pytest
import requests
from servers import allowed
from servers import EXAMPLES
from servers import free_port
from servers import line_of
from servers import require_module
from servers import ServerProcess
from servers import uwsgi_command

pytestmark = pytest.mark.server

APPS = Path(__file__).resolve().parent / "apps"
PROBLEM_JSON = "application/problem+json"
MEMBERS = ("type", "title", "status", "detail", "instance", "code", "request_id")
TIMEOUT = 10.0
SECRET = "hunter2"


def assert_envelope(
    response: requests.Response, status: int, code: str
) -> dict[str, t.Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == PROBLEM_JSON
    problem = response.json()
    assert set(MEMBERS) <= set(problem), problem
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert SECRET not in response.text
    return t.cast(dict[str, t.Any], problem)


def log_lines(
    server: ServerProcess, event: str, request_id: str
) -> list[dict[str, t.Any]]:
    return server.wait_for_json_lines(
        lambda line: (
            line.get("event") == event and line.get("request_id") == request_id
        ),
        count=1,
    )


# -- pitfall 5: the example app ---------------------------------------------------


def test_pitfall5_example_every_error_is_json(gunicorn_server: t.Any) -> None:
    server = gunicorn_server("app:app", "-w", "2", cwd=EXAMPLES / "pitfall5_errors")
    url = server.url
    cases: list[tuple[str, str, dict[str, t.Any], int, str]] = [
        ("GET", "/cars/7", {}, 404, "not_found"),
        ("GET", "/nowhere", {}, 404, "not_found"),
        ("DELETE", "/cars/1", {}, 405, "method_not_allowed"),
        ("GET", "/admin", {}, 500, "internal_error"),
        ("GET", "/crash", {}, 500, "internal_error"),
        ("POST", "/cars", {"json": {}}, 422, "invalid_car"),
        ("POST", "/cars", {"data": "name=x"}, 415, "unsupported_media_type"),
        (
            "POST",
            "/cars",
            {"data": "{", "headers": {"Content-Type": "application/json"}},
            400,
            "bad_request",
        ),
    ]
    for method, path, kwargs, status, code in cases:
        response = requests.request(method, url + path, timeout=TIMEOUT, **kwargs)
        problem = assert_envelope(response, status, code)
        assert problem["instance"] == path
    assert allowed(requests.delete(url + "/cars/1", timeout=TIMEOUT)) == {
        "GET",
        "HEAD",
        "OPTIONS",
    }
    # The 200 "error" is the app's own answer: left as it is.
    legacy = requests.post(url + "/legacy/cars", timeout=TIMEOUT)
    assert legacy.status_code == 200 and legacy.json() == {"error": "name is required"}
    # Logged once, as JSON, with the response's request id.
    crash = requests.get(url + "/crash", timeout=TIMEOUT)
    (line,) = log_lines(server, "request failed", crash.headers["X-Request-ID"])
    assert line["status"] == 500 and line["code"] == "internal_error"
    assert line["pid"] == int(crash.headers["X-Diag-PID"])
    assert "ZeroDivisionError" in str(line["exception"])


def test_pitfall5_head_gets_headers_and_no_body(gunicorn_server: t.Any) -> None:
    server = gunicorn_server("app:app", cwd=EXAMPLES / "pitfall5_errors")
    for path, status in (("/nowhere", 404), ("/crash", 500), ("/cars/7", 404)):
        response = requests.head(server.url + path, timeout=TIMEOUT)
        assert response.status_code == status
        assert response.headers["Content-Type"] == PROBLEM_JSON
        assert response.content == b""
        assert "X-Request-ID" in response.headers
    response = requests.head(server.url + "/cars", timeout=TIMEOUT)
    assert response.status_code == 405 and "POST" in allowed(response)


@pytest.mark.parametrize(
    ("target", "cwd", "path", "sent", "after"),
    [
        pytest.param(
            "app:app",
            EXAMPLES / "pitfall5_errors",
            "/report",
            b"id,name\n1,Beetle\n2,2CV\n",
            ("/", {"cars": 2}),
            id="pitfall5-flask",
        ),
        pytest.param(
            "errors_apps:plain_app",
            APPS,
            "/stream",
            b"id,name\n",
            ("/", "ready"),
            id="plain-wsgi",
        ),
        pytest.param(
            "errors_apps:plain_app",
            APPS,
            "/write-then-fail",
            b"id,name\n",
            ("/", "ready"),
            id="plain-wsgi-write",
        ),
    ],
)
def test_stream_failure_closes_the_connection(
    gunicorn_server: t.Any,
    target: str,
    cwd: Path,
    path: str,
    sent: bytes,
    after: tuple[str, object],
) -> None:
    server = gunicorn_server(target, cwd=cwd)
    with requests.get(server.url + path, timeout=TIMEOUT, stream=True) as response:
        assert response.status_code == 200
        request_id = response.headers["X-Request-ID"]
        received = b""
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in response.iter_content(None):
                received += chunk
    assert received == sent  # no half JSON appended
    (line,) = log_lines(server, "response failed after it started", request_id)
    assert line["status"] == 200
    assert "the database went away" in str(line["exception"])
    # Not also reported as an error answered with a 500 the client never got
    # (the after-start line is written after it would have been).
    assert not [
        line
        for line in server.json_lines()
        if line.get("event") == "request failed"
        and line.get("request_id") == request_id
    ]
    # The worker goes on serving.
    next_path, answer = after
    response = requests.get(server.url + next_path, timeout=TIMEOUT)
    assert (response.json() if isinstance(answer, dict) else response.text) == answer


def test_an_answer_in_place_of_a_started_status_has_only_its_own_headers(
    gunicorn_server: t.Any,
) -> None:
    # gunicorn keeps the headers of a status that start_response(...,
    # exc_info) replaces: the envelope makes it forget them, or the 500 would
    # carry the download's headers too, two Content-Types and two lengths.
    server = gunicorn_server("errors_apps:flask_app", cwd=APPS)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET /export HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    names = [line.split(":", 1)[0].lower() for line in lines]
    headers = dict(line.split(": ", 1) for line in lines)
    assert status.startswith("HTTP/1.1 500 ")
    assert names.count("content-type") == 1 and names.count("content-length") == 1
    assert "x-export" not in names
    assert headers["Content-Type"] == PROBLEM_JSON
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body)["code"] == "internal_error"


# -- plain WSGI and Django under gunicorn ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/crash", 500, "internal_error"),
        ("GET", "/method", 405, "method_not_allowed"),
        ("GET", "/lookup", 404, "not_found"),
        ("GET", "/stock-page", 404, "not_found"),
        ("GET", "/nowhere", 404, "not_found"),
    ],
)
def test_plain_wsgi_under_gunicorn(
    gunicorn_server: t.Any, method: str, path: str, status: int, code: str
) -> None:
    server = gunicorn_server("errors_apps:plain_app", cwd=APPS)
    response = requests.request(method, server.url + path, timeout=TIMEOUT)
    problem = assert_envelope(response, status, code)
    assert problem["instance"] == path
    if status == 405:
        assert allowed(response) == {"GET"}
    if path == "/stock-page":
        assert problem["detail"] == "no such car"


@pytest.mark.parametrize("server_kind", ["gunicorn", "uwsgi"])
def test_file_wrapper_goes_to_the_server_untouched(
    server_kind: str, gunicorn_server: t.Any, server_factory: t.Any
) -> None:
    """The server's ``wsgi.file_wrapper`` object comes back from the whole
    stack as itself, so the server sends the file (sendfile, uWSGI's
    offload). gunicorn's wrapper is a class, uWSGI's a function."""
    if server_kind == "gunicorn":
        server = gunicorn_server("errors_apps:file_app", cwd=APPS)
    else:
        server = server_factory(
            uwsgi_command("--processes", "1", module="errors_apps:file_app"),
            cwd=APPS,
            name="uwsgi",
        )
    response = requests.get(server.url + "/file", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.content == (APPS / "errors_apps.py").read_bytes()
    assert "X-Request-ID" in response.headers
    offloaded = requests.get(server.url + "/offloaded", timeout=TIMEOUT)
    assert offloaded.text == "True"


def test_flask_extension_under_gunicorn(gunicorn_server: t.Any) -> None:
    """Flask's own errors, answered by ``Diag``'s handlers in a real worker."""
    server = gunicorn_server("errors_apps:flask_app", cwd=APPS)
    url = server.url
    problem = assert_envelope(
        requests.get(url + "/cars/1", timeout=TIMEOUT), 404, "not_found"
    )
    assert problem["detail"] == "no such car"
    # diag.map_exception(LookupError, 404): the exception's message stays out.
    response = requests.get(url + "/lookup", timeout=TIMEOUT)
    assert_envelope(response, 404, "not_found")
    assert "car 7" not in response.text
    response = requests.get(url + "/maintenance", timeout=TIMEOUT)
    assert_envelope(response, 503, "service_unavailable")
    assert response.headers["Retry-After"] == "60"
    # MAX_CONTENT_LENGTH = 1024
    response = requests.post(url + "/upload", data=b"x" * 2048, timeout=TIMEOUT)
    assert_envelope(response, 413, "content_too_large")
    assert requests.post(url + "/upload", data=b"x" * 10, timeout=TIMEOUT).text == "10"


def test_django_under_gunicorn(gunicorn_server: t.Any) -> None:
    require_module("django")
    server = gunicorn_server(
        "django_errors.wsgi:application",
        cwd=APPS,
        env={"DJANGO_PROPAGATE": "on"},
    )
    url = server.url
    assert_envelope(requests.get(url + "/nowhere", timeout=TIMEOUT), 404, "not_found")
    response = requests.post(url + "/get-only", timeout=TIMEOUT)
    assert_envelope(response, 405, "method_not_allowed")
    assert allowed(response) == {"GET"}
    assert_envelope(
        requests.get(url + "/crash", timeout=TIMEOUT), 500, "internal_error"
    )
    # DEBUG_PROPAGATE_EXCEPTIONS: the exception reaches the envelope's map.
    response = requests.get(url + "/missing-object", timeout=TIMEOUT)
    assert_envelope(response, 404, "not_found")
    own = requests.get(url + "/own-json", timeout=TIMEOUT)
    assert own.status_code == 422 and own.json()["error"] == "invalid car"
    head = requests.head(url + "/nowhere", timeout=TIMEOUT)
    assert head.status_code == 404 and head.content == b""
    assert head.headers["Content-Type"] == PROBLEM_JSON


# -- pitfall 1: the secret key under __main__ ----------------------------------------


def test_pitfall1_hint_under_gunicorn(gunicorn_server: t.Any) -> None:
    directory = EXAMPLES / "pitfall1_secret_key"
    server = gunicorn_server("app:app", "-w", "2", cwd=directory)
    # Reading the session works without a key; writing it is the 500.
    assert requests.get(server.url + "/", timeout=TIMEOUT).json() == {"user": None}
    response = requests.get(server.url + "/login", timeout=TIMEOUT)
    problem = assert_envelope(response, 500, "internal_error")
    line = line_of(directory / "app.py", "app.secret_key =")
    assert f"(app.py, line {line})" in problem["hint"]
    assert "__main__" in problem["hint"]
    assert "debug" not in problem  # app.debug is set under __main__ too
    (logged,) = log_lines(server, "request failed", problem["request_id"])
    assert "secret key" in str(logged["exception"])


def test_pitfall1_fixed_app_under_gunicorn(gunicorn_server: t.Any) -> None:
    server = gunicorn_server(
        "app_fixed:app",
        cwd=EXAMPLES / "pitfall1_secret_key",
        env={"SECRET_KEY": "test-only-secret"},
    )
    with requests.Session() as client:
        response = client.get(server.url + "/login", timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.json() == {"logged_in": "alice"}
        assert client.get(server.url + "/", timeout=TIMEOUT).json() == {"user": "alice"}


# -- Sentry ----------------------------------------------------------------------------


def serve_with_sentry(gunicorn_server: t.Any, dsn: str) -> t.Any:
    """The Flask test app under gunicorn, sentry-sdk initialised with ``dsn``."""
    return gunicorn_server(
        "errors_apps:flask_app", cwd=APPS, env={"DIAG_TEST_SENTRY_DSN": dsn}
    )


def test_sentry_event_id_in_the_body_under_gunicorn(
    gunicorn_server: t.Any, sentry_endpoint: t.Any
) -> None:
    server = serve_with_sentry(gunicorn_server, sentry_endpoint.dsn())
    for path in ("/crash", "/none"):
        response = requests.get(server.url + path, timeout=TIMEOUT)
        problem = assert_envelope(response, 500, "internal_error")
        assert re.fullmatch(r"[0-9a-f]{32}", problem["event_id"]), problem
        (event,) = sentry_endpoint.wait_for_events(
            1, where=lambda e, p=problem: e.event_id == p["event_id"]
        )
        assert event.tags["request_id"] == response.headers["X-Request-ID"]
        assert str(event.tags["worker.pid"]) == response.headers["X-Diag-PID"]
        assert event.tags["worker.thread"] == response.headers["X-Diag-Thread"]
    # A 4xx is no Sentry event; each 5xx was sent once.
    assert_envelope(
        requests.get(server.url + "/cars/1", timeout=TIMEOUT), 404, "not_found"
    )
    time.sleep(0.5)
    types = [e.exception_types[-1] for e in sentry_endpoint.events]
    assert sorted(types) == ["TypeError", "ZeroDivisionError"], types


def test_sentry_unreachable_changes_nothing_under_gunicorn(
    gunicorn_server: t.Any,
) -> None:
    closed = free_port()  # nothing listens there
    server = serve_with_sentry(gunicorn_server, f"http://public@127.0.0.1:{closed}/1")
    baseline = gunicorn_server("errors_apps:flask_app", cwd=APPS)
    for path, status, code in (
        ("/crash", 500, "internal_error"),
        ("/none", 500, "internal_error"),
        ("/cars/1", 404, "not_found"),
    ):
        started = time.monotonic()
        response = requests.get(server.url + path, timeout=TIMEOUT)
        # Connection refused is known at once: no wait for the whole
        # FLASK_DIAG_SENTRY_CONFIRM bound (2 s).
        assert time.monotonic() - started < 1.5
        problem = assert_envelope(response, status, code)
        expected = assert_envelope(
            requests.get(baseline.url + path, timeout=TIMEOUT), status, code
        )
        # The same body, and no event_id: Sentry never had the event.
        assert "event_id" not in problem, problem
        assert "event_id" not in expected
        assert {k: v for k, v in problem.items() if k != "request_id"} == {
            k: v for k, v in expected.items() if k != "request_id"
        }
    assert requests.get(server.url + "/", timeout=TIMEOUT).text == "ready"


def test_sentry_refusing_events_under_gunicorn(
    gunicorn_server: t.Any, sentry_endpoint: t.Any
) -> None:
    """Sentry answers 503 (an incident): the events reach it, no body quotes
    their ids; once it accepts again, the ids are back."""
    sentry_endpoint.fail_status = 503
    server = serve_with_sentry(gunicorn_server, sentry_endpoint.dsn())
    for path in ("/crash", "/none"):
        response = requests.get(server.url + path, timeout=TIMEOUT)
        problem = assert_envelope(response, 500, "internal_error")
        assert "event_id" not in problem, problem
    assert len(sentry_endpoint.wait_for_events(2)) == 2
    sentry_endpoint.fail_status = None
    # The first accepted event ends the outage for the worker; it may be
    # this request's own (its id then quoted) or it was sent too late.
    deadline = time.monotonic() + 10.0
    while True:
        response = requests.get(server.url + "/crash", timeout=TIMEOUT)
        problem = assert_envelope(response, 500, "internal_error")
        if "event_id" in problem or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "event_id" in problem, problem
    (event,) = sentry_endpoint.wait_for_events(
        1, where=lambda e: e.event_id == problem["event_id"]
    )
    assert event.tags["request_id"] == response.headers["X-Request-ID"]
