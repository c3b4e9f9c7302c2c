"""Loopback deadlock detection
===========================

Pitfall 2: a view hands the URL of one of its own static images to an
external recognition API, or simply calls its own URL. Tested from a
separate script it works; inside the app it freezes forever. The server
serves one request at a time (the werkzeug development server with
``threaded=False``, gunicorn's sync worker with ``-w 1``, uWSGI with one
process and no threads), it is busy waiting for the outbound call, and the
call (or the API's fetch of the image) can never be served.

:class:`LoopbackGuard` turns the silent hang into a fast, clear failure::

    from flask_diag.loopback import LoopbackGuard

    app.wsgi_app = LoopbackGuard(app.wsgi_app)          # Flask
    application = LoopbackGuard(get_wsgi_application())  # Django, any WSGI

(:class:`~flask_diag.Diag` and :func:`~flask_diag.wrap` include it; the
``FLASK_DIAG_LOOPBACK`` setting chooses what it does.) At the first request
of each process it works out the :mod:`server profile <flask_diag.server>`:

- **one request at a time** (capacity 1): the guard is armed;
- **a bounded number** (gunicorn sync ``-w 2``, gthread, waitress): calls to
  the server's own address succeed and are logged once as *may deadlock
  under load*: when every worker is busy with such a request, none is left
  to answer them;
- **no fixed limit, or no listening socket of its own** (werkzeug
  ``threaded=True``, gevent workers, the test client): the guard steps
  aside and costs one attribute check per request.

What an armed guard catches, while a request runs:

Direct self-calls
    An outbound connection to one of the server's own addresses is stopped
    before it is made: :class:`LoopbackDeadlockError` is raised from the
    ``connect``. It names the call, the server model and the fix; through the
    error envelope the client gets ``508`` with ``code: "loopback_deadlock"``.
URLs handed over
    A URL on this server in an outbound request's URL or body (query string,
    form or JSON, percent- or JSON-escaped) is reported before the request is
    sent: a warning by default, :class:`LoopbackDeadlockError` in ``strict``
    mode.
Callbacks to the busy server
    A request waits on an outbound socket while a connection to this server
    sits in the accept queue (or in the server's own queue) for longer than
    ``callback_after`` seconds: the signature of the indirect deadlock even
    when no URL was spotted. Logged with the blocked stack; in ``strict``
    mode the outbound socket is shut down so the request fails with
    ``loopback_deadlock`` at once instead of hanging until some timeout.

How outbound calls are seen
---------------------------

One ``sys.addaudithook`` hook, installed when a guard first arms in the
process. Nothing is patched. CPython raises audit events that every Python
HTTP client goes through:

- ``socket.connect`` (``requests``, ``urllib3``, ``httpx`` sync and async,
  ``urllib.request``, ``http.client``, raw sockets): raising in the hook
  cancels the connect before anything is sent. Our exception is not an
  ``OSError``, so no client wraps it into its own connection error or
  retries it: it reaches the view, and the error envelope, as itself.
- ``socket.getaddrinfo``: the host *name*, for URLs of this server reached
  through a proxy by its public name (``SERVER_NAME``, the request's
  ``Host``), which no address comparison can see.
- ``http.client.send`` (``http.client``, ``urllib3``, ``requests``,
  ``urllib.request``): the bytes of the request line, headers and body,
  also on reused keep-alive connections.
- ``urllib.Request``: the URL and body of ``urllib.request`` calls.

There is no audit event for ``socket.send``, and ``httpx`` writes through
``h11`` straight to the socket. So at ``socket.connect`` the guard also
looks up the stack of the HTTP client that is connecting (only its frames,
stopping at the first frame of your code) for the request object being
sent: ``httpx.Request``, ``requests.PreparedRequest``,
``urllib.request.Request``. A request ``httpx`` sends on a pooled
connection, and the request of an async client (its frames are suspended
coroutines), are therefore not inspected for URLs; the direct self-call
check and the callback detector still apply to them. C-level clients
(pycurl, grpc) are not seen.

The hook cannot be removed: it returns after one flag test until a guard
arms in the process, and after a set lookup for the events it does not
handle (one per Flask request, ``object.__getattr__``).

What is guarded, and what it costs
----------------------------------

The app's call, where the view runs, in the thread serving the request (an
event loop the view runs with ``asyncio.run()``, and greenlets it starts,
run there too). A thread the view starts is not guarded, nor does it hold
the request up; nor are Flask's ``async def`` views, which asgiref runs in
a thread of its own. The body is sent by the server after the call and is
not guarded: a streamed body that calls out is not seen.

Nothing is listed per request. The hook, at a request's first connect
(on a capacity-1 server, its first outbound event of any kind), walks down
the thread's stack to the guard's call (the outermost one of this process
that armed) and reads the request's plan and environ there; only then is the
request's state kept, until the app's call returns. A greenlet the view
starts is guarded too (the stacks of the greenlets it came from are read); a
thread it starts, or a process it forks, is not.
So a request that makes no outbound call costs the guard's call and a
``try`` on a server with room (bounded: gunicorn sync ``-w N``, gthread,
waitress) and on a capacity-1 server alike; with no fixed limit, an
attribute check (see ``benchmarks/bench_loopback.py``). On a capacity-1
server the error the hook raises is also recorded in ``environ``
(:data:`~flask_diag.problem.CAUSE_KEY`), so that the error envelope still
answers ``loopback_deadlock`` when a client wraps the error or the view
catches it and answers some other 5xx.
Outbound connections of a guarded request cost that walk once, then a dict
lookup and an address comparison; on capacity-1 servers the HTTP client's
frames are also read for URLs to report.

.. autoclass:: LoopbackGuard
.. autoexception:: LoopbackDeadlockError
.. autoexception:: LoopbackWarning
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import traceback
import typing as t
import warnings
import weakref
from itertools import islice
from threading import get_ident
from urllib.parse import unquote_plus

from . import context as _context
from .exceptions import DiagWarning
from .internal import logger
from .internal import report_internal_error
from .problem import CAUSE_KEY
from .problem import DiagHTTPError
from .server import Backlog
from .server import detect
from .server import ENVIRON_KEY as SERVER_KEY
from .server import format_address
from .server import ServerProfile
from .settings import Settings
from .signals import loopback_detected
from .signals import send_safely
from .threads import current_frames
from .watchdog import monitor
from .watchdog import request_info_of
from .watchdog import waits_in_socket

if t.TYPE_CHECKING:
    from types import FrameType

    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["LoopbackDeadlockError", "LoopbackGuard", "LoopbackWarning"]

#: The status of a loopback deadlock: 508 Loop Detected (RFC 5842), which says
#: what happened (the request looped back into the server) and is not a
#: generic 500 that monitoring would file with crashes.
STATUS = 508
CODE = "loopback_deadlock"

_EVENTS = frozenset(
    {"socket.connect", "socket.getaddrinfo", "http.client.send", "urllib.Request"}
)
# Packages whose frames belong to an HTTP client (or the stdlib under it);
# the stack walk at connect stops at the first frame outside them.
_CLIENT_PACKAGES = frozenset(
    {
        "socket",
        "ssl",
        "http",
        "urllib",
        "urllib3",
        "requests",
        "httpx",
        "httpcore",
        "h11",
        "h2",
        "asyncio",
        "anyio",
        "selectors",
        "contextlib",
        "flask_diag",
        # Instrumentation that wraps the clients' methods.
        "sentry_sdk",
        "opentelemetry",
        "ddtrace",
        "newrelic",
        "elasticapm",
        "wrapt",
    }
)
# Where, besides the socket layer, the innermost frame of a thread can be when
# it waits on a socket: httpx's backends, async clients' event loops.
_SOCKET_WAIT_PREFIXES = ("httpcore._backends", "anyio.", "asyncio.")
_URL_START = re.compile(r"(?i)\b(?:https?|wss?)://")
_URL_BODY = re.compile(r"[^\s\"'<>\\`{}|^]+")
_URL_TRAILING = ".,;:!?)]}*"
_SCAN_LIMIT = 256 * 1024
_WARNED_LIMIT = 256


class LoopbackDeadlockError(DiagHTTPError):
    """A request called back into its own server, which cannot answer.

    Raised from the outbound ``connect`` (or send) inside the view, so the
    view stops at the line that made the call. It is not an ``OSError``: no
    HTTP client turns it into its own connection error or retries it. It is
    a :class:`~flask_diag.problem.DiagHTTPError`: the error envelope (or
    Flask on its own) answers ``508 Loop Detected`` with
    ``code: "loopback_deadlock"``, a ``detail`` naming the call and the
    server model, a ``hint`` with the fix, and the extension members
    ``outbound``, ``own_url`` and ``server_model``.

    .. code-block:: python

        from flask_diag import LoopbackDeadlockError

        try:
            requests.get(url_for("report", _external=True))
        except LoopbackDeadlockError as exc:
            print(exc.outbound, exc.own_url, exc.server_model)
    """

    def __init__(
        self,
        detail: str,
        *,
        hint: str | None = None,
        outbound: str | None = None,
        own_url: str | None = None,
        server_model: str | None = None,
    ) -> None:
        extra = {
            name: value
            for name, value in (
                ("outbound", outbound),
                ("own_url", own_url),
                ("server_model", server_model),
            )
            if value
        }
        super().__init__(STATUS, CODE, detail, hint=hint, extra=extra)
        self.outbound = outbound
        self.own_url = own_url
        self.server_model = server_model

    def __str__(self) -> str:
        return f"{self.detail} {self.hint}" if self.hint else self.detail

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (
            _rebuild,
            (self.detail, self.hint, self.outbound, self.own_url, self.server_model),
        )

    def copy(self) -> LoopbackDeadlockError:
        """A new exception with the same message, to raise once more."""
        return _rebuild(*self.__reduce__()[1])


def _rebuild(*args: t.Any) -> LoopbackDeadlockError:
    detail, hint, outbound, own_url, server_model = args
    return LoopbackDeadlockError(
        detail, hint=hint, outbound=outbound, own_url=own_url, server_model=server_model
    )


class LoopbackWarning(DiagWarning):
    """A request handed a URL of its own server to another service, or
    called itself on a server that may run out of workers."""


# -- the per-process plan --------------------------------------------------------


class _Plan:
    """What the guard does in this process, decided at its first request."""

    __slots__ = ("profile", "blocking", "model", "fix")

    def __init__(self, profile: ServerProfile, blocking: bool) -> None:
        self.profile = profile
        #: Capacity 1: the server cannot serve any call back.
        self.blocking = blocking
        self.model = profile.describe()
        self.fix = profile.fix_hint()


def _plan_for(profile: ServerProfile) -> _Plan | None:
    """Arm for capacity 1 (blocking) or a bounded capacity (limited)."""
    if not profile.listeners:
        # No listening socket in reach: the test client, or a server we
        # cannot see. Nothing of ours to call back into.
        return None
    capacity = profile.capacity
    if capacity is None:
        return None
    if profile.server == "gunicorn" and profile.worker_class not in ("sync", "gthread"):
        return None  # gevent/eventlet: a callback is served cooperatively
    return _Plan(profile, blocking=capacity == 1)


# -- per request -----------------------------------------------------------------


class _Outbound:
    """One outbound socket of a guarded request."""

    __slots__ = ("sock", "peer", "host")

    def __init__(self, sock: socket.socket, peer: str, host: str) -> None:
        self.sock = weakref.ref(sock)  # never keeps the client's socket alive
        self.peer = peer
        #: The peer's address (an IP) or, for ``unix``, its path.
        self.host = host

    def alive(self) -> socket.socket | None:
        sock = self.sock()
        if sock is None or sock.fileno() == -1:
            return None
        return sock


class _Guarded:
    """One guarded request, as the hook sees it: made by the hook at the
    request's first audit event that needs it (from what
    :func:`_request_on_stack` finds) and listed in ``_requests`` until the
    app's call returns. The rarely used attributes are class-level defaults.
    """

    # Class-level defaults: the rarely used attributes cost nothing.
    in_hook = False
    error: LoopbackDeadlockError | None = None
    outbound: list[_Outbound] | None = None
    reported: set[str] | None = None
    backlog_since: float | None = None
    callback_reported = False

    def __init__(
        self,
        guard: LoopbackGuard,
        plan: _Plan,
        environ: WSGIEnvironment,
        ident: int,
    ) -> None:
        self.guard = guard
        self.plan = plan
        self.environ = environ
        self.ident = ident

    # -- what the hook calls ---------------------------------------------------

    def names(self) -> tuple[str, ...]:
        """Names this request reached the server by (Host, forwarded host)."""
        environ = self.environ
        found: list[str] = []
        for key in ("HTTP_HOST", "HTTP_X_FORWARDED_HOST"):
            value = environ.get(key)
            if isinstance(value, str) and value:
                found.extend(part.strip() for part in value.split(","))
        return tuple(found)

    def on_connect(self, sock: object, address: object) -> None:
        if not isinstance(sock, socket.socket):
            return
        family = sock.family
        if family == socket.AF_UNIX:
            host: object = address
            port: object = None
            peer = f"unix:{address!r}"
        elif family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
            if sock.type != socket.SOCK_STREAM:
                return  # UDP: a DNS resolver, not HTTP
            host, port = address[0], address[1]
            peer = format_address(address[0], address[1])
        else:
            return
        plan = self.plan
        listener = plan.profile.own_address(host, port)
        if listener is not None:
            call = _ClientCall.find(sys._getframe(2))
            if plan.blocking:
                self.self_call(call, peer, f"{listener}")
            else:
                self.under_load(call, peer)
            return
        # Another server. Remembered for the callback detector; the call is
        # described from the thread's frames only if it is ever reported.
        if self.outbound is None:
            self.outbound = []
            if plan.blocking:
                monitor.wake()  # polls while this request waits
        self.outbound.append(_Outbound(sock, peer, str(host)))
        if plan.blocking:
            call = _ClientCall.find(sys._getframe(2))
            if call is not None:
                self.scan(call.describe(peer), call.bodies, call.url)

    def on_getaddrinfo(self, host: object, port: object) -> None:
        if isinstance(host, bytes):
            host = host.decode("ascii", "replace")
        if not isinstance(host, str) or not self.plan.blocking:
            return
        port_number = (
            int(port)
            if isinstance(port, int) or (isinstance(port, str) and port.isdigit())
            else None
        )
        if not self.plan.profile.own_name(host, port_number, self.names()):
            return
        key = f"name {host}"  # resolved again on a retry: said once
        if self.reported is not None and key in self.reported:
            return
        if self.reported is None:
            self.reported = set()
        self.reported.add(key)
        call = _ClientCall.find(sys._getframe(2))
        target = f"{host}:{port_number}" if port_number else host
        outbound = call.describe(target) if call else target
        strict = self.guard.mode == "strict"
        detail = (
            f"{outbound} calls this server by its own name {host!r}"
            f" from inside a request it is serving. If that name leads back to"
            f" this server (through a proxy), the call can never be answered:"
            f" {self.plan.model} serves one request at a time and is busy with"
            f" this one (a loopback deadlock)."
        )
        self.report("own_name", outbound, host, detail, strict)

    def on_send(self, conn: object, data: object) -> None:
        if not self.plan.blocking:
            return
        host = getattr(conn, "host", None)
        port = getattr(conn, "port", None)
        peer = f"{host}:{port}"
        # On a reused connection this is the first we hear of the request.
        # Its object, when the client's frames hold one, shows the body
        # before the headers go out; otherwise the bytes sent are scanned.
        call = _ClientCall.find(sys._getframe(2))
        if call is not None:
            self.scan(call.describe(peer), call.bodies, call.url)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return
        raw = bytes(data[:_SCAN_LIMIT])
        outbound = call.describe(peer) if call is not None else f"a request to {peer}"
        line = raw.split(b"\r\n", 1)[0].split(b" ")
        if call is None and len(line) == 3 and line[2].startswith(b"HTTP/"):
            scheme = "https" if type(conn).__name__.startswith("HTTPS") else "http"
            method, target = line[0].decode("latin-1"), line[1].decode("latin-1")
            outbound = f"{method} {scheme}://{peer}{target} (http.client)"
        self.scan(outbound, [raw])

    def on_urllib_request(self, url: object, data: object, method: object) -> None:
        if not self.plan.blocking:
            return
        bodies: list[str | bytes] = [data] if isinstance(data, (bytes, str)) else []
        target = url if isinstance(url, str) else None
        if not isinstance(method, str):
            method = "POST" if data is not None else "GET"
        self.scan(f"{method} {url} (urllib.request)", bodies, target)

    def scan(
        self, outbound: str, texts: t.Sequence[str | bytes], target: str | None = None
    ) -> None:
        """Report each URL of this server found in ``texts`` (once).

        ``target`` is the call's own URL: only the URLs it carries count.
        """
        names = self.names()
        profile = self.plan.profile
        for url in _urls_in(texts, target):
            if self.reported is not None and url in self.reported:
                continue
            reason = profile.own_url(url, names)
            if reason is None:
                continue
            if self.reported is None:
                self.reported = set()
            self.reported.add(url)
            detail = (
                f"{outbound} hands over {url}, a URL on this server ({reason})."
                f" Whoever fetches it while this request waits for the answer"
                f" cannot be served: {self.plan.model} serves one request at a"
                f" time and is busy with this very request (a loopback deadlock)."
            )
            self.report("handoff", outbound, url, detail, self.guard.mode == "strict")

    def self_call(self, call: _ClientCall | None, peer: str, listener: str) -> None:
        outbound = call.describe(peer) if call else f"a connection to {peer}"
        own = call.url if call and call.url else peer
        detail = (
            f"{outbound} calls this server ({listener}) from inside a request"
            f" it is serving. {self.plan.model} serves one request at a time"
            f" and is busy with this one, so the call could never be answered"
            f" (a loopback deadlock)."
        )
        self.report("self_call", outbound, own, detail, self.guard.mode != "warn")

    def under_load(self, call: _ClientCall | None, peer: str) -> None:
        outbound = call.describe(peer) if call else f"a connection to {peer}"
        key = call.url if call and call.url else peer
        with _warned_lock:
            if key in _warned_under_load:
                return
            if len(_warned_under_load) >= _WARNED_LIMIT:
                _warned_under_load.clear()
            _warned_under_load.add(key)
        detail = (
            f"{outbound} calls this server from inside a request it is serving."
            f" It works while {self.plan.model} has a free slot, and deadlocks"
            f" under load, when every slot is taken by a request waiting on such"
            f" a call."
        )
        self.report("under_load", outbound, key, detail, False)

    def report(
        self,
        kind: str,
        outbound: str,
        own_url: str,
        detail: str,
        fail: bool,
    ) -> None:
        """Log, signal, then warn or raise."""
        hint = _hint(kind, self.plan)
        action = "raised" if fail else "warned"
        logger.warning(
            "loopback deadlock",
            kind=kind,
            action=action,
            outbound=outbound,
            own_url=own_url,
            server_model=self.plan.model,
            message=detail,
            hint=hint,
        )
        _signal(self, kind, action, outbound, own_url, detail)
        if fail:
            error = LoopbackDeadlockError(
                detail,
                hint=hint,
                outbound=outbound,
                own_url=own_url,
                server_model=self.plan.model,
            )
            self.error = self.environ[CAUSE_KEY] = error
            raise error
        warnings.warn(LoopbackWarning(f"{detail} {hint}"), stacklevel=_app_level())


def _app_level() -> int:
    """``stacklevel`` for ``warnings.warn`` in :meth:`_Guarded.report`: the
    first frame of the app's code, above the HTTP client's and ours."""
    return 2 + sum(1 for _ in _client_frames(sys._getframe(2)))


def _client_frames(frame: FrameType | None) -> t.Iterator[tuple[str, FrameType]]:
    """``(module, frame)`` of the HTTP client's (and our) frames, from
    ``frame`` outwards, up to the first frame of the app's code."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if (
            not isinstance(module, str)
            or module.partition(".")[0] not in _CLIENT_PACKAGES
        ):
            return
        yield module, frame
        frame = frame.f_back


