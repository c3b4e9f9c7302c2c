"""Pitfall 2 end to end, on real servers.

``examples/pitfall2_selfcall/app.py`` posts the URL of one of its own static
images to an "external recognition API" (``recognition_api.py``, a second
server on 127.0.0.1 that fetches the URL it is given, with a timeout). Served
by a server that handles one request at a time (the werkzeug development
server with ``threaded=False``, gunicorn's sync worker with ``-w 1``), the
request hangs: that is checked first, without flask_diag, with a bounded
wait. Then flask_diag's answers: ``strict`` fails it within a second with a
``loopback_deadlock`` problem; the default mode logs the handed-over URL
before the call is sent; a view calling its own URL fails within a second
whatever the HTTP client, and works on servers that can serve a second
request. Every server is stopped at teardown, whatever happened.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import typing as t
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from servers import EXAMPLES
from servers import ServerProcess
from servers import uwsgi_command

pytestmark = pytest.mark.server

APP_DIR = EXAMPLES / "pitfall2_selfcall"
TIMEOUT = 10.0
FAST = 1.0  # a loopback deadlock must be answered within this many seconds
# gunicorn waits this long for a busy worker when stopped (default 30 s).
GRACEFUL = ("--graceful-timeout", "1")

SINGLE = ["werkzeug", "gunicorn-sync-1"]
CLIENTS = ["requests", "httpx", "urllib"]


@pytest.fixture
def recognition_api(server_factory: t.Any) -> t.Callable[..., ServerProcess]:
    def start(fetch_timeout: float = 30.0) -> ServerProcess:
        command = [
            sys.executable,
            str(APP_DIR / "recognition_api.py"),
            "--host",
            "{host}",
            "--port",
            "{port}",
        ]
        return server_factory(
            command, env={"FETCH_TIMEOUT": str(fetch_timeout)}, name="api"
        )

    return start


UWSGI = {
    "uwsgi-1": ("--processes", "1"),
    "uwsgi-threads": ("--processes", "1", "--threads", "4", "--enable-threads"),
}


@pytest.fixture
def serve(
    werkzeug_server: t.Any,
    gunicorn_server: t.Any,
    waitress_server: t.Any,
    server_factory: t.Any,
) -> t.Callable[..., ServerProcess]:
    """``serve(kind, app_spec="app:app", **env)``: the example app (or another
    module next to it, on ``PYTHONPATH``) on one kind of server."""

    def start(kind: str, app_spec: str = "app:app", **env: str) -> ServerProcess:
        options = {"env": env, "cwd": APP_DIR}
        if kind in UWSGI:
            command = uwsgi_command(*UWSGI[kind], module=app_spec)
            return server_factory(command, name="uwsgi", **options)  # type: ignore[no-any-return]
        if kind == "werkzeug":
            return werkzeug_server(app_spec, threaded=False, **options)  # type: ignore[no-any-return]
        if kind == "werkzeug-threaded":
            return werkzeug_server(app_spec, threaded=True, **options)  # type: ignore[no-any-return]
        args = {
            "gunicorn-sync-1": ("-w", "1"),
            "gunicorn-sync-2": ("-w", "2"),
            "gunicorn-preload": ("-w", "1", "--preload"),
            "gunicorn-gthread-1": ("-k", "gthread", "--threads", "1"),
            "gunicorn-gthread": ("-k", "gthread", "--threads", "4"),
            # Monkey-patched: time.sleep and sockets yield to other greenlets.
            "gunicorn-gevent": ("-k", "gevent"),
        }
        if kind in args:
            return gunicorn_server(app_spec, *args[kind], *GRACEFUL, **options)  # type: ignore[no-any-return]
        if kind == "waitress-1":
            return waitress_server(app_spec, "--threads=1", **options)  # type: ignore[no-any-return]
        raise AssertionError(kind)

    return start


def loopback_lines(server: ServerProcess, **match: t.Any) -> list[dict[str, t.Any]]:
    return [
        line
        for line in server.json_lines()
        if line.get("event") == "loopback deadlock"
        and all(line.get(key) == value for key, value in match.items())
    ]


def when(line: dict[str, t.Any]) -> datetime.datetime:
    return datetime.datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))


def assert_loopback_problem(
    response: requests.Response, elapsed: float
) -> dict[str, t.Any]:
    assert elapsed < FAST, f"answered after {elapsed:.2f}s"
    assert response.status_code == 508, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem: dict[str, t.Any] = response.json()
    assert problem["code"] == "loopback_deadlock"
    assert problem["request_id"] == response.headers["X-Request-ID"]
    assert problem["hint"]
    return problem


# -- pitfall 2: an own URL handed to an external API ------------------------------


@pytest.mark.parametrize("kind", SINGLE)
def test_pitfall2_hangs_without_flask_diag(
    serve: t.Callable[..., ServerProcess],
    recognition_api: t.Callable[..., ServerProcess],
    kind: str,
) -> None:
    api = recognition_api(fetch_timeout=30)
    app = serve(kind, FLASK_DIAG="off", RECOGNITION_API=api.url)
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        requests.post(app.url + "/recognize", timeout=2.0)
    assert time.monotonic() - started < 5.0
    # The API got the URL and is stuck fetching it from the busy server.
    api.wait_for_log(r'"recognize received"', timeout=TIMEOUT)
    assert '"fetched"' not in api.log_text()
    assert not loopback_lines(app)


@pytest.mark.parametrize("kind", SINGLE)
def test_pitfall2_strict_fails_within_a_second(
    serve: t.Callable[..., ServerProcess],
    recognition_api: t.Callable[..., ServerProcess],
    kind: str,
) -> None:
    api = recognition_api()
    app = serve(kind, FLASK_DIAG_LOOPBACK="strict", RECOGNITION_API=api.url)
    started = time.monotonic()
    response = requests.post(app.url + "/recognize", timeout=TIMEOUT)
    problem = assert_loopback_problem(response, time.monotonic() - started)
    image_url = f"{app.url}/static/cat.png"
    assert problem["own_url"] == image_url
    assert image_url in problem["detail"]
    assert problem["outbound"] == f"POST {api.url}/recognize (requests)"
    assert "serves one request at a time" in problem["detail"]
    assert "instead of a URL on this server" in problem["hint"]
    # Stopped before anything was sent: the API never heard of it.
    assert "recognize received" not in api.log_text()
    (line,) = loopback_lines(app, kind="handoff")
    assert line["action"] == "raised"
    assert line["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize("kind", SINGLE)
def test_pitfall2_default_warns_before_the_call_is_sent(
    serve: t.Callable[..., ServerProcess],
    recognition_api: t.Callable[..., ServerProcess],
    kind: str,
) -> None:
    # The API gives up after 1 s, so the stuck request ends by itself.
    api = recognition_api(fetch_timeout=1.0)
    app = serve(kind, RECOGNITION_API=api.url)
    response = requests.post(app.url + "/recognize", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json()["status"] == 504  # what the API could do
    image_url = f"{app.url}/static/cat.png"
    (line,) = app.wait_for_json_lines(
        lambda line: line.get("kind") == "handoff", count=1, timeout=TIMEOUT
    )
    assert (line["action"], line["own_url"]) == ("warned", image_url)
    assert image_url in line["message"]
    assert line["log_level" if "log_level" in line else "level"] == "warning"
    assert line["request_id"] == response.headers["X-Request-ID"]
    (received,) = [
        row for row in api.json_lines() if row.get("event") == "recognize received"
    ]
    assert received["image_url"] == image_url
    # Logged before the API received anything: before the call was sent.
    assert when(line) < when(received)


# -- a view calling its own URL ----------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [*SINGLE, "gunicorn-gthread-1", "gunicorn-preload", "waitress-1", "uwsgi-1"],
)
def test_self_call_fails_within_a_second(
    serve: t.Callable[..., ServerProcess], kind: str
) -> None:
    app = serve(kind)
    for client in CLIENTS:
        started = time.monotonic()
        response = requests.get(f"{app.url}/selfcall/{client}", timeout=TIMEOUT)
        problem = assert_loopback_problem(response, time.monotonic() - started)
        assert problem["own_url"] == f"{app.url}/ping"
        assert problem["outbound"].startswith(f"GET {app.url}/ping (")
        assert f"calls this server (127.0.0.1:{app.port})" in problem["detail"]
    lines = loopback_lines(app, kind="self_call", action="raised")
    assert len(lines) == len(CLIENTS)
    model = lines[0]["server_model"]
    assert (
        model
        == {
            "werkzeug": "werkzeug development server, threaded=False, processes=1",
            "gunicorn-sync-1": "gunicorn sync worker, 1 worker",
            "gunicorn-preload": "gunicorn sync worker, 1 worker",
            "gunicorn-gthread-1": "gunicorn gthread worker, 1 worker, 1 thread each",
            "waitress-1": "waitress, 1 thread",
            "uwsgi-1": "uWSGI, 1 process, 1 thread",
        }[kind]
    )


@pytest.mark.parametrize("kind", SINGLE)
def test_a_deadlock_the_view_catches_is_still_the_answer(
    serve: t.Callable[..., ServerProcess], kind: str
) -> None:
    # The view turns the failed call into its own 502: the error envelope
    # answers the deadlock the guard recorded (problem.CAUSE_KEY) instead.
    app = serve(kind)
    started = time.monotonic()
    response = requests.get(f"{app.url}/selfcall-caught", timeout=TIMEOUT)
    problem = assert_loopback_problem(response, time.monotonic() - started)
    assert problem["own_url"] == f"{app.url}/ping"


@pytest.mark.parametrize(
    "kind",
    [
        "gunicorn-gthread",
        "gunicorn-sync-2",
        "werkzeug-threaded",
        "uwsgi-threads",
        "gunicorn-gevent",
    ],
)
def test_self_call_works_on_servers_with_room(
    serve: t.Callable[..., ServerProcess], kind: str
) -> None:
    app = serve(kind, FLASK_DIAG_LOOPBACK="strict")
    for client in CLIENTS:
        response = requests.get(f"{app.url}/selfcall/{client}", timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        assert response.json() == {"client": client, "answer": "pong"}
    assert not loopback_lines(app, action="raised")
    if kind in ("werkzeug-threaded", "gunicorn-gevent"):
        # A thread per request, or a greenlet per request that yields while
        # it waits (the call back is served meanwhile): the guard steps aside.
        assert not loopback_lines(app)
    else:
        # Bounded: it works while a worker or thread is free; said once per
        # worker process.
        app.wait_for_json_lines(
            lambda line: line.get("kind") == "under_load", count=1, timeout=TIMEOUT
        )
        lines = loopback_lines(app, kind="under_load")
        assert len(lines) == len({line["pid"] for line in lines})
        assert "deadlocks under load" in lines[0]["message"]


# The example app, plus a view that tells whether the hook would find its
# request guarded (it does on every server the guard arms on) and whether it
# armed in the process.
GUARD_PROBE = """
from app import app
from flask_diag import loopback


