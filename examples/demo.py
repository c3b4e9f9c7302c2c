"""The flask_diag demo: each pitfall example on a real server, diagnosed.

Run through ``bash scripts/demo.sh`` (which creates its own virtualenv), or
directly with an environment that has flask_diag and gunicorn installed::

    python examples/demo.py            # every scenario
    python examples/demo.py errors     # one of them (or several)

Scenarios: ``secret-key`` (pitfall 1), ``self-call`` (pitfall 2),
``debugger`` (pitfall 3), ``pdb`` (pitfall 4), ``errors`` (pitfall 5),
``session`` (pitfall 6),
``workers`` (pitfall 7),
``doctor`` (``flask diag check`` and ``flask diag probe`` on the examples).

Every server listens on 127.0.0.1 only, on a free port, and is stopped by
its process id when its scenario ends, also on Ctrl-C or a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import typing as t
import urllib.error
import urllib.request
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent


def say(text: str = "") -> None:
    print(text, flush=True)


def title(text: str) -> None:
    say()
    say(f"=== {text} " + "=" * max(0, 74 - len(text)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path):
        self.process = process
        self.url = url
        self.log = log

    def json_lines(self) -> list[dict[str, t.Any]]:
        lines = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
        return lines


@contextlib.contextmanager
def serve(
    command: list[str],
    shown: str,
    *,
    cwd: Path,
    port: int,
    env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start ``command`` listening on 127.0.0.1:``port``; stop it by its pid."""
    env = env or {}
    prefix = " ".join(
        f"{name}=<random>" if "SECRET" in name else f"{name}={value}"
        for name, value in env.items()
    )
    say(f"$ {prefix} {shown}" if prefix else f"$ {shown}")
    log = Path(tempfile.mkstemp(prefix="flask-diag-demo-", suffix=".log")[1])
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{shown!r} exited:\n{log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{shown!r} did not start in 20 s") from None
                time.sleep(0.1)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.unlink(missing_ok=True)


def gunicorn(
    app: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[Server]:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}"]
    shown = f"gunicorn {' '.join([*args, '-b', f'127.0.0.1:{port}', app])}"
    return serve([*command, *args, app], shown, cwd=cwd, port=port, env=env)


def request(
    method: str,
    url: str,
    body: dict[str, t.Any] | bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """One request, urllib only; an error status is returned, not raised.

    A dict ``body`` is sent as JSON, bytes as they are. A response body cut
    off by the server (the connection closed mid-way) comes back as far as
    it got, with an ``X-Demo-Truncated`` pseudo-header.
    """
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method)
    if isinstance(body, dict):
        req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        response = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    with response:
        try:
            return response.status, dict(response.headers), response.read()
        except http.client.IncompleteRead as error:
            truncated = {**response.headers, "X-Demo-Truncated": "yes"}
            return response.status, truncated, error.partial


def timed(
    method: str, url: str, *, timeout: float = 10
) -> tuple[int, dict[str, str], bytes, float]:
    """:func:`request`, and how many seconds it took."""
    started = time.monotonic()
    status, headers, body = request(method, url, timeout=timeout)
    return status, headers, body, time.monotonic() - started


def show_members(problem: dict[str, t.Any], indent: str = "    ") -> None:
    """The members of a problem+json body, one a line, long ones wrapped."""
    width = max(len(name) for name in problem) + 1
    for name, value in problem.items():
        text = value if isinstance(value, str) else json.dumps(value)
        say(
            textwrap.fill(
                text,
                width=78,
                initial_indent=f"{indent}{name + ':':<{width}} ",
                subsequent_indent=indent + " " * (width + 1),
                break_long_words=False,
                break_on_hyphens=False,
            )
        )


def exception_text(line: dict[str, t.Any]) -> str:
    """``Type: message`` of a log line's exception (structured or text)."""
    exception = line.get("exception")
    if isinstance(exception, list) and exception and isinstance(exception[0], dict):
        return f"{exception[0].get('exc_type')}: {exception[0].get('exc_value')}"
    lines = str(exception or "").strip().splitlines()
    return lines[-1] if lines else "(none)"


def require(example: str, *modules: str) -> None:
    """Stop the demo, saying what to install, if this interpreter (the one
    the servers run) cannot import every module ``example`` needs."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"examples/{example} needs {', '.join(modules)}; not installed"
            f" here: {', '.join(missing)} (pip install -e '.[demo]')."
        )


def wait_for_line(
    server: Server, match: Callable[[dict[str, t.Any]], bool], timeout: float = 5
) -> dict[str, t.Any] | None:
    """The first JSON log line ``match`` accepts, waiting up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        for line in server.json_lines():
            if match(line):
                return line
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def failure_line(server: Server, request_id: object) -> dict[str, t.Any] | None:
    """The server's ``request failed`` log line of one request, if any."""
    return wait_for_line(
        server,
        lambda line: (
            line.get("event") == "request failed"
            and line.get("request_id") == request_id
        ),
    )


def scenario_secret_key() -> None:
    title("Pitfall 1: the secret key set only under __main__ (gunicorn)")
    say("examples/pitfall1_secret_key/app.py sets app.secret_key inside")
    say("'if __name__ == \"__main__\":'. gunicorn imports the module and never")
    say("runs that block; GET /login writes flask.session.")
    cwd = EXAMPLES / "pitfall1_secret_key"
    with gunicorn("app:app", cwd=cwd) as server:
        status, headers, body = request("GET", server.url + "/login")
        problem = json.loads(body)
        line = failure_line(server, problem.get("request_id"))
    say(f"\nGET /login -> {status}, Content-Type: {headers['Content-Type']}")
    say(f"X-Request-ID: {headers['X-Request-ID']}; the body's members:")
    show_members(problem)
    if line is not None:
        say("\nThe server's stderr has the exception and its traceback, under")
        say("the same request_id (the client never sees them):")
        fields = {k: line[k] for k in ("event", "status", "request_id") if k in line}
        say(f"  {json.dumps(fields)}")
        say(
            textwrap.fill(
                f"exception: {exception_text(line)}",
                78,
                initial_indent="  ",
                subsequent_indent="    ",
            )
        )
    say("\nFix: app_fixed.py reads the key from the environment at import time.")
    key = {"SECRET_KEY": secrets.token_hex()}
    with gunicorn("app_fixed:app", cwd=cwd, env=key) as server:
        status, headers, body = request("GET", server.url + "/login")
    cookie = headers.get("Set-Cookie", "").partition("=")[0]
    say(f"GET /login -> {status} {body.decode().strip()} (Set-Cookie: {cookie}=...)")


def scenario_self_call() -> None:
    title("Pitfall 2: the request that calls back into its own server")
    cwd = EXAMPLES / "pitfall2_selfcall"
    require("pitfall2_selfcall/app.py", "requests", "httpx")
    say("examples/pitfall2_selfcall/app.py: POST /recognize hands the URL of its")
    say("own static/cat.png to an image recognition API (recognition_api.py, a")
    say("second server here), which fetches it. gunicorn's sync worker with -w 1")
    say("serves one request at a time: busy waiting for the API, it never serves")
    say("the API's fetch. Without flask_diag the request just hangs.")
    port = free_port()
    command = [sys.executable, "recognition_api.py", "--port", str(port)]
    shown = f"python recognition_api.py --port {port} &"
    fetch = {"FETCH_TIMEOUT": "2"}  # the API gives up on a fetch after 2 s
    with serve(command, shown, cwd=cwd, port=port, env=fetch) as api:
        say("\n1. FLASK_DIAG_LOOPBACK=strict: the hand-over fails at once.")
        env = {"FLASK_DIAG_LOOPBACK": "strict", "RECOGNITION_API": api.url}
        with gunicorn("app:app", "-w", "1", cwd=cwd, env=env) as app:
            request("GET", app.url + "/")  # the worker is up: time the call only
            status, headers, body, elapsed = timed("POST", app.url + "/recognize")
        problem = json.loads(body)
        say(
            f"POST /recognize -> {status} in {elapsed:.2f} s, {headers['Content-Type']}"
        )
        show_members(
            {k: problem[k] for k in ("code", "detail", "hint") if k in problem}
        )
        received = [
            line for line in api.json_lines() if line["event"] == "recognize received"
        ]
        if not received:
            say("The API never heard of it: the call was stopped before it was sent.")

        say("\n2. Default mode: the hand-over is logged before the call is sent.")
        with gunicorn(
            "app:app", "-w", "1", cwd=cwd, env={"RECOGNITION_API": api.url}
        ) as app:
            request("GET", app.url + "/")
            # Bounded: the API's fetch gives up after 2 s, so the request ends.
            status, _, body, elapsed = timed("POST", app.url + "/recognize", timeout=8)
            line = wait_for_line(app, lambda line: line.get("kind") == "handoff")
            self_call = timed("GET", app.url + "/selfcall/requests")
        say(f"POST /recognize -> {status} after {elapsed:.1f} s:")
        say(f"    {body.decode().strip()}")
        say("It hung until the API's fetch of the image timed out (FETCH_TIMEOUT=2")
        say("here; 10 s by default, and the app waits up to 30 s for the API). The")
        say("worker's log said why, before the call was sent:")
        if line is not None:
            keys = ("event", "level", "kind", "action", "own_url", "message")
            show_members({k: line[k] for k in keys if k in line})
        else:
            say("    (no such line within 5 s)")
        status, _, body, elapsed = self_call
        problem = json.loads(body)
        say("A view calling its own URL fails at once, in this mode too:")
        say(f"GET /selfcall/requests -> {status} in {elapsed:.2f} s")
        show_members({k: problem[k] for k in ("code", "detail") if k in problem})

        say("\n3. The fix: a worker with room for a second request (gthread).")
        args = ("-k", "gthread", "--threads", "4")
        with gunicorn(
            "app:app", *args, cwd=cwd, env={"RECOGNITION_API": api.url}
        ) as app:
            recognized = request("POST", app.url + "/recognize")
            pong = request("GET", app.url + "/selfcall/requests")
            line = wait_for_line(app, lambda line: line.get("kind") == "under_load")
        for label, (status, _, body) in (
            ("POST /recognize", recognized),
            ("GET /selfcall/requests", pong),
        ):
            say(f"{label} -> {status} {body.decode().strip()}")
        if line is not None:
            say("Logged once per worker: the self-call still deadlocks under load.")
            show_members({"message": line["message"]})


TEXT = {"Content-Type": "text/plain"}
ERROR_CASES: list[tuple[str, str, str, dict[str, t.Any]]] = [
    # (what the table says, method, path, request options)
    ("POST /legacy/cars", "POST", "/legacy/cars", {"body": {}}),
    ("GET /cars/7", "GET", "/cars/7", {}),
    ("POST /cars {}", "POST", "/cars", {"body": {}}),
    ("POST /cars text", "POST", "/cars", {"body": b"name=x", "headers": TEXT}),
    ("GET /admin", "GET", "/admin", {}),
    ("GET /nowhere", "GET", "/nowhere", {}),
    ("DELETE /cars/1", "DELETE", "/cars/1", {}),
    ("GET /crash", "GET", "/crash", {}),
]


def scenario_errors() -> None:
    title("Pitfall 5: errors that do not fail the same way (gunicorn)")
    say("examples/pitfall5_errors/app.py fails in every way a Flask app does:")
    say("an error answered with 200, a KeyError (mapped to 404), abort(500), an")
    say("unknown route, a wrong method, a crash, an invalid car, a non-JSON body.")
    cwd = EXAMPLES / "pitfall5_errors"
    rows = []
    with gunicorn("app:app", "-w", "2", cwd=cwd) as server:
        for label, method, path, options in ERROR_CASES:
            rows.append((label, request(method, server.url + path, **options)))
        report = request("GET", server.url + "/report")
        failed_ids = [
            json.loads(body)["request_id"]
            for _, (status, _, body) in rows
            if status >= 500
        ]
        logged = [failure_line(server, rid) for rid in failed_ids]
    say(f"\n  {'request':<18} status  code                    Content-Type")
    shapes = set()
    same_id = 0
    for label, (status, headers, body) in rows:
        content_type = headers.get("Content-Type", "")
        data = json.loads(body)
        code = data.get("code", "-")
        say(f"  {label:<18} {status:<6}  {code:<23} {content_type}")
        if content_type == "application/problem+json":
            shapes.add(tuple(data))
            same_id += data["request_id"] == headers["X-Request-ID"]
            if "Allow" in headers:
                say(f"  {'':<26}Allow: {headers['Allow']}")
            if status == 422:
                say(f"  {'':<26}detail: {data['detail']}")
        else:
            say(f"  {'':<26}{body.decode().strip()}  <- the pitfall")
    say("\nEvery error is application/problem+json with the same members")
    say(f"(request_id = the X-Request-ID header in {same_id} of {len(rows) - 1}):")
    for shape in sorted(shapes):
        say(f"  {', '.join(shape)}")
    say('POST /legacy/cars answers {"error": ...} with 200: flask_diag leaves 2xx')
    say("alone; the fix is in the view (add_car raises DiagHTTPError(422)).")
    found = sum(line is not None for line in logged)
    say(
        f"Each 5xx is one 'request failed' JSON line on the server's stderr, "
        f"with\nits traceback and request_id: {found} of {len(logged)} found."
    )
    status, headers, body = report
    cut = "X-Demo-Truncated" in headers
    say(f"\nGET /report streams a CSV that fails after its rows: status {status},")
    say(
        f"{len(body)} bytes of {headers.get('Content-Type')}"
        + (", connection closed mid-body" if cut else "")
        + f",\nno JSON appended: {json.dumps(body.decode())}"
    )

    say("\nWith FLASK_DIAG_ERRORS=negotiate a browser (Accept: text/html) gets an")
    say("HTML page with the same fields; HEAD gets the headers only:")
    env = {"FLASK_DIAG_ERRORS": "negotiate"}
    with gunicorn("app:app", cwd=cwd, env=env) as server:
        page = request("GET", server.url + "/crash", headers={"Accept": "text/html"})
        head = request("HEAD", server.url + "/cars/7")
        plain = request("GET", server.url + "/cars/7")
    for label, (status, headers, body) in (
        ("GET /crash, Accept: text/html", page),
        ("HEAD /cars/7", head),
        ("GET /cars/7", plain),
    ):
        content_type = headers.get("Content-Type", "").partition(";")[0]
        say(
            f"  {label:<29} {status}  {content_type:<24} {len(body):>3} bytes"
            f"  Vary: {headers.get('Vary', '-')}"
        )
    heading = re.search(r"<h1>(.*?)</h1>", page[2].decode())
    fields = re.findall(r"<dt>(.*?)</dt>", page[2].decode())
    say(f"  the page: <h1>{heading.group(1) if heading else '?'}</h1>, the detail,")
    say(f"  and a <dl> of {', '.join(fields)}")


def scenario_workers() -> None:
    title("Pitfall 7: state that lives in one worker (gunicorn -w 4)")
    say("examples/pitfall7_cars/app.py keeps its cars in a module-level list.")
    say("A client POSTs a car, then GETs the list, again and again.")
    rows = []
    wrong = []  # the rows whose GET did not count every car posted so far
    with gunicorn("app:app", "-w", "4", cwd=EXAMPLES / "pitfall7_cars") as server:
        # An idle server often hands a lone client's requests to one worker;
        # go on (bounded) until the other workers have shown up.
        for i in range(300):
            post = request("POST", server.url + "/cars", {"name": f"car-{i}"})
            get = request("GET", server.url + "/cars")
            rows.append((i + 1, post, get))
            if json.loads(get[2])["count"] != i + 1:
                wrong.append(rows[-1])
            if i >= 29 and len(wrong) >= 3:
                break
        time.sleep(0.3)
        lines = [line for line in server.json_lines() if "request_id" in line]
    say(
        f"\n  {'posted':>6}  {'GET count':>9}  "
        "POST served by  GET served by  X-Request-ID"
    )
    for posted, post, get in (wrong or rows)[:8]:
        say(
            f"  {posted:>6}  {json.loads(get[2])['count']:>9}  "
            f"pid {post[1]['X-Diag-PID']:<10} pid {get[1]['X-Diag-PID']:<9} "
            f"{get[1]['X-Request-ID']}"
        )
    pids = sorted({line["pid"] for line in lines})
    say(
        f"\nDiagnosis: {len(wrong)} of {len(rows)} GETs counted wrong; "
        f"{len(pids)} worker processes answered (pids {pids})."
    )
    say("Each worker has its own CARS list. The JSON log lines say which one:")
    for line in lines[:2]:
        say("  " + json.dumps({k: line[k] for k in ("event", "pid", "request_id")}))
    say("Fix: keep state in a database or cache shared by all workers;")
    say("examples/pitfall7_cars/app_fixed.py uses SQLite.")


DEBUG_PAGE = "/orders/42/total"  # raises TypeError in order_total()


def debugger_page(server: Server, host: str | None = None) -> tuple[int, str, str]:
    """GET the failing page: ``(status, content type, body)``."""
    headers = {"Host": host} if host else None
    status, response_headers, body = request(
        "GET", server.url + DEBUG_PAGE, headers=headers
    )
    return status, response_headers.get("Content-Type", ""), body.decode()


def debugger_secret(html: str) -> tuple[str, str]:
    """The page's debugger ``SECRET`` and its innermost frame id."""
    secret = re.search(r'SECRET = "([^"]+)"', html)
    frames = re.findall(r'<div class="frame" id="frame-(\d+)"', html)
    if secret is None or not frames:
        raise RuntimeError("no debugger page: " + html[:300])
    return secret.group(1), frames[-1]


def scenario_debugger() -> None:
    title("Pitfall 3: werkzeug's debugger on a deployed server (gunicorn)")
    cwd = EXAMPLES / "pitfall3_debugger"
    one_worker = ("--worker-class", "sync", "--workers", "1", "--timeout", "3600")
    say("examples/pitfall3_debugger/wsgi_exposed.py is the classic debug entry")
    say("point: DebuggedApplication(app, evalex=True).")
    with gunicorn("wsgi_exposed:application", *one_worker, cwd=cwd) as server:
        status, _, html = debugger_page(server, host="rebound.example")
        secret, _ = debugger_secret(html)
        base = f"{server.url}{DEBUG_PAGE}?__debugger__=yes&s={secret}"
        request("GET", base + "&cmd=printpin")
        _, _, _, slept = timed("GET", base + "&cmd=pinauth&pin=1")
        time.sleep(0.3)
        leaked = re.search(r"Debugger pin code: [\d-]+", server.log.read_text())
    say(f"  Host: rebound.example -> {status}, the traceback page with the source")
    say("  of every frame and a console in each, for any client and any Host;")
    say(f"  the PIN in the server's log: {leaked.group(0) if leaked else '(not seen)'}")
    say(f"  one wrong PIN kept the only worker busy for {slept:.2f} s.")

    say("\nThe safe way: one variable, every guard up (app_fixed.py uses Diag):")
    env = {"FLASK_DIAG_DEBUGGER": "on", "FLASK_DIAG_ENV": "staging"}
    with gunicorn("app_fixed:app", *one_worker, cwd=cwd, env=env) as server:
        enabled = wait_for_line(
            server, lambda line: line.get("event") == "debugger_enabled"
        )
        if enabled is None:
            raise RuntimeError("no debugger_enabled line:\n" + server.log.read_text())
        pin = Path(enabled["pin_file"]).read_text().strip()
        mode = os.stat(enabled["pin_file"]).st_mode & 0o777
        say(f"  log: debugger_enabled, pin_file={enabled['pin_file']} (mode {mode:o})")
        foreign = debugger_page(server, host="rebound.example")
        say(
            f"  Host: rebound.example -> {foreign[0]} {foreign[1]}: the envelope, as if"
            " there were no debugger"
        )
        status, ctype, html = debugger_page(server)
        say(f"  from 127.0.0.1 -> {status} {ctype.partition(';')[0]}: the traceback")
        secret, frame = debugger_secret(html)
        base = f"{server.url}{DEBUG_PAGE}?__debugger__=yes&s={secret}"
        # The PIN goes in a POST body, as the page the gate serves sends it
        # (a PIN in the URL would be in every request log: never compared).
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        answer = request(
            "POST", base + "&cmd=pinauth", f"pin={pin}".encode(), headers=form
        )
        cookie = answer[1].get("Set-Cookie", "").split(";", 1)[0]
        say(f"  the right PIN -> {json.loads(answer[2])}")
        status, _, body = request(
            "GET",
            base + f"&cmd=[price,quantity]&frm={frame}",
            headers={"Cookie": cookie},
        )
        result = re.sub(r"<[^>]+>", "", body.decode()).strip().splitlines()[-1]
        say(f"  console, in the failing frame: [price, quantity] -> {result}")
        slowest = 0.0
        for i in range(6):
            started = time.monotonic()
            _, _, body = request(
                "POST",
                base + "&cmd=pinauth",
                f"pin={i:04d}-0000-0000".encode(),
                headers=form,
            )
            slowest = max(slowest, time.monotonic() - started)
        say(
            f"  6 wrong PINs -> {json.loads(body)}, the slowest answered in "
            f"{slowest * 1000:.0f} ms (no sleeping worker)"
        )
        time.sleep(0.3)
        shipped = server.log.read_text()
    say(f"  the PIN in the server's log: {'YES' if pin in shipped else 'no'}")
    port = free_port()
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "app_fixed:app",
        ],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = refused.stderr.splitlines()
    reason = next((x for x in lines if x.startswith("flask_diag.exceptions.")), "")
    command = next((x for x in lines if "--workers 1" in x), "")
    say(f"\n$ gunicorn -w 2 ... app_fixed:app  -> exit status {refused.returncode}")
    say(
        textwrap.fill(
            reason.partition(": ")[2], 78, initial_indent="  ", subsequent_indent="  "
        )
    )
    say("    " + command.strip())


