"""Stuck-request watchdog
=======================

A request that hangs says nothing: the client times out, gunicorn's sync
worker is killed after ``--timeout`` (its gthread worker is not, a stuck
thread stays stuck), uWSGI's harakiri kills the process, and nobody learns
*where* it was stuck.

:class:`Watchdog` logs the stack of every request still running after
``FLASK_DIAG_WATCHDOG`` seconds (default 30), once per request::

    from flask_diag.watchdog import Watchdog

    app.wsgi_app = Watchdog(app.wsgi_app, watchdog=10)

.. code-block:: json

    {"event": "request stuck", "level": "warning", "request_id": "5f0c...",
     "pid": 41203, "thread": "ThreadPoolExecutor-0_0", "method": "POST",
     "path": "/recognize", "duration_s": 30.002, "limit_s": 30.0,
     "blocked_in_socket": true, "blocked_on": "127.0.0.1:8000",
     "own_address": true, "stack": "  File ... in recognize\\n ..."}

``blocked_on`` is the peer of the socket the thread waits on, and
``own_address`` says whether that is this very server (pitfall 2, a loopback
deadlock). The same report goes to the
:data:`~flask_diag.signals.request_stuck` signal and, when the application
initialised sentry-sdk, to Sentry as a warning message with the request's
tags.

One monitor thread per process does the work, started by the first request
of the process (so in each gunicorn or uWSGI worker, after the fork, never
in the master: not even for a warm-up request at import, see
:mod:`flask_diag.threads`) and restarted in a forked child. It wakes at most every
second (a quarter of the limit when that is shorter) and finds the watched
requests on the threads' stacks: a request costs the watchdog one clock
reading, nothing to undo, and no thread of its own. (Greenlets of gevent or
eventlet are on no thread's stack while they wait: where requests run in
greenlets, each is listed by its greenlet, whose stack is reported.) The
loopback guard's callback detector runs in the same thread.

What is watched is the app's call, where a view does its work. The body is
passed to the server untouched and not watched while it is sent: a streamed
response (server-sent events, a long download) may run as long as it likes.

The stack comes from ``sys._current_frames()``, so the monitor needs the GIL:
a request stuck in C code that holds it cannot be reported (for that,
``faulthandler.dump_traceback_later`` is the tool). Under uWSGI, Python
threads run only with ``--enable-threads``.

.. autoclass:: Watchdog
.. autoclass:: Monitor
    :members: add_check, wake, nudge
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
import typing as t

from . import context as _context
from . import sentry
from .context import ENVIRON_KEY as INFO_KEY
from .context import request_info
from .context import RequestInfo
from .internal import logger
from .internal import report_internal_error
from .server import current as current_profile
from .server import detect
from .server import ENVIRON_KEY as SERVER_KEY
from .server import format_address
from .server import ServerProfile
from .settings import Settings
from .signals import request_stuck
from .signals import send_safely
from .threads import current_frames
from .threads import frames_unavailable
from .threads import may_start_threads

if t.TYPE_CHECKING:
    from types import FrameType

    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["Monitor", "Watchdog", "monitor", "request_info_of", "under_watch"]

# The longest the monitor sleeps when nothing asks for sooner.
_IDLE = 1.0
# Where the innermost frame of a thread is when it waits in a socket call.
_SOCKET_MODULES = frozenset({"socket", "ssl", "selectors", "select"})


class Monitor:
    """The one monitor thread of a process.

    Runs registered checks, each a function of ``time.monotonic()`` that
    returns how soon it wants to run again (``None``: no opinion). Started
    lazily, and again after ``fork()``.
    """

    def __init__(self) -> None:
        self._checks: list[t.Callable[[float], float | None]] = []
        self._reset()

    def _reset(self) -> None:
        # New lock and event after fork: the parent's may have been held.
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._pid = -1

    def add_check(self, check: t.Callable[[float], float | None]) -> None:
        """Run ``check`` on every tick of the monitor."""
        with self._lock:
            if check not in self._checks:
                self._checks.append(check)

    def ensure_started(self) -> bool:
        """Start the thread in this process if it is not running; ``False``
        where no thread may start (a uWSGI master: see
        :func:`~flask_diag.threads.may_start_threads`)."""
        if self._pid == _context._pid:
            return True
        if not may_start_threads():
            return False
        with self._lock:
            if self._pid == _context._pid:
                return True
            thread = threading.Thread(
                target=self._run, name="flask_diag-monitor", daemon=True
            )
            thread.start()
            self._pid = _context._pid
        return True

    def wake(self) -> None:
        """Run the checks now (starting the thread if needed)."""
        self.ensure_started()
        self._event.set()

    def nudge(self) -> None:
        """Run the checks now if the thread runs in this process; never
        starts it (a gunicorn master imports the app, too)."""
        if self._pid == _context._pid:
            self._event.set()

    def _run(self) -> None:
        event = self._event
        while True:
            now = time.monotonic()
            delay = _IDLE
            for check in tuple(self._checks):
                try:
                    wanted = check(now)
                except Exception as exc:
                    report_internal_error(f"monitor check {check!r}", exc)
                    continue
                if wanted is not None:
                    delay = min(delay, wanted)
            event.wait(max(delay, 0.01))
            event.clear()


#: The monitor of this process.
monitor = Monitor()
os.register_at_fork(after_in_child=monitor._reset)


# A request under watch: ``(environ, time.monotonic() at its start, limit)``.
_Watched: t.TypeAlias = "tuple[WSGIEnvironment, float, float]"

#: The request last reported, per thread: each is reported once.
_reported: dict[int, float] = {}
_shortest_limit = _IDLE * 4


def _after_fork() -> None:
    _reported.clear()
    _registered.clear()


os.register_at_fork(after_in_child=_after_fork)


def under_watch(
    frames: t.Mapping[int, FrameType] | None = None,
) -> dict[int, _Watched]:
    """The requests running under a :class:`Watchdog`, by thread ident.

    Read from the threads' stacks (``sys._current_frames()``): a request is
    watched while the frame of :meth:`Watchdog.__call__` is on its thread's
    stack, and that frame's locals say when it started. So a request costs
    the watchdog one clock reading and nothing to undo; the monitor thread
    does the looking, once a tick. Where requests run in greenlets, or where
    no thread's stack may be read, they are listed instead, by greenlet or
    thread.
    """
    if _current_task is not None:
        # Requests are listed here: all of them.
        return {key: entry[:3] for key, entry in list(_registered.items())}
    found: dict[int, _Watched] = {}
    if frames is None:
        frames = current_frames()
        if frames is None:  # no stacks in this process (flask_diag.threads)
            return {}
    for ident, frame in frames.items():
        watched = None
        # The whole stack: the watchdog's frame is near its bottom.
        current: FrameType | None = frame
        while current is not None:
            if current.f_code is _CALL_CODE:
                # Wrapped twice: the outermost watchdog that is on counts
                # (one that is off returns before setting ``started``).
                watched = _watched_by(current) or watched
            current = current.f_back
        if watched is not None:
            found[ident] = watched
    return found


def _watched_by(frame: FrameType) -> _Watched | None:
    """The request a frame of ``Watchdog.__call__`` watches, if it does."""
    local = frame.f_locals
    environ, started, limit = (
        local.get("environ"),
        local.get("started"),
        local.get("limit"),
    )
    if isinstance(environ, dict) and isinstance(started, float) and limit:
        return environ, started, float(limit)
    return None


def _check_stuck(now: float) -> float | None:
    """One monitor tick: report each request past its limit, once."""
    tick = min(_IDLE, _shortest_limit / 4)
    next_due: float | None = None
    watched = under_watch()
    for ident in [i for i in _reported if i not in watched]:
        del _reported[ident]
    for ident, request in watched.items():
        if _reported.get(ident) == request[1]:
            continue
        due = request[1] + request[2]
        if now >= due:
            _reported[ident] = request[1]
            try:
                _report(ident, request, now)
            except Exception as exc:
                report_internal_error("reporting a stuck request", exc)
        elif next_due is None or due < next_due:
            next_due = due
    if next_due is not None:
        return min(tick, next_due - now)
    return tick


monitor.add_check(_check_stuck)


def request_info_of(environ: WSGIEnvironment, ident: int) -> RequestInfo:
    """The request's :class:`~flask_diag.context.RequestInfo`, read from
    another thread: without request tagging, one is made, named after the
    request's thread rather than the caller's."""
    info = environ.get(INFO_KEY)
    if isinstance(info, RequestInfo):
        return info
    info = request_info(environ)
    info.thread = f"thread-{ident}"
    for thread in threading.enumerate():
        if thread.ident == ident:
            info.thread = thread.name
    return info


def waits_in_socket(
    frame: FrameType, prefixes: tuple[str, ...] = ("httpcore._backends",)
) -> bool:
    """Whether ``frame``, a thread's innermost, waits in a socket call: it
    runs in the socket layer (``socket``, ``ssl``, ``selectors``,
    ``select``) or in a module whose name starts with one of ``prefixes``.
    Shared with the loopback guard's callback detector."""
    module = frame.f_globals.get("__name__", "")
    return isinstance(module, str) and (
        module in _SOCKET_MODULES or module.startswith(prefixes)
    )


