"""In-process tests of the remote pdb (``flask_diag.set_trace``).

The debugged code runs in a thread of the test process; the test is the
client, over TCP on 127.0.0.1. The same on real servers (gunicorn, uWSGI),
with ``nc`` and with the interactive client in a terminal, is in
``test_pdb_servers.py``.
"""

from __future__ import annotations

import bdb
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import typing as t
import warnings
from pathlib import Path

import pytest
import structlog
from flask import copy_current_request_context
from flask import Flask
from servers import EXAMPLES
from servers import free_port

import flask_diag
import flask_diag.pdb as remote_pdb
from flask_diag import DiagConfigError
from flask_diag import pdb_client
from flask_diag import Settings
from flask_diag.context import RequestInfo
from flask_diag.pdb import ForgottenBreakpointWarning
from flask_diag.testing import capture_logs
from flask_diag.testing import capture_signals
from flask_diag.worker_timeout import KillTimer
from flask_diag.worker_timeout import worker_kill_timer

TIMEOUT = 10.0
PROMPT = b"(Pdb) "


@pytest.fixture(autouse=True)
def _fresh_state() -> t.Iterator[None]:
    """No forgotten-breakpoint rate limit or session left from another test."""
    remote_pdb._forgotten_last.clear()
    yield
    remote_pdb._forgotten_last.clear()
    assert remote_pdb._current is None, "a test left a remote pdb session open"


@pytest.fixture
def pdb_env(monkeypatch: pytest.MonkeyPatch) -> int:
    """The remote pdb on, on a free loopback port, with a short wait."""
    port = free_port()
    monkeypatch.setenv("FLASK_DIAG_PDB", "on")
    monkeypatch.setenv("FLASK_DIAG_PDB_PORT", str(port))
    monkeypatch.setenv("FLASK_DIAG_PDB_WAIT", "10")
    return port


