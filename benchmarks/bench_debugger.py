"""Cost of the debugger gate on ordinary requests, against the bare app, in one run.

The gate is meant for one staging deployment, but while it is on every
request goes through it. Ordinary requests (no error, no debugger route) are
measured with ``bench_stack.py``'s method (its hello-world Flask app and its
``direct`` harness; variants interleaved round by round, best round kept):

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
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import typing as t

import structlog
from bench_stack import make_app
from bench_stack import time_direct
from werkzeug.test import EnvironBuilder

from flask_diag import wrap
from flask_diag.debugger import DebuggerGate

Environ = dict[str, t.Any]
ADMITTED = {"REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000"}
REFUSED = {"REMOTE_ADDR": "203.0.113.7", "HTTP_HOST": "127.0.0.1:8000"}


def _drop(*args: object) -> t.NoReturn:
    raise structlog.DropEvent


def _null_app(environ: Environ, start_response: t.Callable[..., t.Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def _start_response(*args: object) -> None:
    return None


def time_alone(app: t.Any, environ: Environ, n: int) -> float:
    import time

    copy = environ.copy
    start = time.perf_counter()
    for _ in range(n):
        it = app(copy(), _start_response)
        for _chunk in it:
            pass
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return (time.perf_counter() - start) / n


def run(rounds: int, n: int) -> dict[str, float]:
    structlog.configure(processors=[_drop])  # the enabled line is not measured
    gates: list[DebuggerGate] = []
    try:
        debug = make_app()
        debug.wsgi_app = wrap(  # type: ignore[method-assign]
            debug.wsgi_app, environ={}, debugger=True
        )
        stack = make_app()
        stack.wsgi_app = wrap(stack.wsgi_app, environ={})  # type: ignore[method-assign]
        inner: t.Any = debug.wsgi_app
        while not isinstance(inner, DebuggerGate):
            inner = inner.app
        gates.append(inner)
        alone = DebuggerGate(_null_app, debugger=True)
        gates.append(alone)
        base = EnvironBuilder("/").get_environ()
        admitted = {**base, **ADMITTED}
        refused = {**base, **REFUSED}
        flask_variants: dict[str, tuple[t.Any, Environ]] = {
            "bare": (make_app(), admitted),
            "stack": (stack, admitted),
            "stack + debugger, admitted": (debug, admitted),
            "stack + debugger, refused": (debug, refused),
        }
        alone_variants: dict[str, tuple[t.Any, Environ]] = {
            "null app": (_null_app, admitted),
            "gate alone, admitted": (alone, admitted),
            "gate alone, refused": (alone, refused),
        }
        best: dict[str, float] = {}
        for variants, timer in (
            (flask_variants, time_direct),
            (alone_variants, time_alone),
        ):
            for app, environ in variants.values():  # warm up
                timer(app, environ, max(n // 10, 5))
            for name in variants:
                best[name] = float("inf")
            for _ in range(rounds):
                for name, (app, environ) in variants.items():
                    best[name] = min(best[name], timer(app, environ, n))
        return best
    finally:
        for gate in gates:
            gate.close()
        structlog.reset_defaults()


def report(best: dict[str, float]) -> None:
    bare = best["bare"]
    print(f"{'variant':32} {'per request':>12} {'ratio to bare':>14}")
    for name in (
        "bare",
        "stack",
        "stack + debugger, admitted",
        "stack + debugger, refused",
    ):
        print(f"{name:32} {best[name] * 1e6:10.2f} µs {best[name] / bare:14.3f}")
    print(
        "stack + debugger vs stack:"
        f" admitted {best['stack + debugger, admitted'] / best['stack']:.3f},"
        f" refused {best['stack + debugger, refused'] / best['stack']:.3f}"
    )
    null = best["null app"]
    for name in ("gate alone, admitted", "gate alone, refused"):
        print(f"{name:32} {(best[name] - null) * 1e9:10.0f} ns  (its own cost)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    rounds, n = (2, 200) if args.quick else (40, 1000)
    best = run(rounds, n)
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"pid {os.getpid()}, best of {rounds} rounds of {n} requests"
    )
    report(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
