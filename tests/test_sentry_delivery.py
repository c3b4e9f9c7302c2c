"""sentry_delivery with stand-in transports: the cases a real endpoint can't
show (transports that cannot be instrumented, faults in the bookkeeping, the
bounds). The real thing is in test_errors.py and test_errors_servers.py,
against an HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import threading
import time
import typing as t

import pytest

from flask_diag import sentry_delivery


class Envelope:
    def __init__(self, event_id: str | None) -> None:
        self.event_id = event_id

    def get_event(self) -> dict[str, t.Any] | None:
        return None if self.event_id is None else {"event_id": self.event_id}


class BrokenEnvelope:
    def get_event(self) -> t.NoReturn:
        raise RuntimeError("not an envelope we know")


class Transport:
    """The shape of sentry-sdk's HTTP transport, sending in a thread."""

    def __init__(self, outcome: str = "ok") -> None:
        self._worker = object()
        self.outcome = outcome
        self.dropped: list[str] = []
        self.sent: list[t.Any] = []

    def capture_envelope(self, envelope: t.Any) -> None:
        if self.outcome == "full":
            self.on_dropped_event("full_queue")
            return
        thread = threading.Thread(target=self._send_quietly, args=(envelope,))
        thread.start()
        thread.join(5)

    def _send_quietly(self, envelope: t.Any) -> None:
        # As sentry-sdk's worker does (capture_internal_exceptions).
        try:
            self._send_envelope(envelope)
        except Exception:
            pass

    def _send_envelope(self, envelope: t.Any) -> None:
        self.sent.append(envelope)
        if self.outcome == "refused":
            self.on_dropped_event("status_503")
        elif self.outcome == "raises":
            raise ConnectionError("refused")

    def on_dropped_event(self, reason: str) -> None:
        self.dropped.append(reason)


@pytest.mark.parametrize(
    ("outcome", "accepted"),
    [("ok", True), ("refused", False), ("full", False), ("raises", False)],
)
def test_outcomes(outcome: str, accepted: bool) -> None:
    transport = Transport(outcome)
    assert sentry_delivery.watch(transport)
    transport.capture_envelope(Envelope("a" * 32))
    assert sentry_delivery.delivered(transport, "a" * 32, 1.0) is accepted
    if outcome in ("refused", "full"):
        assert transport.dropped  # the SDK's own method still ran


def test_unknown_event_and_unwatched_transport_are_unknown() -> None:
    transport = Transport()
    assert sentry_delivery.delivered(transport, "b" * 32, 0.1) is None
    sentry_delivery.watch(transport)
    assert sentry_delivery.delivered(transport, "b" * 32, 0.1) is None


class NoWorker(Transport):
    def __init__(self) -> None:
        super().__init__()
        self._worker = None  # type: ignore[assignment]


@pytest.mark.parametrize("transport", [object(), NoWorker()])
def test_transports_that_cannot_be_watched(transport: object) -> None:
    assert not sentry_delivery.watch(transport)
    assert sentry_delivery.delivered(transport, "c" * 32, 0.1) is None


def test_async_transport_is_not_watched() -> None:
    class Async(Transport):
        async def _send_envelope(self, envelope: t.Any) -> None:  # type: ignore[override]
            return None

    assert not sentry_delivery.watch(Async())


def test_a_fault_in_the_bookkeeping_never_reaches_the_sdk() -> None:
    transport = Transport()
    sentry_delivery.watch(transport)
    broken = BrokenEnvelope()
    transport.capture_envelope(broken)
    assert transport.sent == [broken]


def test_watching_twice_wraps_once() -> None:
    transport = Transport("refused")
    assert sentry_delivery.watch(transport)
    send = transport._send_envelope
    assert sentry_delivery.watch(transport)
    assert transport._send_envelope is send
    transport.capture_envelope(Envelope("d" * 32))
    assert transport.dropped == ["status_503"]


