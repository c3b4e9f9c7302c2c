"""Pitfall 1: the secret key that only exists under ``__main__``.

With ``python app.py`` everything works: the block at the bottom sets the
secret key (and debug mode) before ``app.run()``. Under
``gunicorn -w 4 app:app`` the module is imported, never run as main, so the
app has no secret key and every request that writes ``flask.session`` fails
with a 500 ``RuntimeError: The session is unavailable because no secret key
was set``.

With flask_diag the 500 says why, in its ``hint`` member, naming this file
and the line that sets the key::

    gunicorn -b 127.0.0.1:8000 app:app
    curl -s http://127.0.0.1:8000/login
    {"type":"about:blank","title":"Internal Server Error","status":500,...,
     "code":"internal_error","request_id":"...","hint":"The secret key is set
     only under 'if __name__ == \\"__main__\\":' (app.py, line 49). ..."}

:mod:`app_fixed` reads the key from the environment at import time.
"""

from __future__ import annotations

from flask import Flask
from flask import session

import flask_diag.logging
from flask_diag import Diag

flask_diag.logging.configure()  # JSON lines on stderr

app = Flask(__name__)
Diag(app)


@app.get("/")
def index() -> dict[str, object]:
    return {"user": session.get("user")}  # reading works without a key


@app.get("/login")
def login() -> dict[str, object]:
    session["user"] = "alice"  # writing needs the secret key
    return {"logged_in": session["user"]}


if __name__ == "__main__":
    # The bug: only `python app.py` runs these lines; gunicorn never does.
    app.secret_key = "dev-only-secret"
    app.debug = True
    app.run()
