"""Server profile
==============

What the app can learn about the server that runs it: which server, how many
requests it can serve at once, and the addresses it answers on. Pitfall 2
(a request that calls back into its own single-threaded server) depends on
exactly that, and so do the debugger gate (one process only) and the deploy
checks (capacity 1 in production).

.. code-block:: python

    from flask_diag.server import detect

    @app.get("/server")
    def server():
        profile = detect(request.environ)
        return {
            "server": profile.describe(),   # "gunicorn sync worker, 1 worker"
            "capacity": profile.capacity,   # 1
            "listeners": [str(l) for l in profile.listeners],  # ["127.0.0.1:8000"]
        }

The :class:`~flask_diag.loopback.LoopbackGuard` middleware detects the profile
at the first request of each process and stores it in the WSGI environ under
``flask_diag.server``; :func:`current` returns the last profile detected in
this process.

How each server is recognised
-----------------------------

The ``wsgi.multithread``/``wsgi.multiprocess`` flags alone are not enough:
gunicorn's gthread worker and waitress say ``multithread`` even with a single
thread, and neither flag says *how many*. So :func:`detect` looks for the
server's own objects on the calling thread's stack: every server below calls
the app from a method of an object that holds its configuration.

gunicorn
    The ``self`` of ``handle_request`` is the worker
    (``gunicorn.workers.base.Worker``; checked to belong to this pid, since
    workers inherit the arbiter's list of their siblings). ``worker.cfg`` is
    the merged configuration (command line, ``GUNICORN_CMD_ARGS``, config
    file), so re-parsing ``sys.argv`` would only be worse: it misses the
    config file. ``cfg.workers``, ``cfg.threads``, ``cfg.timeout``; the worker
    class is the worker's own type (``-k sync --threads 4`` quietly runs
    gthread). Listeners: ``worker.sockets``. Outside a request (at import,
    or from another thread) the worker is found with a ``gc`` scan instead;
    with ``--preload`` the app is imported in the arbiter, whose ``cfg`` is
    the same. Async workers (gevent, eventlet) count ``worker_connections``.
werkzeug development server
    ``WSGIRequestHandler.server``: a ``BaseWSGIServer`` (one request at a
    time), ``ThreadedWSGIServer`` (a thread per request, no limit) or
    ``ForkingWSGIServer`` (``max_children`` processes); its ``socket`` is
    the listener. werkzeug 3 no longer sets ``werkzeug.server.shutdown``; the
    environ only has ``werkzeug.socket``, the accepted connection.
waitress
    ``WSGITask.channel.server``: ``adj.threads`` threads, ``adj.listen``;
    requests waiting for a thread are in ``task_dispatcher.queue``.
uWSGI
    The embedded ``uwsgi`` module: ``numproc`` workers, ``cores`` threads (or
    async cores) per worker, ``opt`` (values are ``bytes``) for ``harakiri``
    and the ``http``/``http-socket``/``socket`` addresses.
anything else
    The WSGI flags: a server that sets neither promises never to call the
    app concurrently (PEP 3333), so its capacity is 1. Listeners are the
    listening sockets of this process (``/proc/self/fd``, ``SO_ACCEPTCONN``)
    on ``SERVER_PORT``.

Addresses
---------

:meth:`ServerProfile.own_address` says whether ``host:port`` reaches this
server: a listener on ``0.0.0.0`` (or ``::``) answers on every address of
the host, which is tested without sending anything by binding a UDP socket
to it; ``::ffff:127.0.0.1`` is ``127.0.0.1``; ``localhost`` is both
``127.0.0.1`` and ``::1``. Host names behind a proxy cannot be matched by
address, so :meth:`ServerProfile.own_url` also compares a URL's host with the
names the server is known by (``SERVER_NAME``, the request's ``Host``).

.. autofunction:: detect
.. autofunction:: current
.. autoclass:: ServerProfile
    :members:
.. autoclass:: Listener
    :members:
.. autoclass:: Backlog
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import os
import select
import socket
import sys
import threading
import typing as t
from urllib.parse import urlsplit

if t.TYPE_CHECKING:
    from types import FrameType

    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "ENVIRON_KEY",
    "Backlog",
    "Listener",
    "ServerProfile",
    "current",
    "detect",
    "forget_headers",
    "format_address",
    "is_local_ip",
    "scan_listeners",
]

#: The environ key holding the :class:`ServerProfile` of the serving process.
ENVIRON_KEY = "flask_diag.server"


def forget_headers(start_response: t.Callable[..., object]) -> None:
    """Make the server forget the headers of a status about to be replaced.

    PEP 3333: ``start_response(status, headers, exc_info)`` before anything
    was sent replaces the status and headers given earlier. gunicorn (27.0 at
    least) replaces the status but keeps the earlier headers and adds the new
    ones: a replacement error response would go out with the app's headers
    too, two ``Content-Type`` and two ``Content-Length`` among them. Called
    before such a call; a no-op for every other server, and for gunicorn once
    its headers are out (it re-raises then).
    """
    response: t.Any = getattr(start_response, "__self__", None)
    if (
        type(response).__module__ == "gunicorn.http.wsgi"
        and getattr(response, "headers_sent", True) is False
        and isinstance(getattr(response, "headers", None), list)
    ):
        response.headers = []
        response.response_length = None
        response.upgrade = False


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets: ``[::1]:8000``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Names that always mean this host, whatever the resolver says.
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclasses.dataclass(frozen=True)
class Listener:
    """One address the server accepts connections on."""

    #: ``"inet"``, ``"inet6"`` or ``"unix"``.
    family: str
    #: The bound address (``"0.0.0.0"``, ``"::"``, ``"127.0.0.1"``...) or, for
    #: ``unix``, the socket's path.
    host: str
    #: The TCP port; ``0`` for ``unix``.
    port: int
    #: For ``::``: whether IPv4 clients are refused (``IPV6_V6ONLY``).
    v6only: bool = False
    #: The listening socket's descriptor in this process, when known.
    fd: int | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def wildcard(self) -> bool:
        """Bound to every address of the host (``0.0.0.0`` or ``::``)."""
        return self.family != "unix" and self.host in _WILDCARDS

    def __str__(self) -> str:
        if self.family == "unix":
            return f"unix:{self.host}"
        return format_address(self.host, self.port)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> Listener:
        """The listener of a bound socket."""
        address = sock.getsockname()
        family = sock.family
        fd = sock.fileno()
        if family == socket.AF_UNIX:
            path = (
                address.decode("utf-8", "replace")
                if isinstance(address, bytes)
                else address
            )
            return cls("unix", path, 0, fd=fd)
        host, port = address[0], int(address[1])
        if family == socket.AF_INET6:
            v6only = False
            try:
                v6only = bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
            except OSError:
                pass
            return cls("inet6", _normalise(host), port, v6only=v6only, fd=fd)
        return cls("inet", host, port, fd=fd)


@dataclasses.dataclass(frozen=True)
class Backlog:
    """Connections to this server that no request slot has picked up yet."""

    #: How many were counted (accept queue plus accepted but not started).
    count: int
    #: The client addresses of the queued connections, where the kernel tells
    #: them (Linux ``/proc/net/tcp``); empty when unknown.
    peers: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True)
class ServerProfile:
    """What one server process can serve, and where.

    A small frozen value: compare, log, or pass it around freely. Build it
    with :func:`detect`.
    """

    #: ``"gunicorn"``, ``"werkzeug"``, ``"waitress"``, ``"uwsgi"`` or the
    #: product token of ``SERVER_SOFTWARE`` (``"unknown"`` without one).
    server: str
    #: The server's version, when known.
    version: str | None = None
    #: gunicorn's worker class (``"sync"``, ``"gthread"``, ``"gevent"``...),
    #: werkzeug's server model (``"single"``, ``"threaded"``, ``"forking"``).
    worker_class: str | None = None
    #: Processes that accept connections on the same listeners.
    workers: int | None = None
    #: Requests one process serves at once; ``None`` when unknown or when a
    #: new thread is started per request (werkzeug ``threaded=True``).
    threads: int | None = None
    #: The listening sockets.
    listeners: tuple[Listener, ...] = ()
    #: Host names the server is known by (``SERVER_NAME``), lower case.
    names: frozenset[str] = frozenset()
    #: The server's own request timeout in seconds (gunicorn ``--timeout``,
    #: uWSGI ``harakiri``), when it has one.
    timeout: float | None = None
    #: The WSGI flags the server reported.
    multithread: bool | None = None
    multiprocess: bool | None = None
    #: How the profile was found (``"gunicorn worker"``, ``"wsgi flags"``...).
    source: str = "wsgi flags"
    #: The pid of the master process that starts and replaces the workers
    #: (gunicorn's arbiter, uWSGI's master), when there is one.
    master_pid: int | None = None
    #: Counts requests this process accepted but has not started yet (the
    #: gthread and waitress queues). Internal; not part of comparisons.
    queued: t.Callable[[], int] | None = dataclasses.field(
        default=None, compare=False, repr=False
    )

    @property
    def capacity(self) -> int | None:
        """Requests the whole server can serve at once, if bounded and known."""
        if self.workers is None or self.threads is None:
            return None
        return self.workers * self.threads

    @property
    def concurrent(self) -> bool | None:
        """Whether a second request can be served while one is running.

        ``None`` when nothing says either way.
        """
        capacity = self.capacity
        if capacity is not None:
            return capacity > 1
        if self.threads is None and self.multithread:
            return True
        if self.workers is not None and self.workers > 1:
            return True
        return None

    def describe(self) -> str:
        """The server model in words, for messages.

        >>> profile = ServerProfile("gunicorn", worker_class="sync", workers=1)
        >>> profile.describe()
        'gunicorn sync worker, 1 worker'
        """
        workers = _plural(self.workers, "worker")
        if self.server == "gunicorn":
            kind = self.worker_class or "unknown"
            text = f"gunicorn {kind} worker, {workers}"
            if kind == "gthread":
                text += f", {_plural(self.threads, 'thread')} each"
            elif kind not in ("sync", "unknown") and self.threads is not None:
                text += f", {self.threads} connections each"
            return text
        if self.server == "werkzeug":
            if self.worker_class == "threaded":
                return "werkzeug development server, threaded (a thread per request)"
            if self.worker_class == "forking":
                return f"werkzeug development server, processes={self.workers}"
            return "werkzeug development server, threaded=False, processes=1"
        if self.server == "waitress":
            return f"waitress, {_plural(self.threads, 'thread')}"
        if self.server == "uwsgi":
            return (
                f"uWSGI, {_plural(self.workers, 'process', 'processes')}, "
                + _plural(self.threads, "thread")
            )
        flags = (
            f"wsgi.multithread={self.multithread},"
            f" wsgi.multiprocess={self.multiprocess}"
        )
        return f"{self.server} server ({flags})"

    def fix_hint(self) -> str:
        """How to give this server room for a second concurrent request."""
        if self.server == "gunicorn":
            if self.worker_class == "gthread":
                return "more threads (gunicorn --threads 8) or more workers (-w 4)"
            return (
                "a threaded worker (gunicorn -k gthread --threads 4) or more "
                "workers (-w 4)"
            )
        if self.server == "werkzeug":
            return (
                "the threaded development server (app.run(threaded=True), the "
                "default; flask run is threaded)"
            )
        if self.server == "waitress":
            return "more threads (waitress --threads=8)"
        if self.server == "uwsgi":
            return "threads (uwsgi --enable-threads --threads 4) or more processes"
        return "a server that serves concurrent requests (threads or workers)"

    # -- addresses ----------------------------------------------------------

    def own_address(self, host: object, port: object = None) -> Listener | None:
        """The listener that ``host:port`` reaches, if it is one of ours.

        ``host`` is an IP address (``::ffff:`` forms accepted), ``localhost``,
        or for unix sockets the path (``port`` is then ignored).
        """
        if isinstance(host, bytes):
            host = host.decode("utf-8", "replace")
        if not isinstance(host, str):
            return None
        for listener in self.listeners:
            if listener.family == "unix":
                if host == listener.host:
                    return listener
        if not isinstance(port, int):
            return None
        candidates = [
            lis for lis in self.listeners if lis.port == port and lis.family != "unix"
        ]
        if not candidates:
            return None
        name = host.strip("[]").lower()
        addresses: tuple[str, ...]
        if name in _LOOPBACK_NAMES:
            addresses = ("127.0.0.1", "::1")
        else:
            addresses = (_normalise(name),)
        for address in addresses:
            version = _ip_version(address)
            if version is None:
                continue
            for listener in candidates:
                if listener.wildcard:
                    if listener.family == "inet" and version != 4:
                        continue
                    if listener.family == "inet6" and version == 4 and listener.v6only:
                        continue
                    if is_local_ip(address):
                        return listener
                elif _normalise(listener.host) == address:
                    return listener
        return None

    def own_name(
        self, name: str, port: int | None, names: t.Iterable[str] = ()
    ) -> bool:
        """Whether host ``name`` is a name this server is known by.

        ``names`` adds names for this request (``Host`` header values, with or
        without a port). A name given with a port matches only that port; a
        bare name matches any port, since a proxy may stand in between.
        """
        lowered = name.strip("[]").lower()
        if (
            not lowered
            or _ip_version(lowered) is not None
            or lowered in _LOOPBACK_NAMES
        ):
            return False
        for known in (*self.names, *names):
            known_host, known_port = _split_host(known.lower())
            if known_host != lowered:
                continue
            if known_port is None or port is None or known_port == port:
                return True
        return False

    def own_url(self, url: str, names: t.Iterable[str] = ()) -> str | None:
        """Why ``url`` points at this server (a short reason), or ``None``.

        >>> listener = Listener("inet", "127.0.0.1", 8000)
        >>> profile = ServerProfile("gunicorn", listeners=(listener,))
        >>> profile.own_url("http://127.0.0.1:8000/static/cat.png")
        'listener 127.0.0.1:8000'
        """
        try:
            parts = urlsplit(url)
            host = parts.hostname
            port = parts.port
        except ValueError:
            return None
        if not host:
            return None
        if port is None:
            port = _DEFAULT_PORTS.get(parts.scheme.lower())
        listener = self.own_address(host, port)
        if listener is not None:
            return f"listener {listener}"
        if self.own_name(host, parts.port, names):
            return f"host name {host!r} of this server"
        return None

    # -- queued connections -----------------------------------------------

    def backlog(self, *, detail: bool = False) -> Backlog:
        """Connections that wait for a free request slot of this server.

        Never accepts or reads anything. By default cheap enough to poll: a
        listener with a connection in its accept queue counts 1 (``select``
        with no wait), plus the server's own queue of accepted requests
        (gthread, waitress). With ``detail``, on Linux, from
        ``/proc/net/tcp``: every connection in a listener's accept queue and
        every connection this process accepted whose request is still
        unread, with the clients' addresses.
        """
        count = 0
        peers: set[str] = set()
        exact = False
        ports = {lis.port for lis in self.listeners if lis.family != "unix"}
        if ports and (detail or all(lis.fd is None for lis in self.listeners)):
            found = _proc_backlog(ports)
            if found is not None:
                exact = True
                count += found[0]
                peers.update(found[1])
        fds = [
            lis.fd
            for lis in self.listeners
            if lis.fd is not None and (lis.family == "unix" or not exact)
        ]
        if fds:
            try:
                readable, _, _ = select.select(fds, [], [], 0)
            except (OSError, ValueError):
                readable = []
            count += len(readable)
        if self.queued is not None and (not exact or self.server == "waitress"):
            # /proc counts gthread's queue too (accepted, unread); waitress
            # reads a request before it queues it, so /proc cannot see that.
            try:
                count += self.queued()
            except Exception:
                pass
        return Backlog(count, frozenset(peers))


def _plural(count: int | None, word: str, plural: str | None = None) -> str:
    if count is None:
        return f"? {plural or word + 's'}"
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _normalise(host: str) -> str:
    host = host.strip("[]").lower()
    if "%" in host:  # scope id of a link-local address
        host = host.split("%", 1)[0]
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None


def _split_host(value: str) -> tuple[str, int | None]:
    """``"example.com:8000"`` -> ``("example.com", 8000)``; IPv6 in brackets."""
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, ""
    return host, int(port) if port.isdigit() else None


_local_ips: dict[str, bool] = {}
_local_lock = threading.Lock()


def is_local_ip(address: str) -> bool:
    """Whether ``address`` is an address of this host (cached).

    Loopback and unspecified addresses are; any other is tested by binding
    a UDP socket to it, which succeeds only for the host's own addresses and
    sends nothing.
    """
    address = _normalise(address)
    known = _local_ips.get(address)
    if known is not None:
        return known
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        result = True
    else:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.bind((address, 0))
            result = True
        except OSError:
            result = False
    with _local_lock:
        if len(_local_ips) >= 512:  # bounded: addresses come from outbound calls
            _local_ips.clear()
        _local_ips[address] = result
    return result


# -- listening sockets of this process -------------------------------------


def _socket_fds() -> dict[int, int]:
    """``{fd: inode}`` of this process's sockets (Linux), else ``{}``."""
    found: dict[int, int] = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            link = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            try:
                found[int(name)] = int(link[8:-1])
            except ValueError:
                continue
    return found


