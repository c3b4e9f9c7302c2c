"""Session-teardown checks, in process, against a SQLite file database.

Every leak kind is produced by a real SQLAlchemy engine on a file database
and found at the end of the request (when the response is closed), with the
request's id, pid and thread and the line of the view that took the
resource; the clean version of each view reports nothing. Real-server tests
(PostgreSQL, gunicorn) are in ``test_teardown_servers.py``.
"""

from __future__ import annotations

import os
import threading
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentry_sdk
from flask import Flask
from flask import Response
from flask import session
from flask import stream_with_context
from flask_sqlalchemy import SQLAlchemy
from sentry_endpoint import SentryEndpoint
from sqlalchemy import create_engine
from sqlalchemy import Engine
from sqlalchemy import text
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker
from werkzeug.test import Client

from flask_diag import Diag
from flask_diag import signals
from flask_diag import wrap
from flask_diag.teardown import TeardownCheck
from flask_diag.teardown import TeardownFinding
from flask_diag.teardown import watch_engine
from flask_diag.testing import capture_logs
from flask_diag.testing import capture_signals

HERE = Path(__file__).name


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'cars.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE cars (id INTEGER PRIMARY KEY, name TEXT)"))
    yield engine
    engine.dispose()


class LeakApp:
    """A Flask app whose views leak (``/leak/<kind>``) or do not (``/ok/<kind>``)."""

    def __init__(self, engine: Engine, **diag_options: object) -> None:
        self.engine = engine
        self.kept: list[t.Any] = []
        self.app = app = Flask("leak_app")
        app.secret_key = "a test secret key that is long enough"
        self.diag = Diag(app, **diag_options)
        self.diag.watch_engine(engine)
        self.factory = sessionmaker(bind=engine)
        self.session = self.factory()  # the module-global session of pitfall 6
        self.forgotten = scoped_session(sessionmaker(bind=engine))
        self.scoped = scoped_session(sessionmaker(bind=engine))
        self.diag.watch_session(self.forgotten)
        self.diag.watch_session(self.scoped)
        self.lines: dict[str, int] = {}
        kept = self.kept
        add = self._route

        @app.teardown_appcontext
        def remove(exception: BaseException | None = None) -> None:
            self.scoped.remove()

        def leak_connection() -> str:
            conn = engine.connect()  # line: connection
            kept.append(conn)
            conn.execute(text("SELECT 1"))
            return "leaked"

        def leak_transaction() -> str:
            s = self.factory()
            s.execute(text("INSERT INTO cars (name) VALUES ('x')"))  # line: transaction
            kept.append(s)
            return "leaked"

        def leak_pending() -> str:
            s = self.factory()
            s.add(_car())  # line: pending
            kept.append(s)
            return "leaked"

        def leak_scoped() -> str:
            self.forgotten.execute(text("SELECT 1"))  # line: scoped
            self.forgotten.commit()
            return "leaked"

        def global_session() -> str:
            self.session.execute(text("SELECT 1"))  # line: global
            return "shared"

        def ok_connection() -> str:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return "ok"

        def ok_transaction() -> str:
            with self.factory() as s, s.begin():
                s.execute(text("INSERT INTO cars (name) VALUES ('y')"))
            return "ok"

        def ok_scoped() -> str:
            self.scoped.execute(text("SELECT 1"))
            self.scoped.add(_car())
            self.scoped.commit()
            return "ok"

        def ok_stream() -> Response:
            def body() -> Iterator[str]:
                for _ in range(3):
                    yield str(self.scoped.execute(text("SELECT 1")).scalar_one())

            return Response(stream_with_context(body()))

        for view in (
            leak_connection,
            leak_transaction,
            leak_pending,
            leak_scoped,
            global_session,
            ok_connection,
            ok_transaction,
            ok_scoped,
            ok_stream,
        ):
            add(view)

    def _route(self, view: t.Callable[..., t.Any]) -> None:
        self.app.add_url_rule("/" + view.__name__, view_func=view)

    def close(self) -> None:
        for thing in self.kept:
            thing.close()
        self.session.close()
        self.forgotten.remove()
        self.scoped.remove()


class Base(DeclarativeBase):
    pass


class Car(Base):
    __tablename__ = "cars"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None]


def _car() -> Car:
    return Car(name="z")


def line_of(marker: str) -> int:
    """The line of this file that carries ``# line: <marker>``."""
    for number, line in enumerate(Path(__file__).read_text().splitlines(), 1):
        if line.rstrip().endswith(f"# line: {marker}"):
            return number
    raise AssertionError(marker)


