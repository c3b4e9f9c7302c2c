"""SQLAlchemy listeners of the session-teardown checks.

Imported by :mod:`flask_diag.teardown` only when an engine or a session is
watched: SQLAlchemy is an optional extra. Everything here runs inside the
app's requests, so the common case (nothing leaks) is kept to a few
dictionary operations; the work of naming a leak is done only when there
is one.

Connections: one ``checkout`` pool listener on each watched engine (no
``checkin`` listener). A checkout made by a thread that is serving a
checked request is recorded with its stack and the pool record's token
(``fairy_ref``, which SQLAlchemy replaces at every checkout and clears at
the checkin); at the end of the request a record that still holds the same
token is still checked out by it. Stacks are code objects and instruction
offsets, from the app's innermost frame up, taken with a learned jump over
SQLAlchemy's own frames (see ``capture_stack``); lines and source are
worked out when a leak is reported.

Sessions: two class-level listeners on ``Session`` for the process
(``after_begin``, ``after_attach``; they fire once per transaction and per
``add()``, and return at once for sessions of unwatched factories and
engines), installed at the first watch, that hand each event to the watches
concerned: the session's class comes from a watched ``sessionmaker`` /
``scoped_session``, or its transaction began on a watched engine. A session
whose transaction or pending changes outlive a request (or begin outside
one) also gets its own ``do_orm_execute`` listener, so that the next
request's use of it is seen without a ``begin`` (the module-global session);
no other session pays for ``do_orm_execute``. Per-session facts (which
requests and threads used it) are kept on the session, and only for a
session that something else still holds at the end of the request.
"""

from __future__ import annotations

import os
import sys
import threading
import typing as t
import weakref
from sys import getrefcount
from threading import get_ident

from sqlalchemy import event
from sqlalchemy.orm import scoped_session
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool.base import _ConnectionRecord
from sqlalchemy.util import ThreadLocalRegistry

from .teardown import _Request
from .teardown import request_fields
from .teardown import TeardownCheck
from .teardown import TeardownFinding
from .teardown import Watch

if t.TYPE_CHECKING:
    from types import CodeType
    from types import FrameType

_INFO_KEY = "flask_diag.teardown"
_STACK_LIMIT = 48
_THREADS_LIMIT = 64

#: A stack, innermost frame first, flattened: ``[code, lasti, code, lasti,
#: ...]``. Taking it is one short loop (no line numbers, no tuples, no
#: source); the lines are worked out only when a leak is reported.
Stack = list[t.Any]


def _stop_codes() -> tuple[CodeType, CodeType, CodeType]:
    """The frames that end a stack: the middleware's (above it is the
    server's code, the same for every request) and, in a Flask app, the
    dispatch to the view (above it is Flask's request handling). Every frame
    walked costs a frame object: the stack holds the app's frames and the
    library frames under them, not the machinery above."""
    call = TeardownCheck.__call__.__code__
    held = TeardownCheck._held.__code__
    flask_app = sys.modules.get("flask.app")
    flask_class = getattr(flask_app, "Flask", None)
    dispatch = getattr(flask_class, "dispatch_request", None)
    code = getattr(dispatch, "__code__", None)
    return call, held, code if code is not None else call


_STOP_CODES = _stop_codes()


# -- stacks ------------------------------------------------------------


def _walk(frame: FrameType | None) -> Stack:
    """The stack from ``frame`` outwards, up to a stop frame."""
    stack: Stack = []
    append = stack.append
    stop_call, stop_held, stop_flask = _STOP_CODES
    left = _STACK_LIMIT
    while frame is not None and left:
        code = frame.f_code
        if code is stop_call or code is stop_held or code is stop_flask:
            break
        append(code)
        append(frame.f_lasti)
        frame = frame.f_back
        left -= 1
    return stack


