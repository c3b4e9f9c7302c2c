"""The bridge to sentry-sdk, shared by the middlewares.

flask_diag never initialises Sentry: it only adds to what the application set
up with ``sentry_sdk.init()``. When Sentry is not initialised every function
here returns at once.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping
from contextlib import AbstractContextManager

import sentry_sdk
import sentry_sdk.scope
from sentry_sdk.client import NonRecordingClient
from sentry_sdk.scope import Scope

from .context import RequestInfo

try:  # private in sentry-sdk: tells whether its WSGI middleware opened a scope.
    from sentry_sdk.integrations.wsgi import (
        _wsgi_middleware_applied as _sentry_request_scope,
    )
except ImportError:  # pragma: no cover - layout changed in a future sentry-sdk
    _sentry_request_scope = None

__all__ = ["is_active", "request_tags", "enter_request_scope", "capture_warning"]


def is_active() -> bool:
    """``True`` when the application initialised sentry-sdk with a DSN.

    ``sentry_sdk.init()`` binds its client to the global scope; reading it
    there costs a fifth of ``sentry_sdk.get_client()``, which builds a new
    ``NonRecordingClient`` on every call while Sentry is off.
    """
    try:
        if _scope_module is not None:
            # The same, without three Python calls: this runs on every request.
            scope = _scope_module._global_scope
            if scope is None:
                return False
            client = scope.client
            if type(client) is NonRecordingClient:
                return False
        else:
            client = Scope.get_global_scope().client
        # ``sentry_sdk.init()`` without a DSN makes a client that is "active"
        # but sends nothing: no transport.
        return (
            bool(client.is_active()) and getattr(client, "transport", None) is not None
        )
    except Exception:  # sentry-sdk changed its internals: no Sentry, no fault
        return False


# sentry-sdk 2.x keeps the global scope in a module variable (private; if it
# moves, ``Scope.get_global_scope()`` above is used instead).
_scope_module: t.Any = (
    sentry_sdk.scope if hasattr(sentry_sdk.scope, "_global_scope") else None
)


def request_tags(request_id: str | None, pid: int, thread: str) -> dict[str, object]:
    """The tags every flask_diag event carries: its request and worker."""
    tags: dict[str, object] = {"worker.pid": pid, "worker.thread": thread}
    if request_id is not None:
        tags["request_id"] = request_id
    return tags


def enter_request_scope(info: RequestInfo) -> AbstractContextManager[t.Any] | None:
    """Put the request's id, worker pid and thread on its Sentry scope.

    Inside sentry-sdk's WSGI middleware (the Flask integration wraps
    ``Flask.__call__`` in it) the request already has an isolation scope: the
    tags go there, so they outlive this call and reach the events the outer
    middleware captures; returns ``None``. Without it, tags on the
    process-wide scope would leak into other requests, so a scope is forked
    for the request, as the middleware would, and the entered context manager
    is returned: the caller must exit it when the request ends, in the same
    thread.
    """
    tags = request_tags(info.request_id, info.pid, info.thread)
    if info.trace_id is not None:
        tags["trace_id"] = info.trace_id
    if _sentry_request_scope is not None and _sentry_request_scope.get(False):
        Scope.get_isolation_scope().set_tags(tags)
        return None
    manager = sentry_sdk.isolation_scope()
    scope = manager.__enter__()
    scope.set_tags(tags)
    return manager


def capture_warning(
    message: str,
    *,
    tags: Mapping[str, object],
    context_name: str,
    context: Mapping[str, object],
) -> str | None:
    """Send ``message`` to Sentry as a warning, with ``tags`` and one named
    ``context``, in a scope of its own (nothing leaks into the request's
    scope or the next event); the event id, or ``None`` when Sentry is not
    initialised or dropped the event. May raise: callers guard it.

    .. code-block:: python

        sentry.capture_warning(
            "Request stuck for 31.0s: GET /report",
            tags=request_tags(info.request_id, info.pid, info.thread),
            context_name="stuck request",
            context={"stack": stack},
        )
    """
    if not is_active():
        return None
    with sentry_sdk.isolation_scope() as scope:
        scope.set_tags(dict(tags))
        scope.set_context(context_name, dict(context))
        return sentry_sdk.capture_message(message, level="warning")
