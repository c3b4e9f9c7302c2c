"""Pitfall 4: a remote pdb inside a worker.

A view with a ``breakpoint()``. Run under gunicorn with flask_diag's remote
pdb as the breakpoint hook, for this one deployment only::

    PYTHONBREAKPOINT=flask_diag.set_trace FLASK_DIAG_PDB=on \\
        gunicorn -w 1 --timeout 600 -b 127.0.0.1:8000 app:app

    curl -s http://127.0.0.1:8000/answer        # stops in the view
    python -m flask_diag pdb 4444               # in another terminal

Without ``FLASK_DIAG_PDB=on`` the breakpoint only logs ``forgotten
breakpoint ignored`` with its file, line and request id, and the request
answers as usual.
"""

from __future__ import annotations

import structlog
from flask import Flask
from flask import request

import flask_diag.logging
from flask_diag import Diag

flask_diag.logging.configure()  # JSON lines on stderr
log = structlog.get_logger()

app = Flask(__name__)
Diag(app)


@app.get("/")
def index() -> str:
    return "ready"


@app.get("/answer")
def answer() -> dict[str, object]:
    answer = 1
    breakpoint()
    doubled = answer * 2
    log.info("answered", answer=answer)
    return {"answer": answer, "doubled": doubled, "path": request.path}


if __name__ == "__main__":
    app.run()
