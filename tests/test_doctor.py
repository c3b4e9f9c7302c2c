"""Unit tests of the deployment doctor: one small source snippet per check,
its clean twin, the server-spec parser, the runtime checks on real Flask
apps, and the report formats. The CLI on the examples is in
test_doctor_cli.py."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.debug import DebuggedApplication

from flask_diag import Diag
from flask_diag.debugger import DebuggerGate
from flask_diag.doctor import CHECKS
from flask_diag.doctor import deploy_files
from flask_diag.doctor import Finding
from flask_diag.doctor import Report
from flask_diag.doctor import runtime_checks
from flask_diag.doctor import server_checks
from flask_diag.doctor.server_checks import ServerSpecError
from flask_diag.doctor.static_checks import scan_source
from flask_diag.doctor.static_checks import StaticResult

DOCS = Path(__file__).resolve().parent.parent / "docs" / "doctor.md"

HEAD = """\
import os, secrets
import requests
from flask import Flask, request, session, url_for, jsonify
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker
app = Flask(__name__)
API = "https://api.example.invalid"
"""


def found(source: str) -> list[tuple[str, int | None]]:
    result = scan_source(HEAD + textwrap.dedent(source), "app.py")
    return [(f.id, f.line) for f in result.findings]


# (check id, snippet with the problem on the line marked "# <-", clean twin)
STATIC_CASES = [
    pytest.param(
        "DIAG011",
        """
        if __name__ == "__main__":
            app.secret_key = os.environ["KEY"]  # <-
            app.run()
        """,
        """
        app.secret_key = os.environ["KEY"]
        if __name__ == "__main__":
            app.debug = True
            app.config["DEBUG"] = True
            app.run()
        """,
        id="DIAG011-secret-under-main",
    ),
    pytest.param(
        "DIAG011",
        """
        from api import bp
        if __name__ == "__main__":
            app.register_blueprint(bp)  # <-
        """,
        """
        from api import bp
        app.register_blueprint(bp)
        """,
        id="DIAG011-blueprint-under-main",
    ),
    pytest.param(
        "DIAG011",
        """
        from flask_diag import Diag
        if __name__ == "__main__":
            Diag(app)  # <-
        """,
        """
        from flask_diag import Diag
        Diag(app)
        """,
        id="DIAG011-extension-under-main",
    ),
    pytest.param(
        "DIAG012",
        """
        app.run(host="0.0.0.0")  # <-
        """,
        """
        if __name__ == "__main__":
            app.run(host="0.0.0.0")
        """,
        id="DIAG012",
    ),
    pytest.param(
        "DIAG014",
        """
        app.config["SECRET_KEY"] = "s3cr3t-but-in-git"  # <-
        """,
        """
        app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]
        """,
        id="DIAG014-literal",
    ),
    pytest.param(
        "DIAG014",
        """
        app.secret_key = os.environ.get("SECRET_KEY", "dev")  # <-
        """,
        """
        app.secret_key = os.environ.get("SECRET_KEY")
        """,
        id="DIAG014-default",
    ),
    pytest.param(
        "DIAG015",
        """
        app.secret_key = secrets.token_hex()  # <-
        """,
        """
        app.secret_key = os.environ["SECRET_KEY"]
        """,
        id="DIAG015",
    ),
    pytest.param(
        "DIAG016",
        """
        VISITS = {}  # <-
        @app.get("/")
        def index():
            VISITS[request.remote_addr] = 1
            return "ok"
        """,
        """
        VISITS = {}
        @app.get("/")
        def index():
            VISITS = {}
            VISITS["x"] = 1
            return str(len(VISITS))
        """,
        id="DIAG016-dict",
    ),
    pytest.param(
        "DIAG016",
        """
        hits = 0  # <-
        def count():
            global hits
            hits += 1
        @app.route("/")
        def index():
            count()
            return str(hits)
        """,
        """
        hits = 0
        def count():
            global hits
            hits += 1
        count()
        @app.route("/")
        def index():
            return str(hits)
        """,
        id="DIAG016-counter-via-helper",
    ),
    pytest.param(
        "DIAG017",
        """
        SessionLocal = sessionmaker()
        db = SessionLocal()  # <-
        """,
        """
        SessionLocal = scoped_session(sessionmaker())
        @app.teardown_appcontext
        def remove(exc=None):
            SessionLocal.remove()
        """,
        id="DIAG017",
    ),
    pytest.param(
        "DIAG018",
        """
        DB = scoped_session(sessionmaker())  # <-
        """,
        """
        DB = scoped_session(sessionmaker())
        app.teardown_appcontext(lambda exc: DB.remove())
        """,
        id="DIAG018",
    ),
    pytest.param(
        "DIAG019",
        """
        engine = create_engine("mysql+pymysql://u@db/shop")  # <-
        """,
        """
        engine = create_engine("mysql+pymysql://u@db/shop", pool_pre_ping=True)
        """,
        id="DIAG019",
    ),
    pytest.param(
        "DIAG020",
        """
        @app.get("/a")
        def a():
            url = request.host_url + "b"
            return requests.get(url, timeout=5).text  # <-
        """,
        """
        @app.get("/a")
        def a():
            return requests.get("https://api.example.invalid/b", timeout=5).text
        """,
        id="DIAG020",
    ),
    pytest.param(
        "DIAG021",
        """
        @app.post("/scan")
        def scan():
            image = url_for("static", filename="x.png", _external=True)
            payload = {"image_url": image}
            return requests.post(API, json=payload).json()  # <-
        """,
        """
        @app.post("/scan")
        def scan():
            image = url_for("static", filename="x.png")
            return requests.post(API, json={"i": image}).json()
        """,
        id="DIAG021",
    ),
    pytest.param(
        "DIAG022",
        """
        @app.get("/")
        def index():
            import pdb; pdb.set_trace()  # <-
            return "ok"
        """,
        """
        @app.get("/")
        def index():
            return "ok"
        """,
        id="DIAG022",
    ),
    pytest.param(
        "DIAG023",
        """
        @app.post("/cars")
        def cars():
            return jsonify({"error": "name is required"})  # <-
        """,
        """
        @app.post("/cars")
        def cars():
            return jsonify({"error": "name is required"}), 422
        """,
        id="DIAG023",
    ),
]


@pytest.mark.parametrize(("check_id", "bad", "good"), STATIC_CASES)
def test_static_check(check_id: str, bad: str, good: str) -> None:
    source = HEAD + textwrap.dedent(bad)
    line = next(
        n for n, text in enumerate(source.splitlines(), 1) if text.endswith("# <-")
    )
    assert (check_id, line) in found(bad)
    assert found(good) == []


def test_module_state_names_the_handler_and_line() -> None:
    result = scan_source(
        HEAD
        + textwrap.dedent(
            """
            CARS: list[str] = []
            @app.post("/cars")
            def add_car():
                CARS.append(request.json["name"])
                return {"count": len(CARS)}, 201
            """
        ),
        "app.py",
    )
    (finding,) = result.findings
    assert finding.id == "DIAG016"
    assert "add_car (line 12)" in finding.message
    assert "each worker process has its own copy" in finding.message.lower()


def test_method_view_methods_are_handlers() -> None:
    assert found(
        """
        from flask.views import MethodView
        SEEN = []
        class Things(MethodView):
            def post(self):
                SEEN.append(1)
                return {}, 201
        """
    ) == [("DIAG016", 10)]


def test_facts_for_runtime_checks() -> None:
    result = scan_source(HEAD, "app.py")
    assert result.uses_session
    assert result.flask_lines == [("app.py", 6)]
    plain = scan_source("from flask import Flask\napp = Flask(__name__)\n", "x.py")
    assert not plain.uses_session


def test_deploy_files(tmp_path: Path) -> None:
    (tmp_path / "Procfile").write_text(
        "release: flask db upgrade\nweb: python app.py\n"
    )
    (tmp_path / "Dockerfile").write_text(
        'FROM python:3.12\nCMD ["gunicorn", "-w", "4", "app:app"]\n'
    )
    (tmp_path / "compose.yaml").write_text(
        "services:\n  web:\n    command: flask run --host 0.0.0.0\n"
    )
    findings = deploy_files.scan([tmp_path], lambda p: p.name)
    assert [(f.id, f.file, f.line) for f in findings] == [
        ("DIAG013", "Procfile", 2),
        ("DIAG013", "compose.yaml", 3),
    ]


# -- runtime checks -------------------------------------------------------------


def runtime(app: object, source: str = HEAD, **kwargs: object) -> list[str]:
    static = scan_source(source, "app.py")
    flask_app = app if isinstance(app, Flask) else None
    result = runtime_checks.check(app, flask_app, static, **kwargs)  # type: ignore[arg-type]
    return sorted(f.id for f in result.findings)


def good_app() -> Flask:
    app = Flask(__name__)
    app.secret_key = "9f1c2e7a4b6d8e0f1a3c5e7b9d1f3a5c"
    app.config.update(SESSION_COOKIE_SECURE=True, SESSION_COOKIE_SAMESITE="Lax")
    return app


def test_runtime_clean_app() -> None:
    assert runtime(good_app(), https=True) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(lambda a: setattr(a, "secret_key", None), "DIAG001", id="DIAG001"),
        pytest.param(
            lambda a: setattr(a, "secret_key", "dev"), "DIAG002", id="DIAG002"
        ),
        pytest.param(lambda a: setattr(a, "debug", True), "DIAG003", id="DIAG003"),
        pytest.param(lambda a: a.config.update(TESTING=True), "DIAG010", id="DIAG010"),
        pytest.param(
            lambda a: a.config.update(SESSION_COOKIE_SECURE=False),
            "DIAG007",
            id="DIAG007",
        ),
        pytest.param(
            lambda a: a.config.update(SESSION_COOKIE_HTTPONLY=False),
            "DIAG008",
            id="DIAG008",
        ),
        pytest.param(
            lambda a: a.config.update(SESSION_COOKIE_SAMESITE=None),
            "DIAG009",
            id="DIAG009",
        ),
    ],
)
def test_runtime_check(change: object, expected: str) -> None:
    app = good_app()
    change(app)  # type: ignore[operator]
    assert runtime(app, https=True) == [expected]


def test_no_secret_key_points_where_the_500_hint_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DIAG001 and the error envelope's pitfall-1 hint read the module the
    same way, here a key set through ``config.update`` under ``__main__``."""
    import importlib

    from flask_diag.secret_key import secret_key_hint

    source = textwrap.dedent(
        """\
        from flask import Flask, session
        app = Flask(__name__)
        if __name__ == "__main__":
            app.config.update(SECRET_KEY="dev")
            app.run()
        """
    )
    (tmp_path / "web_config_update.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    app = importlib.import_module("web_config_update").app
    static = scan_source(source, "web_config_update.py")
    static.uses_session = True
    result = runtime_checks.check(app, app, static)
    (finding,) = [f for f in result.findings if f.id == "DIAG001"]
    assert (finding.file, finding.line) == ("web_config_update.py", 4)
    assert "set only under __main__" in finding.message
    assert "(web_config_update.py, line 4)" in secret_key_hint(app)


def test_no_secret_key_is_fine_without_sessions() -> None:
    app = Flask(__name__)
    assert runtime(app, "from flask import Flask\napp = Flask(__name__)\n") == []


def test_https_from_preferred_scheme() -> None:
    app = good_app()
    app.config.update(PREFERRED_URL_SCHEME="https", SESSION_COOKIE_SECURE=False)
    assert runtime(app) == ["DIAG007"]


@pytest.mark.parametrize(
    "key", ["dev", "changeme", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "short-key-1"]
)
def test_weak_secrets(key: str) -> None:
    assert runtime_checks.weak_secret(key) is not None


def test_debugged_application_in_chain() -> None:
    app = good_app()
    wrapped = DebuggedApplication(app, evalex=True)
    static = scan_source(HEAD, "app.py")
    result = runtime_checks.check(wrapped, app, static)
    assert [f.id for f in result.findings] == ["DIAG004"]
    assert result.debugger


def test_gated_debugger_is_not_a_bare_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # flask_diag's gate holds werkzeug's debugger behind its guards: DIAG005,
    # not DIAG004; a bare DebuggedApplication under the gate is still DIAG004.
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER", "on")
    app = good_app()
    gate = DebuggerGate(app.wsgi_app, debugger=True)
    exposed = DebuggerGate(DebuggedApplication(app.wsgi_app), debugger=True)
    try:
        app.wsgi_app = gate  # type: ignore[method-assign]
        assert runtime(app) == ["DIAG005"]
        app.wsgi_app = exposed  # type: ignore[method-assign]
        assert runtime(app) == ["DIAG004", "DIAG005"]
    finally:
        gate.close()
        exposed.close()


def test_flask_app_found_behind_its_bound_wsgi_app() -> None:
    # ``application = app.wsgi_app`` (or a middleware around it) is served
    # by gunicorn as often as ``app`` itself: the Flask app must be found.
    from flask_diag.doctor.loader import find_flask

    app = good_app()
    assert find_flask(app.wsgi_app) is app
    assert find_flask(DebuggedApplication(app.wsgi_app)) is app


def test_werkzeug_pin_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WERKZEUG_DEBUG_PIN", "off")
    assert runtime(good_app()) == ["DIAG004"]


def test_invalid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DIAG_LOOPBACK", "sometimes")
    assert runtime(good_app()) == ["DIAG006"]


def test_debugger_refused_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER", "on")
    monkeypatch.setenv("FLASK_DIAG_ENV", "production")
    assert runtime(good_app()) == ["DIAG006"]


def test_debugger_refused_with_werkzeugs_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    # The gate's own refusal, reported as such: werkzeug's PIN is not read.
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER", "on")
    monkeypatch.setenv("WERKZEUG_DEBUG_PIN", "12345678")
    assert runtime(good_app()) == ["DIAG006"]


def test_diag_debugger_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER", "on")
    assert runtime(good_app()) == ["DIAG005"]


def test_settings_of_the_registered_extension() -> None:
    app = good_app()
    Diag(app, pdb=True)
    static = scan_source(HEAD, "app.py")
    assert runtime_checks.check(app, app, static).pdb


# -- server specs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "server", "workers", "threads", "timeout", "capacity"),
    [
        ("gunicorn -w 4 --timeout 30 app:app", "gunicorn", 4, 1, 30.0, 4),
        ("gunicorn app:app", "gunicorn", 1, 1, 30.0, 1),
        ("gunicorn -w4 -k sync --threads 4 app:app", "gunicorn", 4, 4, 30.0, 16),
        (
            "python -m gunicorn --workers=2 -k gevent app:app",
            "gunicorn",
            2,
            None,
            30.0,
            None,
        ),
        (
            "uwsgi --http :8000 --processes 2 --threads 2 --harakiri 60",
            "uwsgi",
            2,
            2,
            60.0,
            4,
        ),
        ("waitress-serve --threads=1 app:app", "waitress", 1, 1, 0.0, 1),
    ],
)
def test_parse_commands(
    command: str,
    server: str,
    workers: int,
    threads: int | None,
    timeout: float,
    capacity: int | None,
) -> None:
    spec = server_checks.parse(command)
    assert (
        spec.server,
        spec.workers,
        spec.threads,
        spec.timeout,
        spec.profile.capacity,
    ) == (server, workers, threads, timeout, capacity)


