"""Pitfall 3, the safe way: the same app with ``Diag(app)``.

The debugger is off until one variable switches it on, for one deployment,
with every guard up (see README.md and docs/middlewares/debugger.md)::

    FLASK_DIAG_DEBUGGER=on FLASK_DIAG_ENV=staging \\
        gunicorn --worker-class sync --workers 1 --timeout 3600 \\
        -b 127.0.0.1:8000 app_fixed:app

The log says where the PIN is (a file only the server's user can read),
never the PIN itself. Reach it through an SSH tunnel
(``ssh -L 8000:127.0.0.1:8000 staging``) and open
http://127.0.0.1:8000/orders/42/total.
"""

from __future__ import annotations

from app import app

import flask_diag.logging
from flask_diag import Diag

flask_diag.logging.configure()  # JSON lines on stderr
Diag(app)
