"""The remote pdb on real servers (pitfall 4).

Each test starts ``examples/pitfall4_pdb/app.py`` under a real server on
127.0.0.1 (gunicorn sync and gthread, uWSGI) with
``PYTHONBREAKPOINT=flask_diag.set_trace``, sends the request that hits the
``breakpoint()`` from a thread, and debugs it over TCP: as a raw socket, with
``nc``, and with ``python -m flask_diag pdb`` in a real terminal (tmux).
Every wait is bounded; servers and tmux sessions are stopped at teardown.
The socket helpers (``connect``, ``command``, ``first_stop``) are those of
``test_pdb.py``: a session reads the same in-process and on a server.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing as t
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from servers import EXAMPLES
from servers import free_port
from servers import ROOT
from servers import ServerProcess
from servers import uwsgi_command
from test_pdb import command
from test_pdb import connect
from test_pdb import first_stop

pytestmark = pytest.mark.server

APP_DIR = EXAMPLES / "pitfall4_pdb"
TIMEOUT = 20.0
BREAKPOINT_LINE = next(
    number
    for number, text in enumerate((APP_DIR / "app.py").read_text().splitlines(), 1)
    if text.strip() == "breakpoint()"
)


def pdb_env(port: int, **extra: str) -> dict[str, str | None]:
    return {
        "PYTHONBREAKPOINT": "flask_diag.set_trace",
        "FLASK_DIAG_PDB": "on",
        "FLASK_DIAG_PDB_PORT": str(port),
        "FLASK_DIAG_PDB_WAIT": "30",
        **extra,
    }


@pytest.fixture
def pdb_port() -> int:
    return free_port()


@pytest.fixture
def pdb_gunicorn(
    gunicorn_server: t.Callable[..., ServerProcess], pdb_port: int
) -> t.Callable[..., ServerProcess]:
    """``pdb_gunicorn(*options, **env)``: the example under gunicorn with the
    remote pdb on ``pdb_port`` (``env`` adds to :func:`pdb_env`)."""

    def start(*options: str, **env: str) -> ServerProcess:
        return gunicorn_server(
            "app:app", *options, env=pdb_env(pdb_port, **env), cwd=APP_DIR
        )

    return start


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    """Threads for the HTTP requests that wait in a breakpoint."""
    with ThreadPoolExecutor(4) as pool:
        yield pool


def get_answer(pool: ThreadPoolExecutor, server: ServerProcess) -> Future[t.Any]:
    return pool.submit(requests.get, server.url + "/answer", timeout=60)


def closes_by_itself(sock: socket.socket, timeout: float = 5.0) -> str:
    """Read until the server closes the connection; fail after ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data.decode()


def banner_fields(banner: str) -> dict[str, str]:
    pid = re.search(r"^\*\*\* process: pid (\d+) \((.*)\)$", banner, re.M)
    request = re.search(r"^\*\*\* request: (\S+)", banner, re.M)
    timeout = re.search(r"^\*\*\* timeout: (.*)$", banner, re.M)
    assert pid and request and timeout, banner
    return {
        "pid": pid[1],
        "process": pid[2],
        "request": request[1],
        "timeout": timeout[1],
    }


def seconds_left(timeout: str) -> int:
    found = re.search(r"killed in about (\d+) s", timeout)
    assert found, timeout
    return int(found[1])


def debug_answer_view(port: int) -> dict[str, str]:
    """The acceptance session: banner, ``p``, ``n``, change a local,
    ``continue``; the connection must close by itself."""
    with connect(port, TIMEOUT) as sock:
        banner = first_stop(sock)
        assert f"app.py({BREAKPOINT_LINE + 1})answer()" in banner
        assert "'/answer'" in command(sock, "p request.path")
        assert "-> log.info" in command(sock, "n")
        command(sock, "!answer = 42")
        sock.sendall(b"continue\n")
        assert "no breakpoints left" in closes_by_itself(sock)
    return banner_fields(banner)


def server_lines(server: ServerProcess, event: str, count: int = 1) -> list[t.Any]:
    return server.wait_for_json_lines(
        lambda line: line.get("event") == event, count=count
    )


# -- gunicorn and uWSGI -----------------------------------------------------------