def scan_listeners() -> tuple[Listener, ...]:
    """Every listening TCP or unix socket of this process (Linux only)."""
    listeners = []
    for fd in sorted(_socket_fds()):
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.type != socket.SOCK_STREAM:
                continue
            if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                continue
            listener = Listener.from_socket(sock)
            listeners.append(dataclasses.replace(listener, fd=fd))
        except OSError:
            continue
        finally:
            sock.close()
    return tuple(listeners)


def _proc_addr(text: str) -> tuple[str, int]:
    """An address of ``/proc/net/tcp{,6}``: hex, 32-bit words in host order."""
    hex_ip, _, hex_port = text.partition(":")
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        ip = socket.inet_ntop(
            socket.AF_INET, raw[::-1] if sys.byteorder == "little" else raw
        )
    else:
        if sys.byteorder == "little":
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
        ip = _normalise(socket.inet_ntop(socket.AF_INET6, raw))
    return ip, int(hex_port, 16)


def _proc_backlog(ports: set[int]) -> tuple[int, set[str]] | None:
    own = set(_socket_fds().values())
    count = 0
    peers: set[str] = set()
    read_any = False
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                lines = f.readlines()
        except OSError:
            continue
        read_any = True
        for line in lines[1:]:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "01":  # ESTABLISHED only
                continue
            try:
                local = _proc_addr(fields[1])
                if local[1] not in ports:
                    continue
                inode = int(fields[9])
                rx_queue = int(fields[4].partition(":")[2], 16)
                # inode 0: still in the accept queue, nobody took it. Ours
                # with unread bytes: accepted, waiting for a thread.
                if inode == 0 or (inode in own and rx_queue > 0):
                    count += 1
                    peers.add(_proc_addr(fields[2])[0])
            except ValueError:
                continue
    return (count, peers) if read_any else None


