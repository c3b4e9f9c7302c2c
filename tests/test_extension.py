from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_diag import Diag
from flask_diag import RequestTagging
from flask_diag import wrap


def _make_app(name: str = "app") -> Flask:
    app = Flask(name)

    @app.get("/")
    def index() -> str:
        return "hello"

    return app


def _stack(wsgi_app: t.Any) -> list[type]:
    """The classes of the middleware chain, outermost first."""
    chain = []
    while hasattr(wsgi_app, "app"):
        chain.append(type(wsgi_app))
        wsgi_app = wsgi_app.app
    return chain


def test_diag_app_registers_and_wraps() -> None:
    app = _make_app()
    original = app.wsgi_app
    diag = Diag(app)
    assert app.extensions["diag"] is diag
    assert app.wsgi_app is not original
    assert _stack(app.wsgi_app)[0] is RequestTagging
    with app.app_context():
        assert diag.settings.enabled is True
    assert "X-Request-ID" in app.test_client().get("/").headers


def test_app_factory_with_init_app() -> None:
    diag = Diag(worker_headers=False)

    def create_app() -> Flask:
        app = _make_app()
        diag.init_app(app)
        return app

    one, two = create_app(), create_app()
    for app in (one, two):
        headers = app.test_client().get("/").headers
        assert "X-Request-ID" in headers and "X-Diag-PID" not in headers
        assert app.extensions["diag"] is diag


def test_two_apps_keep_their_own_settings() -> None:
    diag = Diag()
    one, two = _make_app("one"), _make_app("two")
    two.config["DIAG_WORKER_HEADERS"] = False
    diag.init_app(one)
    diag.init_app(two)
    assert diag.settings_for(one).worker_headers is True
    assert diag.settings_for(two).worker_headers is False
    assert "X-Diag-PID" in one.test_client().get("/").headers
    assert "X-Diag-PID" not in two.test_client().get("/").headers


def test_registering_twice_raises() -> None:
    app = _make_app()
    Diag(app)
    with pytest.raises(RuntimeError, match="already been registered"):
        Diag(app)


def test_settings_for_an_unknown_app_explains() -> None:
    with pytest.raises(RuntimeError, match="init_app"):
        Diag().settings_for(_make_app())


def test_unknown_keyword_fails_at_construction() -> None:
    with pytest.raises(TypeError, match="worker_header"):
        Diag(worker_header=False)


def test_flask_diag_off_leaves_app_unwrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DIAG", "off")
    app = _make_app()
    original = app.wsgi_app
    Diag(app)
    assert app.wsgi_app == original
    assert "X-Request-ID" not in app.test_client().get("/").headers

    def plain(environ: t.Any, start_response: t.Any) -> list[bytes]:
        return []

    assert wrap(plain) is plain


def test_config_off_and_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _make_app()
    app.config["DIAG_TAGGING"] = False
    monkeypatch.setenv("FLASK_DIAG_TAGGING", "on")
    Diag(app, tagging=False)
    assert "X-Request-ID" in app.test_client().get("/").headers


def test_tagging_off_by_config() -> None:
    app = _make_app()
    app.config["DIAG_TAGGING"] = "off"
    Diag(app)
    assert RequestTagging not in _stack(app.wsgi_app)


def test_wrap_overrides_and_environ_argument() -> None:
    def plain(environ: t.Any, start_response: t.Any) -> list[bytes]:
        return []

    wrapped = wrap(plain, worker_headers=False, environ={})
    assert isinstance(wrapped, RequestTagging)
    assert wrapped.settings.worker_headers is False
    wrapped = wrap(plain, environ={"FLASK_DIAG_WORKER_HEADERS": "on"})
    assert wrapped.settings.worker_headers is True  # type: ignore[attr-defined]


def test_cli_settings_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DIAG_ACCESS_LOG", "on")
    app = _make_app()
    Diag(app)
    result = app.test_cli_runner().invoke(args=["diag", "settings"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()}
    assert lines["access_log"] == ["on", "FLASK_DIAG_ACCESS_LOG"]
    assert lines["enabled"] == ["on", "FLASK_DIAG"]