def test_no_answer_in_time_then_no_waiting_until_one_is_accepted() -> None:
    class Slow(Transport):
        def capture_envelope(self, envelope: t.Any) -> None:
            self.pending = envelope  # sent later, by the test

    transport = Slow()
    sentry_delivery.watch(transport)
    transport.capture_envelope(Envelope("e" * 32))
    started = time.monotonic()
    assert sentry_delivery.delivered(transport, "e" * 32, 0.3) is False
    assert 0.3 <= time.monotonic() - started < 1.0
    transport.capture_envelope(Envelope("f" * 32))
    started = time.monotonic()
    assert sentry_delivery.delivered(transport, "f" * 32, 5.0) is False
    assert time.monotonic() - started < 0.1  # Sentry failing: no wait
    # Sentry answers at last: both were accepted, and waiting resumes.
    transport._send_envelope(Envelope("e" * 32))
    transport._send_envelope(Envelope("f" * 32))
    assert sentry_delivery.delivered(transport, "f" * 32, 0.1) is True
    transport.capture_envelope(Envelope("g" * 32))
    answer = threading.Timer(0.2, transport._send_envelope, (Envelope("g" * 32),))
    answer.start()
    try:
        assert sentry_delivery.delivered(transport, "g" * 32, 5.0) is True
    finally:
        answer.cancel()


def test_outcomes_are_bounded() -> None:
    transport = Transport()
    sentry_delivery.watch(transport)
    for i in range(sentry_delivery._KEEP + 10):
        transport.capture_envelope(Envelope(f"{i:032x}"))
    deliveries = getattr(transport, sentry_delivery._ATTR)
    assert len(deliveries.outcomes) == sentry_delivery._KEEP
    assert sentry_delivery.delivered(transport, f"{0:032x}", 0.1) is None
    assert sentry_delivery.delivered(
        transport, f"{sentry_delivery._KEEP + 9:032x}", 0.1
    )


def test_a_refusal_keeps_errors_from_waiting() -> None:
    """Sentry answered an error status (the SDK returns normally after its
    on_dropped_event): later errors must not wait until one is accepted."""
    transport = Transport("refused")
    sentry_delivery.watch(transport)
    transport.capture_envelope(Envelope("h" * 32))
    assert sentry_delivery.delivered(transport, "h" * 32, 1.0) is False
    getattr(transport, sentry_delivery._ATTR).queued("i" * 32)  # not sent yet
    started = time.monotonic()
    assert sentry_delivery.delivered(transport, "i" * 32, 5.0) is False
    assert time.monotonic() - started < 0.5


def test_one_timeout_releases_every_waiter() -> None:
    class Slow(Transport):
        def capture_envelope(self, envelope: t.Any) -> None:
            pass  # never answered

    transport = Slow()
    sentry_delivery.watch(transport)
    results: dict[str, tuple[bool | None, float]] = {}
    started = time.monotonic()

    def wait(event_id: str, timeout: float) -> None:
        transport.capture_envelope(Envelope(event_id))
        answer = sentry_delivery.delivered(transport, event_id, timeout)
        results[event_id] = (answer, time.monotonic() - started)

    threads = [
        threading.Thread(target=wait, args=("j" * 32, 0.3)),
        threading.Thread(target=wait, args=("k" * 32, 5.0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results["j" * 32][0] is False
    assert results["k" * 32][0] is False
    assert results["k" * 32][1] < 2.0, results  # not its own 5 s


def test_a_transport_behind_a_proxy_is_watched_inside() -> None:
    """sentry-sdk's SENTRY_PRINT_ENVELOPES wrapper poses as the transport it
    wraps; the sending (and so the outcome) happens in the inner one."""
    inner = Transport("refused")

    class Proxy:
        def __init__(self, wrapped: Transport) -> None:
            self._inner = wrapped

        @property  # type: ignore[misc]
        def __class__(self) -> type:
            return self._inner.__class__

        def __getattr__(self, name: str) -> t.Any:
            return getattr(self._inner, name)

        def capture_envelope(self, envelope: t.Any) -> None:
            self._inner.capture_envelope(envelope)

    proxy = Proxy(inner)
    assert sentry_delivery.watch(proxy)
    proxy.capture_envelope(Envelope("l" * 32))
    assert sentry_delivery.delivered(proxy, "l" * 32, 1.0) is False
    assert inner.dropped == ["status_503"]