# -- detection -------------------------------------------------------------


def _class(module: str, name: str) -> t.Any:
    """A server's class if that server is imported; never imports it.

    Typed ``Any`` so that ``isinstance`` keeps duck-typed objects ``Any``.
    """
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return cls if isinstance(cls, type) else None


def _frame_objects(frame: FrameType | None, limit: int = 80) -> t.Iterator[t.Any]:
    """The ``self`` of every method on the stack, innermost first."""
    depth = 0
    while frame is not None and depth < limit:
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            obj = frame.f_locals.get("self")
            if obj is not None:
                yield obj
        frame = frame.f_back
        depth += 1


def _software(environ: t.Mapping[str, t.Any]) -> tuple[str, str | None]:
    software = environ.get("SERVER_SOFTWARE") or os.environ.get("SERVER_SOFTWARE") or ""
    token = str(software).split(None, 1)[0] if software else ""
    name, _, version = token.partition("/")
    return (name.lower() or "unknown"), (version or None)


def _names(environ: t.Mapping[str, t.Any]) -> frozenset[str]:
    names = set()
    server_name = environ.get("SERVER_NAME")
    if isinstance(server_name, str) and server_name:
        host = server_name.lower()
        if _ip_version(host.strip("[]")) is None and host not in _LOOPBACK_NAMES:
            names.add(host)
    return frozenset(names)


