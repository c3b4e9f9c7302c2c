"""The bridge to sentry-sdk, shared by the middlewares.

flask_diag never initialises Sentry: it only adds to what the application set
up with ``sentry_sdk.init()``. When Sentry is not initialised every function
here returns at once.
"""

from __future__ import annotations

from sentry_sdk.scope import Scope

from .context import RequestInfo

try:  # private in sentry-sdk: tells whether its WSGI middleware opened a scope.
    from sentry_sdk.integrations.wsgi import (
        _wsgi_middleware_applied as _sentry_request_scope,
    )
except ImportError:  # pragma: no cover - layout changed in a future sentry-sdk
    _sentry_request_scope = None

__all__ = ["is_active", "tag_request"]


def is_active() -> bool:
    """``True`` when the application initialised sentry-sdk with a DSN.

    ``sentry_sdk.init()`` binds its client to the global scope; reading it
    there costs a fifth of ``sentry_sdk.get_client()``, which builds a new
    ``NonRecordingClient`` on every call while Sentry is off.
    """
    return Scope.get_global_scope().client.is_active()


def tag_request(info: RequestInfo) -> None:
    """Put the request's id, worker pid and thread on its Sentry scope.

    Must run inside the request's own ``contextvars`` context (the tagging
    middleware runs the request in a copied context).

    Inside sentry-sdk's WSGI middleware (the Flask integration wraps
    ``Flask.__call__`` in it) the request already has an isolation scope and
    the tags go there, so they outlive this middleware and reach events the
    outer middleware captures. Without it we fork a scope for the request, as
    the middleware would; setting tags on the process-wide scope would leak
    them into other requests.
    """
    if _sentry_request_scope is None or not _sentry_request_scope.get(False):
        Scope.set_isolation_scope(Scope.get_isolation_scope().fork())
        Scope.set_current_scope(Scope.get_current_scope().fork())
    tags: dict[str, object] = {
        "request_id": info.request_id,
        "worker.pid": info.pid,
        "worker.thread": info.thread,
    }
    if info.trace_id is not None:
        tags["trace_id"] = info.trace_id
    Scope.get_isolation_scope().set_tags(tags)
