"""The PIN-gated debugger, in process (werkzeug's test client).

Each guard is tested on its own: off, allowed clients (``REMOTE_ADDR``,
``X-Forwarded-For`` with and without trusted proxies), trusted hosts, one
process, expiry, production, ``WERKZEUG_DEBUG_PIN``, the PIN lockout without
sleeping and the activation-bound cookie, the cap on kept tracebacks, the
console path, and the log/signal audit trail (never the PIN). The real
server and browser runs are in ``test_debugger_servers.py``.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import tempfile
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
from debugger_pages import console_secret
from debugger_pages import debug_app
from debugger_pages import DebuggerPages
from debugger_pages import FOREIGN
from debugger_pages import LOOPBACK
from debugger_pages import PIN
from flask import Flask
from werkzeug.test import Client

from flask_diag import debugger as debugger_module
from flask_diag import debugger_pin
from flask_diag import Diag
from flask_diag import DiagConfigError
from flask_diag import wrap
from flask_diag.debugger import _gates
from flask_diag.debugger import DebuggerGate
from flask_diag.debugger import one_process_command
from flask_diag.debugger_pin import PinLock
from flask_diag.internal import find_in_stack
from flask_diag.server import Listener
from flask_diag.server import ServerProfile
from flask_diag.settings import Settings
from flask_diag.signals import debugger_pin_refused
from flask_diag.testing import capture_logs
from flask_diag.testing import capture_signals
from flask_diag.worker_timeout import KillTimer

RESOURCE = "?__debugger__=yes&cmd=resource&f=debugger.js"
FAST = 0.1  # no PIN request may take longer: the worker never sleeps


@pytest.fixture
def make() -> Iterator[t.Callable[..., DebuggerPages]]:
    """``make(**settings)``: a Flask app with the debugger on; closed after."""
    harnesses: list[DebuggerPages] = []

    def build(**options: t.Any) -> DebuggerPages:
        harness: DebuggerPages

        def count() -> None:
            harness.calls += 1

        app = debug_app("debug_app", on_boom=count)
        options.setdefault("debugger", True)
        Diag(app, **options)
        (gate,) = _gates(app.wsgi_app)
        harness = DebuggerPages(app, gate)
        harnesses.append(harness)
        return harness

    yield build
    for harness in harnesses:
        harness.gate.close()


def assert_envelope(response: t.Any, status: int) -> dict[str, t.Any]:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/problem+json"
    body: dict[str, t.Any] = response.get_json()
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def refusals(logs: list[t.Any]) -> list[str]:
    return [e["reason"] for e in logs if e["event"] == "debugger_client_refused"]


# -- off -------------------------------------------------------------------------------


def test_off_by_default_no_debugger_anywhere() -> None:
    assert Settings.load(environ={}).debugger is False
    app = Flask("plain")

    @app.get("/boom")
    def boom() -> str:
        raise KeyError("x")

    Diag(app)
    assert _gates(app.wsgi_app) == []
    client = app.test_client()
    body = assert_envelope(client.get("/nothing-here" + RESOURCE), 404)
    assert body["code"] == "not_found"
    assert_envelope(client.get("/boom" + RESOURCE), 500)
    assert app.config["PROPAGATE_EXCEPTIONS"] is None


def test_gate_alone_with_debugger_off_passes_through() -> None:
    def hello(environ: t.Any, start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hi"]

    gate = DebuggerGate(hello, debugger=False)
    assert gate.debugger is None and gate.pin_lock is None and not gate.active
    response = Client(gate).get("/" + RESOURCE, environ_base=LOOPBACK)
    assert response.get_data() == b"hi"


def test_refused_debugger_routes_answer_as_if_off(
    make: t.Callable[..., DebuggerPages],
) -> None:
    """A refused client cannot tell the debugger is on: its debugger routes
    get what the app gives with the debugger off (here the 404 envelope of a
    route the app does not have), never a 404 of the gate's own."""
    off = debug_app()
    Diag(off, debugger=False)
    path = "/nothing-here" + RESOURCE
    expected = off.test_client().get(path, environ_overrides=FOREIGN)
    h = make()
    with capture_logs() as logs:
        got = h.get(path, **FOREIGN)
    assert assert_envelope(got, 404) == {
        **assert_envelope(expected, 404),
        **{k: v for k, v in got.get_json().items() if "id" in k},
    }
    assert refusals(logs) == ["client"]  # still logged
    assert h.get(path).status_code == 200  # the allowed client: the script


# -- the happy path --------------------------------------------------------------------