def _hint(kind: str, plan: _Plan) -> str:
    if kind == "handoff":
        return (
            f"Run {plan.fix}; or send the data itself (e.g. the file's bytes)"
            " instead of a URL on this server."
        )
    if kind == "under_load":
        return (
            "Call the code behind that URL directly instead of over HTTP; or keep"
            " enough workers or threads free for such calls."
        )
    return (
        f"Run {plan.fix}; or call the code behind that URL directly instead of"
        " over HTTP (for a static file, read it from app.static_folder)."
    )


def _signal(
    guarded: _Guarded, kind: str, action: str, outbound: str, own_url: str, message: str
) -> None:
    if loopback_detected.receivers:
        send_safely(
            loopback_detected,
            guarded.guard,
            environ=guarded.environ,
            kind=kind,
            action=action,
            outbound=outbound,
            own_url=own_url,
            message=message,
        )


def _urls_in(texts: t.Iterable[str | bytes], target: str | None = None) -> list[str]:
    """Absolute URLs in raw, percent-encoded or JSON-escaped text.

    URLs nested in another one's query string are found too
    (``/recognize?url=http%3A%2F%2F...``); ``target``, the outbound call's
    own URL, is not reported itself, only what it carries.
    """
    found: dict[str, None] = {}
    items: list[str | bytes] = list(texts)
    if target:
        items.append(target)
    for item in items:
        if isinstance(item, bytes):
            text = item[:_SCAN_LIMIT].decode("latin-1")
        else:
            text = item[:_SCAN_LIMIT]
        if (
            "://" not in text
            and "%3a%2f%2f" not in text.lower()
            and ":\\/\\/" not in text
        ):
            continue
        variants = [text]
        if "%" in text or "+" in text:
            variants.append(unquote_plus(text))
        if "\\/" in text:
            variants.extend([v.replace("\\/", "/") for v in variants])
        for variant in variants:
            for match in _URL_START.finditer(variant):
                if item is target and match.start() == 0:
                    continue  # the call's own URL
                body = _URL_BODY.match(variant, match.start())
                if body is not None:
                    found[body.group(0).rstrip(_URL_TRAILING)] = None
    return list(found)


