"""Helpers for your own test suite.

:func:`capture_signals` records every flask_diag signal sent in its block::

    from flask_diag.testing import capture_signals

    def test_request_is_tagged(client):
        with capture_signals() as sent:
            client.get("/")
        assert sent[0].name == "request-tagged"
        assert sent[0].kwargs["pid"] == os.getpid()

:func:`capture_logs` records structlog events *with* the request context
(structlog's own ``capture_logs`` drops context variables by default).
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterator
from contextlib import contextmanager

import structlog.testing
from structlog.contextvars import merge_contextvars

from .signals import namespace

__all__ = ["SentSignal", "capture_signals", "capture_logs"]


class SentSignal(t.NamedTuple):
    """One signal recorded by :func:`capture_signals`."""

    #: The signal's name, e.g. ``"request-tagged"``.
    name: str
    #: The middleware instance that sent it.
    sender: object
    #: The keyword arguments it was sent with.
    kwargs: dict[str, t.Any]


@contextmanager
def capture_signals() -> Iterator[list[SentSignal]]:
    """Record ``(name, sender, kwargs)`` for every flask_diag signal sent."""
    sent: list[SentSignal] = []
    receivers = []
    for name, signal in list(namespace.items()):

        def receiver(sender: object, _name: str = name, **kwargs: t.Any) -> None:
            sent.append(SentSignal(_name, sender, kwargs))

        signal.connect(receiver, weak=False)
        receivers.append((signal, receiver))
    try:
        yield sent
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)


@contextmanager
def capture_logs() -> Iterator[list[t.MutableMapping[str, t.Any]]]:
    """Like ``structlog.testing.capture_logs``, keeping the request context."""
    with structlog.testing.capture_logs(processors=[merge_contextvars]) as logs:
        yield logs