@pytest.fixture
def leak_app(engine: Engine) -> Iterator[LeakApp]:
    leak_app = LeakApp(engine)
    yield leak_app
    leak_app.close()


def get(app: Flask, path: str) -> tuple[t.Any, list[dict[str, t.Any]]]:
    """GET ``path``, close the response; the ``teardown leak`` lines."""
    with capture_logs() as logs:
        response = app.test_client().get(path)
        response.close()
    return response, [line for line in logs if line["event"] == "teardown leak"]


@pytest.mark.parametrize(
    ("path", "kinds", "marker"),
    [
        pytest.param(
            "/leak_connection",
            ["connection_checked_out"],
            "connection",
            id="connection",
        ),
        pytest.param(
            "/leak_transaction",
            ["connection_checked_out", "session_open"],
            "transaction",
            id="transaction",
        ),
        pytest.param("/leak_pending", ["session_open"], "pending", id="pending"),
        pytest.param(
            "/leak_scoped", ["scoped_session_not_removed"], "scoped", id="scoped"
        ),
    ],
)
def test_each_leak_is_found_with_its_details(
    leak_app: LeakApp, path: str, kinds: list[str], marker: str
) -> None:
    response, lines = get(leak_app.app, path)
    assert response.status_code == 200  # warn mode: the response is unchanged
    assert sorted(line["kind"] for line in lines) == sorted(kinds)
    for line in lines:
        assert line["request_id"] == response.headers["X-Request-ID"]
        assert line["pid"] == os.getpid()
        assert line["thread"] == threading.current_thread().name
        assert line["path"] == path
        assert line["where"] == f"tests/{HERE}:{line_of(marker)} in {path[1:]}"
        assert line["fix"]
        assert f"{HERE}:{line_of(marker)}" in line["stack"]
    if "connection_checked_out" in kinds:
        (conn,) = [li for li in lines if li["kind"] == "connection_checked_out"]
        assert conn["leaked"] == f"connection of {leak_app.engine.url}"
    if marker == "pending":
        assert lines[0]["new"] == 1
        assert "pending changes (1 new" in lines[0]["message"]
    if marker == "transaction":
        (session,) = [li for li in lines if li["kind"] == "session_open"]
        assert session["in_transaction"] is True


@pytest.mark.parametrize(
    "path", ["/ok_connection", "/ok_transaction", "/ok_scoped", "/ok_stream"]
)
def test_clean_views_report_nothing(leak_app: LeakApp, path: str) -> None:
    for _ in range(3):
        response, lines = get(leak_app.app, path)
        assert response.status_code == 200
        assert lines == []