def test_pin_then_console_in_frame(make: t.Callable[..., DebuggerPages]) -> None:
    h = make()
    lock = h.gate.pin_lock
    assert lock is not None and lock.pin_file is not None
    assert stat.S_IMODE(os.stat(lock.pin_file).st_mode) == 0o600
    assert "handle_exception" in vars(h.app)  # admitted requests propagate
    secret, frame = h.traceback()
    # Locked until the PIN is entered.
    assert h.command(secret, frame, "answer + 1").status_code == 403
    wrong = h.pinauth(secret, "1111-2222-3333")
    assert wrong.get_json() == {"auth": False, "exhausted": False}
    assert "Set-Cookie" not in wrong.headers
    right = h.pinauth(secret, h.pin())
    assert right.get_json() == {"auth": True, "exhausted": False}
    cookie = right.headers["Set-Cookie"]
    assert cookie.startswith(lock.cookie_name + "=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    max_age = int(re.search(r"Max-Age=(\d+)", cookie).group(1))  # type: ignore[union-attr]
    assert 0 < max_age <= h.gate.settings.debugger_ttl
    result = h.command(secret, frame, "answer + 1")
    assert result.status_code == 200
    assert "42" in result.get_data(as_text=True)


def test_wrap_around_a_flask_app_propagates_to_the_debugger() -> None:
    app = Flask("wrapped")

    @app.get("/boom")
    def boom() -> str:
        raise KeyError("x")

    @app.errorhandler(500)
    def sorry(e: Exception) -> tuple[str, int]:
        return "sorry, our fault", 500

    application = wrap(app, environ={}, debugger=True)
    (gate,) = _gates(application)
    try:
        ok = Client(application).get("/boom", environ_base=LOOPBACK)
        assert ok.status_code == 500 and "KeyError" in ok.get_data(as_text=True)
        assert ok.mimetype == "text/html"
        # A refused client is served as without a debugger: the app's own
        # 500 page (PROPAGATE_EXCEPTIONS is never switched on for the app).
        refused = Client(application).get("/boom", environ_base=FOREIGN)
        assert refused.status_code == 500
        assert refused.get_data(as_text=True) == "sorry, our fault"
        assert app.config["PROPAGATE_EXCEPTIONS"] is None
    finally:
        gate.close()
    assert "handle_exception" not in vars(app)  # restored
    after = Client(application).get("/boom", environ_base=LOOPBACK)
    assert after.get_data(as_text=True) == "sorry, our fault"


def test_gate_alone_around_plain_wsgi() -> None:
    def broken(environ: t.Any, start_response: t.Any) -> list[bytes]:
        raise ZeroDivisionError("plain")

    gate = DebuggerGate(broken, debugger=True)
    try:
        response = Client(gate).get("/", environ_base=LOOPBACK)
        assert response.status_code == 500
        assert "ZeroDivisionError" in response.get_data(as_text=True)
    finally:
        gate.close()


# -- allowed clients -------------------------------------------------------------------


def test_client_outside_allowed_networks(make: t.Callable[..., DebuggerPages]) -> None:
    h = make()
    secret, _ = h.traceback()
    with capture_logs() as logs, capture_signals() as sent:
        assert_envelope(h.get("/boom", **FOREIGN), 500)
        # Debugger routes go to the app, as without a debugger: /boom raises
        # (the envelope), and takes no POST (405).
        assert_envelope(h.get("/boom" + RESOURCE, **FOREIGN), 500)
        assert_envelope(h.pinauth(secret, h.pin(), **FOREIGN), 405)
    assert refusals(logs) == ["client", "client"]
    assert [
        s.kwargs["reason"] for s in sent if s.name == "debugger-client-refused"
    ] == [
        "client",
        "client",
    ]
    assert [
        s.kwargs["client"] for s in sent if s.name == "debugger-client-refused"
    ] == ["203.0.113.7"] * 2


def test_second_loopback_address_excluded_by_allow_list(
    make: t.Callable[..., DebuggerPages],
) -> None:
    h = make(debugger_allow="127.0.0.1/32")
    h.traceback()  # 127.0.0.1 still allowed
    other = {"REMOTE_ADDR": "127.0.0.2"}
    assert_envelope(h.get("/boom", **other), 500)
    with capture_logs() as logs:
        assert_envelope(h.get("/boom" + RESOURCE, **other), 500)
    assert refusals(logs) == ["client"]


def test_more_networks_allowed(make: t.Callable[..., DebuggerPages]) -> None:
    h = make(debugger_allow="127.0.0.0/8, 10.0.0.0/8")
    h.traceback(REMOTE_ADDR="10.1.2.3")
    assert h.get("/boom" + RESOURCE, REMOTE_ADDR="10.1.2.3").status_code == 200
    assert h.get("/boom" + RESOURCE, REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert_envelope(h.get("/boom" + RESOURCE, REMOTE_ADDR="11.0.0.1"), 500)


def test_spoofed_x_forwarded_for_is_ignored(
    make: t.Callable[..., DebuggerPages],
) -> None:
    h = make()
    spoofed = {**FOREIGN, "HTTP_X_FORWARDED_FOR": "127.0.0.1"}
    with capture_logs() as logs:
        assert_envelope(h.get("/boom", **spoofed), 500)
        assert_envelope(h.get("/boom" + RESOURCE, **spoofed), 500)
    assert refusals(logs) == ["client"]


def test_trusted_proxy_only_the_hop_after_it_counts(
    make: t.Callable[..., DebuggerPages],
) -> None:
    h = make(debugger_trusted_proxies="10.0.0.0/24")
    proxy = "10.0.0.5"
    # The proxy appended the real client; what the client sent is to the left.
    real = {"REMOTE_ADDR": proxy, "HTTP_X_FORWARDED_FOR": "198.51.100.1, 127.0.0.1"}
    assert h.get("/boom" + RESOURCE, **real).status_code == 200
    spoof = {"REMOTE_ADDR": proxy, "HTTP_X_FORWARDED_FOR": "127.0.0.1, 198.51.100.1"}
    assert_envelope(h.get("/boom" + RESOURCE, **spoof), 500)
    # Not from the trusted proxy: the header is ignored altogether.
    direct = {"REMOTE_ADDR": "10.0.1.5", "HTTP_X_FORWARDED_FOR": "127.0.0.1"}
    assert_envelope(h.get("/boom" + RESOURCE, **direct), 500)
    # From the trusted proxy without the header, or naming only trusted
    # hops: the client is unknown, refused (never the proxy's own address).
    for unknown in (
        {"REMOTE_ADDR": proxy},
        {"REMOTE_ADDR": proxy, "HTTP_X_FORWARDED_FOR": "10.0.0.7, 10.0.0.6"},
    ):
        assert_envelope(h.get("/boom" + RESOURCE, **unknown), 500)
        assert_envelope(h.get("/boom", **unknown), 500)


# -- trusted hosts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "trusted"),
    [
        pytest.param("localhost", True, id="localhost"),
        pytest.param("127.0.0.1:8000", True, id="loopback-ip"),
        pytest.param("[::1]:8000", True, id="ipv6-loopback"),
        pytest.param("app.localhost", True, id="localhost-subdomain"),
        pytest.param("evil.example", False, id="foreign"),
        pytest.param("127.0.0.1.evil.example", False, id="rebinding-name"),
        pytest.param("localhost:99999", False, id="bad-port"),
        pytest.param("", False, id="empty"),
    ],
)
def test_foreign_host_refused(
    make: t.Callable[..., DebuggerPages], host: str, trusted: bool
) -> None:
    h = make()
    environ = {"HTTP_HOST": host}
    with capture_logs() as logs:
        response = h.get("/boom" + RESOURCE, **environ)
    if trusted:
        assert response.status_code == 200
        assert refusals(logs) == []
    else:
        assert_envelope(response, 500)  # the app's /boom, as if no debugger
        assert refusals(logs) == ["host"]
        # No traceback page either: the envelope, as without a debugger.
        assert_envelope(h.get("/boom", **environ), 500)


def test_extra_hosts(make: t.Callable[..., DebuggerPages]) -> None:
    h = make(debugger_hosts="*.staging.example, debug-box")
    for host in ("staging.example", "a.staging.example", "debug-box:8000"):
        assert h.get("/boom" + RESOURCE, HTTP_HOST=host).status_code == 200
    assert_envelope(h.get("/boom" + RESOURCE, HTTP_HOST="example"), 500)


# This machine's name and its own non-loopback addresses, as the resolver
# tells them to the gate (``socket.getaddrinfo(socket.gethostname())``):
# documentation addresses, so the test does not depend on the machine's
# network (a container's host name often resolves to 127.0.0.1 only).
OWN_NAME = "diag-test-host.invalid"
OWN_ADDRESSES = {
    "192.0.2.10": (socket.AF_INET, ("192.0.2.10", 0)),
    "2001:db8::10": (socket.AF_INET6, ("2001:DB8::10", 0, 0, 0)),
    "fe80::10": (socket.AF_INET6, ("fe80::10%eth0", 0, 0, 2)),  # scope dropped
}


@pytest.mark.parametrize(
    ("listener", "trusted", "refused"),
    [
        pytest.param(
            Listener("inet", "0.0.0.0", 8000),
            ["192.0.2.10:8000", "[2001:db8::10]", "[fe80::10]:8000", "192.0.2.10"],
            ["192.0.2.99", "[2001:db8::99]", "evil.example"],
            id="wildcard-ipv4",
        ),
        pytest.param(
            Listener("inet6", "::", 8000),
            ["192.0.2.10", "[2001:DB8::10]:8000", "[fe80::10]"],
            ["192.0.2.99:8000", "[fe80::99]", "diag-test-host.invalid"],
            id="wildcard-ipv6",
        ),
        pytest.param(
            # Bound to one address: that one, not every address of the host.
            Listener("inet", "192.0.2.20", 8000),
            ["192.0.2.20:8000", "192.0.2.20"],
            ["192.0.2.10", "[2001:db8::10]", "evil.example"],
            id="one-address",
        ),
        pytest.param(
            Listener("unix", "/run/app.sock", 0),
            [],
            ["192.0.2.10", "[2001:db8::10]", "run", "evil.example"],
            id="unix-socket",
        ),
    ],
)
def test_host_of_the_servers_own_address_trusted(
    make: t.Callable[..., DebuggerPages],
    monkeypatch: pytest.MonkeyPatch,
    listener: Listener,
    trusted: list[str],
    refused: list[str],
) -> None:
    """A browser on the allowed client may name the server by one of its own
    addresses (``http://192.0.2.10:8000/`` from that machine): the gate
    trusts that Host when the server listens there, on every address (the
    host's own addresses, from its resolver) or on that one address. Any
    other address or name stays refused (DNS rebinding)."""
    h = make()
    real_getaddrinfo = socket.getaddrinfo
    looked_up: list[object] = []

    def getaddrinfo(host: str | None, port: t.Any, *args: t.Any, **kw: t.Any) -> t.Any:
        if host != OWN_NAME:
            return real_getaddrinfo(host, port, *args, **kw)
        looked_up.append(host)
        return [
            (family, socket.SOCK_STREAM, 6, "", sockaddr)
            for family, sockaddr in OWN_ADDRESSES.values()
        ]

    seen: list[object] = []

    def detect(environ: object = None, **kwargs: t.Any) -> ServerProfile:
        seen.append(environ)
        return ServerProfile("werkzeug", workers=1, listeners=(listener,))

    # After make(): the gate's start-up checks saw the real server profile.
    monkeypatch.setattr(socket, "gethostname", lambda: OWN_NAME)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(debugger_module, "detect", detect)
    for host in trusted:
        with capture_logs() as logs:
            script = h.get("/boom" + RESOURCE, HTTP_HOST=host)
            assert script.status_code == 200, host
            assert b"makeDebugURL" in script.get_data(), host  # the page script
            h.traceback(HTTP_HOST=host)  # and the traceback page
        assert refusals(logs) == [], host
    for host in refused:
        with capture_logs() as logs:
            assert_envelope(h.get("/boom" + RESOURCE, HTTP_HOST=host), 500)
        assert refusals(logs) == ["host"], host
        # No traceback page either: the envelope, as without a debugger.
        assert_envelope(h.get("/boom", HTTP_HOST=host), 500)
    # The gate asked the server (with the request) where it listens, and
    # resolved this host's own name only for a listener on every address.
    assert seen and all(isinstance(environ, dict) for environ in seen)
    assert bool(looked_up) == listener.wildcard


# -- one process -----------------------------------------------------------------------


def test_multiprocess_request_refused(make: t.Callable[..., DebuggerPages]) -> None:
    h = make()
    environ = {"wsgi.multiprocess": True}
    with capture_logs() as logs:
        assert_envelope(h.get("/boom", **environ), 500)
        assert_envelope(h.get("/boom" + RESOURCE, **environ), 500)
    (event,) = [e for e in logs if e["event"] == "debugger_client_refused"]
    assert event["reason"] == "multiprocess"
    assert "--worker-class sync --workers 1 --timeout 3600" in event["message"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            ["/venv/bin/gunicorn", "-w", "4", "-b", "127.0.0.1:8000", "app:app"],
            "gunicorn --worker-class sync --workers 1 --timeout 3600"
            " -b 127.0.0.1:8000 app:app",
            id="short-options",
        ),
        pytest.param(
            ["gunicorn", "--workers=3", "-k", "gthread", "--threads", "8", "m:a"],
            "gunicorn --worker-class sync --workers 1 --timeout 3600 m:a",
            id="long-options",
        ),
        pytest.param(
            ["/x/lib/python3.11/site-packages/gunicorn/__main__.py", "-w2", "m:a"],
            "gunicorn --worker-class sync --workers 1 --timeout 3600 m:a",
            id="python-m",
        ),
        pytest.param(
            ["pytest"],
            "gunicorn --worker-class sync --workers 1 --timeout 3600 MODULE:APP",
            id="not-gunicorn",
        ),
    ],
)
def test_one_process_command(argv: list[str], expected: str) -> None:
    assert one_process_command(argv) == expected


