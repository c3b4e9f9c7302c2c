"""Pitfall 2: the request that calls back into its own single-threaded server.

``POST /recognize`` hands the URL of one of this app's own static images to an
external image recognition API (:mod:`recognition_api`), which fetches the
image and answers with a label. Tested from a separate script, it works.
Served by a server that handles one request at a time it freezes: the
server is busy waiting for the API, and the API's fetch of the image can
never be served::

    python recognition_api.py --port 5001 &
    FLASK_DIAG=off RECOGNITION_API=http://127.0.0.1:5001 \\
        gunicorn -w 1 -b 127.0.0.1:8000 app:app      # sync worker, one process
    curl -si -X POST http://127.0.0.1:8000/recognize  # hangs

The same happens with the werkzeug development server run with
``threaded=False``, and for a view that calls its own URL (``/selfcall/...``).

flask_diag turns the hang into a diagnosis. By default the handed-over URL
is logged as a warning before the call is sent (and the request still hangs
until the API gives up); with ``FLASK_DIAG_LOOPBACK=strict`` the call fails
at once with ``508`` and ``code: "loopback_deadlock"``. A view calling its
own URL fails at once in the default mode too. Under a server that can serve
a second request (``gunicorn -k gthread --threads 4``, ``-w 2``,
``flask run``) everything works.

Routes: ``/recognize`` (URL handed over), ``/recognize-indirect`` (only the
image's name is sent; the API builds the URL itself, so only the callback
detector can tell), ``/selfcall/<requests|httpx|urllib>`` (calls ``/ping`` on
this server), ``/selfcall-caught`` (the same call in a view that turns any
failure into its own 502, as much real code does: the answer is still the
``loopback_deadlock`` problem), ``/fetch?url=`` (calls any other URL),
``/nap?seconds=`` (sleeps, for the watchdog).
"""

from __future__ import annotations

import os
import time
import urllib.request

import httpx
import requests
import structlog
from flask import Flask
from flask import request
from flask import url_for

import flask_diag.logging
from flask_diag import Diag

flask_diag.logging.configure()  # JSON lines on stderr
log = structlog.get_logger()

RECOGNITION_API = os.environ.get("RECOGNITION_API", "http://127.0.0.1:5001")
# What teams write: a generous timeout, "the API can be slow".
API_TIMEOUT = float(os.environ.get("API_TIMEOUT", "30"))

app = Flask(__name__)
Diag(app)  # FLASK_DIAG=off runs the app without it


@app.get("/")
def ready() -> str:
    return "ready"


@app.post("/recognize")
def recognize() -> dict[str, object]:
    image_url = url_for("static", filename="cat.png", _external=True)
    log.info("asking the recognition api", image_url=image_url)
    answer = requests.post(
        f"{RECOGNITION_API}/recognize",
        json={"image_url": image_url},
        timeout=API_TIMEOUT,
    )
    return {"status": answer.status_code, "answer": answer.json()}


@app.post("/recognize-indirect")
def recognize_indirect() -> dict[str, object]:
    # No URL in the payload: the API knows where our images are.
    answer = requests.post(
        f"{RECOGNITION_API}/recognize",
        json={"image": "cat.png"},
        timeout=API_TIMEOUT,
    )
    return {"status": answer.status_code, "answer": answer.json()}


@app.get("/ping")
def ping() -> str:
    return "pong"


@app.get("/selfcall/<client>")
def selfcall(client: str) -> dict[str, object]:
    url = url_for("ping", _external=True)
    if client == "requests":
        text = requests.get(url, timeout=5).text
    elif client == "httpx":
        text = httpx.get(url, timeout=5).text
    elif client == "urllib":
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    else:
        return {"error": f"unknown client {client!r}"}
    return {"client": client, "answer": text}


@app.get("/selfcall-caught")
def selfcall_caught() -> tuple[dict[str, object], int]:
    try:
        text = requests.get(url_for("ping", _external=True), timeout=5).text
    except Exception as exc:  # any failure of the call: our own 502
        return {"error": "the ping service failed", "type": type(exc).__name__}, 502
    return {"answer": text}, 200


@app.get("/fetch")
def fetch() -> dict[str, object]:
    answer = requests.get(request.args["url"], timeout=5)
    return {"status": answer.status_code, "body": answer.text[:200]}


def take_a_nap(seconds: float) -> None:
    time.sleep(seconds)


@app.get("/nap")
def nap() -> dict[str, object]:
    seconds = float(request.args.get("seconds", "1"))
    take_a_nap(seconds)
    return {"slept": seconds}


if __name__ == "__main__":
    # The development server, one request at a time: the pitfall.
    app.run(port=8000, threaded=False)
