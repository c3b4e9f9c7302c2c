"""Attacks on the debugger gate (security review of ``flask_diag.debugger``).

Each test tries to get code execution, a traceback / source leak or the PIN
without being allowed, and asserts the *safe* behaviour: a failing test is a
hole. In process with werkzeug's test client, against the gate around a
Flask app (``Diag``) and around a plain WSGI callable; one test runs
werkzeug's real development server on 127.0.0.1 to read its request log.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import stat
import threading
import time
import types
import typing as t
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from debugger_pages import console_secret
from debugger_pages import debug_app
from debugger_pages import DebuggerPages
from debugger_pages import FOREIGN
from debugger_pages import LOOPBACK
from debugger_pages import page_secret
from debugger_pages import PIN
from werkzeug.debug import get_pin_and_cookie_name
from werkzeug.debug import hash_pin
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.serving import make_server
from werkzeug.test import Client
from werkzeug.test import EnvironBuilder
from werkzeug.test import run_wsgi_app

from flask_diag import debugger as debugger_module
from flask_diag import debugger_pin
from flask_diag import Diag
from flask_diag import DiagConfigError
from flask_diag.debugger import DebuggerGate
from flask_diag.debugger_pin import PinLock
from flask_diag.debugger_pin import random_pin
from flask_diag.debugger_pin import write_pin_file
from flask_diag.internal import find_in_stack
from flask_diag.testing import capture_logs
from flask_diag.testing import capture_signals

# 6 * 7 * 1000001: the console prints 42000042 only if it evaluated this.
PROBE = "6*7*1000001"
EXECUTED = "42000042"
DEBUGGER_MARKERS = ("SECRET = ", "EVALEX", "Traceback", "Interactive Console")


def executed(response: t.Any) -> bool:
    return EXECUTED in response.get_data(as_text=True)


def debugger_content(response: t.Any) -> bool:
    text = response.get_data(as_text=True)
    return any(marker in text for marker in DEBUGGER_MARKERS)


def serves_debugger_js(response: t.Any) -> bool:
    """Whether the answer is werkzeug's page script (the gate let it in)."""
    return response.status_code == 200 and b"makeDebugURL" in response.get_data()


class Target(DebuggerPages):
    """A gate around an app whose ``/boom`` raises (:class:`DebuggerPages`),
    and the same app with the debugger off (``off``), which a refused request
    must not be told apart from."""

    def __init__(self, app: t.Any, gate: DebuggerGate, off: t.Any) -> None:
        super().__init__(app, gate)
        self.off = Client(off)

    def assert_as_if_off(
        self, response: t.Any, path: str, method: str = "GET", **environ: t.Any
    ) -> None:
        """``response`` is what the app answers with no debugger at all."""
        expected = self.off.open(
            path, method=method, environ_overrides={**LOOPBACK, **environ}
        )
        got = (response.status_code, response.mimetype)
        assert got == (expected.status_code, expected.mimetype), (path, environ)
        assert not debugger_content(response) and not serves_debugger_js(response)
        assert not executed(response)


@pytest.fixture
def targets() -> Iterator[list[DebuggerGate]]:
    gates: list[DebuggerGate] = []
    yield gates
    for gate in gates:
        gate.close()


@pytest.fixture
def flask_target(
    targets: list[DebuggerGate],
) -> t.Callable[..., Target]:
    def build(**options: t.Any) -> Target:
        app = debug_app("attacked")
        options.setdefault("debugger", True)
        options.setdefault("debugger_pin", PIN)
        Diag(app, **options)
        (inner,) = find_in_stack(app.wsgi_app, DebuggerGate)
        targets.append(inner)
        off = debug_app("attacked")
        Diag(off, **{**options, "debugger": False})
        return Target(app, inner, off)

    return build


def _plain_app(environ: t.Any, start_response: t.Any) -> list[bytes]:
    if environ.get("PATH_INFO") == "/boom":
        raise ZeroDivisionError("plain boom")
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"plain hello"]


@pytest.fixture
def plain_target(targets: list[DebuggerGate]) -> t.Callable[..., Target]:
    def build(**options: t.Any) -> Target:
        options.setdefault("debugger", True)
        options.setdefault("debugger_pin", PIN)
        gate = DebuggerGate(_plain_app, **options)
        targets.append(gate)
        return Target(gate, gate, DebuggerGate(_plain_app, debugger=False))

    return build


