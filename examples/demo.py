"""The flask_diag demo: each pitfall example on a real server, diagnosed.

Run through ``bash scripts/demo.sh`` (which creates its own virtualenv), or
directly with an environment that has flask_diag and gunicorn installed::

    python examples/demo.py            # every scenario
    python examples/demo.py workers    # one of them

Every server listens on 127.0.0.1 only, on a free port, and is stopped by
its process id when its scenario ends, also on Ctrl-C or a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
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
def gunicorn(
    app: str, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="flask-diag-demo-", suffix=".log")[1])
    command = [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}"]
    command += [*args, app]
    say(f"$ gunicorn {' '.join([*args, '-b', f'127.0.0.1:{port}', app])}")
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start in 20 s") from None
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


def request(
    method: str, url: str, body: dict[str, t.Any] | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def scenario_workers() -> None:
    title("Pitfall 7: state that lives in one worker (gunicorn -w 4)")
    say("examples/pitfall7_cars/app.py keeps its cars in a module-level list.")
    say("A client POSTs a car, then GETs the list, 30 times in a row.")
    rows = []
    with gunicorn("app:app", "-w", "4", cwd=EXAMPLES / "pitfall7_cars") as server:
        for i in range(30):
            post = request("POST", server.url + "/cars", {"name": f"car-{i}"})
            get = request("GET", server.url + "/cars")
            rows.append((i + 1, post, get))
        time.sleep(0.3)
        lines = [line for line in server.json_lines() if "request_id" in line]
    wrong = [row for row in rows if json.loads(row[2][2])["count"] != row[0]]
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
        f"\nDiagnosis: {len(wrong)} of 30 GETs counted wrong; "
        f"{len(pids)} worker processes answered (pids {pids})."
    )
    say("Each worker has its own CARS list. The JSON log lines say which one:")
    for line in lines[:2]:
        say("  " + json.dumps({k: line[k] for k in ("event", "pid", "request_id")}))
    say("Fix: keep state in a database or cache shared by all workers;")
    say("examples/pitfall7_cars/app_fixed.py uses SQLite.")


SCENARIOS: dict[str, Callable[[], None]] = {
    "workers": scenario_workers,
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
