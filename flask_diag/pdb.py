"""Remote pdb reference
====================

Pitfall 4: teams that ban the web debugger drop ``import rpdb;
rpdb.set_trace()`` into a view and attach with ``nc localhost 4444``. It
works, with sharp edges: ``continue`` leaves netcat hanging, ``quit`` raises
into the request, the server kills the worker mid-session, several workers
fight over one port, and there is no history. :func:`set_trace` keeps rpdb's
simplicity (plain :mod:`pdb` over a loopback socket) and files the edges off.

Use it as the ``breakpoint()`` hook of one deployment::

    # in a view
    breakpoint()

    # start the server with
    PYTHONBREAKPOINT=flask_diag.set_trace FLASK_DIAG_PDB=on \\
        gunicorn -w 1 --timeout 600 app:app

    # then, in another terminal, trigger the request and attach
    python -m flask_diag pdb 4444      # or: nc 127.0.0.1 4444

What it does:

- **Off by default.** Without ``FLASK_DIAG_PDB=on`` a forgotten
  ``breakpoint()`` does not stop: it logs ``forgotten breakpoint ignored``
  (file, line, request id), emits a :class:`ForgottenBreakpointWarning`
  (which ``filterwarnings = error`` turns into a test failure) and returns.
- **Loopback only.** It listens on ``FLASK_DIAG_PDB_HOST`` (default
  ``127.0.0.1``); any other address is logged at ``critical`` level, since
  whoever reaches the port runs code in the worker. Port
  ``FLASK_DIAG_PDB_PORT`` (default 4444) or the next free one.
- **Bounded wait.** Nobody attaches within ``FLASK_DIAG_PDB_WAIT`` seconds
  (default 120, less when the server would kill the worker first): the
  request continues, logged. The log line ``remote pdb waiting for a client``
  names the pid, thread, request id, address and the command to attach.
- **A banner** says which process, thread and request this is and when the
  server kills the worker (gunicorn ``--timeout``, read from the running
  worker; uWSGI ``harakiri``), with the seconds left; see
  :func:`~flask_diag.worker_timeout.worker_kill_timer`.
- **Clean endings.** ``continue`` with no breakpoints left ends the session
  and closes the connection (``nc`` and the client exit); ``quit`` detaches
  and the request continues (``FLASK_DIAG_PDB_QUIT=raise`` raises
  ``BdbQuit`` instead, like plain pdb); a client that goes away detaches the
  same way, never raising into the request.
- **One session per process.** A breakpoint hit in another thread while a
  session is open waits up to ``FLASK_DIAG_PDB_WAIT`` seconds for it to end,
  then skips (``FLASK_DIAG_PDB_BUSY=skip`` skips at once); both are logged.
  In the session's own thread a second ``breakpoint()`` reuses the open
  connection.

The protocol is plain text lines, so ``nc`` works; ``python -m flask_diag
pdb`` (or ``flask diag pdb``, see :mod:`flask_diag.pdb_client`) adds line
editing, history and reconnection.

.. autofunction:: set_trace
.. autoclass:: ForgottenBreakpointWarning
.. autoclass:: RemotePdb
"""

from __future__ import annotations

import bdb
import code
import codecs
import errno
import ipaddress
import os
import pdb
import re
import socket
import sys
import threading
import time
import types
import typing as t
import warnings

import structlog

from .context import ENVIRON_KEY
from .context import RequestInfo
from .context import thread_name
from .exceptions import DiagConfigError
from .exceptions import DiagWarning
from .internal import logger
from .internal import report_internal_error
from .pdb_client import DEFAULT_HOST
from .server import format_address
from .settings import Settings
from .signals import pdb_session_ended
from .signals import pdb_session_started
from .signals import send_safely
from .worker_timeout import KillTimer
from .worker_timeout import worker_kill_timer

__all__ = ["set_trace", "ForgottenBreakpointWarning", "RemotePdb"]

