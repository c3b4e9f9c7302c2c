"""Cost of the session-teardown check, against the bare app, in one run.

A Flask app whose request runs one query (``SELECT 1`` on a pooled
connection: ``with engine.connect()``, or through a ``scoped_session``
removed at teardown) on a SQLite file database, or on PostgreSQL with
``--url postgresql+psycopg://...``. Variants, interleaved batch by batch,
best batch kept (the ``direct`` harness of ``bench_stack.py``, in
``_harness.py``: a WSGI call with a prepared environ, the body consumed and
closed):

- **bare**: the app without flask_diag;
- **check, nothing watched**: :class:`~flask_diag.teardown.TeardownCheck`
  around it, no engine watched (its cost in every default stack);
- **check, engine watched**: the same with the engine watched (and the
  scoped_session, for the session variant): the issue's target is at most
  5 % over **bare**;
- **Diag, nothing watched** / **Diag, engine watched**: the whole default
  stack, without and with the engine watched: what watching adds as used.

    python benchmarks/bench_teardown.py            # full run, prints a table
    python benchmarks/bench_teardown.py --quick    # a smoke run (SQLite)
    python benchmarks/bench_teardown.py --url postgresql+psycopg://u@127.0.0.1/db
"""

from __future__ import annotations

import os
import sys
import tempfile
import typing as t

from _harness import best_of_apps
from _harness import header
from _harness import parser
from _harness import quiet_structlog
from _harness import ratio_table
from _harness import write_json
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy import Engine
from sqlalchemy import text
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import sessionmaker

from flask_diag import Diag
from flask_diag.teardown import TeardownCheck


def make_app(engine: Engine, mode: str, kind: str) -> Flask:
    """``mode``: bare, nothing, watched, diag, "diag, watched"; ``kind``:
    connect, session."""
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

    if mode.startswith("diag"):
        diag = Diag(app)  # the whole default stack
        if mode == "diag, watched":
            diag.watch_engine(engine)
            if kind == "session":
                diag.watch_session(db_session)
    elif mode != "bare":
        check = TeardownCheck(app.wsgi_app)
        if mode == "watched":
            check.watch_engine(engine)
            if kind == "session":
                check.watch_session(db_session)
        app.wsgi_app = check  # type: ignore[method-assign]
    return app


def run(url: str, rounds: int, n: int) -> dict[str, dict[str, float]]:
    quiet_structlog()
    results = {}
    for kind in ("connect", "session"):
        # One engine per variant: listeners on one must not slow another.
        modes = {
            "bare": "bare",
            "check, nothing watched": "nothing",
            "check, engine watched": "watched",
            "Diag, nothing watched": "diag",
            "Diag, engine watched": "diag, watched",
        }
        engines = {mode: create_engine(url) for mode in modes.values()}
        apps = {
            name: make_app(engines[mode], mode, kind) for name, mode in modes.items()
        }
        # The warm-up also fills each engine's pool.
        results[f"one query ({kind})"] = best_of_apps(apps, rounds, n)
        for engine in engines.values():
            engine.dispose()
    return results


def report(results: dict[str, dict[str, float]]) -> dict[str, dict[str, t.Any]]:
    return {
        group: ratio_table(group, timings, width=26)
        for group, timings in results.items()
    }


def main(argv: list[str] | None = None) -> int:
    cli = parser(__doc__)
    cli.add_argument("--url", help="a SQLAlchemy URL (default: a SQLite file)")
    args = cli.parse_args(argv)
    rounds, n = (2, 100) if args.quick else (30, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{os.path.join(tmp, 'bench.db')}"
        results = run(url, rounds, n)
    header(rounds, n)
    write_json(args.json, report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