class _ClientCall:
    """The HTTP request an HTTP client is connecting for, from its frames."""

    __slots__ = ("library", "method", "url", "bodies")

    def __init__(
        self,
        library: str,
        method: str | None,
        url: str | None,
        bodies: list[str | bytes],
    ) -> None:
        self.library = library
        self.method = method
        self.url = url
        self.bodies = bodies

    def describe(self, peer: str) -> str:
        target = self.url or peer
        method = f"{self.method} " if self.method else ""
        return f"{method}{target} ({self.library})"

    @classmethod
    def find(cls, frame: FrameType | None) -> _ClientCall | None:
        """Walk the client's frames (never the app's) for its request."""
        best: _ClientCall | None = None
        for module, client_frame in islice(_client_frames(frame), 60):
            found = cls._from_frame(module, client_frame)
            if found is not None:
                best = found  # the outermost one has the whole URL
        return best

    @classmethod
    def _from_frame(cls, module: str, frame: FrameType) -> _ClientCall | None:
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if "request" not in names and "req" not in names and "url" not in names:
            return None
        local = frame.f_locals
        for key in ("request", "req"):
            obj = local.get(key)
            if obj is None:
                continue
            kind = type(obj)
            owner = kind.__module__.partition(".")[0]
            if owner == "requests" and kind.__name__ == "PreparedRequest":
                return cls("requests", obj.method, obj.url, _bodies(obj.body))
            if owner == "httpx" and kind.__name__ == "Request":
                content = getattr(obj, "_content", None)
                return cls("httpx", obj.method, str(obj.url), _bodies(content))
            if kind.__module__ == "urllib.request" and kind.__name__ == "Request":
                return cls(
                    "urllib.request", obj.get_method(), obj.full_url, _bodies(obj.data)
                )
        if module.startswith("urllib3.") and code.co_name == "urlopen":
            pool: t.Any = local.get("self")
            url = local.get("url")
            if isinstance(url, str) and hasattr(pool, "host"):
                if not url.startswith(("http://", "https://")):
                    url = f"{pool.scheme}://{pool.host}:{pool.port}{url}"
                return cls(
                    "urllib3", local.get("method"), url, _bodies(local.get("body"))
                )
        if module == "http.client" and code.co_name == "request":
            conn: t.Any = local.get("self")
            url = local.get("url")
            if isinstance(url, str) and hasattr(conn, "host"):
                if url.startswith("/"):
                    url = f"http://{conn.host}:{conn.port}{url}"
                return cls(
                    "http.client", local.get("method"), url, _bodies(local.get("body"))
                )
        return None