#: How many ports after ``FLASK_DIAG_PDB_PORT`` are tried when it is taken
#: (by another worker's session, say).
PORT_TRIES = 100
#: A wait shortened to end before the server kills the worker keeps this
#: margin, in seconds.
KILL_MARGIN = 2.0
#: Forgotten-breakpoint log lines per code location: at most one per this many
#: seconds, so a ``breakpoint()`` in a loop cannot flood the log.
FORGOTTEN_LOG_INTERVAL = 10.0
_PROXY_NOTE = (
    "a proxy in front (nginx proxy_read_timeout / uwsgi_read_timeout, 60 s by"
    " default) may answer 504 meanwhile; this worker stays paused"
)


class ForgottenBreakpointWarning(DiagWarning):
    """A ``breakpoint()`` or :func:`set_trace` ran while the remote pdb is off.

    The code continues; the warning points at the breakpoint's line.
    """


def set_trace(*, header: str | None = None) -> None:
    """Break into a remote pdb session in the caller's frame.

    ``PYTHONBREAKPOINT=flask_diag.set_trace`` makes ``breakpoint()`` call it.
    Only with ``FLASK_DIAG_PDB=on``; otherwise it logs a warning and returns
    at once. Settings are read from the environment (``FLASK_DIAG_PDB_*``)
    at each call, since a breakpoint has no app.

    .. code-block:: python

        @app.get("/price")
        def price():
            total = compute()
            flask_diag.set_trace(header="checking the total")
            return {"total": total}

    :param header: a line sent to the client after the banner, like
        :func:`pdb.set_trace`'s.
    """
    frame = sys._getframe(1)
    try:
        _set_trace(frame, header)
    except DiagWarning:
        # ForgottenBreakpointWarning turned into an error by the warning
        # filters (``-W error``, pytest's ``filterwarnings``): on purpose.
        raise
    except Exception as exc:  # a breakpoint must never break the request
        report_internal_error("remote pdb", exc)


# -- settings -----------------------------------------------------------------

_settings_cache: tuple[tuple[tuple[str, str], ...], Settings] | None = None


def _load_settings() -> Settings:
    """The settings from the environment, parsed again only when it changed."""
    global _settings_cache
    key = tuple(
        sorted(
            (k, v)
            for k, v in os.environ.items()
            if k == "FLASK_DIAG" or k.startswith("FLASK_DIAG_")
        )
    )
    cached = _settings_cache
    if cached is not None and cached[0] == key:
        return cached[1]
    settings = Settings.load(environ=dict(key))
    _settings_cache = (key, settings)
    return settings


# -- the forgotten breakpoint ---------------------------------------------------

_forgotten_last: dict[tuple[str, int], tuple[float, int]] = {}


def _forgotten(frame: types.FrameType, why: str) -> None:
    filename, lineno = frame.f_code.co_filename, frame.f_lineno
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    now = time.monotonic()
    last, suppressed = _forgotten_last.get((filename, lineno), (-1e9, 0))
    if now - last >= FORGOTTEN_LOG_INTERVAL:
        if len(_forgotten_last) < 1024:  # bounded, like any per-location table
            _forgotten_last[(filename, lineno)] = (now, 0)
        logger.warning(
            "forgotten breakpoint ignored",
            file=filename,
            line=lineno,
            function=frame.f_code.co_name,
            request_id=request_id,
            reason=why,
            suppressed=suppressed,
            hint="remove the breakpoint, or set FLASK_DIAG_PDB=on to debug",
        )
    else:
        _forgotten_last[(filename, lineno)] = (last, suppressed + 1)
    # Once per location with Python's default filter; an error under
    # ``-W error`` or pytest's ``filterwarnings = error``: how a test suite
    # catches a breakpoint before it ships.
    module = frame.f_globals.get("__name__", "<string>")
    warnings.warn_explicit(
        ForgottenBreakpointWarning(
            f"breakpoint() at {filename}:{lineno} ignored: {why}. Remove it, or"
            " set FLASK_DIAG_PDB=on to debug with flask_diag's remote pdb."
        ),
        ForgottenBreakpointWarning,
        filename,
        lineno,
        module=module,
        registry=frame.f_globals.setdefault("__warningregistry__", {}),
    )


