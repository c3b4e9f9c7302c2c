"""The server profile: what the app can learn about the server running it.

Unit tests of :class:`~flask_diag.server.ServerProfile` (addresses, names,
descriptions, the queue probe), then :func:`~flask_diag.server.detect` on
real servers: werkzeug's and waitress's in a thread of the test process,
gunicorn and the werkzeug forking server in a subprocess, answering with the
profile they detected.
"""

from __future__ import annotations

import dataclasses
import json
import select
import socket
import sys
import textwrap
import threading
import time
import types
import typing as t
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import waitress.server
from flask import Flask
from flask import request
from werkzeug.serving import make_server

from flask_diag import server as server_module
from flask_diag.server import Backlog
from flask_diag.server import detect
from flask_diag.server import is_local_ip
from flask_diag.server import Listener
from flask_diag.server import scan_listeners
from flask_diag.server import ServerProfile

TIMEOUT = 10.0

LOCAL_V4 = Listener("inet", "127.0.0.1", 8000)
ANY_V4 = Listener("inet", "0.0.0.0", 8000)
ANY_V6 = Listener("inet6", "::", 8000)
ANY_V6_ONLY = Listener("inet6", "::", 8000, v6only=True)
LOCAL_V6 = Listener("inet6", "::1", 8000)
UNIX = Listener("unix", "/run/app.sock", 0)


def profile(*listeners: Listener, **fields: t.Any) -> ServerProfile:
    fields.setdefault("workers", 1)
    fields.setdefault("threads", 1)
    return ServerProfile("gunicorn", worker_class="sync", listeners=listeners, **fields)


# -- addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listeners", "host", "port", "expected"),
    [
        pytest.param((LOCAL_V4,), "127.0.0.1", 8000, LOCAL_V4, id="same-address"),
        pytest.param((LOCAL_V4,), "127.0.0.1", 8001, None, id="other-port"),
        pytest.param((LOCAL_V4,), "127.0.0.2", 8000, None, id="other-loopback-ip"),
        pytest.param((ANY_V4,), "127.0.0.2", 8000, ANY_V4, id="wildcard-any-loopback"),
        pytest.param((ANY_V4,), "0.0.0.0", 8000, ANY_V4, id="wildcard-unspecified"),
        pytest.param((ANY_V4,), "192.0.2.1", 8000, None, id="wildcard-foreign-ip"),
        pytest.param((ANY_V4,), "::1", 8000, None, id="v4-wildcard-not-v6"),
        pytest.param((LOCAL_V4,), "::ffff:127.0.0.1", 8000, LOCAL_V4, id="mapped-v4"),
        pytest.param((LOCAL_V4,), "localhost", 8000, LOCAL_V4, id="localhost-v4"),
        pytest.param((LOCAL_V6,), "localhost", 8000, LOCAL_V6, id="localhost-v6"),
        pytest.param((LOCAL_V6,), "[::1]", 8000, LOCAL_V6, id="bracketed-v6"),
        pytest.param((LOCAL_V6,), "127.0.0.1", 8000, None, id="v6-listener-not-v4"),
        pytest.param((ANY_V6,), "127.0.0.1", 8000, ANY_V6, id="dual-stack-v4"),
        pytest.param((ANY_V6,), "::1", 8000, ANY_V6, id="dual-stack-v6"),
        pytest.param((ANY_V6_ONLY,), "127.0.0.1", 8000, None, id="v6only-refuses-v4"),
        pytest.param((UNIX,), "/run/app.sock", None, UNIX, id="unix-path"),
        pytest.param((UNIX,), "/run/other.sock", None, None, id="unix-other-path"),
        pytest.param((LOCAL_V4,), "example.com", 8000, None, id="name-not-an-address"),
        pytest.param((), "127.0.0.1", 8000, None, id="no-listener"),
    ],
)
def test_own_address(
    listeners: tuple[Listener, ...],
    host: str,
    port: int | None,
    expected: Listener | None,
) -> None:
    assert profile(*listeners).own_address(host, port) == expected


