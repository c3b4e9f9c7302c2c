"""What a werkzeug response will do when the server iterates and closes it.

Flask, and any werkzeug app, returns a :class:`werkzeug.wsgi.ClosingIterator`
around its response. A middleware that only guards the iteration and the
close of the response (to report an exception raised there) can step aside
when neither can raise: :func:`inert_response`. That is Flask's common case,
a view returning a string, bytes, a dict or a template::

    if inert_response(app_iter):
        return app_iter          # nothing to guard: no wrapper, no generator
    return Guarded(app_iter)

It reads werkzeug internals (``ClosingIterator._callbacks``, the bound
``Response.close`` werkzeug registers, ``Response._on_close``): when those
change it answers ``False`` and the caller guards the response as it would
any other.
"""

from __future__ import annotations

import typing as t

from werkzeug.wrappers import Response
from werkzeug.wrappers import response as _response_module
from werkzeug.wsgi import ClosingIterator

__all__ = [
    "EndsAtClose",
    "add_quiet_callback",
    "quiet",
    "close_iterable",
    "inert_response",
    "werkzeug_body",
]

_ITER_ENCODED = getattr(
    getattr(_response_module, "_iter_encoded", None), "__code__", object()
)
_EMPTY_ITER = type(iter(()))
_RESPONSE_CLOSE = Response.close


def inert_response(app_iter: object) -> bool:
    """Whether iterating and closing ``app_iter`` cannot raise.

    True for ``ClosingIterator(response.iter_encoded(), response.close)``
    (what ``Response.__call__`` returns) when the body is one ``bytes``
    object already in memory, or for ``ClosingIterator((), response.close)``
    (``HEAD``, 204, 304), and the response has no ``call_on_close``
    functions, and werkzeug's own ``close()``. A body that is a list of
    ``str`` is not inert (werkzeug
    encodes it while the server iterates, which can fail), nor a generator,
    nor a ``ClosingIterator`` another middleware built around an iterable of
    its own.
    """
    # Plain attribute reads under one ``try`` (free unless it raises): this
    # runs on every request the error envelope sees.
    if type(app_iter) is not ClosingIterator:
        return False
    try:
        # Typed loosely on purpose: these are werkzeug's private attributes.
        closing: t.Any = app_iter
        callbacks = closing._callbacks
        last = len(callbacks) - 1
        if callbacks[last].__func__ is not _RESPONSE_CLOSE:
            # Past flask_diag's own (add_quiet_callback), which never raise.
            last = _last_not_quiet(callbacks)
            if callbacks[last].__func__ is not _RESPONSE_CLOSE:
                return False  # not werkzeug's own close (a subclass's)
        response = callbacks[last].__self__
        body = response.response
        if (
            type(body) is not list
            or response._on_close
            or not isinstance(response, Response)
        ):
            return False
        if last == 1:
            # [the _iter_encoded generator's close, response.close]
            if callbacks[0].__self__.gi_code is not _ITER_ENCODED:
                return False
            return len(body) == 1 and type(body[0]) is bytes
        # [response.close] around an empty iterator: no body is sent.
        return last == 0 and type(closing._next.args[0]) is _EMPTY_ITER
    except (AttributeError, IndexError, TypeError):
        return False


def werkzeug_body(app_iter: object) -> bytes | None:
    """The body of the werkzeug response behind ``app_iter`` when it is in
    memory, also for a ``HEAD`` request (whose iterable is empty); ``None``
    for anything else."""
    if type(app_iter) is not ClosingIterator:
        return None
    try:
        closing: t.Any = app_iter
        callbacks = closing._callbacks
        last = _last_not_quiet(callbacks)
        if callbacks[last].__func__ is not _RESPONSE_CLOSE:
            return None
        body = callbacks[last].__self__.response
        if type(body) is list and all(type(chunk) is bytes for chunk in body):
            return b"".join(body)
    except (AttributeError, IndexError, TypeError):
        pass
    return None


#: The functions marked :func:`quiet`.
_QUIET: set[t.Callable[..., object]] = set()

_F = t.TypeVar("_F", bound=t.Callable[..., object])


def quiet(func: _F) -> _F:
    """Mark a method as flask_diag's own close callback: it never raises, so
    :func:`inert_response` looks past it. Once, where it is defined::

        @quiet
        def end(self) -> None: ...
    """
    _QUIET.add(func)
    return func


def add_quiet_callback(app_iter: object, callback: t.Callable[[], object]) -> bool:
    """Have werkzeug's ``ClosingIterator`` call ``callback`` last at close.

    Cheaper than wrapping the response (iteration stays werkzeug's). For
    flask_diag's own end-of-request work: ``callback`` is a bound method
    marked :func:`quiet` (any other makes the response not inert, which is
    only slower). ``False``, and nothing added, when ``app_iter`` is not a
    ``ClosingIterator`` (the caller wraps it instead).
    """
    if type(app_iter) is not ClosingIterator:
        return False
    callbacks = getattr(app_iter, "_callbacks", None)
    if type(callbacks) is not list:
        return False
    callbacks.append(callback)
    return True


def _last_not_quiet(callbacks: list[t.Any]) -> int:
    """The index of the last callback that is not a :func:`quiet` one."""
    last = len(callbacks) - 1
    while last > 0 and getattr(callbacks[last], "__func__", None) in _QUIET:
        last -= 1
    return last


def close_iterable(app_iter: object) -> None:
    """Call ``app_iter.close()`` if it has one (PEP 3333: a server closes
    every response iterable it was given; a middleware that keeps one from
    the server closes it itself)."""
    close = getattr(app_iter, "close", None)
    if close is not None:
        close()


class EndsAtClose:
    """A response wrapper whose ``close()`` closes the app's iterable, then
    runs ``end()`` however that went: the request is over for flask_diag
    when the server closes the response (PEP 3333)."""

    __slots__ = ()

    app_iter: t.Iterable[bytes]
    #: ``True`` once :meth:`end` has run: a server (or a test client) that
    #: calls ``close()`` again does not close the app's iterable twice.
    ended: bool

    def close(self) -> None:
        if self.ended:
            return
        try:
            close_iterable(self.app_iter)
        finally:
            self.end()

    def end(self) -> None:
        raise NotImplementedError