SYNC_30 = KillTimer(
    "gunicorn", "--timeout 30, SyncWorker", 30.0, 12.0, "the running worker", True
)


@pytest.mark.parametrize(
    ("timer", "expected"),
    [
        pytest.param(
            SYNC_30,
            "gunicorn --timeout 30, SyncWorker (from the running worker): the"
            " worker is killed at most 30 s after the request started",
            id="gunicorn-sync-30",
        ),
        pytest.param(
            KillTimer("uwsgi", "harakiri 60", 60.0, None, "uwsgi.opt", True),
            "uwsgi harakiri 60 (from uwsgi.opt): the worker is killed at most"
            " 60 s after the request started",
            id="uwsgi-harakiri-60",
        ),
        # gthread's --timeout is a heartbeat: a paused thread is not killed.
        pytest.param(
            KillTimer(
                "gunicorn",
                "--timeout 30, ThreadWorker",
                30.0,
                None,
                "the running worker",
                False,
            ),
            None,
            id="gunicorn-gthread-30",
        ),
        pytest.param(SYNC_30._replace(seconds=3600.0), None, id="long-enough"),
        pytest.param(SYNC_30._replace(seconds=0.0, kills=False), None, id="off"),
        pytest.param(None, None, id="no-server-timeout"),
    ],
)
def test_short_worker_timeout_warned(
    make: t.Callable[..., DebuggerPages],
    monkeypatch: pytest.MonkeyPatch,
    timer: KillTimer | None,
    expected: str | None,
) -> None:
    monkeypatch.setattr(debugger_module, "worker_kill_timer", lambda: timer)
    with capture_logs() as logs:
        make()
    warnings = [e for e in logs if e["event"] == "debugger_short_timeout"]
    if expected is None:
        assert warnings == []
        return
    assert timer is not None
    (warning,) = warnings
    assert warning["log_level"] == "warning"
    assert warning["timeout_s"] == timer.seconds
    assert warning["server_timeout"] == timer.setting
    assert warning["message"].startswith(expected + ": a debugging session")
    assert "killed in about" not in warning["message"]  # no request runs yet
    fix = "harakiri 3600" if timer.server == "uwsgi" else "--timeout 3600"
    assert fix in warning["message"]