def _bodies(body: object) -> list[str | bytes]:
    if isinstance(body, (bytes, str)):
        return [body]
    if isinstance(body, (bytearray, memoryview)):
        return [bytes(body)]
    return []


# -- the audit hook --------------------------------------------------------------

#: The guarded requests of this process that the hook has state for, by
#: thread, while the app's call lasts. Nothing is listed per request: the
#: hook lists a request at its first event that needs it (a connect; on a
#: capacity-1 server, any outbound event), finding the request on the
#: thread's stack (:func:`_request_on_stack`). The monitor thread reads it
#: too, to find the waiting requests and their stacks. asyncio clients and
#: greenlets the view starts run in the request's thread and are guarded; a
#: thread the view starts is not (nor does it hold the request up).
_requests: dict[int, _Guarded] = {}
_warned_under_load: set[str] = set()
_warned_lock = threading.Lock()
_hook_installed = False
_hook_lock = threading.Lock()
# Stays False until a guard arms in this process: until then every audit
# event of the process costs one global lookup here.
_armed = False
# Whether a guard of this process armed for a capacity-1 server: only then
# do events other than a connect need the request's stack to be looked at.
_blocking = False


def _audit(event: str, args: tuple[t.Any, ...]) -> None:
    if not _armed or event not in _EVENTS:
        return
    ident = get_ident()
    guarded = _requests.get(ident)
    if guarded is None:
        if event != "socket.connect" and not _blocking:
            return  # with room for a call back, only a connect can be a finding
        found = _request_on_stack(sys._getframe(1))
        if found is None:
            return
        guard, plan, environ = found
        if event != "socket.connect" and not plan.blocking:
            return
        guarded = _requests[ident] = _Guarded(guard, plan, environ, ident)
    if guarded.in_hook:
        return
    guarded.in_hook = True  # our own sockets and files raise events too
    try:
        if event == "socket.connect":
            guarded.on_connect(args[0], args[1])
        elif event == "http.client.send":
            guarded.on_send(args[0], args[1])
        elif event == "socket.getaddrinfo":
            guarded.on_getaddrinfo(args[0], args[1])
        else:
            guarded.on_urllib_request(args[0], args[1], args[3])
    except (LoopbackDeadlockError, Warning):
        if event == "socket.connect" and isinstance(args[0], socket.socket):
            # The connect is cancelled and our error is no OSError, so the
            # client's own cleanup does not run: close the socket here.
            try:
                args[0].close()
            except OSError:
                pass
        raise
    except Exception as exc:
        report_internal_error("the loopback audit hook", exc)
    finally:
        guarded.in_hook = False


