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

Variants are interleaved batch by batch and each keeps its best batch, which
cancels most of the machine's noise.

    python benchmarks/bench_stack.py            # full run, prints a table
    python benchmarks/bench_stack.py --quick    # a smoke run (the test script)
    python benchmarks/bench_stack.py --json out.json
"""

from __future__ import annotations

import sys
import time
import typing as t
import uuid

from _harness import best_of_apps
from _harness import Environ
from _harness import header
from _harness import make_app
from _harness import parser
from _harness import quiet_structlog
from _harness import ratio_table
from _harness import time_direct
from _harness import write_json
from _harness import WSGIApp
from flask import Flask
from structlog.contextvars import bind_contextvars
from structlog.contextvars import clear_contextvars
from werkzeug.test import Client

from flask_diag import RequestTagging
from flask_diag import wrap


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


def flask_diag_variants() -> dict[str, Flask]:
    tagging = make_app()
    tagging.wsgi_app = RequestTagging(tagging.wsgi_app)  # type: ignore[method-assign]
    full = make_app()
    # The full default stack; no FLASK_DIAG_* variable may change it.
    full.wsgi_app = wrap(full.wsgi_app, environ={})  # type: ignore[method-assign,assignment]
    hand = make_app()
    hand.wsgi_app = HandWrittenRequestId(hand.wsgi_app)  # type: ignore[method-assign]
    return {
        "bare": make_app(),
        "tagging": tagging,
        "full stack": full,
        "hand-written": hand,
    }


def time_client(app: WSGIApp, environ: Environ, n: int) -> float:
    client = Client(app)
    start = time.perf_counter()
    for _ in range(n):
        client.get("/").close()
    return (time.perf_counter() - start) / n


HARNESSES = {"direct": time_direct, "client": time_client}


def measure(apps: dict[str, Flask], rounds: int, n: int) -> dict[str, dict[str, float]]:
    """Each harness in turn, with fewer requests for the slower client."""
    return {
        harness: best_of_apps(
            apps, rounds, n if harness == "direct" else max(n // 3, 10), timer=timer
        )
        for harness, timer in HARNESSES.items()
    }


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
    quiet_structlog()
    results = measure(flask_diag_variants(), rounds, n)
    if sentry:
        for harness, values in measure_sentry(max(rounds // 3, 1), n).items():
            results[harness].update(values)
    return results


def main(argv: list[str] | None = None) -> int:
    cli = parser(__doc__)
    cli.add_argument("--no-sentry", action="store_true", help="skip sentry-sdk")
    args = cli.parse_args(argv)
    rounds, n = (2, 200) if args.quick else (12, 3000)
    results = run(rounds, n, sentry=not args.no_sentry)
    header(rounds, n)
    figures = {
        harness: ratio_table(harness, best, width=26)
        for harness, best in results.items()
    }
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