# Taking a stack costs one frame object per frame walked (Python makes them
# on demand), most of them SQLAlchemy's own frames under the app's. So the
# walk is learned per call site: the first time, a full walk finds the
# innermost frame of the app's code, at some depth from the listener; that
# frame (code object and instruction) is remembered as a *site*, with the
# number of frames from it to the stop frame. Afterwards ``sys._getframe``
# jumps straight to that depth (no frame objects for the frames in between)
# and, when the frame there is a known site, the stack is taken from it: the
# app's frames, innermost first, as many as the first time. Anything else
# (another path, another depth) takes the full walk, and is learned. The
# site found last for each kind of call is tried first, without building a
# key (a request usually checks out from the same line as the previous
# one). This is knowledge about code (SQLAlchemy's and the app's call
# sites), the same for every app of the process; it is bounded.
_SITES_LIMIT = 4096
_DEPTHS_LIMIT = 8
#: ``(kind, depth, id(code), lasti)`` -> ``(code, frames)``; the code object
#: is kept so that its id stays its own.
_sites: dict[tuple[int, int, int, int], tuple[CodeType, int]] = {}
#: ``kind`` -> depths where sites were found, the latest first.
_depths: dict[int, list[int]] = {}
#: ``kind`` -> the site found last: ``(depth, code, lasti, frames)``.
_hot: list[tuple[int, CodeType, int, int] | None] = [None, None]
_getframe = sys._getframe
_app_files: dict[str, bool] = {}

#: Kinds of call: they differ in the frames between the listener and the
#: app's code.
CHECKOUT = 0
SESSION_USE = 1


def capture_stack(kind: int, skip: int) -> Stack:
    """The calling stack from the app's innermost frame outwards, up to the
    middleware's (or Flask's dispatch) frame: the code object and the
    instruction offset of each frame, flattened (no line numbers, no
    source, no locals kept). ``skip``: frames to leave out (this one, the
    listener...)."""
    hot = _hot[kind]
    if hot is not None:
        # The site of the previous capture of this kind, checked first: no
        # key to build, no dictionary to look in.
        depth, hot_code, hot_lasti, frames = hot
        try:
            frame = _getframe(skip + depth)
        except ValueError:  # a shallower stack
            pass
        else:
            if frame.f_code is hot_code and frame.f_lasti == hot_lasti:
                return _stack_from(frame, frames)
    for depth in _depths.get(kind, ()):
        try:
            frame = _getframe(skip + depth)
        except ValueError:  # a shallower stack
            continue
        code = frame.f_code
        lasti = frame.f_lasti
        site = _sites.get((kind, depth, id(code), lasti))
        if site is not None and site[0] is code:
            _hot[kind] = (depth, code, lasti, site[1])
            return _stack_from(frame, site[1])
    return _learn(kind, _walk(_getframe(skip)))


def _stack_from(frame: FrameType, frames: int) -> Stack:
    """``frames`` frames of the stack from ``frame`` (a learned site)
    outwards, flattened as by :func:`_walk`."""
    stack: Stack = [frame.f_code, frame.f_lasti]
    caller: FrameType | None = frame
    while frames > 1 and caller is not None:
        # f_back makes the caller's frame object: taken only when the frame
        # is wanted (not the stop frame above the last one).
        caller = caller.f_back
        if caller is not None:
            stack.append(caller.f_code)
            stack.append(caller.f_lasti)
        frames -= 1
    return stack


def _learn(kind: int, stack: Stack) -> Stack:
    """Remember where the app's code starts in ``stack`` (a full walk);
    the stack from there."""
    for i in range(0, len(stack), 2):
        code = stack[i]
        filename = code.co_filename
        app = _app_files.get(filename)
        if app is None:
            if len(_app_files) >= _SITES_LIMIT:
                _app_files.clear()
            app = _app_files[filename] = _is_app_code(filename)
        if app:
            depth = i // 2
            if len(_sites) >= _SITES_LIMIT:
                _sites.clear()
                _hot[:] = [None] * len(_hot)
            frames = (len(stack) - i) // 2
            _sites[(kind, depth, id(code), stack[i + 1])] = (code, frames)
            _hot[kind] = (depth, code, stack[i + 1], frames)
            depths = _depths.setdefault(kind, [])
            if depth in depths:
                depths.remove(depth)
            depths.insert(0, depth)
            del depths[_DEPTHS_LIMIT:]
            return stack[i:]
    return stack  # no app code: all of it


