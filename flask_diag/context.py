"""The request context shared by every middleware.

Whichever flask_diag middleware sees a request first gives it a
:class:`RequestInfo` (request id, W3C trace id, worker pid, thread) and stores
it in the WSGI environ under ``flask_diag.request`` and in a context variable,
so the others (and your code) reuse the same values::

    from flask_diag.context import ENVIRON_KEY

    info = flask.request.environ[ENVIRON_KEY]
    print(info.request_id, info.pid, info.thread)
"""

from __future__ import annotations

import itertools
import os
import re
import sys
import threading
import time
import typing as t

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "ENVIRON_KEY",
    "RequestInfo",
    "current_pid",
    "new_request_id",
    "init_request_info",
    "clean_request_id",
    "parse_traceparent",
    "request_info",
]

#: The environ key holding the :class:`RequestInfo` of a request.
ENVIRON_KEY = "flask_diag.request"

# A request id may travel into response headers and log lines: only a
# conservative character set, and bounded, is ever reused as sent.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_SAFE_THREAD_NAME = re.compile(r"[\x21-\x7e ]{1,100}")

_pid = os.getpid()
_pid_str = str(_pid)
# Request ids are a random per-process prefix and a counter: unique across
# workers and hosts like a uuid4, at a fraction of its cost on every request.
# They are made 256 at a time: the counter's upper 56 bits per batch, its last
# two hex digits from a table (see new_request_id).
_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count(int.from_bytes(os.urandom(4), "big"))
_LAST_DIGITS = tuple(f"{n:02x}" for n in range(256))
_id_batch: t.Iterator[str] = iter(())


def _refresh_pid() -> None:
    global _pid, _pid_str, _id_prefix, _id_counter, _id_batch
    pid = os.getpid()
    prefix = os.urandom(8).hex()  # (os.urandom lets other threads run)
    counter = itertools.count(int.from_bytes(os.urandom(4), "big"))
    # The pid last: a thread that finds it current (init_request_info under
    # uWSGI, whose threads may start serving at once) finds the rest current
    # too, never the parent's prefix or unused ids.
    _id_batch = iter(())
    _id_prefix = prefix
    _id_counter = counter
    _pid_str = str(pid)
    _pid = pid


# gunicorn and uWSGI fork workers after importing the app: the cached pid must
# follow, or every worker would report the master's.
os.register_at_fork(after_in_child=_refresh_pid)


def is_file_wrapper(environ: WSGIEnvironment, app_iter: object) -> bool:
    """Whether ``app_iter`` is the server's ``wsgi.file_wrapper`` object.

    Such responses go out untouched so the server can send the file itself
    (sendfile, uWSGI offload). uWSGI's ``wsgi.file_wrapper`` is a function,
    not a class, and its offload compares the returned object with the file
    it was given: there, as sentry-sdk does, anything with a ``fileno`` is
    taken for the file.
    """
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is None:
        return False
    if isinstance(wrapper, type):
        return isinstance(app_iter, wrapper)
    return getattr(app_iter, "fileno", None) is not None


def current_pid() -> int:
    """This process's id, cached and refreshed after ``fork()``."""
    return _pid


def current_pid_str() -> str:
    """:func:`current_pid` as a string, for headers."""
    return _pid_str


def new_request_id() -> str:
    """A fresh request id: 32 hex digits.

    64 random bits drawn once per process (again after ``fork()``, so every
    gunicorn worker has its own) followed by a 64-bit counter that starts at
    a random value: ids from different workers and hosts do not collide, and
    making one costs a fraction of ``uuid.uuid4().hex``. Request ids are
    labels, not secrets.
    """
    # Taking the next id of a batch is one C call, atomic under the GIL;
    # threads that find the batch empty at once each make their own, from
    # their own values of the counter, so no id is handed out twice.
    request_id = next(_id_batch, None)
    if request_id is None:
        request_id = next(_new_id_batch())
    return request_id


def _new_id_batch() -> t.Iterator[str]:
    global _id_batch
    # ``to_bytes().hex()``: half the cost of a ``:014x`` format spec.
    head = _id_prefix + next(_id_counter).to_bytes(7, "big").hex()
    batch = _id_batch = iter([head + last for last in _LAST_DIGITS])
    return batch


def clean_request_id(value: str | None) -> str | None:
    """``value`` if it is safe to reuse as a request id, else ``None``."""
    if value and _SAFE_REQUEST_ID.fullmatch(value):
        return value
    return None


