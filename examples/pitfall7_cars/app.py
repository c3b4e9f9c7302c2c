"""Pitfall 7: state that lives in one worker.

A Flask app that keeps its cars in a module-level list. With the development
server (one process) a POST followed by a GET shows the new car. Under
``gunicorn -w 4 app:app`` every worker process has its own list: the GET is
often served by another worker than the POST, and the count is wrong.

flask_diag makes it visible: every response carries ``X-Diag-PID`` and
``X-Diag-Thread``, every JSON log line carries ``pid``, ``thread`` and the
``request_id`` that is also in the ``X-Request-ID`` response header.

Run it::

    gunicorn -w 4 -b 127.0.0.1:8000 app:app
    curl -si -X POST -H 'Content-Type: application/json' \\
        -d '{"name": "Beetle"}' http://127.0.0.1:8000/cars
    curl -si http://127.0.0.1:8000/cars

:mod:`app_fixed` stores the cars in a SQLite file instead.
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

# The bug: module-level state mutated by request handlers. Each gunicorn
# worker process has its own copy of this list.
CARS: list[dict[str, object]] = []


@app.post("/cars")
def add_car() -> tuple[dict[str, object], int]:
    data = request.get_json(silent=True) or {}
    car = {"name": str(data.get("name", "unnamed"))}
    CARS.append(car)
    log.info("car added", car=car["name"], count=len(CARS))
    return {"car": car, "count": len(CARS)}, 201


@app.get("/cars")
def list_cars() -> dict[str, object]:
    log.info("cars listed", count=len(CARS))
    return {"cars": CARS, "count": len(CARS)}


if __name__ == "__main__":
    app.run()
