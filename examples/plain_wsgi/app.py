"""A plain WSGI app (no Flask) wrapped with :func:`flask_diag.wrap`.

Run it::

    gunicorn -b 127.0.0.1:8000 app:application

Every response carries ``X-Request-ID``, ``X-Diag-PID``, ``X-Diag-Thread``
and ``Server-Timing``; the JSON log line written per request carries the same
``request_id``, ``pid`` and ``thread``.
"""

from __future__ import annotations

import json
import typing as t

import structlog

import flask_diag.logging
from flask_diag import wrap

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment

flask_diag.logging.configure()  # JSON lines on stderr
log = structlog.get_logger()


def hello(environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    # The id the app sees is the one flask_diag chose (an unsafe incoming
    # value has already been replaced), the same as in the logs.
    seen = environ.get("HTTP_X_REQUEST_ID")
    log.info("hello", seen_request_id=seen)
    body = json.dumps({"hello": "world", "seen_request_id": seen}).encode()
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


application = wrap(hello)
app = application
