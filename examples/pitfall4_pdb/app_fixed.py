"""Pitfall 4, fixed: no breakpoint is left in the deployed code.

The view of :mod:`app` with its ``breakpoint()`` removed. To debug one
deployment, add it back on a branch and run that deployment with
``PYTHONBREAKPOINT=flask_diag.set_trace FLASK_DIAG_PDB=on`` (see
``docs/pdb.md``); ``python -m flask_diag check app:app`` reports the
forgotten one as DIAG022, this module has none.
"""

from __future__ import annotations

import structlog
from flask import Flask
from flask import request

from flask_diag import Diag

log = structlog.get_logger()

app = Flask(__name__)
Diag(app)


@app.get("/")
def index() -> str:
    return "ready"


@app.get("/answer")
def answer() -> dict[str, object]:
    answer = 1
    doubled = answer * 2
    log.info("answered", answer=answer)
    return {"answer": answer, "doubled": doubled, "path": request.path}


if __name__ == "__main__":
    app.run()