def _install_hook(plan: _Plan) -> None:
    global _hook_installed, _armed, _blocking
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True
            monitor.add_check(_check_callbacks)
        _armed = True
        _blocking = _blocking or plan.blocking


def _after_fork() -> None:
    _requests.clear()


os.register_at_fork(after_in_child=_after_fork)


# -- callbacks stuck in the queue (run by the monitor thread) --------------------

_POLL = 0.1


def _check_callbacks(now: float) -> float | None:
    """One monitor tick: report (and in strict mode break) callback waits."""
    waiting = []
    for guarded in list(_requests.values()):
        if not guarded.outbound:
            continue
        if guarded.callback_reported:
            continue
        if not any(out.alive() is not None for out in guarded.outbound):
            guarded.backlog_since = None
            continue
        waiting.append(guarded)
    if not waiting:
        return None
    frames = current_frames()
    if frames is None:  # no stacks in this process (see flask_diag.threads)
        return None
    backlogs: dict[int, Backlog] = {}
    for guarded in waiting:
        frame = frames.get(guarded.ident)
        if frame is None or not waits_in_socket(frame, _SOCKET_WAIT_PREFIXES):
            guarded.backlog_since = None
            continue
        profile = guarded.plan.profile
        backlog = backlogs.get(id(profile))
        if backlog is None:
            backlog = backlogs[id(profile)] = profile.backlog()
        if backlog.count == 0:
            guarded.backlog_since = None
            continue
        if guarded.backlog_since is None:
            guarded.backlog_since = now
            continue
        if now - guarded.backlog_since >= guarded.guard.callback_after:
            guarded.callback_reported = True
            detailed = profile.backlog(detail=True)  # who is queued, once
            if detailed.count == 0:
                detailed = backlog
            _report_callback(guarded, frame, detailed, now - guarded.backlog_since)
    return _POLL