def _frames(stack: Stack) -> t.Iterator[tuple[CodeType, int]]:
    """``(code, line)`` of each frame of ``stack``, innermost first."""
    for i in range(0, len(stack) - 1, 2):
        code = stack[i]
        yield code, _line_of(code, stack[i + 1])


def _line_of(code: CodeType, lasti: int) -> int:
    """The line of the instruction at offset ``lasti`` (``frame.f_lineno``,
    computed when needed)."""
    if lasti >= 0:
        for start, end, line in code.co_lines():
            if start <= lasti < end:
                return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


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
    first = None
    for code, line in _frames(stack):
        if first is None:
            first = (code, line)
        if _is_app_code(code.co_filename):
            return _describe(code, line)
    return _describe(*first) if first is not None else None


def format_stack(stack: Stack) -> tuple[str, ...]:
    """``file:line in function`` lines, outermost first, with the source."""
    import linecache

    lines = []
    for code, line in reversed(list(_frames(stack))):
        text = linecache.getline(code.co_filename, line).strip()
        entry = _describe(code, line)
        lines.append(f"{entry}: {text}" if text else entry)
    return tuple(lines)


# -- per-session facts -----------------------------------------------------------------


class _SessionInfo:
    """What flask_diag knows about one session (kept in ``session.info``)."""

    __slots__ = (
        "watches",
        "requests",
        "threads",
        "scoped",
        "name",
        "followed",
        "engine",
    )

    #: The watches the session concerns.
    watches: list[Watch]
    #: How many requests used it, and from which threads.
    requests: int
    threads: set[int]
    #: Whether a scoped_session held it at the end of a request.
    scoped: bool
    #: Its module-global name, once looked up.
    name: str | None
    #: Whether the session's own executions are listened to.
    followed: bool
    #: The engine the watches were last matched against.
    engine: object | None


#: What a request knows of a connection it checked out, by pool record:
#: ``(engine url, token, stack)``. The token is the record's ``fairy_ref``
#: at the checkout: the connection is still out while the record holds that
#: same token (SQLAlchemy sets it to ``None`` at the checkin and makes a new
#: one at the next checkout), so no ``checkin`` listener is needed.
Checkout = tuple[str, object, Stack]
_TOKENS = "fairy_ref" in getattr(_ConnectionRecord, "__slots__", ())
_NO_TOKEN = object()
_new = object.__new__


_watches: list[weakref.ref[Watch]] = []
#: The ids of every engine and session class ever watched in the process:
#: the class-level ``after_begin`` listener returns at once for other
#: sessions. Only a filter (_adopt decides): a reused id costs a look.
_engine_ids: set[int] = set()
_class_ids: set[int] = set()
_hooks_lock = threading.Lock()
_hooks_installed = False


def _register(watch: Watch) -> None:
    global _hooks_installed
    with _hooks_lock:
        _watches[:] = [r for r in _watches if r() is not None]
        if not any(r() is watch for r in _watches):
            _watches.append(weakref.ref(watch))
        if not _hooks_installed:
            # Two events that fire at most once per transaction (and per
            # add()): cheap for every Session of the process. Executions
            # are listened to only on the sessions that need it (_follow).
            event.listen(Session, "after_begin", _on_begin)
            event.listen(Session, "after_attach", _on_attach)
            _hooks_installed = True


