"""Pitfall 6 end to end: a real PostgreSQL server and real gunicorn gthread
workers.

``examples/pitfall6_session/app.py`` has one view per leak kind, their clean
versions and the module-global session of pitfall 6; ``app_fixed.py`` is the
same app done right. PostgreSQL runs on 127.0.0.1 (``postgres_server.py``),
with a database whose ``idle_session_timeout`` is a few seconds for the real
reproduction of the failure users see. Every server is stopped at teardown by
its own pid, whatever happened.
"""

from __future__ import annotations

import itertools
import re
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from postgres_server import IDLE_TIMEOUT
from postgres_server import PostgresServer
from servers import EXAMPLES
from servers import ServerProcess

pytestmark = pytest.mark.server

APP_DIR = EXAMPLES / "pitfall6_session"
TIMEOUT = 10.0
GRACEFUL = ("--graceful-timeout", "1")


def line_of(filename: str, pattern: str) -> int:
    lines = (APP_DIR / filename).read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if re.search(pattern, line):
            return number
    raise AssertionError(pattern)


@pytest.fixture
def serve(
    gunicorn_server: t.Any, postgres_server: PostgresServer
) -> t.Callable[..., ServerProcess]:
    """``serve(module, database="diag", *gunicorn_args, **env)``."""

    def start(
        module: str, *args: str, database: str = "diag", **env: str
    ) -> ServerProcess:
        return gunicorn_server(  # type: ignore[no-any-return]
            f"{module}:app",
            "-k",
            "gthread",
            *args,
            *GRACEFUL,
            cwd=APP_DIR,
            env={"DATABASE_URL": postgres_server.url(database), **env},
        )

    return start


def leak_lines(
    server: ServerProcess, request_id: str, count: int
) -> list[dict[str, t.Any]]:
    return server.wait_for_json_lines(
        lambda line: (
            line.get("event") == "teardown leak"
            and line.get("request_id") == request_id
        ),
        count=count,
    )


def all_leak_lines(server: ServerProcess) -> list[dict[str, t.Any]]:
    return [
        line for line in server.json_lines() if line.get("event") == "teardown leak"
    ]


LEAKS = [
    pytest.param(
        "/leak/connection",
        {"connection_checked_out"},
        r"conn = engine.connect\(\)  # never closed",
        "leak_connection",
        id="connection",
    ),
    pytest.param(
        "/leak/transaction",
        {"connection_checked_out", "session_open"},
        {
            "connection_checked_out": r"s.flush\(\)",
            "session_open": r's.add\(Car\(name="leaked"',
        },
        "leak_transaction",
        id="transaction",
    ),
    pytest.param(
        "/leak/pending",
        {"session_open"},
        r'Car\(name="never saved"\)',
        "leak_pending",
        id="pending",
    ),
    pytest.param(
        "/leak/scoped",
        {"scoped_session_not_removed"},
        r"count = forgotten.execute",
        "leak_scoped",
        id="scoped",
    ),
    pytest.param(
        "/leak/stream",
        {"connection_checked_out"},
        r"conn = engine.connect\(\)  # checked out while",
        "rows",
        id="streamed",
    ),
]


@pytest.mark.parametrize(("path", "kinds", "pattern", "function"), LEAKS)
def test_each_leak_is_reported_under_gunicorn_on_postgres(
    serve: t.Callable[..., ServerProcess],
    path: str,
    kinds: set[str],
    pattern: str | dict[str, str],
    function: str,
) -> None:
    server = serve("app", "--threads", "4")
    response = requests.get(server.url + path, timeout=TIMEOUT)
    assert response.status_code == 200  # warn mode: the response is unchanged
    request_id = response.headers["X-Request-ID"]
    lines = leak_lines(server, request_id, len(kinds))
    assert {line["kind"] for line in lines} == kinds
    for line in lines:
        regex = pattern if isinstance(pattern, str) else pattern[line["kind"]]
        where = f"app.py:{line_of('app.py', regex)} in {function}"
        assert line["where"] == where, line
        assert line["pid"] == int(response.headers["X-Diag-PID"])
        assert line["thread"] == response.headers["X-Diag-Thread"]
        assert line["path"] == path
        assert line["fix"]
        if line["kind"] == "connection_checked_out":
            assert line["leaked"].startswith("connection of postgresql+psycopg://")
            assert where in line["stack"]
    assert requests.post(server.url + "/cleanup", timeout=TIMEOUT).status_code == 200