def test_parse_gunicorn_config_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    (tmp_path / "gunicorn.conf.py").write_text(
        "import multiprocessing\n"
        f"open({str(marker)!r}, 'w').close()\n"
        "workers = 3\n"
        "timeout = 120\n"
        "threads = multiprocessing.cpu_count()\n"
    )
    spec = server_checks.parse("gunicorn.conf.py", cwd=tmp_path)
    assert not marker.exists()  # read with ast, never executed
    assert (spec.workers, spec.timeout, spec.threads) == (3, 120.0, None)
    assert spec.lines["workers"] == 3
    # The command line wins over the file, as in gunicorn.
    spec = server_checks.parse("gunicorn -c gunicorn.conf.py -w 1", cwd=tmp_path)
    assert spec.workers == 1


def test_parse_uwsgi_ini(tmp_path: Path) -> None:
    (tmp_path / "uwsgi.ini").write_text(
        "[uwsgi]\nmodule = app:app\nprocesses = 4\nharakiri = 20\n"
    )
    spec = server_checks.parse("uwsgi.ini", cwd=tmp_path)
    assert (spec.server, spec.workers, spec.timeout, spec.enable_threads) == (
        "uwsgi",
        4,
        20.0,
        None,
    )
    assert spec.lines == {"module": 2, "processes": 3, "harakiri": 4}