# -- expiry ----------------------------------------------------------------------------


def test_expires_by_itself(make: t.Callable[..., DebuggerPages]) -> None:
    h = make(debugger_ttl=0.5)
    lock = h.gate.pin_lock
    assert lock is not None and lock.pin_file is not None
    secret, frame = h.traceback()
    assert h.pinauth(secret, h.pin()).get_json()["auth"] is True
    with capture_logs() as logs, capture_signals() as sent:
        deadline = time.monotonic() + 5
        while h.gate.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not h.gate.active
        # Gone: debugger routes are the app's again (/boom raises).
        assert_envelope(h.command(secret, frame, "answer"), 500)
        assert_envelope(h.get("/boom" + RESOURCE), 500)
        assert_envelope(h.get("/nowhere" + RESOURCE), 404)
        assert_envelope(h.get("/boom"), 500)  # back to the envelope
    assert [e["reason"] for e in logs if e["event"] == "debugger_disabled"] == [
        "expired"
    ]
    assert [s.kwargs for s in sent if s.name == "debugger-disabled"] == [
        {"reason": "expired"}
    ]
    assert not os.path.exists(lock.pin_file)
    assert h.gate.debugger is not None and h.gate.debugger.frames == {}
    assert h.app.config["PROPAGATE_EXCEPTIONS"] is None  # restored


