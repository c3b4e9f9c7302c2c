"""What a process may safely ask about its other threads.

The watchdog and the loopback guard read other threads' stacks with
``sys._current_frames()``, from their monitor thread. That is safe wherever
the process was not forked, or was forked with Python's fork hooks
(``os.fork()``: gunicorn, multiprocessing), which drop the parent's threads
from the child's interpreter.

uWSGI forks its workers at the C level and, by default, skips those hooks
(unless run with ``--py-call-uwsgi-fork-hooks``, ``--py-call-osafterfork``
or ``--lazy-apps``). The threads its master ran at the fork then stay
listed in every worker, without a stack, and ``sys._current_frames()``
crashes the worker (SIGSEGV), with or without flask_diag. So:

- :func:`current_frames` returns ``None`` in such a worker, once it finds a
  thread of the master listed there, and flask_diag logs why, once;
- :func:`may_start_threads` is false in a uWSGI process that has not yet
  served as a worker (its master, importing the app), so that flask_diag
  never starts a thread there: a warm-up request at import starts none.

::

    frames = current_frames()
    if frames is None:
        ...  # no stacks here: list requests instead
"""

from __future__ import annotations

import os
import sys
import threading
import typing as t

from .internal import logger
from .internal import report_internal_error

if t.TYPE_CHECKING:
    from types import FrameType

__all__ = ["current_frames", "frames_unavailable", "may_start_threads"]

#: The process that imported flask_diag, and the last one forked from it
#: with Python's fork hooks: in both, the interpreter lists only live threads.
_import_pid = os.getpid()
_hooked_pid = -1
#: The process :data:`_unavailable` was found for.
_checked_pid = -1
_unavailable: str | None = None
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _hooked_pid, _lock
    _hooked_pid = os.getpid()
    _lock = threading.Lock()  # the parent's may have been held


os.register_at_fork(after_in_child=_after_fork_in_child)


def frames_unavailable() -> str | None:
    """Why ``sys._current_frames()`` would crash this process, or ``None``
    where it is safe. Found once per process (the first answer is logged)."""
    global _checked_pid, _unavailable
    pid = os.getpid()
    if pid == _checked_pid:
        return _unavailable
    with _lock:  # the first request and the monitor thread may ask at once
        if pid == _checked_pid:
            return _unavailable
        try:
            reason = _left_threads_reason(pid)
        except Exception as exc:  # unknown internals: assume the worst
            report_internal_error("listing the threads of this process", exc)
            reason = "its threads could not be listed"
        if reason is not None:
            _log_unavailable(reason)
        _unavailable = reason
        _checked_pid = pid
    return _unavailable


def _log_unavailable(reason: str) -> None:
    try:
        logger.warning(
            "thread stacks unavailable",
            reason=reason,
            consequence=(
                "flask_diag reads no thread's stack in this process: the"
                " watchdog reports stuck requests without their stack and"
                " the loopback guard does not watch callback waits"
            ),
            fix=(
                "run uWSGI with --py-call-uwsgi-fork-hooks (or"
                " --lazy-apps), or start no thread at import"
            ),
        )
    except Exception as exc:  # a failing log sink changes nothing here
        report_internal_error("logging unavailable thread stacks", exc)


def current_frames() -> dict[int, FrameType] | None:
    """``sys._current_frames()``, or ``None`` where it would crash (see the
    module's documentation)."""
    if frames_unavailable() is not None:
        return None
    return sys._current_frames()


def may_start_threads() -> bool:
    """False in a uWSGI process that has not served as a worker yet: a
    master forks its workers without Python's fork hooks, and every thread
    it runs then would stay listed in them."""
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return True
    try:
        return bool(uwsgi.worker_id() != 0)
    except Exception:  # not uWSGI's module after all
        return True


def _left_threads_reason(pid: int) -> str | None:
    if pid in (_import_pid, _hooked_pid):
        return None  # not forked since the import, or with Python's hooks
    # Forked without the hooks: the parent's threads are still listed here,
    # by their native ids, which are none of this process's tasks. (Not by
    # ``ident``: a new thread here may reuse a listed one's.) The thread that
    # forked, uWSGI's main thread, goes on here under a new native id.
    tasks = f"/proc/{pid}/task"
    live = set(os.listdir(tasks)) if os.path.isdir(tasks) else None
    main = threading.main_thread()
    left = [
        thread
        for thread in list(threading._active.values())  # type: ignore[attr-defined]
        if thread is not main and (live is None or str(thread.native_id) not in live)
    ]
    if not left:
        return None
    return (
        f"this process ({pid}) was forked without Python's fork hooks (uWSGI's"
        f" default) while its parent ran {len(left)} other thread(s): they are"
        " still listed here, and sys._current_frames() would crash it"
    )