PDB_PROMPT = b"(Pdb) "
PDB_COMMANDS = ["p request.path", "n", "!answer = 42", "c"]


def pdb_session(port: int, commands: list[str], timeout: float = 20) -> list[str]:
    """Attach to a remote pdb like ``nc`` would, run ``commands``; the text
    up to each prompt, then what came until the server closed the
    connection."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no remote pdb on port {port}") from None
            time.sleep(0.1)
    sock.settimeout(timeout)
    outputs = []
    with sock:
        for line in [None, *commands]:
            if line is not None:
                sock.sendall(line.encode() + b"\n")
            data = b""
            while not data.endswith(PDB_PROMPT):
                chunk = sock.recv(65536)
                if not chunk:  # the session ended: the server closed it
                    break
                data += chunk
            outputs.append(data.decode(errors="replace"))
            if not data.endswith(PDB_PROMPT):
                break
    return outputs


def scenario_pdb() -> None:
    title("Pitfall 4: a remote pdb inside a gunicorn worker")
    say("examples/pitfall4_pdb/app.py calls breakpoint() in GET /answer.")
    cwd = EXAMPLES / "pitfall4_pdb"
    hook = {"PYTHONBREAKPOINT": "flask_diag.set_trace"}
    with gunicorn(
        "app:app", "-w", "1", "--timeout", "600", cwd=cwd, env=hook
    ) as server:
        status, _, body = request("GET", server.url + "/answer")
        line = wait_for_line(
            server, lambda x: x.get("event") == "forgotten breakpoint ignored"
        )
    say(f"  FLASK_DIAG_PDB off: GET /answer -> {status} {body.decode().strip()}")
    if line is not None:
        say(
            f"  log: {line['event']!r} at {Path(str(line.get('file'))).name}:"
            f"{line.get('line')}, request_id {line.get('request_id')}"
        )
    say("\nWith FLASK_DIAG_PDB=on the request waits in the breakpoint and the")
    say("worker listens on 127.0.0.1 for a debugger (here attached like nc):")
    port = free_port()
    env = {**hook, "FLASK_DIAG_PDB": "on", "FLASK_DIAG_PDB_PORT": str(port)}
    answers: list[tuple[int, dict[str, str], bytes]] = []
    with gunicorn("app:app", "-w", "1", "--timeout", "600", cwd=cwd, env=env) as server:
        client = threading.Thread(
            target=lambda: answers.append(
                request("GET", server.url + "/answer", timeout=60)
            ),
            daemon=True,
        )
        client.start()
        outputs = pdb_session(port, PDB_COMMANDS)
        client.join(timeout=30)
    banner = [x for x in outputs[0].splitlines() if x.startswith("***")]
    for text in banner:
        say("  " + textwrap.shorten(text, width=100, placeholder=" ..."))
    for command, output in zip(PDB_COMMANDS, outputs[1:], strict=False):
        shown = [x for x in output.splitlines() if x and not x.startswith("(Pdb)")]
        say(f"  (Pdb) {command}")
        for text in shown[:2]:
            say("    " + textwrap.shorten(text, width=96, placeholder=" ..."))
    if answers:
        status, headers, body = answers[0]
        say(
            f"  GET /answer -> {status} {body.decode().strip()}  "
            f"(X-Diag-PID {headers.get('X-Diag-PID')})"
        )
    say("After 'c' the server closed the connection itself; 'quit' would have")
    say("detached and let the request go on. python -m flask_diag pdb PORT is")
    say("the client with history and line editing.")


TEARDOWN_PATHS = (
    # The clean views first: a leaked SQLite transaction keeps the database
    # locked for every later writer, which is a symptom of its own.
    "/ok/connection",
    "/ok/transaction",
    "/ok/pending",
    "/ok/scoped",
    "/stream",
    "/cars",
    "/leak/connection",
    "/leak/transaction",
    "/leak/pending",
    "/leak/scoped",
    "/leak/stream",
)


def scenario_session() -> None:
    title("Pitfall 6: database sessions that outlive their request (gunicorn)")
    require("pitfall6_session/app.py", "sqlalchemy")
    say("examples/pitfall6_session/app.py keeps a module-global Session and has")
    say("one view per leak kind next to its clean twin (SQLite file database;")
    say("tests/test_teardown_servers.py replays it on PostgreSQL with an idle")
    say("timeout, where the global session then fails for real).")
    cwd = EXAMPLES / "pitfall6_session"
    with tempfile.TemporaryDirectory(prefix="flask-diag-demo-") as tmp:
        env = {"DATABASE_URL": f"sqlite:///{tmp}/pitfall6.db"}
        threads = ("-k", "gthread", "--threads", "4")
        with gunicorn("app:app", *threads, cwd=cwd, env=env) as server:
            answers = {
                path: request("GET", server.url + path) for path in TEARDOWN_PATHS
            }
            time.sleep(0.5)
            leaks = [
                line
                for line in server.json_lines()
                if line.get("event") == "teardown leak" and line.get("path")
            ]
        say(f"\n  {'request':<22} status  findings (kind at where: what)")
        for path, (status, headers, _) in answers.items():
            found = [x for x in leaks if x.get("request_id") == headers["X-Request-ID"]]
            say(f"  GET {path:<18} {status:<6}  {len(found) or '-'}")
            for line in found:
                text = f"{line['kind']} at {line.get('where')}: {line['leaked']}"
                say("      " + textwrap.shorten(text, width=100, placeholder=" ..."))
        say("Every finding is one 'teardown leak' JSON line with the request id,")
        say("pid and thread, what leaked, where, and the fix; the /ok/* twins and")
        say("the streamed /stream report nothing.")

        say("\nFLASK_DIAG_TEARDOWN=raise (for test suites and CI) turns a leak into")
        say("a 500 envelope:")
        env["FLASK_DIAG_TEARDOWN"] = "raise"
        with gunicorn("app:app", *threads, cwd=cwd, env=env) as server:
            status, headers, body = request("GET", server.url + "/leak/transaction")
        say(f"  GET /leak/transaction -> {status} {headers.get('Content-Type')}")
        show_members(json.loads(body), indent="      ")


DOCTOR_CASES = (
    # (example folder, app, --server command or None)
    ("pitfall1_secret_key", "app:app", None),
    ("pitfall2_selfcall", "app:app", "gunicorn -w 1 --timeout 30 app:app"),
    ("pitfall3_debugger", "wsgi_exposed:application", None),
    ("pitfall4_pdb", "app:app", None),
    ("pitfall5_errors", "app:app", None),
    ("pitfall6_session", "app:app", None),
    ("pitfall7_cars", "app:app", "gunicorn -w 4 app:app"),
)


def doctor(folder: str, app: str, server: str | None) -> dict[str, t.Any] | None:
    """``python -m flask_diag check --format json`` on one example."""
    command = [sys.executable, "-m", "flask_diag", "check", "--format", "json"]
    if server:
        command += ["--server", server]
    done = subprocess.run(
        [*command, app],
        cwd=EXAMPLES / folder,
        env={**os.environ, "SECRET_KEY": secrets.token_hex()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode not in (0, 1):
        say(f"  {folder}: could not be checked: {done.stderr.strip()[-300:]}")
        return None
    return t.cast(dict[str, t.Any], json.loads(done.stdout))


def scenario_doctor() -> None:
    title("flask diag check: the pitfalls found before the first request")
    say("python -m flask_diag check MODULE:APP imports each example the way")
    say("gunicorn does and reads its source; the fixed versions (app_fixed.py)")
    say("give no finding.")
    for folder, app, server in DOCTOR_CASES:
        shown = f"--server {server!r} " if server else ""
        say(f"\n$ cd examples/{folder}; python -m flask_diag check {shown}{app}")
        report = doctor(folder, app, server)
        if report is None:
            continue
        for finding in report["findings"]:
            where = f"{finding['file']}:{finding['line']}" if finding["line"] else ""
            say(
                textwrap.shorten(
                    f"  {finding['id']} {finding['level']:<7} {where} "
                    f"{finding['message']}",
                    width=150,
                    placeholder=" ...",
                )
            )
        clean = doctor(folder, "app_fixed:app", None)
        if clean is not None:
            count = len(clean["findings"])
            say(f"  app_fixed.py: {count} finding{'s' * (count != 1)}")

    title("flask diag probe: which workers answer (gunicorn -w 4, then -w 1)")
    cwd = EXAMPLES / "pitfall7_cars"
    for workers in ("4", "1"):
        with gunicorn("app:app", "-w", workers, cwd=cwd) as cars:
            probe = subprocess.run(
                [sys.executable, "-m", "flask_diag", "probe", cars.url + "/cars"]
                + ["-n", "40"],
                capture_output=True,
                text=True,
                timeout=120,
            )
        say("$ python -m flask_diag probe <url>/cars -n 40")
        for line in probe.stdout.strip().splitlines():
            say("  " + line)


SCENARIOS: dict[str, Callable[[], None]] = {
    "secret-key": scenario_secret_key,
    "self-call": scenario_self_call,
    "debugger": scenario_debugger,
    "pdb": scenario_pdb,
    "errors": scenario_errors,
    "session": scenario_session,
    "workers": scenario_workers,
    "doctor": scenario_doctor,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the flask_diag demo.")
    parser.add_argument("scenario", nargs="*", choices=[*SCENARIOS, []])
    args = parser.parse_args(argv)
    for name in args.scenario or list(SCENARIOS):
        SCENARIOS[name]()
    say("\nDone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