# -- production and start-up refusals --------------------------------------------------


def test_production_refused_without_override(
    make: t.Callable[..., DebuggerPages],
) -> None:
    with pytest.raises(DiagConfigError, match="FLASK_DIAG_DEBUGGER_IN_PRODUCTION"):
        make(env="production")
    h = make(env="production", debugger_in_production=True)
    assert h.gate.active
    h.traceback()


def test_production_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER", "on")
    monkeypatch.setenv("FLASK_DIAG_ENV", "production")
    app = Flask("prod")
    with pytest.raises(DiagConfigError, match="refuses it in production"):
        Diag(app)


@pytest.mark.parametrize("value", ["off", "OFF", "123-456-789"])
def test_werkzeug_debug_pin_refused(
    monkeypatch: pytest.MonkeyPatch, make: t.Callable[..., DebuggerPages], value: str
) -> None:
    monkeypatch.setenv("WERKZEUG_DEBUG_PIN", value)
    with pytest.raises(DiagConfigError, match="WERKZEUG_DEBUG_PIN"):
        make()


@pytest.mark.parametrize("pin", ["", "off", "1234", "short-7", "has space 123"])
def test_weak_or_empty_pin_refused(monkeypatch: pytest.MonkeyPatch, pin: str) -> None:
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER", "on")
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER_PIN", pin)
    with pytest.raises(DiagConfigError, match="FLASK_DIAG_DEBUGGER_PIN"):
        Diag(Flask("weak"))


