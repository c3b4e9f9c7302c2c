"""Request tagging on real servers (pitfall 7 and friends).

Every test here starts a real server on 127.0.0.1 (gunicorn sync and
gthread, the werkzeug development server, waitress) in a subprocess and
checks what a client and an operator see: the ``X-Request-ID``,
``X-Diag-PID``, ``X-Diag-Thread`` and ``Server-Timing`` headers, and the
``request_id``/``pid``/``thread`` of the JSON log lines the server wrote.
"""

from __future__ import annotations

import io
import json
import re
import socket
import textwrap
import time
import typing as t
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import structlog
from flask import Flask
from servers import EXAMPLES
from servers import require_module
from servers import ServerProcess
from servers import uwsgi_command

import flask_diag.logging

pytestmark = pytest.mark.server

HEX_ID = re.compile(r"[0-9a-f]{32}")
SERVER_TIMING = re.compile(r"app;dur=\d+\.\d\d")
TIMEOUT = 10.0

# A Flask app for the tests, written to a temporary directory and served from
# there. ``/`` answers without logging, for the readiness probe.
TAGGING_APP = textwrap.dedent(
    """
    import sys
    import time

    import structlog
    from flask import Flask
    from flask import Response
    from flask import request

    import flask_diag.logging
    from flask_diag import Diag

    # flask_diag.logging.configure() uses structlog's PrintLogger, whose
    # print() writes the line and its newline in two writes to stderr (which
    # is write-through): lines of concurrent worker processes then
    # interleave. A WriteLogger writes each line at once. See
    # test_configure_writes_each_line_in_one_write below.
    structlog.configure(
        processors=flask_diag.logging.recommended_processors(json=True),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
    )
    log = structlog.get_logger()

    app = Flask(__name__)
    Diag(app)


    @app.get("/")
    def ready():
        return "ready"


    @app.get("/work")
    def work():
        token = request.args.get("token", "")
        log.info("work started", token=token)
        time.sleep(0.001)  # let the other threads of the worker interleave
        log.info("work done", token=token)
        return {"token": token, "seen": request.headers.get("X-Request-ID")}


    @app.get("/stream")
    def stream():
        token = request.args.get("token", "")

        def generate():
            for index in range(5):
                log.info("chunk", token=token, index=index)
                time.sleep(0.001)
                yield f"{token} {index}\\n"

        return Response(generate(), mimetype="text/plain")


    @app.get("/echo-id")
    def echo_id():
        seen = request.headers.get("X-Request-ID")
        log.info("echo", seen=seen)
        return {"seen": seen}
    """
)


@pytest.fixture
def tagging_app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tagapp"
    directory.mkdir()
    (directory / "tagapp.py").write_text(TAGGING_APP)
    return directory


def assert_tagged(
    response: requests.Response,
    *,
    request_id: str | None = None,
    pid: int | None = None,
) -> None:
    """The four headers are there; the id is the one sent or a fresh one."""
    headers = response.headers
    if request_id is None:
        assert HEX_ID.fullmatch(headers["X-Request-ID"]), headers
    else:
        assert headers["X-Request-ID"] == request_id
    assert headers["X-Diag-PID"].isdigit()
    if pid is not None:
        assert headers["X-Diag-PID"] == str(pid)
    assert headers["X-Diag-Thread"]
    assert SERVER_TIMING.fullmatch(headers["Server-Timing"]), headers


def lines_for(server: ServerProcess, request_id: str) -> list[dict[str, t.Any]]:
    return server.wait_for_json_lines(
        lambda line: line.get("request_id") == request_id, count=1
    )


def assert_log_matches(server: ServerProcess, response: requests.Response) -> None:
    """The request's log lines carry the pid and thread of its headers."""
    lines = lines_for(server, response.headers["X-Request-ID"])
    assert lines, f"no log line for the request\n{server.log_text()}"
    for line in lines:
        assert line["pid"] == int(response.headers["X-Diag-PID"])
        assert line["thread"] == response.headers["X-Diag-Thread"]


# -- 1. Pitfall 7 ---------------------------------------------------------------


