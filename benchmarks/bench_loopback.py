"""Cost of the loopback guard and the watchdog, against the bare app, in one run.

Three measurements, all in one process:

- **Flask**: the same method as ``bench_stack.py`` (its hello-world Flask app
  and its ``direct`` harness: a WSGI call with a prepared environ, the body
  consumed and closed; variants interleaved round by round, best round kept).
  The target (at most 2 % on a hello-world request that makes no outbound
  call) refers to these ratios. Differences of a few tenths of a microsecond
  are at the edge of what this harness resolves on a busy machine.
- **alone**: each middleware around a WSGI app that does nothing, so that
  what is left is the middleware's own cost per request, in nanoseconds.
- **per connect**: a request that opens ``K`` TCP connections to a local
  listener that is not the server's, minus the same request opening none,
  divided by ``K``: without the hook, and inside a guarded request.

The audit hook is process-wide and cannot be removed, so each measurement
has two phases: **before the hook** (the bare app, the guard on a server with
no fixed limit, which steps aside and never installs the hook, and the
watchdog), then **after the hook**, installed by a guard that armed (the bare
app again, which shows what the hook costs any request of the process; the
guard on a bounded server, gunicorn sync ``-w 4``, gthread or waitress,
where it only warns; on a capacity-1 server, where it raises).

    python benchmarks/bench_loopback.py            # full run, prints a table
    python benchmarks/bench_loopback.py --quick    # a smoke run
    python benchmarks/bench_loopback.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
import typing as t

import structlog
from bench_stack import make_app
from bench_stack import time_direct
from werkzeug.test import EnvironBuilder
from werkzeug.wsgi import ClosingIterator

from flask_diag import loopback
from flask_diag.loopback import LoopbackGuard
from flask_diag.server import Listener
from flask_diag.server import ServerProfile
from flask_diag.watchdog import Watchdog

Environ = dict[str, t.Any]
WSGIApp = t.Callable[[Environ, t.Callable[..., t.Any]], t.Iterable[bytes]]
Variants = dict[str, WSGIApp]
CONNECTS = 20


class Sink:
    """A local listener that accepts and drops connections: "another server"."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.address = self.sock.getsockname()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()


def profile_of(
    listener: socket.socket, workers: int, threads: int | None
) -> ServerProfile:
    return ServerProfile(
        "gunicorn" if threads is not None else "werkzeug",
        worker_class="sync" if threads is not None else "threaded",
        workers=workers,
        threads=threads,
        multithread=threads is None,
        listeners=(Listener.from_socket(listener),),
    )


def nothing(environ: Environ, start_response: t.Callable[..., t.Any]) -> list[bytes]:
    return [b""]


def _ignore(
    status: str, headers: list[tuple[str, str]], exc_info: t.Any = None
) -> None:
    return None


def time_alone(app: WSGIApp, environ: Environ, n: int) -> float:
    """A middleware around :func:`nothing`: its own cost per request."""
    copy = environ.copy
    start = time.perf_counter()
    for _ in range(n):
        app(copy(), _ignore)
    return (time.perf_counter() - start) / n


def connecting_app(sink: Sink, count: int) -> WSGIApp:
    """A plain WSGI app whose request opens ``count`` connections."""

    def app(
        environ: Environ, start_response: t.Callable[..., t.Any]
    ) -> t.Iterable[bytes]:
        for _ in range(count):
            socket.create_connection(sink.address).close()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ClosingIterator([b"done"])  # the harness closes the body

    return app