def test_the_pin_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not in the start-up error of a rejected PIN (the one the operator
    # fixes it to is likely close), nor in repr() or `flask diag settings`.
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER", "on")
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER_PIN", "Staging!Pin-2024")
    with pytest.raises(DiagConfigError, match="FLASK_DIAG_DEBUGGER_PIN") as refused:
        Diag(Flask("rejected"))
    assert "Staging" not in str(refused.value)
    assert "16 characters" in str(refused.value)
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER_PIN", PIN)
    app = Flask("shown")
    diag = Diag(app)
    try:
        settings = diag.settings_for(app)
        pin = settings.debugger_pin
        assert pin is not None
        assert pin not in repr(settings)
        result = app.test_cli_runner().invoke(args=["diag", "settings"])
        assert result.exit_code == 0, result.output
        assert pin not in result.output
        (line,) = [ln for ln in result.output.splitlines() if "DEBUGGER_PIN" in ln]
        assert "(set, not shown)" in line
    finally:
        for gate in find_in_stack(app.wsgi_app, DebuggerGate):
            gate.close()


# -- one activation per server (worker processes replaced) ---------------------


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private temporary directory for the servers' records."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return tmp_path / f"{debugger_pin._RECORDS_PREFIX}{os.getuid()}"


def _another_worker(monkeypatch: pytest.MonkeyPatch, later: float = 0.0) -> None:
    """Be the next worker of the server: another process, ``later`` s on."""
    monkeypatch.setattr(debugger_pin, "_this_process", lambda: "424242-1")
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + later)


# This test process stands for the server's master.
SERVER = debugger_pin.server_key(os.getpid())


