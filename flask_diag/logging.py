"""Structured logging with structlog.

flask_diag logs through ``structlog.get_logger("flask_diag")`` and binds the
request's ``request_id``, ``pid``, ``thread``, ``method`` and ``path`` with
``structlog.contextvars`` while a request runs. It never calls
``structlog.configure()``: your application chooses the chain. Two things
make the request context show up in your lines:

- ``structlog.contextvars.merge_contextvars`` in the chain (first),
- :func:`add_diag_context`, which adds ``pid`` and ``thread`` to lines logged
  outside a request too (start-up, background threads).

The recommended configuration, JSON lines on stderr, as the examples use::

    import structlog
    from flask_diag.logging import recommended_processors

    structlog.configure(processors=recommended_processors(json=True))

or, in one call made by the application, :func:`configure`.
"""

from __future__ import annotations

import contextvars
import sys
import threading
import typing as t
from collections.abc import MutableMapping

import structlog
from structlog.typing import Processor

from .context import current_pid

__all__ = [
    "add_diag_context",
    "recommended_processors",
    "configure",
    "context_binder",
]


def context_binder(*keys: str) -> t.Callable[..., None]:
    """A fast ``bind_contextvars`` for a fixed set of keys, in order.

    ``binder = context_binder("request_id", "pid")`` then ``binder(rid, pid)``
    sets the same context variables ``bind_contextvars(request_id=rid,
    pid=pid)`` would, without building the variable names on every call: the
    request path runs it for every request. Values are not reset: the caller
    runs in a context of its own (see :mod:`flask_diag.tagging`).
    """
    registry = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
    prefix = getattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", None)
    if not isinstance(registry, dict) or not isinstance(prefix, str):
        # structlog changed its internals: fall back to the public API.
        def bind_slow(*values: object) -> None:
            context = dict(zip(keys, values, strict=True))
            structlog.contextvars.bind_contextvars(**context)

        return bind_slow
    variables = []
    for key in keys:
        name = f"{prefix}{key}"
        if name not in registry:
            registry[name] = contextvars.ContextVar(name, default=Ellipsis)
        variables.append(registry[name].set)
    setters = tuple(variables)

    def bind(*values: object) -> None:
        for setter, value in zip(setters, values, strict=True):
            setter(value)

    return bind


def add_diag_context(
    logger: object, method_name: str, event_dict: MutableMapping[str, t.Any]
) -> MutableMapping[str, t.Any]:
    """structlog processor: add ``pid`` and ``thread`` when not already bound.

    Cheaper than ``CallsiteParameterAdder``, which walks stack frames, and the
    pid follows gunicorn's fork.
    """
    if "pid" not in event_dict:
        event_dict["pid"] = current_pid()
    if "thread" not in event_dict:
        event_dict["thread"] = threading.current_thread().name
    return event_dict


def recommended_processors(*, json: bool = True) -> list[Processor]:
    """The processor chain flask_diag recommends, ending with a renderer."""
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_diag_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.dict_tracebacks if json else _identity,
        renderer,
    ]


def _identity(
    logger: object, method_name: str, event_dict: MutableMapping[str, t.Any]
) -> MutableMapping[str, t.Any]:
    return event_dict


def configure(*, json: bool = True, file: t.TextIO | None = None) -> None:
    """Configure structlog globally with :func:`recommended_processors`.

    For applications and scripts only: a library must not call it. Writes one
    line per event to ``file`` (default: ``sys.stderr``, where gunicorn and
    uWSGI collect worker output).
    """
    structlog.configure(
        processors=recommended_processors(json=json),
        logger_factory=structlog.PrintLoggerFactory(file or sys.stderr),
        cache_logger_on_first_use=False,
    )
