"""A real Sentry endpoint for tests.

:class:`SentryEndpoint` is a small HTTP server on a free port of 127.0.0.1,
in a background thread of the test process, that accepts what sentry-sdk's
HTTP transport sends (``POST /api/<project>/envelope/``), decompresses it
(``Content-Encoding: gzip``, ``deflate``, ``br`` when the brotli module is
installed, or none), parses the envelope format and keeps every envelope.
The events come back as :class:`ReceivedEvent`: the event's parsed JSON and
the envelope (its header line, the HTTP headers) that carried it. So a test
checks what Sentry would really have received, after the SDK's scopes, event
processors, serialisation and transport, not what a hook saw::

    def test_tags(sentry_endpoint, sentry_init):
        sentry_init()  # dsn=sentry_endpoint.dsn
        sentry_sdk.capture_message("hi")
        (event,) = sentry_endpoint.wait_for_events(1)
        assert event.message == "hi"
        assert event.event_id == event.envelope_headers["event_id"]

Fixtures:

- ``sentry_endpoint``: a started :class:`SentryEndpoint`, always stopped at
  teardown.
- ``sentry_init``: ``sentry_init(**options)`` calls ``sentry_sdk.init()``
  with ``dsn=sentry_endpoint.dsn`` (an option given wins) and the SDK's
  default integrations (the Flask integration is enabled automatically when
  Flask is installed); at teardown the client is flushed and closed and the
  SDK is left as before any ``init()``: the next test sees no client, tags or
  breadcrumbs of this one.

Every wait is bounded; loopback only.
"""

from __future__ import annotations

import dataclasses
import gzip
import http.server
import json
import re
import threading
import time
import typing as t
import zlib
from collections.abc import Callable
from collections.abc import Iterator

import pytest
import sentry_sdk
from sentry_sdk.scope import Scope

__all__ = ["sentry_endpoint", "sentry_init"]

HOST = "127.0.0.1"
#: How long :meth:`SentryEndpoint.wait_for_events` waits by default.
WAIT_TIMEOUT = 10.0
#: How long the client may take to flush its queue at teardown.
CLOSE_TIMEOUT = 5.0

_ENVELOPE_PATH = re.compile(r"^/api/(?P<project>[0-9]+)/envelope/?$")


@dataclasses.dataclass(frozen=True)
class EnvelopeItem:
    """One item of an envelope: its header line and its raw payload."""

    headers: dict[str, t.Any]
    payload: bytes

    @property
    def type(self) -> str | None:
        """``event``, ``transaction``, ``session``, ``client_report``, ..."""
        value = self.headers.get("type")
        return value if isinstance(value, str) else None

    def json(self) -> t.Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


@dataclasses.dataclass(frozen=True)
class ReceivedEnvelope:
    """One envelope as the endpoint received it."""

    #: The project id from the URL (``/api/<project>/envelope/``).
    project: str
    #: The request's HTTP headers (``Content-Encoding``, ``X-Sentry-Auth``...).
    http_headers: dict[str, str]
    #: The envelope's header line, parsed (``event_id``, ``sent_at``, ``dsn``,
    #: ``sdk``, ``trace``...).
    headers: dict[str, t.Any]
    items: tuple[EnvelopeItem, ...]
    #: The decompressed body, as sent.
    raw: bytes


