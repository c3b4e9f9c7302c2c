"""Whether Sentry accepted an event, before its id is quoted to a user.

``sentry_sdk.capture_event()`` returns an event id as soon as the event is
queued; a background thread sends it later. An error envelope that quoted
that id while Sentry was unreachable, refusing events or rate-limiting the
project would send the user looking for an event that does not exist. So
the envelope asks first, waiting a bounded time for the answer::

    watch(client.transport)                 # before capturing
    event_id = sentry_sdk.capture_event(event)
    if delivered(event_id, timeout=2.0) is False:
        event_id = None                     # dropped, refused or no answer

:func:`watch` instruments the transport once: the envelope being sent and
the SDK's own ``on_dropped_event`` (which it calls for every loss: network
error, HTTP error status, rate limit, full queue) tell which event ids Sentry
answered 2xx for. :func:`watch_every_client` does it from a global event
processor, so that events other integrations capture first are known too. A
transport that cannot be instrumented (a custom one, the asynchronous one) is
left alone and :func:`delivered` answers ``None``: unknown.

Only a 5xx response waits, and only while Sentry answers: after a failure or
a wait that timed out, later errors do not wait (their ids are left out)
until an envelope is accepted again, so an outage costs one slow response,
not one per error.

The wrappers never change what the SDK does: they call the original methods
with the original arguments, and a fault in their bookkeeping is swallowed.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
import typing as t
import weakref
from collections import OrderedDict

import sentry_sdk
from sentry_sdk.scope import add_global_event_processor

__all__ = ["delivered", "watch", "watch_every_client"]

#: Outcomes kept per transport (event id -> accepted), oldest dropped first.
_KEEP = 1024
_ATTR = "_flask_diag_delivery"
_install_lock = threading.Lock()
_local = threading.local()
_all_deliveries: weakref.WeakSet[_Deliveries] = weakref.WeakSet()


def _after_fork() -> None:
    global _install_lock
    _install_lock = threading.Lock()
    for deliveries in list(_all_deliveries):
        deliveries.after_fork()


os.register_at_fork(after_in_child=_after_fork)


class _Deliveries:
    """What one transport did with the events it was given."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        # event id -> True (Sentry answered 2xx), False (lost), None (queued).
        self.outcomes: OrderedDict[str, bool | None] = OrderedDict()
        # When a delivery last failed or a wait timed out; None while Sentry
        # answers.
        self.failing_since: float | None = None

    def queued(self, event_id: str) -> None:
        with self.changed:
            self.outcomes[event_id] = None
            while len(self.outcomes) > _KEEP:
                self.outcomes.popitem(last=False)

    def record(self, ids: list[str], accepted: bool) -> None:
        """The outcome of an envelope; the first loss of an event stands."""
        with self.changed:
            for event_id in ids:
                if event_id in self.outcomes and self.outcomes[event_id] is not False:
                    self.outcomes[event_id] = accepted
            # Any envelope tells whether Sentry answers.
            if accepted:
                self.failing_since = None
            elif self.failing_since is None:
                self.failing_since = time.monotonic()
            self.changed.notify_all()

    def wait(self, event_id: str, timeout: float) -> bool | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            if event_id not in self.outcomes:
                return None  # not queued through this transport
            while True:
                outcome = self.outcomes.get(event_id)
                if outcome is not None:
                    return outcome
                if event_id not in self.outcomes:
                    return False  # pushed out by newer ones: unknown, not quoted
                if self.failing_since is not None:
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # No answer in time: the other waiters stop waiting too.
                    self.failing_since = time.monotonic()
                    self.changed.notify_all()
                    return False
                self.changed.wait(remaining)

    def after_fork(self) -> None:
        # The child has no sending thread of the parent, and a lock the
        # parent held while forking would stay held: start afresh.
        self.changed = threading.Condition()
        self.outcomes = OrderedDict()
        self.failing_since = None


def _unwrap(transport: object) -> object:
    """The transport that sends, behind a proxy that poses as it.

    ``SENTRY_PRINT_ENVELOPES=1`` makes sentry-sdk wrap its transport in one
    that prints each envelope, forwards the rest and reports the inner
    transport's class as its own: the sending happens inside.
    """
    for _ in range(4):
        inner = getattr(transport, "__dict__", {}).get("_inner")
        if inner is None or type(transport) is transport.__class__:
            break
        transport = inner
    return transport


