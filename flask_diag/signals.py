"""Signals
=======

flask_diag announces what it does through
`blinker <https://blinker.readthedocs.io/>`__ signals in its own
namespace, so monitoring code can subscribe without touching the middleware::

    from flask_diag import signals

    def on_tagged(sender, request_id, pid, thread, **extra):
        metrics.incr("requests", tags={"pid": pid})

    signals.request_tagged.connect(on_tagged)

The sender is the middleware instance. A receiver that raises is logged
(``flask_diag internal error``) and skipped: the other receivers still run
and the request is never affected. Signals are sent only when a receiver is
connected, so an unused signal costs nothing on the request path.
"""

from __future__ import annotations

import typing as t

from blinker import Namespace
from blinker import Signal

from .internal import report_internal_error

__all__ = [
    "namespace",
    "request_tagged",
    "request_finished",
    "error_enveloped",
    "loopback_detected",
    "request_stuck",
    "pdb_session_started",
    "pdb_session_ended",
    "debugger_enabled",
    "debugger_disabled",
    "debugger_pin_accepted",
    "debugger_pin_refused",
    "debugger_client_refused",
    "debugger_command",
    "teardown_leak",
    "send_safely",
]

#: The blinker namespace holding every flask_diag signal.
namespace = Namespace()

#: Sent by :class:`~flask_diag.tagging.RequestTagging` when a request starts,
#: with ``environ``, ``request_id``, ``trace_id``, ``pid`` and ``thread``.
request_tagged = namespace.signal("request-tagged")

#: Sent by :class:`~flask_diag.tagging.RequestTagging` when the response
#: iterable is closed, with ``environ``, ``request_id``, ``status`` (an ``int``,
#: or ``None`` if the app never started a response) and ``duration`` (seconds).
request_finished = namespace.signal("request-finished")

#: Sent by :class:`~flask_diag.errors.ErrorEnvelope` when it answers an error,
#: with ``environ``, ``problem`` (the problem body as a ``dict``),
#: ``exception`` (or ``None``) and ``event_id`` (or ``None``).
error_enveloped = namespace.signal("error-enveloped")

#: Sent by :class:`~flask_diag.loopback.LoopbackGuard` when a request calls
#: back into its own server, with ``environ``, ``kind`` (``"self_call"``,
#: ``"handoff"``, ``"own_name"``, ``"under_load"`` or ``"callback"``),
#: ``action`` (``"raised"``, ``"warned"`` or ``"broken"``), ``outbound`` (the
#: outbound call), ``own_url`` (the address or URL of this server involved)
#: and ``message``.
loopback_detected = namespace.signal("loopback-detected")

#: Sent by :class:`~flask_diag.watchdog.Watchdog` from its monitor thread
#: when a request runs longer than the limit, once per request, with
#: ``environ``, ``request_id``, ``pid``, ``thread``, ``duration`` (seconds),
#: ``stack`` (the request thread's stack, formatted) and ``blocked_on`` (the
#: peer of the socket it waits on, or ``None``).
request_stuck = namespace.signal("request-stuck")

#: Sent by :func:`flask_diag.set_trace` when a remote pdb client attaches,
#: with ``request_id``, ``pid``, ``thread``, ``address`` (where it listened)
#: and ``peer`` (the client's address). The sender is the session.
pdb_session_started = namespace.signal("pdb-session-started")

#: Sent when a remote pdb session ends, with ``request_id``, ``reason``
#: (``"continue"``, ``"quit"`` or ``"disconnected"``) and ``duration``
#: (seconds).
pdb_session_ended = namespace.signal("pdb-session-ended")


#: Sent by :class:`~flask_diag.debugger.DebuggerGate` when the debugger is
#: switched on, with ``pin_file`` (the path of the PIN file, never the PIN),
#: ``expires_at`` (a Unix time) and ``allow`` (the allowed networks).
debugger_enabled = namespace.signal("debugger-enabled")

#: Sent when the debugger switches itself off, with ``reason`` (e.g.
#: ``"expired"``).
debugger_disabled = namespace.signal("debugger-disabled")

#: Sent when a debugger client enters the right PIN, with ``request_id``,
#: ``path`` and ``client`` (its address). Never ``environ``: it holds the
#: query string and the cookies (the unlock cookie) of a debugger request.
debugger_pin_accepted = namespace.signal("debugger-pin-accepted")

#: Sent when a PIN is refused, with ``request_id``, ``path``, ``client``,
#: ``reason`` (``"wrong"``, ``"locked"``, or ``"pin_in_url"``: sent in the
#: query string, never compared), ``failures`` and ``locked`` (a ``bool``).
debugger_pin_refused = namespace.signal("debugger-pin-refused")

#: Sent when a debugger request is refused (client not allowed, foreign
#: ``Host``, several processes, or ``"pin"``: a command without a valid
#: unlock cookie), with ``request_id``, ``path``, ``client`` and ``reason``.
debugger_client_refused = namespace.signal("debugger-client-refused")

#: Sent when a console command is evaluated, with ``request_id``, ``path``,
#: ``client`` and ``command`` (its text).
debugger_command = namespace.signal("debugger-command")

#: Sent by :class:`~flask_diag.teardown.TeardownCheck` for each resource that
#: outlived its request, with ``environ`` and ``finding`` (a structured
#: finding object, see :doc:`/middlewares/teardown`).
teardown_leak = namespace.signal("teardown-leak")


def send_safely(signal: Signal, sender: object, **kwargs: t.Any) -> None:
    """Call every receiver of ``signal``; a receiver that raises is logged.

    Unlike ``Signal.send``, one failing receiver does not stop the others.
    """
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception as exc:
            report_internal_error(f"signal receiver {receiver!r}", exc)