@dataclasses.dataclass(frozen=True)
class ReceivedEvent:
    """An ``event`` item (an error or a message) and its envelope."""

    #: The event's JSON, as Sentry would store it.
    data: dict[str, t.Any]
    item_headers: dict[str, t.Any]
    envelope: ReceivedEnvelope

    @property
    def envelope_headers(self) -> dict[str, t.Any]:
        return self.envelope.headers

    @property
    def http_headers(self) -> dict[str, str]:
        return self.envelope.http_headers

    @property
    def event_id(self) -> str | None:
        value = self.data.get("event_id")
        return value if isinstance(value, str) else None

    @property
    def tags(self) -> dict[str, t.Any]:
        """The tags; the SDK sends a mapping, the protocol also allows pairs."""
        tags = self.data.get("tags") or {}
        if isinstance(tags, list):
            return {key: value for key, value in tags}
        return dict(tags)

    @property
    def message(self) -> str | None:
        """The text of ``capture_message()`` (``logentry`` or ``message``)."""
        logentry = self.data.get("logentry")
        if isinstance(logentry, dict):
            text = logentry.get("formatted") or logentry.get("message")
            if isinstance(text, str):
                return text
        message = self.data.get("message")
        return message if isinstance(message, str) else None

    @property
    def exception_types(self) -> list[str]:
        """The types of the captured exception chain, outermost last."""
        values = (self.data.get("exception") or {}).get("values") or []
        return [value.get("type") for value in values]


class EnvelopeError(ValueError):
    """The body is not a valid envelope."""


def parse_envelope(data: bytes) -> tuple[dict[str, t.Any], list[EnvelopeItem]]:
    """Split an envelope into its header line and items.

    The format: a JSON header line, then for each item a JSON header line
    and its payload; the payload is ``length`` bytes when the item header
    gives one, otherwise up to the next newline. See
    https://develop.sentry.dev/sdk/data-model/envelopes/
    """
    header_line, _, rest = data.partition(b"\n")
    try:
        headers = json.loads(header_line) if header_line.strip() else {}
    except ValueError as exc:
        raise EnvelopeError(f"bad envelope header {header_line[:200]!r}") from exc
    if not isinstance(headers, dict):
        raise EnvelopeError(f"envelope header is not an object: {headers!r}")
    items = []
    pos = 0
    while pos < len(rest):
        line, pos = _line(rest, pos)
        if not line.strip():  # the newline after the last item
            continue
        try:
            item_headers = json.loads(line)
        except ValueError as exc:
            raise EnvelopeError(f"bad item header {line[:200]!r}") from exc
        if not isinstance(item_headers, dict):
            raise EnvelopeError(f"item header is not an object: {item_headers!r}")
        length = item_headers.get("length")
        if length is None:
            payload, pos = _line(rest, pos)
        else:
            if not isinstance(length, int) or length < 0:
                raise EnvelopeError(f"bad item length {length!r}")
            payload = rest[pos : pos + length]
            if len(payload) != length:
                raise EnvelopeError(
                    f"item of {length} bytes truncated to {len(payload)}"
                )
            pos += length
            if rest[pos : pos + 1] == b"\n":
                pos += 1
        items.append(EnvelopeItem(item_headers, payload))
    return headers, items


def _line(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"\n", pos)
    if end == -1:
        return data[pos:], len(data)
    return data[pos:end], end + 1


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        try:
            import brotli  # type: ignore[import-not-found]
        except ImportError:
            raise EnvelopeError(
                "brotli body but the brotli module is not installed"
            ) from None
        return t.cast(bytes, brotli.decompress(body))
    raise EnvelopeError(f"unknown Content-Encoding {encoding!r}")