def watch(transport: object) -> bool:
    """Instrument ``transport`` once; ``False`` when it cannot tell outcomes."""
    transport = _unwrap(transport)
    if isinstance(getattr(transport, _ATTR, None), _Deliveries):
        return True
    send = getattr(transport, "_send_envelope", None)
    capture = getattr(transport, "capture_envelope", None)
    dropped = getattr(transport, "on_dropped_event", None)
    if (
        not callable(send)
        or not callable(capture)
        or not callable(dropped)
        or inspect.iscoroutinefunction(send)
        or getattr(transport, "_worker", None) is None
    ):
        return False
    with _install_lock:
        if isinstance(getattr(transport, _ATTR, None), _Deliveries):
            return True
        deliveries = _Deliveries()

        def capture_envelope(envelope: t.Any) -> t.Any:
            # The request's thread: a full queue is reported from in here.
            _local.ids = _event_ids(envelope, deliveries)
            try:
                return capture(envelope)
            finally:
                _local.ids = None

        def send_envelope(envelope: t.Any) -> t.Any:
            # The SDK's sending thread. A refusal (any non-2xx, the SDK's own
            # rate limit) reaches on_dropped_event and returns normally.
            ids = _local.ids = _event_ids(envelope, None)
            _local.dropped = False
            try:
                result = send(envelope)
            except BaseException:
                deliveries.record(ids, False)
                raise
            finally:
                _local.ids = None
            if not _local.dropped:
                deliveries.record(ids, True)
            return result

        def on_dropped_event(reason: str) -> t.Any:
            ids = getattr(_local, "ids", None)
            if ids is not None:
                _local.dropped = True
                deliveries.record(ids, False)
            return dropped(reason)

        try:
            transport.capture_envelope = capture_envelope  # type: ignore[attr-defined]
            transport._send_envelope = send_envelope  # type: ignore[attr-defined]
            transport.on_dropped_event = on_dropped_event  # type: ignore[attr-defined]
            setattr(transport, _ATTR, deliveries)
        except (AttributeError, TypeError):  # a transport with __slots__
            return False
        _all_deliveries.add(deliveries)
    return True


def watch_every_client() -> None:
    """Watch the transport of whichever client captures an event, from now on.

    A global event processor of sentry-sdk (idempotent): it runs before the
    event reaches the transport, also for events another integration captures
    (sentry-sdk's Flask integration reports some exceptions before the
    envelope sees them), so their delivery is known too.
    """
    global _processor_added
    with _install_lock:
        if _processor_added:
            return
        _processor_added = True
    add_global_event_processor(_watch_current_client)


def _watch_current_client(event: t.Any, hint: t.Any) -> t.Any:
    try:
        watch(getattr(sentry_sdk.get_client(), "transport", None))
    except Exception:  # never keep an event from Sentry for our bookkeeping
        pass
    return event


_processor_added = False


def delivered(transport: object, event_id: str, timeout: float) -> bool | None:
    """Whether Sentry accepted ``event_id``, waiting at most ``timeout`` s.

    ``True``: Sentry answered 2xx. ``False``: the SDK dropped it (queue full,
    rate limit, network error, error status), no answer came in time, or
    Sentry failed recently and has not accepted anything since (no wait
    then). ``None``: unknown, the event did not go through ``transport``
    after :func:`watch`.
    """
    deliveries = getattr(_unwrap(transport), _ATTR, None)
    if not isinstance(deliveries, _Deliveries):
        return None
    return deliveries.wait(event_id, timeout)


def _event_ids(envelope: t.Any, deliveries: _Deliveries | None) -> list[str]:
    """The event id ``envelope`` carries (noted as queued in ``deliveries``)."""
    try:
        event = envelope.get_event()
        event_id = event.get("event_id") if isinstance(event, dict) else None
        if not isinstance(event_id, str):
            return []
        if deliveries is not None:
            deliveries.queued(event_id)
        return [event_id]
    except Exception:  # never break the SDK for our bookkeeping
        return []