# -- the request being debugged -------------------------------------------------


def _request_info(frame: types.FrameType) -> RequestInfo | None:
    """The :class:`RequestInfo` of the request running in this thread."""
    try:
        from flask import has_request_context
        from flask import request

        if has_request_context():
            info = request.environ.get(ENVIRON_KEY)
            if isinstance(info, RequestInfo):
                return info
    except Exception:
        pass
    # Django or plain WSGI: a WSGI ``environ`` in a caller's frame.
    current: types.FrameType | None = frame
    for _ in range(64):
        if current is None:
            break
        environ = current.f_locals.get("environ")
        if isinstance(environ, dict):
            info = environ.get(ENVIRON_KEY)
            if isinstance(info, RequestInfo):
                return info
        current = current.f_back
    return None


def _process_label() -> str:
    if "uwsgi" in sys.modules:
        try:
            return f"uWSGI worker {sys.modules['uwsgi'].worker_id()}"
        except Exception:
            return "uWSGI worker"
    if "gunicorn" in sys.modules:
        return "gunicorn worker"
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"


# -- the connection -------------------------------------------------------------


#: The longest line a client may send (a pdb command, a line of code).
_MAX_LINE = 64 * 1024
#: An HTTP request line (``POST /x HTTP/1.1``): never a pdb command.
_HTTP_REQUEST_LINE = re.compile(r"[A-Z]{3,10} \S+ HTTP/\d(\.\d)?$")


class _Channel:
    """A connected client as pdb's stdin and stdout: lines in, text out.

    Never raises: a write to a client that went away is dropped and marks the
    channel lost, and reading then returns ``""``, which pdb turns into its
    ``EOF`` command (detach, see :meth:`RemotePdb.do_EOF`).
    """

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lost = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = ""
        self._first = True

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def readline(self, size: int | None = -1, /) -> str:
        while "\n" not in self._pending:
            data = b""
            if not self.lost and len(self._pending) <= _MAX_LINE:
                try:
                    data = self.sock.recv(4096)
                except OSError:
                    data = b""
            if not data:
                # Gone, or a "line" no one types: the session ends.
                self._drop()
                return ""
            self._pending += self._decoder.decode(data)
        line, _, self._pending = self._pending.partition("\n")
        # ``telnet`` and some ``nc`` builds send CR LF.
        line = line.rstrip("\r")
        if self._first:
            self._first = False
            if _HTTP_REQUEST_LINE.match(line):
                # A web page's request (fetch() to this port, through an SSH
                # tunnel on a developer's machine): its body would be run as
                # pdb commands. Refused before any line is.
                logger.warning(
                    "remote pdb refused an HTTP request",
                    hint="an HTTP client, or a web page in a browser, connected"
                    " to the debugging port; use flask diag pdb or nc",
                )
                self._drop()
                return ""
        return line + "\n"

    def _drop(self) -> None:
        self.lost = True
        self._pending = ""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def write(self, text: str, /) -> int:
        if not self.lost:
            try:
                self.sock.sendall(text.encode("utf-8", "replace"))
            except OSError:
                self.lost = True
        return len(text)

    def flush(self) -> None:
        pass

    def peer_gone(self) -> bool:
        """Whether the client closed the connection (checked without waiting)."""
        if self.lost:
            return True
        # A non-blocking peek, not select(): a busy worker may hold file
        # descriptors above select()'s limit. MSG_DONTWAIT where there is
        # one: the socket's own mode is left alone, so another thread may
        # ask while the session's thread reads.
        dontwait = getattr(socket, "MSG_DONTWAIT", 0)
        if not dontwait:
            self.sock.setblocking(False)
        try:
            if self.sock.recv(1, socket.MSG_PEEK | dontwait) == b"":
                self.lost = True
        except BlockingIOError:
            pass  # connected, nothing sent
        except OSError:
            self.lost = True
        finally:
            if not dontwait and not self.lost:
                self.sock.setblocking(True)
        return self.lost

    def hang_up(self) -> None:
        self.lost = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _LeaveConsole(Exception):
    pass


