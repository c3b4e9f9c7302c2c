"""A Flask app and a plain WSGI app that fail in every way, for the error
envelope tests on real servers (``tests/test_errors_servers.py``)::

    gunicorn --chdir tests/apps errors_apps:flask_app
    gunicorn --chdir tests/apps errors_apps:plain_app

With ``DIAG_TEST_SENTRY_DSN`` set, sentry-sdk is initialised with it (and
its default integrations, Flask's among them) when the worker imports this
module. JSON log lines go to stderr.
"""

from __future__ import annotations

import os
import typing as t
from collections.abc import Iterator

import sentry_sdk
from flask import abort
from flask import Flask
from werkzeug.exceptions import MethodNotAllowed
from werkzeug.exceptions import NotFound

import flask_diag.logging
from flask_diag import Diag
from flask_diag import wrap
from flask_diag.errors import map_exception

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIEnvironment

flask_diag.logging.configure()

if os.environ.get("DIAG_TEST_SENTRY_DSN"):
    sentry_sdk.init(
        dsn=os.environ["DIAG_TEST_SENTRY_DSN"],
        http_proxy="",
        https_proxy="",
        shutdown_timeout=2,
    )


class CarNotFound(LookupError):
    pass


flask_app = Flask(__name__)
flask_app.config["MAX_CONTENT_LENGTH"] = 1024
diag = Diag(flask_app)
diag.map_exception(LookupError, 404, code="not_found")


@flask_app.get("/")
def index() -> str:
    return "ready"


@flask_app.get("/cars/<int:car_id>")
def car(car_id: int) -> str:
    abort(404, "no such car")


@flask_app.get("/lookup")
def lookup() -> str:
    raise CarNotFound("car 7")


@flask_app.get("/crash")
def crash() -> str:
    raise ZeroDivisionError("password=hunter2 in /srv/app/db.py")


@flask_app.get("/none")
def none() -> t.Any:
    return None  # Flask's handle_exception path (got_request_exception)


@flask_app.get("/maintenance")
def maintenance() -> str:
    abort(503, retry_after=60)


@flask_app.get("/export")
def export() -> t.Any:
    # A streamed download whose first chunk fails: the envelope answers in
    # place of the status and headers already given to the server.
    from flask import Response

    def rows() -> Iterator[str]:
        raise ConnectionError("the database went away")
        yield "id,name\n"  # never reached

    return Response(rows(), mimetype="text/csv", headers={"X-Export": "cars.csv"})


@flask_app.post("/upload")
def upload() -> str:
    from flask import request

    return str(len(request.get_data()))


def _plain(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
    path = environ.get("PATH_INFO", "")
    if path == "/":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ready"]
    if path == "/crash":
        raise ZeroDivisionError("password=hunter2 in /srv/app/db.py")
    if path == "/method":
        raise MethodNotAllowed(valid_methods=["GET"])
    if path == "/lookup":
        raise CarNotFound("car 7")
    if path == "/stock-page":
        return NotFound("no such car")(environ, start_response)
    if path == "/stream":

        def rows() -> Iterator[bytes]:
            yield b"id,name\n"
            raise RuntimeError("the database went away mid-stream")

        start_response("200 OK", [("Content-Type", "text/csv")])
        return rows()
    if path == "/write-then-fail":
        # The legacy write(): the server sends the headers with it, before
        # the body's iterable fails.

        def rest() -> Iterator[bytes]:
            raise RuntimeError("the database went away after write()")
            yield b""  # pragma: no cover - a generator

        write = start_response("200 OK", [("Content-Type", "text/csv")])
        write(b"id,name\n")
        return rest()
    raise NotFound()


plain_app = wrap(_plain)
map_exception(plain_app, LookupError, 404, code="not_found")


# A file sent with the server's ``wsgi.file_wrapper``, through the whole
# stack: ``/offloaded`` says whether the object the stack returned for the
# last ``/file`` was the server's own (so it could send the file itself).
_sent: dict[str, object] = {}


def _files(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
    path = environ.get("PATH_INFO", "")
    if path == "/file":
        start_response("200 OK", [("Content-Type", "text/plain")])
        wrapped = environ["wsgi.file_wrapper"](open(__file__, "rb"))  # noqa: SIM115
        _sent["wrapped"] = wrapped
        return wrapped
    start_response("200 OK", [("Content-Type", "text/plain")])
    if path == "/offloaded":
        return [repr(_sent.get("same")).encode()]
    return [b"ready"]


_files_stack = wrap(_files)


def file_app(environ: WSGIEnvironment, start_response: StartResponse) -> t.Any:
    result = _files_stack(environ, start_response)
    if environ.get("PATH_INFO") == "/file":
        _sent["same"] = result is _sent.get("wrapped")
    return result
