"""Pitfall 7, fixed: the cars live in a SQLite file every worker shares.

The same API as :mod:`app`, but no request handler mutates module-level
state: each request opens the database named by ``CARS_DB`` (default:
``pitfall7_cars.sqlite3`` in the system temp directory). Under
``gunicorn -w 4 app_fixed:app`` a GET sees every POST, whichever worker
served it; ``X-Diag-PID`` still shows which one did.

A fixed default path rather than a random temp file: without ``--preload``
gunicorn imports the app once per worker, and each would pick its own file.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile

import structlog
from flask import Flask
from flask import request

import flask_diag.logging
from flask_diag import Diag

flask_diag.logging.configure()  # JSON lines on stderr
log = structlog.get_logger()

DB_PATH = os.environ.get("CARS_DB") or os.path.join(
    tempfile.gettempdir(), "pitfall7_cars.sqlite3"
)

app = Flask(__name__)
Diag(app)


def connect() -> sqlite3.Connection:
    # One connection per request; the timeout makes concurrent writers from
    # several workers wait for the lock instead of failing.
    db = sqlite3.connect(DB_PATH, timeout=10)
    db.execute("CREATE TABLE IF NOT EXISTS cars (id INTEGER PRIMARY KEY, name TEXT)")
    return db


@app.post("/cars")
def add_car() -> tuple[dict[str, object], int]:
    data = request.get_json(silent=True) or {}
    name = str(data.get("name", "unnamed"))
    db = connect()
    try:
        with db:
            db.execute("INSERT INTO cars (name) VALUES (?)", (name,))
        (count,) = db.execute("SELECT COUNT(*) FROM cars").fetchone()
    finally:
        db.close()
    log.info("car added", car=name, count=count)
    return {"car": {"name": name}, "count": count}, 201


@app.get("/cars")
def list_cars() -> dict[str, object]:
    db = connect()
    try:
        rows = db.execute("SELECT name FROM cars ORDER BY id").fetchall()
    finally:
        db.close()
    cars = [{"name": name} for (name,) in rows]
    log.info("cars listed", count=len(cars))
    return {"cars": cars, "count": len(cars)}


if __name__ == "__main__":
    app.run()
