"""Pitfall 5, fixed: every error has its status, and no worker-local state.

The API of :mod:`app` without its two deployment problems:

- ``/legacy/cars`` answers its error with ``422`` (a ``DiagHTTPError``)
  instead of ``{"error": ...}`` with ``200`` (DIAG023);
- the cars live in a SQLite file every worker process shares, not in a
  module-level dict each worker has its own copy of (DIAG016).
"""

from __future__ import annotations

import os
import sqlite3
import tempfile

from flask import abort
from flask import Flask
from flask import request

from flask_diag import Diag
from flask_diag import DiagHTTPError

DB_PATH = os.environ.get("CARS_DB") or os.path.join(
    tempfile.gettempdir(), "pitfall5_cars.sqlite3"
)

app = Flask(__name__)
diag = Diag(app)
diag.map_exception(LookupError, 404, code="not_found")


def connect() -> sqlite3.Connection:
    db = sqlite3.connect(DB_PATH, timeout=10)
    db.execute("CREATE TABLE IF NOT EXISTS cars (id INTEGER PRIMARY KEY, name TEXT)")
    return db


@app.get("/cars/<int:car_id>")
def get_car(car_id: int) -> dict[str, object]:
    db = connect()
    try:
        row = db.execute("SELECT name FROM cars WHERE id = ?", (car_id,)).fetchone()
    finally:
        db.close()
    if row is None:
        raise KeyError(car_id)  # mapped to 404 in one place
    return {"id": car_id, "name": row[0]}


@app.post("/cars")
@app.post("/legacy/cars")
def add_car() -> tuple[dict[str, object], int]:
    data = request.get_json()
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise DiagHTTPError(422, "invalid_car", "A car needs a 'name' string.")
    db = connect()
    try:
        with db:
            cursor = db.execute("INSERT INTO cars (name) VALUES (?)", (name,))
    finally:
        db.close()
    return {"id": cursor.lastrowid, "name": name}, 201


@app.get("/admin")
def admin() -> str:
    abort(403)


if __name__ == "__main__":
    app.run()
