"""SQLAlchemy listeners of the session-teardown checks.

Imported by :mod:`flask_diag.teardown` only when an engine or a session is
watched: SQLAlchemy is an optional extra.

Connections: ``checkout`` / ``checkin`` / ``detach`` pool events on each
watched engine. A checkout made by a thread that is serving a checked
request is recorded with its stack (code objects and line numbers only,
formatted when reported); the checkin removes it, from whatever thread.

Sessions: one set of class-level listeners on ``Session`` for the process
(``after_begin``, ``do_orm_execute``, ``after_attach``), installed at the
first watch, that hand each event to the watches concerned: the session's
class comes from a watched ``sessionmaker`` / ``scoped_session``, or its
transaction began on a watched engine. Per-session facts (which requests and
threads used it) live in ``session.info``, SQLAlchemy's place for them.
"""

from __future__ import annotations

import os
import sys
import threading
import typing as t
import weakref
from threading import get_ident

from sqlalchemy import event
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker
from sqlalchemy.util import ThreadLocalRegistry

from .teardown import _Request
from .teardown import request_fields
from .teardown import TeardownFinding
from .teardown import Watch

if t.TYPE_CHECKING:
    from types import CodeType

_INFO_KEY = "flask_diag.teardown"
_STACK_LIMIT = 48
_THREADS_LIMIT = 64

Stack = tuple[tuple["CodeType", int], ...]


# -- stacks ------------------------------------------------------------


def capture_stack(skip: int = 2) -> Stack:
    """The calling stack, innermost first: ``(code, line)`` pairs, cheap to
    take (no source lines read, no locals kept)."""
    frames: list[tuple[CodeType, int]] = []
    frame = sys._getframe(skip)
    while frame is not None and len(frames) < _STACK_LIMIT:
        frames.append((frame.f_code, frame.f_lineno))
        frame = frame.f_back  # type: ignore[assignment]
    return tuple(frames)


def _library_roots() -> tuple[str, ...]:
    import sysconfig

    roots = {os.path.dirname(os.path.abspath(__file__)) + os.sep}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(os.path.abspath(path) + os.sep)
    return tuple(roots)


_LIBRARY_ROOTS = _library_roots()


def _is_app_code(filename: str) -> bool:
    if filename.startswith("<"):
        return False
    path = os.path.abspath(filename)
    return not path.startswith(_LIBRARY_ROOTS) and "site-packages" not in path


def _describe(code: CodeType, line: int) -> str:
    try:
        filename = os.path.relpath(code.co_filename)
    except ValueError:
        filename = code.co_filename
    if filename.startswith(".."):
        filename = code.co_filename
    return f"{filename}:{line} in {code.co_name}"


def where_of(stack: Stack) -> str | None:
    """The innermost frame of the app's own code, else the innermost one."""
    for code, line in stack:
        if _is_app_code(code.co_filename):
            return _describe(code, line)
    return _describe(*stack[0]) if stack else None


def format_stack(stack: Stack) -> tuple[str, ...]:
    """``file:line in function`` lines, outermost first, with the source."""
    import linecache

    lines = []
    for code, line in reversed(stack):
        text = linecache.getline(code.co_filename, line).strip()
        entry = _describe(code, line)
        lines.append(f"{entry}: {text}" if text else entry)
    return tuple(lines)


# -- per-session facts -----------------------------------------------------------------


class _SessionInfo:
    """What flask_diag knows about one session (kept in ``session.info``)."""

    __slots__ = ("watches", "requests", "threads", "scoped", "name")

    def __init__(self) -> None:
        self.watches: list[Watch] = []
        self.requests = 0
        self.threads: set[int] = set()
        self.scoped = False
        self.name: str | None = None


class _Use:
    """A session's first use in a request."""

    __slots__ = ("stack",)

    def __init__(self, stack: Stack) -> None:
        self.stack = stack


class _Checkout:
    __slots__ = ("url", "stack")

    def __init__(self, url: str, stack: Stack) -> None:
        self.url = url
        self.stack = stack


_watches: list[weakref.ref[Watch]] = []
_hooks_lock = threading.Lock()
_hooks_installed = False


def _register(watch: Watch) -> None:
    global _hooks_installed
    with _hooks_lock:
        _watches[:] = [r for r in _watches if r() is not None]
        if not any(r() is watch for r in _watches):
            _watches.append(weakref.ref(watch))
        if not _hooks_installed:
            event.listen(Session, "after_begin", _on_begin)
            event.listen(Session, "do_orm_execute", _on_execute)
            event.listen(Session, "after_attach", _on_attach)
            _hooks_installed = True


def _info_of(session: Session, create: bool) -> _SessionInfo | None:
    info = session.info.get(_INFO_KEY)
    if info is None and create:
        info = session.info[_INFO_KEY] = _SessionInfo()
    return info


