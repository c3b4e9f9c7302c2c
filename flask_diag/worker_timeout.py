"""Worker timeouts
===============

When will the server kill the worker running this code? A request paused in
a debugger (or stuck) is still a request to the server: gunicorn kills a sync
worker that misses its heartbeat for ``--timeout`` seconds, uWSGI kills one
that runs a request longer than ``harakiri``. :func:`worker_kill_timer`
reads both from the running server::

    from flask_diag.worker_timeout import worker_kill_timer

    timer = worker_kill_timer()
    if timer is not None and timer.kills:
        print(timer.describe())  # gunicorn --timeout 30, SyncWorker (from ...

The remote pdb (:mod:`flask_diag.pdb`) shows it in its banner and ends its
wait for a client before it.

.. autofunction:: worker_kill_timer
.. autoclass:: KillTimer
   :members:
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import typing as t

from .context import RequestInfo
from .server import _uwsgi_value

__all__ = ["KillTimer", "worker_kill_timer"]


class KillTimer(t.NamedTuple):
    """When the server will kill the worker a session pauses."""

    #: ``"gunicorn"`` or ``"uwsgi"``.
    server: str
    #: The setting as written: ``"--timeout 30"``, ``"harakiri 60"``.
    setting: str
    #: Its value in seconds.
    seconds: float
    #: Seconds left before the kill, when known.
    left: float | None
    #: Where the value was read: ``"the running worker"``, ``"the command line"``.
    source: str
    #: ``False`` when the setting does not kill a paused request thread
    #: (gunicorn's gthread worker uses ``--timeout`` as a heartbeat only).
    kills: bool

    def describe(self) -> str:
        """One line for the banner and the log."""
        head = f"{self.server} {self.setting} (from {self.source})"
        if not self.seconds:
            return f"{head}: a long request does not get this worker killed"
        if not self.kills:
            return (
                f"{head}: a heartbeat of the worker's main loop only; this paused"
                " request thread is not killed"
            )
        if self.left is None:
            return (
                f"{head}: the worker is killed at most {self.seconds:g} s after the"
                " request started"
            )
        return (
            f"{head}: this worker is killed in about {max(self.left, 0):.0f} s,"
            " the client then gets a 502 or a reset connection; restart with a"
            " longer timeout to debug longer"
        )


def worker_kill_timer(info: RequestInfo | None = None) -> KillTimer | None:
    """The worker timeout of the server running this code, if any.

    - **gunicorn**: the worker object is found through the signal handlers it
      installs in each worker (``signal.getsignal(SIGTERM)`` is its bound
      ``handle_exit``): ``worker.cfg.timeout`` is the effective value (command
      line, ``GUNICORN_CMD_ARGS`` and config file merged), and the time left
      comes from the heartbeat file the arbiter watches
      (``worker.tmp.last_update()``). When the handlers were replaced, the
      command line (``sys.argv``, then ``GUNICORN_CMD_ARGS``) is parsed
      instead, default 30 s.
    - **uWSGI**: ``uwsgi.opt["harakiri"]``, counted from the start of the
      request (``info.started``).

    :param info: the current request, for the time already spent.
    """
    # ``uwsgi`` exists only inside uWSGI; gunicorn may be merely imported.
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None:
        return _uwsgi_timer(uwsgi, info)
    if "gunicorn" in sys.modules:
        return _gunicorn_timer()
    return None


def _gunicorn_timer() -> KillTimer | None:
    # Imported by gunicorn itself in its workers; never imported here.
    Worker = getattr(sys.modules.get("gunicorn.workers.base"), "Worker", None)
    if not isinstance(Worker, type):
        return None
    worker: t.Any = None
    for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGUSR1):
        owner = getattr(signal.getsignal(signum), "__self__", None)
        if isinstance(owner, Worker):
            worker = owner
            break
    if worker is None:
        # The app replaced gunicorn's handlers: read the command line, as
        # gunicorn did (it wins over GUNICORN_CMD_ARGS; a config file is not
        # read here). ``gunicorn`` and ``python -m gunicorn`` both put
        # gunicorn in ``sys.argv[0]``; anything else is not its worker.
        if not sys.argv or "gunicorn" not in sys.argv[0]:
            return None
        seconds = _timeout_from_args(sys.argv[1:])
        if seconds is None:
            seconds = _timeout_from_args(
                os.environ.get("GUNICORN_CMD_ARGS", "").split()
            )
        if seconds is None:
            seconds = 30.0  # gunicorn's default
        return KillTimer(
            "gunicorn",
            f"--timeout {seconds:g}",
            seconds,
            None,
            "the command line",
            True,
        )
    seconds = float(worker.cfg.timeout or 0)
    kills = type(worker).__name__ != "ThreadWorker"
    left = None
    if seconds:
        try:
            # The arbiter kills when ``monotonic() - last_update() > timeout``.
            elapsed = time.monotonic() - float(worker.tmp.last_update())
        except Exception:
            elapsed = -1.0
        # A gunicorn that stamps the heartbeat with another clock gives
        # nonsense: then the time left is unknown, not wrong.
        if 0 <= elapsed <= seconds + 60:
            left = seconds - elapsed
    setting = f"--timeout {seconds:g}" if seconds else "--timeout 0 (off)"
    return KillTimer(
        "gunicorn",
        f"{setting}, {type(worker).__name__}",
        seconds,
        left,
        "the running worker",
        kills and bool(seconds),
    )


class _GunicornParser(argparse.ArgumentParser):
    def error(self, message: str) -> t.NoReturn:
        # argparse prints usage and exits; a caller here wants an exception.
        raise ValueError(message)


def parse_gunicorn_args(args: list[str]) -> argparse.Namespace:
    """The gunicorn options flask_diag reads, parsed as gunicorn parses them
    (``-t 45``, ``--timeout=7``, ``-t90``; the last one wins); other
    arguments are ignored. Shared with :mod:`flask_diag.doctor`.

    :raises ValueError: for a value gunicorn refuses (``-w four``), naming it.
    """
    parser = _GunicornParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    parser.add_argument("-w", "--workers", type=int)
    parser.add_argument("-k", "--worker-class", dest="worker_class")
    parser.add_argument("--threads", type=int)
    parser.add_argument("-t", "--timeout", type=float)
    parser.add_argument("-c", "--config")
    parser.add_argument("--certfile")
    try:
        known, _ = parser.parse_known_args(args)
    except argparse.ArgumentError as exc:
        raise ValueError(str(exc)) from None
    return known


def _timeout_from_args(args: list[str]) -> float | None:
    try:
        timeout: float | None = parse_gunicorn_args(args).timeout
    except ValueError:
        return None  # gunicorn would not have started with it
    return timeout


def _uwsgi_timer(uwsgi: t.Any, info: RequestInfo | None) -> KillTimer | None:
    try:
        raw = _uwsgi_value(uwsgi.opt.get("harakiri"))
    except Exception:
        return None
    try:
        seconds = float(raw) if raw is not None else 0.0
    except ValueError:
        return None
    if not seconds:
        return KillTimer("uwsgi", "harakiri off", 0.0, None, "uwsgi.opt", False)
    left = None
    if info is not None:
        left = seconds - (time.perf_counter() - info.started)
    return KillTimer("uwsgi", f"harakiri {seconds:g}", seconds, left, "uwsgi.opt", True)