def parse_traceparent(value: str | None) -> str | None:
    """The trace id of a valid W3C ``traceparent`` header, else ``None``."""
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None or match.group(1) == "ff" or match.group(2) == "0" * 32:
        return None
    return match.group(2)


_safe_names: dict[str, str] = {}


# ``threading.current_thread().name`` is three Python calls; the registry
# behind it is one dictionary lookup (private, hence the fallback).
_active = getattr(threading, "_active", None)
_active_threads: dict[int, threading.Thread] = _active if type(_active) is dict else {}
_get_ident = threading.get_ident


def thread_name() -> str:
    """The current thread's name, made safe for a header and a log line."""
    thread = _active_threads.get(_get_ident())
    name = getattr(thread, "_name", None)
    if not isinstance(name, str):
        name = threading.current_thread().name
    safe = _safe_names.get(name)
    if safe is None:
        safe = name if _SAFE_THREAD_NAME.fullmatch(name) else "thread-unnamed"
        if len(_safe_names) < 1024:  # bounded: thread names are not unlimited
            _safe_names[name] = safe
    return safe


class RequestInfo:
    """What flask_diag knows about the request being served."""

    __slots__ = ("request_id", "trace_id", "pid", "thread", "method", "path", "started")

    def __init__(
        self,
        request_id: str,
        trace_id: str | None,
        pid: int,
        thread: str,
        method: str,
        path: str,
        started: float,
    ) -> None:
        self.request_id = request_id
        self.trace_id = trace_id
        self.pid = pid
        self.thread = thread
        self.method = method
        self.path = path
        #: ``time.perf_counter()`` when flask_diag first saw the request.
        self.started = started

    def __reduce__(self) -> tuple[type[RequestInfo], tuple[object, ...]]:
        # The same pickle whether this class is compiled or not (see
        # flask_diag.speedups): the fields, in the constructor's order.
        return (
            RequestInfo,
            (
                self.request_id,
                self.trace_id,
                self.pid,
                self.thread,
                self.method,
                self.path,
                self.started,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"<RequestInfo {self.request_id} {self.method} {self.path!r} "
            f"pid={self.pid} thread={self.thread!r}>"
        )


_Info = t.TypeVar("_Info", bound=RequestInfo)

# uWSGI forks its workers without Python's at-fork hooks: there (only) the
# pid is compared on every request, a system call the others are spared.
_CHECK_PID = "uwsgi" in sys.modules


def request_info(
    environ: WSGIEnvironment,
    *,
    header_key: str = "HTTP_X_REQUEST_ID",
    trust_incoming: bool = True,
) -> RequestInfo:
    """Get the request's :class:`RequestInfo`, creating it on first call.

    A new one reuses a safe incoming request id, otherwise generates one, and
    writes the id back into ``environ[header_key]`` so the app reads the same
    value as the logs, never the raw one a client sent.
    """
    info: RequestInfo | None = environ.get(ENVIRON_KEY)
    if info is not None:
        return info
    return init_request_info(
        RequestInfo.__new__(RequestInfo), environ, header_key, trust_incoming
    )


def init_request_info(
    info: _Info,
    environ: WSGIEnvironment,
    header_key: str,
    trust_incoming: bool,
) -> _Info:
    """:func:`request_info` for a middleware that found none in ``environ``:
    fills in ``info``, a new :class:`RequestInfo` (or subclass) made with
    ``cls.__new__(cls)``, without its constructor, and puts it in ``environ``.

    The tagging middleware's response object is the request's info too, one
    object instead of two on every request. (``cls.__new__(cls)`` rather than
    the constructor: one Python call fewer; compiled, a direct call of the
    type's allocator.)
    """
    if info is None:  # compiled, a None would reach the fields unchecked
        raise TypeError("init_request_info() needs a RequestInfo, not None")
    if _CHECK_PID and os.getpid() != _pid:
        _refresh_pid()
    incoming = environ.get(header_key)
    if incoming is not None and trust_incoming and _SAFE_REQUEST_ID.fullmatch(incoming):
        request_id = incoming
    else:
        request_id = new_request_id()
        if incoming is not None:
            environ[header_key] = request_id  # the app sees the id we log
    traceparent = environ.get("HTTP_TRACEPARENT")
    info.request_id = request_id
    info.trace_id = parse_traceparent(traceparent) if traceparent else None
    info.pid = _pid
    info.thread = thread_name()
    info.method = environ.get("REQUEST_METHOD", "GET")
    info.path = environ.get("PATH_INFO", "")
    info.started = _perf_counter()
    environ[ENVIRON_KEY] = info
    return info


_perf_counter = time.perf_counter