def test_pitfall7_state_in_one_worker_is_visible(gunicorn_server: t.Any) -> None:
    """POST a car then GET the list under ``gunicorn -w 4``: the counts
    disagree, and the headers and logs show why (several PIDs)."""
    server = gunicorn_server("app:app", "-w", "4", cwd=EXAMPLES / "pitfall7_cars")
    pid_of: dict[str, int] = {}
    count_of: dict[str, int] = {}  # the count each response reported
    wrong_counts = []
    posts = 0
    # At least 40 pairs; more (bounded) only if the kernel happened to hand
    # nearly everything to one worker.
    for i in range(200):
        if i >= 40 and wrong_counts and len(set(pid_of.values())) >= 2:
            break
        post_id = f"p7-post-{i}"
        r = requests.post(
            server.url + "/cars",
            json={"name": f"car {i}"},
            headers={"X-Request-ID": post_id},
            timeout=TIMEOUT,
        )
        assert r.status_code == 201, r.text
        assert_tagged(r, request_id=post_id)
        posts += 1
        pid_of[post_id] = int(r.headers["X-Diag-PID"])
        count_of[post_id] = r.json()["count"]

        get_id = f"p7-get-{i}"
        r = requests.get(
            server.url + "/cars", headers={"X-Request-ID": get_id}, timeout=TIMEOUT
        )
        assert r.status_code == 200, r.text
        assert_tagged(r, request_id=get_id)
        pid_of[get_id] = int(r.headers["X-Diag-PID"])
        count_of[get_id] = r.json()["count"]
        if r.json()["count"] != posts:
            wrong_counts.append((posts, r.json()["count"], pid_of[get_id]))

    pids = set(pid_of.values())
    assert len(pids) >= 2, f"every request was served by one worker: {pids}"
    assert server.pid not in pids  # workers answer, not the master
    assert wrong_counts, "every GET saw every POST: the pitfall did not show"

    lines = server.wait_for_json_lines(
        lambda line: line.get("event") in ("car added", "cars listed"),
        count=len(pid_of),
    )
    assert len(lines) == len(pid_of)
    logged = {line["request_id"]: line for line in lines}
    assert logged.keys() == pid_of.keys()
    for request_id, line in logged.items():
        assert line["pid"] == pid_of[request_id], line
        assert line["count"] == count_of[request_id], line
        assert line["thread"] == "MainThread"  # sync worker
        assert line["path"] == "/cars"
    assert {line["pid"] for line in lines} == pids


def test_pitfall7_fixed_app_counts_right_across_workers(
    gunicorn_server: t.Any, tmp_path: Path
) -> None:
    server = gunicorn_server(
        "app_fixed:app",
        "-w",
        "4",
        cwd=EXAMPLES / "pitfall7_cars",
        env={"CARS_DB": str(tmp_path / "cars.sqlite3")},
    )
    pids = set()
    posted = 0
    for i in range(100):
        if i >= 20 and len(pids) >= 2:
            break
        r = requests.post(
            server.url + "/cars", json={"name": f"car {i}"}, timeout=TIMEOUT
        )
        assert r.status_code == 201, r.text
        posted += 1
        pids.add(r.headers["X-Diag-PID"])
        r = requests.get(server.url + "/cars", timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert_tagged(r)
        pids.add(r.headers["X-Diag-PID"])
        assert r.json()["count"] == posted
    if len(pids) < 2:
        # The kernel handed every sequential connection to one idle worker
        # (it happens on a busy machine): concurrent reads keep that worker
        # busy, so others answer; each must see every car too.
        with ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda _: requests.get(server.url + "/cars", timeout=TIMEOUT),
                    range(64),
                )
            )
        for r in answers:
            assert r.status_code == 200, r.text
            assert r.json()["count"] == posted
            pids.add(r.headers["X-Diag-PID"])
    assert len(pids) >= 2


# -- 2. No context leaks under threads --------------------------------------------