def test_no_false_positives_over_1000_mixed_requests(
    serve: t.Callable[..., ServerProcess],
) -> None:
    server = serve("app", "-w", "2", "--threads", "4")
    clean = [
        "/ok/connection",
        "/ok/transaction",
        "/ok/pending",
        "/ok/scoped",
        "/stream",
    ]
    # Every tenth request leaks (a scoped_session never removed: it holds no
    # connection, so the pool never runs dry); the others are clean.
    paths = [
        "/leak/scoped" if i % 10 == 9 else clean[i % len(clean)] for i in range(1000)
    ]
    local = ThreadPoolExecutor(8)
    sessions: dict[int, requests.Session] = {}

    def fetch(path: str) -> tuple[str, str, int, str]:
        import threading

        session = sessions.setdefault(threading.get_ident(), requests.Session())
        response = session.get(server.url + path, timeout=TIMEOUT)
        headers = response.headers
        return (
            path,
            headers["X-Request-ID"],
            response.status_code,
            headers["X-Diag-PID"],
        )

    try:
        results = list(local.map(fetch, paths))
    finally:
        local.shutdown()
        for session in sessions.values():
            session.close()
    assert all(status == 200 for _, _, status, _ in results)
    pid_of = {rid: pid for path, rid, _, pid in results if path == "/leak/scoped"}
    assert len(pid_of) == 100
    server.wait_for_json_lines(
        lambda line: line.get("event") == "teardown leak", count=100
    )
    time.sleep(0.5)  # a false positive would be logged by now too
    lines = all_leak_lines(server)
    assert {line["request_id"] for line in lines} == set(pid_of)
    assert len(lines) == 100
    assert {line["kind"] for line in lines} == {"scoped_session_not_removed"}
    # Each line names the worker that served its request.
    assert all(str(line["pid"]) == pid_of[line["request_id"]] for line in lines)


def test_fixed_app_reports_nothing(serve: t.Callable[..., ServerProcess]) -> None:
    server = serve("app_fixed", "--threads", "4")
    paths = ["/cars", "/leak/connection", "/leak/transaction", "/leak/pending"]
    paths += ["/leak/scoped", "/leak/stream", "/stream"]
    with requests.Session() as session:
        for path in itertools.islice(itertools.cycle(paths), 140):
            response = session.get(server.url + path, timeout=TIMEOUT)
            assert response.status_code == 200, (path, response.text)
    time.sleep(0.5)
    assert all_leak_lines(server) == []


def test_pitfall6_global_session_fails_after_the_idle_timeout(
    serve: t.Callable[..., ServerProcess], postgres_server: PostgresServer
) -> None:
    server = serve("app", "--threads", "4", database="diag_idle")
    url = server.url + "/cars"
    first = requests.get(url, timeout=TIMEOUT)
    assert first.status_code == 200
    kinds = {li["kind"] for li in leak_lines(server, first.headers["X-Request-ID"], 2)}
    assert kinds == {"connection_checked_out", "session_open"}
    second = requests.get(url, timeout=TIMEOUT)
    assert second.status_code == 200
    lines = leak_lines(server, second.headers["X-Request-ID"], 2)
    (shared,) = [li for li in lines if li["kind"] == "shared_session"]
    assert shared["leaked"] == "module-global session 'app.session'"
    assert (
        shared["where"]
        == f"app.py:{line_of('app.py', r'count = session.execute')} in cars"
    )

    time.sleep(IDLE_TIMEOUT + 1.5)  # the server closes the idle connection
    failed = requests.get(url, timeout=TIMEOUT)
    assert failed.status_code == 500
    assert failed.json()["code"] == "internal_error"
    # What users see in the logs: PostgreSQL closed the connection.
    server.wait_for_log(r"terminating connection due to idle-in-transaction timeout")
    # Every later request fails too: the global session is stuck.
    again = requests.get(url, timeout=TIMEOUT)
    assert again.status_code == 500
    server.wait_for_log(r"Can't reconnect until invalid transaction is rolled back")
    lines = leak_lines(server, failed.headers["X-Request-ID"], 1)
    assert any(li["leaked"] == "module-global session 'app.session'" for li in lines)
    assert requests.post(server.url + "/cleanup", timeout=TIMEOUT).status_code == 200


def test_pitfall6_fixed_app_survives_the_idle_timeout(
    serve: t.Callable[..., ServerProcess],
) -> None:
    server = serve("app_fixed", "--threads", "4", database="diag_idle")
    url = server.url + "/cars"
    with requests.Session() as session:
        assert session.get(url, timeout=TIMEOUT).status_code == 200
        time.sleep(IDLE_TIMEOUT + 1.5)  # the pooled connection is closed by now
        for _ in range(3):
            response = session.get(url, timeout=TIMEOUT)
            assert response.status_code == 200, response.text
    assert "terminating connection" not in server.log_text()
    assert all_leak_lines(server) == []


@pytest.mark.parametrize("path", ["/leak/connection", "/leak/stream"])
def test_raise_mode_answers_teardown_leak_under_gunicorn(
    serve: t.Callable[..., ServerProcess], path: str
) -> None:
    server = serve("app", "--threads", "4", FLASK_DIAG_TEARDOWN="raise")
    response = requests.get(server.url + path, timeout=TIMEOUT)
    assert response.status_code == 500
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "teardown_leak"
    assert body["leaks"] == ["connection_checked_out"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "app.py" not in response.text  # where it leaked is in the log only
    assert leak_lines(server, body["request_id"], 1)[0]["path"] == path
    ok = requests.get(server.url + "/stream", timeout=TIMEOUT)
    assert ok.status_code == 200 and ok.text == "1\n1\n1\n"
    assert requests.post(server.url + "/cleanup", timeout=TIMEOUT).status_code == 200


def test_postgres_listens_on_loopback_only(postgres_server: PostgresServer) -> None:
    rows = postgres_server.execute("SHOW listen_addresses")
    assert rows == [("127.0.0.1",)]
    assert Path(postgres_server.root).exists()
