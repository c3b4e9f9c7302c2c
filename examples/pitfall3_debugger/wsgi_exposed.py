"""The pitfall: the classic ``wsgi-debug.py``, werkzeug's debugger alone.

::

    gunicorn --worker-class sync --workers 1 --timeout 3600 \\
        -b 0.0.0.0:8000 wsgi_exposed:application          # DON'T

What that gives away:

- every client that reaches the port gets the traceback page, with the
  source of every frame, whatever its ``Host`` header;
- the console in each frame runs any Python code in the worker, protected
  only by werkzeug's PIN, which is derived from files of the machine (the
  same PIN after every restart, computable by anyone who can read them),
  and which werkzeug writes into the server's log, shipped and shared, as
  soon as a browser asks for it (``cmd=printpin``);
- a wrong PIN makes werkzeug sleep 0.5 to 5 s in the only worker;
- nothing switches it off: it stays until someone remembers to remove it.
"""

from __future__ import annotations

from app import app
from werkzeug.debug import DebuggedApplication

# Without it Flask answers the error itself and the debugger never sees it.
app.config["PROPAGATE_EXCEPTIONS"] = True
application = DebuggedApplication(app, evalex=True)
