"""What every benchmark shares: the app, the timers, the rounds, the output.

Not a benchmark itself (``scripts/test.sh`` runs ``bench_*.py`` only). A
benchmark builds its variants, times them with :func:`best_of_apps` (or
:func:`best_of` when a variant needs its own environ) and prints them with
:func:`header` and :func:`ratio_table`::

    args = parser(__doc__).parse_args(argv)
    rounds, n = (2, 200) if args.quick else (15, 3000)
    quiet_structlog()
    best = best_of_apps({"bare": make_app(), "mine": mine}, rounds, n)
    header(rounds, n)
    write_json(args.json, {"direct": ratio_table("direct", best, width=20)})

The method: variants are interleaved batch by batch (:data:`BATCH` requests)
and each keeps its best batch, which cancels most of the machine's noise;
every ratio is against ``bare`` measured in the same run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
import typing as t

import structlog
from flask import Flask
from werkzeug.test import EnvironBuilder

Environ = dict[str, t.Any]
WSGIApp = t.Callable[[Environ, t.Callable[..., t.Any]], t.Iterable[bytes]]
Timer = t.Callable[[WSGIApp, Environ, int], float]


def make_app() -> Flask:
    """The hello-world Flask app every Flask variant is built from."""
    app = Flask("bench")

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    return app


def hello_environ() -> Environ:
    """A prepared ``GET /`` environ (copied for each request by the timers)."""
    return EnvironBuilder("/").get_environ()


def ignore_response(
    status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
) -> None:
    """A ``start_response`` that keeps nothing: no server in the way."""
    return None


def time_direct(app: WSGIApp, environ: Environ, n: int) -> float:
    """Seconds per request of ``app(environ, start_response)``, the body
    consumed and closed: no test client, no socket."""
    copy = environ.copy
    start = time.perf_counter()
    for _ in range(n):
        it = app(copy(), ignore_response)
        for _chunk in it:
            pass
        it.close()  # type: ignore[attr-defined]
    return (time.perf_counter() - start) / n


#: Requests per timed batch: short enough that most batches see no
#: interruption of the machine, long enough to dwarf the timer's own cost.
BATCH = 100


def best_of(
    trials: t.Mapping[str, t.Callable[[int], float]], rounds: int, n: int
) -> dict[str, float]:
    """Each trial's best seconds per request over ``rounds`` rounds of ``n``
    requests, after a warm-up (which also fills pools).

    A round is cut into batches of :data:`BATCH` requests, the trials
    interleaved batch by batch, and each trial keeps its best batch: with
    many short batches the best one is rarely disturbed by the machine, so
    ratios move less between runs than with a few long rounds.
    """
    for trial in trials.values():
        trial(max(n // 10, 5))
    batch = min(n, BATCH)
    best = {name: float("inf") for name in trials}
    for _ in range(rounds * max(n // batch, 1)):
        for name, trial in trials.items():
            best[name] = min(best[name], trial(batch))
    return best


def best_of_apps(
    apps: t.Mapping[str, WSGIApp],
    rounds: int,
    n: int,
    *,
    timer: Timer = time_direct,
    environ: Environ | None = None,
) -> dict[str, float]:
    """:func:`best_of` for apps timed by ``timer`` on one environ
    (:func:`hello_environ` by default)."""
    environ = hello_environ() if environ is None else environ
    return best_of(
        {name: functools.partial(timer, app, environ) for name, app in apps.items()},
        rounds,
        n,
    )


def quiet_structlog() -> None:
    """structlog renders nothing: a middleware binds its context as in an app
    that logs nothing on the measured route."""
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars],
        logger_factory=structlog.ReturnLoggerFactory(),
    )


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The command line every benchmark has: ``--quick`` and ``--json``."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures")
    return parser


def header(rounds: int, n: int) -> None:
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"pid {os.getpid()}, {rounds} rounds of {n} requests, best batch of "
        f"{min(n, BATCH)} kept"
    )
    print(f"flask_diag: {speedups_in_use()}")


def speedups_in_use() -> str:
    """Which flask_diag modules this run measures compiled (the figures of
    a pure-Python install differ: ``FLASK_DIAG_SPEEDUPS=off`` measures it)."""
    import flask_diag.speedups

    compiled = flask_diag.speedups.compiled_modules()
    if compiled:
        return f"compiled speedups ({', '.join(compiled)})"
    return "Python sources only (no compiled speedups)"


def ratio_table(
    group: str, best: t.Mapping[str, float], width: int
) -> dict[str, dict[str, float]]:
    """Print ``best`` (seconds per request) and its ratios to ``best["bare"]``
    under ``[group]``; return the figures (microseconds and ratio)."""
    bare = best["bare"]
    indent = " " * (len(group) + 3)
    print(f"\n[{group}] {'variant':<{width}} {'us/request':>10} {'ratio':>7}")
    figures: dict[str, dict[str, float]] = {}
    for name, seconds in best.items():
        figures[name] = {"us": seconds * 1e6, "ratio": seconds / bare}
        print(f"{indent}{name:<{width}} {seconds * 1e6:>10.2f} {seconds / bare:>7.3f}")
    return figures


def write_json(path: str | None, figures: t.Mapping[str, t.Any]) -> None:
    """Write ``figures`` to ``path`` (``--json``); nothing when it is None."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=2)
