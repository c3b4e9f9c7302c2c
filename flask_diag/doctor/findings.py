"""Findings of the deployment doctor and the table of every check.

Each check has a stable id (``DIAG001``...), a fixed level and a fix. A
:class:`Finding` is one occurrence: the check, a one-line message and where
(file and line; ``None`` for what has no source, such as a server option
given on the command line)::

    >>> finding = Finding.of("DIAG003", "app.debug is on", file="app.py", line=12)
    >>> finding.level, finding.location
    ('error', 'app.py:12')

Ids are never reused nor renumbered: CI configurations ``--ignore`` them.
"""

from __future__ import annotations

import dataclasses
import typing as t

__all__ = ["CHECKS", "LEVELS", "Check", "Finding"]

Level = t.Literal["error", "warning", "info"]

#: Levels from the most to the least severe.
LEVELS: tuple[Level, ...] = ("error", "warning", "info")


class Check(t.NamedTuple):
    """One check: its id, level, a short title and the fix."""

    id: str
    level: Level
    kind: t.Literal["runtime", "static", "server"]
    title: str
    fix: str


_TABLE: tuple[Check, ...] = (
    # -- runtime: the imported app ----------------------------------------
    Check(
        "DIAG001",
        "error",
        "runtime",
        "No secret key, and the app uses sessions",
        "Set app.secret_key (or SECRET_KEY) at import time, from the "
        "environment: app.secret_key = os.environ['SECRET_KEY'].",
    ),
    Check(
        "DIAG002",
        "warning",
        "runtime",
        "Weak or placeholder secret key",
        "Use a long random key kept out of the source: "
        "python -c 'import secrets; print(secrets.token_hex())'.",
    ),
    Check(
        "DIAG003",
        "error",
        "runtime",
        "Debug mode is on",
        "Never turn debug on in the deployed app; use FLASK_DEBUG=1 with "
        "'flask run' on your machine only.",
    ),
    Check(
        "DIAG004",
        "error",
        "runtime",
        "werkzeug's DebuggedApplication is reachable",
        "Remove the DebuggedApplication wrapper (and WERKZEUG_DEBUG_PIN=off); "
        "for a debugging session use flask_diag's gated debugger "
        "(FLASK_DIAG_DEBUGGER=on, one worker, PIN, loopback only).",
    ),
    Check(
        "DIAG005",
        "warning",
        "runtime",
        "flask_diag's debugger is on",
        "It runs code for whoever has the PIN: switch FLASK_DIAG_DEBUGGER off "
        "as soon as the debugging session is over.",
    ),
    Check(
        "DIAG006",
        "error",
        "runtime",
        "flask_diag settings that refuse to start",
        "Correct the variable or config key named in the message.",
    ),
    Check(
        "DIAG007",
        "warning",
        "runtime",
        "HTTPS deployment without SESSION_COOKIE_SECURE",
        "app.config['SESSION_COOKIE_SECURE'] = True, so the session cookie "
        "never travels over plain HTTP.",
    ),
    Check(
        "DIAG008",
        "warning",
        "runtime",
        "SESSION_COOKIE_HTTPONLY is off",
        "Leave SESSION_COOKIE_HTTPONLY on (Flask's default): scripts never "
        "need the session cookie.",
    ),
    Check(
        "DIAG009",
        "warning",
        "runtime",
        "HTTPS deployment without SESSION_COOKIE_SAMESITE",
        "app.config['SESSION_COOKIE_SAMESITE'] = 'Lax' (or 'Strict').",
    ),
    Check(
        "DIAG010",
        "warning",
        "runtime",
        "TESTING is on",
        "Set TESTING only in the test suite's app configuration.",
    ),
    # -- static: the app's own source ---------------------------------------
    Check(
        "DIAG011",
        "error",
        "static",
        "Set up only under if __name__ == '__main__' (pitfall 1)",
        "Move the line above the __main__ block (or into the app factory): "
        "gunicorn and uWSGI import the module, they never run it as __main__.",
    ),
    Check(
        "DIAG012",
        "error",
        "static",
        "app.run() at import time",
        "Call app.run() only under if __name__ == '__main__': and let the "
        "server (gunicorn app:app) import the app.",
    ),
    Check(
        "DIAG013",
        "error",
        "static",
        "The development server is the deployment path",
        "Start a production server instead: gunicorn -w 4 app:app (or "
        "uWSGI, waitress); 'python app.py' and 'flask run' are for your "
        "machine only.",
    ),
    Check(
        "DIAG014",
        "warning",
        "static",
        "Secret key written in the source",
        "Read it from the environment with no default: os.environ['SECRET_KEY'].",
    ),
    Check(
        "DIAG015",
        "warning",
        "static",
        "Secret key generated at import (one per worker process)",
        "Every worker and every restart gets another key, so sessions "
        "signed by one worker fail in the others: read one fixed key from "
        "the environment.",
    ),
    Check(
        "DIAG016",
        "warning",
        "static",
        "Module-level state mutated by request handlers (pitfall 7)",
        "Keep shared state in a database, a cache server (Redis) or a file "
        "every worker reads; each worker process has its own copy of a "
        "module-level container.",
    ),
    Check(
        "DIAG017",
        "error",
        "static",
        "Module-global SQLAlchemy Session (pitfall 6)",
        "Use scoped_session(sessionmaker(...)) (or Flask-SQLAlchemy's "
        "db.session) and call session.remove() in teardown_appcontext.",
    ),
    Check(
        "DIAG018",
        "warning",
        "static",
        "scoped_session never removed",
        "Register @app.teardown_appcontext def remove_session(exc=None): "
        "Session.remove().",
    ),
    Check(
        "DIAG019",
        "warning",
        "static",
        "MySQL engine without pool_recycle or pool_pre_ping",
        "create_engine(url, pool_pre_ping=True, pool_recycle=3600): MySQL "
        "drops connections idle for wait_timeout (8 hours).",
    ),
    Check(
        "DIAG020",
        "warning",
        "static",
        "A request calls this app's own URL (pitfall 2)",
        "Call the function behind the route directly; a server that serves "
        "one request at a time deadlocks on this call.",
    ),
    Check(
        "DIAG021",
        "warning",
        "static",
        "A URL of this app is handed to another service (pitfall 2)",
        "Send the data itself (the file's bytes) or a URL on another host "
        "(object storage, a CDN); the other service's fetch comes back to "
        "this server while it waits.",
    ),
    Check(
        "DIAG022",
        "warning",
        "static",
        "breakpoint() or set_trace() left in the code (pitfall 4)",
        "Remove it; to debug one deployment use flask_diag.set_trace with "
        "FLASK_DIAG_PDB=on (see the pdb page).",
    ),
    Check(
        "DIAG023",
        "warning",
        "static",
        "An error answered with status 200 (pitfall 5)",
        "Return the error with its status, e.g. "
        "raise DiagHTTPError(422, 'invalid_car', msg) or "
        "return jsonify(error=msg), 422.",
    ),
    # -- server: the given command line or configuration ----------------------
    Check(
        "DIAG024",
        "error",
        "server",
        "A debugger under several worker processes",
        "Run the debugging deployment with one worker (gunicorn -w 1, uWSGI "
        "processes = 1): the debugger keeps its frames in one process's "
        "memory.",
    ),
    Check(
        "DIAG025",
        "error",
        "server",
        "One request at a time, and the app calls back into itself",
        "Give the server room for a second request (threads or workers), and "
        "remove the call back (see DIAG020/DIAG021).",
    ),
    Check(
        "DIAG026",
        "info",
        "server",
        "The server serves one request at a time",
        "One slow request blocks every other: add workers or threads.",
    ),
    Check(
        "DIAG027",
        "warning",
        "server",
        "Worker timeout too short for a debugging session",
        "Raise the timeout for the debugging deployment (gunicorn --timeout "
        "3600, uWSGI harakiri = 3600), or the worker is killed mid-session.",
    ),
    Check(
        "DIAG028",
        "warning",
        "server",
        "uWSGI without threads",
        "Add enable-threads = true: without it no Python thread runs (the "
        "flask_diag watchdog, Sentry's transport, your own).",
    ),
    Check(
        "DIAG029",
        "warning",
        "server",
        "No worker timeout",
        "Set a timeout (uWSGI harakiri = 60, gunicorn --timeout 60): a stuck "
        "request otherwise holds its worker forever.",
    ),
)

#: Every check by id, in id order.
CHECKS: dict[str, Check] = {check.id: check for check in _TABLE}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem found: which check, what exactly, where, and the fix."""

    file: str | None
    line: int | None
    id: str
    level: Level
    message: str
    fix: str

    @classmethod
    def of(
        cls,
        check_id: str,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
    ) -> Finding:
        """A finding of check ``check_id`` (its level and fix)."""
        check = CHECKS[check_id]
        return cls(
            file=file,
            line=line,
            id=check_id,
            level=check.level,
            message=message,
            fix=check.fix,
        )

    @property
    def location(self) -> str:
        """``file:line``, ``file``, or ``-`` when there is no file."""
        if self.file is None:
            return "-"
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def sort_key(self) -> tuple[int, str, int, str, str]:
        """Errors first, then by file, line and id: a stable order."""
        rank = LEVELS.index(self.level)  # 0 is the most severe
        return (rank, self.file or "", self.line or 0, self.id, self.message)

    def as_dict(self) -> dict[str, object]:
        """The JSON form (see the docs page for the schema)."""
        return {
            "id": self.id,
            "level": self.level,
            "message": self.message,
            "file": self.file,
            "line": self.line,
            "fix": self.fix,
        }