def test_gthread_load_no_context_leaks(
    gunicorn_server: t.Any, tagging_app_dir: Path
) -> None:
    """1,000 concurrent requests on 2 workers x 8 threads: every log line
    carries the id, pid and thread of its own request, none is missing."""
    server = gunicorn_server(
        "tagapp:app",
        "-k",
        "gthread",
        "--threads",
        "8",
        "-w",
        "2",
        cwd=tagging_app_dir,
    )
    total = 1000

    def incoming_id(i: int) -> str | None:
        # None: no header; a safe id is reused; an unsafe one is replaced.
        return (None, f"load-{i}", f"load {i}")[i % 3]

    def call(i: int) -> requests.Response:
        rid = incoming_id(i)
        headers = {} if rid is None else {"X-Request-ID": rid}
        # A connection per request: they land on both workers.
        return requests.get(
            server.url + "/work",
            params={"token": f"t{i}"},
            headers=headers,
            timeout=TIMEOUT,
        )

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(call, range(total)))

    by_token: dict[str, requests.Response] = {}
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        rid = incoming_id(i)
        safe = rid if rid is not None and " " not in rid else None
        assert_tagged(r, request_id=safe)
        body = r.json()
        assert body["token"] == f"t{i}"
        # The app reads the id flask_diag chose, never the raw unsafe one.
        assert body["seen"] == (None if rid is None else r.headers["X-Request-ID"])
        by_token[body["token"]] = r
    ids = {r.headers["X-Request-ID"] for r in responses}
    assert len(ids) == total, "request ids collided"
    # Both workers, and several threads of each, served requests.
    assert len({r.headers["X-Diag-PID"] for r in responses}) == 2
    served_by = {
        (r.headers["X-Diag-PID"], r.headers["X-Diag-Thread"]) for r in responses
    }
    assert len(served_by) > 2, served_by

    work = server.wait_for_json_lines(
        lambda line: line.get("event") in ("work started", "work done"),
        count=2 * total,
    )
    assert len(work) == 2 * total
    seen: Counter[tuple[str, str]] = Counter()
    for line in work:
        assert line.get("request_id"), f"log line without request id: {line}"
        r = by_token[line["token"]]
        assert line["request_id"] == r.headers["X-Request-ID"], line
        assert line["pid"] == int(r.headers["X-Diag-PID"]), line
        assert line["thread"] == r.headers["X-Diag-Thread"], line
        assert line["path"] == "/work"
        seen[(line["token"], line["event"])] += 1
    assert set(seen.values()) == {1}
    # No line anywhere in the output lacks an id or carries one no response
    # had.
    stray = [line for line in server.json_lines() if line.get("request_id") not in ids]
    assert not stray


def test_gthread_streamed_response_keeps_request_id(
    gunicorn_server: t.Any, tagging_app_dir: Path
) -> None:
    server = gunicorn_server(
        "tagapp:app", "-k", "gthread", "--threads", "4", "-w", "1", cwd=tagging_app_dir
    )

    def call(i: int) -> requests.Response:
        return requests.get(
            server.url + "/stream", params={"token": f"s{i}"}, timeout=TIMEOUT
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(call, range(24)))

    for i, r in enumerate(responses):
        assert r.status_code == 200
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert r.text.splitlines() == [f"s{i} {n}" for n in range(5)]
        assert_tagged(r)
    chunks = server.wait_for_json_lines(
        lambda line: line.get("event") == "chunk", count=5 * len(responses)
    )
    assert len(chunks) == 5 * len(responses)
    by_token = {f"s{i}": r for i, r in enumerate(responses)}
    for line in chunks:
        r = by_token[line["token"]]
        assert line.get("request_id") == r.headers["X-Request-ID"], line
        assert line["pid"] == int(r.headers["X-Diag-PID"])
        assert line["thread"] == r.headers["X-Diag-Thread"]