def _info_of(session: Session, create: bool) -> _SessionInfo | None:
    # An attribute of ours on the session (its __dict__): reading
    # ``session.info`` would build a dict for every session.
    info: _SessionInfo | None = session.__dict__.get(_INFO_KEY)
    if info is None and create:
        info = session.__dict__[_INFO_KEY] = _new_info()
    return info


def _new_info() -> _SessionInfo:
    info: _SessionInfo = _new(_SessionInfo)
    info.watches = []
    info.requests = 0
    info.threads = set()
    info.scoped = False
    info.name = None
    info.followed = False
    info.engine = None
    return info


def _concerned(
    session: Session, engine: object | None, known: t.Sequence[Watch] = ()
) -> list[Watch]:
    """The watches (other than ``known``) that ``session`` concerns: its
    class comes from a watched factory, or it runs on a watched engine."""
    cls = type(session)
    if engine is None:
        # No connection yet (pending changes only): the session's own bind.
        engine = getattr(session, "bind", None)
    found = []
    for ref in _watches:
        watch = ref()
        if watch is None or watch in known:
            continue
        if cls in watch.session_classes or (
            engine is not None and any(e is engine for e in watch.engines)
        ):
            found.append(watch)
    return found


def _adopt(session: Session, engine: object | None) -> _SessionInfo | None:
    """The session's info, with the watches it concerns (created when
    needed); ``None`` when no watch is concerned."""
    info = _info_of(session, False)
    more = _concerned(session, engine, info.watches if info is not None else ())
    if more:
        if info is None:
            info = _info_of(session, True)
            assert info is not None
        info.watches.extend(more)
    if info is not None and engine is not None:
        info.engine = engine
    return info


def _touch(session: Session, watches: t.Sequence[Watch], fairy: object = None) -> bool:
    """Attribute ``session`` to the request this thread serves, once.
    Whether this thread serves a request. (What the session did is looked
    at, and counted, at the end of the request.)

    ``fairy``: the pool's proxy of the connection the session has just
    checked out to begin (``after_begin``): the stack of that checkout is
    where the session was used, no need to take it again."""
    ident = get_ident()
    served = False
    for watch in watches:
        request = watch.current.get(ident)
        if request is None:
            continue
        served = True
        if session in request.sessions:
            continue
        last = request.last
        if fairy is not None and last is not None and last[0] is fairy:
            request.sessions[session] = last[1]
        else:
            request.sessions[session] = capture_stack(SESSION_USE, 2)
    return served


def _follow(session: Session, info: _SessionInfo) -> None:
    """Listen to ``session``'s own executions: its transaction (or its
    pending changes) outlives a request, so the next request may use it
    without beginning anything (the module-global session of pitfall 6).
    Only such sessions pay for ``do_orm_execute``."""
    if info.followed:
        return
    info.followed = True
    event.listen(session, "do_orm_execute", _on_execute)


def _on_begin(session: Session, transaction: t.Any, connection: t.Any) -> None:
    info: _SessionInfo | None = session.__dict__.get(_INFO_KEY)
    engine = connection.engine
    if info is None:
        if id(type(session)) not in _class_ids and id(engine) not in _engine_ids:
            return  # a session nothing watches: the common case elsewhere
        # No info yet: none is made unless the session outlives its
        # request (see check()).
        watches = _concerned(session, engine)
        if not watches:
            return
    else:
        if info.engine is not engine:
            _adopt(session, engine)
        watches = info.watches
    fairy = None
    try:
        # The session connected to begin (it will close the connection):
        # the checkout it just made says where it was used. (The pool's
        # proxy, as the checkout listener saw it: no property to go through.)
        if transaction._connections[connection][3]:
            fairy = connection._dbapi_connection
    except Exception:
        fairy = None
    if not _touch(session, watches, fairy):
        # Begun outside any request.
        info = _adopt(session, engine)
        if info is not None:
            _follow(session, info)


def _on_execute(state: t.Any) -> None:
    session = state.session
    info = _info_of(session, False)
    if info is not None:
        _touch(session, info.watches)