@pytest.mark.parametrize("command", ["nginx -g x", "flask routes", "'unclosed"])
def test_parse_refuses(command: str) -> None:
    with pytest.raises(ServerSpecError):
        server_checks.parse(command)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            "gunicorn -w four app:app",
            "argument -w/--workers: invalid int value: 'four'",
        ),
        ("gunicorn --threads=x app:app", "argument --threads: invalid int value: 'x'"),
        ("gunicorn app:app -t", "argument -t/--timeout: expected one argument"),
    ],
)
def test_parse_refuses_bad_gunicorn_values(command: str, message: str) -> None:
    # A ServerSpecError naming the option, not argparse's usage and exit.
    with pytest.raises(ServerSpecError) as caught:
        server_checks.parse(command)
    assert str(caught.value) == f"--server {command!r}: {message}"


def server_ids(
    command: str, *, debugger: bool = False, source: str = HEAD
) -> list[str]:
    spec = server_checks.parse(command)
    result = runtime_checks.RuntimeResult(debugger=debugger)
    return sorted(
        f.id for f in server_checks.check(spec, result, scan_source(source, "a.py"))
    )


SELF_CALL = HEAD + textwrap.dedent(
    """
    @app.get("/a")
    def a():
        return requests.get(url_for("b", _external=True)).text
    """
)


