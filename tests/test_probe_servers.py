"""``flask diag probe`` against real gunicorn servers on 127.0.0.1.

4 sync workers must show at least 2 PIDs (each request on a new connection,
``Connection: close``, so the workers' accept loops share them); 1 worker
exactly 1. The probe runs as the real CLI in a subprocess; the ``gunicorn_server``
fixture returns once every worker has loaded the app.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from servers import EXAMPLES

pytestmark = pytest.mark.server

CARS = EXAMPLES / "pitfall7_cars"


def probe(*args: str) -> tuple[int, dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-m", "flask_diag", "probe", *args, "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, json.loads(result.stdout)


def test_four_workers_show_several_pids(gunicorn_server) -> None:  # type: ignore[no-untyped-def]
    server = gunicorn_server("app:app", "-w", "4", cwd=CARS)
    status, data = probe(server.url + "/cars", "-n", "80", "--timeout", "5")
    assert status == 0
    assert data["sent"] == data["answered"] == 80
    assert data["statuses"] == {"200": 80}
    pids = data["pids"]
    assert isinstance(pids, dict)
    assert len(pids) >= 2
    assert str(server.pid) not in pids  # workers answer, not the master
    assert data["spread"] is True


def test_one_worker_shows_one_pid(gunicorn_server) -> None:  # type: ignore[no-untyped-def]
    server = gunicorn_server("app:app", "-w", "1", cwd=CARS)
    status, data = probe(server.url + "/cars", "-n", "40")
    assert status == 0
    assert data["answered"] == 40
    assert len(data["pids"]) == 1  # type: ignore[arg-type]
    assert data["threads"] == [
        {"pid": next(iter(data["pids"])), "thread": "MainThread", "requests": 40}  # type: ignore[call-overload]
    ]


def test_session_spread_text(gunicorn_server) -> None:  # type: ignore[no-untyped-def]
    server = gunicorn_server("app:app", "-w", "4", cwd=CARS)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "app",
            "diag",
            "probe",
            server.url + "/cars",
            "-n",
            "80",
            "--session",
        ],
        cwd=CARS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "One client (one cookie jar) was served by" in result.stdout
    assert "processes and" in result.stdout


def test_nothing_listening_is_bounded() -> None:
    from servers import free_port

    status, data = probe(
        f"http://127.0.0.1:{free_port()}/", "-n", "5", "--timeout", "1"
    )
    assert status == 1
    assert data["sent"] == 5
    assert data["answered"] == 0
    assert data["errors"] == {"ConnectionRefusedError": 5}


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["flask_diag", "probe"], id="python-m"),
        pytest.param(["flask", "--app", "app", "diag", "probe"], id="flask-diag"),
    ],
)
def test_refused_arguments_are_usage_errors(command: list[str]) -> None:
    """Both entry points run one command: the same checks, status and message."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *command, *args],
            cwd=CARS,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = run("ftp://127.0.0.1/")
    assert result.returncode == 2
    assert (
        "probe: error: 'ftp://127.0.0.1/' is not an http:// or https:// URL\n"
    ) in result.stderr
    assert result.stdout == ""
    for option, value in (("-n", "0"), ("-c", "65"), ("--timeout", "0")):
        result = run("http://127.0.0.1:1/", option, value)
        assert result.returncode == 2, (option, result.stderr)
        assert f"Invalid value for '{option}" in result.stderr
        assert result.stdout == ""
