"""A real PostgreSQL server for the tests, on 127.0.0.1.

``postgres_server`` (session-scoped) runs Debian's PostgreSQL binaries
(``/usr/lib/postgresql/<version>/bin``, package ``postgresql``) on a fresh
data directory in a temporary directory: ``initdb``, then ``postgres`` itself
as a child process listening on 127.0.0.1 only, on a free port, with its unix
socket in the same temporary directory. PostgreSQL refuses to run as root:
when the tests run as root (CI), both run as the ``postgres`` user the
Debian package creates, and the directory is handed to it.

Two databases: ``diag``, and ``diag_idle`` whose sessions are closed by the
server after :data:`IDLE_TIMEOUT` seconds idle (``idle_session_timeout``, and
``idle_in_transaction_session_timeout`` for sessions idle inside a
transaction), for pitfall 6. The server is stopped by its own pid at the end of the run
(``SIGINT``, PostgreSQL's fast shutdown; ``SIGKILL`` after a bounded wait),
whatever happened. A missing PostgreSQL fails the tests that use it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import free_port

__all__ = ["PostgresServer", "postgres_server", "IDLE_TIMEOUT"]

HOST = "127.0.0.1"
#: ``idle_session_timeout`` of the ``diag_idle`` database, in seconds.
IDLE_TIMEOUT = 2
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        pytest.fail(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres):"
            " it is a test dependency, install Debian's 'postgresql' package"
            " (scripts/test.sh does).",
            pytrace=False,
        )
    return Path(found[-1]).parent


class PostgresServer:
    """One running server: :meth:`url` for SQLAlchemy, :meth:`execute` for
    set-up statements."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port(HOST)
        self.root = Path(tempfile.mkdtemp(prefix="flask-diag-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                pytest.fail(
                    "running as root and there is no 'postgres' user (Debian's"
                    " 'postgresql' package creates it): PostgreSQL refuses to"
                    " run as root.",
                    pytrace=False,
                )
            self.user = "postgres"
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            os.chmod(self.root, 0o700)

    def _run_as(self) -> dict[str, t.Any]:
        return {"user": self.user, "group": self.user} if self.user else {}

    def url(self, database: str = "diag") -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:<port>/<database>``."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[t.Any, ...]]:
        """Run one statement (autocommit) and return its rows."""
        import psycopg

        with psycopg.connect(
            host=HOST, port=self.port, user="postgres", dbname=database,
            autocommit=True, connect_timeout=5,
        ) as conn:  # fmt: skip
            cursor = conn.execute(sql)  # type: ignore[arg-type]
            return list(cursor.fetchall()) if cursor.description else []

    def start(self) -> None:
        subprocess.run(
            [
                str(self.bindir / "initdb"),
                *("-D", str(self.data)),
                *("-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"),
            ],
            check=True,
            capture_output=True,
            timeout=120,
            **self._run_as(),
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.bindir / "postgres"),
                    *("-D", str(self.data)),
                    *("-p", str(self.port)),
                    *("-c", f"listen_addresses={HOST}"),
                    *("-c", f"unix_socket_directories={self.root}"),
                    *("-c", "fsync=off", "-c", "max_connections=200"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._run_as(),
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"postgres exited:\n{self.log_text()}")
            try:
                self.execute("SELECT 1")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"postgres did not answer in {START_TIMEOUT}s:\n"
                        f"{self.log_text()}"
                    ) from None
                time.sleep(0.1)
        self.execute("CREATE DATABASE diag")
        self.execute("CREATE DATABASE diag_idle")
        # Both timeouts: MySQL's wait_timeout closes any idle connection;
        # PostgreSQL splits it in two, and the module-global session of
        # pitfall 6 sits idle *in a transaction*.
        for setting in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
            self.execute(f"ALTER DATABASE diag_idle SET {setting} = '{IDLE_TIMEOUT}s'")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)  # fast shutdown
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 for the whole run."""
    server = PostgresServer(_binaries())
    try:
        server.start()
        yield server
    finally:
        server.stop()
