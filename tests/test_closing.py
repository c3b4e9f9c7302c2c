"""closing.inert_response: when the middlewares may leave a response alone."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import make_response
from flask import stream_with_context
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Response
from werkzeug.wsgi import ClosingIterator

from flask_diag.closing import add_quiet_callback
from flask_diag.closing import inert_response
from flask_diag.closing import quiet
from flask_diag.closing import werkzeug_body


@pytest.fixture
def app() -> Flask:
    app = Flask(__name__)

    @app.get("/text")
    def text() -> str:
        return "hello"

    @app.get("/json")
    def json_view() -> dict[str, int]:
        return {"a": 1}

    @app.get("/empty")
    def empty() -> tuple[str, int]:
        return "", 204

    @app.get("/stream")
    def stream() -> t.Any:
        def body() -> t.Iterator[str]:
            yield "a"

        return stream_with_context(body())

    @app.get("/on-close")
    def on_close() -> t.Any:
        response = make_response("x")
        response.call_on_close(lambda: None)
        return response

    @app.get("/str-list")
    def str_list() -> Response:
        # Encoded while the server iterates (any list of str would be).
        return Response(["a", "b"])

    return app


def app_iter(app: Flask, path: str, method: str = "GET") -> t.Any:
    environ = EnvironBuilder(path, method=method).get_environ()
    return app(environ, lambda status, headers, exc_info=None: None)


@pytest.mark.parametrize(
    ("path", "method", "inert"),
    [
        ("/text", "GET", True),
        ("/json", "GET", True),
        ("/text", "HEAD", True),
        ("/empty", "GET", True),
        ("/stream", "GET", False),
        ("/stream", "HEAD", False),
        ("/on-close", "GET", False),
        ("/str-list", "GET", False),
    ],
)
def test_flask_responses(app: Flask, path: str, method: str, inert: bool) -> None:
    result = app_iter(app, path, method)
    try:
        assert inert_response(result) is inert
    finally:
        result.close()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_inert_past_flask_diags_own_quiet_callbacks(app: Flask, method: str) -> None:
    # The teardown check adds its end of request as a close callback marked
    # quiet: the envelope outside still sees an inert body, and the body
    # behind it. A callback not marked quiet makes the response not inert.
    class Ours:
        @quiet
        def end(self) -> None:
            pass

        def other(self) -> None:
            pass

    result = app_iter(app, "/text", method)
    try:
        assert add_quiet_callback(result, Ours().end)
        assert inert_response(result)
        assert werkzeug_body(result) == b"hello"
        assert add_quiet_callback(result, Ours().other)
        assert not inert_response(result)
    finally:
        result.close()


def test_other_iterables_are_not_inert() -> None:
    response = Response(b"x")
    assert not inert_response([b"x"])
    assert not inert_response(iter([b"x"]))
    # A ClosingIterator another middleware built around an iterable of its
    # own, even with a buffered response's close among its callbacks.
    assert not inert_response(ClosingIterator([b"x"]))
    assert not inert_response(ClosingIterator(iter([b"x"]), response.close))

    def generator() -> t.Iterator[bytes]:
        yield b"x"

    assert not inert_response(ClosingIterator(generator(), response.close))
    assert not inert_response(ClosingIterator(generator(), [lambda: None]))


def test_a_response_class_with_its_own_close_is_not_inert() -> None:
    closed: list[bool] = []

    class Audited(Response):
        def close(self) -> None:
            closed.append(True)  # the app's code runs at close
            super().close()

    app = Flask(__name__)
    app.response_class = Audited

    @app.get("/")
    def index() -> str:
        return "hello"

    result = app_iter(app, "/")
    assert not inert_response(result)
    result.close()
    assert closed == [True]
    plain = Response(b"x")
    assert not inert_response(ClosingIterator(plain.iter_encoded(), plain.freeze))


def test_werkzeug_internals_changed() -> None:
    # Whatever werkzeug changes, the answer is "guard it", never an error.
    closing = ClosingIterator([b"x"])
    del closing._callbacks  # type: ignore[attr-defined]
    assert not inert_response(closing)
    closing = ClosingIterator(Response(b"x").iter_encoded(), [object()])  # type: ignore[list-item]
    assert not inert_response(closing)
