"""Shared fixtures.

Fixtures that start real servers live in ``servers.py`` and the Sentry
endpoint in ``sentry_endpoint.py``; they are imported here so every test
module can use them.
"""

from __future__ import annotations

import os
import pathlib
import typing as t

import pytest
import structlog
from flask import Flask
from postgres_server import *  # noqa: F403
from sentry_endpoint import *  # noqa: F403
from servers import *  # noqa: F403

import flask_diag.speedups
from flask_diag import Diag


def pytest_configure(config: pytest.Config) -> None:
    """Refuse to test compiled modules older than their sources.

    ``pip install -e .`` builds the speedups next to the sources, and Python
    prefers them: after an edit, the tests would run yesterday's code.
    """
    if not flask_diag.speedups.enabled():
        return  # the Python sources run: nothing compiled is used
    package = pathlib.Path(flask_diag.__file__).parent
    for name in flask_diag.speedups.COMPILED_MODULES:
        sources = [package / f"{name}.py", package / f"{name}.pxd"]
        newest = max(p.stat().st_mtime for p in sources if p.exists())
        for built in [*package.glob(f"{name}.*.so"), *package.glob(f"{name}.*.pyd")]:
            if built.stat().st_mtime < newest:
                raise pytest.UsageError(
                    f"{built.name} is older than its source: rebuild the "
                    "speedups with `pip install -e .` (or test the Python "
                    "sources with FLASK_DIAG_SPEEDUPS=off)"
                )


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
