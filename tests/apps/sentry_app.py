"""A Flask app with sentry-sdk and flask_diag, for real-server tests.

Run by ``test_tagging_sentry.py`` under gunicorn::

    DIAG_TEST_SENTRY_DSN=http://public@127.0.0.1:<port>/1 \\
        gunicorn --chdir tests/apps sentry_app:app

sentry-sdk is initialised when the worker imports this module (gunicorn
imports the app after forking, unless ``--preload``), with the DSN of the
test's Sentry endpoint and its default integrations (the Flask integration
among them). No proxy from the environment: the endpoint is on 127.0.0.1.
"""

from __future__ import annotations

import os

import sentry_sdk
from flask import Flask

from flask_diag import Diag

sentry_sdk.init(
    dsn=os.environ["DIAG_TEST_SENTRY_DSN"],
    http_proxy="",
    https_proxy="",
    shutdown_timeout=2,
)

app = Flask(__name__)
Diag(app)


@app.get("/")
def index() -> str:
    return "ready"


@app.get("/boom")
def boom() -> str:
    raise ZeroDivisionError("boom under gunicorn")


@app.get("/message")
def message() -> str:
    sentry_sdk.capture_message("hi from gunicorn")
    return "sent"