def _report_callback(
    guarded: _Guarded, frame: FrameType, backlog: Backlog, waited: float
) -> None:
    plan = guarded.plan
    alive = [(out, out.alive()) for out in guarded.outbound or ()]
    open_calls = [(out, sock) for out, sock in alive if sock is not None]
    peer = open_calls[-1][0].peer if open_calls else "another server"
    call = _ClientCall.find(frame)  # the client's frames, from the innermost
    outbound = call.describe(peer) if call is not None else f"a call to {peer}"
    peer_hosts = {out.host for out, _ in open_calls}
    from_peer = bool(backlog.peers & peer_hosts)
    strict = guarded.guard.mode == "strict" and plan.blocking
    action = "broken" if strict else "warned"
    detail = (
        f"{outbound} has been waiting for {waited:.1f}s while {backlog.count}"
        f" connection(s) to this server wait in its queue"
        f"{' from the host that call went to' if from_peer else ''}: most"
        f" likely the other side is calling back into this server, which cannot"
        f" answer: {plan.model}"
        f"{' serves one request at a time' if plan.blocking else ' has no free slot'}"
        f" and is busy with this request (a loopback deadlock)."
    )
    hint = _hint("handoff", plan)
    info = request_info_of(guarded.environ, guarded.ident)
    stack = "".join(traceback.format_stack(frame))
    logger.warning(
        "loopback deadlock",
        kind="callback",
        action=action,
        outbound=outbound,
        own_url=", ".join(str(lis) for lis in plan.profile.listeners),
        server_model=plan.model,
        queued=backlog.count,
        from_peer=from_peer,
        message=detail,
        hint=hint,
        request_id=info.request_id,
        pid=info.pid,
        thread=info.thread,
        stack=stack,
    )
    _signal(
        guarded, "callback", action, outbound, str(plan.profile.listeners[0]), detail
    )
    if strict:
        guarded.error = guarded.environ[CAUSE_KEY] = LoopbackDeadlockError(
            detail,
            hint=hint,
            outbound=outbound,
            own_url=str(plan.profile.listeners[0]),
            server_model=plan.model,
        )
        for _, sock in open_calls:
            try:
                # The blocked read returns end-of-file at once; the client
                # reports a dropped connection and the guard answers 508.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# -- the middleware --------------------------------------------------------------


