"""A stand-in for an external image recognition API.

``POST /recognize`` with a JSON body ``{"image_url": "http://..."}`` fetches
that URL (with a timeout, ``FETCH_TIMEOUT`` seconds, default 10) and answers
``{"label": "cat", "bytes": <size>}``, or ``504`` with an error when the
fetch fails. ``{"image": "<name>"}`` fetches ``IMAGE_BASE`` + name instead,
like an API that was told once where a customer's images live: set it with
the environment variable, or with ``POST /configure {"image_base": "..."}``.

It logs one JSON line per event on stderr, with an ISO timestamp, so a test
can tell when a request arrived. Run it::

    python recognition_api.py --port 5001
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import json
import os
import sys
import urllib.request

FETCH_TIMEOUT = float(os.environ.get("FETCH_TIMEOUT", "10"))
settings = {"image_base": os.environ.get("IMAGE_BASE", "")}


def log(event: str, **fields: object) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    line = {"event": event, "timestamp": now.isoformat(), **fields}
    sys.stderr.write(json.dumps(line) + "\n")
    sys.stderr.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.answer(200, {"ready": True})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.answer(400, {"error": "body is not JSON"})
            return
        if self.path == "/configure":
            settings["image_base"] = str(data.get("image_base", ""))
            log("configured", image_base=settings["image_base"])
            self.answer(200, settings)
            return
        url = data.get("image_url") or (
            settings["image_base"] + str(data.get("image", ""))
        )
        log("recognize received", image_url=url)
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as response:
                size = len(response.read())
        except Exception as exc:  # what a real API says: it could not fetch
            log("fetch failed", image_url=url, error=repr(exc))
            self.answer(504, {"error": f"could not fetch {url}: {exc}"})
            return
        log("fetched", image_url=url, bytes=size)
        self.answer(200, {"label": "cat", "bytes": size})

    def answer(self, status: int, body: dict[str, object]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return  # its own JSON lines only


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    log("listening", host=args.host, port=args.port)
    server.serve_forever()


if __name__ == "__main__":
    main()