class _Exit:
    def __repr__(self) -> str:
        return "Use exit() to return to pdb"

    def __call__(self, code: object = None) -> t.NoReturn:
        raise _LeaveConsole


class _Console(code.InteractiveConsole):
    """pdb's ``interact`` over the connection, not the worker's stdin."""

    def __init__(self, namespace: dict[str, t.Any], channel: _Channel) -> None:
        namespace.update(exit=_Exit(), quit=_Exit())
        super().__init__(namespace)
        self.channel = channel

    def raw_input(self, prompt: str = "") -> str:
        self.channel.write(prompt)
        line = self.channel.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def write(self, data: str) -> None:
        self.channel.write(data)

    def runcode(self, code: types.CodeType) -> None:
        saved = sys.stdout
        sys.stdout = t.cast("t.TextIO", self.channel)
        try:
            exec(code, self.locals)
        except (_LeaveConsole, SystemExit):
            # ``sys.exit()`` typed here must not stop the worker.
            raise _LeaveConsole from None
        except BaseException:
            self.showtraceback()
        finally:
            sys.stdout = saved


# -- the session ----------------------------------------------------------------


class RemotePdb(pdb.Pdb):
    """:class:`pdb.Pdb` over a client connection, with safe endings.

    - ``continue``: with no breakpoints left the session ends and the
      connection is closed; with breakpoints left it stays open until one is
      hit.
    - ``quit``/``exit``: detach (breakpoints cleared) and let the code
      continue; with ``FLASK_DIAG_PDB_QUIT=raise``, raise ``BdbQuit`` like
      plain pdb.
    - end of input (the client went away): detach.
    - ``interact`` talks to the client, and ``exit()`` in it returns to pdb.

    It never touches signal handlers (``nosigint``): in a worker they belong
    to the server. It reads no ``.pdbrc``.
    """

    def __init__(self, session: _Session) -> None:
        super().__init__(
            stdin=t.cast("t.IO[str]", session.channel),
            stdout=t.cast("t.IO[str]", session.channel),
            skip=[__name__],
            nosigint=True,
            readrc=False,
        )
        self.session = session

    def do_continue(self, arg: str) -> bool:
        self.set_continue()
        if self.breaks:
            count = sum(len(lines) for lines in self.breaks.values())
            self.message(
                f"*** flask_diag: {count} breakpoint(s) left: this connection stays"
                " open until one is hit ('clear' then 'continue' ends the session)."
            )
        else:
            self.message(
                "*** flask_diag: no breakpoints left: the session ends and the"
                " request continues."
            )
            self.session.ending = "continue"
        return True

    do_c = do_cont = do_continue

    def do_quit(self, arg: str) -> bool:
        self.session.ending = "quit"
        if self.session.quit_mode == "raise":
            self.message(
                "*** flask_diag: quit raises BdbQuit into the code"
                " (FLASK_DIAG_PDB_QUIT=raise)."
            )
            return bool(super().do_quit(arg))
        self._detach()
        self.message(
            "*** flask_diag: detached, breakpoints cleared; the request continues."
        )
        return True

    do_q = do_exit = do_quit

    def do_EOF(self, arg: str) -> bool:  # noqa: N802 - pdb's name
        # The client went away: never raise into the request (plain pdb
        # would: BdbQuit).
        self.session.ending = "disconnected"
        self._detach()
        return True

    def _namespaces(self) -> tuple[dict[str, t.Any], t.Mapping[str, t.Any]]:
        """The current frame's globals and locals, as pdb's commands see them."""
        if self.curframe is None:
            return {}, {}
        # pdb's ``curframe_locals`` holds the values set with ``!name = ...``;
        # ``f_locals`` only on a Python whose pdb has none.
        local_ns = getattr(self, "curframe_locals", None)
        if local_ns is None:
            local_ns = self.curframe.f_locals
        return self.curframe.f_globals, local_ns

    def do_interact(self, arg: str) -> None:
        globals_ns, local_ns = self._namespaces()
        console = _Console({**globals_ns, **local_ns}, self.session.channel)
        try:
            console.interact(
                "*interactive* (exit() returns to pdb; names set here do not"
                " change the frame)",
                exitmsg="",
            )
        except _LeaveConsole:
            pass

    def do_clear(self, arg: str) -> None:
        if arg:
            super().do_clear(arg)
            return None
        # Plain pdb asks with input(): the worker's stdin, not the client.
        self.session.channel.write("Clear all breaks? ")
        if self.session.channel.readline().strip().lower() in ("y", "yes"):
            deleted = [bp for bp in bdb.Breakpoint.bpbynumber if bp]
            self.clear_all_breaks()
            for bp in deleted:
                self.message(f"Deleted {bp}")
        return None

    do_cl = do_clear

    def do_debug(self, arg: str) -> None:
        # As plain pdb, but the recursive debugger must not take over SIGINT
        # either (gunicorn's quit signal in a worker).
        sys.settrace(None)
        globals_ns, local_ns = self._namespaces()
        recursive = pdb.Pdb(
            stdin=t.cast("t.IO[str]", self.session.channel),
            stdout=t.cast("t.IO[str]", self.session.channel),
            nosigint=True,
            readrc=False,
        )
        recursive.prompt = f"({self.prompt.strip()}) "
        self.message("ENTERING RECURSIVE DEBUGGER")
        try:
            sys.call_tracing(recursive.run, (arg, globals_ns, local_ns))
        except Exception as exc:
            self.error(f"{type(exc).__name__}: {exc}")
        self.message("LEAVING RECURSIVE DEBUGGER")
        sys.settrace(self.trace_dispatch)
        self.lastcmd = recursive.lastcmd

    def _detach(self) -> None:
        self.clear_all_breaks()
        self.set_continue()

    def interaction(
        self, frame: types.FrameType | None, traceback: types.TracebackType | None
    ) -> None:
        try:
            super().interaction(frame, traceback)
        finally:
            if self.session.ending is not None or self.session.channel.lost:
                self.session.end()