def _base(environ: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    mt = environ.get("wsgi.multithread")
    mp = environ.get("wsgi.multiprocess")
    return {
        "names": _names(environ),
        "multithread": None if mt is None else bool(mt),
        "multiprocess": None if mp is None else bool(mp),
    }


def _listeners_of(sockets: t.Iterable[t.Any]) -> tuple[Listener, ...]:
    found = []
    for sock in sockets:
        sock = getattr(sock, "sock", sock)  # gunicorn wraps the socket
        if isinstance(sock, socket.socket):
            try:
                found.append(Listener.from_socket(sock))
            except OSError:
                continue
    return tuple(found)


def _gunicorn(obj: t.Any, environ: t.Mapping[str, t.Any], source: str) -> ServerProfile:
    cfg = obj.cfg
    worker_class = str(getattr(cfg, "worker_class_str", "") or "")
    sync = _class("gunicorn.workers.sync", "SyncWorker")
    threaded = _class("gunicorn.workers.gthread", "ThreadWorker")
    base_worker = _class("gunicorn.workers.base", "Worker")
    if base_worker is not None and isinstance(obj, base_worker):
        if sync is not None and isinstance(obj, sync):
            worker_class = "sync"
        elif threaded is not None and isinstance(obj, threaded):
            worker_class = "gthread"
        sockets = obj.sockets
        master = getattr(obj, "ppid", None)
    else:  # the arbiter (--preload): the worker class as configured
        sockets = getattr(obj, "LISTENERS", ())
        # This process (its pid is set only once it starts its workers).
        master = os.getpid()
    worker_class = worker_class.rsplit(".", 1)[-1]
    threads: int | None
    if worker_class in ("SyncWorker", "sync"):
        worker_class, threads = "sync", 1
    elif worker_class in ("ThreadWorker", "gthread"):
        worker_class, threads = "gthread", int(cfg.threads)
    else:  # gevent, eventlet, tornado: cooperative, many connections each
        threads = int(getattr(cfg, "worker_connections", 0) or 0) or None
    queued = None
    tpool = getattr(obj, "tpool", None)
    work_queue = getattr(tpool, "_work_queue", None)
    if work_queue is not None and hasattr(work_queue, "qsize"):
        queued = work_queue.qsize
    _, version = _software(environ)
    gunicorn_module = sys.modules.get("gunicorn")
    return ServerProfile(
        "gunicorn",
        version=version or getattr(gunicorn_module, "__version__", None),
        worker_class=worker_class,
        workers=int(cfg.workers),
        threads=threads,
        listeners=_listeners_of(sockets),
        timeout=float(cfg.timeout) if getattr(cfg, "timeout", None) else None,
        source=source,
        queued=queued,
        master_pid=master if isinstance(master, int) and master > 0 else None,
        **_base(environ),
    )


def _werkzeug(server: t.Any, environ: t.Mapping[str, t.Any]) -> ServerProfile:
    _, version = _software(environ)
    workers: int | None
    threads: int | None
    if server.multithread:
        model, workers, threads = "threaded", 1, None
    elif server.multiprocess:
        model, workers, threads = (
            "forking",
            int(getattr(server, "max_children", 0)) or None,
            1,
        )
    else:
        model, workers, threads = "single", 1, 1
    base = _base(environ)
    base["multithread"] = bool(server.multithread)
    base["multiprocess"] = bool(server.multiprocess)
    return ServerProfile(
        "werkzeug",
        version=version,
        worker_class=model,
        workers=workers,
        threads=threads,
        listeners=_listeners_of([server.socket]),
        source="werkzeug server",
        **base,
    )


def _waitress(server: t.Any, environ: t.Mapping[str, t.Any]) -> ServerProfile:
    servers = [server]
    base_server = _class("waitress.server", "BaseWSGIServer")
    socket_map = getattr(server, "_map", None)
    if base_server is not None and isinstance(socket_map, dict):
        # Several --listen addresses: one server object each, one map.
        servers += [
            s
            for s in list(socket_map.values())
            if isinstance(s, base_server) and s is not server
        ]
    dispatcher = getattr(server, "task_dispatcher", None)
    queue = getattr(dispatcher, "queue", None)
    queued = (lambda: len(queue)) if queue is not None else None
    waitress_module = sys.modules.get("waitress")
    return ServerProfile(
        "waitress",
        version=getattr(waitress_module, "__version__", None),
        worker_class="threads",
        workers=1,
        threads=int(server.adj.threads),
        listeners=_listeners_of(getattr(s, "socket", None) for s in servers),
        source="waitress server",
        queued=queued,
        **_base(environ),
    )


def _uwsgi_value(value: object) -> str | None:
    if isinstance(value, list):
        value = value[-1] if value else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    return None


def _uwsgi(module: t.Any, environ: t.Mapping[str, t.Any]) -> ServerProfile:
    opt: dict[str, object] = dict(getattr(module, "opt", {}) or {})
    workers = int(getattr(module, "numproc", 1) or 1)
    threads = int(getattr(module, "cores", 1) or 1)
    harakiri = _uwsgi_value(opt.get("harakiri"))
    listeners = list(scan_listeners())
    # The HTTP router (--http) listens in a process of its own: its address
    # is only in the options. ":8000" means every address.
    for key in (
        "http",
        "https",
        "http-socket",
        "socket",
        "uwsgi-socket",
        "http11-socket",
    ):
        values = opt.get(key)
        for value in values if isinstance(values, list) else [values]:
            text = _uwsgi_value(value)
            if not text:
                continue
            text = text.split(",", 1)[0]
            if text.startswith("/") or text.startswith("@"):
                listener = Listener("unix", text, 0)
            else:
                host, port = _split_host(text)
                if port is None:
                    continue
                family = "inet6" if ":" in host else "inet"
                listener = Listener(
                    family, host or ("::" if family == "inet6" else "0.0.0.0"), port
                )
            if all(
                (lis.family, lis.host, lis.port)
                != (listener.family, listener.host, listener.port)
                for lis in listeners
            ):
                listeners.append(listener)
    version = getattr(module, "version", None)
    if isinstance(version, bytes):
        version = version.decode("ascii", "replace")
    return ServerProfile(
        "uwsgi",
        version=version if isinstance(version, str) else None,
        worker_class="threads" if getattr(module, "has_threads", 0) else "processes",
        workers=workers,
        threads=threads,
        listeners=tuple(listeners),
        timeout=float(harakiri)
        if harakiri and harakiri.isdigit() and int(harakiri)
        else None,
        source="uwsgi module",
        master_pid=_uwsgi_master(module),
        **_base(environ),
    )


def _uwsgi_master(module: t.Any) -> int | None:
    try:
        pid = int(module.masterpid())  # 0 without --master
    except Exception:
        return None
    return pid if pid > 0 else None


def _from_frames(
    frame: FrameType | None, environ: t.Mapping[str, t.Any]
) -> ServerProfile | None:
    gunicorn_worker = _class("gunicorn.workers.base", "Worker")
    gunicorn_arbiter = _class("gunicorn.arbiter", "Arbiter")
    werkzeug_handler = _class("werkzeug.serving", "WSGIRequestHandler")
    werkzeug_server = _class("werkzeug.serving", "BaseWSGIServer")
    waitress_task = _class("waitress.task", "Task")
    waitress_channel = _class("waitress.channel", "HTTPChannel")
    waitress_server = _class("waitress.server", "BaseWSGIServer")
    pid = os.getpid()
    for obj in _frame_objects(frame):
        if gunicorn_worker is not None and isinstance(obj, gunicorn_worker):
            if getattr(obj, "pid", pid) == pid:
                return _gunicorn(obj, environ, "gunicorn worker")
        elif gunicorn_arbiter is not None and isinstance(obj, gunicorn_arbiter):
            return _gunicorn(obj, environ, "gunicorn arbiter")
        elif werkzeug_handler is not None and isinstance(obj, werkzeug_handler):
            return _werkzeug(obj.server, environ)
        elif werkzeug_server is not None and isinstance(obj, werkzeug_server):
            return _werkzeug(obj, environ)
        elif waitress_task is not None and isinstance(obj, waitress_task):
            return _waitress(obj.channel.server, environ)
        elif waitress_channel is not None and isinstance(obj, waitress_channel):
            return _waitress(obj.server, environ)
        elif waitress_server is not None and isinstance(obj, waitress_server):
            return _waitress(obj, environ)
    return None


def _gunicorn_from_gc(environ: t.Mapping[str, t.Any]) -> ServerProfile | None:
    worker_cls = _class("gunicorn.workers.base", "Worker")
    if worker_cls is None:
        return None
    pid = os.getpid()
    # Siblings' Worker objects are in memory too (inherited from the
    # arbiter's WORKERS): only the one of this pid is ours.
    for obj in gc.get_objects():
        if isinstance(obj, worker_cls) and getattr(obj, "pid", None) == pid:
            return _gunicorn(obj, environ, "gunicorn worker (gc)")
    return None


def _from_flags(environ: t.Mapping[str, t.Any]) -> ServerProfile:
    name, version = _software(environ)
    base = _base(environ)
    listeners: tuple[Listener, ...] = ()
    workers: int | None
    threads: int | None
    port = environ.get("SERVER_PORT")
    if port is not None and str(port).isdigit():
        # Only this server's own port: a process may hold other listeners
        # (a test's fake API, a metrics endpoint) that are not the server.
        listeners = tuple(lis for lis in scan_listeners() if lis.port == int(port))
    if base["multithread"] is False and base["multiprocess"] is False:
        workers, threads = 1, 1
    else:
        workers = 1 if base["multiprocess"] is False else None
        threads = 1 if base["multithread"] is False else None
    return ServerProfile(
        name,
        version=version,
        workers=workers,
        threads=threads,
        listeners=listeners,
        source="wsgi flags",
        **base,
    )


_current: ServerProfile | None = None


def detect(
    environ: WSGIEnvironment | t.Mapping[str, t.Any] | None = None,
    *,
    frame: FrameType | None = None,
) -> ServerProfile:
    """Work out the :class:`ServerProfile` of the server running this code.

    :param environ: a request's WSGI environ (``SERVER_SOFTWARE``, the WSGI
        flags, ``SERVER_NAME``/``SERVER_PORT``). Without one, only the
        process is inspected.
    :param frame: where to start looking for the server's objects; the
        caller's frame by default. Call it on the thread serving a request,
        where the server's objects are on the stack.

    Not cached: the middlewares call it once per process and keep the result;
    :func:`current` returns the last one found.
    """
    global _current
    env: t.Mapping[str, t.Any] = environ if environ is not None else {}
    if frame is None:
        frame = sys._getframe(1)
    profile = _from_frames(frame, env)
    if profile is None:
        uwsgi = sys.modules.get("uwsgi")
        if uwsgi is not None and hasattr(uwsgi, "numproc"):
            profile = _uwsgi(uwsgi, env)
        elif "gunicorn" in sys.modules and _software(env)[0] == "gunicorn":
            # The master sets SERVER_SOFTWARE in os.environ before forking.
            profile = _gunicorn_from_gc(env)
    if profile is None:
        profile = _from_flags(env)
    _current = profile
    return profile


def current() -> ServerProfile | None:
    """The profile most recently detected in this process, if any."""
    return _current


def _forget_after_fork() -> None:
    global _current
    _current = None


os.register_at_fork(after_in_child=_forget_after_fork)
