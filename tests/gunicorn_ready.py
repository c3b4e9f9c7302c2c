"""gunicorn configuration the ``gunicorn_server`` fixture passes with ``-c``.

gunicorn logs "Booting worker" right after the fork, before the worker has
imported the app: a test that starts sending as soon as that line appears can
find only some of the workers serving. ``post_worker_init`` runs once the
worker has loaded the app, so the fixture waits for this line instead.
"""

from __future__ import annotations

import sys
import typing as t

READY = "flask_diag tests: worker {pid} is ready"


def post_worker_init(worker: t.Any) -> None:
    print(READY.format(pid=worker.pid), file=sys.stderr, flush=True)
