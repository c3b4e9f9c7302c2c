"""Pitfall 1, fixed: the secret key is read when the module is imported.

Run it with the key in the environment::

    SECRET_KEY=$(python -c 'import secrets; print(secrets.token_hex())') \\
        gunicorn -b 127.0.0.1:8000 app_fixed:app
"""

from __future__ import annotations

import os

from flask import Flask
from flask import session

import flask_diag.logging
from flask_diag import Diag

flask_diag.logging.configure()  # JSON lines on stderr

app = Flask(__name__)
# At import time, from the environment: under gunicorn too, and no secret in
# the source. A missing variable fails at start-up, not on the first login.
app.secret_key = os.environ["SECRET_KEY"]
Diag(app)


@app.get("/")
def index() -> dict[str, object]:
    return {"user": session.get("user")}


@app.get("/login")
def login() -> dict[str, object]:
    session["user"] = "alice"
    return {"logged_in": session["user"]}


if __name__ == "__main__":
    app.run(debug=os.environ.get("FLASK_DEBUG") == "1")