def measure(
    variants: Variants,
    timer: t.Callable[[WSGIApp, Environ, int], float],
    rounds: int,
    n: int,
    environ: Environ,
) -> dict[str, float]:
    for app in variants.values():  # warm up
        timer(app, environ, max(n // 10, 5))
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, app in variants.items():
            best[name] = min(best[name], timer(app, environ, n))
    return best


def flask_app(wrap: t.Callable[[WSGIApp], WSGIApp] | None = None) -> WSGIApp:
    app = make_app()
    if wrap is not None:
        app.wsgi_app = wrap(app.wsgi_app)  # type: ignore[method-assign,assignment,arg-type]
    return app  # type: ignore[return-value]


def run(rounds: int, n: int) -> dict[str, dict[str, float]]:
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    environ = EnvironBuilder("/").get_environ()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    sink = Sink()
    unbounded = profile_of(server, 1, None)
    bounded = profile_of(server, 4, 1)
    single = profile_of(server, 1, 1)

    def guard(profile: ServerProfile) -> t.Callable[[WSGIApp], WSGIApp]:
        return lambda app: LoopbackGuard(app, profile=profile)

    def watchdog(app: WSGIApp) -> WSGIApp:
        return Watchdog(app, watchdog=30)

    def both(profile: ServerProfile) -> t.Callable[[WSGIApp], WSGIApp]:
        return lambda app: LoopbackGuard(Watchdog(app, watchdog=30), profile=profile)

    connect_n = max(n // 20, 10)
    results: dict[str, dict[str, float]] = {}
    assert not loopback._hook_installed, "the hook must not be installed yet"
    results["flask, before the hook"] = measure(
        {
            "bare": flask_app(),
            "guard, no fixed limit": flask_app(guard(unbounded)),
            "watchdog": flask_app(watchdog),
        },
        time_direct,  # type: ignore[arg-type]
        rounds,
        n,
        environ,
    )
    results["alone, before the hook"] = measure(
        {
            "nothing": nothing,
            "guard, no fixed limit": guard(unbounded)(nothing),
            "watchdog": watchdog(nothing),
        },
        time_alone,
        rounds,
        n * 10,
        environ,
    )
    connects_before = measure(
        {"none": connecting_app(sink, 0), "K": connecting_app(sink, CONNECTS)},
        time_direct,  # type: ignore[arg-type]
        rounds,
        connect_n,
        environ,
    )
    assert not loopback._hook_installed, "a disarmed guard installed the hook"

    armed = flask_app(guard(bounded))
    time_direct(armed, environ, 1)  # type: ignore[arg-type]  # installs the hook
    assert loopback._hook_installed
    results["flask, after the hook"] = measure(
        {
            "bare": flask_app(),
            "guard, bounded server": armed,
            "guard, capacity 1": flask_app(guard(single)),
            "guard + watchdog, bounded": flask_app(both(bounded)),
        },
        time_direct,  # type: ignore[arg-type]
        rounds,
        n,
        environ,
    )
    results["alone, after the hook"] = measure(
        {
            "nothing": nothing,
            "guard, bounded server": guard(bounded)(nothing),
            "guard, capacity 1": guard(single)(nothing),
            "guard + watchdog, bounded": both(bounded)(nothing),
        },
        time_alone,
        rounds,
        n * 10,
        environ,
    )
    connects_after = measure(
        {
            "none": guard(bounded)(connecting_app(sink, 0)),
            "K": guard(bounded)(connecting_app(sink, CONNECTS)),
        },
        time_direct,  # type: ignore[arg-type]
        rounds,
        connect_n,
        environ,
    )
    results["per connect"] = {
        "no hook": (connects_before["K"] - connects_before["none"]) / CONNECTS,
        "guarded request, bounded server": (
            connects_after["K"] - connects_after["none"]
        )
        / CONNECTS,
    }
    server.close()
    sink.sock.close()
    return results


def report(results: dict[str, dict[str, float]]) -> dict[str, t.Any]:
    figures: dict[str, t.Any] = {}
    bare_before = results["flask, before the hook"]["bare"]
    for phase in ("before the hook", "after the hook"):
        flask = results[f"flask, {phase}"]
        alone = results[f"alone, {phase}"]
        bare = flask["bare"]
        print(
            f"\n[{phase}] {'variant':<28} {'us/req':>8} {'ratio':>7}"
            f" {'alone ns':>9} {'% of bare':>10}"
        )
        for name, seconds in flask.items():
            added = (alone[name] - alone["nothing"]) if name in alone else 0.0
            ratio = seconds / bare
            share = added / bare * 100
            print(
                f"{'':<{len(phase) + 3}}{name:<28} {seconds * 1e6:>8.2f} {ratio:>7.3f}"
                f" {added * 1e9:>9.0f} {share:>9.2f}%"
            )
            figures.setdefault(phase, {})[name] = {
                "us": seconds * 1e6,
                "ratio": ratio,
                "alone_ns": added * 1e9,
                "alone_percent_of_bare": share,
            }
    hook = results["flask, after the hook"]["bare"] / bare_before
    print(f"\nthe hook on any request of the process: {hook:.3f} x the bare app")
    figures["hook_on_any_request_ratio"] = hook
    print(f"\n[per connect] {'':<32} {'us':>8}")
    for name, seconds in results["per connect"].items():
        print(f"{'':<14}{name:<32} {seconds * 1e6:>8.2f}")
        figures.setdefault("per connect", {})[name] = {"us": seconds * 1e6}
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    rounds, n = (2, 200) if args.quick else (60, 1000)
    results = run(rounds, n)
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
