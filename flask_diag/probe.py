"""``flask diag probe``: which worker processes and threads answer a URL.

Sends ``N`` requests (bounded: at most :data:`MAX_REQUESTS`, each with its
own timeout, a few at a time, each on a new connection with ``Connection:
close`` so the server's accept loops spread them) and counts the ``X-Diag-PID`` and
``X-Diag-Thread`` headers flask_diag's tagging puts on every response.
Several PIDs mean several processes, each with its own module-level state
(pitfall 7). ``session=True`` keeps one cookie jar, like one browser, and
tells whether that one client was served by several processes::

    result = probe("http://127.0.0.1:8000/", count=40, session=True)
    result.pids            # Counter({'4242': 11, '4243': 10, ...})
    print(result.text())

Only the standard library is used (:mod:`http.client`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import http.client
import json
import threading
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

__all__ = ["MAX_CONCURRENCY", "MAX_REQUESTS", "ProbeResult", "probe"]

#: The most requests one probe sends.
MAX_REQUESTS = 10_000
#: The most requests one probe has in flight at once.
MAX_CONCURRENCY = 64


@dataclasses.dataclass
class ProbeResult:
    """What the answers of one probe said."""

    url: str
    #: Responses by status code.
    statuses: collections.Counter[int] = dataclasses.field(
        default_factory=collections.Counter
    )
    #: Requests that got no response (refused, timed out), by error type.
    errors: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    #: Responses by ``X-Diag-PID``.
    pids: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    #: Responses by ``(pid, thread)``.
    threads: collections.Counter[tuple[str, str]] = dataclasses.field(
        default_factory=collections.Counter
    )
    #: Responses without the worker headers.
    untagged: int = 0
    #: With ``session=True``: the cookies the client kept.
    cookies: list[str] = dataclasses.field(default_factory=list)
    session: bool = False

    @property
    def sent(self) -> int:
        """Requests sent: each one was answered or failed."""
        return self.answered + sum(self.errors.values())

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    @property
    def exit_code(self) -> int:
        """0 when at least one answer carried ``X-Diag-PID``, else 1."""
        return 0 if self.pids else 1

    def as_dict(self) -> dict[str, object]:
        return {
            "url": self.url,
            "sent": self.sent,
            "answered": self.answered,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": dict(sorted(self.errors.items())),
            "untagged": self.untagged,
            "pids": dict(sorted(self.pids.items())),
            "threads": [
                {"pid": pid, "thread": thread, "requests": count}
                for (pid, thread), count in sorted(self.threads.items())
            ],
            "session": self.session,
            "cookies": sorted(self.cookies),
            "spread": len(self.pids) > 1,
        }

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)

    def render(self, fmt: str = "text") -> str:
        """The JSON document (``fmt="json"``) or the text report."""
        return self.as_json() if fmt == "json" else "\n".join(self.text())

    def text(self) -> list[str]:
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        lines = [
            f"probe {self.url}: {self.sent} requests, {self.answered} answered"
            + (f" ({statuses})" if statuses else "")
        ]
        if self.errors:
            failed = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))
            lines.append(f"no answer: {failed}")
        if self.pids:
            lines.append("")
            lines.append(f"{'PID':<10} {'requests':>8}  threads")
            for pid, count in sorted(self.pids.items()):
                names = sorted(t for (p, t) in self.threads if p == pid)
                lines.append(f"{pid:<10} {count:>8}  {', '.join(names)}")
            lines.append("")
            processes = len(self.pids)
            total_threads = len(self.threads)
            lines.append(
                f"{processes} process{'es' if processes != 1 else ''} and "
                f"{total_threads} thread{'s' if total_threads != 1 else ''} answered."
            )
        if self.untagged:
            lines.append(
                f"{self.untagged} response(s) without X-Diag-PID: is flask_diag "
                "installed on this app, with worker_headers on?"
            )
        if self.session and self.pids:
            if len(self.pids) > 1:
                lines.append(
                    f"One client (one cookie jar) was served by {len(self.pids)} "
                    "processes: module-level state (lists, dicts, caches) differs "
                    "from one request to the next (pitfall 7)."
                )
            else:
                lines.append("One client was served by a single process.")
        return lines


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    cls = (
        http.client.HTTPSConnection
        if parts.scheme == "https"
        else http.client.HTTPConnection
    )
    return cls(parts.hostname, parts.port, timeout=timeout), path


def _one(
    url: str,
    timeout: float,
    method: str,
    cookie: str | None,
) -> tuple[int, str | None, str, list[str]] | str:
    """One request: ``(status, pid, thread, set-cookies)`` or an error name."""
    connection, path = _connection(url, timeout)
    headers = {"Connection": "close", "User-Agent": "flask_diag-probe"}
    if cookie:
        headers["Cookie"] = cookie
    try:
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        response.read()
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    finally:
        connection.close()
    return (
        response.status,
        response.getheader("X-Diag-PID"),
        response.getheader("X-Diag-Thread") or "?",
        response.headers.get_all("Set-Cookie") or [],
    )


def probe(
    url: str,
    *,
    count: int = 40,
    timeout: float = 5.0,
    session: bool = False,
    concurrency: int = 4,
    method: str = "GET",
) -> ProbeResult:
    """Send ``count`` requests to ``url``, ``concurrency`` at a time (as a
    browser opens several connections); see the module docstring.

    Requests in flight at the same time are what makes a server hand them
    to different workers: a sync worker busy with one cannot accept the
    next.

    :raises ValueError: for a URL that is not http(s) or a count out of range.
    """
    if not 1 <= count <= MAX_REQUESTS:
        raise ValueError(f"count must be between 1 and {MAX_REQUESTS}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    _connection(url, timeout)  # validate before the first request
    result = ProbeResult(url, session=session)
    jar: SimpleCookie = SimpleCookie()
    lock = threading.Lock()

    def send(_: int) -> None:
        with lock:
            cookie = "; ".join(f"{k}={m.value}" for k, m in jar.items()) or None
        answer = _one(url, timeout, method, cookie if session else None)
        with lock:
            if isinstance(answer, str):
                result.errors[answer] += 1
                return
            status, pid, thread, cookies = answer
            result.statuses[status] += 1
            if pid is None:
                result.untagged += 1
            else:
                result.pids[pid] += 1
                result.threads[(pid, thread)] += 1
            if session:
                for value in cookies:
                    jar.load(value)

    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(send, range(count)))
    result.cookies = sorted(jar)
    return result