class LoopbackGuard:
    """Fail fast, instead of hanging, when a request calls back into its own
    server that cannot serve a second request.

    :param app: the WSGI application to wrap.
    :param settings: a :class:`~flask_diag.settings.Settings`; by default
        loaded from the environment (``FLASK_DIAG_LOOPBACK``).
    :param profile: the :class:`~flask_diag.server.ServerProfile` to use
        instead of detecting it at the first request of each process.
    :param callback_after: seconds a connection may wait in the server's
        queue, while a request waits on an outbound call, before that is
        reported as a callback deadlock.
    :param overrides: settings given in code, e.g. ``loopback="strict"``.

    .. code-block:: python

        app.wsgi_app = LoopbackGuard(app.wsgi_app, loopback="strict")
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        settings: Settings | None = None,
        profile: ServerProfile | None = None,
        callback_after: float = 0.5,
        **overrides: object,
    ) -> None:
        settings = Settings.for_middleware(settings, overrides)
        if not callback_after > 0:
            raise ValueError(f"callback_after must be positive, not {callback_after!r}")
        self.app = app
        self.settings = settings
        self.mode = settings.loopback
        self.callback_after = float(callback_after)
        self._fixed_profile = profile
        self._profile: ServerProfile | None = None
        self._plan: _Plan | None = None
        # The pid the plan was made in: -1 until the first request; a forked
        # worker makes its own.
        self._plan_pid = -1

    def _make_plan(self, environ: WSGIEnvironment) -> _Plan | None:
        try:
            profile = self._fixed_profile or detect(environ, frame=sys._getframe(2))
            plan = _plan_for(profile) if self.mode != "off" else None
            if plan is not None:
                _install_hook(plan)
                monitor.ensure_started()  # in the worker, at its first request
        except Exception as exc:
            report_internal_error("detecting the server profile", exc)
            profile, plan = None, None
        self._profile = profile
        self._plan = plan
        self._plan_pid = _context._pid
        return plan

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        if self._plan_pid == _context._pid:
            plan = self._plan
        else:
            plan = self._make_plan(environ)
        profile = self._profile
        if profile is not None:
            environ[SERVER_KEY] = profile
        if plan is None:
            return self.app(environ, start_response)
        # Nothing is listed per request: at an audit event that needs it, the
        # hook finds this call on the thread's stack (``plan`` and
        # ``environ`` are read there) and lists the request's state then.
        # On a capacity-1 server the error it raises is also recorded in
        # ``environ`` (``CAUSE_KEY``): when a client wraps it or the view
        # catches it, the error envelope still answers it.
        try:
            return self.app(environ, start_response)
        except Exception as exc:
            error = environ.get(CAUSE_KEY)
            if isinstance(error, LoopbackDeadlockError) and not isinstance(
                exc, LoopbackDeadlockError
            ):
                # Our error, wrapped by a client or lost in a broken wait:
                # raise what really happened.
                raise error.copy() from exc
            raise
        finally:
            # The app's call is guarded; the body is sent after it, by the
            # server, and not guarded (a streamed body is not watched).
            if _requests:  # the hook listed a request: this one?
                _unlist(environ)


def _unlist(environ: WSGIEnvironment) -> None:
    """Forget the listed request of this thread if it is ``environ``'s (not
    when this guard served an app the request called in-process: the
    request listed is the outermost one)."""
    ident = get_ident()
    guarded = _requests.get(ident)
    if guarded is not None and guarded.environ is environ:
        _requests.pop(ident, None)


_GUARD_CALL = LoopbackGuard.__call__.__code__


def _request_on_stack(
    frame: FrameType | None,
) -> tuple[LoopbackGuard, _Plan, WSGIEnvironment] | None:
    """The guard, plan and environ of the guarded request that ``frame`` runs
    in, read from the guard's call further down the stack; ``None`` outside
    a guarded request (a thread the view started, a streamed body, a guard
    that stepped aside, a process forked during a request, whose copy of the
    stack still holds the guard's call).

    The outermost guard that armed wins, as the request's own: an app the
    request calls in-process may have a guard of its own, or one that
    stepped aside. A greenlet the view started has a stack of its own: the
    stacks of the greenlets it was started from are read too. Costs a walk
    down the stack: the hook calls it at a request's first event that needs
    it, never per request.
    """
    found = _outermost_guard(frame)
    greenlet: t.Any = sys.modules.get("greenlet")  # loaded by gevent, eventlet
    if found is None and greenlet is not None:
        try:
            parent = greenlet.getcurrent().parent
            while parent is not None and found is None:
                found = _outermost_guard(parent.gr_frame)
                parent = parent.parent
        except Exception as exc:  # greenlet changed: the thread's stack only
            report_internal_error("reading the stacks of greenlets", exc)
    return found


def _outermost_guard(
    frame: FrameType | None,
) -> tuple[LoopbackGuard, _Plan, WSGIEnvironment] | None:
    found = None
    pid = _context._pid
    while frame is not None:
        if frame.f_code is _GUARD_CALL:
            names = frame.f_locals
            guard = names.get("self")
            plan = names.get("plan")
            if (
                isinstance(guard, LoopbackGuard)
                and isinstance(plan, _Plan)
                and guard._plan_pid == pid  # not a copy of the stack of a parent
            ):
                found = guard, plan, names["environ"]
        frame = frame.f_back
    return found


def is_guarded() -> bool:
    """Whether the request the current thread runs is guarded (for tests
    and diagnostics; the hook itself looks the same way)."""
    return get_ident() in _requests or _request_on_stack(sys._getframe(1)) is not None