@pytest.mark.parametrize(
    ("address", "local"),
    [
        pytest.param("127.0.0.1", True, id="loopback"),
        pytest.param("127.8.9.10", True, id="loopback-net"),
        pytest.param("::1", True, id="loopback-v6"),
        pytest.param("0.0.0.0", True, id="unspecified"),
        pytest.param("::ffff:127.0.0.1", True, id="mapped"),
        pytest.param("192.0.2.1", False, id="test-net-1"),
        pytest.param("2001:db8::1", False, id="documentation-v6"),
        pytest.param("not-an-ip", False, id="garbage"),
    ],
)
def test_is_local_ip(address: str, local: bool) -> None:
    assert is_local_ip(address) is local


def test_is_local_ip_finds_the_hosts_own_address() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        # A UDP connect only picks the route's source address; nothing sent.
        probe.connect(("192.0.2.1", 9))
        own = probe.getsockname()[0]
    assert is_local_ip(own)


@pytest.mark.parametrize(
    ("name", "port", "names", "expected"),
    [
        pytest.param("myapp.example", 443, ["myapp.example"], True, id="bare-name"),
        pytest.param("MyApp.Example", None, ["myapp.example"], True, id="case"),
        pytest.param("myapp.example", 8000, ["myapp.example:8000"], True, id="port"),
        pytest.param(
            "myapp.example", 8001, ["myapp.example:8000"], False, id="port-differs"
        ),
        pytest.param("other.example", 80, ["myapp.example"], False, id="other-name"),
        pytest.param(
            "localhost", 8000, ["localhost:8000"], False, id="localhost-by-address"
        ),
        pytest.param("127.0.0.1", 8000, ["127.0.0.1:8000"], False, id="ip-by-address"),
        pytest.param("srv.example", 80, [], True, id="server-name"),
    ],
)
def test_own_name(
    name: str, port: int | None, names: list[str], expected: bool
) -> None:
    known = profile(LOCAL_V4, names=frozenset({"srv.example"}))
    assert known.own_name(name, port, names) is expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("http://127.0.0.1:8000/static/cat.png", "listener", id="listener"),
        pytest.param("http://localhost:8000/", "listener", id="localhost"),
        pytest.param("http://127.0.0.1:8001/", None, id="other-port"),
        pytest.param("http://127.0.0.1/", None, id="default-port-80"),
        pytest.param("https://myapp.example/x", "host name", id="proxied-name"),
        pytest.param("http://[::1]:8000/", None, id="v6-not-listening"),
        pytest.param("http://127.0.0.1:notaport/", None, id="bad-port"),
        pytest.param("mailto:someone@example.com", None, id="no-host"),
    ],
)
def test_own_url(url: str, expected: str | None) -> None:
    reason = profile(LOCAL_V4).own_url(url, ["myapp.example"])
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(expected)


# -- the model in words --------------------------------------------------------


FIX_FRAGMENTS = {
    ("gunicorn", "sync"): "gunicorn -k gthread --threads 4",
    ("gunicorn", "gthread"): "gunicorn --threads 8",
    ("werkzeug", "single"): "app.run(threaded=True)",
    ("werkzeug", "threaded"): "app.run(threaded=True)",
    ("waitress", None): "waitress --threads=8",
    ("uwsgi", None): "uwsgi --enable-threads --threads 4",
    ("unknown", None): "a server that serves concurrent requests",
}