def test_watching_keeps_the_envelopes_unwrapped_success_path(
    leak_app: LeakApp,
) -> None:
    """The check rides on werkzeug's close callbacks; the error envelope
    outside it still hands the server werkzeug's own iterator (no generator
    of its own on every request because an engine is watched), and the check
    still runs at close."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wsgi import ClosingIterator

    from flask_diag import ErrorEnvelope
    from flask_diag.internal import find_in_stack

    (envelope,) = find_in_stack(leak_app.app.wsgi_app, ErrorEnvelope)
    for path, leaks in (("/ok_connection", 0), ("/leak_connection", 1)):
        environ = EnvironBuilder(path).get_environ()
        with capture_logs() as logs:
            app_iter = envelope(environ, lambda status, headers, exc_info=None: None)
            assert type(app_iter) is ClosingIterator, path
            assert b"".join(app_iter)
            app_iter.close()
        found = [line for line in logs if line["event"] == "teardown leak"]
        assert len(found) == leaks, (path, found)


def test_module_global_session_is_named_and_shared(leak_app: LeakApp) -> None:
    _, first = get(leak_app.app, "/global_session")
    # The first request leaves the connection and the transaction open.
    assert sorted(li["kind"] for li in first) == [
        "connection_checked_out",
        "session_open",
    ]
    # A second request, from another thread, reuses the same session.
    result: list[t.Any] = []
    thread = threading.Thread(
        target=lambda: result.append(get(leak_app.app, "/global_session")),
        name="second-thread",
    )
    thread.start()
    thread.join(10)
    ((_, second),) = result
    kinds = sorted(li["kind"] for li in second)
    assert kinds == ["session_open", "shared_session"]
    (shared,) = [li for li in second if li["kind"] == "shared_session"]
    assert shared["thread"] == "second-thread"
    assert shared["requests"] == 2 and shared["threads"] == 2
    assert shared["where"] == f"tests/{HERE}:{line_of('global')} in global_session"
    # Named after the global holding it, when there is one.
    globals()["pitfall6_session"] = leak_app.session
    try:
        _, third = get(leak_app.app, "/global_session")
        (shared,) = [li for li in third if li["kind"] == "shared_session"]
    finally:
        del globals()["pitfall6_session"]
    assert shared["leaked"].startswith("module-global session '")
    assert shared["leaked"].endswith(".pitfall6_session'")
    assert "idle-session timeout" in shared["message"]


def test_finding_goes_to_the_signal(leak_app: LeakApp) -> None:
    with capture_signals() as sent:
        response, _ = get(leak_app.app, "/leak_connection")
    (leak,) = [s for s in sent if s.name == "teardown-leak"]
    finding = leak.kwargs["finding"]
    assert isinstance(finding, TeardownFinding)
    assert finding.kind == "connection_checked_out"
    assert finding.request_id == response.headers["X-Request-ID"]
    assert leak.kwargs["environ"]["PATH_INFO"] == "/leak_connection"
    assert isinstance(leak.sender, TeardownCheck)


def test_a_failing_receiver_never_breaks_the_request(leak_app: LeakApp) -> None:
    def broken(sender: object, **kwargs: t.Any) -> None:
        raise RuntimeError("receiver bug")

    signals.teardown_leak.connect(broken)
    try:
        with capture_logs() as logs:
            response = leak_app.app.test_client().get("/leak_connection")
            response.close()
    finally:
        signals.teardown_leak.disconnect(broken)
    assert response.status_code == 200
    assert [li["event"] for li in logs] == [
        "teardown leak",
        "flask_diag internal error",
    ]


def test_finding_goes_to_sentry_as_a_warning(
    leak_app: LeakApp,
    sentry_endpoint: SentryEndpoint,
    sentry_init: t.Callable[..., t.Any],
) -> None:
    sentry_init()
    response, _ = get(leak_app.app, "/leak_scoped")
    sentry_sdk.flush(timeout=5)
    (event,) = sentry_endpoint.wait_for_events(
        1, where=lambda e: e.data.get("level") == "warning"
    )
    assert "still holds the session" in (event.message or "")
    assert event.tags["teardown.kind"] == "scoped_session_not_removed"
    assert event.tags["request_id"] == response.headers["X-Request-ID"]


def test_raise_mode_answers_a_teardown_leak_envelope(engine: Engine) -> None:
    leak_app = LeakApp(engine, teardown="raise")
    try:
        response, lines = get(leak_app.app, "/leak_transaction")
        assert response.status_code == 500
        body = response.get_json()
        assert body["code"] == "teardown_leak"
        assert sorted(body["leaks"]) == ["connection_checked_out", "session_open"]
        assert body["request_id"] == response.headers["X-Request-ID"]
        assert HERE not in response.get_data(as_text=True)  # no paths in the body
        assert len(lines) == 2
        ok, lines = get(leak_app.app, "/ok_stream")
        assert ok.status_code == 200 and ok.get_data() == b"111"
        assert lines == []
    finally:
        leak_app.close()


class _FileWrapper:
    """A server's ``wsgi.file_wrapper``: iterates the file-like object it is
    given, and closes it."""

    def __init__(self, filelike: t.Any) -> None:
        self.filelike = filelike

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.filelike)

    def close(self) -> None:
        self.filelike.close()


def _environ() -> dict[str, t.Any]:
    """A ``GET /`` environ of a server that has a ``wsgi.file_wrapper``."""
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "wsgi.file_wrapper": _FileWrapper,
    }


@pytest.mark.parametrize("body", ["large", "file"])
def test_raise_mode_ends_the_request_when_the_server_refuses_the_status(
    engine: Engine, body: str
) -> None:
    # A body too large to hold, or a file the server sends itself, has its
    # status forwarded at once; when the server (or a middleware further out)
    # refuses it, the request ends there: nothing of it stays on the thread.
    made: list[_Chunks] = []

    def app(environ: t.Any, start_response: t.Any) -> t.Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        if body == "file":
            made.append(_Chunks(1))
            return t.cast(t.Iterable[bytes], environ["wsgi.file_wrapper"](made[-1]))
        made.append(_Chunks(20))  # 1.25 MiB: more than is held
        return made[-1]

    def refuse(*args: t.Any) -> t.NoReturn:
        raise ValueError("the server refuses this status")

    check = TeardownCheck(app, teardown="raise")
    check.watch_engine(engine)
    with pytest.raises(ValueError, match="refuses"):
        check(_environ(), refuse)
    assert made[0].closes == 1
    assert threading.get_ident() not in check.watch.current
    # The next request on the thread is checked as usual.
    started: list[str] = []
    response = check(
        _environ(), lambda status, headers, exc_info=None: started.append(status)
    )
    assert started == ["200 OK"]
    getattr(response, "close", lambda: None)()
    assert threading.get_ident() not in check.watch.current


def test_nothing_watched_costs_one_check() -> None:
    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [])
        return body

    body = [b"x"]
    check = TeardownCheck(app)
    assert check(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *a: None
    ) is body  # fmt: skip


def test_plain_wsgi_streamed_response_is_checked_after_its_last_chunk(
    engine: Engine,
) -> None:
    kept: list[t.Any] = []

    def app(environ: t.Any, start_response: t.Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first\n"
        conn = engine.connect()  # line: streamed
        kept.append(conn)
        yield b"second\n"

    application = wrap(app)
    watch_engine(engine, application)
    with capture_logs() as logs:
        response = Client(application).get("/stream", buffered=False)
        body = response.iter_encoded()
        assert next(body) == b"first\n"
        assert next(body) == b"second\n"
        assert [li for li in logs if li["event"] == "teardown leak"] == []
        response.close()
    kept[0].close()
    (line,) = [li for li in logs if li["event"] == "teardown leak"]
    assert line["kind"] == "connection_checked_out"
    assert line["where"].endswith(f":{line_of('streamed')} in app")


def test_two_apps_in_one_process_share_nothing(engine: Engine, tmp_path: Path) -> None:
    other = create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    kept = []
    apps = []
    for watched in (engine, other):
        app = Flask("app")
        app.secret_key = "a test secret key that is long enough"
        Diag(app).watch_engine(watched)

        @app.get("/")
        def leak() -> str:
            conn = engine.connect()  # always the first engine
            kept.append(conn)
            return "x"

        apps.append(app)
    try:
        _, watching = get(apps[0], "/")
        _, not_watching = get(apps[1], "/")
    finally:
        for conn in kept:
            conn.close()
        other.dispose()
    assert [li["kind"] for li in watching] == ["connection_checked_out"]
    assert not_watching == []


@pytest.mark.parametrize("order", ["diag-first", "db-first"])
def test_flask_sqlalchemy_is_watched_automatically(tmp_path: Path, order: str) -> None:
    app = Flask("fsqla")
    app.secret_key = "a test secret key that is long enough"
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'f.db'}"
    db = SQLAlchemy()
    kept = []
    if order == "diag-first":
        Diag(app)
        db.init_app(app)
    else:
        db.init_app(app)
        Diag(app)

    @app.get("/ok")
    def ok() -> str:
        db.session.execute(text("SELECT 1"))
        db.session.add(_car())
        return "ok"  # Flask-SQLAlchemy removes the session at teardown

    @app.get("/leak")
    def leak() -> str:
        conn = db.engine.connect()
        kept.append(conn)
        return "leaked"

    with app.app_context():
        db.session.execute(
            text("CREATE TABLE cars (id INTEGER PRIMARY KEY, name TEXT)")
        )
        db.session.commit()
    try:
        _, ok_lines = get(app, "/ok")
        _, leak_lines = get(app, "/leak")
    finally:
        for conn in kept:
            conn.close()
        with app.app_context():
            db.engine.dispose()
    assert ok_lines == []
    assert [li["kind"] for li in leak_lines] == ["connection_checked_out"]


def test_secret_key_missing_is_reported_at_first_use() -> None:
    app = Flask("no_key")

    @app.get("/")
    def index() -> str:
        return "no session used"

    @app.get("/login")
    def login() -> str:
        session["user"] = "alice"
        return "x"

    with capture_logs() as logs:
        Diag(app)  # not certain yet: the key may be set after this line
        app.test_client().get("/").close()  # no session, nothing to say
        assert [li for li in logs if li["event"] == "teardown leak"] == []
        for _ in range(2):
            response = app.test_client().get("/login")
            response.close()
    assert response.status_code == 500
    assert "secret key" in response.get_json()["hint"]
    (line,) = [li for li in logs if li["event"] == "teardown leak"]
    assert line["kind"] == "no_secret_key"
    assert line["path"] == "/login"
    assert "secret key" in line["message"]


def test_secret_key_set_only_under_main_is_reported_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = tmp_path / "keyapp.py"
    module.write_text(
        "from flask import Flask\n"
        "from flask_diag import Diag\n"
        "app = Flask(__name__)\n"
        "Diag(app)\n"
        "if __name__ == '__main__':\n"
        "    app.secret_key = 'dev'\n"
        "    app.run()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with capture_logs() as logs:
        import keyapp  # noqa: F401

        monkeypatch.delitem(__import__("sys").modules, "keyapp")
    (line,) = [li for li in logs if li["event"] == "teardown leak"]
    assert line["kind"] == "no_secret_key"
    assert line["where"] == "keyapp.py:6"
    assert "keyapp.py, line 6" in line["message"]
    assert line["request_id"] is None


@pytest.mark.parametrize("mode", ["off", "warn"])
def test_off_passes_everything_through(engine: Engine, mode: str) -> None:
    # "warn" is the control: the same leak, reported.
    expected = [] if mode == "off" else ["connection_checked_out"]
    app = Flask("off")
    app.secret_key = "a test secret key that is long enough"
    diag = Diag(app, teardown=mode)
    diag.watch_engine(engine)  # accepted, never checked when off
    kept = []

    @app.get("/")
    def leak() -> str:
        kept.append(engine.connect())
        return "x"

    def plain(environ: t.Any, start_response: t.Any) -> list[bytes]:
        kept.append(engine.connect())
        start_response("200 OK", [])
        return [b"x"]

    # The middleware on its own, as FLASK_DIAG_TEARDOWN=off would build it.
    check = TeardownCheck(plain, teardown=mode)
    check.watch_engine(engine)
    try:
        _, lines = get(app, "/")
        with capture_logs() as logs:
            Client(check).get("/").close()
    finally:
        for conn in kept:
            conn.close()
    assert [li["kind"] for li in lines] == expected
    plain_lines = [li for li in logs if li["event"] == "teardown leak"]
    assert [li["kind"] for li in plain_lines] == expected


def test_watch_session_refuses_other_objects() -> None:
    app = Flask("bad")
    with pytest.raises(TypeError, match="scoped_session, a sessionmaker"):
        Diag(app).watch_session(object())


def test_a_plain_session_instance_can_be_watched(engine: Engine) -> None:
    app = Flask("instance")
    app.secret_key = "a test secret key that is long enough"
    session = Session(engine)
    Diag(app).watch_session(session)

    @app.get("/")
    def view() -> str:
        session.add(_car())
        return "x"

    try:
        _, lines = get(app, "/")
    finally:
        session.close()
    assert [li["kind"] for li in lines] == ["session_open"]


# -- PEP 3333 edge cases and log rendering (found in review) ----------------------


class _Chunks:
    """An iterator-style response iterable of ``count`` 64 KiB chunks that
    counts its ``close()`` calls."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.closes = 0

    def __iter__(self) -> _Chunks:
        return self

    def __next__(self) -> bytes:
        if self.left <= 0:
            raise StopIteration
        self.left -= 1
        return b"x" * 65536

    def close(self) -> None:
        self.closes += 1