class _Session:
    """One client connection, owned by one thread, holding the process lock."""

    def __init__(
        self,
        channel: _Channel,
        settings: Settings,
        *,
        address: str,
        peer: str,
        request_id: str | None,
    ) -> None:
        self.channel = channel
        self.quit_mode: str = settings.pdb_quit
        self.address = address
        self.peer = peer
        self.request_id = request_id
        self.thread = threading.get_ident()
        # The thread itself, not only its id: a thread that ended while its
        # session was open may leave its id to the next one (werkzeug's
        # thread per request), which must not join that session.
        self.thread_object = threading.current_thread()
        self.thread_name = thread_name()
        self.started = time.monotonic()
        self.ending: str | None = None
        self.ended = False
        self.pdb = RemotePdb(self)

    def end(self) -> None:
        """Close the connection, release the process lock; runs once."""
        global _current
        if self.ended:
            return
        self.ended = True
        reason = self.ending or "disconnected"
        self.channel.hang_up()
        # Breakpoints are process-wide (a new Pdb loads the ones left): a
        # session's die with it.
        self.pdb.clear_all_breaks()
        if _current is self:
            _current = None
        try:
            _session_lock.release()
        except RuntimeError:  # pragma: no cover - released by a fork reset
            pass
        duration = time.monotonic() - self.started
        logger.warning(
            "remote pdb session ended",
            reason=reason,
            duration_s=round(duration, 3),
            address=self.address,
            pid=os.getpid(),
            thread=self.thread_name,
            request_id=self.request_id,
        )
        if pdb_session_ended.receivers:
            send_safely(
                pdb_session_ended,
                self,
                request_id=self.request_id,
                reason=reason,
                duration=duration,
            )


# One session per process: pdb's breakpoints are process-wide and one
# client cannot follow two threads.
_session_lock = threading.Lock()
_current: _Session | None = None