def _blocked_socket(
    frame: FrameType | None, profile: ServerProfile | None
) -> tuple[bool, str | None, bool]:
    """``(waits in a socket call, its peer, the peer is this server)``."""
    if frame is None or not waits_in_socket(frame):
        return False, None, False
    depth = 0
    while frame is not None and depth < 12:
        for value in list(frame.f_locals.values()):
            sock = (
                value
                if isinstance(value, socket.socket)
                else getattr(value, "_sock", None)
            )
            if not isinstance(sock, socket.socket):
                continue
            try:
                peer = sock.getpeername()
            except OSError:
                continue
            if isinstance(peer, tuple):
                host, port = peer[0], peer[1]
                text = format_address(host, port)
                own = (
                    profile is not None and profile.own_address(host, port) is not None
                )
            else:
                text = f"unix:{peer}"
                own = profile is not None and profile.own_address(peer) is not None
            return True, text, own
        frame = frame.f_back
        depth += 1
    return True, None, False


def _frame_of(ident: int) -> FrameType | None:
    """The current frame of a thread, or of a listed greenlet (waiting)."""
    entry = _registered.get(ident)
    if entry is not None:
        frame = getattr(entry[3], "gr_frame", None)
        if frame is not None:
            return t.cast("FrameType", frame)
    frames = current_frames()
    return frames.get(ident) if frames is not None else None