def test_raise_mode_closes_a_large_body_once(engine: Engine) -> None:
    # Over the hold limit, the client gone half way: the server closes the
    # response once; dropping it must not close the app's iterable again.
    import gc

    body = _Chunks(40)

    def app(environ: t.Any, start_response: t.Any) -> _Chunks:
        start_response("200 OK", [])
        return body

    check = TeardownCheck(app, teardown="raise")
    check.watch_engine(engine)
    response = check(_environ(), lambda *a: None)
    chunks = iter(response)
    for _ in range(20):
        next(chunks)
    response.close()  # type: ignore[attr-defined]
    response.close()  # type: ignore[attr-defined]  # a second close: no effect
    del chunks, response
    gc.collect()
    assert body.closes == 1


def test_raise_mode_passes_a_file_wrapper_through(engine: Engine) -> None:
    def app(environ: t.Any, start_response: t.Any) -> t.Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](_Chunks(1))

    check = TeardownCheck(app, teardown="raise")
    check.watch_engine(engine)
    response = check(_environ(), lambda *a: None)
    assert type(response) is _FileWrapper  # the server can still sendfile it
    assert threading.get_ident() not in check.watch.current


def test_a_leak_line_renders_with_the_console_renderer(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    # structlog's ConsoleRenderer (its default, and configure(json=False))
    # takes ``stack`` for text: the line must render, not turn into an
    # internal error.
    import flask_diag.logging

    flask_diag.logging.configure(json=False, file=__import__("sys").stdout)
    kept: list[t.Any] = []

    def app(environ: t.Any, start_response: t.Any) -> list[bytes]:
        kept.append(engine.connect())
        start_response("200 OK", [])
        return [b"ok"]

    check = TeardownCheck(app)
    check.watch_engine(engine)
    response = check(_environ(), lambda *a: None)
    list(response)
    response.close()  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    for conn in kept:
        conn.close()
    assert "teardown leak" in out
    assert "internal error" not in out