def _adopt(session: Session, engine: object | None) -> _SessionInfo | None:
    """The session's info, with the watches it concerns; ``None`` when no
    watch is concerned."""
    info = _info_of(session, False)
    cls = type(session)
    if engine is None:
        # No connection yet (pending changes only): the session's own bind.
        engine = getattr(session, "bind", None)
    for ref in _watches:
        watch = ref()
        if watch is None or (info is not None and watch in info.watches):
            continue
        if cls in watch.session_classes or (
            engine is not None and any(e is engine for e in watch.engines)
        ):
            if info is None:
                info = _info_of(session, True)
                assert info is not None
            info.watches.append(watch)
    return info


def _touch(session: Session, info: _SessionInfo) -> None:
    """Attribute ``session`` to the request this thread serves, once."""
    ident = get_ident()
    for watch in info.watches:
        request = watch.current.get(ident)
        if request is None or session in request.sessions:
            continue
        info.requests += 1
        if len(info.threads) < _THREADS_LIMIT:
            info.threads.add(ident)
        if not info.scoped and any(_holds(s, session) for s in watch.scoped):
            info.scoped = True
        request.sessions[session] = _Use(capture_stack(3))


def _on_begin(session: Session, transaction: object, connection: t.Any) -> None:
    info = _adopt(session, connection.engine)
    if info is not None:
        _touch(session, info)


def _on_execute(state: t.Any) -> None:
    session = state.session
    info = _info_of(session, False)
    if info is None:
        info = _adopt(session, None)  # a watched factory's session
        if info is None:
            return  # unknown yet: its after_begin decides
    _touch(session, info)


def _on_attach(session: Session, instance: object) -> None:
    info = _info_of(session, False) or _adopt(session, None)
    if info is not None:
        _touch(session, info)


def _holds(scoped: t.Any, session: Session) -> bool:
    """Whether ``scoped``'s registry holds ``session`` (for this thread when
    it is thread-local)."""
    registry = scoped.registry
    if isinstance(registry, ThreadLocalRegistry):
        return getattr(registry.registry, "value", None) is session
    store = getattr(registry, "registry", None)
    if isinstance(store, dict):
        return any(value is session for value in list(store.values()))
    return False


# -- watching -------------------------------------------------------------------------


def watch_engine(watch: Watch, engine: t.Any) -> None:
    """Pool listeners on ``engine`` for ``watch``."""
    with watch.lock:
        if any(e is engine for e in watch.engines):
            return
        watch.engines.append(engine)
    ref = weakref.ref(watch)
    url = engine.url.render_as_string(hide_password=True)
    # Connection record -> the request that checked it out.
    owners: dict[object, _Request] = {}

    def on_checkout(dbapi_connection: object, record: object, proxy: object) -> None:
        watch = ref()
        if watch is None:
            return
        request = watch.current.get(get_ident())
        if request is not None:
            request.checkouts[record] = _Checkout(url, capture_stack())
            owners[record] = request

    def on_checkin(dbapi_connection: object, record: object) -> None:
        request = owners.pop(record, None)
        if request is not None:
            request.checkouts.pop(record, None)

    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "checkin", on_checkin)
    event.listen(engine, "detach", on_checkin)
    _register(watch)


def watch_session(watch: Watch, factory: t.Any) -> None:
    """Watch the sessions of a ``scoped_session``, a ``sessionmaker``, a
    ``Session`` subclass, or one ``Session`` object."""
    inner = factory
    if isinstance(factory, scoped_session):
        with watch.lock:
            if not any(s is factory for s in watch.scoped):
                watch.scoped.append(factory)
        inner = factory.session_factory
    if isinstance(inner, sessionmaker):
        watch.session_classes.add(inner.class_)
    elif isinstance(inner, type) and issubclass(inner, Session):
        watch.session_classes.add(inner)
    elif isinstance(inner, Session):
        info = _info_of(inner, True)
        assert info is not None
        if watch not in info.watches:
            info.watches.append(watch)
    else:
        raise TypeError(
            "watch_session() takes a scoped_session, a sessionmaker, a Session"
            f" subclass or a Session, not {type(factory).__name__}"
        )
    _register(watch)


def watch_flask_sqlalchemy(watch: Watch, app: t.Any, db: t.Any) -> None:
    """Watch Flask-SQLAlchemy's ``db.session`` and ``app``'s engines."""
    watch_session(watch, db.session)
    engines = getattr(db, "_app_engines", {}).get(app)
    if engines is None:
        with app.app_context():
            engines = db.engines
    for engine in engines.values():
        watch_engine(watch, engine)


# -- the check at the end of a request ----------------------------------------

_CONNECTION_FIX = (
    "Close what the request opens: 'with engine.connect() as conn:' or 'with"
    " Session(engine) as session:'; for a session that lives across calls use"
    " scoped_session and call remove() in teardown_appcontext."
)
_SESSION_FIX = (
    "End every unit of work with session.commit() or session.rollback(), and"
    " close the session when the request ends (scoped_session.remove() in"
    " teardown_appcontext, or 'with Session(engine) as session:')."
)
_SCOPED_FIX = (
    "Call remove() when each request ends: '@app.teardown_appcontext def"
    " shutdown_session(exception=None): db_session.remove()'."
)
_SHARED_FIX = (
    "Do not keep a Session in a module global: use db_session ="
    " scoped_session(sessionmaker(bind=engine)), call db_session.remove() in"
    " teardown_appcontext, and create the engine with pool_pre_ping=True (or"
    " pool_recycle below the database's idle timeout)."
)