def _on_attach(session: Session, instance: object) -> None:
    info = _info_of(session, False) or _adopt(session, None)
    if info is not None and not _touch(session, info.watches):
        _follow(session, info)  # pending changes from outside any request


def _holds(scoped: t.Any, session: Session) -> bool:
    """Whether ``scoped``'s registry holds ``session`` (for this thread when
    it is thread-local)."""
    registry = scoped.registry
    if isinstance(registry, ThreadLocalRegistry):
        # The thread's dict of the threading.local: no AttributeError built
        # for a registry that is empty (the usual case, after remove()).
        return registry.registry.__dict__.get("value") is session
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
    _engine_ids.add(id(engine))
    _refresh_stop_codes()
    url = engine.url.render_as_string(hide_password=True)
    # The listener holds the watch's dict of requests in flight, not the
    # watch (nor the app): the engine may outlive both.
    current = watch.current

    if _TOKENS:

        def on_checkout(dbapi_connection: object, record: t.Any, proxy: object) -> None:
            request = current.get(get_ident())
            if request is not None:
                stack = capture_stack(CHECKOUT, 2)
                request.checkouts[record] = (url, record.fairy_ref, stack)
                request.last = (proxy, stack)

        event.listen(engine, "checkout", on_checkout)
    else:
        # A SQLAlchemy without ``fairy_ref``: the checkin says it.
        owners: dict[object, _Request] = {}

        def on_checkout_owner(
            dbapi_connection: object, record: object, proxy: object
        ) -> None:
            request = current.get(get_ident())
            if request is not None:
                stack = capture_stack(CHECKOUT, 2)
                request.checkouts[record] = (url, _NO_TOKEN, stack)
                request.last = (proxy, stack)
                owners[record] = request

        def on_checkin(dbapi_connection: object, record: object) -> None:
            request = owners.pop(record, None)
            if request is not None:
                request.checkouts.pop(record, None)

        event.listen(engine, "checkout", on_checkout_owner)
        event.listen(engine, "checkin", on_checkin)
        event.listen(engine, "detach", on_checkin)
    _register(watch)


def _refresh_stop_codes() -> None:
    global _STOP_CODES
    _STOP_CODES = _stop_codes()  # Flask may be imported after this module


def watch_session(watch: Watch, factory: t.Any) -> None:
    """Watch the sessions of a ``scoped_session``, a ``sessionmaker``, a
    ``Session`` subclass, or one ``Session`` object."""
    _refresh_stop_codes()
    inner = factory
    if isinstance(factory, scoped_session):
        with watch.lock:
            if not any(s is factory for s in watch.scoped):
                watch.scoped.append(factory)
        inner = factory.session_factory
    if isinstance(inner, sessionmaker):
        watch.session_classes.add(inner.class_)
        _class_ids.add(id(inner.class_))
    elif isinstance(inner, type) and issubclass(inner, Session):
        watch.session_classes.add(inner)
        _class_ids.add(id(inner))
    elif isinstance(inner, Session):
        info = _info_of(inner, True)
        assert info is not None
        if watch not in info.watches:
            info.watches.append(watch)
        _follow(inner, info)  # one object, used by any request: every use
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


def _session_name(session: Session, info: _SessionInfo) -> str:
    if info.name is not None:
        return info.name
    found = _global_name(session)
    if found is None:
        return f"Session at 0x{id(session):x}"
    info.name = name = f"module-global session {found!r}"  # looked up once
    return name


def _scoped_name(scoped: t.Any) -> str:
    found = _global_name(scoped)
    return f"scoped_session {found!r}" if found else "a scoped_session"


def _is_shared(info: _SessionInfo) -> bool:
    return not info.scoped and (info.requests > 1 or len(info.threads) > 1)


_NOTHING_PENDING = (0, 0, 0)


