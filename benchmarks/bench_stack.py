"""Per-request cost of flask_diag against the bare app, measured in one run.

Every variant is the same hello-world Flask app. Two harnesses:

- ``direct``: a WSGI call of ``app(environ, start_response)`` with a prepared
  environ, the body consumed and closed: no test client, no socket. The
  strictest view: the ratio shows what a middleware adds to the app's own
  work. This is the harness the targets refer to.
- ``client``: werkzeug's test client (builds the environ, parses the
  response), closer to what a request costs end to end in-process.

Two references are measured alongside for calibration:

- ``hand-written``: the minimal request-id middleware teams write themselves
  (``uuid4().hex``, ``clear_contextvars()`` + ``bind_contextvars()``, one
  response header);
- ``sentry-sdk Flask``: sentry-sdk's Flask integration, initialised with a
  transport that drops events (no network), without and with tracing.

Variants are interleaved round by round and each keeps its best round, which
cancels most of the machine's noise.

    python benchmarks/bench_stack.py            # full run, prints a table
    python benchmarks/bench_stack.py --quick    # a smoke run (the test script)
    python benchmarks/bench_stack.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import typing as t
import uuid

import structlog
from flask import Flask
from structlog.contextvars import bind_contextvars
from structlog.contextvars import clear_contextvars
from werkzeug.test import Client
from werkzeug.test import EnvironBuilder

from flask_diag import RequestTagging
from flask_diag import wrap

Environ = dict[str, t.Any]
WSGIApp = t.Callable[[Environ, t.Callable[..., t.Any]], t.Iterable[bytes]]


def make_app() -> Flask:
    app = Flask("bench")

    @app.get("/")
    def hello() -> str:
        return "Hello, World!"

    return app


class HandWrittenRequestId:
    """The reference: a minimal uuid4 + structlog request-id middleware."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(
        self, environ: Environ, start_response: t.Callable[..., t.Any]
    ) -> t.Iterable[bytes]:
        request_id = uuid.uuid4().hex
        clear_contextvars()
        bind_contextvars(request_id=request_id)

        def with_header(
            status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
        ) -> t.Any:
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        return self.app(environ, with_header)


def _start_response(
    status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
) -> None:
    return None


def flask_diag_variants() -> dict[str, Flask]:
    tagging = make_app()
    tagging.wsgi_app = RequestTagging(tagging.wsgi_app)  # type: ignore[method-assign]
    full = make_app()
    # The full default stack; no FLASK_DIAG_* variable may change it.
    full.wsgi_app = wrap(full.wsgi_app, environ={})  # type: ignore[method-assign]
    hand = make_app()
    hand.wsgi_app = HandWrittenRequestId(hand.wsgi_app)  # type: ignore[method-assign]
    return {
        "bare": make_app(),
        "tagging": tagging,
        "full stack": full,
        "hand-written": hand,
    }


def time_direct(app: Flask, environ: Environ, n: int) -> float:
    copy = environ.copy
    start = time.perf_counter()
    for _ in range(n):
        it = app(copy(), _start_response)
        for _chunk in it:
            pass
        it.close()  # type: ignore[attr-defined]
    return (time.perf_counter() - start) / n


def time_client(app: Flask, environ: Environ, n: int) -> float:
    client = Client(app)
    start = time.perf_counter()
    for _ in range(n):
        client.get("/").close()
    return (time.perf_counter() - start) / n


HARNESSES = {"direct": time_direct, "client": time_client}


def measure(apps: dict[str, Flask], rounds: int, n: int) -> dict[str, dict[str, float]]:
    environ = EnvironBuilder("/").get_environ()
    results: dict[str, dict[str, float]] = {}
    for harness, timer in HARNESSES.items():
        count = n if harness == "direct" else max(n // 3, 10)
        for app in apps.values():  # warm up
            timer(app, environ, max(count // 10, 5))
        best = {name: float("inf") for name in apps}
        for _ in range(rounds):
            for name, app in apps.items():
                best[name] = min(best[name], timer(app, environ, count))
        results[harness] = best
    return results


def measure_sentry(rounds: int, n: int) -> dict[str, dict[str, float]]:
    """sentry-sdk's Flask integration, for calibration; runs last (global)."""
    import sentry_sdk
    from sentry_sdk.transport import Transport

    class DropEvents(Transport):
        def capture_envelope(self, envelope: t.Any) -> None:
            return None

    dsn = "http://public@127.0.0.1:9/1"  # never contacted: events are dropped
    results: dict[str, dict[str, float]] = {}
    for name, options in (
        ("sentry-sdk Flask", {}),
        ("sentry-sdk Flask+tracing", {"traces_sample_rate": 1.0}),
    ):
        sentry_sdk.init(dsn=dsn, transport=DropEvents, **options)  # type: ignore[arg-type]
        try:
            measured = measure({name: make_app()}, rounds, n)
        finally:
            sentry_sdk.get_client().close()
            sentry_sdk.init(dsn=None)
        for harness, values in measured.items():
            results.setdefault(harness, {}).update(values)
    return results


def run(rounds: int, n: int, sentry: bool) -> dict[str, dict[str, float]]:
    # structlog renders nothing: the middleware binds its context as in an
    # app that logs nothing on this route.
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    results = measure(flask_diag_variants(), rounds, n)
    if sentry:
        for harness, values in measure_sentry(max(rounds // 3, 1), n).items():
            results[harness].update(values)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--no-sentry", action="store_true", help="skip sentry-sdk")
    parser.add_argument("--json", metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    rounds, n = (2, 200) if args.quick else (12, 3000)
    results = run(rounds, n, sentry=not args.no_sentry)
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"pid {os.getpid()}, best of {rounds} rounds of {n} requests"
    )
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for harness, best in results.items():
        bare = best["bare"]
        print(f"\n[{harness}] {'variant':<26} {'us/request':>10} {'ratio':>7}")
        for name, seconds in best.items():
            ratio = seconds / bare
            print(
                f"{'':<{len(harness) + 3}}{name:<26} "
                f"{seconds * 1e6:>10.2f} {ratio:>7.3f}"
            )
            figures.setdefault(harness, {})[name] = {
                "us": seconds * 1e6,
                "ratio": ratio,
            }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
