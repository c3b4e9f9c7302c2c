"""Real servers for tests.

Fixtures that start a WSGI server in a subprocess on a free port of
127.0.0.1, wait (bounded) until it answers, and always stop it at teardown by
its own process id: ``SIGTERM``, then ``SIGKILL`` to its process group after
a bounded wait, whether the test passed or failed. The server's stdout and
stderr go to one file in ``tmp_path``; :meth:`ServerProcess.log_text` and
:meth:`ServerProcess.json_lines` read it back (flask_diag's examples log JSON
lines on stderr, which Python never buffers; a server's stdout is
block-buffered when it goes to a file).

The fixtures are factories::

    def test_something(gunicorn_server):
        server = gunicorn_server("app:app", "-w", "2", cwd=EXAMPLES / "x")
        r = requests.get(server.url + "/", timeout=5)
        assert r.headers["X-Diag-PID"] != str(server.pid)  # a worker, not the master

- ``server_factory(command, env=..., cwd=...)``: any command; ``{host}`` and
  ``{port}`` in its items are replaced by the address to listen on.
- ``gunicorn_server(app_spec, *gunicorn_args, ...)``
- ``werkzeug_server(app_spec, threaded=..., processes=...)``: the werkzeug
  development server, through this file run as a script (``run_simple``).
- ``waitress_server(app_spec, *waitress_args, ...)``

A missing server package fails the test (it is a test dependency), it is
never skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import importlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import typing as t
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path

import pytest
from gunicorn_ready import READY

__all__ = [
    "ROOT",
    "EXAMPLES",
    "ServerProcess",
    "free_port",
    "require_module",
    "server_factory",
    "uwsgi_command",
    "gunicorn_server",
    "werkzeug_server",
    "waitress_server",
]

#: The repository root and its ``examples/`` directory.
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

HOST = "127.0.0.1"
#: How long a server may take to answer its first request.
STARTUP_TIMEOUT = 20.0
#: How long a server may take to exit after ``SIGTERM`` before ``SIGKILL``.
STOP_TIMEOUT = 10.0


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def allowed(response: t.Any) -> set[str]:
    """The methods of a response's ``Allow`` header (any order)."""
    value = response.headers.get("Allow", "")
    return {m.strip() for m in value.split(",") if m.strip()}


def line_of(path: Path, needle: str) -> int:
    """The number of the first line of ``path`` holding ``needle``."""
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def require_module(name: str) -> None:
    """Fail (never skip) the current test when ``name`` is not installed."""
    if importlib.util.find_spec(name) is None:
        pytest.fail(
            f"{name!r} is not installed in {sys.executable}: it is a test"
            " dependency, install the 'test' extra (pip install -e '.[test]').",
            pytrace=False,
        )


class ServerStartError(AssertionError):
    """The server exited or did not answer in time; carries its output."""