def _global_name(obj: object) -> str | None:
    """``module.name`` of a module global holding ``obj``, if any."""
    for module_name, module in list(sys.modules.items()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        try:
            for name, value in list(namespace.items()):
                if value is obj:
                    return f"{module_name}.{name}"
        except Exception:
            continue
    return None


def _session_name(session: Session, info: _SessionInfo | None) -> str:
    if info is not None and info.name is not None:
        return info.name
    found = _global_name(session)
    if found is None:
        return f"Session at 0x{id(session):x}"
    name = f"module-global session {found!r}"
    if info is not None:
        info.name = name  # a global keeps its name: looked up once
    return name


def _scoped_name(scoped: t.Any) -> str:
    found = _global_name(scoped)
    return f"scoped_session {found!r}" if found else "a scoped_session"


def _is_shared(info: _SessionInfo) -> bool:
    return not info.scoped and (info.requests > 1 or len(info.threads) > 1)


def check(watch: Watch, request: _Request) -> list[TeardownFinding]:
    """The findings of ``request`` at its end."""
    fields = request_fields(request.environ)
    at = f"{fields.get('method')} {fields.get('path')}"
    findings: list[TeardownFinding] = []
    for record, checkout in list(request.checkouts.items()):
        where = where_of(checkout.stack)
        findings.append(
            TeardownFinding(
                kind="connection_checked_out",
                what=f"connection of {checkout.url}",
                message=(
                    f"A connection of {checkout.url} checked out at {where} was not"
                    f" returned to the pool at the end of {at}: it stays checked"
                    " out, with any transaction on it, until something closes it."
                ),
                fix=_CONNECTION_FIX,
                where=where,
                stack=format_stack(checkout.stack),
                details={"engine": checkout.url, "connection": f"0x{id(record):x}"},
                **fields,
            )
        )
    sessions, request.sessions = request.sessions, {}
    same_thread = request.ident == get_ident()
    for session, use in sessions.items():
        session = t.cast(Session, session)
        info = _info_of(session, False)
        pending = (len(session.new), len(session.dirty), len(session.deleted))
        open_transaction = session.in_transaction()
        shared = info is not None and _is_shared(info)
        held = [s for s in watch.scoped if _holds(s, session)] if same_thread else []
        if not (open_transaction or any(pending) or held or shared):
            continue  # the common case: nothing to format
        where = where_of(use.stack)
        stack = format_stack(use.stack)
        if open_transaction or any(pending):
            name = _session_name(session, info)
            state = []
            if open_transaction:
                state.append("an open transaction")
            if any(pending):
                state.append(
                    f"pending changes ({pending[0]} new, {pending[1]} changed,"
                    f" {pending[2]} deleted)"
                )
            findings.append(
                TeardownFinding(
                    kind="session_open",
                    what=name,
                    message=(
                        f"{name.capitalize()}, used at {where}, still has"
                        f" {' and '.join(state)} at the end of {at}: the request"
                        " neither committed nor rolled back, and the session"
                        " keeps its connection checked out."
                    ),
                    fix=_SESSION_FIX,
                    where=where,
                    stack=stack,
                    details={
                        "in_transaction": open_transaction,
                        "new": pending[0],
                        "changed": pending[1],
                        "deleted": pending[2],
                    },
                    **fields,
                )
            )
        if held:
            for scoped in held:
                name = _scoped_name(scoped)
                findings.append(
                    TeardownFinding(
                        kind="scoped_session_not_removed",
                        what=name,
                        message=(
                            f"{name.capitalize()} still holds the session used"
                            f" at {where} after the end of {at}: remove() was"
                            " never called, so the next request on this thread"
                            " inherits the session, its identity map and any"
                            " open transaction."
                        ),
                        fix=_SCOPED_FIX,
                        where=where,
                        stack=stack,
                        **fields,
                    )
                )
        if shared and info is not None:
            name = _session_name(session, info)
            findings.append(
                TeardownFinding(
                    kind="shared_session",
                    what=name,
                    message=(
                        f"{name.capitalize()} is a plain Session used by"
                        f" {info.requests} requests on {len(info.threads)}"
                        f" thread(s) (this time at {where}): it shares one"
                        " connection and one transaction between requests"
                        " and threads, and once the database closes that idle"
                        " connection every request fails ('server has gone"
                        " away', 'terminating connection due to idle-session"
                        " timeout')."
                    ),
                    fix=_SHARED_FIX,
                    where=where,
                    stack=stack,
                    details={
                        "requests": info.requests,
                        "threads": len(info.threads),
                    },
                    **fields,
                )
            )
    return findings