@pytest.mark.parametrize(
    ("command", "kwargs", "expected"),
    [
        pytest.param("flask run", {}, ["DIAG013"], id="DIAG013"),
        pytest.param("python app.py", {}, ["DIAG013"], id="DIAG013-python"),
        pytest.param(
            "gunicorn -w 4 --timeout 3600 a:app",
            {"debugger": True},
            ["DIAG024"],
            id="DIAG024",
        ),
        pytest.param(
            "gunicorn -w 1 a:app", {"source": SELF_CALL}, ["DIAG025"], id="DIAG025"
        ),
        pytest.param("gunicorn -w 1 a:app", {}, ["DIAG026"], id="DIAG026"),
        pytest.param(
            "gunicorn -w 1 --timeout 30 a:app",
            {"debugger": True},
            ["DIAG026", "DIAG027"],
            id="DIAG027",
        ),
        pytest.param(
            "uwsgi --processes 2 --harakiri 30", {}, ["DIAG028"], id="DIAG028"
        ),
        pytest.param(
            "uwsgi --processes 2 --enable-threads", {}, ["DIAG029"], id="DIAG029"
        ),
        pytest.param(
            "gunicorn -w 2 -k gthread --threads 4 --timeout 60 a:app",
            {},
            [],
            id="clean",
        ),
    ],
)
def test_server_check(
    command: str, kwargs: dict[str, object], expected: list[str]
) -> None:
    assert server_ids(command, **kwargs) == expected  # type: ignore[arg-type]