def _unheld_refs() -> int:
    """``sys.getrefcount(session)`` in check() when only check() holds it:
    measured here with check()'s own loop (``popitem()`` from a dict the
    loop owns), so that the interpreter's count of its own references
    (the local variable, the call's argument) is not guessed."""
    sessions = {object(): None}
    while sessions:
        session, _use = sessions.popitem()
        return getrefcount(session)
    return 2


_UNHELD_REFS = _unheld_refs()


def _pending(session: Session) -> tuple[int, int, int]:
    """``(new, changed, deleted)`` counts of ``session``."""
    return (len(session.new), len(session.dirty), len(session.deleted))


def check(watch: Watch, request: _Request) -> list[TeardownFinding]:
    """The findings of ``request`` at its end."""
    leaked = []
    checkouts: dict[t.Any, Checkout] = request.checkouts
    if checkouts:
        request.checkouts = {}
        for record, checkout in checkouts.items():
            # Still out under the same checkout (see Checkout).
            token = checkout[1]
            if token is _NO_TOKEN or record.fairy_ref is token:
                leaked.append((record, checkout))
    flagged = []
    sessions: dict[t.Any, Stack] = request.sessions
    if sessions:
        request.sessions = {}
        same_thread: bool | None = None
        # popitem(): each session is then held only by this loop (an
        # items() iterator would keep the last pair alive), see _UNHELD_REFS.
        while sessions:
            session, use = sessions.popitem()
            info: _SessionInfo | None = session.__dict__.get(_INFO_KEY)
            unheld = getrefcount(session) <= _UNHELD_REFS
            open_transaction = session.in_transaction()
            try:
                # Any pending change (without building the three sets of
                # session.new, .dirty and .deleted).
                busy = bool(
                    session._new or session._deleted or session.identity_map._modified
                )
            except AttributeError:  # another SQLAlchemy's internals
                busy = True
            if unheld and info is None and not (open_transaction or busy):
                # The common case: clean, and nothing but this loop holds
                # the session (a removed scoped session, a closed 'with
                # Session()'), so no registry holds it and no later request
                # can use it: nothing to report, nothing to remember.
                continue
            pending = _pending(session) if busy else _NOTHING_PENDING
            if same_thread is None:
                same_thread = request.ident == get_ident()
            held = []
            if same_thread and not unheld:
                held = [scoped for scoped in watch.scoped if _holds(scoped, session)]
            if info is None:
                info = _info_of(session, True)
                assert info is not None
                info.watches.append(watch)
            # The request's use, counted now that it is over.
            info.requests += 1
            if len(info.threads) < _THREADS_LIMIT:
                info.threads.add(request.ident)
            if held:
                info.scoped = True
            shared = _is_shared(info)
            if open_transaction or held or shared or any(pending):
                flagged.append(
                    (session, use, info, pending, open_transaction, shared, held)
                )
    if not flagged and not leaked:
        return []  # the common case: nothing to format
    flagged.reverse()  # popitem() took the sessions last first
    fields = request_fields(request.environ)
    at = f"{fields.get('method')} {fields.get('path')}"
    findings: list[TeardownFinding] = []
    for record, (url, _token, checkout_stack) in leaked:
        where = where_of(checkout_stack)
        findings.append(
            TeardownFinding(
                kind="connection_checked_out",
                what=f"connection of {url}",
                message=(
                    f"A connection of {url} checked out at {where} was not"
                    f" returned to the pool at the end of {at}: it stays checked"
                    " out, with any transaction on it, until something closes it."
                ),
                fix=_CONNECTION_FIX,
                where=where,
                stack=format_stack(checkout_stack),
                details={"engine": url, "connection": f"0x{id(record):x}"},
                **fields,
            )
        )
    for session, use, info, pending, open_transaction, shared, held in flagged:
        where = where_of(use)
        stack = format_stack(use)
        if open_transaction or any(pending):
            # The next request may use it without beginning anything.
            _follow(session, info)
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
        if shared:
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