class ServerProcess:
    """One server subprocess listening on ``host:port``.

    :param command: the argv; ``{host}`` and ``{port}`` in its items are
        replaced.
    :param env: variables added to (a copy of) this process's environment,
        without any ``FLASK_DIAG*`` variable from outside; a value of ``None``
        removes the variable.
    :param cwd: the working directory, also put first on ``PYTHONPATH``.
    :param log_path: the file stdout and stderr are written to.
    :param ready_path: the path requested until any HTTP response arrives;
        ``None`` waits for a TCP connection only.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        host: str = HOST,
        port: int | None = None,
        ready_path: str | None = "/",
    ) -> None:
        self.host = host
        self.port = free_port(host) if port is None else port
        self.command = [
            item.replace("{host}", host).replace("{port}", str(self.port))
            for item in command
        ]
        self.cwd = Path(cwd) if cwd is not None else None
        self.env = self._environment(env)
        self.log_path = log_path
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None

    def _environment(self, extra: Mapping[str, str | None] | None) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not (key == "FLASK_DIAG" or key.startswith("FLASK_DIAG_"))
        }
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if self.cwd is not None:
            paths = [str(self.cwd), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        for key, value in (extra or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The id of the process started (gunicorn's master, waitress, ...)."""
        assert self.process is not None, "the server is not started"
        return self.process.pid

    def start(self, timeout: float = STARTUP_TIMEOUT) -> ServerProcess:
        """Start the process and wait until it answers; stop it on failure."""
        with open(self.log_path, "ab") as log:
            # The child holds its own copy of the descriptor; append mode
            # keeps lines whole when several worker processes write.
            self.process = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group (pgid == pid): stop() can reach
                # workers it leaves behind, and no signal for the test run
                # reaches it.
                start_new_session=True,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.poll() is not None:
                raise ServerStartError(
                    f"server exited with code {self.poll()} before answering:"
                    f" {self.command}\n--- output ---\n{self.log_text()}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"server did not answer on {self.url} within {timeout}s:"
                    f" {self.command}\n--- output ---\n{self.log_text()}"
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        if self.ready_path is None:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return True
            except OSError:
                return False
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            conn.request("GET", self.ready_path, headers={"Connection": "close"})
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def poll(self) -> int | None:
        """The exit code, or ``None`` while the process runs."""
        assert self.process is not None
        return self.process.poll()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """``SIGTERM``, then ``SIGKILL`` after ``timeout``; idempotent.

        Both go to this server's own pid; ``SIGKILL`` also to its process
        group (created for it, see :meth:`start`) so that no worker outlives
        it. Returns the exit code.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None or _group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout)
        return process.returncode

    def log_text(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def json_lines(self) -> list[dict[str, t.Any]]:
        """The output lines that are JSON objects (structlog's lines)."""
        lines = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                lines.append(value)
        return lines

    def wait_for_log(
        self, pattern: str, *, count: int = 1, timeout: float = STARTUP_TIMEOUT
    ) -> list[str]:
        """Wait until ``pattern`` (a regex) matched ``count`` times in the
        output; return the matches."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.findall(self.log_text())
            if len(found) >= count:
                return found
            if self.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{pattern!r} found {len(found)} times, expected {count}"
                    f" (server {'exited' if self.poll() is not None else 'running'})"
                    f"\n--- output ---\n{self.log_text()}"
                )
            time.sleep(0.05)

    def wait_for_json_lines(
        self,
        predicate: t.Callable[[dict[str, t.Any]], bool],
        *,
        count: int,
        timeout: float = 10.0,
    ) -> list[dict[str, t.Any]]:
        """Wait until ``count`` JSON lines match ``predicate``; return those.

        Log lines may land in the file just after the response did.
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.json_lines() if predicate(line)]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"<ServerProcess {self.url} pid={pid} {self.command!r}>"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


ServerFactory = t.Callable[..., ServerProcess]


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start any server command; every server started is stopped at teardown.

    ``server_factory(command, *, env=None, cwd=None, ready_path="/",
    timeout=20.0, name="server")`` returns a started :class:`ServerProcess`.
    """
    started: list[ServerProcess] = []

    def start(
        command: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready_path: str | None = "/",
        timeout: float = STARTUP_TIMEOUT,
        name: str = "server",
    ) -> ServerProcess:
        log_path = tmp_path / f"{name}-{len(started)}.log"
        server = ServerProcess(
            command, log_path=log_path, env=env, cwd=cwd, ready_path=ready_path
        )
        started.append(server)
        return server.start(timeout)

    try:
        yield start
    finally:
        errors = []
        for server in reversed(started):
            try:
                server.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


def _worker_count(args: Sequence[str]) -> int:
    workers = 1
    for i, arg in enumerate(args):
        if arg in ("-w", "--workers") and i + 1 < len(args):
            workers = int(args[i + 1])
        elif arg.startswith("--workers="):
            workers = int(arg.split("=", 1)[1])
        elif arg.startswith("-w") and arg[2:].isdigit():
            workers = int(arg[2:])
    return workers


def uwsgi_command(*args: str, module: str = "app:app") -> list[str]:
    """A uWSGI command line serving ``module`` on ``{host}:{port}``, for
    :func:`server_factory`; fails (never skips) when uWSGI is missing."""
    binary = Path(sys.executable).with_name("uwsgi")
    if not binary.exists():
        pytest.fail(
            f"uWSGI is not installed next to {sys.executable}: it is a test"
            " dependency, install the 'test' extra (pip install -e '.[test]').",
            pytrace=False,
        )
    return [
        str(binary),
        *("--http-socket", "{host}:{port}"),
        *("--master", "--die-on-term", "--need-app"),
        *("--home", sys.prefix, "--module", module),
        *args,
    ]


@functools.cache
def _gunicorn_has_control_socket() -> bool:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    return "--no-control-socket" in result.stdout


@pytest.fixture
def gunicorn_server(server_factory: ServerFactory) -> ServerFactory:
    """``gunicorn_server(app_spec, *args, env=, cwd=, ready_path=)``.

    Runs ``python -m gunicorn --bind 127.0.0.1:<port> *args app_spec`` and
    waits until the server answers and every worker (``-w``/``--workers``)
    has loaded the app (``tests/gunicorn_ready.py``, unless ``args`` bring
    their own ``-c``).
    """

    def start(
        app_spec: str,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready_path: str | None = "/",
        timeout: float = STARTUP_TIMEOUT,
    ) -> ServerProcess:
        require_module("gunicorn")
        options = ["--bind", "{host}:{port}"]
        if _gunicorn_has_control_socket() and not any(
            arg.startswith(("--control-socket", "--no-control-socket")) for arg in args
        ):
            # Recent gunicorn opens a control socket at one fixed path in the
            # home directory: servers running side by side would share it.
            options.append("--no-control-socket")
        own_config = any(
            arg in ("-c", "--config") or arg.startswith("--config=") for arg in args
        )
        if not own_config:
            options += ["--config", str(Path(__file__).with_name("gunicorn_ready.py"))]
        command = [sys.executable, "-m", "gunicorn", *options, *args, app_spec]
        server = server_factory(
            command,
            env=env,
            cwd=cwd,
            ready_path=ready_path,
            timeout=timeout,
            name="gunicorn",
        )
        ready = (
            r"Booting worker with pid: (\d+)"
            if own_config
            else re.escape(READY).replace(r"\{pid\}", r"(\d+)")
        )
        server.wait_for_log(ready, count=_worker_count(args))
        return server

    return start


@pytest.fixture
def werkzeug_server(server_factory: ServerFactory) -> ServerFactory:
    """``werkzeug_server(app_spec, threaded=True, processes=1, env=, cwd=)``.

    werkzeug's development server (``run_simple``, no reloader, no
    debugger), in a process of its own.
    """

    def start(
        app_spec: str,
        *,
        threaded: bool = True,
        processes: int = 1,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready_path: str | None = "/",
        timeout: float = STARTUP_TIMEOUT,
    ) -> ServerProcess:
        require_module("werkzeug")
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "werkzeug",
            app_spec,
            "--host",
            "{host}",
            "--port",
            "{port}",
            "--threaded" if threaded else "--no-threaded",
            "--processes",
            str(processes),
        ]
        return server_factory(
            command,
            env=env,
            cwd=cwd,
            ready_path=ready_path,
            timeout=timeout,
            name="werkzeug",
        )

    return start


@pytest.fixture
def waitress_server(server_factory: ServerFactory) -> ServerFactory:
    """``waitress_server(app_spec, *args, env=, cwd=)``.

    Runs ``python -m waitress --listen=127.0.0.1:<port> *args app_spec``.
    """

    def start(
        app_spec: str,
        *args: str,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready_path: str | None = "/",
        timeout: float = STARTUP_TIMEOUT,
    ) -> ServerProcess:
        require_module("waitress")
        command = [
            sys.executable,
            "-m",
            "waitress",
            "--listen={host}:{port}",
            *args,
            app_spec,
        ]
        return server_factory(
            command,
            env=env,
            cwd=cwd,
            ready_path=ready_path,
            timeout=timeout,
            name="waitress",
        )

    return start


def _load_app(spec: str) -> t.Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "app")


def main(argv: Sequence[str] | None = None) -> None:
    """Run a server for :func:`werkzeug_server`: ``servers.py werkzeug
    module:app --port N [--no-threaded] [--processes N]``."""
    parser = argparse.ArgumentParser(prog="servers.py")
    sub = parser.add_subparsers(dest="server", required=True)
    wz = sub.add_parser("werkzeug", help="werkzeug.serving.run_simple")
    wz.add_argument("app", help="module:attribute")
    wz.add_argument("--host", default=HOST)
    wz.add_argument("--port", type=int, required=True)
    wz.add_argument("--threaded", action=argparse.BooleanOptionalAction, default=True)
    wz.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)

    sys.path.insert(0, os.getcwd())
    from werkzeug.serving import run_simple

    run_simple(
        args.host,
        args.port,
        _load_app(args.app),
        threaded=args.threaded,
        processes=args.processes,
        use_reloader=False,
        use_debugger=False,
    )


if __name__ == "__main__":
    main()
