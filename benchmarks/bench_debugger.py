"""Cost of the debugger gate on ordinary requests, against the bare app, in one run.

The gate is meant for one staging deployment, but while it is on every
request goes through it. Ordinary requests (no error, no debugger route) are
measured with ``bench_stack.py``'s method (the hello-world Flask app and the
``direct`` harness of ``_harness.py``; variants interleaved batch by batch,
best batch kept):

- ``bare``: the Flask app alone;
- ``stack``: the default flask_diag stack, debugger off;
- ``stack + debugger, admitted``: the debugger on, a loopback client with a
  trusted ``Host``: the request runs through werkzeug's
  ``debug_application`` (a generator) so that an error would reach it;
- ``stack + debugger, refused``: the debugger on, a client outside the
  allowed networks: served as if there were no debugger.

And the gate alone around a WSGI app that does nothing, admitted and refused,
for its own cost per request in nanoseconds.

    python benchmarks/bench_debugger.py            # full run, prints a table
    python benchmarks/bench_debugger.py --quick    # a smoke run
    python benchmarks/bench_debugger.py --json out.json
"""

from __future__ import annotations

import functools
import sys
import time
import typing as t

import structlog
from _harness import best_of
from _harness import Environ
from _harness import header
from _harness import hello_environ
from _harness import ignore_response
from _harness import make_app
from _harness import parser
from _harness import quiet_structlog
from _harness import time_direct
from _harness import write_json
from _harness import WSGIApp

from flask_diag import wrap
from flask_diag.debugger import DebuggerGate
from flask_diag.internal import find_in_stack

ADMITTED = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000"}
REFUSED = {"REMOTE_ADDR": "203.0.113.7", "HTTP_HOST": "127.0.0.1:8000"}


def _null_app(
    environ: Environ, start_response: t.Callable[..., t.Any]
) -> t.Iterable[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def time_alone(app: WSGIApp, environ: Environ, n: int) -> float:
    """:func:`_harness.time_direct` for any WSGI app: the body is closed only
    when it has ``close`` (the null app's list has none; wrapping it in a
    closable iterable would add to what the gate's cost is measured against)."""
    copy = environ.copy
    start = time.perf_counter()
    for _ in range(n):
        it = app(copy(), ignore_response)
        for _chunk in it:
            pass
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - start) / n


def run(rounds: int, n: int) -> dict[str, float]:
    quiet_structlog()  # the enabled line is not measured
    gates: list[DebuggerGate] = []
    try:
        debug = make_app()
        debug.wsgi_app = wrap(  # type: ignore[method-assign,assignment]
            debug.wsgi_app, environ={}, debugger=True
        )
        stack = make_app()
        stack.wsgi_app = wrap(stack.wsgi_app, environ={})  # type: ignore[method-assign,assignment]
        gates += find_in_stack(debug.wsgi_app, DebuggerGate)
        alone = DebuggerGate(_null_app, debugger=True)
        gates.append(alone)
        base = hello_environ()
        admitted = {**base, **ADMITTED}
        refused = {**base, **REFUSED}
        flask_variants: dict[str, tuple[WSGIApp, Environ]] = {
            "bare": (make_app(), admitted),
            "stack": (stack, admitted),
            "stack + debugger, admitted": (debug, admitted),
            "stack + debugger, refused": (debug, refused),
        }
        alone_variants: dict[str, tuple[WSGIApp, Environ]] = {
            "null app": (_null_app, admitted),
            "gate alone, admitted": (alone, admitted),
            "gate alone, refused": (alone, refused),
        }
        best: dict[str, float] = {}
        for variants, timer in (
            (flask_variants, time_direct),
            (alone_variants, time_alone),
        ):
            best |= best_of(
                {
                    name: functools.partial(timer, app, environ)
                    for name, (app, environ) in variants.items()
                },
                rounds,
                n,
            )
        return best
    finally:
        for gate in gates:
            gate.close()
        structlog.reset_defaults()


def report(best: dict[str, float]) -> dict[str, t.Any]:
    bare = best["bare"]
    figures: dict[str, t.Any] = {}
    print(f"{'variant':32} {'per request':>12} {'ratio to bare':>14}")
    for name in (
        "bare",
        "stack",
        "stack + debugger, admitted",
        "stack + debugger, refused",
    ):
        figures[name] = {"us": best[name] * 1e6, "ratio": best[name] / bare}
        print(f"{name:32} {best[name] * 1e6:10.2f} µs {best[name] / bare:14.3f}")
    for verdict in ("admitted", "refused"):
        ratio = best[f"stack + debugger, {verdict}"] / best["stack"]
        figures[f"stack + debugger, {verdict} / stack"] = ratio
    print(
        "stack + debugger vs stack:"
        f" admitted {figures['stack + debugger, admitted / stack']:.3f},"
        f" refused {figures['stack + debugger, refused / stack']:.3f}"
    )
    null = best["null app"]
    for name in ("gate alone, admitted", "gate alone, refused"):
        figures[name] = {"own_ns": (best[name] - null) * 1e9}
        print(f"{name:32} {(best[name] - null) * 1e9:10.0f} ns  (its own cost)")
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__).parse_args(argv)
    rounds, n = (2, 200) if args.quick else (40, 1000)
    best = run(rounds, n)
    header(rounds, n)
    write_json(args.json, report(best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
