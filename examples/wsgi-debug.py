"""The usual ``wsgi-debug.py`` debug entry point, written with ``wrap()``.

Instead of ``DebuggedApplication(app, evalex=True)``, the flask_diag stack
with the PIN-gated debugger on (every guard up: PIN in a 0600 file, loopback
clients only, one process, expiry after an hour, every use logged)::

    cd examples
    gunicorn --worker-class sync --workers 1 --timeout 3600 \\
        -b 127.0.0.1:8000 wsgi-debug:application

One worker, because the debugger's frames live in one process's memory (the
gate refuses to start under several); a long timeout, or the worker is killed
in the middle of a session. ``FLASK_DIAG_DEBUGGER=off`` in the environment
still switches it off; ``FLASK_DIAG_DEBUGGER_TTL``, ``..._ALLOW``,
``..._HOSTS``, ``..._PIN`` tune it (see docs/middlewares/debugger.md).

For your own app, change the import: a Flask app (its
``PROPAGATE_EXCEPTIONS`` is set while the debugger is active), Django's
``application`` (with ``DEBUG_PROPAGATE_EXCEPTIONS = True`` in its settings)
or any WSGI callable.
"""

from __future__ import annotations

from pitfall3_debugger.app import app  # your app here

import flask_diag.logging
from flask_diag import wrap

flask_diag.logging.configure()  # JSON lines on stderr; never the PIN

application = wrap(app, debugger=True)