def test_sync_worker_next_request_inherits_nothing(
    gunicorn_server: t.Any, tagging_app_dir: Path
) -> None:
    """One sync worker, one thread: a request with a ``traceparent`` and the
    one after it, without. The second logs no trace id of the first."""
    server = gunicorn_server("tagapp:app", cwd=tagging_app_dir)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    first = requests.get(
        server.url + "/echo-id",
        headers={
            "X-Request-ID": "first",
            "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        },
        timeout=TIMEOUT,
    )
    second = requests.get(
        server.url + "/echo-id", headers={"X-Request-ID": "second"}, timeout=TIMEOUT
    )
    assert first.headers["X-Diag-PID"] == second.headers["X-Diag-PID"]
    (line,) = lines_for(server, "first")
    assert line["trace_id"] == trace_id
    (line,) = lines_for(server, "second")
    assert "trace_id" not in line, line


# -- 3. and 4. werkzeug dev server and waitress ---------------------------------------


@pytest.mark.parametrize(
    "threaded", [pytest.param(True, id="threaded"), pytest.param(False, id="single")]
)
def test_werkzeug_dev_server(
    werkzeug_server: t.Any, tagging_app_dir: Path, threaded: bool
) -> None:
    server = werkzeug_server("tagapp:app", threaded=threaded, cwd=tagging_app_dir)
    r = requests.get(
        server.url + "/echo-id", headers={"X-Request-ID": "abc-123.x:y_z"}, timeout=5
    )
    assert r.status_code == 200
    assert_tagged(r, request_id="abc-123.x:y_z", pid=server.pid)
    assert r.json() == {"seen": "abc-123.x:y_z"}
    thread = r.headers["X-Diag-Thread"]
    if threaded:
        assert thread != "MainThread"  # one thread per request
    else:
        assert thread == "MainThread"
    assert_log_matches(server, r)

    r = requests.get(server.url + "/echo-id", timeout=5)
    assert_tagged(r, pid=server.pid)
    assert_log_matches(server, r)


def test_waitress(waitress_server: t.Any, tagging_app_dir: Path) -> None:
    server = waitress_server("tagapp:app", "--threads=4", cwd=tagging_app_dir)
    r = requests.get(
        server.url + "/echo-id", headers={"X-Request-ID": "waitress-1"}, timeout=5
    )
    assert r.status_code == 200
    assert_tagged(r, request_id="waitress-1", pid=server.pid)
    assert r.headers["X-Diag-Thread"].startswith("waitress-")
    assert r.json() == {"seen": "waitress-1"}
    assert_log_matches(server, r)


# A warm-up request at import: under uWSGI the app is imported in the master,
# which then forks its workers at the C level, without Python's at-fork hooks.
# The master has handed out request ids by then; its workers must not hand
# out the same ones.
WARMED_UP_APP = TAGGING_APP + textwrap.dedent(
    """

    app.test_client().get("/").close()
    """
)


def test_uwsgi_workers_never_share_request_ids(
    server_factory: t.Any, tmp_path: Path
) -> None:
    directory = tmp_path / "warmed"
    directory.mkdir()
    (directory / "tagapp.py").write_text(WARMED_UP_APP)
    command = uwsgi_command("--processes", "2", module="tagapp:app")
    server = server_factory(command, cwd=directory, name="uwsgi")

    def get(token: int) -> requests.Response:
        return requests.get(
            server.url + "/work", params={"token": str(token)}, timeout=TIMEOUT
        )

    ids: list[str] = []
    prefixes: dict[str, set[str]] = {}
    deadline = time.monotonic() + 30
    # More than one batch of ids per worker (256), from both workers.
    with ThreadPoolExecutor(max_workers=4) as pool:
        while time.monotonic() < deadline and (len(prefixes) < 2 or len(ids) < 600):
            for response in pool.map(get, range(len(ids), len(ids) + 40)):
                assert response.status_code == 200
                assert_tagged(response)
                request_id = response.headers["X-Request-ID"]
                ids.append(request_id)
                pid = response.headers["X-Diag-PID"]
                prefixes.setdefault(pid, set()).add(request_id[:16])
    assert len(prefixes) == 2, f"one worker served every request: {prefixes}"
    assert len(set(ids)) == len(ids), "a request id was handed out twice"
    # Each worker has a prefix of its own, the same for all its ids.
    assert all(len(seen) == 1 for seen in prefixes.values()), prefixes
    assert len(set.union(*prefixes.values())) == 2, prefixes


# -- 5. Plain WSGI and Django ------------------------------------------------------


def test_plain_wsgi_example_under_gunicorn(gunicorn_server: t.Any) -> None:
    server = gunicorn_server("app:application", cwd=EXAMPLES / "plain_wsgi")
    r = requests.get(server.url + "/", headers={"X-Request-ID": "plain-1"}, timeout=5)
    assert r.status_code == 200
    assert_tagged(r, request_id="plain-1")
    assert r.json() == {"hello": "world", "seen_request_id": "plain-1"}
    assert_log_matches(server, r)
    (line,) = lines_for(server, "plain-1")
    assert line["event"] == "hello"
    assert line["seen_request_id"] == "plain-1"

    r = requests.get(server.url + "/", headers={"X-Request-ID": "not safe"}, timeout=5)
    assert_tagged(r)
    assert r.json()["seen_request_id"] == r.headers["X-Request-ID"]
    assert_log_matches(server, r)


def test_django_example_under_gunicorn(gunicorn_server: t.Any) -> None:
    require_module("django")
    server = gunicorn_server(
        "diagsite.wsgi:application",
        cwd=EXAMPLES / "django_project",
        ready_path="/status",
    )
    r = requests.get(server.url + "/", headers={"X-Request-ID": "dj-1"}, timeout=5)
    assert r.status_code == 200, r.text
    assert r.text == "hello\n"
    assert_tagged(r, request_id="dj-1")
    assert_log_matches(server, r)
    (line,) = lines_for(server, "dj-1")
    assert line["event"] == "hello from django"
    assert line["seen_request_id"] == "dj-1"
    assert line["method"] == "GET"
    assert line["path"] == "/"

    r = requests.get(server.url + "/status", timeout=5)
    assert r.status_code == 200
    assert_tagged(r)
    assert r.json() == {"ok": True, "seen_request_id": None}
    # A Django 404 is tagged too.
    r = requests.get(server.url + "/missing", timeout=5)
    assert r.status_code == 404
    assert_tagged(r)


# -- 6. Malformed incoming request ids ---------------------------------------------


def raw_get(
    server: ServerProcess, path: str, header_value: bytes
) -> tuple[int, dict[str, str], bytes]:
    """Send one request with a raw ``X-Request-ID`` value over a socket."""
    request = (
        b"GET " + path.encode() + b" HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"X-Request-ID: " + header_value + b"\r\n"
        b"Connection: close\r\n\r\n"
    )
    chunks = []
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for header_line in header_lines:
        name, _, value = header_line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


MALFORMED_IDS = [
    pytest.param(b"marker-long-" + b"L" * 10_000, id="10kB"),
    pytest.param(b"marker-space with spaces", id="spaces"),
    pytest.param(b"marker-nonascii-caf\xc3\xa9", id="non-ascii"),
    pytest.param(b'marker-quote-"x"', id="quote"),
    pytest.param(b"marker-semicolon;x=1", id="semicolon"),
    pytest.param(b"marker-script<script>alert(1)</script>", id="script"),
]


def test_malformed_request_ids_are_replaced(
    gunicorn_server: t.Any, tagging_app_dir: Path
) -> None:
    server = gunicorn_server(
        "tagapp:app",
        "--limit-request-field_size",
        "16384",  # let the 10 kB id reach the app
        cwd=tagging_app_dir,
    )
    fresh_ids = []
    for param in MALFORMED_IDS:
        (raw,) = param.values
        status, headers, body = raw_get(server, "/echo-id", raw)
        assert status == 200, (param.id, body)
        new_id = headers["x-request-id"]
        assert HEX_ID.fullmatch(new_id), (param.id, new_id)
        assert json.loads(body) == {"seen": new_id}, param.id
        fresh_ids.append(new_id)
    for new_id in fresh_ids:
        (line,) = lines_for(server, new_id)
        assert line["seen"] == new_id
    log = server.log_text()
    assert "marker-" not in log
    assert "L" * 200 not in log


def test_crlf_request_id_in_process(diag_app: Flask) -> None:
    """CR/LF cannot travel in a real header line; in-process it must not
    reach the response headers or the logs either."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    r = diag_app.test_client().get(
        "/", environ_base={"HTTP_X_REQUEST_ID": "a\r\nSet-Cookie: x=1"}
    )
    assert r.status_code == 200
    new_id = r.headers["X-Request-ID"]
    assert HEX_ID.fullmatch(new_id)
    assert "Set-Cookie" not in r.headers
    assert all("\r" not in v and "\n" not in v for _, v in r.headers.items())
    (entry,) = capture.entries
    assert entry["event"] == "index"
    assert entry["request_id"] == new_id
    assert "Set-Cookie" not in repr(capture.entries)


# -- 7. Worker headers switched off ------------------------------------------------


def test_worker_headers_off(gunicorn_server: t.Any, tagging_app_dir: Path) -> None:
    server = gunicorn_server(
        "tagapp:app", cwd=tagging_app_dir, env={"FLASK_DIAG_WORKER_HEADERS": "off"}
    )
    r = requests.get(
        server.url + "/echo-id", headers={"X-Request-ID": "w-1"}, timeout=5
    )
    assert r.status_code == 200
    assert r.headers["X-Request-ID"] == "w-1"
    assert "X-Diag-PID" not in r.headers
    assert "X-Diag-Thread" not in r.headers
    assert SERVER_TIMING.fullmatch(r.headers["Server-Timing"])
    # The logs still say which worker served it.
    (line,) = lines_for(server, "w-1")
    assert isinstance(line["pid"], int) and line["pid"] != server.pid
    assert line["thread"] == "MainThread"


# -- Whole log lines ---------------------------------------------------------------


def test_configure_writes_each_line_in_one_write() -> None:
    """Worker processes share one stderr: a line is whole only if it is
    written with one ``write()`` (the load test above lost lines this way
    until its app used ``structlog.WriteLoggerFactory``)."""

    class Recorder(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.writes: list[str] = []

        def write(self, s: str) -> int:
            self.writes.append(s)
            return super().write(s)

    recorder = Recorder()
    flask_diag.logging.configure(file=recorder)
    structlog.get_logger().info("one line", n=1)
    (write,) = recorder.writes
    assert write.endswith("}\n")