# -- report -------------------------------------------------------------------


def test_report_json_is_stable_and_sorted() -> None:
    findings = [
        Finding.of("DIAG016", "state", file="b.py", line=3),
        Finding.of("DIAG001", "no key", file="a.py", line=9),
        Finding.of("DIAG026", "one at a time"),
        Finding.of("DIAG001", "no key", file="a.py", line=9),  # a duplicate
    ]
    report = Report("app:app", findings, ignored=2)
    data = json.loads(report.as_json())
    assert data["version"] == 1
    assert data["summary"] == {"error": 1, "warning": 1, "info": 1, "ignored": 2}
    assert [f["id"] for f in data["findings"]] == ["DIAG001", "DIAG016", "DIAG026"]
    assert set(data["findings"][0]) == {"id", "level", "message", "file", "line", "fix"}
    assert report.as_json() == Report("app:app", list(reversed(findings)), 2).as_json()
    assert report.exit_code == 1


def test_report_text_groups_by_level() -> None:
    report = Report(
        "app:app",
        [Finding.of("DIAG026", "x"), Finding.of("DIAG001", "y", file="a.py", line=2)],
    )
    text = "\n".join(report.lines())
    assert "\x1b[" in text  # styled; click.echo strips it when not a terminal
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert plain.index("Errors (1)") < plain.index("Info (1)")
    assert "DIAG001 a.py:2: y" in plain
    assert plain.splitlines()[-1] == "1 error, 0 warnings, 1 info"


# -- the catalogue ------------------------------------------------------------------


def test_at_least_15_checks_with_fixed_levels() -> None:
    assert len(CHECKS) >= 15
    assert list(CHECKS) == [f"DIAG{n:03d}" for n in range(1, len(CHECKS) + 1)]
    assert {c.level for c in CHECKS.values()} <= {"error", "warning", "info"}


def test_every_check_is_documented() -> None:
    # The page's table is made from CHECKS by docs/_ext/diag_checks.py.
    import sys

    sys.path.insert(0, str(DOCS.parent / "_ext"))
    try:
        from diag_checks import checks_rst
    finally:
        sys.path.pop(0)
    assert re.search(r"^\.\. diag-checks::$", DOCS.read_text(encoding="utf-8"), re.M)
    table = "\n".join(checks_rst())
    for check in CHECKS.values():
        row = f"   * - ``{check.id}``\n     - {check.level}\n     - {check.kind}\n"
        assert row in table, check.id
        assert check.title.replace("*", "\\*") in table, check.id


def test_every_check_has_a_test() -> None:
    here = Path(__file__).read_text(encoding="utf-8")
    cli = (Path(__file__).parent / "test_doctor_cli.py").read_text(encoding="utf-8")
    for check_id in CHECKS:
        assert check_id in here or check_id in cli, check_id


def test_static_result_ids() -> None:
    assert StaticResult().ids() == set()
    result = StaticResult(
        [
            Finding.of("DIAG022", "breakpoint", file="a.py", line=3),
            Finding.of("DIAG020", "own URL", file="a.py", line=5),
            Finding.of("DIAG022", "breakpoint", file="b.py", line=7),
        ]
    )
    assert result.ids() == {"DIAG020", "DIAG022"}