@pytest.mark.parametrize(
    ("fields", "description", "capacity", "concurrent"),
    [
        pytest.param(
            {"server": "gunicorn", "worker_class": "sync", "workers": 1, "threads": 1},
            "gunicorn sync worker, 1 worker",
            1,
            False,
            id="gunicorn-sync-1",
        ),
        pytest.param(
            {"server": "gunicorn", "worker_class": "sync", "workers": 2, "threads": 1},
            "gunicorn sync worker, 2 workers",
            2,
            True,
            id="gunicorn-sync-2",
        ),
        pytest.param(
            {
                "server": "gunicorn",
                "worker_class": "gthread",
                "workers": 1,
                "threads": 4,
            },
            "gunicorn gthread worker, 1 worker, 4 threads each",
            4,
            True,
            id="gunicorn-gthread",
        ),
        pytest.param(
            {
                "server": "werkzeug",
                "worker_class": "single",
                "workers": 1,
                "threads": 1,
            },
            "werkzeug development server, threaded=False, processes=1",
            1,
            False,
            id="werkzeug-single",
        ),
        pytest.param(
            {
                "server": "werkzeug",
                "worker_class": "threaded",
                "workers": 1,
                "threads": None,
                "multithread": True,
            },
            "werkzeug development server, threaded (a thread per request)",
            None,
            True,
            id="werkzeug-threaded",
        ),
        pytest.param(
            {"server": "waitress", "workers": 1, "threads": 1},
            "waitress, 1 thread",
            1,
            False,
            id="waitress-1",
        ),
        pytest.param(
            {"server": "uwsgi", "workers": 2, "threads": 1},
            "uWSGI, 2 processes, 1 thread",
            2,
            True,
            id="uwsgi",
        ),
        pytest.param(
            {"server": "unknown", "multithread": True, "multiprocess": False},
            "unknown server (wsgi.multithread=True, wsgi.multiprocess=False)",
            None,
            True,  # what it claims; gthread and waitress claim it with 1 thread
            id="unknown",
        ),
    ],
)
def test_describe(
    fields: dict[str, t.Any],
    description: str,
    capacity: int | None,
    concurrent: bool | None,
) -> None:
    server_profile = ServerProfile(**fields)
    assert server_profile.describe() == description
    assert server_profile.capacity == capacity
    assert server_profile.concurrent is concurrent
    # The fix names this server's own switch (or, unknown, the general one).
    assert FIX_FRAGMENTS[server_profile.server, server_profile.worker_class] in (
        server_profile.fix_hint()
    )


def test_profile_is_frozen_and_comparable() -> None:
    first = profile(LOCAL_V4, queued=lambda: 3)
    second = profile(LOCAL_V4)
    assert first == second  # the queue probe is not part of the value
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.workers = 2  # type: ignore[misc]
    assert str(LOCAL_V4) == "127.0.0.1:8000"
    assert str(ANY_V6) == "[::]:8000"
    assert str(UNIX) == "unix:/run/app.sock"
    assert ANY_V4.wildcard and ANY_V6.wildcard and not LOCAL_V4.wildcard


# -- listening sockets and their queues ----------------------------------------


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()


def test_listener_from_socket(listening: socket.socket, tmp_path: Path) -> None:
    listener = Listener.from_socket(listening)
    assert (listener.family, listener.host) == ("inet", "127.0.0.1")
    assert listener.port == listening.getsockname()[1]
    assert listener.fd == listening.fileno()
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as six:
        six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        six.bind(("::1", 0))
        assert Listener.from_socket(six).v6only
        assert Listener.from_socket(six).family == "inet6"
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
        unix.bind(path)
        assert Listener.from_socket(unix) == Listener("unix", path, 0)