@app.get("/guard-state")
def guard_state():
    return {
        "listed": loopback.is_guarded(),
        "armed": loopback._armed,
    }
"""


@pytest.mark.parametrize(
    ("kind", "armed"), [("gunicorn-gevent", False), ("gunicorn-gthread", True)]
)
def test_the_guard_steps_aside_under_gevent(
    serve: t.Callable[..., ServerProcess], tmp_path: Path, kind: str, armed: bool
) -> None:
    # A gevent worker serves a call back in another greenlet: nothing to
    # guard. (Its patched sockets are no socket.socket either: the audit hook
    # could not tell a self-call there, so only the guard's state shows that
    # it stepped aside.) gthread, bounded, is the control.
    (tmp_path / "guard_probe.py").write_text(GUARD_PROBE)
    app = serve(
        kind,
        app_spec="guard_probe:app",
        FLASK_DIAG_LOOPBACK="strict",
        PYTHONPATH=os.pathsep.join([str(APP_DIR), str(tmp_path)]),
    )
    response = requests.get(f"{app.url}/guard-state", timeout=TIMEOUT)
    assert response.json() == {"listed": armed, "armed": armed}


@pytest.mark.parametrize("kind", SINGLE)
def test_calls_to_another_local_server_are_never_flagged(
    serve: t.Callable[..., ServerProcess],
    recognition_api: t.Callable[..., ServerProcess],
    kind: str,
) -> None:
    api = recognition_api()
    app = serve(kind, FLASK_DIAG_LOOPBACK="strict")
    for _ in range(3):
        response = requests.get(
            f"{app.url}/fetch", params={"url": f"{api.url}/"}, timeout=TIMEOUT
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == 200
    assert not loopback_lines(app)


# -- a callback stuck in the queue, no URL in the payload ---------------------------


@pytest.mark.parametrize("kind", [*SINGLE, "waitress-1", "gunicorn-gthread-1"])
@pytest.mark.parametrize("mode", ["strict", "raise"])
def test_callback_to_the_busy_server(
    serve: t.Callable[..., ServerProcess],
    recognition_api: t.Callable[..., ServerProcess],
    kind: str,
    mode: str,
) -> None:
    api = recognition_api(fetch_timeout=2.0)
    app = serve(kind, FLASK_DIAG_LOOPBACK=mode, RECOGNITION_API=api.url)
    # The API was told once where our images are; the view sends a name only.
    requests.post(
        api.url + "/configure",
        json={"image_base": f"{app.url}/static/"},
        timeout=TIMEOUT,
    ).raise_for_status()
    started = time.monotonic()
    response = requests.post(app.url + "/recognize-indirect", timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    (line,) = app.wait_for_json_lines(
        lambda line: line.get("kind") == "callback", count=1, timeout=TIMEOUT
    )
    assert "in recognize_indirect" in line["stack"]
    assert line["queued"] >= 1
    assert line["request_id"] == response.headers["X-Request-ID"]
    if mode == "strict":
        assert line["action"] == "broken"
        assert elapsed < 2.0
        assert response.status_code == 508
        assert response.json()["code"] == "loopback_deadlock"
    else:
        assert line["action"] == "warned"
        assert response.status_code == 200
        assert response.json()["status"] == 504  # the API's fetch timed out


# -- the watchdog --------------------------------------------------------------------


# The example app under uWSGI, whose master runs a thread of the app's and
# makes a warm-up request before it forks its workers.
THREADED_MASTER = """
import threading
import time

