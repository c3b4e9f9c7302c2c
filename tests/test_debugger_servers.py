"""Pitfall 3 end to end: the PIN-gated debugger on real servers.

``examples/wsgi-debug.py`` (the usual debug entry point, written with
``wrap()``) runs under real gunicorn, sync worker, one worker, on 127.0.0.1.
A real headless Chromium (Debian's ``/usr/bin/chromium`` driven by
Playwright, never a downloaded browser) loads the failing page, opens a
console, is asked for the PIN, is refused a wrong one, accepts the right one
(read from the 0600 file whose path the log names) and evaluates an
expression in the failing frame. Then the refusals that need a real server:
two gunicorn workers (the worker fails to boot, with the command to use in
gunicorn's output), a client address outside the allowed networks
(127.0.0.2), brute force over HTTP without a slow request, the pitfall
itself (werkzeug's debugger alone writes its PIN into the log), a Django
``application`` behind the gate. The PIN never appears in the server's
output. Every server is stopped at teardown by its own pid.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import stat
import time
import typing as t
from pathlib import Path

import pytest
import requests
from debugger_pages import page_secret
from servers import EXAMPLES
from servers import require_module
from servers import ServerProcess
from servers import ServerStartError

pytestmark = pytest.mark.server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT = 10.0
ONE_WORKER = ("--worker-class", "sync", "--workers", "1", "--timeout", "3600")
GRACEFUL = ("--graceful-timeout", "1")
PAGE = "/orders/42/total"  # raises TypeError in order_total()


@pytest.fixture
def debug_server(gunicorn_server: t.Any) -> t.Callable[..., ServerProcess]:
    """``examples/wsgi-debug.py`` under gunicorn, one sync worker."""

    def start(*args: str, **env: str) -> ServerProcess:
        server: ServerProcess = gunicorn_server(
            "wsgi-debug:application",
            *(args or ONE_WORKER),
            *GRACEFUL,
            env=env,
            cwd=EXAMPLES,
        )
        return server

    return start


def enabled_line(server: ServerProcess) -> dict[str, t.Any]:
    (line,) = server.wait_for_json_lines(
        lambda line: line.get("event") == "debugger_enabled", count=1
    )
    return line


def read_pin(server: ServerProcess) -> str:
    """The PIN, from the file the log names (checked: mode 0600)."""
    path = enabled_line(server)["pin_file"]
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    pin = Path(path).read_text().strip()
    assert re.fullmatch(r"\d{4}-\d{4}-\d{4}", pin), "unexpected PIN format"
    return pin


def events(server: ServerProcess, name: str) -> list[dict[str, t.Any]]:
    return [line for line in server.json_lines() if line.get("event") == name]


def assert_pin_not_logged(server: ServerProcess, pin: str) -> None:
    text = server.log_text()
    assert text, "the server wrote nothing at all"
    for form in {pin, pin.replace("-", "")}:
        assert form not in text, "the PIN is in the server's output"


# -- the browser -----------------------------------------------------------------


def test_chromium_traceback_pin_and_console(
    debug_server: t.Callable[..., ServerProcess], tmp_path: Path
) -> None:
    require_module("playwright")  # fails, never skips
    from playwright import sync_api

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing (Debian package chromium)", pytrace=False)
    # gunicorn's access log writes every request line, query string
    # included: the page must send the PIN where no request line has it.
    access_log = tmp_path / "access.log"
    server = debug_server(*ONE_WORKER, "--access-logfile", str(access_log))
    pin = read_pin(server)
    dialogs: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT * 1000)

            def on_dialog(dialog: t.Any) -> None:
                dialogs.append(dialog.message)
                dialog.accept()

            page.on("dialog", on_dialog)
            response = page.goto(server.url + PAGE)
            assert response is not None and response.status == 500
            # werkzeug's interactive traceback, not an envelope.
            assert "TypeError" in page.title()
            page.wait_for_selector("div.traceback div.frame")
            assert "order_total" in page.inner_text("div.traceback")
            # Open a console in the innermost frame (the view).
            frame = page.locator("div.traceback div.frame").last
            # The console icon shows when the pointer is over the code line.
            line = frame.locator("pre.line.current")
            line.hover()
            line.locator("img").click()
            prompt = page.locator("div.pin-prompt")
            prompt.wait_for(state="visible")
            assert "Console Locked" in prompt.inner_text()
            # A wrong PIN: refused.
            prompt.locator("input[name=pin]").fill("0000-0000-0000")
            prompt.locator("input[name=btn]").click()
            deadline = time.monotonic() + TIMEOUT
            while not dialogs and time.monotonic() < deadline:
                page.wait_for_timeout(50)
            assert dialogs == ["Error: incorrect pin"]
            # The right PIN: accepted, the prompt fades away.
            prompt.locator("input[name=pin]").fill(pin)
            prompt.locator("input[name=btn]").click()
            prompt.wait_for(state="hidden")
            assert dialogs == ["Error: incorrect pin"]
            # Evaluate in the failing frame, read the answer from the page.
            console = page.locator("pre.console")
            console.locator("input").fill("[price, quantity * 6 + 36]")
            console.locator("input").press("Enter")
            output = console.locator("div.output")
            page.wait_for_function(
                "el => el.innerText.includes('[None, 42]')",
                arg=output.element_handle(),
            )
            assert "[None, 42]" in output.inner_text()
        finally:
            browser.close()
    refused = server.wait_for_json_lines(
        lambda line: line.get("event") == "debugger_pin_refused", count=1
    )
    accepted = events(server, "debugger_pin_accepted")
    commands = server.wait_for_json_lines(
        lambda line: line.get("event") == "debugger_command", count=1
    )
    assert refused[0]["client"] == "127.0.0.1" and not refused[0]["locked"]
    assert len(accepted) == 1 and accepted[0]["client"] == "127.0.0.1"
    assert commands[0]["command"] == "[price, quantity * 6 + 36]"
    assert commands[0]["client"] == "127.0.0.1"
    assert re.fullmatch(r"[0-9a-f]{32}", commands[0]["request_id"])
    assert_pin_not_logged(server, pin)
    # The PIN went in a POST body: the access log has both attempts' request
    # lines, neither PIN. (The accepted PIN is single-use: the file has a
    # new one, which the page never saw.)
    deadline = time.monotonic() + TIMEOUT
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [
            line
            for line in access_log.read_text(errors="replace").splitlines()
            if "cmd=pinauth" in line
        ]
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    assert len(lines) == 2 and all('"POST ' in line for line in lines), lines
    text = access_log.read_text(errors="replace")
    for form in {pin, pin.replace("-", ""), "0000-0000-0000"}:
        assert form not in text, "a PIN is in gunicorn's access log"
    assert read_pin(server) != pin


# -- refusals on real servers ------------------------------------------------------


def test_two_gunicorn_workers_refused_at_start_up(gunicorn_server: t.Any) -> None:
    with pytest.raises(ServerStartError) as err:
        gunicorn_server(
            "wsgi-debug:application",
            *("--workers", "2", "--timeout", "3600"),
            *GRACEFUL,
            cwd=EXAMPLES,
        )
    output = str(err.value)  # with the server's output
    exited = re.search(r"server exited with code (-?\d+) before answering", output)
    assert exited is not None and int(exited.group(1)) != 0, output
    assert "Worker failed to boot" in output
    assert "flask_diag's debugger refuses to start" in output
    assert "runs 2 worker processes" in output
    assert "gunicorn --worker-class sync --workers 1 --timeout 3600" in output.replace(
        "\\n", "\n"
    )
    assert '"debugger_enabled"' not in output  # never activated


@pytest.mark.parametrize(
    ("worker", "warned"),
    [
        pytest.param(("--worker-class", "sync"), True, id="sync"),
        # gthread's --timeout is a heartbeat: a paused request thread lives on.
        pytest.param(
            ("--worker-class", "gthread", "--threads", "2"), False, id="gthread"
        ),
    ],
)
def test_short_worker_timeout_warned_at_start_up(
    debug_server: t.Callable[..., ServerProcess], worker: tuple[str, ...], warned: bool
) -> None:
    server = debug_server(*worker, "--workers", "1", "--timeout", "30")
    enabled_line(server)  # the warning, if any, is logged right after it
    # The fixture waited for the worker's post_worker_init: start-up is over.
    warnings = events(server, "debugger_short_timeout")
    if not warned:
        assert warnings == [], warnings
        return
    (warning,) = warnings
    assert warning["timeout_s"] == 30
    assert warning["server_timeout"] == "--timeout 30, SyncWorker"
    assert warning["message"].startswith(
        "gunicorn --timeout 30, SyncWorker (from the running worker): the worker"
        " is killed at most 30 s after the request started"
    )
    fix = "gunicorn --worker-class sync --workers 1 --timeout 3600"
    assert fix in warning["message"]


def raw_get(
    server: ServerProcess, path: str, *, source: str = "127.0.0.1", host: str = ""
) -> tuple[int, str, str]:
    """GET from a chosen local source address: (status, content type, body)."""
    conn = http.client.HTTPConnection(
        server.host, server.port, timeout=TIMEOUT, source_address=(source, 0)
    )
    try:
        headers = {"Host": host} if host else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read().decode("utf-8", "replace")
        return response.status, response.getheader("Content-Type", ""), body
    finally:
        conn.close()


def test_second_loopback_address_refused(
    debug_server: t.Callable[..., ServerProcess],
) -> None:
    server = debug_server(FLASK_DIAG_DEBUGGER_ALLOW="127.0.0.1/32")
    status, ctype, body = raw_get(server, PAGE)
    assert (status, ctype.split(";")[0]) == (500, "text/html")
    secret, _ = page_secret(body)
    # 127.0.0.2 is this host too, but outside the allow-list.
    status, ctype, body = raw_get(server, PAGE, source="127.0.0.2")
    assert (status, ctype) == (500, "application/problem+json")
    assert "Traceback" not in body and "TypeError" not in body
    # A debugger route from the refused address: the app's own answer (the
    # view raises: the envelope), exactly as if there were no debugger.
    status, ctype, body = raw_get(
        server, f"{PAGE}?__debugger__=yes&cmd=printpin&s={secret}", source="127.0.0.2"
    )
    assert (status, ctype) == (500, "application/problem+json")
    assert "Traceback" not in body and "TypeError" not in body
    (line,) = server.wait_for_json_lines(
        lambda line: line.get("event") == "debugger_client_refused", count=1
    )
    assert line["client"] == "127.0.0.2" and line["reason"] == "client"
    # A foreign Host from an allowed address: refused as well.
    status, ctype, body = raw_get(server, PAGE, host="rebound.example")
    assert (status, ctype) == (500, "application/problem+json")
    assert_pin_not_logged(server, read_pin(server))


def test_brute_force_over_http_never_sleeps(
    debug_server: t.Callable[..., ServerProcess],
) -> None:
    server = debug_server()
    pin = read_pin(server)
    session = requests.Session()
    page = session.get(server.url + PAGE, timeout=TIMEOUT)
    secret, frame = page_secret(page.text)
    url = f"{server.url}{PAGE}?__debugger__=yes&s={secret}"
    slowest = 0.0
    for i in range(20):
        started = time.perf_counter()
        response = session.post(
            f"{url}&cmd=pinauth", data={"pin": f"{i:04d}-1111-2222"}, timeout=5
        )
        slowest = max(slowest, time.perf_counter() - started)
        assert response.json()["auth"] is False
    assert slowest < 0.1, f"a refused PIN took {slowest:.3f}s: the worker slept"
    right = session.post(f"{url}&cmd=pinauth", data={"pin": pin}, timeout=5)
    assert right.json() == {"auth": False, "exhausted": True}
    assert not session.cookies
    command = session.get(f"{url}&cmd=6*7&frm={frame}", timeout=5)
    assert command.status_code == 403 and "number" not in command.text
    refused = server.wait_for_json_lines(
        lambda line: line.get("event") == "debugger_pin_refused", count=21
    )
    assert len(refused) == 21 and refused[-1]["locked"] is True
    assert not events(server, "debugger_pin_accepted")
    assert not events(server, "debugger_command")
    assert_pin_not_logged(server, pin)


@pytest.mark.parametrize("preload", [False, True], ids=["import", "preload"])
def test_a_replaced_worker_takes_over_the_servers_activation(
    debug_server: t.Callable[..., ServerProcess], preload: bool, tmp_path: Path
) -> None:
    # gunicorn replaces its worker after --max-requests (which any client can
    # count up), after --timeout, or when it dies; the new worker imports the
    # app again. It takes over the server's activation: the same expiry, PIN
    # file and PIN, and the failed attempts; once the activation is over,
    # new workers stay off. (The worker is replaced here by stopping it: the
    # same as --max-requests, without counting requests.) With --preload the
    # master activates once and each worker, forked from it, reads what the
    # workers before it changed.
    ttl = 8.0
    options = ("--preload",) if preload else ()
    server = debug_server(
        *ONE_WORKER,
        *options,
        FLASK_DIAG_DEBUGGER_TTL=str(ttl),
        TMPDIR=str(tmp_path),  # the PIN file and the server's record
        XDG_RUNTIME_DIR="",
    )
    enabled = 1 if preload else 2
    first = enabled_line(server)
    pin = read_pin(server)

    def wrong_pins(count: int) -> dict[str, t.Any]:
        session = requests.Session()
        page = session.get(server.url + PAGE, timeout=TIMEOUT)
        secret, _ = page_secret(page.text)
        url = f"{server.url}{PAGE}?__debugger__=yes&s={secret}&cmd=pinauth"
        answer: dict[str, t.Any] = {}
        for _ in range(count):
            answer = session.post(url, data={"pin": "0000-1111-2222"}, timeout=5).json()
        return answer

    def replace_worker() -> None:
        worker = int(
            requests.get(server.url + "/", timeout=TIMEOUT).headers["X-Diag-PID"]
        )
        os.kill(worker, signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                answer = requests.get(server.url + "/", timeout=TIMEOUT)
            except requests.ConnectionError:
                answer = None
            if answer is not None and int(answer.headers["X-Diag-PID"]) != worker:
                return
            time.sleep(0.1)
        pytest.fail("gunicorn did not replace its worker")

    assert wrong_pins(3) == {"auth": False, "exhausted": False}
    replace_worker()
    *_, last = server.wait_for_json_lines(
        lambda line: line.get("event") == "debugger_enabled", count=enabled
    )
    assert last["pin_file"] == first["pin_file"]
    assert last["expires_at"] == first["expires_at"]
    assert Path(first["pin_file"]).read_text().strip() == pin
    # The new worker counts on from the old one's failures: 2 more lock out.
    assert wrong_pins(2) == {"auth": False, "exhausted": True}

    deadline = time.monotonic() + ttl + TIMEOUT
    while (
        not requests.get(server.url + PAGE, timeout=TIMEOUT)
        .headers["Content-Type"]
        .startswith("application/problem+json")
    ):
        if time.monotonic() > deadline:
            pytest.fail("the debugger did not expire")
        time.sleep(0.25)
    replace_worker()
    server.wait_for_json_lines(
        lambda line: line.get("event") == "debugger_disabled", count=2
    )
    assert len(events(server, "debugger_enabled")) == enabled
    page = requests.get(server.url + PAGE, timeout=TIMEOUT)
    assert page.status_code == 500
    assert page.headers["Content-Type"] == "application/problem+json"
    assert not os.path.exists(first["pin_file"])
    (record,) = (tmp_path / f"flask-diag-debugger-records-{os.getuid()}").iterdir()
    assert stat.S_IMODE(record.stat().st_mode) == 0o600


# -- the pitfall itself, and Django ---------------------------------------------------


def test_pitfall_exposed_debugger_leaks_its_pin_and_sleeps(
    gunicorn_server: t.Any,
) -> None:
    server: ServerProcess = gunicorn_server(
        "wsgi_exposed:application",
        *ONE_WORKER,
        *GRACEFUL,
        cwd=EXAMPLES / "pitfall3_debugger",
    )
    # Any Host, any client: the traceback with the source of every frame.
    status, _, body = raw_get(server, PAGE, host="rebound.example")
    assert status == 500 and "total += quantity * price" in body
    secret, _ = page_secret(body)
    requests.get(
        f"{server.url}{PAGE}?__debugger__=yes&cmd=printpin&s={secret}", timeout=5
    )
    # werkzeug writes its PIN into the server's log, shipped and shared.
    server.wait_for_log(r"Debugger pin code: \d{3}-\d{3}-\d{3}")
    started = time.perf_counter()
    requests.get(
        f"{server.url}{PAGE}?__debugger__=yes&cmd=pinauth&pin=1&s={secret}",
        timeout=TIMEOUT,
    )
    # ... and puts the only worker to sleep for a wrong PIN.
    assert time.perf_counter() - started >= 0.5


def test_django_application_behind_the_gate(gunicorn_server: t.Any) -> None:
    require_module("django")
    server: ServerProcess = gunicorn_server(
        "django_app:application",
        *ONE_WORKER,
        *GRACEFUL,
        env={"FLASK_DIAG_DEBUGGER": "on"},
        cwd=EXAMPLES / "pitfall3_debugger",
    )
    pin = read_pin(server)
    session = requests.Session()
    page = session.get(server.url + PAGE, timeout=TIMEOUT)
    assert page.status_code == 500 and "TypeError" in page.text
    assert page.headers["Content-Type"].startswith("text/html")
    secret, frame = page_secret(page.text)
    url = f"{server.url}{PAGE}?__debugger__=yes&s={secret}"
    answer = session.post(f"{url}&cmd=pinauth", data={"pin": pin}, timeout=5)
    assert answer.json()["auth"]
    result = session.get(f"{url}&cmd=[price,%20quantity]&frm={frame}", timeout=5)
    assert result.status_code == 200
    assert re.sub(r"<[^>]+>", "", result.text).endswith("[None, 1]")
    # Not admitted: the envelope, as if there were no debugger.
    status, ctype, body = raw_get(server, PAGE, host="rebound.example")
    assert (status, ctype) == (500, "application/problem+json")
    assert "TypeError" not in body
    assert events(server, "debugger_command")[0]["command"] == "[price, quantity]"
    assert_pin_not_logged(server, pin)