class SentryEndpoint:
    """A Sentry ingestion endpoint on ``127.0.0.1:<free port>``.

    Requests it cannot accept (another path, a bad body) are answered with
    an error status and listed in :attr:`errors`, so a test can tell "never
    sent" from "sent but unreadable".
    """

    def __init__(self, host: str = HOST) -> None:
        self.host = host
        self._envelopes: list[ReceivedEnvelope] = []
        self._errors: list[str] = []
        self._changed = threading.Condition()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: When set, envelopes are answered ``429`` with this many seconds in
        #: ``Retry-After`` and ``X-Sentry-Rate-Limits``, as Sentry does when
        #: a project is over its quota (the envelope is still recorded).
        self.rate_limit: int | None = None
        #: When set, envelopes are answered with this error status (the
        #: envelope is still recorded), as during a Sentry incident.
        self.fail_status: int | None = None
        #: Seconds to wait before answering (the envelope is recorded at
        #: once): a Sentry that is slow or does not answer in time.
        self.delay: float = 0.0

    # -- life cycle --------------------------------------------------------

    def start(self) -> SentryEndpoint:
        """Bind a free port and serve in a daemon thread."""
        server = http.server.ThreadingHTTPServer((self.host, 0), _Handler)
        server.daemon_threads = True
        server.endpoint = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sentry-endpoint",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket; idempotent."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        try:
            server.shutdown()
        finally:
            server.server_close()
            if thread is not None:
                thread.join(timeout)

    @property
    def port(self) -> int:
        assert self._server is not None, "the endpoint is not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def dsn(self, project: int = 1, key: str = "public") -> str:
        """A DSN pointing at this endpoint."""
        return f"http://{key}@{self.host}:{self.port}/{project}"

    # -- what was received -------------------------------------------------

    @property
    def envelopes(self) -> list[ReceivedEnvelope]:
        """Every envelope received so far (a copy)."""
        with self._changed:
            return list(self._envelopes)

    @property
    def events(self) -> list[ReceivedEvent]:
        """Every ``event`` item received so far, in arrival order."""
        return [
            ReceivedEvent(item.json(), item.headers, envelope)
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == "event"
        ]

    @property
    def errors(self) -> list[str]:
        """Requests that were refused, with the reason."""
        with self._changed:
            return list(self._errors)

    def clear(self) -> None:
        with self._changed:
            self._envelopes.clear()
            self._errors.clear()

    def wait_for_events(
        self,
        count: int = 1,
        *,
        where: Callable[[ReceivedEvent], bool] | None = None,
        timeout: float = WAIT_TIMEOUT,
    ) -> list[ReceivedEvent]:
        """Wait until at least ``count`` events (matching ``where``) arrived.

        Returns all the matching events; fails the test with what did arrive
        when ``timeout`` passes first.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                events = [e for e in self.events if where is None or where(e)]
                if len(events) >= count:
                    return events
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.5))
        received = [
            (e.event_id, e.message, e.exception_types, e.tags) for e in self.events
        ]
        raise AssertionError(
            f"expected {count} matching event(s) at {self.url} within {timeout}s,"
            f" got {len(events)}; all events received: {received};"
            f" item types: {[i.type for e in self.envelopes for i in e.items]};"
            f" refused requests: {self.errors}"
        )

    def _store(self, envelope: ReceivedEnvelope) -> None:
        with self._changed:
            self._envelopes.append(envelope)
            self._changed.notify_all()

    def _refuse(self, reason: str) -> None:
        with self._changed:
            self._errors.append(reason)
            self._changed.notify_all()

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"<SentryEndpoint {where} envelopes={len(self._envelopes)}>"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    server: http.server.ThreadingHTTPServer

    @property
    def endpoint(self) -> SentryEndpoint:
        return self.server.endpoint  # type: ignore[attr-defined,no-any-return]

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        try:
            body = self._read_body()
        except (ValueError, OSError) as exc:
            self.endpoint._refuse(f"POST {self.path}: unreadable body: {exc}")
            self._answer(400, {"detail": "unreadable body"}, close=True)
            return
        path = self.path.split("?", 1)[0]
        match = _ENVELOPE_PATH.match(path)
        if match is None:
            self.endpoint._refuse(f"POST {self.path}: not an envelope endpoint")
            self._answer(404, {"detail": "not found"})
            return
        try:
            raw = _decompress(body, self.headers.get("Content-Encoding", ""))
            headers, items = parse_envelope(raw)
        except (EnvelopeError, OSError, zlib.error) as exc:
            self.endpoint._refuse(f"POST {self.path}: {exc}")
            self._answer(400, {"detail": str(exc)})
            return
        self.endpoint._store(
            ReceivedEnvelope(
                project=match["project"],
                http_headers=dict(self.headers.items()),
                headers=headers,
                items=tuple(items),
                raw=raw,
            )
        )
        if self.endpoint.delay:
            time.sleep(min(self.endpoint.delay, 30.0))
        if self.endpoint.fail_status is not None:
            self._answer(self.endpoint.fail_status, {"detail": "failing on purpose"})
            return
        limit = self.endpoint.rate_limit
        if limit is not None:
            self._answer(
                429,
                {"detail": "rate limited"},
                extra=(
                    ("Retry-After", str(limit)),
                    ("X-Sentry-Rate-Limits", f"{limit}::organization"),
                ),
            )
            return
        self._answer(200, {"id": headers.get("event_id")})

    def do_GET(self) -> None:  # noqa: N802
        self.endpoint._refuse(f"GET {self.path}")
        self._answer(405, {"detail": "POST envelopes"})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def _answer(
        self,
        status: int,
        body: dict[str, t.Any],
        close: bool = False,
        extra: t.Iterable[tuple[str, str]] = (),
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: t.Any) -> None:  # noqa: A002
        pass  # keep the test output clean; refusals are in ``errors``


@pytest.fixture
def sentry_endpoint() -> Iterator[SentryEndpoint]:
    """A started :class:`SentryEndpoint`; stopped at teardown, always."""
    endpoint = SentryEndpoint().start()
    try:
        yield endpoint
    finally:
        endpoint.stop()


SentryInit = Callable[..., sentry_sdk.Client]


@pytest.fixture
def sentry_init(sentry_endpoint: SentryEndpoint) -> Iterator[SentryInit]:
    """``sentry_init(**options)``: ``sentry_sdk.init()`` against the endpoint.

    Defaults: ``dsn=sentry_endpoint.dsn()`` and no proxy from the environment
    (``http_proxy=""``), so the envelopes go straight to 127.0.0.1; every
    other option is the SDK's default. Returns the client. Calling it again
    closes the previous client first. At teardown the client is flushed and
    closed (within its ``shutdown_timeout``, at most :data:`CLOSE_TIMEOUT`
    seconds) and the SDK reset: no client, and empty global, isolation and
    current scopes.
    """
    clients: list[sentry_sdk.Client] = []

    def init(**options: t.Any) -> sentry_sdk.Client:
        if clients:
            _close(clients[-1])
        options.setdefault("dsn", sentry_endpoint.dsn())
        options.setdefault("http_proxy", "")
        options.setdefault("https_proxy", "")
        sentry_sdk.init(**options)
        client = sentry_sdk.get_client()
        assert isinstance(client, sentry_sdk.Client)
        clients.append(client)
        return client

    try:
        yield init
    finally:
        _deinit(clients)


def _close(client: sentry_sdk.Client) -> None:
    """Flush and close: the client's ``shutdown_timeout``, at most
    :data:`CLOSE_TIMEOUT` seconds."""
    timeout = client.options.get("shutdown_timeout")
    if timeout is None or timeout > CLOSE_TIMEOUT:
        timeout = CLOSE_TIMEOUT
    client.close(timeout=timeout)


def _deinit(clients: list[sentry_sdk.Client]) -> None:
    """Close the clients and leave sentry-sdk as if never initialised.

    sentry-sdk 2.x has no ``deinit``: ``init()`` binds the client to the
    global scope, so the global scope gets a ``NonRecordingClient`` back
    (``set_client(None)``) and the scopes forget tags, breadcrumbs and
    propagation context. Integrations stay installed (``setup_once`` patches
    are process-wide by design) but are inert without a client.
    """
    errors: list[BaseException] = []
    for client in reversed(clients):
        try:
            _close(client)
        except Exception as exc:  # keep resetting
            errors.append(exc)
    Scope.get_global_scope().set_client(None)
    for scope in (
        Scope.get_global_scope(),
        Scope.get_isolation_scope(),
        Scope.get_current_scope(),
    ):
        scope.clear()
    if errors:
        raise errors[0]