def test_scan_listeners_finds_listening_sockets_only(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound_only:
        bound_only.bind(("127.0.0.1", 0))
        found = scan_listeners()
        assert Listener("inet", "127.0.0.1", port) in found
        assert all(lis.port != bound_only.getsockname()[1] for lis in found)


def _wait_queued(listening: socket.socket, count: int) -> None:
    port = listening.getsockname()[1]
    deadline = time.monotonic() + TIMEOUT
    while server_module._proc_backlog({port}) != (count, {"127.0.0.1"}):
        assert time.monotonic() < deadline, "connections never showed in the queue"
        time.sleep(0.01)


def test_backlog_counts_queued_connections(listening: socket.socket) -> None:
    server_profile = profile(Listener.from_socket(listening))
    assert server_profile.backlog().count == 0
    assert server_profile.backlog(detail=True).count == 0
    clients = [
        socket.create_connection(listening.getsockname(), timeout=TIMEOUT)
        for _ in range(2)
    ]
    try:
        _wait_queued(listening, 2)
        assert server_profile.backlog() == Backlog(1)  # the listener is readable
        backlog = server_profile.backlog(detail=True)
        assert backlog.count == 2
        assert backlog.peers == {"127.0.0.1"}
        # Accepted by this process but its request unread: still waiting.
        clients[0].sendall(b"GET / HTTP/1.0\r\n\r\n")
        accepted, _ = listening.accept()
        with accepted:
            ready, _, _ = select.select([accepted], [], [], TIMEOUT)
            assert ready
            assert server_profile.backlog(detail=True).count == 2
            accepted.recv(1024)
            assert server_profile.backlog(detail=True).count == 1
    finally:
        for client in clients:
            client.close()


def test_backlog_without_proc_uses_select(
    listening: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "_proc_backlog", lambda ports: None)
    server_profile = profile(Listener.from_socket(listening), queued=lambda: 2)
    assert server_profile.backlog(detail=True).count == 2
    with socket.create_connection(listening.getsockname(), timeout=TIMEOUT):
        ready, _, _ = select.select([listening], [], [], TIMEOUT)
        assert ready
        backlog = server_profile.backlog(detail=True)
        assert backlog.count == 3 and backlog.peers == frozenset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0100007F:1F40", ("127.0.0.1", 8000), id="v4"),
        pytest.param("00000000000000000000000001000000:0050", ("::1", 80), id="v6"),
        pytest.param(
            "0000000000000000FFFF00000100007F:01BB", ("127.0.0.1", 443), id="mapped"
        ),
    ],
)
def test_proc_address_format(text: str, expected: tuple[str, int]) -> None:
    assert server_module._proc_addr(text) == expected


# -- detection in this process -------------------------------------------------


def _profile_app() -> Flask:
    app = Flask("profile_app")

    @app.get("/")
    def show() -> dict[str, t.Any]:
        found = detect(request.environ)
        return {
            "server": found.server,
            "worker_class": found.worker_class,
            "workers": found.workers,
            "threads": found.threads,
            "listeners": [str(lis) for lis in found.listeners],
            "source": found.source,
            "queued": found.queued() if found.queued else None,
        }

    return app


@pytest.fixture
def in_thread() -> Iterator[t.Callable[[t.Any], None]]:
    """Run a server's ``serve_forever``-like callable in a thread; stop it."""
    stops: list[tuple[t.Callable[[], None], threading.Thread]] = []

    def run(server: t.Any) -> None:
        if hasattr(server, "shutdown"):  # werkzeug
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            stop = server.shutdown
        else:  # waitress
            thread = threading.Thread(target=server.run, daemon=True)
            stop = server.close
        thread.start()
        stops.append((stop, thread))

    try:
        yield run
    finally:
        for stop, thread in stops:
            stop()
            thread.join(TIMEOUT)
            assert not thread.is_alive()


@pytest.mark.parametrize(
    ("threaded", "workers", "threads", "model"),
    [
        pytest.param(False, 1, 1, "single", id="single"),
        pytest.param(True, 1, None, "threaded", id="threaded"),
    ],
)
def test_detect_werkzeug_in_process(
    in_thread: t.Callable[[t.Any], None],
    threaded: bool,
    workers: int,
    threads: int | None,
    model: str,
) -> None:
    server = make_server("127.0.0.1", 0, _profile_app(), threaded=threaded)
    in_thread(server)
    port = server.socket.getsockname()[1]
    found = requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).json()
    assert found == {
        "server": "werkzeug",
        "worker_class": model,
        "workers": workers,
        "threads": threads,
        "listeners": [f"127.0.0.1:{port}"],
        "source": "werkzeug server",
        "queued": None,
    }


