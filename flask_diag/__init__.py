"""flask_diag: composable WSGI middlewares that diagnose the failures Flask
(and any WSGI) apps hit once they run under gunicorn, uWSGI or waitress.

.. code-block:: python

    from flask import Flask
    from flask_diag import Diag

    app = Flask(__name__)
    Diag(app)
"""

from __future__ import annotations

# First: FLASK_DIAG_SPEEDUPS=off must be seen before a compiled module loads.
from .speedups import install_switch as _install_switch

_install_switch()

from .context import RequestInfo as RequestInfo
from .errors import ErrorEnvelope as ErrorEnvelope
from .exceptions import DiagConfigError as DiagConfigError
from .exceptions import DiagWarning as DiagWarning
from .extension import Diag as Diag
from .loopback import LoopbackDeadlockError as LoopbackDeadlockError
from .pdb import set_trace as set_trace
from .problem import DiagHTTPError as DiagHTTPError
from .settings import Settings as Settings
from .stack import wrap as wrap
from .tagging import RequestTagging as RequestTagging
