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
import typing as t
from collections.abc import MutableMapping

import structlog
from structlog.typing import Processor

from .context import current_pid
from .context import thread_name

__all__ = [
    "add_diag_context",
    "recommended_processors",
    "configure",
    "structlog_vars",
]


def structlog_vars(*keys: str) -> tuple[contextvars.ContextVar[t.Any], ...]:
    """The context variables behind ``bind_contextvars(**{key: ...})``.

    ``var.set(value)`` on them is what ``bind_contextvars`` does, minus
    building each variable's name on every call; the returned tokens restore
    the previous values. The request path sets them for every request, so
    this matters. ``merge_contextvars`` finds them by name, and
    ``bind_contextvars``/``get_contextvars`` see the same variables.
    """
    registry = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
    if not isinstance(registry, dict):  # structlog changed its internals
        registry = _fallback_registry
    found = []
    for key in keys:
        name = f"{_PREFIX}{key}"
        if name not in registry:
            registry[name] = contextvars.ContextVar(name, default=Ellipsis)
        found.append(registry[name])
    return tuple(found)


_PREFIX: str = getattr(structlog.contextvars, "STRUCTLOG_KEY_PREFIX", "structlog_")
_fallback_registry: dict[str, contextvars.ContextVar[t.Any]] = {}


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
        # The same (header-safe) name the request's context carries.
        event_dict["thread"] = thread_name()
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
    uWSGI collect worker output), each with a single ``write()``: worker
    processes share that stream, and structlog's ``PrintLogger`` (``print()``
    writes the newline separately) lets their lines interleave.
    """
    structlog.configure(
        processors=recommended_processors(json=json),
        logger_factory=structlog.WriteLoggerFactory(file or sys.stderr),
        cache_logger_on_first_use=False,
    )