def test_detect_waitress_in_process(in_thread: t.Callable[[t.Any], None]) -> None:
    server = waitress.server.create_server(
        _profile_app(), listen="127.0.0.1:0 127.0.0.1:0", threads=3
    )
    in_thread(server)
    ports = sorted(port for _, port in server.effective_listen)  # type: ignore[attr-defined]
    found = requests.get(f"http://127.0.0.1:{ports[0]}/", timeout=TIMEOUT).json()
    assert found["server"] == "waitress"
    assert (found["workers"], found["threads"]) == (1, 3)
    assert sorted(found["listeners"]) == sorted(f"127.0.0.1:{port}" for port in ports)
    assert found["queued"] == 0


def test_detect_test_client_has_no_listener() -> None:
    response = _profile_app().test_client().get("/")
    found = response.get_json()
    assert found["source"] == "wsgi flags"
    assert (found["workers"], found["threads"]) == (1, 1)  # both WSGI flags False
    assert found["listeners"] == []


def test_detect_outside_a_request() -> None:
    found = detect()
    assert found.server == "unknown"
    assert found.listeners == ()
    assert server_module.current() is found


def test_detect_uwsgi_from_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    uwsgi = types.ModuleType("uwsgi")
    uwsgi.numproc = 1  # type: ignore[attr-defined]
    uwsgi.cores = 1  # type: ignore[attr-defined]
    uwsgi.has_threads = 0  # type: ignore[attr-defined]
    uwsgi.version = b"2.0.28"  # type: ignore[attr-defined]
    uwsgi.opt = {  # type: ignore[attr-defined]
        "http": b":8000",
        "socket": [b"/tmp/app.sock", b"127.0.0.1:3031"],
        "harakiri": b"30",
        "master": True,
    }
    monkeypatch.setitem(sys.modules, "uwsgi", uwsgi)
    found = detect({"uwsgi.version": b"2.0.28", "SERVER_PORT": "8000"})
    assert found.server == "uwsgi"
    assert found.describe() == "uWSGI, 1 process, 1 thread"
    assert found.capacity == 1
    assert found.timeout == 30.0
    assert found.version == "2.0.28"
    assert Listener("inet", "0.0.0.0", 8000) in found.listeners
    assert Listener("inet", "127.0.0.1", 3031) in found.listeners
    assert found.own_address("127.0.0.1", 8000) is not None


# -- detection on real servers -------------------------------------------------

PROFILE_APP = textwrap.dedent(
    """
    import threading

    from flask_diag.server import detect

    def describe(found):
        return {
            "server": found.server,
            "worker_class": found.worker_class,
            "workers": found.workers,
            "threads": found.threads,
            "listeners": [str(lis) for lis in found.listeners],
            "source": found.source,
            "timeout": found.timeout,
            "describe": found.describe(),
        }

    def hold(environ, start_response):
        # Serves nothing else until a second request waits for the server
        # (bounded), then says how the profile counts the queue.
        import json
        import sys
        import time

        found = detect(environ)
        print("holding", file=sys.stderr, flush=True)
        deadline = time.monotonic() + 10
        while found.backlog().count == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        counts = {
            "backlog": found.backlog().count,
            "detail": found.backlog(detail=True).count,
        }
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(counts).encode()]

    def app(environ, start_response):
        import json

        if environ.get("PATH_INFO") == "/hold":
            return hold(environ, start_response)
        if environ.get("PATH_INFO") == "/from-thread":
            # No server object on a thread of our own: gunicorn's worker is
            # found with a gc scan.
            box = []
            thread = threading.Thread(target=lambda: box.append(detect(environ)))
            thread.start()
            thread.join(10)
            found = box[0]
        else:
            found = detect(environ)
        body = json.dumps(describe(found)).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]
    """
)


@pytest.fixture
def profile_app_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "profileapp"
    directory.mkdir()
    (directory / "profileapp.py").write_text(PROFILE_APP)
    return directory