from app import app


def scheduler():
    while True:
        time.sleep(0.2)


threading.Thread(target=scheduler, name="app-scheduler", daemon=True).start()
app.test_client().get("/").close()
"""


@pytest.mark.parametrize(
    "hooks",
    [
        pytest.param((), id="default"),
        pytest.param(("--py-call-uwsgi-fork-hooks",), id="fork-hooks"),
    ],
)
def test_uwsgi_master_threads_never_crash_a_worker(
    server_factory: t.Any, tmp_path: Path, hooks: tuple[str, ...]
) -> None:
    # uWSGI forks without Python's fork hooks by default: the master's
    # threads stay listed in each worker, where sys._current_frames() (the
    # watchdog's monitor reads it) crashes the process with SIGSEGV.
    (tmp_path / "threaded_master.py").write_text(THREADED_MASTER)
    command = uwsgi_command(
        *("--processes", "2", "--threads", "4", "--enable-threads", *hooks),
        module="threaded_master:app",
    )
    server = server_factory(
        command,
        name="uwsgi",
        cwd=tmp_path,
        env={"PYTHONPATH": str(APP_DIR), "FLASK_DIAG_WATCHDOG": "0.5"},
    )

    def ready(_: int) -> requests.Response:
        return requests.get(server.url + "/", timeout=TIMEOUT)

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(ready, range(40)))
    assert [r.status_code for r in responses] == [200] * 40
    response = requests.get(
        server.url + "/nap", params={"seconds": 1.5}, timeout=TIMEOUT
    )
    assert response.json() == {"slept": 1.5}
    time.sleep(0.5)  # a second report would come by now
    log = server.log_text()
    assert "Segmentation Fault" not in log and "signal 11" not in log, log
    lines = server.json_lines()
    (stuck,) = [line for line in lines if line.get("event") == "request stuck"]
    assert stuck["request_id"] == response.headers["X-Request-ID"]
    assert 0.5 <= stuck["duration_s"] < 1.5
    warned = [
        line for line in lines if line.get("event") == "thread stacks unavailable"
    ]
    if hooks:
        # Python's fork hooks ran: stacks are read as anywhere else.
        assert not warned, warned
        assert "in take_a_nap" in stuck["stack"]
    else:
        assert warned, log
        assert "forked without Python's fork hooks" in warned[0]["reason"]
        assert "--py-call-uwsgi-fork-hooks" in warned[0]["fix"]
        assert stuck["stack"] == "(the thread's stack is not available)"


@pytest.mark.parametrize("kind", [*SINGLE, "gunicorn-gevent"])
def test_watchdog_logs_one_stack_naming_the_sleeping_function(
    serve: t.Callable[..., ServerProcess], kind: str
) -> None:
    # Under gevent the sleeping request is on no thread's stack (its greenlet
    # has yielded to the hub): only its listing by greenlet can find it.
    app = serve(kind, FLASK_DIAG_WATCHDOG="0.5")
    response = requests.get(app.url + "/nap", params={"seconds": 1.5}, timeout=TIMEOUT)
    assert response.json() == {"slept": 1.5}
    time.sleep(0.5)  # a second report would come by now
    lines = [line for line in app.json_lines() if line.get("event") == "request stuck"]
    assert len(lines) == 1, lines
    (line,) = lines
    assert "in take_a_nap" in line["stack"]
    assert "in nap" in line["stack"]
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["pid"] == int(response.headers["X-Diag-PID"])
    assert line["thread"] == response.headers["X-Diag-Thread"]
    assert 0.5 <= line["duration_s"] < 1.5
    assert line["blocked_in_socket"] is False
