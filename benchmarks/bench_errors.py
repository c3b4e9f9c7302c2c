"""Cost of the error envelope on the success path, against the bare app.

The same hello-world Flask app and the same method as ``bench_stack.py``
(whose helpers it uses): a direct WSGI call with a prepared environ, body
consumed and response closed, and werkzeug's test client; variants
interleaved round by round, each keeping its best round, all in one run.

Variants:

- ``bare``: the app alone;
- ``envelope``: ``app.wsgi_app = ErrorEnvelope(app.wsgi_app)``, the
  middleware alone. The target (issue 3) is a ratio of at most 1.03 to
  ``bare`` in the ``direct`` harness;
- ``tagging`` and ``tagging+envelope``: the tagging middleware alone and
  with the envelope inside it (the default stack), so the envelope's share
  of the whole stack shows too;
- ``Diag``: the extension (stack plus its Flask error handlers, which run
  only on errors).

    python benchmarks/bench_errors.py            # full run, prints a table
    python benchmarks/bench_errors.py --quick    # a smoke run
    python benchmarks/bench_errors.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import structlog
from bench_stack import make_app
from bench_stack import measure
from flask import Flask

from flask_diag import Diag
from flask_diag import ErrorEnvelope
from flask_diag import RequestTagging
from flask_diag import Settings

TARGET = 1.03


def variants() -> dict[str, Flask]:
    # Settings from defaults only: no FLASK_DIAG_* variable may change them.
    settings = Settings.load(environ={})
    envelope = make_app()
    envelope.wsgi_app = ErrorEnvelope(envelope.wsgi_app, settings=settings)  # type: ignore[method-assign]
    tagging = make_app()
    tagging.wsgi_app = RequestTagging(tagging.wsgi_app, settings=settings)  # type: ignore[method-assign]
    both = make_app()
    both.wsgi_app = RequestTagging(  # type: ignore[method-assign]
        ErrorEnvelope(both.wsgi_app, settings=settings), settings=settings
    )
    extension = make_app()
    Diag(extension)
    return {
        "bare": make_app(),
        "envelope": envelope,
        "tagging": tagging,
        "tagging+envelope": both,
        "Diag": extension,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures")
    args = parser.parse_args(argv)
    for key in list(os.environ):
        if key == "FLASK_DIAG" or key.startswith("FLASK_DIAG_"):
            del os.environ[key]  # Diag() reads the environment
    rounds, n = (2, 200) if args.quick else (15, 3000)
    # structlog renders nothing, as in bench_stack.py.
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars],
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    results = measure(variants(), rounds, n)
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"pid {os.getpid()}, best of {rounds} rounds of {n} requests"
    )
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for harness, best in results.items():
        bare = best["bare"]
        print(f"\n[{harness}] {'variant':<20} {'us/request':>10} {'ratio':>7}")
        for name, seconds in best.items():
            ratio = seconds / bare
            print(
                f"{'':<{len(harness) + 3}}{name:<20} "
                f"{seconds * 1e6:>10.2f} {ratio:>7.3f}"
            )
            figures.setdefault(harness, {})[name] = {
                "us": seconds * 1e6,
                "ratio": ratio,
            }
        added = best["tagging+envelope"] - best["tagging"]
        print(
            f"{'':<{len(harness) + 3}}envelope inside tagging adds "
            f"{added * 1e6:.2f} us ({added / bare * 100:.1f}% of bare)"
        )
    ratio = figures["direct"]["envelope"]["ratio"]
    verdict = "ok" if ratio <= TARGET else "OVER TARGET"
    print(f"\nenvelope / bare (direct): {ratio:.3f}, target <= {TARGET}: {verdict}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
