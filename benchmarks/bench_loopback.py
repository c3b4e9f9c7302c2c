"""Cost of the loopback guard and the watchdog, against the bare app, in one run.

Three measurements, all in one process:

- **Flask**: the same method as ``bench_stack.py`` (the hello-world Flask app
  and the ``direct`` harness of ``_harness.py``: a WSGI call with a prepared
  environ, the body consumed and closed; variants interleaved batch by batch,
  best batch kept).
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

import socket
import sys
import threading
import time
import typing as t

from _harness import best_of_apps
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
from werkzeug.wsgi import ClosingIterator

from flask_diag import loopback
from flask_diag.loopback import LoopbackGuard
from flask_diag.server import Listener
from flask_diag.server import ServerProfile
from flask_diag.watchdog import Watchdog

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


def time_alone(app: WSGIApp, environ: Environ, n: int) -> float:
    """A middleware around :func:`nothing`: its own cost per request."""
    copy = environ.copy
    start = time.perf_counter()
    for _ in range(n):
        app(copy(), ignore_response)
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


def flask_app(wrap: t.Callable[[WSGIApp], WSGIApp] | None = None) -> WSGIApp:
    app = make_app()
    if wrap is not None:
        app.wsgi_app = wrap(app.wsgi_app)  # type: ignore[method-assign,assignment]
    return app


def run(rounds: int, n: int) -> dict[str, dict[str, float]]:
    quiet_structlog()
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
    results["flask, before the hook"] = best_of_apps(
        {
            "bare": flask_app(),
            "guard, no fixed limit": flask_app(guard(unbounded)),
            "watchdog": flask_app(watchdog),
        },
        rounds,
        n,
    )
    results["alone, before the hook"] = best_of_apps(
        {
            "nothing": nothing,
            "guard, no fixed limit": guard(unbounded)(nothing),
            "watchdog": watchdog(nothing),
        },
        rounds,
        n * 10,
        timer=time_alone,
    )
    connects_before = best_of_apps(
        {"none": connecting_app(sink, 0), "K": connecting_app(sink, CONNECTS)},
        rounds,
        connect_n,
    )
    assert not loopback._hook_installed, "a disarmed guard installed the hook"

    armed = flask_app(guard(bounded))
    time_direct(armed, hello_environ(), 1)  # installs the hook
    assert loopback._hook_installed
    results["flask, after the hook"] = best_of_apps(
        {
            "bare": flask_app(),
            "guard, bounded server": armed,
            "guard, capacity 1": flask_app(guard(single)),
            "guard + watchdog, bounded": flask_app(both(bounded)),
        },
        rounds,
        n,
    )
    results["alone, after the hook"] = best_of_apps(
        {
            "nothing": nothing,
            "guard, bounded server": guard(bounded)(nothing),
            "guard, capacity 1": guard(single)(nothing),
            "guard + watchdog, bounded": both(bounded)(nothing),
        },
        rounds,
        n * 10,
        timer=time_alone,
    )
    connects_after = best_of_apps(
        {
            "none": guard(bounded)(connecting_app(sink, 0)),
            "K": guard(bounded)(connecting_app(sink, CONNECTS)),
        },
        rounds,
        connect_n,
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
    args = parser(__doc__).parse_args(argv)
    rounds, n = (2, 200) if args.quick else (60, 1000)
    results = run(rounds, n)
    header(rounds, n)
    write_json(args.json, report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
