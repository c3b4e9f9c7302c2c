"""Pitfall 2, fixed: no request waits for this same server.

- ``POST /recognize`` hands the recognition API a URL on *another* host
  (``IMAGE_HOST``: object storage, a CDN, or here any static file server),
  never a URL of this app, so the API's fetch never comes back to a server
  that is busy waiting for it;
- ``/selfcall`` calls the function behind ``/ping`` directly instead of
  making an HTTP request to its own URL.

``python -m flask_diag check app_fixed:app`` finds nothing here, while it
reports DIAG020/DIAG021 in :mod:`app`::

    IMAGE_HOST=http://127.0.0.1:9000 RECOGNITION_API=http://127.0.0.1:5001 \\
        gunicorn -w 1 -b 127.0.0.1:8000 app_fixed:app
"""

from __future__ import annotations

import os

import requests
from flask import Flask

from flask_diag import Diag

RECOGNITION_API = os.environ.get("RECOGNITION_API", "http://127.0.0.1:5001")
IMAGE_HOST = os.environ.get("IMAGE_HOST", "http://127.0.0.1:9000")
API_TIMEOUT = float(os.environ.get("API_TIMEOUT", "30"))

app = Flask(__name__)
Diag(app)


@app.get("/")
def ready() -> str:
    return "ready"


@app.post("/recognize")
def recognize() -> dict[str, object]:
    # The image lives on a static host of its own, configured once.
    image_url = f"{IMAGE_HOST}/images/cat.png"
    answer = requests.post(
        f"{RECOGNITION_API}/recognize",
        json={"image_url": image_url},
        timeout=API_TIMEOUT,
    )
    return {"status": answer.status_code, "answer": answer.json()}


@app.get("/ping")
def ping() -> str:
    return "pong"


@app.get("/selfcall")
def selfcall() -> dict[str, object]:
    # The function, not the URL: no second request, no second slot needed.
    return {"answer": ping()}


if __name__ == "__main__":
    app.run(port=8000, threaded=False)