def _reset_after_fork() -> None:
    global _session_lock, _current
    _session_lock = threading.Lock()
    _current = None


os.register_at_fork(after_in_child=_reset_after_fork)


def _set_trace(frame: types.FrameType, header: str | None) -> None:
    global _current
    try:
        settings = _load_settings()
    except DiagConfigError as exc:
        logger.error("remote pdb off: invalid setting", error=str(exc))
        _forgotten(frame, f"invalid flask_diag setting: {exc}")
        return
    if not settings.enabled:
        _forgotten(frame, "flask_diag is off (FLASK_DIAG=off)")
        return
    if not settings.pdb:
        _forgotten(frame, "the remote pdb is off (FLASK_DIAG_PDB is not on)")
        return
    session = _current
    if (
        session is not None
        and session.thread == threading.get_ident()
        and session.thread_object is threading.current_thread()
    ):
        if not session.channel.peer_gone():
            # Again in the thread being debugged (a loop, or breakpoints
            # left after 'continue'): the same client goes on.
            if header is not None:
                session.pdb.message(header)
            # Stop tracing first: this thread is traced by the same Pdb, which
            # would otherwise stop inside its own set_trace().
            sys.settrace(None)
            session.pdb.set_trace(frame)
            return
        # Its client left while the code ran: end it (reason
        # "disconnected"), and its tracing.
        session.end()
        sys.settrace(None)
    if not _acquire(settings, frame):
        return
    try:
        session = _open_session(settings, frame, header)
    except BaseException:
        # SystemExit from gunicorn's SIGQUIT handler during the wait, say.
        _session_lock.release()
        raise
    if session is None:
        _session_lock.release()
        return
    _current = session
    try:
        session.pdb.set_trace(frame)
    except BaseException:
        session.end()
        raise


def _wait_before_kill(settings: Settings, timer: KillTimer | None) -> float:
    """``FLASK_DIAG_PDB_WAIT``, cut to give up before the server kills the
    worker: an unattended or busy breakpoint must cost a slow request, not a
    dead worker."""
    wait = settings.pdb_wait
    if timer is not None and timer.kills and timer.left is not None:
        wait = max(min(wait, timer.left - KILL_MARGIN), 0.5)
    return wait