def _report(ident: int, watched: _Watched, now: float) -> None:
    environ, started, limit = watched
    frame = _frame_of(ident)
    stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
    now_running = _frame_of(ident)
    running = {ident: now_running} if now_running is not None else {}
    if under_watch(running).get(ident) != watched:
        return  # it finished while the stack was read: not stuck after all
    info = request_info_of(environ, ident)
    duration = now - started
    profile = environ.get(SERVER_KEY) or current_profile()
    if profile is None and frame is not None:
        try:
            profile = detect(environ, frame=frame)
        except Exception:
            profile = None
    in_socket, peer, own = _blocked_socket(frame, profile)
    logger.warning(
        "request stuck",
        request_id=info.request_id,
        pid=info.pid,
        thread=info.thread,
        method=info.method,
        path=info.path,
        duration_s=round(duration, 3),
        limit_s=limit,
        blocked_in_socket=in_socket,
        blocked_on=peer,
        own_address=own,
        stack=stack or "(the thread's stack is not available)",
    )
    if request_stuck.receivers:
        send_safely(
            request_stuck,
            None,
            environ=environ,
            request_id=info.request_id,
            pid=info.pid,
            thread=info.thread,
            duration=duration,
            stack=stack,
            blocked_on=peer,
        )
    sentry.capture_warning(
        f"Request stuck for {duration:.1f}s: {info.method} {info.path}",
        tags=sentry.request_tags(info.request_id, info.pid, info.thread),
        context_name="stuck request",
        context={
            "method": info.method,
            "path": info.path,
            "duration_s": round(duration, 3),
            "blocked_on": peer,
            "own_address": own,
            "stack": stack,
        },
    )


