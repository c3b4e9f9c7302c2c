"""The remote pdb client
======================

A terminal client for :func:`flask_diag.set_trace` sessions, with what
``nc`` lacks: line editing and history (readline, saved in
``~/.flask_diag_pdb_history``), and reconnection: it waits for a breakpoint to
listen, and when a session ends it waits for the next one.

.. code-block:: console

    $ python -m flask_diag pdb 4444
    waiting for a breakpoint on 127.0.0.1:4444 (Ctrl-C to quit)
    *** flask_diag remote pdb on 127.0.0.1:4444
    *** process: pid 41203 (gunicorn worker)
    ...
    (Pdb) p request.path
    '/answer'
    (Pdb) c
    *** the session ended; waiting for the next breakpoint on 127.0.0.1:4444

The same from the Flask CLI: ``flask --app app diag pdb 4444``. ``--once``
exits after the first session, ``--wait SECONDS`` gives up when no
breakpoint listens in time. ``Ctrl-D`` at the prompt detaches (the request
continues) and exits.

The protocol is plain lines: the client prints what the server sends and,
when the server waits for input (its last line has no newline: a prompt such
as ``(Pdb)`` or ``>>>``), reads one line with :func:`input` and sends it.

.. autofunction:: attach
"""

from __future__ import annotations

import codecs
import os
import select
import socket
import sys
import time
import typing as t

from .exceptions import DiagConfigError
from .server import format_address
from .settings import OPTIONS
from .settings import Settings

__all__ = ["attach", "DEFAULT_HOST", "DEFAULT_PORT", "HISTORY_FILE"]

#: The remote pdb's defaults (:attr:`Settings.pdb_host`, :attr:`Settings.pdb_port`).
DEFAULT_HOST = Settings().pdb_host
DEFAULT_PORT = Settings().pdb_port
#: Where the command history is kept (mode 0600: it may hold secrets).
HISTORY_FILE = "~/.flask_diag_pdb_history"
#: Seconds between connection attempts while no breakpoint listens.
POLL_INTERVAL = 0.5
# pdb's and ``interact``'s prompts: known prompts are answered at once; any
# other unfinished line after this many quiet seconds is taken as a prompt.
_PROMPTS = ("(Pdb) ", ">>> ", "... ")
_QUIET = 0.2


def attach(
    port: int | None = None,
    *,
    host: str | None = None,
    once: bool = False,
    wait: float | None = None,
    history: str | None = HISTORY_FILE,
) -> int:
    """Attach to remote pdb sessions on ``host:port``; the exit status.

    :param port: default ``FLASK_DIAG_PDB_PORT``, else 4444.
    :param host: default ``FLASK_DIAG_PDB_HOST``, else ``127.0.0.1``.
    :param once: return after the first session instead of waiting for the
        next breakpoint.
    :param wait: give up (status 1) when no breakpoint listens within this
        many seconds; ``None`` waits until Ctrl-C (status 0).
    :param history: the readline history file; ``None`` keeps none.

    The session goes to ``sys.stdout`` and reads ``sys.stdin`` through
    :func:`input` (line editing when both are a terminal); status lines go to
    ``sys.stderr``. An invalid ``FLASK_DIAG_PDB_*`` variable is status 2.
    """
    out, err = sys.stdout, sys.stderr
    # Only the variables of what was not given: validated as the worker does.
    wanted = [OPTIONS["pdb_host"].env] if host is None else []
    if port is None:
        wanted.append(OPTIONS["pdb_port"].env)
    environ = {key: os.environ[key] for key in wanted if key in os.environ}
    try:
        settings = Settings.load(environ=environ)
    except DiagConfigError as exc:
        err.write(f"{exc}\n")
        return 2
    if host is None:
        host = settings.pdb_host
    if port is None:
        port = settings.pdb_port
        if port == 0:
            err.write(
                f"{OPTIONS['pdb_port'].env}=0 listens on any free port: give the"
                " port the breakpoint's log line names\n"
            )
            return 2
    history_path = os.path.expanduser(history) if history else None
    readline = _load_history(history_path)
    address = format_address(host, port)
    try:
        err.write(f"waiting for a breakpoint on {address} (Ctrl-C to quit)\n")
        err.flush()
        while True:
            sock = _connect(host, port, wait)
            if sock is None:
                err.write(f"no breakpoint listened on {address} within {wait:g} s\n")
                return 1
            with sock:
                outcome = _session(sock, out, readline, history_path)
            if outcome == "detached":
                err.write("*** detached; the request continues\n")
                return 0
            if once:
                err.write("*** the session ended\n")
                return 0
            err.write(
                f"*** the session ended; waiting for the next breakpoint on"
                f" {address} (Ctrl-C to quit)\n"
            )
            err.flush()
    except KeyboardInterrupt:
        # Ctrl-C while waiting, or while the server runs a command: closing
        # the connection detaches, the request continues.
        err.write("\nstopped\n")
        return 0


def _connect(host: str, port: int, wait: float | None) -> socket.socket | None:
    """Connect, retrying every :data:`POLL_INTERVAL` until ``wait`` runs out."""
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        try:
            return socket.create_connection((host, port), timeout=2.0)
        except OSError:
            pass
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(POLL_INTERVAL)


def _session(
    sock: socket.socket,
    out: t.TextIO,
    readline: t.Any,
    history_path: str | None,
) -> str:
    """Relay one session: ``"closed"`` by the server, or ``"detached"``."""
    sock.settimeout(None)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending = ""
    while True:
        if pending and (pending.endswith(_PROMPTS) or not _readable(sock, _QUIET)):
            prompt, pending = pending, ""
            try:
                line = input(prompt)
            except EOFError:  # Ctrl-D
                out.write("\n")
                return "detached"
            except KeyboardInterrupt:  # a fresh prompt, as in a shell
                out.write("\n")
                pending = prompt
                continue
            if line.strip():
                # After each command: a closed terminal loses none of them,
                # and a client that never got a prompt writes no file.
                _save_history(readline, history_path)
            try:
                sock.sendall((line + "\n").encode("utf-8"))
            except OSError:
                return "closed"
            continue
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            if pending:
                out.write(pending + "\n")
            out.flush()
            return "closed"
        pending += decoder.decode(data)
        head, newline, pending = pending.rpartition("\n")
        if newline:
            out.write(head + "\n")
            out.flush()


def _readable(sock: socket.socket, timeout: float) -> bool:
    readable, _, _ = select.select([sock], [], [], timeout)
    return bool(readable)


def _load_history(path: str | None) -> t.Any:
    """Import readline (line editing for :func:`input`) and load ``path``."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        return None
    readline.set_history_length(1000)
    if path:
        try:
            readline.read_history_file(path)
        except OSError:
            pass
    return readline


def _save_history(readline: t.Any, path: str | None) -> None:
    if readline is None or not path:
        return
    try:
        readline.write_history_file(path)
        os.chmod(path, 0o600)
    except OSError:
        pass