def _acquire(settings: Settings, frame: types.FrameType) -> bool:
    if _session_lock.acquire(blocking=False):
        return True
    holder = _current
    if holder is not None and (
        not holder.thread_object.is_alive() or holder.channel.peer_gone()
    ):
        # The open session's client left while its code ran on (after
        # ``continue``), or its thread ended: nothing will end it, so end
        # it here rather than make every later breakpoint wait for it.
        holder.end()
        if _session_lock.acquire(blocking=False):
            return True
        holder = _current
    where = {
        "file": frame.f_code.co_filename,
        "line": frame.f_lineno,
        "request_id": structlog.contextvars.get_contextvars().get("request_id"),
        "busy_with": holder.request_id if holder is not None else None,
        "busy_thread": holder.thread_name if holder is not None else None,
    }
    if settings.pdb_busy == "skip":
        logger.warning(
            "remote pdb busy: breakpoint skipped",
            reason="another thread's session is open (FLASK_DIAG_PDB_BUSY=skip)",
            **where,
        )
        return False
    wait = _wait_before_kill(settings, worker_kill_timer(_request_info(frame)))
    logger.warning(
        "remote pdb busy: waiting for the open session to end",
        wait_s=round(wait, 1),
        **where,
    )
    if _session_lock.acquire(timeout=wait):
        return True
    logger.warning(
        "remote pdb busy: breakpoint skipped",
        reason=f"the open session did not end within {wait:g} s",
        **where,
    )
    return False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host`` at ``port`` or the next free port."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    # IPv4 first for ``localhost``: the client's default is 127.0.0.1.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    candidates = [port] if port == 0 else range(port, min(port + PORT_TRIES, 65536))
    error: OSError | None = None
    for candidate in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if os.name == "posix":
                # Reuse a port whose last session is in TIME_WAIT; on POSIX
                # this never lets two listeners share it.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((sockaddr[0], candidate, *sockaddr[2:]))
            sock.listen(1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
            if exc.errno != errno.EADDRINUSE:
                raise
    assert error is not None
    raise error


def _attach_command(host: str, port: int) -> str:
    option = "" if host == DEFAULT_HOST else f" --host {host}"
    return f"python -m flask_diag pdb {port}{option}  (or: nc {host} {port})"


def _open_session(
    settings: Settings, frame: types.FrameType, header: str | None
) -> _Session | None:
    info = _request_info(frame)
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id is None and info is not None:
        request_id = info.request_id
    timer = worker_kill_timer(info)
    wait = _wait_before_kill(settings, timer)
    where = {
        # The real pid, not the cached one: uWSGI forks without running
        # Python's at-fork hooks (unless --py-call-osafterfork).
        "pid": os.getpid(),
        "thread": thread_name(),
        "request_id": request_id,
        "file": frame.f_code.co_filename,
        "line": frame.f_lineno,
    }
    host = settings.pdb_host
    if not _is_loopback(host):
        logger.critical(
            "remote pdb listens on a non-loopback address: anyone who can reach"
            " it runs code in this process",
            host=host,
            setting="FLASK_DIAG_PDB_HOST",
            **where,
        )
    try:
        listener = _listen(host, settings.pdb_port)
    except OSError as exc:
        logger.error(
            "remote pdb cannot listen: the code continues",
            host=host,
            port=settings.pdb_port,
            error=str(exc),
            **where,
        )
        return None
    try:
        bound_host, bound_port = listener.getsockname()[:2]
        address = format_address(bound_host, bound_port)
        logger.warning(
            "remote pdb waiting for a client",
            address=address,
            attach=_attach_command(bound_host, bound_port),
            wait_s=round(wait, 1),
            kill_timer=timer.describe() if timer is not None else None,
            **where,
        )
        listener.settimeout(wait)
        try:
            conn, peer = listener.accept()
        except TimeoutError:
            logger.warning(
                "remote pdb: nobody attached, the code continues",
                address=address,
                waited_s=round(wait, 1),
                **where,
            )
            return None
    finally:
        # One client per session: a second one is refused, not queued.
        listener.close()
    conn.settimeout(None)
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        pass
    peer_text = format_address(str(peer[0]), int(peer[1]))
    session = _Session(
        _Channel(conn), settings, address=address, peer=peer_text, request_id=request_id
    )
    # Again: the wait for the client used up some of the worker's time.
    timer = worker_kill_timer(info)
    session.channel.write(_banner(info, request_id, timer, address))
    if header is not None:
        session.channel.write(header + "\n")
    logger.warning(
        "remote pdb client attached", address=address, peer=peer_text, **where
    )
    if pdb_session_started.receivers:
        send_safely(
            pdb_session_started,
            session,
            request_id=request_id,
            pid=os.getpid(),
            thread=session.thread_name,
            address=address,
            peer=peer_text,
        )
    return session


def _printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x1b``), for a terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _banner(
    info: RequestInfo | None,
    request_id: str | None,
    timer: KillTimer | None,
    address: str,
) -> str:
    request = request_id or "-"
    if info is not None:
        # The path as the client sent it may hold terminal escape sequences.
        request += f" {_printable(info.method)} {_printable(info.path)}"
    if timer is None:
        timeout = "no gunicorn or uWSGI worker timeout found"
    else:
        timeout = timer.describe()
    lines = [
        f"flask_diag remote pdb on {address}",
        f"process: pid {os.getpid()} ({_process_label()})",
        f"thread:  {thread_name()}",
        f"request: {request}",
        f"timeout: {timeout}",
        f"proxy:   {_PROXY_NOTE}",
        "end:     'continue' with no breakpoints left ends the session;"
        " 'quit' detaches and the code continues",
    ]
    return "".join(f"*** {line}\n" for line in lines)