class Watchdog:
    """Log the stack of a request that runs longer than a limit.

    :param app: the WSGI application to wrap.
    :param settings: a :class:`~flask_diag.settings.Settings`; by default
        loaded from the environment (``FLASK_DIAG_WATCHDOG``).
    :param overrides: settings given in code, e.g. ``watchdog=10``.

    .. code-block:: python

        application = Watchdog(application, watchdog=2.5)
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        settings: Settings | None = None,
        **overrides: object,
    ) -> None:
        global _shortest_limit
        settings = Settings.for_middleware(settings, overrides)
        self.app = app
        self.settings = settings
        self.limit = settings.watchdog
        if self.limit is not None and self.limit < _shortest_limit:
            _shortest_limit = self.limit
            monitor.nudge()  # it may be asleep for longer than this limit

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        limit = self.limit
        if limit is None:
            return self.app(environ, start_response)
        if _watch_pid != _context._pid:
            _start_watching()
        # Read by the monitor from this frame (see under_watch): while the
        # app's call lasts, this request is watched. Nothing to undo after
        # it, and the body goes to the server untouched.
        started = _monotonic()
        if _current_task is not None:
            return self._listed_call(environ, start_response, started, limit)
        return self.app(environ, start_response)

    def _listed_call(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        started: float,
        limit: float,
    ) -> t.Iterable[bytes]:
        # Requests served in greenlets (gevent, eventlet, patched or not)
        # are on no thread's stack while they wait, and no stack may be read
        # in some uWSGI workers: listed by greenlet, or by thread.
        assert _current_task is not None
        task = _current_task()
        key = id(task)
        if key in _registered:
            return self.app(environ, start_response)  # the outer one counts
        _registered[key] = (environ, started, limit, task)
        try:
            return self.app(environ, start_response)
        finally:
            _registered.pop(key, None)


_CALL_CODE = Watchdog.__call__.__code__
_monotonic = time.monotonic
#: The process whose first watched request chose how to watch (below).
_watch_pid = -1
#: How requests are listed when they cannot be found on the threads' stacks
#: (chosen at the first request of the process): ``greenlet.getcurrent``
#: where they run in greenlets, ``threading.current_thread`` where no stack
#: may be read (:mod:`flask_diag.threads`); ``None`` where they are found.
_current_task: t.Callable[[], t.Any] | None = None
_registered: dict[int, tuple[WSGIEnvironment, float, float, t.Any]] = {}


def _start_watching() -> None:
    """At the first request of a process: the monitor, and how to watch."""
    global _current_task, _watch_pid
    _current_task = _greenlet_getcurrent()
    if _current_task is None and frames_unavailable() is not None:
        # No thread's stack may be read here (a uWSGI worker forked without
        # Python's fork hooks from a master that ran threads): requests are
        # listed, by thread, and reported without their stack.
        _current_task = threading.current_thread
    if monitor.ensure_started():  # not in a uWSGI master: again next time
        _watch_pid = _context._pid


def _greenlet_getcurrent() -> t.Callable[[], t.Any] | None:
    """``greenlet.getcurrent`` if this request runs in a greenlet other than
    its thread's main one (a gevent or eventlet server), else ``None``."""
    module = sys.modules.get("greenlet")
    getcurrent = getattr(module, "getcurrent", None)
    if getcurrent is None:
        return None
    try:
        if getcurrent().parent is not None:
            return t.cast("t.Callable[[], t.Any]", getcurrent)
    except Exception:  # an API we do not know: threads, then
        pass
    return None
