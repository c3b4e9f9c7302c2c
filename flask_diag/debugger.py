"""Debugger gate
=============

Pitfall 3: to see a traceback with live frames on a staging server, a team
wraps the app in ``werkzeug.debug.DebuggedApplication(app, evalex=True)``:
tracebacks in the browser and a Python console in every frame. That is
remote code execution by design, and exposed debuggers have been used to
break into companies.

:class:`DebuggerGate` makes the safe way the easy way. One variable turns it
on for one deployment, every guard up::

    FLASK_DIAG_DEBUGGER=on gunicorn --worker-class sync --workers 1 \\
        --timeout 3600 -b 127.0.0.1:8000 app:app     # with Diag(app) or wrap()

or around any WSGI callable, alone::

    from flask_diag.debugger import DebuggerGate

    application = DebuggerGate(application, debugger=True)

The guards, enforced on every request to a debugger route (``?__debugger__=yes``
queries, their resources, the console path when it is switched on) before
werkzeug sees it:

PIN always
    ``FLASK_DIAG_DEBUGGER_PIN``, or a fresh random PIN for each activation
    (never werkzeug's derived one, which anybody who can read a few files of
    the machine can compute). It is never logged: it goes to a file only the
    server's user can read (mode 0600), whose path is logged.
    ``WERKZEUG_DEBUG_PIN`` in the environment (``off`` above all) and short
    PINs (fewer than 8 letters or digits: dashes do not count) are refused
    at start-up. A random PIN is single-use: once accepted, a new one
    replaces it in the file.
PIN never in a URL
    werkzeug's page script sends the PIN in a GET query string, which every
    request log writes down. The gate serves the script patched to send it
    in a POST body (start-up fails when the script cannot be patched) and
    reads it from there only; a PIN in the query string is never compared
    nor counted, and the refusal is logged.
Lockout without sleeping
    werkzeug sleeps up to 5 s per wrong PIN inside the request, stalling the
    only sync worker. The gate answers ``pinauth`` itself: after 5 wrong PINs
    in a row it refuses every attempt for 5 minutes (doubling each time),
    at once. The unlock cookie is bound to this activation and expires with
    it; it is ``Secure`` over HTTPS, also behind a trusted proxy that sends
    ``X-Forwarded-Proto: https``.
Allowed clients
    ``REMOTE_ADDR`` in ``FLASK_DIAG_DEBUGGER_ALLOW`` (loopback by default).
    ``X-Forwarded-For`` only counts behind ``FLASK_DIAG_DEBUGGER_TRUSTED_PROXIES``
    (the address after the last trusted hop; no header, or only trusted hops:
    the client is unknown, refused). Everybody else is served by the app
    unchanged, debugger routes included, as if there were no debugger;
    refusals are logged.
Trusted hosts
    The ``Host`` header must be a localhost name, one of the server's own
    addresses or one of ``FLASK_DIAG_DEBUGGER_HOSTS``: against DNS rebinding
    (CVE-2024-34069). Defence in depth, never access control: anybody can
    send ``Host: 127.0.0.1``.
One process
    Start-up fails under several worker processes (gunicorn ``-w 2``, uWSGI
    ``--processes 2``), naming the command to use, and a request with
    ``wsgi.multiprocess`` set is refused: the frames live in one process.
Expiry
    Off again ``FLASK_DIAG_DEBUGGER_TTL`` seconds (default 3600) after
    start-up: the debugger routes are the app's again, the frames dropped,
    the PIN file deleted, and tracebacks go back to the envelope.
Not in production by accident
    ``FLASK_DIAG_ENV=production`` refuses it unless
    ``FLASK_DIAG_DEBUGGER_IN_PRODUCTION=on`` is also set.

Only requests of allowed clients with a trusted ``Host`` run through the
debugger (their exceptions propagate to it, see
:data:`~flask_diag.errors.PROPAGATE_KEY`); the others are served as if it
did not exist. werkzeug's own dispatcher is never used: an admitted
debugger request that matches nothing gets a 404 instead of re-running the
view. At most ``FLASK_DIAG_DEBUGGER_FRAMES`` tracebacks are kept in memory
(werkzeug never frees them), under frame keys never reused (werkzeug's
``id(frame)`` would address a newer traceback's frame once an evicted one
is freed).

Every event is logged through the ``flask_diag`` structlog logger and sent
as a signal (:data:`~flask_diag.signals.debugger_enabled`, ``..._disabled``,
``..._pin_accepted``, ``..._pin_refused``, ``..._client_refused``,
``..._command``): the command text of every console evaluation, with the
client and the request id. Signals carry ``request_id``, ``path`` and
``client``, never the WSGI ``environ`` (it holds the unlock cookie).

.. autoclass:: DebuggerGate
    :members: close, active

.. autofunction:: init_flask
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import itertools
import json
import os
import pkgutil
import re
import shlex
import socket
import sys
import threading
import time
import typing as t
import weakref
from collections import deque
from urllib.parse import parse_qs

from werkzeug.debug import DebuggedApplication
from werkzeug.debug.tbtools import DebugTraceback
from werkzeug.exceptions import Forbidden
from werkzeug.exceptions import NotFound
from werkzeug.http import parse_cookie
from werkzeug.wrappers import Request
from werkzeug.wrappers import Response

from .closing import close_iterable
from .context import request_info
from .debugger_pin import PinLock
from .debugger_pin import server_key
from .debugger_pin import SharingError
from .errors import PROPAGATE_KEY
from .exceptions import DiagConfigError
from .internal import capture_internal_exceptions
from .internal import find_flask_app
from .internal import find_in_stack
from .internal import logger
from .internal import report_internal_error
from .server import detect
from .server import ServerProfile
from .settings import Settings
from .signals import debugger_client_refused
from .signals import debugger_command
from .signals import debugger_disabled
from .signals import debugger_enabled
from .signals import debugger_pin_accepted
from .signals import debugger_pin_refused
from .signals import send_safely
from .worker_timeout import worker_kill_timer

if t.TYPE_CHECKING:
    from collections.abc import Mapping

    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment
    from blinker import Signal
    from flask import Flask
    from werkzeug.debug.tbtools import DebugFrameSummary

__all__ = ["DebuggerGate", "check_startup", "init_flask", "one_process_command"]

_IP: t.TypeAlias = "ipaddress.IPv4Address | ipaddress.IPv6Address"
_NET: t.TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"

#: The command the one-process refusal recommends (the app spec is added).
GUNICORN_COMMAND = "gunicorn --worker-class sync --workers 1 --timeout 3600"
_CONSOLE_PATH = "/console"
_LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_NO_FIELDS: Mapping[str, object] = {}
_NAME = re.compile(r"[a-z0-9.-]{1,253}")
# The largest POST body read for ``cmd=pinauth`` (it holds ``pin=...`` only).
_PIN_BODY_MAX = 4096
# werkzeug's page script sends the PIN in the query string of a GET
# (``fetch(makeDebugURL({cmd: "pinauth", pin: this.pin.value}))``): every
# request log (werkzeug's dev server, gunicorn's access log, the proxy's)
# would hold it. The gate serves this script with the PIN moved into a POST
# body, and reads the PIN from the body only.
_JS_PINAUTH = re.compile(
    r"""fetch\(\s*makeDebugURL\(\s*\{\s*cmd:\s*["']pinauth["']\s*,"""
    r"""\s*pin:\s*this\.pin\.value\s*\}\s*\)\s*\)"""
)
_JS_PINAUTH_POST = (
    'fetch(makeDebugURL({cmd: "pinauth"}), {method: "POST",'
    " body: new URLSearchParams({pin: this.pin.value})})"
)
# The frame id werkzeug writes into the page: ``id(frame)``, which CPython
# reuses once a frame is freed. The gate swaps it for a key never reused.
_FRAME_ID = 'class="frame" id="frame-{}"'
# Options of gunicorn's command line that the one-process command replaces.
_GUNICORN_REPLACED = frozenset(
    {"-w", "--workers", "-k", "--worker-class", "-t", "--timeout", "--threads"}
)


#: Where werkzeug's ``ProxyFix`` keeps the values it replaced.
_PROXY_FIX_ORIG = "werkzeug.proxy_fix.orig"


def _as_received(environ: WSGIEnvironment, key: str) -> t.Any:
    """``environ[key]`` as the server set it.

    werkzeug's ``ProxyFix`` outside the gate (Flask's documented recipe,
    applied after ``Diag(app)``) rewrites ``REMOTE_ADDR`` and ``HTTP_HOST``
    from ``X-Forwarded-*`` headers that any client can send. The gate reads
    what the server saw: forwarded headers count only from
    ``FLASK_DIAG_DEBUGGER_TRUSTED_PROXIES``.
    """
    orig = environ.get(_PROXY_FIX_ORIG)
    if isinstance(orig, dict) and key in orig:
        return orig[key]
    return environ.get(key)


def _ip(text: object) -> _IP | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host_name(header: object) -> str | None:
    """The host of a ``Host`` header, lower case, without port; ``None`` when
    it is not a well-formed name or address."""
    if not isinstance(header, str) or not header:
        return None
    text = header.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:]
        if end < 0 or not _port_ok(port) or _ip(text[1:end]) is None:
            return None
        return text[1:end]
    name, _, port = text.partition(":")
    if not _port_ok(port) or not _NAME.fullmatch(name):
        return None
    return name.rstrip(".")


def _port_ok(port: str) -> bool:
    return not port or (port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536)


def patched_debugger_js() -> bytes:
    """werkzeug's ``debugger.js`` with the PIN sent in a POST body.

    :raises DiagConfigError: when werkzeug's script no longer has the
        expected ``pinauth`` call (a newer werkzeug): better no debugger than
        a page that puts the PIN into every request log.
    """
    data = pkgutil.get_data("werkzeug.debug", "shared/debugger.js")
    text = data.decode("utf-8") if data is not None else ""
    patched, count = _JS_PINAUTH.subn(_JS_PINAUTH_POST, text)
    if count != 1 or re.search(r"\bpin:\s*this\.pin", _JS_PINAUTH.sub("", text)):
        from importlib.metadata import version as dist_version

        raise DiagConfigError(
            "flask_diag's debugger refuses to start: werkzeug"
            f" {dist_version('werkzeug')}'s debugger.js does not send the PIN"
            " the way flask_diag knows how to patch"
            ' (fetch(makeDebugURL({cmd: "pinauth", pin: ...}))).'
            " Unpatched, the page would put the PIN into the query"
            " string, and so into every request log. Use a werkzeug version"
            " flask_diag supports, or report this to flask_diag."
        )
    return patched.encode("utf-8")


def one_process_command(argv: t.Sequence[str] | None = None) -> str:
    """The gunicorn command line to run the debugger: one sync worker, a long
    timeout, and the rest of this process's own gunicorn arguments.

    >>> one_process_command(["gunicorn", "-w", "4", "-b", ":8000", "app:app"])
    'gunicorn --worker-class sync --workers 1 --timeout 3600 -b :8000 app:app'
    """
    if argv is None:
        argv = sys.argv
    if not argv or "gunicorn" not in argv[0]:
        return f"{GUNICORN_COMMAND} MODULE:APP"
    kept: list[str] = []
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        name, has_value, _ = arg.partition("=")
        if name in _GUNICORN_REPLACED:
            skip = not has_value
            continue
        if len(arg) > 2 and arg[:2] in ("-w", "-k", "-t"):
            continue  # -w4, -ksync, -t30
        kept.append(arg)
    return f"{GUNICORN_COMMAND} {shlex.join(kept)}".rstrip()


def _debug_command(server: str, *, one_process: bool = False) -> str:
    """The server command for a debugging session: one process, and a
    worker timeout that does not cut a session in a frame short."""
    if server == "uwsgi":
        processes = "--processes 1 " if one_process else ""
        return f"uwsgi {processes}--harakiri 3600 (or no harakiri) ..."
    return one_process_command()


def _one_process_message(profile: ServerProfile, processes: int | None) -> str:
    count = f"{processes} worker processes" if processes else "several processes"
    fix = _debug_command(profile.server, one_process=True)
    if profile.server != "uwsgi" and os.environ.get("GUNICORN_CMD_ARGS"):
        fix += "   (and no --workers in GUNICORN_CMD_ARGS)"
    return (
        f"flask_diag's debugger refuses to start: this server ({profile.describe()})"
        f" runs {count}. werkzeug's debugger keeps the frames of every traceback"
        " in the memory of the one process that served the error, so the"
        " browser's next requests (PIN, console) must reach that same process."
        f" Run exactly one worker, with a timeout long enough for a debugging"
        f" session:\n\n    {fix}\n"
    )


def check_startup(settings: Settings) -> None:
    """Refuse the start-up conditions that are never safe.

    :raises DiagConfigError: saying why (the doctor reports the same).
    """
    werkzeug_pin = os.environ.get("WERKZEUG_DEBUG_PIN")
    if werkzeug_pin is not None:
        if werkzeug_pin.strip().lower() == "off":
            raise DiagConfigError(
                "WERKZEUG_DEBUG_PIN=off would run werkzeug's debugger without a"
                " PIN: flask_diag refuses to start the debugger with it. Unset"
                " WERKZEUG_DEBUG_PIN; the gate makes a random PIN for each"
                " activation (or set FLASK_DIAG_DEBUGGER_PIN)."
            )
        raise DiagConfigError(
            "WERKZEUG_DEBUG_PIN is set, but flask_diag's debugger gate does not"
            " read it. Unset it and set FLASK_DIAG_DEBUGGER_PIN instead (at"
            " least 8 letters, digits or '-'), or leave both unset for a random"
            " PIN written to a file only the server's user can read."
        )
    if settings.env == "production" and not settings.debugger_in_production:
        raise DiagConfigError(
            "FLASK_DIAG_DEBUGGER=on where FLASK_DIAG_ENV=production: the werkzeug"
            " debugger is remote code execution by design, and flask_diag"
            " refuses it in production. Use a staging deployment; if you really"
            " mean production, also set FLASK_DIAG_DEBUGGER_IN_PRODUCTION=on."
        )


class _GatedDebugger(DebuggedApplication):
    """werkzeug's debugger with the gate's PIN, cookie, Host check, a
    patched page script and a cap on the tracebacks kept. Its ``__call__``
    (werkzeug's dispatcher) is never used by the gate; its PIN entry points
    refuse without sleeping anyway."""

    def __init__(
        self,
        app: WSGIApplication,
        gate: DebuggerGate,
        lock: PinLock,
        *,
        console_path: str | None,
        max_tracebacks: int,
        debugger_js: bytes,
    ) -> None:
        self._gate_ref = weakref.ref(gate)
        self._pin_lock = lock
        self._max_tracebacks = max_tracebacks
        self._debugger_js = debugger_js
        self._tracebacks: deque[list[int]] = deque()
        # Frame keys are never reused (werkzeug's are ``id(frame)``, which
        # CPython hands to a newer frame once an evicted one is freed).
        self._keys = itertools.count(1)
        self._frames_lock = threading.Lock()
        # Always a non-empty console path for werkzeug; the gate decides.
        super().__init__(
            app,
            evalex=True,
            console_path=console_path or _CONSOLE_PATH,
            pin_security=True,
            pin_logging=False,
        )
        # werkzeug would derive its machine PIN on first use: never. A value
        # nobody knows, and the gate's per-activation cookie name.
        self._pin = os.urandom(16).hex()
        self._pin_cookie = lock.cookie_name

    def check_pin_trust(self, environ: WSGIEnvironment) -> bool | None:
        value = parse_cookie(environ).get(self._pin_lock.cookie_name)
        return self._pin_lock.cookie_valid(value)

    def check_host_trust(self, environ: WSGIEnvironment) -> bool:
        gate = self._gate_ref()
        return gate is not None and gate._host_trusted(environ)

    def pin_auth(self, request: Request) -> Response:
        return Forbidden().get_response(request.environ)  # the gate answers

    def log_pin_request(self, request: Request) -> Response:
        return Response("")  # the PIN is never logged

    def get_resource(self, request: Request, filename: str) -> Response:
        # As werkzeug: the base name only, inside its ``shared`` folder.
        if os.path.basename(filename) == "debugger.js":
            response = Response(self._debugger_js, mimetype="text/javascript")
            response.add_etag()
            return response.make_conditional(request)
        return super().get_resource(request, filename)

    def debug_application(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterator[bytes]:
        """werkzeug's, with the frames kept under keys never reused and the
        number of tracebacks kept capped."""
        contexts: list[t.ContextManager[t.Any]] = []
        environ["werkzeug.debug.preserve_context"] = contexts.append
        app_iter = None
        try:
            app_iter = self.app(environ, start_response)
            yield from app_iter
            close_iterable(app_iter)
        except Exception as e:
            close_iterable(app_iter)
            tb = DebugTraceback(e, skip=1, hide=not self.show_hidden_frames)
            html = tb.render_debugger_html(
                evalex=self.check_host_trust(environ),
                secret=self.secret,
                evalex_trusted=bool(self.check_pin_trust(environ)),
            )
            html = self._remember(tb.all_frames, contexts, html)
            response = Response(html, status=500, mimetype="text/html")
            try:
                yield from response(environ, start_response)
            except Exception:
                environ["wsgi.errors"].write(
                    "Debugging middleware caught exception in streamed response"
                    " at a point where response headers were already sent.\n"
                )
            environ["wsgi.errors"].write("".join(tb.render_traceback_text()))

    def _remember(
        self,
        frames: t.Sequence[DebugFrameSummary],
        contexts: list[t.ContextManager[t.Any]],
        html: str,
    ) -> str:
        """Keep ``frames`` under fresh keys, rewrite the page to name them,
        and drop the oldest tracebacks beyond ``max_tracebacks`` (werkzeug
        keeps every traceback's frames, locals included, forever)."""
        with self._frames_lock:
            keys: list[int] = []
            for frame in frames:
                old = _FRAME_ID.format(id(frame))
                if old not in html:
                    continue  # not on the page: nothing can address it
                key = next(self._keys)
                html = html.replace(old, _FRAME_ID.format(key))
                self.frames[key] = frame
                # werkzeug's execute_command looks contexts up by id(frame):
                # unique while the frame is kept.
                self.frame_contexts[id(frame)] = contexts
                keys.append(key)
            self._tracebacks.append(keys)
            while len(self._tracebacks) > self._max_tracebacks:
                for key in self._tracebacks.popleft():
                    evicted = self.frames.pop(key, None)
                    if evicted is not None:
                        self.frame_contexts.pop(id(evicted), None)
        return html

    def drop_frames(self) -> None:
        with self._frames_lock:
            self.frames.clear()
            self.frame_contexts.clear()
            self._tracebacks.clear()

    @property
    def traceback_count(self) -> int:
        return len(self._tracebacks)


class DebuggerGate:
    """werkzeug's debugger around ``app``, behind every guard.

    :param app: the WSGI application.
    :param settings: a :class:`~flask_diag.settings.Settings`; by default
        loaded from the environment. Reads ``debugger`` (off: the gate passes
        every request through and no debugger exists) and the
        ``debugger_*`` and ``env`` settings.
    :param overrides: settings given in code, e.g. ``debugger=True``.
    :raises DiagConfigError: at start-up, when a guard refuses (several
        worker processes, production without the override,
        ``WERKZEUG_DEBUG_PIN``).

    When it wraps a Flask app (``flask_app`` or ``flask_app.wsgi_app``), the
    view exceptions of the requests it admits reach the debugger while it is
    active, as with ``PROPAGATE_EXCEPTIONS``; the others are the app's to
    handle (see :meth:`register_flask`).
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        settings: Settings | None = None,
        **overrides: object,
    ) -> None:
        settings = Settings.for_middleware(settings, overrides)
        self.app = app
        self.settings = settings
        self._lock = threading.Lock()
        self._expired = False
        self._timer: threading.Timer | None = None
        self._flask_apps: dict[int, tuple[weakref.ref[Flask], object]] = {}
        self._own_hosts: tuple[int, frozenset[str]] | None = None
        self._admit_cache: dict[tuple[object, object, object], bool] = {}
        #: The debugger, while it exists (``None`` when off).
        self.debugger: _GatedDebugger | None = None
        #: The PIN of this activation (``None`` when off).
        self.pin_lock: PinLock | None = None
        if not settings.debugger:
            return
        check_startup(settings)
        profile = detect()
        processes = profile.workers
        if (processes is not None and processes > 1) or profile.multiprocess:
            raise DiagConfigError(_one_process_message(profile, processes))
        self._allow: tuple[_NET, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in settings.debugger_allow
        )
        self._proxies: tuple[_NET, ...] = tuple(
            ipaddress.ip_network(n, strict=False)
            for n in settings.debugger_trusted_proxies
        )
        exact = set(_LOCAL_NAMES)
        suffixes = {"localhost"}
        for host in settings.debugger_hosts:
            host = host.strip("[]")
            if host.startswith("*."):
                suffixes.add(host[2:])
                exact.add(host[2:])
            else:
                exact.add(host)
        self._exact_hosts = frozenset(exact)
        self._suffix_hosts = tuple(sorted(suffixes))
        self._console_path = _CONSOLE_PATH if settings.debugger_console else None
        debugger_js = patched_debugger_js()  # before any PIN file exists
        try:
            lock = PinLock.activate(
                settings.debugger_pin,
                ttl=settings.debugger_ttl,
                server=server_key(profile.master_pid),
            )
        except SharingError as e:
            # Fail closed: without the shared record each replaced worker
            # would start a new activation (a new TTL, new PIN guesses).
            with capture_internal_exceptions("logging debugger_refused"):
                logger.critical(
                    "debugger_refused",
                    message=(
                        "flask_diag's debugger stays off: the workers of this"
                        f" server cannot share its activation ({e})."
                    ),
                )
            return
        except ValueError as e:  # a PIN too short once normalised
            raise DiagConfigError(
                f"flask_diag's debugger refuses to start: {e}. Set"
                " FLASK_DIAG_DEBUGGER_PIN to a longer one, or unset it for a"
                " random PIN written to a file only the server's user can read."
            ) from None
        self.pin_lock = lock
        self.debugger = _GatedDebugger(
            app,
            self,
            lock,
            console_path=self._console_path,
            max_tracebacks=settings.debugger_frames,
            debugger_js=debugger_js,
        )
        if lock.expired():
            # A worker that replaced one of this server after the end of the
            # server's activation (gunicorn --max-requests): still off.
            self._expire("expired")
            return
        flask_app = find_flask_app(app)
        if flask_app is not None:
            self.register_flask(flask_app)
        self._announce(profile)
        # What is left of the server's activation (a worker that replaced
        # one takes over its expiry).
        timer = threading.Timer(lock.remaining(), self._expire, ("expired",))
        timer.daemon = True
        timer.start()
        self._timer = timer

    # -- state ------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the debugger is reachable (on, and not expired)."""
        lock = self.pin_lock
        if lock is None or self._expired:
            return False
        if lock.expired():
            self._expire("expired")
            return False
        return True

    def close(self) -> None:
        """Switch the debugger off now (frames dropped, PIN file deleted)."""
        self._expire("closed")

    def register_flask(self, flask_app: Flask) -> None:
        """Have ``flask_app`` let the exceptions of admitted requests (those
        with :data:`~flask_diag.errors.PROPAGATE_KEY`) go up to the debugger
        while the gate is active, as ``PROPAGATE_EXCEPTIONS`` would for all:
        every other request's are handled as without a debugger (the app's
        ``errorhandler(500)`` page included)."""
        key = id(flask_app)
        if key in self._flask_apps or self.pin_lock is None or self._expired:
            return
        from flask import request as flask_request
        from flask.signals import got_request_exception

        handle = flask_app.handle_exception

        def handle_exception(e: Exception) -> t.Any:
            if not self._expired and flask_request.environ.get(PROPAGATE_KEY):
                # What Flask does when PROPAGATE_EXCEPTIONS is on.
                got_request_exception.send(
                    flask_app, _async_wrapper=flask_app.ensure_sync, exception=e
                )
                raise e
            return handle(e)

        flask_app.handle_exception = handle_exception  # type: ignore[method-assign]
        self._flask_apps[key] = (weakref.ref(flask_app), handle_exception)

    def _announce(self, profile: ServerProfile) -> None:
        lock = self.pin_lock
        assert lock is not None
        settings = self.settings
        expires_at = datetime.datetime.fromtimestamp(
            lock.expires_wall, datetime.timezone.utc
        ).isoformat(timespec="seconds")
        if lock.pin_file is not None:
            where = f"read the PIN from {lock.pin_file} (mode 0600)"
        else:
            where = "the PIN is the one set in FLASK_DIAG_DEBUGGER_PIN"
        with capture_internal_exceptions("logging debugger_enabled"):
            logger.critical(
                "debugger_enabled",
                message=(
                    "werkzeug's debugger is ON: whoever passes the gate runs"
                    f" Python code in this process until {expires_at}; {where}."
                ),
                pin_file=lock.pin_file,
                expires_at=expires_at,
                ttl_s=settings.debugger_ttl,
                allow=list(settings.debugger_allow),
                trusted_proxies=list(settings.debugger_trusted_proxies),
                hosts=sorted(self._exact_hosts)
                + [f"*.{s}" for s in self._suffix_hosts],
                console=self._console_path,
                server=profile.describe(),
                env=settings.env,
            )
        with capture_internal_exceptions("logging debugger_timeout"):
            # gunicorn's gthread --timeout is a heartbeat of the worker's main
            # loop: it never kills a request thread paused in a frame.
            timer = worker_kill_timer()
            if timer is not None and timer.kills and 0 < timer.seconds < 600:
                fix = _debug_command(timer.server)
                logger.warning(
                    "debugger_short_timeout",
                    # At start-up no request runs: the time left is moot.
                    message=(
                        f"{timer._replace(left=None).describe()}: a debugging"
                        f" session in a frame may be cut short. Use: {fix}"
                    ),
                    timeout_s=timer.seconds,
                    server_timeout=timer.setting,
                )
        send_safely(
            debugger_enabled,
            self,
            pin_file=lock.pin_file,
            expires_at=lock.expires_wall,
            allow=settings.debugger_allow,
        )

    def _expire(self, reason: str) -> None:
        with self._lock:
            if self._expired or self.pin_lock is None:
                return
            self._expired = True
        timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        with capture_internal_exceptions("switching the debugger off"):
            if self.debugger is not None:
                self.debugger.drop_frames()
            self.pin_lock.remove_file()
            for ref, ours in self._flask_apps.values():
                flask_app = ref()
                if (
                    flask_app is not None
                    and vars(flask_app).get("handle_exception") is ours
                ):
                    del flask_app.handle_exception
        with capture_internal_exceptions("logging debugger_disabled"):
            logger.warning("debugger_disabled", reason=reason)
        send_safely(debugger_disabled, self, reason=reason)

    # -- checks -------------------------------------------------------------------

    def _client(self, environ: WSGIEnvironment) -> _IP | None:
        """The client's address: ``REMOTE_ADDR``, or the hop after the last
        trusted proxy in ``X-Forwarded-For``; ``None`` (refused) when that is
        unknown.

        A trusted proxy that sends no ``X-Forwarded-For``, or one whose every
        hop is a trusted proxy, says nothing about the client: never take the
        proxy's own (often loopback) address for it.
        """
        remote = _ip(_as_received(environ, "REMOTE_ADDR"))
        if remote is None or not self._proxies or not _in(remote, self._proxies):
            return remote
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if not forwarded:
            return None
        for hop in reversed(str(forwarded).split(",")):
            client = _ip(hop.strip())
            if client is None or not _in(client, self._proxies):
                return client
        return None

    def _via_https_proxy(self, environ: WSGIEnvironment) -> bool:
        """Whether a trusted proxy says the browser spoke HTTPS to it."""
        remote = _ip(_as_received(environ, "REMOTE_ADDR"))
        if remote is None or not self._proxies or not _in(remote, self._proxies):
            return False
        proto = str(environ.get("HTTP_X_FORWARDED_PROTO", ""))
        return any(p.strip().lower() == "https" for p in proto.split(","))

    def _own_host_names(self, environ: WSGIEnvironment) -> frozenset[str]:
        cached = self._own_hosts
        pid = os.getpid()
        if cached is not None and cached[0] == pid:
            return cached[1]
        names: set[str] = set()
        with capture_internal_exceptions("finding the server's own addresses"):
            profile = detect(environ)
            for listener in profile.listeners:
                if listener.family == "unix":
                    continue
                if listener.wildcard:
                    names.update(_host_addresses())
                else:
                    names.add(listener.host.lower())
        found = frozenset(names)
        self._own_hosts = (pid, found)
        return found

    def _host_trusted(self, environ: WSGIEnvironment) -> bool:
        name = _host_name(_as_received(environ, "HTTP_HOST"))
        if name is None:
            return False
        if name in self._exact_hosts:
            return True
        for suffix in self._suffix_hosts:
            if name.endswith("." + suffix):
                return True
        return name in self._own_host_names(environ)

    def _admitted(self, environ: WSGIEnvironment) -> bool:
        """Whether an ordinary request goes through the debugger; decisions
        are cached by (peer, forwarded-for, Host): parsing addresses costs
        more than the rest of the gate."""
        if environ.get("wsgi.multiprocess"):
            return False
        key = (
            _as_received(environ, "REMOTE_ADDR"),
            environ.get("HTTP_X_FORWARDED_FOR") if self._proxies else None,
            _as_received(environ, "HTTP_HOST"),
        )
        admitted = self._admit_cache.get(key)
        if admitted is None:
            try:
                admitted = self._refusal(environ, self._client(environ)) is None
            except Exception:  # a fault in the gate never opens it
                return False
            if len(self._admit_cache) >= 1024:  # bounded: clients vary
                self._admit_cache.clear()
            self._admit_cache[key] = admitted
        return admitted

    def _refusal(self, environ: WSGIEnvironment, client: _IP | None) -> str | None:
        """Why this request may not reach the debugger, or ``None``."""
        if client is None or not _in(client, self._allow):
            return "client"
        if environ.get("wsgi.multiprocess"):
            return "multiprocess"
        if not self._host_trusted(environ):
            return "host"
        return None

    # -- requests -----------------------------------------------------------------

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> t.Iterable[bytes]:
        debugger = self.debugger
        if debugger is None:
            return self.app(environ, start_response)
        query = environ.get("QUERY_STRING", "")
        args: dict[str, list[str]] | None = None
        if query and ("debugger" in query or "%" in query):
            args = parse_qs(query, keep_blank_values=True)
            if args.get("__debugger__", [""])[0] != "yes":
                args = None
        console = (
            self._console_path is not None
            and environ.get("PATH_INFO") == self._console_path
        )
        if args is None and not console:
            # An ordinary request: through the debugger only for a client
            # that could also reach its routes.
            if not self.active or not self._admitted(environ):
                return self.app(environ, start_response)
            environ[PROPAGATE_KEY] = True
            return debugger.debug_application(environ, start_response)
        return self._debugger_route(environ, start_response, args or {}, debugger)

    def _debugger_route(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        args: dict[str, list[str]],
        debugger: _GatedDebugger,
    ) -> t.Iterable[bytes]:
        try:
            active = self.active
            client = self._client(environ) if active else None
            reason = self._refusal(environ, client) if active else None
        except Exception as e:  # a fault in the gate never opens it
            report_internal_error("checking a debugger request", e)
            return self.app(environ, start_response)
        if not active:
            # Gone: as if there had never been a debugger (no event: the
            # expiry itself was logged).
            return self.app(environ, start_response)
        if reason is not None:
            # Served exactly as without a debugger: the app answers, its
            # exceptions go to the envelope (no PROPAGATE_KEY). A 404 of the
            # gate's own would tell a scanner that the debugger is on.
            self._refused(environ, client, reason)
            return self.app(environ, start_response)
        lock = self.pin_lock
        assert lock is not None

        def arg(name: str) -> str | None:
            values = args.get(name)
            return values[0] if values else None

        request = Request(environ)
        cmd = arg("cmd")
        secret = arg("s")
        response: Response
        if not args:  # the console path
            response = debugger.display_console(request)
        elif cmd == "resource" and arg("f"):
            response = debugger.get_resource(request, arg("f") or "")
        elif secret is None or not _same(secret, debugger.secret):
            response = NotFound().get_response(environ)
        elif cmd == "pinauth":
            if "pin" in args:
                response = self._pin_in_url(environ, client)
            else:
                response = self._pin_auth(request, client, lock, _posted_pin(request))
        elif cmd == "printpin":
            self._audit(
                "debugger_pin_requested",
                None,
                environ,
                client,
                logged={
                    "pin_file": lock.pin_file,
                    "message": (
                        f"the PIN is in {lock.pin_file} (mode 0600)"
                        if lock.pin_file
                        else "the PIN is the one set in FLASK_DIAG_DEBUGGER_PIN"
                    ),
                },
            )
            response = Response("")
        else:
            frame = _frame(debugger, arg("frm"))
            if cmd is None or frame is None:
                response = NotFound().get_response(environ)
            elif not debugger.check_pin_trust(environ):
                self._refused(environ, client, "pin")
                response = Forbidden(
                    "The console is locked: enter the PIN first."
                ).get_response(environ)
            else:
                self._command(environ, client, cmd)
                response = debugger.execute_command(request, cmd, frame)
        return response(environ, start_response)

    def _pin_in_url(self, environ: WSGIEnvironment, client: _IP | None) -> Response:
        """A PIN in the query string: never compared, never counted. The
        request line that carried it is in the access log already; accepting
        it would make that log a key."""
        message = (
            "a PIN was sent in the URL and ignored: the PIN must not travel in"
            " URLs (request lines are logged). The debugger page served by"
            " flask_diag sends it in a POST body; reload the page."
        )
        self._audit(
            "debugger_pin_refused",
            debugger_pin_refused,
            environ,
            client,
            logged={"reason": "pin_in_url", "message": message},
            sent={"reason": "pin_in_url", "failures": 0, "locked": False},
        )
        return _pinauth_answer(accepted=False, exhausted=False)

    def _pin_auth(
        self, request: Request, client: _IP | None, lock: PinLock, entered: str
    ) -> Response:
        environ = request.environ
        result = lock.attempt(entered)
        # werkzeug's answer, which its page's script reads.
        response = _pinauth_answer(accepted=result.accepted, exhausted=result.locked)
        if result.accepted:
            self._audit(
                "debugger_pin_accepted",
                debugger_pin_accepted,
                environ,
                client,
                logged={
                    "pin_file": lock.pin_file,
                    "rotated": lock.pin_file is not None,
                },
            )
            response.set_cookie(
                lock.cookie_name,
                lock.cookie_value(),
                max_age=int(lock.remaining()),  # never beyond the expiry
                httponly=True,
                samesite="Strict",
                secure=request.is_secure or self._via_https_proxy(environ),
            )
            return response
        reason = "locked" if result.locked and not result.failures else "wrong"
        locked_for = max(0.0, result.locked_until - time.monotonic())
        sent = {"reason": reason, "failures": result.failures, "locked": result.locked}
        self._audit(
            "debugger_pin_refused",
            debugger_pin_refused,
            environ,
            client,
            logged={**sent, "locked_for_s": round(locked_for, 1)},
            sent=sent,
        )
        return response

    def _command(self, environ: WSGIEnvironment, client: _IP | None, cmd: str) -> None:
        fields = {"command": cmd}
        self._audit(
            "debugger_command",
            debugger_command,
            environ,
            client,
            logged=fields,
            sent=fields,
        )

    def _refused(
        self, environ: WSGIEnvironment, client: _IP | None, reason: str
    ) -> None:
        extra: dict[str, object] = {}
        if reason == "host":
            extra["host"] = str(environ.get("HTTP_HOST", ""))[:200]
        elif reason == "multiprocess":
            extra["message"] = (
                "this server runs several worker processes; the debugger needs"
                f" exactly one: {one_process_command()}"
            )
        self._audit(
            "debugger_client_refused",
            debugger_client_refused,
            environ,
            client,
            logged={"reason": reason, **extra},
            sent={"reason": reason},
        )

    def _audit(
        self,
        event: str,
        signal: Signal | None,
        environ: WSGIEnvironment,
        client: _IP | None,
        *,
        logged: Mapping[str, object] = _NO_FIELDS,
        sent: Mapping[str, object] = _NO_FIELDS,
    ) -> None:
        """Log ``event`` and send ``signal``: the request's fields (built
        once, never ``environ``) plus ``logged`` / ``sent``."""
        fields = _signal_fields(environ, client)
        with capture_internal_exceptions(f"logging {event}"):
            logger.warning(event, **fields, **logged)
        if signal is not None:
            send_safely(signal, self, **fields, **sent)


def _signal_fields(environ: WSGIEnvironment, client: _IP | None) -> dict[str, t.Any]:
    """What events and signals say about a request: never ``environ``,
    which holds the query string (a PIN) and the cookies (the unlock
    cookie)."""
    return {
        "request_id": _request_id(environ),
        "path": str(environ.get("PATH_INFO", ""))[:200],
        "client": str(client),
    }


def _pinauth_answer(*, accepted: bool, exhausted: bool) -> Response:
    """werkzeug's ``pinauth`` answer, which its page's script reads."""
    return Response(
        json.dumps({"auth": accepted, "exhausted": exhausted}),
        mimetype="application/json",
    )


def _posted_pin(request: Request) -> str:
    """The PIN from a ``POST`` form body (small, url-encoded), else ``""``."""
    if request.method != "POST":
        return ""
    if request.mimetype != "application/x-www-form-urlencoded":
        return ""
    length = request.content_length
    if length is None or length > _PIN_BODY_MAX:
        return ""
    body = request.stream.read(length).decode("ascii", "replace")
    values = parse_qs(body, keep_blank_values=True).get("pin")
    return values[0] if values else ""


def _in(ip: _IP, networks: tuple[_NET, ...]) -> bool:
    return any(ip in network for network in networks)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _frame(
    debugger: _GatedDebugger, frm: str | None
) -> DebugFrameSummary | t.Any | None:
    if frm is None:
        return None
    try:
        return debugger.frames.get(int(frm))
    except ValueError:
        return None


def _request_id(environ: WSGIEnvironment) -> str | None:
    try:
        return request_info(environ).request_id
    except Exception:
        return None


def _host_addresses() -> set[str]:
    """This host's own addresses, for a server listening on every address."""
    found: set[str] = set()
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None)
    except OSError:
        return found
    for info in infos:
        address = info[4][0]
        if isinstance(address, str):
            found.add(address.split("%", 1)[0].lower())
    return found


def _gates(app: object) -> list[DebuggerGate]:
    return find_in_stack(app, DebuggerGate)


def init_flask(app: Flask, settings: Settings) -> None:
    """Called by :meth:`Diag.init_app <flask_diag.Diag.init_app>` when the
    debugger is on: while the gate is active, view exceptions of admitted
    requests reach werkzeug's debugger (the error envelope's Flask handler
    passes them on, see :data:`~flask_diag.errors.PROPAGATE_KEY`), as with
    ``PROPAGATE_EXCEPTIONS`` for those requests only; undone at expiry.
    """
    for gate in _gates(app.wsgi_app):
        gate.register_flask(app)