def test_gunicorn_sync_session(
    pdb_gunicorn: t.Callable[..., ServerProcess],
    background: ThreadPoolExecutor,
    pdb_port: int,
) -> None:
    server = pdb_gunicorn("-w", "1", "-k", "sync", "--timeout", "120")
    response = get_answer(background, server)
    fields = debug_answer_view(pdb_port)
    r = response.result(timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json() == {"answer": 42, "doubled": 2, "path": "/answer"}
    assert fields["pid"] == r.headers["X-Diag-PID"] != str(server.pid)
    assert fields["request"] == r.headers["X-Request-ID"]
    assert fields["timeout"].startswith(
        "gunicorn --timeout 120, SyncWorker (from the running worker): this worker"
        " is killed in about"
    )
    assert 100 < seconds_left(fields["timeout"]) <= 120
    assert fields["process"] == "gunicorn worker"
    (waiting,) = server_lines(server, "remote pdb waiting for a client")
    assert waiting["address"] == f"127.0.0.1:{pdb_port}"
    assert waiting["attach"].startswith(f"python -m flask_diag pdb {pdb_port}")
    assert waiting["pid"] == int(r.headers["X-Diag-PID"])
    assert waiting["thread"] == r.headers["X-Diag-Thread"]
    assert waiting["request_id"] == r.headers["X-Request-ID"]
    assert waiting["line"] == BREAKPOINT_LINE
    (ended,) = server_lines(server, "remote pdb session ended")
    assert ended["reason"] == "continue"


def test_uwsgi_session_shows_harakiri(
    server_factory: t.Callable[..., ServerProcess],
    background: ThreadPoolExecutor,
    pdb_port: int,
) -> None:
    server = server_factory(
        uwsgi_command("--processes", "1", "--harakiri", "90"),
        env=pdb_env(pdb_port),
        cwd=APP_DIR,
        name="uwsgi",
    )
    response = get_answer(background, server)
    fields = debug_answer_view(pdb_port)
    r = response.result(timeout=TIMEOUT)
    assert r.json() == {"answer": 42, "doubled": 2, "path": "/answer"}
    assert fields["pid"] == r.headers["X-Diag-PID"]
    assert fields["request"] == r.headers["X-Request-ID"]
    assert fields["timeout"].startswith(
        "uwsgi harakiri 90 (from uwsgi.opt): this worker is killed in about"
    )
    assert 70 < seconds_left(fields["timeout"]) <= 90
    assert fields["process"] == "uWSGI worker 1"


def test_gunicorn_gthread_one_session_per_process(
    pdb_gunicorn: t.Callable[..., ServerProcess],
    background: ThreadPoolExecutor,
    pdb_port: int,
) -> None:
    server = pdb_gunicorn(
        "-w",
        "1",
        "-k",
        "gthread",
        "--threads",
        "2",
        "--timeout",
        "30",
        FLASK_DIAG_PDB_BUSY="skip",
    )
    first = get_answer(background, server)
    with connect(pdb_port, TIMEOUT) as sock:
        fields = banner_fields(first_stop(sock))
        assert fields["timeout"].startswith(
            "gunicorn --timeout 30, ThreadWorker (from the running worker): a"
            " heartbeat of the worker's main loop only; this paused request thread"
            " is not killed"
        )
        # Another request in the other thread: skipped, answered at once.
        second = get_answer(background, server).result(timeout=TIMEOUT)
        assert second.json()["answer"] == 1
        assert second.headers["X-Diag-PID"] == fields["pid"]
        command(sock, "!answer = 42")
        sock.sendall(b"c\n")
        closes_by_itself(sock)
    assert first.result(timeout=TIMEOUT).json()["answer"] == 42
    (skipped,) = server_lines(server, "remote pdb busy: breakpoint skipped")
    assert skipped["request_id"] == second.headers["X-Request-ID"]
    assert skipped["busy_with"] == fields["request"]


def test_not_enabled_the_request_completes_and_the_warning_is_logged(
    gunicorn_server: t.Callable[..., ServerProcess],
) -> None:
    server = gunicorn_server(
        "app:app",
        *("-w", "1", "--timeout", "30"),
        env={"PYTHONBREAKPOINT": "flask_diag.set_trace"},
        cwd=APP_DIR,
    )
    started = time.monotonic()
    r = requests.get(server.url + "/answer", timeout=TIMEOUT)
    assert time.monotonic() - started < 5
    assert r.json()["answer"] == 1
    (line,) = server_lines(server, "forgotten breakpoint ignored")
    assert line["level"] == "warning"
    assert line["file"] == str(APP_DIR / "app.py")
    assert line["line"] == BREAKPOINT_LINE
    assert line["request_id"] == r.headers["X-Request-ID"]
    assert line["pid"] == int(r.headers["X-Diag-PID"])
    assert "ForgottenBreakpointWarning" in server.log_text()


def test_nobody_attaches_the_request_completes_after_the_wait(
    pdb_gunicorn: t.Callable[..., ServerProcess],
) -> None:
    server = pdb_gunicorn("-w", "1", "--timeout", "30", FLASK_DIAG_PDB_WAIT="1")
    started = time.monotonic()
    r = requests.get(server.url + "/answer", timeout=TIMEOUT)
    assert 1 <= time.monotonic() - started < 10
    assert r.json()["answer"] == 1
    (line,) = server_lines(server, "remote pdb: nobody attached, the code continues")
    assert line["request_id"] == r.headers["X-Request-ID"]


def test_client_disconnect_mid_session_the_request_completes(
    pdb_gunicorn: t.Callable[..., ServerProcess],
    background: ThreadPoolExecutor,
    pdb_port: int,
) -> None:
    server = pdb_gunicorn("-w", "1", "--timeout", "120")
    response = get_answer(background, server)
    with connect(pdb_port, TIMEOUT) as sock:
        first_stop(sock)
        command(sock, "!answer = 3")
    r = response.result(timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json()["answer"] == 3
    (ended,) = server_lines(server, "remote pdb session ended")
    assert ended["reason"] == "disconnected"
    # The worker still serves, and the next breakpoint listens again.
    again = get_answer(background, server)
    with connect(pdb_port, TIMEOUT) as sock:
        first_stop(sock)
        sock.sendall(b"c\n")
        closes_by_itself(sock)
    assert again.result(timeout=TIMEOUT).json()["answer"] == 1


def test_nc_still_works(
    pdb_gunicorn: t.Callable[..., ServerProcess],
    background: ThreadPoolExecutor,
    pdb_port: int,
) -> None:
    nc = shutil.which("nc")
    if nc is None:
        pytest.fail(
            "nc is not installed: scripts/test.sh installs netcat-openbsd",
            pytrace=False,
        )
    server = pdb_gunicorn("-w", "1", "--timeout", "120")
    response = get_answer(background, server)
    server_lines(server, "remote pdb waiting for a client")
    # nc sends its input and exits only when the server closes: 'continue'.
    session = subprocess.run(
        [nc, "localhost", str(pdb_port)],
        input="p request.path\n!answer = 42\ncontinue\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert session.returncode == 0, session.stderr
    assert "*** flask_diag remote pdb" in session.stdout
    assert "'/answer'" in session.stdout
    assert response.result(timeout=TIMEOUT).json()["answer"] == 42


# -- the interactive client in a real terminal -------------------------------------

_terminals = itertools.count()


class Terminal:
    """A tmux session of its own tmux server, 200x50.

    The server's socket is in the temporary directory of the run (``-S``;
    ``-L`` would put it under ``/tmp/tmux-UID``, where tmux leaves it behind),
    and removed at the end."""

    def __init__(self) -> None:
        self.name = f"flask-diag-pdb-{os.getpid()}-{next(_terminals)}"
        self.socket = Path(tempfile.gettempdir()) / f"{self.name}.tmux"

    def tmux(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=check,
        )
        return result.stdout

    def start(self, command: str) -> None:
        self.tmux(
            *("new-session", "-d", "-s", self.name, "-x", "200", "-y", "50"),
            *("-c", str(ROOT), command),
        )

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.name, *keys)

    def type(self, text: str) -> None:
        self.keys("-l", text)
        self.keys("Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-500", "-t", self.name)

    def last_line(self) -> str:
        lines = self.screen().rstrip().splitlines()
        return lines[-1] if lines else ""

    def wait_for(self, check: t.Callable[[str], bool], timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"not on the screen in {timeout}s:\n{screen}")
            time.sleep(0.1)

    def wait_for_prompt(self, text: str = "") -> str:
        return self.wait_for(
            lambda _: self.last_line().rstrip() == f"(Pdb) {text}".rstrip()
        )

    def close(self) -> None:
        self.tmux("kill-session", "-t", self.name, check=False)
        self.tmux("kill-server", check=False)
        self.socket.unlink(missing_ok=True)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: scripts/test.sh installs it", pytrace=False)
    term = Terminal()
    try:
        yield term
    finally:
        term.close()


def client_command(port: int, history: Path, *options: str) -> str:
    # The shell stays after the client, so its exit status can be read.
    args = " ".join(options)
    return (
        f"{sys.executable} -m flask_diag pdb {port} --history {history} {args};"
        " echo CLIENT-EXIT=$?; sleep 600"
    )


def test_client_in_a_terminal_history_and_clean_exit(
    pdb_gunicorn: t.Callable[..., ServerProcess],
    background: ThreadPoolExecutor,
    terminal: Terminal,
    pdb_port: int,
    tmp_path: Path,
) -> None:
    history = tmp_path / "history"
    history.write_text("p 6 * 7\n")  # from an earlier session
    server = pdb_gunicorn("-w", "1", "--timeout", "120")
    # The client starts first and waits for the breakpoint to listen.
    terminal.start(client_command(pdb_port, history, "--once"))
    terminal.wait_for(lambda s: "waiting for a breakpoint" in s)
    response = get_answer(background, server)
    terminal.wait_for_prompt()
    assert "*** flask_diag remote pdb" in terminal.screen()

    terminal.keys("Up")  # the history file's line
    terminal.wait_for_prompt("p 6 * 7")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: "\n42\n" in s)

    terminal.type("p request.path")
    terminal.wait_for(lambda s: s.count("'/answer'") == 1)
    terminal.keys("Up")  # this session's line
    terminal.wait_for_prompt("p request.path")
    terminal.keys("Enter")
    terminal.wait_for(lambda s: s.count("'/answer'") == 2)

    terminal.type("!answer = 42")
    terminal.wait_for_prompt()
    terminal.type("continue")
    screen = terminal.wait_for(lambda s: "CLIENT-EXIT=" in s)
    assert "CLIENT-EXIT=0" in screen
    assert "no breakpoints left" in screen
    assert "Traceback" not in screen
    assert response.result(timeout=TIMEOUT).json()["answer"] == 42
    saved = history.read_text().splitlines()
    assert saved[-3:] == ["p request.path", "!answer = 42", "continue"]
    assert history.stat().st_mode & 0o777 == 0o600


def test_client_in_a_terminal_reconnects_to_the_next_breakpoint(
    pdb_gunicorn: t.Callable[..., ServerProcess],
    background: ThreadPoolExecutor,
    terminal: Terminal,
    pdb_port: int,
    tmp_path: Path,
) -> None:
    server = pdb_gunicorn("-w", "1", "--timeout", "120")
    terminal.start(client_command(pdb_port, tmp_path / "history"))
    first = get_answer(background, server)
    terminal.wait_for_prompt()
    terminal.type("c")
    terminal.wait_for(lambda s: "waiting for the next breakpoint" in s)
    first_id = first.result(timeout=TIMEOUT).headers["X-Request-ID"]

    second = get_answer(background, server)
    screen = terminal.wait_for(lambda s: s.count("*** flask_diag remote pdb") == 2)
    terminal.wait_for_prompt()
    terminal.type("!answer = 2")
    terminal.wait_for_prompt()
    terminal.type("c")
    terminal.wait_for(lambda s: s.count("waiting for the next breakpoint") == 2)
    r = second.result(timeout=TIMEOUT)
    assert r.json()["answer"] == 2
    screen = terminal.screen()
    assert f"*** request: {first_id} GET /answer" in screen
    assert f"*** request: {r.headers['X-Request-ID']} GET /answer" in screen

    terminal.keys("C-c")  # stop waiting: a clean exit
    screen = terminal.wait_for(lambda s: "CLIENT-EXIT=" in s)
    assert "CLIENT-EXIT=0" in screen
    assert "Traceback" not in screen