class Debugged:
    """``target()`` run in a thread; its return value or exception."""

    def __init__(self, target: t.Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                self.result = target()
            except BaseException as exc:  # BdbQuit included
                self.error = exc
            finally:
                self.done.set()

        self.thread = threading.Thread(target=run, name="debugged", daemon=True)
        self.thread.start()

    def join(self, timeout: float = TIMEOUT) -> object:
        assert self.done.wait(timeout), "the debugged code did not continue"
        self.thread.join(timeout)
        return self.result


def connect(port: int, timeout: float = TIMEOUT) -> socket.socket:
    """Connect to the remote pdb, retrying until it listens (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
            continue
        sock.settimeout(timeout)
        return sock


def read_until(sock: socket.socket, marker: bytes = PROMPT) -> str:
    """Read until the output ends with ``marker`` (bounded by the timeout)."""
    data = b""
    while not data.endswith(marker):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed; got {data!r}")
        data += chunk
    return data.decode()


def command(sock: socket.socket, line: str, marker: bytes = PROMPT) -> str:
    sock.sendall(line.encode() + b"\n")
    return read_until(sock, marker)


# Python 3.13+ stops on the line of the breakpoint itself, older versions on
# the next line: tests step once more on 3.13 to see the same stops.
_AT_BREAKPOINT = re.compile(r"^-> .*(breakpoint\(\)|set_trace\()", re.M)


def past_breakpoint(sock: socket.socket, output: str) -> str:
    if _AT_BREAKPOINT.search(output.rsplit("\n> ", 1)[-1]):
        output += command(sock, "n")
    return output


def first_stop(sock: socket.socket) -> str:
    """The banner and the first stop, on the line after the breakpoint."""
    return past_breakpoint(sock, read_until(sock))


def read_to_end(sock: socket.socket) -> str:
    """Everything until the server closes the connection (bounded)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data.decode()


def events(logs: list[t.MutableMapping[str, t.Any]], event: str) -> list[t.Any]:
    return [line for line in logs if line["event"] == event]


def wait_for_event(
    logs: list[t.MutableMapping[str, t.Any]], event: str, count: int = 1
) -> list[t.Any]:
    deadline = time.monotonic() + TIMEOUT
    while len(found := events(logs, event)) < count:
        assert time.monotonic() < deadline, f"no {event!r} in {logs}"
        time.sleep(0.02)
    return found


def _line_of(marker: str) -> int:
    for number, text in enumerate(Path(__file__).read_text().splitlines(), 1):
        if text.rstrip().endswith(marker):
            return number
    raise AssertionError(marker)


def answer_view() -> dict[str, int]:
    answer = 1
    flask_diag.set_trace()  # the answer breakpoint
    doubled = answer * 2
    return {"answer": answer, "doubled": doubled}


# -- off by default ---------------------------------------------------------------


def forgotten() -> float:
    started = time.perf_counter()
    flask_diag.set_trace()  # the forgotten breakpoint
    return time.perf_counter() - started


def test_off_logs_file_line_and_request_id_and_returns_at_once() -> None:
    structlog.contextvars.bind_contextvars(request_id="req-forgotten")
    with capture_logs() as logs, pytest.warns(ForgottenBreakpointWarning) as warned:
        elapsed = forgotten()
    assert elapsed < 0.5
    (line,) = events(logs, "forgotten breakpoint ignored")
    assert line["log_level"] == "warning"
    assert line["file"] == __file__
    assert line["line"] == _line_of("# the forgotten breakpoint")
    assert line["function"] == "forgotten"
    assert line["request_id"] == "req-forgotten"
    assert "FLASK_DIAG_PDB" in line["reason"]
    # The warning points at the breakpoint, so -W error / filterwarnings
    # catches it where it is.
    assert warned[0].filename == __file__
    assert warned[0].lineno == _line_of("# the forgotten breakpoint")


def test_forgotten_breakpoint_is_an_error_under_warning_filters() -> None:
    """How a test suite catches a forgotten breakpoint: ``-W error``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ForgottenBreakpointWarning)
        with pytest.raises(ForgottenBreakpointWarning, match="breakpoint\\(\\) at"):
            forgotten()


def test_breakpoint_builtin_uses_the_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONBREAKPOINT", "flask_diag.set_trace")
    with capture_logs() as logs, pytest.warns(ForgottenBreakpointWarning):
        breakpoint()  # the builtin breakpoint
    (line,) = events(logs, "forgotten breakpoint ignored")
    assert line["line"] == _line_of("# the builtin breakpoint")


def test_forgotten_breakpoint_in_a_loop_is_logged_once_per_interval() -> None:
    with capture_logs() as logs, pytest.warns(ForgottenBreakpointWarning):
        for _ in range(50):
            forgotten()
    assert len(events(logs, "forgotten breakpoint ignored")) == 1


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        pytest.param({"FLASK_DIAG_PDB": "off"}, "FLASK_DIAG_PDB", id="pdb-off"),
        pytest.param(
            {"FLASK_DIAG_PDB": "on", "FLASK_DIAG": "off"}, "FLASK_DIAG=off", id="master"
        ),
        pytest.param(
            {"FLASK_DIAG_PDB": "on", "FLASK_DIAG_PDB_PORT": "nope"},
            "invalid flask_diag setting",
            id="invalid",
        ),
    ],
)
def test_not_enabled(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], reason: str
) -> None:
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with capture_logs() as logs, pytest.warns(ForgottenBreakpointWarning):
        assert forgotten() < 0.5
    (line,) = events(logs, "forgotten breakpoint ignored")
    assert reason in line["reason"]


def test_settings_are_read_again_when_the_environment_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLASK_DIAG_PDB_WAIT", "5")
    first = remote_pdb._load_settings()
    assert remote_pdb._load_settings() is first  # cached
    monkeypatch.setenv("FLASK_DIAG_PDB_WAIT", "7")
    assert remote_pdb._load_settings().pdb_wait == 7.0


# -- settings -------------------------------------------------------------------


def test_pdb_settings_defaults() -> None:
    settings = Settings.load(environ={})
    assert settings.pdb is False
    assert settings.pdb_host == "127.0.0.1"
    assert settings.pdb_port == 4444
    assert settings.pdb_wait == 120.0
    assert settings.pdb_quit == "continue"
    assert settings.pdb_busy == "wait"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        pytest.param("FLASK_DIAG_PDB_HOST", "example.com", id="host-name"),
        pytest.param("FLASK_DIAG_PDB_HOST", "", id="host-empty"),
        pytest.param("FLASK_DIAG_PDB_PORT", "65536", id="port-high"),
        pytest.param("FLASK_DIAG_PDB_PORT", "-1", id="port-negative"),
        pytest.param("FLASK_DIAG_PDB_WAIT", "0", id="wait-zero"),
        pytest.param("FLASK_DIAG_PDB_WAIT", "nan", id="wait-nan"),
        pytest.param("FLASK_DIAG_PDB_QUIT", "exit", id="quit"),
        pytest.param("FLASK_DIAG_PDB_BUSY", "queue", id="busy"),
    ],
)
def test_invalid_pdb_settings(variable: str, value: str) -> None:
    with pytest.raises(DiagConfigError, match=variable):
        Settings.load(environ={variable: value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [("::1", "::1"), (" 127.0.0.2 ", "127.0.0.2"), ("LOCALHOST", "localhost")],
)
def test_pdb_host_values(value: str, expected: str) -> None:
    assert Settings.load(environ={"FLASK_DIAG_PDB_HOST": value}).pdb_host == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.1", False),
    ],
)
def test_loopback_rule(host: str, loopback: bool) -> None:
    assert remote_pdb._is_loopback(host) is loopback


# -- nobody attaches, host and port rules ---------------------------------------


def test_nobody_attaches_the_code_continues_after_the_wait(
    pdb_env: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_DIAG_PDB_WAIT", "0.3")
    structlog.contextvars.bind_contextvars(request_id="req-alone")
    with capture_logs() as logs:
        started = time.monotonic()
        assert answer_view() == {"answer": 1, "doubled": 2}
        elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 3
    (waiting,) = events(logs, "remote pdb waiting for a client")
    assert waiting["address"] == f"127.0.0.1:{pdb_env}"
    assert waiting["attach"].startswith(f"python -m flask_diag pdb {pdb_env}")
    assert f"nc 127.0.0.1 {pdb_env}" in waiting["attach"]
    assert waiting["pid"] == os.getpid()
    assert waiting["thread"] == threading.current_thread().name
    assert waiting["request_id"] == "req-alone"
    assert waiting["line"] == _line_of("# the answer breakpoint")
    (gave_up,) = events(logs, "remote pdb: nobody attached, the code continues")
    assert gave_up["waited_s"] == 0.3
    assert sys.gettrace() is None
    # The port is free again.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", pdb_env))


def test_taken_port_uses_the_next_free_one(
    pdb_env: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_DIAG_PDB_WAIT", "0.1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        monkeypatch.setenv("FLASK_DIAG_PDB_PORT", str(port))
        with capture_logs() as logs:
            answer_view()
    (waiting,) = events(logs, "remote pdb waiting for a client")
    host, _, bound = waiting["address"].rpartition(":")
    assert host == "127.0.0.1"
    assert port < int(bound) < port + remote_pdb.PORT_TRIES


def test_non_loopback_host_is_logged_loudly(
    pdb_env: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 192.0.2.1 (TEST-NET-1) is on no interface here: binding fails, so the
    # test never listens beyond loopback, and the code continues.
    monkeypatch.setenv("FLASK_DIAG_PDB_HOST", "192.0.2.1")
    with capture_logs() as logs:
        assert answer_view() == {"answer": 1, "doubled": 2}
    (loud,) = [line for line in logs if line["log_level"] == "critical"]
    assert "non-loopback" in loud["event"]
    assert loud["host"] == "192.0.2.1"
    assert loud["setting"] == "FLASK_DIAG_PDB_HOST"
    assert events(logs, "remote pdb cannot listen: the code continues")


# -- sessions -------------------------------------------------------------------


def test_session_banner_step_change_local_and_continue_closes(pdb_env: int) -> None:
    def view() -> dict[str, int]:
        structlog.contextvars.bind_contextvars(request_id="req-session")
        return answer_view()

    with capture_logs() as logs, capture_signals() as sent:
        debugged = Debugged(view)
        with connect(pdb_env) as sock:
            banner = first_stop(sock)
            assert f"pid {os.getpid()}" in banner
            assert "thread:  debugged" in banner
            assert "request: req-session" in banner
            assert "timeout: no gunicorn or uWSGI worker timeout found" in banner
            assert "-> doubled = answer * 2" in banner
            assert "1" in command(sock, "p answer").splitlines()
            assert "-> return" in command(sock, "n")
            command(sock, "!answer = 42")
            sock.sendall(b"continue\n")
            tail = read_to_end(sock)  # the server closes the connection
        assert "no breakpoints left" in tail
        assert debugged.join() == {"answer": 42, "doubled": 2}
    (ended,) = events(logs, "remote pdb session ended")
    assert ended["reason"] == "continue"
    assert ended["request_id"] == "req-session"
    names = [signal.name for signal in sent]
    assert names == ["pdb-session-started", "pdb-session-ended"]
    assert sent[0].kwargs["request_id"] == "req-session"
    assert sent[1].kwargs["reason"] == "continue"


def test_client_disconnect_mid_session_lets_the_code_continue(pdb_env: int) -> None:
    with capture_logs() as logs:
        debugged = Debugged(answer_view)
        with connect(pdb_env) as sock:
            first_stop(sock)
            command(sock, "n")
        assert debugged.join() == {"answer": 1, "doubled": 2}
        assert debugged.error is None
    (ended,) = events(logs, "remote pdb session ended")
    assert ended["reason"] == "disconnected"


def test_a_web_pages_request_is_refused_before_any_line_runs(
    pdb_env: int, tmp_path: Path
) -> None:
    # What fetch(..., {method: "POST", mode: "no-cors"}) from a web page
    # sends to the port (an SSH tunnel makes it local on the developer's
    # machine): its body must never run as pdb commands.
    marker = tmp_path / "pwned"
    with capture_logs() as logs:
        debugged = Debugged(answer_view)
        with connect(pdb_env) as sock:
            first_stop(sock)
            sock.sendall(
                b"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: text/plain\r\n\r\n"
                + f"!open({str(marker)!r}, 'w').write('x')\n".encode()
            )
            read_to_end(sock)
        assert debugged.join() == {"answer": 1, "doubled": 2}
    assert not marker.exists()
    assert events(logs, "remote pdb refused an HTTP request")


def test_a_line_without_end_ends_the_session(pdb_env: int) -> None:
    debugged = Debugged(answer_view)
    with connect(pdb_env) as sock:
        first_stop(sock)
        try:
            sock.sendall(b"x" * (256 * 1024))  # no newline: no command
        except OSError:
            pass  # the server dropped the connection first
        assert debugged.join() == {"answer": 1, "doubled": 2}


def test_the_banner_escapes_control_characters_of_the_path() -> None:
    from flask_diag.context import RequestInfo
    from flask_diag.pdb import _banner

    info = RequestInfo("id", None, 1, "MainThread", "GET", "/x\x1b]52;c;aGk=\x07", 0.0)
    banner = _banner(info, "id", None, "127.0.0.1:4444")
    assert "\x1b" not in banner and "\x07" not in banner
    assert "/x\\x1b]52;c;aGk=\\x07" in banner


def test_client_reset_mid_session_lets_the_code_continue(pdb_env: int) -> None:
    debugged = Debugged(answer_view)
    sock = connect(pdb_env)
    first_stop(sock)
    # RST instead of FIN: the next write of the server fails.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
    sock.close()
    assert debugged.join() == {"answer": 1, "doubled": 2}
    assert debugged.error is None


def test_quit_detaches_and_the_code_continues(pdb_env: int) -> None:
    def view() -> tuple[dict[str, int], object]:
        answer = answer_view()
        return answer, sys.gettrace()  # the line after quit

    with capture_logs() as logs:
        debugged = Debugged(view)
        with connect(pdb_env) as sock:
            first_stop(sock)
            # A breakpoint left would keep the thread traced after quit.
            where = _line_of("# the line after quit")
            assert re.search(r"^Breakpoint \d+ at ", command(sock, f"break {where}"))
            sock.sendall(b"quit\n")
            assert "detached" in read_to_end(sock)
        assert debugged.join() == ({"answer": 1, "doubled": 2}, None)
    (ended,) = events(logs, "remote pdb session ended")
    assert ended["reason"] == "quit"


def test_quit_can_raise_like_plain_pdb(
    pdb_env: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_DIAG_PDB_QUIT", "raise")
    debugged = Debugged(answer_view)
    with connect(pdb_env) as sock:
        first_stop(sock)
        sock.sendall(b"q\n")
        assert "BdbQuit" in read_to_end(sock)
    debugged.join()
    assert isinstance(debugged.error, bdb.BdbQuit)


def test_continue_with_breakpoints_left_keeps_the_session(pdb_env: int) -> None:
    def view() -> int:
        total = 0
        flask_diag.set_trace()
        for step in range(3):
            total += step  # the loop body
        return total

    debugged = Debugged(view)
    with connect(pdb_env) as sock:
        first_stop(sock)
        command(sock, f"break {_line_of('# the loop body')}")
        assert "breakpoint(s) left" in command(sock, "c")
        assert "0" in command(sock, "p total").splitlines()
        command(sock, "clear", b"Clear all breaks? ")
        assert "Deleted breakpoint" in command(sock, "y")
        sock.sendall(b"c\n")
        assert "no breakpoints left" in read_to_end(sock)
    assert debugged.join() == 3


def test_a_second_breakpoint_in_the_same_thread_reuses_the_client(
    pdb_env: int,
) -> None:
    def view() -> int:
        value = 1
        flask_diag.set_trace()
        value += 1
        flask_diag.set_trace(header="second stop")
        value += 1  # after the second stop
        return value

    with capture_logs() as logs:
        debugged = Debugged(view)
        with connect(pdb_env) as sock:
            first_stop(sock)
            command(sock, "n")
            reached = past_breakpoint(sock, command(sock, "n"))  # over set_trace
            assert "second stop" in reached
            assert "# after the second stop" in reached
            sock.sendall(b"c\n")
            read_to_end(sock)
        assert debugged.join() == 3
    assert len(events(logs, "remote pdb waiting for a client")) == 1


def test_a_client_gone_between_stops_gets_a_new_listener(pdb_env: int) -> None:
    client_gone = threading.Event()

    def view() -> int:
        value = 1
        flask_diag.set_trace()
        client_gone.wait(TIMEOUT)
        flask_diag.set_trace()
        value += 1  # never a stop of the first session
        return value

    with capture_logs() as logs:
        debugged = Debugged(view)
        with connect(pdb_env) as sock:
            first_stop(sock)
            command(sock, f"break {_line_of('# never a stop of the first session')}")
            # No prompt follows: the code runs until a breakpoint.
            assert "breakpoint(s) left" in command(sock, "c", b"the session).\n")
        client_gone.set()
        # The second set_trace() finds the first client gone.
        wait_for_event(logs, "remote pdb waiting for a client", count=2)
        with connect(pdb_env) as sock:
            first_stop(sock)
            sock.sendall(b"c\n")
            assert "no breakpoints left" in read_to_end(sock)
        assert debugged.join() == 2
    reasons = [line["reason"] for line in events(logs, "remote pdb session ended")]
    assert reasons == ["disconnected", "continue"]


def test_interact_talks_to_the_client(pdb_env: int) -> None:
    debugged = Debugged(answer_view)
    with connect(pdb_env) as sock:
        first_stop(sock)
        command(sock, "interact", b">>> ")
        assert "42" in command(sock, "print(answer * 42)", b">>> ").splitlines()
        assert "1" in command(sock, "answer", b">>> ").splitlines()
        command(sock, "import sys; sys.exit(3)")  # must not stop the worker
        sock.sendall(b"c\n")
        read_to_end(sock)
    assert debugged.join() == {"answer": 1, "doubled": 2}


def test_debug_runs_a_recursive_debugger_over_the_connection(pdb_env: int) -> None:
    debugged = Debugged(answer_view)
    with connect(pdb_env) as sock:
        first_stop(sock)
        command(sock, "!answer = 2")
        entered = command(sock, "debug answer * 42", b"((Pdb)) ")
        assert "ENTERING RECURSIVE DEBUGGER" in entered
        # The frame's locals, with the value changed in the session.
        assert "2" in command(sock, "p answer", b"((Pdb)) ").splitlines()
        assert "LEAVING RECURSIVE DEBUGGER" in command(sock, "c")
        assert "2" in command(sock, "p answer").splitlines()  # back in the session
        sock.sendall(b"c\n")
        read_to_end(sock)
    assert debugged.join() == {"answer": 2, "doubled": 4}


def test_header_follows_the_banner(pdb_env: int) -> None:
    def view() -> None:
        flask_diag.set_trace(header="looking at the cart")
        return None

    debugged = Debugged(view)
    with connect(pdb_env) as sock:
        assert "\nlooking at the cart\n" in first_stop(sock)
        sock.sendall(b"c\n")
        read_to_end(sock)
    debugged.join()


# -- one session per process ------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        pytest.param(
            "FLASK_DIAG_PDB_BUSY", "skip", "FLASK_DIAG_PDB_BUSY=skip", id="skip"
        ),
        pytest.param(
            "FLASK_DIAG_PDB_WAIT", "0.3", "did not end within 0.3 s", id="after-waiting"
        ),
    ],
)
def test_a_busy_process_skips(
    pdb_env: int,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    reason: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with capture_logs() as logs:
        first = Debugged(answer_view)
        with connect(pdb_env) as sock:
            first_stop(sock)
            started = time.monotonic()
            second = Debugged(answer_view)
            assert second.join() == {"answer": 1, "doubled": 2}
            assert time.monotonic() - started < 2
            sock.sendall(b"c\n")
            read_to_end(sock)
        assert first.join() == {"answer": 1, "doubled": 2}
    (skipped,) = events(logs, "remote pdb busy: breakpoint skipped")
    assert skipped["busy_thread"] == "debugged"
    assert reason in skipped["reason"]


def test_a_busy_process_waits_then_gets_its_own_session(pdb_env: int) -> None:
    with capture_logs() as logs:
        first = Debugged(answer_view)
        with connect(pdb_env) as sock:
            first_stop(sock)
            second = Debugged(answer_view)
            wait_for_event(logs, "remote pdb busy: waiting for the open session to end")
            sock.sendall(b"c\n")
            read_to_end(sock)
        assert first.join() == {"answer": 1, "doubled": 2}
        # Now the second breakpoint listens, on the same port.
        wait_for_event(logs, "remote pdb waiting for a client", count=2)
        with connect(pdb_env) as sock:
            first_stop(sock)
            command(sock, "!answer = 7")
            sock.sendall(b"c\n")
            read_to_end(sock)
        assert second.join() == {"answer": 7, "doubled": 14}


def _session_left_open(pdb_env: int, alive: threading.Event) -> Debugged:
    """A session whose client set a breakpoint that is never hit, went on
    (``continue``) and left: its code runs on while ``alive`` is clear."""

    def view() -> int:
        flask_diag.set_trace()
        alive.wait(TIMEOUT)
        return 1
        never = 2  # the line never hit  # noqa: F841

    debugged = Debugged(view)
    with connect(pdb_env) as sock:
        first_stop(sock)
        command(sock, f"break {_line_of('# the line never hit  # noqa: F841')}")
        sock.sendall(b"c\n")
        said = b""
        while b"breakpoint(s) left" not in said:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed; got {said!r}"
            said += chunk
    return debugged


@pytest.mark.parametrize("thread_ended", [False, True], ids=["running", "ended"])
def test_a_session_left_by_its_client_does_not_hold_up_other_breakpoints(
    pdb_env: int, thread_ended: bool
) -> None:
    alive = threading.Event()
    with capture_logs() as logs:
        left = _session_left_open(pdb_env, alive)
        if thread_ended:
            alive.set()
            assert left.join() == 1
        # A breakpoint in another thread gets its own session at once, not
        # a wait of FLASK_DIAG_PDB_WAIT for one nobody will end.
        second = Debugged(answer_view)
        wait_for_event(logs, "remote pdb waiting for a client", count=2)
        assert not events(logs, "remote pdb busy: waiting for the open session to end")
        with connect(pdb_env) as sock:
            banner = first_stop(sock)
            assert "thread:  debugged" in banner
            sock.sendall(b"c\n")
            read_to_end(sock)
        assert second.join() == {"answer": 1, "doubled": 2}
        alive.set()
        assert left.join() == 1


# -- the server's kill timer ------------------------------------------------------


def test_kill_timer_without_a_server() -> None:
    assert worker_kill_timer() is None


def test_gunicorn_timeout_read_from_the_running_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker

    for cls, kills in [(SyncWorker, True), (ThreadWorker, False)]:
        # A worker object as gunicorn leaves it: its bound methods are the
        # process's signal handlers, its heartbeat file was touched 10 s ago.
        worker = object.__new__(cls)
        beat = time.monotonic() - 10
        worker.cfg = types.SimpleNamespace(timeout=45)
        worker.tmp = types.SimpleNamespace(last_update=lambda beat=beat: beat)
        previous = signal.signal(signal.SIGUSR1, worker.handle_usr1)
        try:
            timer = worker_kill_timer()
        finally:
            signal.signal(signal.SIGUSR1, previous)
        assert timer is not None
        assert timer.server == "gunicorn"
        assert timer.seconds == 45
        assert timer.setting == f"--timeout 45, {cls.__name__}"
        assert timer.source == "the running worker"
        assert timer.kills is kills
        assert timer.left is not None and 34 < timer.left <= 35
        if kills:
            assert "killed in about 35 s" in timer.describe()
        else:
            assert "not killed" in timer.describe()


@pytest.mark.parametrize(
    ("argv", "cmd_args", "expected"),
    [
        pytest.param(["gunicorn", "-t", "45", "app:app"], "", 45.0, id="short"),
        pytest.param(["gunicorn", "--timeout=7", "app:app"], "", 7.0, id="equals"),
        pytest.param(["gunicorn", "-t90", "app:app"], "--timeout 5", 90.0, id="argv"),
        pytest.param(["gunicorn", "app:app"], "--timeout 5", 5.0, id="env"),
        pytest.param(["gunicorn", "app:app"], "", 30.0, id="default"),
        pytest.param(
            ["gunicorn", "-t", "5", "app:app", "-t", "60"], "", 60.0, id="last-wins"
        ),
        # A value gunicorn refuses: no SystemExit from the parser, the next
        # source instead.
        pytest.param(["gunicorn", "-t", "soon", "app:app"], "-t 5", 5.0, id="bad"),
        pytest.param(["gunicorn", "app:app", "-t"], "--timeout=x", 30.0, id="bad-env"),
    ],
)
def test_gunicorn_timeout_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], cmd_args: str, expected: float
) -> None:
    import gunicorn.workers.base  # noqa: F401 - what a worker has imported

    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setenv("GUNICORN_CMD_ARGS", cmd_args)
    timer = worker_kill_timer()
    assert timer == KillTimer(
        "gunicorn", f"--timeout {expected:g}", expected, None, "the command line", True
    )
    assert f"at most {expected:g} s after the request started" in timer.describe()


def test_uwsgi_harakiri(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.SimpleNamespace(opt={"harakiri": b"60"}, worker_id=lambda: 1)
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    info = RequestInfo("r", None, 1, "t", "GET", "/", time.perf_counter() - 20)
    timer = worker_kill_timer(info)
    assert timer is not None
    assert (timer.server, timer.setting, timer.seconds) == ("uwsgi", "harakiri 60", 60)
    assert timer.left is not None and 39 < timer.left <= 40
    assert "killed in about 40 s" in timer.describe()
    fake.opt = {}
    off = worker_kill_timer(info)
    assert off == KillTimer("uwsgi", "harakiri off", 0.0, None, "uwsgi.opt", False)
    assert "does not get this worker killed" in off.describe()


def test_wait_is_shortened_before_the_worker_is_killed(
    pdb_env: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    timer = KillTimer("gunicorn", "--timeout 3", 3.0, 2.6, "the running worker", True)
    monkeypatch.setattr(remote_pdb, "worker_kill_timer", lambda info=None: timer)
    with capture_logs() as logs:
        started = time.monotonic()
        answer_view()
        assert time.monotonic() - started < 3
    (waiting,) = events(logs, "remote pdb waiting for a client")
    assert waiting["wait_s"] == 0.6
    assert "killed in about 3 s" in waiting["kill_timer"]


def test_request_info_is_found_in_a_flask_request(pdb_env: int) -> None:
    """Through Flask's request context: in a copy_current_request_context
    thread no frame of the stack holds a WSGI ``environ``."""
    app = Flask(__name__)
    flask_diag.Diag(app)

    @app.get("/cart")
    def cart() -> str:
        @copy_current_request_context
        def checkout() -> None:
            flask_diag.set_trace()

        worker = threading.Thread(target=checkout, name="checkout")
        worker.start()
        worker.join(TIMEOUT)
        return "ok"

    def run() -> str:
        response = app.test_client().get("/cart", headers={"X-Request-ID": "cart-1"})
        return response.get_data(as_text=True)

    debugged = Debugged(run)
    with connect(pdb_env) as sock:
        banner = first_stop(sock)
        assert "request: cart-1 GET /cart" in banner
        assert "*** thread:  checkout" in banner
        sock.sendall(b"c\n")
        read_to_end(sock)
    assert debugged.join() == "ok"


# -- the client -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry_point", "cwd"),
    [
        pytest.param(["-m", "flask_diag", "pdb"], None, id="python -m flask_diag"),
        pytest.param(
            ["-m", "flask", "--app", "app", "diag", "pdb"],
            EXAMPLES / "pitfall7_cars",
            id="flask diag",
        ),
    ],
)
def test_client_non_interactive(
    pdb_env: int, tmp_path: Path, entry_point: list[str], cwd: Path | None
) -> None:
    """The client for real, in a subprocess, by each entry point, with
    commands on a pipe (no readline): a whole session."""
    debugged = Debugged(answer_view)
    client = subprocess.run(
        [
            sys.executable,
            *entry_point,
            str(pdb_env),
            "--once",
            "--wait",
            "10",
            "--history",
            str(tmp_path / "history"),
        ],
        cwd=cwd,
        input="p answer\n!answer = 5\ncontinue\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert client.returncode == 0, client.stderr
    assert "*** flask_diag remote pdb" in client.stdout
    assert "no breakpoints left" in client.stdout
    assert "the session ended" in client.stderr
    assert debugged.join() == {"answer": 5, "doubled": 10}


def test_client_ctrl_d_detaches(pdb_env: int, tmp_path: Path) -> None:
    debugged = Debugged(answer_view)
    client = subprocess.run(
        [sys.executable, "-m", "flask_diag", "pdb", str(pdb_env), "--history", ""],
        input="p answer\n",  # then end of input: Ctrl-D
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    assert client.returncode == 0, client.stderr
    assert "detached" in client.stderr
    assert debugged.join() == {"answer": 1, "doubled": 2}


def test_client_reads_host_and_port_from_the_environment(
    pdb_env: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No port, no ``--host``: the worker's FLASK_DIAG_PDB_HOST/PORT."""
    monkeypatch.setenv("FLASK_DIAG_PDB_HOST", "localhost")  # listens on 127.0.0.1
    debugged = Debugged(answer_view)
    client = subprocess.run(
        [sys.executable, "-m", "flask_diag", "pdb", "--once", "--wait", "10"],
        input="continue\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    assert client.returncode == 0, client.stderr
    assert f"waiting for a breakpoint on localhost:{pdb_env} " in client.stderr
    assert "*** flask_diag remote pdb" in client.stdout
    assert debugged.join() == {"answer": 1, "doubled": 2}


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        pytest.param(
            "FLASK_DIAG_PDB_PORT",
            "nope",
            "FLASK_DIAG_PDB_PORT='nope' is not valid: accepted values are a port"
            " number (0 for any free port).",
            id="port-word",
        ),
        pytest.param(
            "FLASK_DIAG_PDB_PORT",
            "65536",
            "FLASK_DIAG_PDB_PORT='65536' is not valid",
            id="port-high",
        ),
        pytest.param(
            "FLASK_DIAG_PDB_PORT",
            "0",
            "FLASK_DIAG_PDB_PORT=0 listens on any free port: give the port",
            id="port-any",
        ),
        pytest.param(
            "FLASK_DIAG_PDB_HOST",
            "example.com",
            "FLASK_DIAG_PDB_HOST='example.com' is not valid",
            id="host-name",
        ),
    ],
)
def test_client_refuses_an_invalid_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert pdb_client.attach(wait=0.2, history=None) == 2
    assert message in capsys.readouterr().err