def test_a_later_worker_takes_over_the_activation(
    records: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert SERVER is not None
    first = PinLock.activate(None, ttl=60, server=SERVER)
    try:
        assert first.attempt("0000-0000-0001").failures == 1
        _another_worker(monkeypatch, later=10)
        second = PinLock.activate(None, ttl=60, server=SERVER)
        assert second.pin_file == first.pin_file
        assert second.started_wall == first.started_wall
        assert second.expires_wall == first.expires_wall
        assert 45 < second.remaining() <= 50
        assert second.attempt("0000-0000-0002").failures == 2
        assert second.attempt(Path(first.pin_file or "").read_text()).accepted
    finally:
        first.remove_file()


def test_another_gate_of_the_same_process_has_its_own_activation(
    records: Path,
) -> None:
    first = PinLock.activate(None, ttl=60, server=SERVER)
    second = PinLock.activate(None, ttl=60, server=SERVER)
    try:
        assert second.pin_file != first.pin_file
    finally:
        first.remove_file()
        second.remove_file()


def test_an_activation_that_is_over_stays_over(
    records: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = PinLock.activate(None, ttl=60, server=SERVER)
    spent = first.pin_file
    _another_worker(monkeypatch, later=61)
    later = PinLock.activate(None, ttl=60, server=SERVER)
    assert later.expired() and later.pin_file is None
    # The spent PIN file is deleted; the record stays, so that the server's
    # next workers find the activation over too.
    assert spent is not None and not os.path.exists(spent)
    assert os.path.exists(later.record or "")


def test_an_operator_pin_never_takes_over_a_pin_file(
    records: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = PinLock.activate(None, ttl=60, server=SERVER)
    try:
        _another_worker(monkeypatch, later=1)
        operator = PinLock.activate(PIN, ttl=60, server=SERVER)
        assert operator.pin_file is None
        assert operator.attempt(PIN).accepted
        assert operator.attempt(PIN).accepted  # never rotated
    finally:
        first.remove_file()


def test_a_records_directory_that_is_not_ours_keeps_the_debugger_off(
    records: Path,
) -> None:
    records.mkdir(mode=0o700)
    records.chmod(0o777)  # writable by others: not trusted
    with pytest.raises(debugger_pin.SharingError, match="not a private directory"):
        PinLock.activate(None, ttl=60, server=SERVER)


def test_the_gate_stays_off_when_the_activation_cannot_be_shared(
    records: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under a server that replaces its workers, without the shared record
    # each new worker would start a new activation: fail closed.
    records.mkdir(mode=0o700)
    records.chmod(0o777)
    monkeypatch.setattr(debugger_module, "server_key", lambda master: SERVER)
    app = debug_app("unshared")
    with capture_logs() as logs:
        application = wrap(app, environ={}, debugger=True, debugger_pin=PIN)
    (gate,) = _gates(application)
    assert gate.debugger is None and gate.pin_lock is None
    (line,) = [entry for entry in logs if entry["event"] == "debugger_refused"]
    assert "cannot share" in line["message"]
    response = Client(application).get("/boom", environ_base=LOOPBACK)
    assert_envelope(response, 500)


def test_without_a_master_each_process_has_its_own_activation() -> None:
    assert debugger_pin.server_key(None) is None


def test_operator_pin_no_file(make: t.Callable[..., DebuggerPages]) -> None:
    h = make(debugger_pin=PIN)
    lock = h.gate.pin_lock
    assert lock is not None and lock.pin_file is None
    secret, frame = h.traceback()
    assert h.pinauth(secret, PIN).get_json()["auth"] is True
    assert "42" in h.command(secret, frame, "answer + 1").get_data(as_text=True)


# -- brute force -----------------------------------------------------------------------


def test_brute_force_locks_without_sleeping(
    make: t.Callable[..., DebuggerPages],
) -> None:
    h = make()
    secret, frame = h.traceback()
    with capture_logs() as logs:
        for i in range(20):
            started = time.perf_counter()
            response = h.pinauth(secret, f"{i:04d}-0000-0000")
            elapsed = time.perf_counter() - started
            assert elapsed < FAST, f"attempt {i} took {elapsed:.3f}s"
            assert response.get_json()["auth"] is False
            assert "Set-Cookie" not in response.headers
        # Locked: even the right PIN is refused now.
        right = h.pinauth(secret, h.pin())
    assert right.get_json() == {"auth": False, "exhausted": True}
    assert "Set-Cookie" not in right.headers
    assert h.command(secret, frame, "answer").status_code == 403
    refused = [e for e in logs if e["event"] == "debugger_pin_refused"]
    assert len(refused) == 21
    assert [e["locked"] for e in refused[:5]] == [False] * 4 + [True]
    assert all(e["locked"] for e in refused[5:])
    assert not [e for e in logs if e["event"] == "debugger_pin_accepted"]


def test_cookie_of_an_earlier_activation_refused(
    make: t.Callable[..., DebuggerPages],
) -> None:
    first = make(debugger_pin=PIN)
    secret, _ = first.traceback()
    cookie = first.pinauth(secret, PIN).headers["Set-Cookie"]
    name, _, rest = cookie.partition("=")
    value = rest.split(";", 1)[0]
    first_lock = first.gate.pin_lock
    assert first_lock is not None and first_lock.cookie_valid(value)
    first.gate.close()
    second = make(debugger_pin=PIN)  # same operator PIN, new activation
    lock = second.gate.pin_lock
    assert lock is not None and lock.cookie_name != name
    secret2, frame2 = second.traceback()
    for cookie_name in (name, lock.cookie_name):  # as sent, and renamed
        second.client.set_cookie(cookie_name, value)
        assert second.command(secret2, frame2, "answer").status_code == 403
    assert not lock.cookie_valid(value)
    # A forged cookie with a plausible timestamp fails too.
    assert not lock.cookie_valid(f"{int(time.time())}|{value.partition('|')[2]}")


def test_pin_lock_unit() -> None:
    lock = PinLock("abcd-efgh-1234", ttl=60, pin_file=None, max_failures=2, lockout=60)
    assert lock.attempt("abcdefgh1234").accepted  # dashes do not count
    assert not lock.attempt("x").locked
    second = lock.attempt("y")
    assert second.locked and not second.accepted
    assert not lock.attempt("abcd-efgh-1234").accepted  # locked
    assert lock.locked()
    assert not lock.cookie_valid("garbage") and not lock.cookie_valid(None)


# -- kept tracebacks, routes -----------------------------------------------------------


def test_tracebacks_kept_are_capped(make: t.Callable[..., DebuggerPages]) -> None:
    h = make(debugger_frames=2)
    debugger = h.gate.debugger
    assert debugger is not None
    secret, first_frame = h.traceback()
    per_traceback = len(debugger.frames)
    for _ in range(4):
        h.traceback()
    assert debugger.traceback_count == 2
    assert len(debugger.frames) == 2 * per_traceback
    assert int(first_frame) not in debugger.frames
    assert h.pinauth(secret, h.pin()).get_json()["auth"] is True
    assert h.command(secret, first_frame, "answer").status_code == 404


def test_unmatched_debugger_requests_never_rerun_the_view(
    make: t.Callable[..., DebuggerPages],
) -> None:
    h = make()
    secret, frame = h.traceback()
    assert h.calls == 1
    for query in (
        "?__debugger__=yes",
        "?__debugger__=yes&cmd=answer&frm=1&s=" + secret,  # no such frame
        f"?__debugger__=yes&cmd=answer&frm={frame}&s=wrong",  # wrong secret
        f"?__debugger__=yes&cmd=pinauth&pin={h.pin()}",  # no secret
        "?%5F%5Fdebugger%5F%5F=yes&cmd=x&frm=1&s=" + secret,  # encoded
    ):
        response = h.get("/boom" + query)
        assert response.status_code in (403, 404), query
    assert h.calls == 1


def test_console_off_unless_asked(make: t.Callable[..., DebuggerPages]) -> None:
    h = make()
    assert_envelope(h.get("/console"), 404)
    h2 = make(debugger_console=True)
    page = h2.get("/console")
    assert page.status_code == 200 and "Console Locked" in page.get_data(as_text=True)
    assert_envelope(h2.get("/console", **FOREIGN), 404)  # the app has none
    secret = console_secret(page.get_data(as_text=True))
    assert h2.pinauth(secret, h2.pin()).get_json()["auth"] is True
    result = h2.get(f"/console?__debugger__=yes&cmd=6*7&frm=0&s={secret}")
    assert "42" in result.get_data(as_text=True)


def test_printpin_never_prints_it(make: t.Callable[..., DebuggerPages]) -> None:
    h = make()
    secret, _ = h.traceback()
    with capture_logs() as logs:
        response = h.get(f"/boom?__debugger__=yes&cmd=printpin&s={secret}")
    assert response.status_code == 200 and response.get_data() == b""
    (event,) = [e for e in logs if e["event"] == "debugger_pin_requested"]
    assert event["pin_file"] == h.gate.pin_lock.pin_file  # type: ignore[union-attr]


# -- audit trail -----------------------------------------------------------------------


def test_every_event_logged_and_signalled_never_the_pin(
    make: t.Callable[..., DebuggerPages], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with capture_logs() as logs, capture_signals() as sent:
        h = make()
        pin = h.pin()
        secret, frame = h.traceback()
        h.pinauth(secret, "9999-9999-9999")
        h.pinauth(secret, pin)
        h.command(secret, frame, "answer * 2")
        h.get("/boom" + RESOURCE, **FOREIGN)
        h.get(f"/boom?__debugger__=yes&cmd=printpin&s={secret}")
        h.gate.close()
    names = [e["event"] for e in logs if e["event"].startswith("debugger_")]
    assert names == [
        "debugger_enabled",
        "debugger_pin_refused",
        "debugger_pin_accepted",
        "debugger_command",
        "debugger_client_refused",
        "debugger_pin_requested",
        "debugger_disabled",
    ]
    enabled = logs[names.index("debugger_enabled")]
    assert enabled["log_level"] == "critical"
    assert enabled["pin_file"] == h.gate.pin_lock.pin_file  # type: ignore[union-attr]
    command = next(e for e in logs if e["event"] == "debugger_command")
    assert command["command"] == "answer * 2" and command["client"] == "127.0.0.1"
    assert re.fullmatch(r"[0-9a-f]{32}", command["request_id"])
    signals = [s for s in sent if s.name.startswith("debugger-")]
    assert [s.name for s in signals] == [
        "debugger-enabled",
        "debugger-pin-refused",
        "debugger-pin-accepted",
        "debugger-command",
        "debugger-client-refused",
        "debugger-disabled",
    ]
    kwargs = {s.name: s.kwargs for s in signals}
    assert set(kwargs["debugger-enabled"]) == {"pin_file", "expires_at", "allow"}
    # Never environ: it holds the query string and the cookies (a receiver
    # that logs its kwargs would leak the unlock cookie).
    request = {"request_id", "path", "client"}
    assert set(kwargs["debugger-pin-refused"]) == {
        *request,
        "reason",
        "failures",
        "locked",
    }
    assert set(kwargs["debugger-pin-accepted"]) == request
    assert set(kwargs["debugger-command"]) == {*request, "command"}
    assert set(kwargs["debugger-client-refused"]) == {*request, "reason"}
    assert kwargs["debugger-pin-refused"]["reason"] == "wrong"
    assert kwargs["debugger-client-refused"]["client"] == "203.0.113.7"
    assert kwargs["debugger-command"]["command"] == "answer * 2"
    assert kwargs["debugger-command"]["request_id"] == command["request_id"]
    assert kwargs["debugger-command"]["path"] == "/boom"
    # The PIN in no captured record, structlog's or the stdlib's.
    everything = repr(logs) + repr([r.__dict__ for r in caplog.records])
    assert pin not in everything and pin.replace("-", "") not in everything


def test_raising_signal_receiver_changes_nothing(
    make: t.Callable[..., DebuggerPages],
) -> None:
    h = make()
    secret, _ = h.traceback()

    def broken(sender: object, **kwargs: t.Any) -> None:
        raise RuntimeError("receiver bug")

    debugger_pin_refused.connect(broken)
    try:
        with capture_logs() as logs:
            response = h.pinauth(secret, "1234-1234-1234")
    finally:
        debugger_pin_refused.disconnect(broken)
    assert response.get_json() == {"auth": False, "exhausted": False}
    assert any(e["event"] == "flask_diag internal error" for e in logs)
