"""Per-request cost of flask_diag against the bare app, measured in one run.

Each variant is the same hello-world Flask app; the request is a direct WSGI
call with a prepared environ (no test client, no socket), so the ratio shows
what the middleware adds to the app's own work. Variants are interleaved
round by round and the best round of each is kept, which cancels most of the
machine's noise.

    python benchmarks/bench_stack.py            # full run, prints a table
    python benchmarks/bench_stack.py --quick    # a smoke run (used by the tests)
    python benchmarks/bench_stack.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import typing as t

import structlog
from flask import Flask
from werkzeug.test import EnvironBuilder

from flask_diag import RequestTagging
from flask_diag import wrap

WSGIApp = t.Callable[[dict[str, t.Any], t.Callable[..., t.Any]], t.Iterable[bytes]]


def make_app() -> Flask:
    app = Flask("bench")

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    return app


def _start_response(status: str, headers: list[tuple[str, str]], exc_info=None):  # type: ignore[no-untyped-def]
    return None


def variants() -> dict[str, WSGIApp]:
    # No FLASK_DIAG_* variable may change what is measured.
    clean_env: dict[str, str] = {}
    return {
        "bare": make_app().wsgi_app,
        "tagging": RequestTagging(make_app().wsgi_app, worker_headers=True),
        "full stack": wrap(make_app().wsgi_app, environ=clean_env),
    }


def time_one(app: WSGIApp, environ: dict[str, t.Any], n: int) -> float:
    copy = environ.copy
    start = time.perf_counter()
    for _ in range(n):
        it = app(copy(), _start_response)
        for _chunk in it:
            pass
        it.close()  # type: ignore[attr-defined]
    return (time.perf_counter() - start) / n


def run(rounds: int, n: int) -> dict[str, float]:
    # Logging stays unconfigured-but-quiet: the middleware binds context,
    # nothing renders, as in an app that logs nothing on this route.
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    environ = EnvironBuilder("/").get_environ()
    apps = variants()
    for app in apps.values():  # warm up
        time_one(app, environ, max(n // 10, 10))
    best = {name: float("inf") for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            best[name] = min(best[name], time_one(app, environ, n))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    rounds, n = (2, 200) if args.quick else (15, 4000)
    best = run(rounds, n)
    bare = best["bare"]
    print(f"python {sys.version.split()[0]}, pid {os.getpid()}, {rounds} rounds x {n}")
    print(f"{'variant':<14} {'us/request':>11} {'ratio':>7}")
    for name, seconds in best.items():
        print(f"{name:<14} {seconds * 1e6:>11.2f} {seconds / bare:>7.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {name: {"us": s * 1e6, "ratio": s / bare} for name, s in best.items()},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
