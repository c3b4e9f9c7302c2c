"""Pitfall 5: errors that do not fail the same way.

Without flask_diag this app answers errors in four shapes: ``/legacy/cars``
says ``{"error": ...}`` with status 200, ``/admin`` (``abort(500)``), unknown
routes and wrong methods answer Flask's HTML pages, and a crash answers
another HTML page, so a client's ``r.json()`` blows up.

With ``Diag(app)`` every error has the right status and one JSON body,
``application/problem+json``::

    gunicorn -b 127.0.0.1:8000 app:app

    curl -s http://127.0.0.1:8000/cars/7
    {"type":"about:blank","title":"Not Found","status":404,
     "detail":"The requested URL was not found on the server. ...",
     "instance":"/cars/7","code":"not_found","request_id":"..."}

    curl -s -X DELETE http://127.0.0.1:8000/cars/1     # 405, with Allow
    curl -s http://127.0.0.1:8000/crash                # 500, generic detail
    curl -s -X POST -H 'Content-Type: application/json' -d '{}' \\
        http://127.0.0.1:8000/cars                     # 422 invalid_car

- ``KeyError`` (a ``LookupError``, like an ORM's ``DoesNotExist``) maps to
  404 in one place: ``diag.map_exception``;
- ``/cars`` fails the right way: ``DiagHTTPError(422, "invalid_car", msg)``;
- ``/legacy/cars`` is left as it is: a 200 is not an error to flask_diag,
  which is exactly the bug to fix in the view;
- ``/report`` streams a CSV and fails half-way: the status (200) is gone
  already, so the error is logged and the connection closed; no JSON is
  appended to the CSV;
- every 5xx is one JSON log line on stderr with the traceback and the
  ``request_id`` of the response's ``X-Request-ID`` header.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator

from flask import abort
from flask import Flask
from flask import jsonify
from flask import request
from flask import Response

import flask_diag.logging
from flask_diag import Diag
from flask_diag import DiagHTTPError

flask_diag.logging.configure()  # JSON lines on stderr

app = Flask(__name__)
diag = Diag(app)
# One place for "not found", as teams do with errorhandler(DoesNotExist).
diag.map_exception(LookupError, 404, code="not_found")

CARS = {1: "Beetle", 2: "2CV"}


@app.get("/")
def index() -> dict[str, object]:
    return {"cars": len(CARS)}


@app.get("/cars/<int:car_id>")
def get_car(car_id: int) -> dict[str, object]:
    return {"id": car_id, "name": CARS[car_id]}  # KeyError: mapped to 404


@app.post("/cars")
def add_car() -> tuple[dict[str, object], int]:
    data = request.get_json()  # not JSON: 415/400, as envelopes too
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise DiagHTTPError(422, "invalid_car", "A car needs a 'name' string.")
    CARS[max(CARS) + 1] = name
    return {"id": max(CARS), "name": name}, 201


@app.post("/legacy/cars")
def add_car_legacy() -> t.Any:
    # The pitfall itself: an error answered with 200. flask_diag leaves
    # 2xx alone; the fix is in the view (see add_car).
    return jsonify({"error": "name is required"})


@app.get("/admin")
def admin() -> str:
    abort(500)


@app.get("/crash")
def crash() -> str:
    return str(1 / 0)


@app.get("/report")
def report() -> Response:
    def rows() -> Iterator[str]:
        yield "id,name\n"
        for car_id, name in CARS.items():
            yield f"{car_id},{name}\n"
        raise RuntimeError("the database went away mid-report")

    return Response(rows(), mimetype="text/csv")


if __name__ == "__main__":
    app.run()