def shift_time(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Move the gate's clocks (monotonic and wall) ``seconds`` ahead."""
    fake = types.SimpleNamespace(
        monotonic=lambda: time.monotonic() + seconds,
        time=lambda: time.time() + seconds,
        perf_counter=time.perf_counter,
        sleep=time.sleep,
    )
    monkeypatch.setattr(debugger_module, "time", fake)
    monkeypatch.setattr(debugger_pin, "time", fake)


# -- the routes and their commands --


@pytest.mark.parametrize(
    "filename",
    [
        "../__init__.py",
        "..%2F__init__.py",
        "../../flask/app.py",
        "..\\__init__.py",
        "/etc/passwd",
        "__init__.py",
        "console.py",
        "../tbtools.py",
        ".",
        "..",
    ],
)
def test_resource_never_serves_outside_shared(
    flask_target: t.Callable[..., Target], filename: str
) -> None:
    target = flask_target()
    response = target.get(f"/?__debugger__=yes&cmd=resource&f={quote(filename)}")
    assert response.status_code != 200
    text = response.get_data(as_text=True)
    assert "import " not in text and "root:" not in text


def test_printpin_never_answers_the_pin(flask_target: t.Callable[..., Target]) -> None:
    target = flask_target(debugger_pin=None)
    secret, _ = target.traceback()
    with capture_logs() as logs:
        for query in (
            f"cmd=printpin&s={secret}",
            "cmd=printpin",
            "cmd=printpin&s=",
            "cmd=printpin&s=x",
        ):
            response = target.get(f"/?__debugger__=yes&{query}")
            assert target.pin() not in response.get_data(as_text=True)
    assert target.pin() not in repr(logs)


@pytest.mark.parametrize(
    "secret_query",
    ["", "&s=", "&s=wrong", "&s=wrong&s={secret}", "&S={secret}", "&s={secret}x"],
)
def test_pinauth_needs_the_page_secret(
    flask_target: t.Callable[..., Target], secret_query: str
) -> None:
    target = flask_target()
    secret, _ = target.traceback()
    query = secret_query.format(secret=secret)
    response = target.get(f"/?__debugger__=yes&cmd=pinauth&pin={PIN}{query}")
    assert response.status_code == 404
    assert "Set-Cookie" not in response.headers
    # Without the secret an attempt does not even count (no lockout DoS).
    for _ in range(10):
        target.get(f"/?__debugger__=yes&cmd=pinauth&pin=wrong{query}")
    assert not target.lock.locked()
    # The PIN where the page script sends it, a POST body: the right one
    # opens nothing without the secret, and wrong ones are not counted.
    url = f"/?__debugger__=yes&cmd=pinauth{query}"
    response = target.client.post(url, data={"pin": PIN}, environ_overrides=LOOPBACK)
    assert response.status_code == 404
    assert "Set-Cookie" not in response.headers
    for _ in range(10):
        response = target.client.post(
            url, data={"pin": "wrong-pin-0000"}, environ_overrides=LOOPBACK
        )
        assert response.status_code == 404
    assert not target.lock.locked()


@pytest.mark.parametrize(
    "query",
    [
        "__debugger__=yes&cmd={cmd}&frm={frm}&s={s}",
        "__debugger__=YES&cmd={cmd}&frm={frm}&s={s}",
        "__DEBUGGER__=yes&cmd={cmd}&frm={frm}&s={s}",
        "%5F%5Fdebugger%5F%5F=yes&cmd={cmd}&frm={frm}&s={s}",
        "%5f%5fdebugger%5f%5f=%79es&cmd={cmd}&frm={frm}&s={s}",
        "__debugger__=no&__debugger__=yes&cmd={cmd}&frm={frm}&s={s}",
        "__debugger__=yes&__debugger__=no&cmd={cmd}&frm={frm}&s={s}",
        "__debugger__=yes&cmd=resource&cmd={cmd}&frm={frm}&s={s}",
        "__debugger__=yes&cmd={cmd}&frm={frm}&frm=0&s={s}",
        "__debugger__=yes;cmd={cmd};frm={frm};s={s}",
        "__debugger__=yes&cmd={cmd}&frm=+{frm}&s={s}",
        "__debugger__=yes+&cmd={cmd}&frm={frm}&s={s}",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "PUT"])
def test_no_command_without_the_unlock_cookie(
    flask_target: t.Callable[..., Target], query: str, method: str
) -> None:
    target = flask_target()
    secret, frame = target.traceback()
    qs = query.format(cmd=quote(PROBE), frm=frame, s=secret)
    response = target.client.open(
        "/boom?" + qs, method=method, environ_overrides=LOOPBACK
    )
    assert not executed(response)
    assert "Set-Cookie" not in response.headers


def test_query_in_path_info_is_not_a_debugger_route(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target()
    secret, frame = target.unlock()
    environ = {
        "PATH_INFO": f"/boom?__debugger__=yes&cmd={PROBE}&frm={frame}&s={secret}",
        "QUERY_STRING": "",
    }
    response = target.get("/boom", **environ)
    assert not executed(response)


def test_foreign_client_with_stolen_secret_frame_and_cookie(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target()
    secret, frame = target.unlock()
    assert executed(target.command(secret, frame, PROBE))  # the allowed client can
    for environ in (
        FOREIGN,
        {**FOREIGN, "HTTP_X_FORWARDED_FOR": "127.0.0.1"},
        {"REMOTE_ADDR": "::ffff:203.0.113.7"},
        {"REMOTE_ADDR": ""},
        {"REMOTE_ADDR": "garbage"},
        {"HTTP_HOST": "evil.example"},
        {"wsgi.multiprocess": True},
    ):
        response = target.command(secret, frame, PROBE, **environ)
        assert not executed(response), environ
        # Passed to the app as if there were no debugger: /boom raises, the
        # envelope answers (the gate's own 404 would give the debugger away).
        path = f"/boom?__debugger__=yes&cmd={quote(PROBE)}&frm={frame}&s={secret}"
        target.assert_as_if_off(response, path, **environ)


def test_frame_of_an_evicted_traceback_is_gone(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target(debugger_frames=1)
    secret, old_frame = target.unlock()
    debugger = target.gate.debugger
    assert debugger is not None
    # Held, so that no newer frame reuses its id() (werkzeug's frame key).
    original = debugger.frames[int(old_frame)]
    target.traceback()
    target.traceback()
    response = target.command(secret, old_frame, PROBE)
    assert response.status_code == 404 and not executed(response)
    assert all(kept is not original for kept in debugger.frames.values())


def test_stale_frame_id_never_addresses_a_newer_traceback(
    flask_target: t.Callable[..., Target],
) -> None:
    """werkzeug keys frames by ``id(frame)`` and never frees them, so an id
    is never reused. The gate evicts old tracebacks: their frame objects are
    freed and CPython hands the same addresses to the frames of newer
    tracebacks. The console of an old page (``frm`` of an evicted traceback)
    must not silently run commands in another request's frame."""
    target = flask_target(debugger_frames=1)
    target.unlock()
    debugger = target.gate.debugger
    assert debugger is not None
    pages: list[list[str]] = []
    for _ in range(20):
        html = target.get("/boom").get_data(as_text=True)
        pages.append(re.findall(r'<div class="frame" id="frame-(\d+)"', html))
    # Every earlier page was evicted (cap 1): none of its ids may answer.
    stale = {frm for page in pages[:-1] for frm in page}
    reused = sorted(frm for frm in stale if int(frm) in debugger.frames)
    assert reused == []


@pytest.mark.parametrize("frm", ["0", "-1", "", "x", "1e3", "9" * 5000, "0x10"])
def test_console_frame_unreachable_when_console_is_off(
    flask_target: t.Callable[..., Target], frm: str
) -> None:
    target = flask_target()
    secret, _ = target.unlock()
    response = target.get(f"/?__debugger__=yes&cmd={quote(PROBE)}&frm={frm}&s={secret}")
    assert response.status_code == 404 and not executed(response)


# -- the console path --


@pytest.mark.parametrize(
    "path",
    ["/console", "/console/", "//console", "/Console", "/CONSOLE", "/console;x"],
)
@pytest.mark.parametrize("factory", ["flask_target", "plain_target"])
def test_console_path_off(
    request: pytest.FixtureRequest, factory: str, path: str
) -> None:
    target = request.getfixturevalue(factory)()
    response = target.get(path)
    assert not debugger_content(response)
    assert 0 not in (target.gate.debugger.frames if target.gate.debugger else {})


@pytest.mark.parametrize("path", ["/console/", "//console", "/Console", "/console%20"])
def test_console_path_variants_are_not_the_console(
    flask_target: t.Callable[..., Target], path: str
) -> None:
    target = flask_target(debugger_console=True)
    assert not debugger_content(target.get(path))


def test_console_on_still_gated(flask_target: t.Callable[..., Target]) -> None:
    target = flask_target(debugger_console=True)
    for environ in (
        FOREIGN,
        {"HTTP_HOST": "evil.example"},
        {"wsgi.multiprocess": True},
    ):
        response = target.get("/console", **environ)
        assert not debugger_content(response), environ
    page = target.get("/console")
    assert page.status_code == 200
    secret = console_secret(page.get_data(as_text=True))
    # The page is shown, but its frame 0 runs nothing without the PIN.
    query = f"?__debugger__=yes&cmd={quote(PROBE)}&frm=0&s={secret}"
    locked = target.get("/console" + query)
    assert locked.status_code == 403 and not executed(locked)
    assert not executed(target.get("/console" + query, **FOREIGN))


# -- cookie forgery --


def test_proxy_fix_outside_the_gate_is_not_a_way_in() -> None:
    # Flask's documented recipe, applied after Diag(app): ProxyFix rewrites
    # REMOTE_ADDR and Host from X-Forwarded-* headers any client can send.
    # The gate reads what the server saw; a foreign client stays foreign.
    app = debug_app("proxied")
    Diag(app, debugger=True, debugger_pin=PIN, debugger_console=True)
    (gate,) = find_in_stack(app.wsgi_app, DebuggerGate)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_host=1)  # type: ignore[method-assign]
    client = Client(app)
    spoofed = {
        "Host": "staging.example.com",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Host": "localhost",
    }
    try:
        response = client.get("/boom", headers=spoofed, environ_overrides=FOREIGN)
        assert response.status_code == 500
        assert response.mimetype == "application/problem+json"
        assert not debugger_content(response)
        assert (
            client.get(
                "/console", headers=spoofed, environ_overrides=FOREIGN
            ).status_code
            == 404
        )
        # The real loopback client is still let in through the same ProxyFix.
        own = client.get(
            "/boom", headers={"Host": "localhost"}, environ_overrides=LOOPBACK
        )
        assert debugger_content(own)
    finally:
        gate.close()


def test_forged_cookies_refused(flask_target: t.Callable[..., Target]) -> None:
    target = flask_target()
    secret, frame = target.traceback()
    lock = target.lock
    now = int(time.time())
    werkzeug_pin, werkzeug_name = get_pin_and_cookie_name(target.app)
    forged = [
        (lock.cookie_name, f"{now}|{hash_pin(PIN)}"),  # werkzeug's format
        (lock.cookie_name, f"{now}|{hash_pin(PIN.replace('-', ''))}"),
        (lock.cookie_name, f"{now}|"),
        (lock.cookie_name, "|"),
        (lock.cookie_name, f"{now}|{'0' * 24}"),
        (lock.cookie_name, f"{now + 10**6}|{hash_pin(PIN)}"),
        (werkzeug_name, f"{now}|{hash_pin(werkzeug_pin or '')}"),
        ("__wzd", f"{now}|{hash_pin(PIN)}"),
    ]
    for name, value in forged:
        target.client.set_cookie(name, value)
        response = target.command(secret, frame, PROBE)
        assert response.status_code == 403 and not executed(response), (name, value)
        target.client.delete_cookie(name)


def test_cookie_of_another_gate_in_the_same_process(
    flask_target: t.Callable[..., Target],
) -> None:
    first = flask_target()
    second = flask_target()
    first.unlock()
    value = first.client.get_cookie(first.lock.cookie_name)
    assert value is not None
    secret, frame = second.traceback()
    second.client.set_cookie(second.lock.cookie_name, value.value)
    second.client.set_cookie(first.lock.cookie_name, value.value)
    response = second.command(secret, frame, PROBE)
    assert response.status_code == 403 and not executed(response)


# -- lockout --


def test_right_pin_during_lockout_refused(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target()
    secret, frame = target.traceback()
    for _ in range(5):
        target.pinauth(secret, "0000-0000-0000")
    started = time.perf_counter()
    response = target.pinauth(secret, PIN)
    assert time.perf_counter() - started < 0.1
    assert response.get_json() == {"auth": False, "exhausted": True}
    assert "Set-Cookie" not in response.headers
    assert target.command(secret, frame, PROBE).status_code == 403


def test_parallel_guesses_cannot_exceed_the_budget(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target()
    secret, _ = target.traceback()
    barrier = threading.Barrier(24, timeout=10)
    results: list[t.Any] = []
    guard = threading.Lock()

    def guess(i: int) -> None:
        client = Client(target.app)  # another cookie jar each
        barrier.wait()
        response = client.post(
            f"/?__debugger__=yes&cmd=pinauth&s={secret}",
            data={"pin": f"9999-0000-{i:04d}"},
            environ_overrides=LOOPBACK,
        )
        with guard:
            results.append(response.get_json())

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 24
    # Only max_failures PINs were actually compared; the rest were refused.
    assert sum(1 for r in results if not r["exhausted"]) <= 4
    assert target.pinauth(secret, PIN).get_json()["auth"] is False


def test_lockout_doubles_and_time_travel_within_it_fails(
    flask_target: t.Callable[..., Target], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = flask_target(debugger_ttl=86400)
    secret, _ = target.traceback()
    for _ in range(5):
        target.pinauth(secret, "0000-0000-0000")
    shift_time(monkeypatch, 299)
    assert target.pinauth(secret, PIN).get_json()["auth"] is False
    shift_time(monkeypatch, 301)
    for _ in range(5):
        target.pinauth(secret, "0000-0000-0000")
    shift_time(monkeypatch, 301 + 599)
    assert target.pinauth(secret, PIN).get_json()["auth"] is False
    shift_time(monkeypatch, 301 + 601)
    assert target.pinauth(secret, PIN).get_json()["auth"] is True


# -- weak PINs --


@pytest.mark.parametrize("pin", ["--------", "a-------", "ab--cd--", "1-2-3-4-5-6"])
def test_operator_pin_is_at_least_8_characters_after_normalising(pin: str) -> None:
    """werkzeug (and the gate) ignore dashes when comparing PINs, so the
    length that counts is the one without them."""
    with pytest.raises(DiagConfigError, match="at least 8 letters or digits"):
        DebuggerGate(_plain_app, debugger=True, debugger_pin=pin)


def test_random_pin_entropy() -> None:
    pins = {random_pin() for _ in range(2000)}
    assert len(pins) == 2000
    for pin in pins:
        assert re.fullmatch(r"\d{4}-\d{4}-\d{4}", pin)
    # Every digit position varies (no constant prefix such as werkzeug's).
    digits = [p.replace("-", "") for p in pins]
    for position in range(12):
        assert len({d[position] for d in digits}) == 10


# -- hosts --


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1.evil.com",
        "localhost.evil.com",
        "evil.com",
        "evil.com:8000",
        "127.0.0.1@evil.com",
        "evil.com#.localhost",
        "evil.com/.localhost",
        "[::1].evil.com",
        "[::1]evil.com",
        "[::ffff:7f00:1]",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "loc\u0430lhost",  # Cyrillic a
        "loc\u0430lhost".encode("idna").decode(),  # its punycode
        "localhost:0",
        "localhost:65536",
        "localhost:-1",
        "localhost:80:80",
        "localhost evil.com",
        "localhost,evil.com",
        "evil.com\x00localhost",
        ".",
        "..localhost.evil",
        "localhostevil.com",
        "evillocalhost",
        "[::1",
        "::1",
        "",
    ],
)
def test_untrusted_host_refused(
    flask_target: t.Callable[..., Target], host: str
) -> None:
    target = flask_target()
    target.traceback()
    path = "/?__debugger__=yes&cmd=resource&f=debugger.js"
    target.assert_as_if_off(target.get(path, HTTP_HOST=host), path, HTTP_HOST=host)
    assert not debugger_content(target.get("/boom", HTTP_HOST=host))


@pytest.mark.parametrize(
    "host", ["localhost.", "LOCALHOST", "[::1]", "127.0.0.1:65535", "a.localhost"]
)
def test_trusted_host_variants(
    flask_target: t.Callable[..., Target], host: str
) -> None:
    target = flask_target()
    response = target.get(
        "/?__debugger__=yes&cmd=resource&f=debugger.js", HTTP_HOST=host
    )
    assert serves_debugger_js(response)


def test_missing_host_header_with_server_name(
    plain_target: t.Callable[..., Target],
) -> None:
    target = plain_target()
    environ = EnvironBuilder(
        path="/boom",
        environ_base={**LOOPBACK, "SERVER_NAME": "localhost"},
    ).get_environ()
    del environ["HTTP_HOST"]
    with pytest.raises(ZeroDivisionError):  # the app's error, not the debugger's page
        run_wsgi_app(target.gate, environ)


# -- clients --


@pytest.mark.parametrize("network", ["0.0.0.0/0", "0.0.0.0/1", "::/0", "2000::/8"])
def test_trusting_everyone_as_a_proxy_is_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, network: str
) -> None:
    # Every peer a trusted proxy: any client could name itself 127.0.0.1 in
    # X-Forwarded-For.
    monkeypatch.setenv("FLASK_DIAG_DEBUGGER_TRUSTED_PROXIES", f"10.0.0.0/8,{network}")
    with pytest.raises(DiagConfigError, match="FLASK_DIAG_DEBUGGER_TRUSTED_PROXIES"):
        Diag(debug_app("everyone"), debugger=True, debugger_pin=PIN)


@pytest.mark.parametrize(
    "forwarded",
    [
        "127.0.0.1",
        "::1",
        "127.0.0.1, 127.0.0.1",
        " 127.0.0.1 ",
        "[::1]",
        "127.0.0.1, garbage",
        "unknown, 127.0.0.1",
    ],
)
def test_forwarded_for_ignored_without_trusted_proxies(
    flask_target: t.Callable[..., Target], forwarded: str
) -> None:
    target = flask_target()
    path = "/?__debugger__=yes&cmd=resource&f=debugger.js"
    environ = {**FOREIGN, "HTTP_X_FORWARDED_FOR": forwarded}
    target.assert_as_if_off(target.get(path, **environ), path, **environ)
    assert not debugger_content(
        target.get("/boom", **FOREIGN, HTTP_X_FORWARDED_FOR=forwarded)
    )


@pytest.mark.parametrize(
    ("forwarded", "admitted"),
    [
        ("127.0.0.1", True),  # the proxy says so: believed
        ("127.0.0.1, 203.0.113.7", False),  # client prepended a loopback hop
        ("127.0.0.1,203.0.113.7 ", False),
        ("127.0.0.1, garbage", False),
        ("127.0.0.1, ", False),
        ("127.0.0.1, 203.0.113.7:5555", False),
        ("127.0.0.1, [203.0.113.7]", False),
        ("::1, 2001:db8::1", False),
        ("127.0.0.1, ::ffff:203.0.113.7", False),
        ("203.0.113.7, 127.0.0.1, 10.0.0.9", True),  # 10.0.0.9: another trusted hop
    ],
)
def test_forwarded_for_behind_a_trusted_proxy(
    flask_target: t.Callable[..., Target], forwarded: str, admitted: bool
) -> None:
    target = flask_target(debugger_trusted_proxies="10.0.0.0/24")
    path = "/?__debugger__=yes&cmd=resource&f=debugger.js"
    environ = {"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": forwarded}
    response = target.get(path, **environ)
    assert serves_debugger_js(response) is admitted
    if not admitted:
        target.assert_as_if_off(response, path, **environ)


def test_trusted_proxy_without_forwarded_for_is_not_the_client(
    flask_target: t.Callable[..., Target],
) -> None:
    """A reverse proxy on the same host (trusted: ``127.0.0.1``) that passes a
    request without ``X-Forwarded-For`` says nothing about the client: the
    gate must not take the proxy's own loopback address for it."""
    target = flask_target(debugger_trusted_proxies="127.0.0.1/32")
    # The proxy forwarded an internet client's request but set no header.
    path = "/?__debugger__=yes&cmd=resource&f=debugger.js"
    target.assert_as_if_off(target.get(path, **LOOPBACK), path, **LOOPBACK)
    assert not debugger_content(target.get("/boom", **LOOPBACK))
    # Nor when every hop it names is a trusted proxy (itself).
    relayed = {**LOOPBACK, "HTTP_X_FORWARDED_FOR": "127.0.0.1, 127.0.0.1"}
    target.assert_as_if_off(target.get(path, **relayed), path, **relayed)
    assert not debugger_content(target.get("/boom", **relayed))


@pytest.mark.parametrize(
    ("remote", "admitted"),
    [
        ("::ffff:10.0.0.1", False),
        ("::ffff:127.0.0.1", True),
        ("::ffff:7f00:2", True),
        ("::127.0.0.1", False),  # IPv4-compatible, not loopback
        ("64:ff9b::7f00:1", False),  # NAT64
        ("2002:7f00:1::1", False),  # 6to4
        ("0.0.0.0", False),
        ("::", False),
        ("fe80::1%lo", False),
        ("127.0.0.1:5555", False),
        ("localhost", False),
        ("", False),
    ],
)
def test_remote_addr_forms(
    flask_target: t.Callable[..., Target], remote: str, admitted: bool
) -> None:
    target = flask_target()
    path = "/?__debugger__=yes&cmd=resource&f=debugger.js"
    response = target.get(path, REMOTE_ADDR=remote)
    assert serves_debugger_js(response) is admitted
    if not admitted:
        target.assert_as_if_off(response, path, REMOTE_ADDR=remote)
    assert debugger_content(target.get("/boom", REMOTE_ADDR=remote)) is admitted


def test_missing_remote_addr_refused(plain_target: t.Callable[..., Target]) -> None:
    target = plain_target()
    environ = EnvironBuilder(
        path="/", query_string="__debugger__=yes&cmd=resource&f=debugger.js"
    ).get_environ()
    environ.pop("REMOTE_ADDR", None)
    body, status, _ = run_wsgi_app(target.gate, environ)
    # The app's own answer, as with no debugger (not werkzeug's script).
    assert (status, b"".join(body)) == ("200 OK", b"plain hello")


# -- refusals look like no debugger --


@pytest.mark.parametrize(
    "path",
    [
        "/?__debugger__=yes&cmd=resource&f=debugger.js",
        "/?__debugger__=yes&cmd=pinauth&pin=1&s=x",
    ],
)
def test_refused_client_cannot_tell_the_debugger_is_on(
    plain_target: t.Callable[..., Target], path: str
) -> None:
    """The guard's promise: refused clients get exactly what they would get
    without a debugger. Otherwise a scanner finds the debugging deployments."""
    off = Client(DebuggerGate(_plain_app, debugger=False))
    expected = off.get(path, environ_overrides=FOREIGN)
    target = plain_target()
    got = target.get(path, **FOREIGN)
    assert (got.status_code, got.get_data()) == (
        expected.status_code,
        expected.get_data(),
    )


# -- expiry and processes --


def test_time_travel_past_expiry(
    flask_target: t.Callable[..., Target], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = flask_target(debugger_ttl=60, debugger_pin=None)
    secret, frame = target.unlock()
    pin = target.pin()
    cookie = target.client.get_cookie(target.lock.cookie_name)
    assert cookie is not None and cookie.max_age is not None and cookie.max_age <= 60
    shift_time(monkeypatch, 61)
    command = f"/boom?__debugger__=yes&cmd={quote(PROBE)}&frm={frame}&s={secret}"
    target.assert_as_if_off(target.command(secret, frame, PROBE), command)
    pinauth = f"/boom?__debugger__=yes&cmd=pinauth&s={secret}"
    target.assert_as_if_off(target.pinauth(secret, pin), pinauth, "POST")
    assert not debugger_content(target.get("/boom"))
    assert not target.lock.cookie_valid(cookie.value)
    assert target.lock.pin_file is not None and not os.path.exists(target.lock.pin_file)


def test_multiprocess_request_never_reaches_the_debugger(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target()
    secret, frame = target.unlock()
    mp = {"wsgi.multiprocess": True}
    assert not debugger_content(target.get("/boom", **mp))
    pinauth = f"/boom?__debugger__=yes&cmd=pinauth&s={secret}"
    target.assert_as_if_off(target.pinauth(secret, PIN, **mp), pinauth, "POST", **mp)
    assert not executed(target.command(secret, frame, PROBE, **mp))


# -- faults inside the gate fail closed --


@pytest.mark.parametrize("method", ["_client", "_host_trusted", "_refusal"])
def test_fault_in_a_check_fails_closed(
    flask_target: t.Callable[..., Target], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    target = flask_target()
    secret, frame = target.unlock()

    def broken(*args: object, **kwargs: object) -> t.NoReturn:
        raise RuntimeError("fault in the gate")

    monkeypatch.setattr(DebuggerGate, method, broken)
    target.gate._admit_cache.clear()
    for response in (
        target.get("/boom"),
        target.command(secret, frame, PROBE),
        target.get("/?__debugger__=yes&cmd=resource&f=debugger.js"),
    ):
        assert not debugger_content(response)
        assert not executed(response)
        assert "fault in the gate" not in response.get_data(as_text=True)


@pytest.mark.parametrize("method", ["cookie_valid", "attempt"])
def test_fault_in_a_pin_lock_check_fails_closed(
    flask_target: t.Callable[..., Target], monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    target = flask_target()
    unlocked = method == "cookie_valid"  # a fault must not honour a good cookie
    secret, frame = target.unlock() if unlocked else target.traceback()

    def broken(self: PinLock, *args: object) -> t.NoReturn:
        raise RuntimeError(f"{method} fault")

    monkeypatch.setattr(PinLock, method, broken)
    if not unlocked:
        response = target.pinauth(secret, PIN)
        assert "Set-Cookie" not in response.headers
        assert f"{method} fault" not in response.get_data(as_text=True)
    response = target.command(secret, frame, PROBE)
    assert not executed(response) and not debugger_content(response)
    assert f"{method} fault" not in response.get_data(as_text=True)
    if not unlocked:
        assert response.status_code == 403


# -- memory --


def test_concurrent_tracebacks_stay_capped(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target(debugger_frames=2)
    debugger = target.gate.debugger
    assert debugger is not None
    one = len(debugger.frames)
    target.traceback()
    per_traceback = len(debugger.frames) - one

    def load() -> None:
        for _ in range(5):
            Client(target.app).get("/boom", environ_overrides=LOOPBACK)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    target.traceback()  # a last one, alone, settles the count
    assert debugger.traceback_count <= 2
    assert len(debugger.frames) <= 2 * per_traceback
    assert len(debugger.frame_contexts) == len(debugger.frames)


# -- the PIN file --


def test_pin_file_private_and_never_followed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: t.Any
) -> None:
    old = os.umask(0)
    try:
        path = write_pin_file("1234-5678-9012")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        assert os.stat(path).st_uid == os.getuid()
    finally:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    # A planted symlink where the file goes is never written through.
    planted = tmp_path / "planted"
    planted.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (planted / "pin").symlink_to(victim)
    monkeypatch.setattr(debugger_pin.tempfile, "mkdtemp", lambda **kw: str(planted))
    with pytest.raises(FileExistsError):
        write_pin_file("1234-5678-9012")
    assert victim.read_text() == "untouched"


def test_pin_file_gone_on_close(plain_target: t.Callable[..., Target]) -> None:
    target = plain_target(debugger_pin=None)
    path = target.lock.pin_file
    assert path is not None and os.path.exists(path)
    target.gate.close()
    assert not os.path.exists(os.path.dirname(path))


# -- the PIN and the cookie never in the log stream --


def test_pin_and_cookie_never_logged_or_signalled(
    flask_target: t.Callable[..., Target],
) -> None:
    import io

    errors = io.StringIO()
    with capture_logs() as logs, capture_signals() as sent:
        target = flask_target(debugger_pin=None)
        pin = target.pin()
        secret, frame = target.traceback()
        target.get(f"/?__debugger__=yes&cmd=printpin&s={secret}")
        target.pinauth(secret, "1111-2222-3333", **{"wsgi.errors": errors})
        target.pinauth(secret, pin, **{"wsgi.errors": errors})
        cookie = target.client.get_cookie(target.lock.cookie_name)
        assert cookie is not None
        target.command(secret, frame, PROBE, **{"wsgi.errors": errors})
        target.get("/boom", **{"wsgi.errors": errors})
    text = repr(logs) + errors.getvalue()
    rotated = target.pin()  # a random PIN is single-use: the file has a new one
    assert rotated != pin
    secrets = (pin, rotated, cookie.value.partition("|")[2])
    for needle in (*secrets, pin.replace("-", ""), rotated.replace("-", "")):
        assert needle not in text
    # Receivers that log their kwargs leak nothing: no environ (query string,
    # cookies) in any debugger signal.
    debugger_signals = [s for s in sent if s.name.startswith("debugger-")]
    assert {s.name for s in debugger_signals} >= {
        "debugger-pin-refused",
        "debugger-pin-accepted",
        "debugger-command",
    }
    for s in debugger_signals:
        assert "environ" not in s.kwargs, s.name
    signalled = repr([s.kwargs for s in debugger_signals])
    for needle in secrets:
        assert needle not in signalled


@pytest.mark.server
def test_pin_not_in_werkzeug_dev_server_request_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """werkzeug's development server (``run_simple``, ``flask run``) logs
    every request line, query string included, to the ``werkzeug`` logger.
    The page's script sends the PIN in the query string of ``cmd=pinauth``:
    the right PIN lands in the log stream, and stays valid for the whole
    activation, for anyone who reads the logs and can reach the server."""
    gate = DebuggerGate(_plain_app, debugger=True)
    server = make_server("127.0.0.1", 0, gate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    caplog.set_level(logging.INFO, logger="werkzeug")
    try:
        assert gate.pin_lock is not None and gate.pin_lock.pin_file is not None
        with open(gate.pin_lock.pin_file) as f:
            pin = f.read().strip()
        port = server.server_port

        def request(method: str, path: str, body: str | None = None) -> str:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            try:
                conn.request(method, path, body=body, headers=headers)
                return conn.getresponse().read().decode()
            finally:
                conn.close()

        secret, _ = page_secret(request("GET", "/boom"))
        # As the page script the gate serves sends it: in a POST body.
        script = request("GET", "/?__debugger__=yes&cmd=resource&f=debugger.js")
        assert 'method: "POST"' in script and '"pinauth", pin' not in script
        path = f"/?__debugger__=yes&cmd=pinauth&s={secret}"
        answer = request("POST", path, body=f"pin={pin}")
        assert '"auth": true' in answer
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        gate.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "pinauth" in logged  # the request line was logged...
    assert pin not in logged  # ...without the PIN


# -- the PIN in a URL --


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_pin_in_the_query_string_is_never_compared(
    flask_target: t.Callable[..., Target], method: str
) -> None:
    """A PIN in a URL is in every request log (dev server, gunicorn's access
    log, the proxy's): the right PIN sent that way opens nothing, counts
    nothing, and the refusal says why."""
    target = flask_target()
    secret, frame = target.traceback()
    with capture_logs() as logs, capture_signals() as sent:
        for _ in range(10):  # more than MAX_FAILURES: none of them counts
            response = target.client.open(
                f"/boom?__debugger__=yes&cmd=pinauth&pin={PIN}&s={secret}",
                method=method,
                data={"pin": PIN} if method == "POST" else None,
                environ_overrides=LOOPBACK,
            )
            assert response.get_json() == {"auth": False, "exhausted": False}
            assert "Set-Cookie" not in response.headers
    assert not target.lock.locked()
    assert target.command(secret, frame, PROBE).status_code == 403
    refused = [e for e in logs if e["event"] == "debugger_pin_refused"]
    assert len(refused) == 10
    assert all(e["reason"] == "pin_in_url" for e in refused)
    assert "must not travel in URLs" in refused[0]["message"]
    signalled = [s.kwargs for s in sent if s.name == "debugger-pin-refused"]
    assert [k["reason"] for k in signalled] == ["pin_in_url"] * 10
    assert all(k["failures"] == 0 and "environ" not in k for k in signalled)
    # The page's own way still works afterwards: nothing was counted.
    assert target.pinauth(secret, PIN).get_json()["auth"] is True
    assert executed(target.command(secret, frame, PROBE))


def test_pin_in_a_get_body_or_another_content_type_is_not_read(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target()
    secret, frame = target.traceback()
    url = f"/boom?__debugger__=yes&cmd=pinauth&s={secret}"
    for response in (
        target.client.get(url, data=f"pin={PIN}", environ_overrides=LOOPBACK),
        target.client.post(
            url, json={"pin": PIN}, environ_overrides=LOOPBACK
        ),  # not a form
        target.client.post(
            url,
            data=f"pin={PIN}&pad={'x' * 5000}",
            content_type="application/x-www-form-urlencoded",
            environ_overrides=LOOPBACK,
        ),  # too large to be the page's
    ):
        assert response.get_json()["auth"] is False
        assert "Set-Cookie" not in response.headers
    assert target.command(secret, frame, PROBE).status_code == 403


def test_served_page_script_posts_the_pin(
    flask_target: t.Callable[..., Target],
) -> None:
    target = flask_target()
    response = target.get("/?__debugger__=yes&cmd=resource&f=debugger.js")
    assert serves_debugger_js(response)
    script = response.get_data(as_text=True)
    assert 'makeDebugURL({cmd: "pinauth"}), {method: "POST"' in script
    assert "new URLSearchParams({pin: this.pin.value})" in script
    assert '"pinauth", pin' not in script
    # Conditional requests still work (the browser caches it).
    etag = response.headers["ETag"]
    again = target.get(
        "/?__debugger__=yes&cmd=resource&f=debugger.js", HTTP_IF_NONE_MATCH=etag
    )
    assert again.status_code == 304


@pytest.fixture
def pin_files_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths of the PIN files written (``write_pin_file`` spied on)."""
    made: list[str] = []
    original = debugger_pin.write_pin_file

    def spy(pin: str) -> str:
        made.append(original(pin))
        return made[-1]

    monkeypatch.setattr(debugger_pin, "write_pin_file", spy)
    yield made
    for path in made:  # none, unless the test fails
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_unpatchable_page_script_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, pin_files_made: list[str]
) -> None:
    """A future werkzeug whose script sends the PIN some other way: no
    debugger at all rather than one whose page puts the PIN in URLs."""
    monkeypatch.setattr(
        debugger_module.pkgutil,
        "get_data",
        lambda package, resource: b'fetch(makeDebugURL({cmd: "pinauth", p: x}))',
    )
    with pytest.raises(DiagConfigError, match="debugger.js"):
        DebuggerGate(_plain_app, debugger=True)
    assert pin_files_made == []  # refused before any PIN file exists


# -- a random PIN is single-use --


def test_random_pin_is_single_use(flask_target: t.Callable[..., Target]) -> None:
    target = flask_target(debugger_pin=None)
    path = target.lock.pin_file
    assert path is not None
    secret, frame = target.traceback()
    first = target.pin()
    assert target.pinauth(secret, first).get_json()["auth"] is True
    assert executed(target.command(secret, frame, PROBE))  # the cookie works
    second = target.pin()
    assert second != first and re.fullmatch(r"\d{4}-\d{4}-\d{4}", second)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert os.listdir(os.path.dirname(path)) == ["pin"]  # no stray temp file
    # A second browser: the old PIN (read over a shoulder, from a chat, a
    # log) opens nothing; the file's new one does.
    other = Client(target.app, use_cookies=True)
    url = f"/boom?__debugger__=yes&cmd=pinauth&s={secret}"
    old = other.post(url, data={"pin": first}, environ_overrides=LOOPBACK)
    assert old.get_json()["auth"] is False
    new = other.post(url, data={"pin": second}, environ_overrides=LOOPBACK)
    assert new.get_json()["auth"] is True
    # The first browser's cookie still unlocks.
    assert executed(target.command(secret, frame, PROBE))


# -- weak PINs past the settings --


@pytest.mark.parametrize("pin", ["--------", "a-------", "abc-defg", " - "])
def test_pin_lock_refuses_a_short_normalised_pin(pin: str) -> None:
    with pytest.raises(ValueError) as raised:
        PinLock(pin, ttl=60, pin_file=None)
    assert pin.strip("- ") == "" or pin not in str(raised.value)


def test_short_pin_past_the_settings_refused_at_start_up(
    monkeypatch: pytest.MonkeyPatch, pin_files_made: list[str]
) -> None:
    """Belt and braces: a PIN that reaches the lock without the settings'
    check (here a broken random source) stops the start-up, and no PIN
    file is left behind."""
    monkeypatch.setattr(debugger_pin, "random_pin", lambda: "a-------")
    with pytest.raises(DiagConfigError, match="at least 8") as raised:
        DebuggerGate(_plain_app, debugger=True)
    assert "a-------" not in str(raised.value)
    assert pin_files_made == []


# -- the cookie behind a TLS-terminating proxy --


@pytest.mark.parametrize(
    ("environ", "secure"),
    [
        # Through the trusted proxy, which says the browser used HTTPS.
        (
            {
                "REMOTE_ADDR": "10.0.0.5",
                "HTTP_X_FORWARDED_FOR": "127.0.0.1",
                "HTTP_X_FORWARDED_PROTO": "https",
            },
            True,
        ),
        (
            {
                "REMOTE_ADDR": "10.0.0.5",
                "HTTP_X_FORWARDED_FOR": "127.0.0.1",
                "HTTP_X_FORWARDED_PROTO": "http",
            },
            False,
        ),
        ({"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": "127.0.0.1"}, False),
        # Not through a proxy: the header is anybody's, the scheme is real.
        ({"HTTP_X_FORWARDED_PROTO": "https"}, False),
        ({"wsgi.url_scheme": "https"}, True),
    ],
)
def test_unlock_cookie_secure_behind_a_tls_proxy(
    flask_target: t.Callable[..., Target], environ: dict[str, str], secure: bool
) -> None:
    target = flask_target(debugger_trusted_proxies="10.0.0.0/24")
    secret, _ = target.traceback(**environ)
    response = target.pinauth(secret, PIN, **environ)
    assert response.get_json()["auth"] is True
    cookie = response.headers["Set-Cookie"]
    assert ("; Secure" in cookie) is secure, cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
