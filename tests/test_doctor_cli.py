"""The deployment doctor's real CLI, in a subprocess, on every example.

``python -m flask_diag check MODULE:APP`` (and ``flask --app ... diag
check``) imports the example the way gunicorn does; each test asserts the
exact findings (id, level, file, line) of a pitfall example and none for its
fixed version and for the realistic app.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
from servers import EXAMPLES

TIMEOUT = 60


def environment(**extra: str) -> dict[str, str]:
    # conftest's autouse fixture has already removed FLASK_DIAG* variables.
    env = dict(os.environ)
    env.pop("WERKZEUG_DEBUG_PIN", None)
    env["SECRET_KEY"] = secrets.token_hex()
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run(
    *args: str, cwd: Path = EXAMPLES, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask_diag", *args],
        cwd=cwd,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def check_json(
    example: str, app: str, *options: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, t.Any]]:
    result = run(
        "check", app, "--chdir", example, "--format", "json", *options, env=env
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def line_of(path: str, text: str) -> int:
    """The line of ``path`` (under examples/) that has ``text`` (code, not
    the docstring): for examples other engineers are still editing."""
    lines = (EXAMPLES / path).read_text(encoding="utf-8").splitlines()
    return max(n for n, line in enumerate(lines, 1) if text in line)


def rows(data: dict[str, t.Any]) -> list[tuple[str, str, str | None, int | None]]:
    return [(f["id"], f["level"], f["file"], f["line"]) for f in data["findings"]]


PITFALLS = [
    pytest.param(
        "pitfall1_secret_key",
        "app:app",
        (),
        [
            ("DIAG001", "error", "app.py", 49),
            ("DIAG011", "error", "app.py", 49),
            ("DIAG014", "warning", "app.py", 49),
        ],
        id="pitfall1",
    ),
    pytest.param(
        "pitfall2_selfcall",
        "app:app",
        ("--server", "gunicorn -w 1 app:app"),
        [
            ("DIAG025", "error", None, None),
            ("DIAG021", "warning", "app.py", 71),
            ("DIAG020", "warning", "app.py", 99),
            ("DIAG020", "warning", "app.py", 101),
            ("DIAG020", "warning", "app.py", 103),
            ("DIAG023", "warning", "app.py", 106),
            ("DIAG020", "warning", "app.py", 113),  # /selfcall-caught
        ],
        id="pitfall2",
    ),
    pytest.param(
        "pitfall3_debugger",
        "wsgi_exposed:application",
        (
            "--server",
            "gunicorn --worker-class sync --workers 2 --timeout 30"
            " wsgi_exposed:application",
        ),
        [
            ("DIAG024", "error", None, None),
            (
                "DIAG004",
                "error",
                "wsgi_exposed.py",
                line_of("pitfall3_debugger/wsgi_exposed.py", "DebuggedApplication("),
            ),
            ("DIAG027", "warning", None, None),
        ],
        id="pitfall3",
    ),
    pytest.param(
        "pitfall4_pdb",
        "app:app",
        ("--server", "gunicorn -w 2 --timeout 30 app:app"),
        [
            ("DIAG027", "warning", None, None),
            ("DIAG022", "warning", "app.py", 41),
        ],
        id="pitfall4",
    ),
    pytest.param(
        "pitfall5_errors",
        "app:app",
        (),
        [
            ("DIAG016", "warning", "app.py", 57),
            ("DIAG023", "warning", "app.py", 84),
        ],
        id="pitfall5",
    ),
    pytest.param(
        "pitfall6_session",
        "app:app",
        (),
        [
            (
                "DIAG017",
                "error",
                "app.py",
                line_of("pitfall6_session/app.py", "session = SessionLocal()"),
            ),
            (
                "DIAG016",
                "warning",
                "app.py",
                line_of("pitfall6_session/app.py", "_kept: list[t.Any] = []"),
            ),
        ],
        id="pitfall6",
    ),
    pytest.param(
        "pitfall7_cars",
        "app:app",
        ("--server", "gunicorn -w 4 app:app"),
        [("DIAG016", "warning", "app.py", 39)],
        id="pitfall7",
    ),
]


@pytest.mark.parametrize(("example", "app", "options", "expected"), PITFALLS)
def test_pitfall_example(
    example: str, app: str, options: tuple[str, ...], expected: list[t.Any]
) -> None:
    status, data = check_json(example, app, *options)
    assert rows(data) == expected
    assert status == (1 if any(level == "error" for _, level, _, _ in expected) else 0)


FIXED = [
    pytest.param("pitfall1_secret_key", "app_fixed:app", id="pitfall1"),
    pytest.param("pitfall2_selfcall", "app_fixed:app", id="pitfall2"),
    pytest.param("pitfall3_debugger", "app_fixed:app", id="pitfall3"),
    pytest.param("pitfall4_pdb", "app_fixed:app", id="pitfall4"),
    pytest.param("pitfall5_errors", "app_fixed:app", id="pitfall5"),
    pytest.param("pitfall6_session", "app_fixed:app", id="pitfall6"),
    pytest.param("pitfall7_cars", "app_fixed:app", id="pitfall7"),
    pytest.param("plain_wsgi", "app:application", id="plain-wsgi"),
]


@pytest.mark.parametrize(("example", "app"), FIXED)
def test_fixed_example_has_no_finding(example: str, app: str) -> None:
    server = f"gunicorn -w 4 -k gthread --threads 4 --timeout 60 {app}"
    status, data = check_json(example, app, "--server", server)
    assert rows(data) == []
    assert status == 0


REALISTIC = EXAMPLES / "realistic_app"


def test_realistic_app_has_no_finding() -> None:
    status, data = check_json(
        "realistic_app",
        "shop:create_app()",
        "--server",
        "gunicorn -w 4 -k gthread --threads 4 --timeout 60 'shop:create_app()'",
    )
    assert rows(data) == []
    assert status == 0
    # It was really checked: the same app with its key removed is caught.
    env = environment()
    env["SECRET_KEY"] = ""
    status, data = check_json("realistic_app", "shop:create_app()", env=env)
    assert ("DIAG001", "error") in [(f["id"], f["level"]) for f in data["findings"]]
    assert status == 1


def test_flask_cli_on_the_realistic_app() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "shop:create_app()", "diag", "check"],
        cwd=REALISTIC,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        "0 errors, 0 warnings, 0 info: no problems found"
    )


def test_flask_cli_text_output() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "diag", "check"],
        cwd=EXAMPLES / "pitfall1_secret_key",
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 1
    out = result.stdout
    assert "\x1b[" not in out  # not a terminal: no colour
    assert out.index("Errors (2)") < out.index("Warnings (1)")
    assert "DIAG011 app.py:49:" in out
    assert "fix: " in out
    assert out.strip().splitlines()[-1] == "2 errors, 1 warning, 0 info"


def test_flask_cli_usage_error() -> None:
    """``flask diag check`` reports a refused option as ``python -m
    flask_diag check`` does (test_ignore, test_bad_server_option...)."""
    for option in (["--ignore", "DIAG999"], ["--server", "gunicorn -w four"]):
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "app", "diag", "check", *option],
            cwd=EXAMPLES / "pitfall7_cars",
            env=environment(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        assert "diag check: error: " in result.stderr
        assert option[1] in result.stderr


def test_colour_when_asked() -> None:
    result = run("check", "app:app", "--chdir", "pitfall7_cars", "--color")
    assert "\x1b[" in result.stdout


def test_ignore() -> None:
    status, data = check_json(
        "pitfall1_secret_key", "app:app", "--ignore", "DIAG001,DIAG011"
    )
    assert rows(data) == [("DIAG014", "warning", "app.py", 49)]
    assert data["summary"]["ignored"] == 2
    assert status == 0
    result = run("check", "app:app", "--chdir", "pitfall7_cars", "--ignore", "DIAG999")
    assert result.returncode == 2
    assert "DIAG999" in result.stderr


def test_invalid_settings_at_import_are_a_finding() -> None:
    env = environment(FLASK_DIAG_LOOPBACK="sometimes")
    status, data = check_json("pitfall7_cars", "app:app", env=env)
    assert status == 1
    assert rows(data) == [
        ("DIAG006", "error", None, None),
        ("DIAG016", "warning", "app.py", 39),
    ]
    assert "FLASK_DIAG_LOOPBACK='sometimes'" in data["findings"][0]["message"]


def test_dev_server_as_deployment_path(tmp_path: Path) -> None:
    (tmp_path / "web.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    (tmp_path / "Procfile").write_text("web: python web.py\n")
    result = run(
        "check", "web:app", "--chdir", str(tmp_path), "--format", "json", cwd=tmp_path
    )
    data = json.loads(result.stdout)
    assert rows(data) == [("DIAG013", "error", "Procfile", 1)]
    assert result.returncode == 1


def test_app_run_at_import_is_never_reached_as_main(tmp_path: Path) -> None:
    # Imported the way gunicorn does: the module-level app.run() would start
    # a server; under __main__ the guard would differ. The doctor must not
    # hang, so app.run is made harmless by an env switch the file reads.
    (tmp_path / "web.py").write_text(
        "import os\nfrom flask import Flask\napp = Flask(__name__)\n"
        "if os.environ.get('RUN'):\n    app.run()\n"
        "print('imported as', __name__)\n"
    )
    result = run(
        "check", "web:app", "--chdir", str(tmp_path), "--format", "json", cwd=tmp_path
    )
    assert "imported as web" in result.stdout.splitlines()[0]
    data = json.loads(result.stdout.split("\n", 1)[1])
    assert rows(data) == [("DIAG012", "error", "web.py", 5)]


def test_server_config_files(tmp_path: Path) -> None:
    (tmp_path / "web.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    (tmp_path / "uwsgi.ini").write_text("[uwsgi]\nmodule = web:app\nprocesses = 2\n")
    result = run(
        "check",
        "web:app",
        "--chdir",
        str(tmp_path),
        "--server",
        "uwsgi.ini",
        "--format",
        "json",
        cwd=tmp_path,
    )
    data = json.loads(result.stdout)
    assert rows(data) == [
        ("DIAG028", "warning", "uwsgi.ini", None),
        ("DIAG029", "warning", "uwsgi.ini", None),
    ]
    (tmp_path / "gunicorn.conf.py").write_text("workers = 1\ntimeout = 30\n")
    result = run(
        "check",
        "web:app",
        "--chdir",
        str(tmp_path),
        "--server",
        "gunicorn.conf.py",
        "--format",
        "json",
        cwd=tmp_path,
    )
    data = json.loads(result.stdout)
    assert rows(data) == [("DIAG026", "info", "gunicorn.conf.py", 1)]


def test_unknown_module_is_a_usage_error() -> None:
    result = run("check", "nowhere:app", "--chdir", "pitfall7_cars")
    assert result.returncode == 2
    assert "no module named 'nowhere'" in result.stderr


def test_bad_server_option_is_a_usage_error() -> None:
    result = run(
        "check", "app:app", "--chdir", "pitfall7_cars", "--server", "gunicorn -w four"
    )
    # Not the hidden gunicorn parser's usage text and exit (also status 2).
    assert result.returncode == 2
    assert "usage:" not in result.stderr
    assert (
        "python -m flask_diag check: error: --server 'gunicorn -w four': "
        "argument -w/--workers: invalid int value: 'four'"
    ) in result.stderr
