"""The debugger's pages, for the debugger tests.

A plain module shared the way ``servers.py`` is (pytest puts ``tests/`` on
``sys.path``; ``test_debugger*.py`` import it by name):

- :func:`page_secret` / :func:`console_secret`: what a debugger page holds;
- :func:`debug_app`: a Flask app whose ``/boom`` raises (with locals the
  console can read) and whose ``/`` answers ``hello``;
- :class:`DebuggerPages`: a gate driven with werkzeug's test client as the
  page script drives it (traceback, PIN, ``pinauth``, frame commands).
"""

from __future__ import annotations

import re
import typing as t
from urllib.parse import quote

from flask import Flask
from werkzeug.test import Client

from flask_diag.debugger import DebuggerGate
from flask_diag.debugger_pin import PinLock

PIN = "staging-pin-2024"
LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}
FOREIGN = {"REMOTE_ADDR": "203.0.113.7"}
# The local that debug_app's /boom shows in its frame (never to leak).
SECRET_LOCAL = "hunter2-in-a-local"

_SECRET = re.compile(r'SECRET = "([^"]+)"')
_FRAME = re.compile(r'<div class="frame" id="frame-(\d+)"')


def console_secret(html: str) -> str:
    """The ``SECRET`` of a debugger page (a traceback or the console)."""
    secret = _SECRET.search(html)
    assert secret is not None, html[:500]
    return secret.group(1)


def page_secret(html: str) -> tuple[str, str]:
    """The debugger's ``SECRET`` and the id of the innermost frame."""
    secret = _SECRET.search(html)
    frames = _FRAME.findall(html)
    assert secret is not None and frames, html[:500]
    return secret.group(1), frames[-1]


def debug_app(
    name: str = "debug_app", on_boom: t.Callable[[], None] | None = None
) -> Flask:
    """A Flask app (no Diag yet): ``/boom`` raises ``KeyError`` with the
    locals ``answer = 41`` and :data:`SECRET_LOCAL` in its frame, calling
    ``on_boom`` first; ``/`` answers ``hello``."""
    app = Flask(name)

    @app.get("/boom")
    def boom() -> str:
        if on_boom is not None:
            on_boom()
        answer = 41
        secret_local = SECRET_LOCAL  # noqa: F841 - shown in frames
        raise KeyError(f"no such thing {answer}")

    @app.get("/")
    def index() -> str:
        return "hello"

    return app


class DebuggerPages:
    """A WSGI app behind a :class:`DebuggerGate` (``app`` may be the gate
    itself), with a cookie jar; every request comes from 127.0.0.1 unless
    ``environ`` says otherwise."""

    def __init__(self, app: t.Any, gate: DebuggerGate) -> None:
        self.app = app
        self.gate = gate
        self.client = Client(app, use_cookies=True)
        #: Left to the test: how often ``/boom`` ran (see ``debug_app``).
        self.calls = 0

    def get(self, path: str, **environ: t.Any) -> t.Any:
        # environ_overrides: applied after the test client's own HTTP_HOST
        # and wsgi.multiprocess.
        return self.client.get(path, environ_overrides={**LOOPBACK, **environ})

    def traceback(self, **environ: t.Any) -> tuple[str, str]:
        """Load the failing page; return (secret, innermost frame id)."""
        response = self.get("/boom", **environ)
        assert response.status_code == 500, response.get_data(as_text=True)[:300]
        assert response.mimetype == "text/html", response.get_data(as_text=True)[:300]
        return page_secret(response.get_data(as_text=True))

    @property
    def lock(self) -> PinLock:
        assert self.gate.pin_lock is not None
        return self.gate.pin_lock

    def pin(self) -> str:
        """The PIN: the configured one, or the one in the 0600 file."""
        if self.lock.pin_file is None:
            return PIN
        with open(self.lock.pin_file) as f:
            return f.read().strip()

    def pinauth(self, secret: str, pin: str, **environ: t.Any) -> t.Any:
        """As the page script the gate serves: the PIN in a POST body."""
        return self.client.post(
            f"/boom?__debugger__=yes&cmd=pinauth&s={secret}",
            data={"pin": pin},
            environ_overrides={**LOOPBACK, **environ},
        )

    def unlock(self) -> tuple[str, str]:
        """A traceback, then the right PIN: (secret, frame), unlocked."""
        secret, frame = self.traceback()
        assert self.pinauth(secret, self.pin()).get_json()["auth"] is True
        return secret, frame

    def command(self, secret: str, frame: str, cmd: str, **environ: t.Any) -> t.Any:
        """Evaluate ``cmd`` in ``frame`` of the page with ``secret``."""
        return self.get(
            f"/boom?__debugger__=yes&cmd={quote(cmd)}&frm={frame}&s={secret}",
            **environ,
        )
