"""Shared fixtures.

Fixtures that start real servers live in ``servers.py`` and the Sentry
endpoint in ``sentry_endpoint.py``; they are imported here so every test
module can use them.
"""

from __future__ import annotations

import os
import typing as t

import pytest
import structlog
from flask import Flask
from postgres_server import *  # noqa: F403
from sentry_endpoint import *  # noqa: F403
from servers import *  # noqa: F403

from flask_diag import Diag


@pytest.fixture(autouse=True)
def _clean_diag_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FLASK_DIAG_* variable from the outside may change a test."""
    for key in list(os.environ):
        if key == "FLASK_DIAG" or key.startswith("FLASK_DIAG_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _reset_structlog() -> t.Iterator[None]:
    """Each test starts from structlog's defaults and leaves them behind."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def app() -> Flask:
    app = Flask("test_app")
    app.config["TESTING"] = True

    @app.get("/")
    def index() -> str:
        structlog.get_logger().info("index")
        return "hello"

    return app


@pytest.fixture
def diag_app(app: Flask) -> Flask:
    Diag(app)
    return app


@pytest.fixture
def client(diag_app: Flask) -> t.Any:
    return diag_app.test_client()
