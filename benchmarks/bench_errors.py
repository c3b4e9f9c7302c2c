"""Cost of the error envelope on the success path, against the bare app.

The same hello-world Flask app and the same two harnesses as
``bench_stack.py``: a direct WSGI call with a prepared environ, body consumed
and response closed, and werkzeug's test client; variants interleaved batch
by batch, each keeping its best batch, all in one run.

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

import os
import sys

from _harness import header
from _harness import make_app
from _harness import parser
from _harness import quiet_structlog
from _harness import ratio_table
from _harness import write_json
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
    args = parser(__doc__).parse_args(argv)
    for key in list(os.environ):
        if key == "FLASK_DIAG" or key.startswith("FLASK_DIAG_"):
            del os.environ[key]  # Diag() reads the environment
    rounds, n = (2, 200) if args.quick else (15, 3000)
    quiet_structlog()
    results = measure(variants(), rounds, n)
    header(rounds, n)
    figures = {}
    for harness, best in results.items():
        figures[harness] = ratio_table(harness, best, width=20)
        added = best["tagging+envelope"] - best["tagging"]
        print(
            f"{'':<{len(harness) + 3}}envelope inside tagging adds "
            f"{added * 1e6:.2f} us ({added / best['bare'] * 100:.1f}% of bare)"
        )
    ratio = figures["direct"]["envelope"]["ratio"]
    verdict = "ok" if ratio <= TARGET else "OVER TARGET"
    print(f"\nenvelope / bare (direct): {ratio:.3f}, target <= {TARGET}: {verdict}")
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
