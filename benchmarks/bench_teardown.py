"""Cost of the session-teardown check, against the bare app, in one run.

A Flask app whose request runs one query (``SELECT 1`` on a pooled
connection: ``with engine.connect()``, or through a ``scoped_session``
removed at teardown) on a SQLite file database, or on PostgreSQL with
``--url postgresql+psycopg://...``. Variants, interleaved round by round,
best round kept (the harness of ``bench_stack.py``: a WSGI call with a
prepared environ, the body consumed and closed):

- **bare**: the app without flask_diag;
- **check, nothing watched**: :class:`~flask_diag.teardown.TeardownCheck`
  around it, no engine watched (its cost in every default stack);
- **check, engine watched**: the same with the engine watched (and the
  scoped_session, for the session variant): the issue's target is at most
  5 % over **bare**.

    python benchmarks/bench_teardown.py            # full run, prints a table
    python benchmarks/bench_teardown.py --quick    # a smoke run (SQLite)
    python benchmarks/bench_teardown.py --url postgresql+psycopg://u@127.0.0.1/db
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import typing as t

import structlog
from bench_stack import time_direct
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy import Engine
from sqlalchemy import text
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker
from werkzeug.test import EnvironBuilder

from flask_diag.teardown import TeardownCheck


def make_app(engine: Engine, mode: str, kind: str) -> Flask:
    """``mode``: bare, nothing, watched; ``kind``: connect, session."""
    app = Flask("bench_teardown")
    db_session = scoped_session(sessionmaker(bind=engine))

    @app.teardown_appcontext
    def remove(exception: BaseException | None = None) -> None:
        db_session.remove()

    if kind == "connect":

        @app.get("/")
        def index() -> str:
            with engine.connect() as conn:
                return str(conn.execute(text("SELECT 1")).scalar_one())

    else:

        @app.get("/")
        def index() -> str:
            return str(db_session.execute(text("SELECT 1")).scalar_one())

    if mode != "bare":
        check = TeardownCheck(app.wsgi_app)
        if mode == "watched":
            check.watch_engine(engine)
            if kind == "session":
                check.watch_session(db_session)
        app.wsgi_app = check  # type: ignore[method-assign]
    return app


def measure(apps: dict[str, Flask], rounds: int, n: int) -> dict[str, float]:
    environ = EnvironBuilder("/").get_environ()
    for app in apps.values():  # warm up (and fill the pool)
        time_direct(app, environ, max(n // 10, 5))
    best = {name: float("inf") for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            best[name] = min(best[name], time_direct(app, environ, n))
    return best


def run(url: str, rounds: int, n: int) -> dict[str, dict[str, float]]:
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    results = {}
    for kind in ("connect", "session"):
        # One engine per variant: listeners on one must not slow another.
        engines = {mode: create_engine(url) for mode in ("bare", "nothing", "watched")}
        apps = {
            "bare": make_app(engines["bare"], "bare", kind),
            "check, nothing watched": make_app(engines["nothing"], "nothing", kind),
            "check, engine watched": make_app(engines["watched"], "watched", kind),
        }
        results[f"one query ({kind})"] = measure(apps, rounds, n)
        for engine in engines.values():
            engine.dispose()
    return results


def report(results: dict[str, dict[str, float]]) -> dict[str, dict[str, t.Any]]:
    figures: dict[str, dict[str, t.Any]] = {}
    for group, timings in results.items():
        bare = timings["bare"]
        print(f"\n{group}")
        for name, seconds in timings.items():
            ratio = seconds / bare
            print(f"  {name:<26} {seconds * 1e6:8.1f} us  {ratio:6.3f}x")
            figures.setdefault(group, {})[name] = {"us": seconds * 1e6, "ratio": ratio}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--url", help="a SQLAlchemy URL (default: a SQLite file)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    rounds, n = (2, 100) if args.quick else (30, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        results = run(url, rounds, n)
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"pid {os.getpid()}, best of {rounds} rounds of {n} requests"
    )
    figures = report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