def test_client_ignores_the_variables_of_what_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLASK_DIAG_PDB_PORT", "nope")
    monkeypatch.setenv("FLASK_DIAG_PDB_HOST", "example.com")
    port = free_port()
    assert pdb_client.attach(port, host="127.0.0.1", wait=0.2, history=None) == 1
    assert f"no breakpoint listened on 127.0.0.1:{port}" in capsys.readouterr().err


def test_client_gives_up_after_wait() -> None:
    port = free_port()
    started = time.monotonic()
    client = subprocess.run(
        [sys.executable, "-m", "flask_diag", "pdb", str(port), "--wait", "0.5"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert client.returncode == 1
    assert f"no breakpoint listened on 127.0.0.1:{port} within 0.5 s" in client.stderr
    assert time.monotonic() - started < TIMEOUT


def test_python_m_flask_diag_needs_a_command() -> None:
    client = subprocess.run(
        [sys.executable, "-m", "flask_diag"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert client.returncode == 2
    assert "pdb" in client.stderr


def test_flask_diag_pdb_command(diag_app: Flask) -> None:
    runner = diag_app.test_cli_runner()
    result = runner.invoke(args=["diag", "pdb", "--help"])
    assert result.exit_code == 0
    assert "remote pdb" in result.output
    port = free_port()
    result = runner.invoke(args=["diag", "pdb", str(port), "--wait", "0.2"])
    assert result.exit_code == 1
    # --history, as under python -m flask_diag (one definition of the command).
    result = runner.invoke(
        args=["diag", "pdb", str(port), "--wait", "0.2", "--history", ""]
    )
    assert result.exit_code == 1, result.output
    assert f"no breakpoint listened on 127.0.0.1:{port}" in result.output


@pytest.mark.parametrize("port", ["0", "65536"])
def test_python_m_flask_diag_pdb_checks_the_port(port: str) -> None:
    client = subprocess.run(
        [sys.executable, "-m", "flask_diag", "pdb", port, "--wait", "0.2"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert client.returncode == 2
    assert f"{port} is not in the range" in client.stderr
    assert "waiting for a breakpoint" not in client.stderr