@pytest.mark.server
@pytest.mark.parametrize(
    ("args", "worker_class", "workers", "threads", "description"),
    [
        pytest.param(
            ("-w", "1"), "sync", 1, 1, "gunicorn sync worker, 1 worker", id="sync-1"
        ),
        pytest.param(
            ("-w", "2", "--timeout", "12"),
            "sync",
            2,
            1,
            "gunicorn sync worker, 2 workers",
            id="sync-2",
        ),
        pytest.param(
            ("-k", "gthread", "--threads", "1"),
            "gthread",
            1,
            1,
            "gunicorn gthread worker, 1 worker, 1 thread each",
            id="gthread-1-thread",
        ),
        pytest.param(
            ("-k", "sync", "--threads", "3"),
            "gthread",
            1,
            3,
            "gunicorn gthread worker, 1 worker, 3 threads each",
            id="sync-with-threads-is-gthread",
        ),
        pytest.param(
            ("--preload", "-w", "1"),
            "sync",
            1,
            1,
            "gunicorn sync worker, 1 worker",
            id="preload",
        ),
    ],
)
def test_detect_gunicorn(
    gunicorn_server: t.Any,
    profile_app_dir: Path,
    args: tuple[str, ...],
    worker_class: str,
    workers: int,
    threads: int,
    description: str,
) -> None:
    server = gunicorn_server("profileapp:app", *args, cwd=profile_app_dir)
    found = requests.get(server.url + "/", timeout=TIMEOUT).json()
    assert found["server"] == "gunicorn"
    assert found["source"] == "gunicorn worker"
    assert (found["worker_class"], found["workers"], found["threads"]) == (
        worker_class,
        workers,
        threads,
    )
    assert found["listeners"] == [f"127.0.0.1:{server.port}"]
    assert found["describe"] == description
    assert found["timeout"] == (12.0 if "12" in args else 30.0)


@pytest.mark.server
def test_detect_gunicorn_from_another_thread(
    gunicorn_server: t.Any, profile_app_dir: Path
) -> None:
    server = gunicorn_server("profileapp:app", "-w", "2", cwd=profile_app_dir)
    found = requests.get(server.url + "/from-thread", timeout=TIMEOUT).json()
    assert found["source"] == "gunicorn worker (gc)"
    assert (found["worker_class"], found["workers"]) == ("sync", 2)
    assert found["listeners"] == [f"127.0.0.1:{server.port}"]


@pytest.mark.server
def test_detect_werkzeug_forking(werkzeug_server: t.Any, profile_app_dir: Path) -> None:
    server = werkzeug_server(
        "profileapp:app", threaded=False, processes=3, cwd=profile_app_dir
    )
    found = requests.get(server.url + "/", timeout=TIMEOUT).json()
    assert found["describe"] == "werkzeug development server, processes=3"
    assert (found["workers"], found["threads"]) == (3, 1)
    assert found["listeners"] == [f"127.0.0.1:{server.port}"]


@pytest.mark.server
def test_detect_waitress_one_thread(
    waitress_server: t.Any, profile_app_dir: Path
) -> None:
    server = waitress_server("profileapp:app", "--threads=1", cwd=profile_app_dir)
    found = json.loads(requests.get(server.url + "/", timeout=TIMEOUT).text)
    assert found["describe"] == "waitress, 1 thread"
    assert found["listeners"] == [f"127.0.0.1:{server.port}"]


@pytest.mark.server
def test_backlog_counts_the_waitress_queue(
    waitress_server: t.Any, profile_app_dir: Path
) -> None:
    # waitress reads a request before it queues it for a thread: the kernel
    # (/proc, the detailed count) no longer sees it waiting, only waitress's
    # own queue does, with or without detail.
    server = waitress_server("profileapp:app", "--threads=1", cwd=profile_app_dir)
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(requests.get, server.url + "/hold", timeout=TIMEOUT)
        server.wait_for_log("holding", timeout=TIMEOUT)
        with socket.create_connection((server.host, server.port), TIMEOUT) as queued:
            queued.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert held.result(TIMEOUT).json() == {"backlog": 1, "detail": 1}
            queued.settimeout(TIMEOUT)
            assert queued.recv(1024).startswith(b"HTTP/1.0 200")
