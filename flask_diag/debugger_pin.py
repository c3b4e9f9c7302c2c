"""The debugger's PIN, its lockout and its unlock cookie.

Used by :class:`~flask_diag.debugger.DebuggerGate`; one :class:`PinLock` per
activation of the debugger::

    lock = PinLock.activate(pin=None, ttl=3600.0)   # a fresh random PIN
    lock.pin_file            # a 0600 file holding the PIN; log this path
    result = lock.attempt("1234-5678-9012")
    result.accepted, result.locked, result.failures
    # accepted: a random PIN is single-use, the file now holds a new one
    lock.cookie_value()      # werkzeug's "{ts}|{hash}" format
    lock.cookie_valid(value) # only for this activation, never after expiry

Why not werkzeug's own PIN handling:

- its derived PIN is stable across restarts and can be computed by anyone
  who can read a few files of the machine; here a fresh random PIN is made
  for every activation (or the operator's own, from ``debugger_pin``);
- it prints the PIN into the server's log, which is shipped and shared; here
  it goes to a file only the server's user can read;
- after a wrong PIN it sleeps 0.5 to 5 s inside the request, stalling the
  only sync worker; here failures are counted and further attempts refused
  for a while, without sleeping;
- its PIN stays valid for ever once typed; here a random PIN is single-use:
  once accepted, a new one replaces it in the file;
- its unlock cookie is valid for a week and across restarts; here it is
  bound to the activation (a random nonce in its hash, a random cookie name)
  and never valid beyond the expiry.

One activation per server, not per worker process: gunicorn replaces its
worker after ``--max-requests`` (which any client can count up), and each new
worker imports the app again. The processes of one server share a small
record (:func:`server_key`, in a private directory of this user): the start
of the activation, so its expiry does not move; the PIN file, so the PIN and
its rotation carry over; and the failed attempts and lockout, so a new
worker does not grant new guesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import stat
import tempfile
import threading
import time
import typing as t
import weakref

from .settings import PIN_MIN_LENGTH

__all__ = [
    "PinLock",
    "Attempt",
    "MAX_FAILURES",
    "LOCKOUT",
    "MIN_PIN_LENGTH",
    "random_pin",
    "server_key",
    "SharingError",
    "write_pin_file",
    "replace_pin_file",
]

#: Wrong PINs in a row before attempts are refused for :data:`LOCKOUT` seconds.
MAX_FAILURES = 5
#: The first lockout, in seconds; each further lockout doubles it.
LOCKOUT = 300.0
#: The shortest PIN accepted, counted once normalised (without dashes).
MIN_PIN_LENGTH = PIN_MIN_LENGTH  # the settings' rule, also enforced here


class Attempt(t.NamedTuple):
    """The outcome of one PIN attempt."""

    accepted: bool
    #: Attempts are refused without looking at the PIN (until ``locked_until``).
    locked: bool
    #: Wrong PINs since the last success or lockout.
    failures: int
    #: ``time.monotonic()`` until which attempts are refused, or ``0.0``.
    locked_until: float


def _normalise(pin: str) -> bytes:
    # As werkzeug: dashes and surrounding blanks do not count.
    return pin.strip().replace("-", "").encode("utf-8", "replace")


def random_pin() -> str:
    """12 random digits in three groups (``0123-4567-8901``): 40 bits."""
    digits = f"{secrets.randbelow(10**12):012d}"
    return f"{digits[0:4]}-{digits[4:8]}-{digits[8:12]}"


def write_pin_file(pin: str) -> str:
    """Write ``pin`` to a new file only this user can read; return its path.

    A private directory (``mkdtemp``: mode 0700) and the file created with
    ``O_CREAT | O_EXCL`` and mode 0600 in one call, so there is no moment
    when another user could open it.
    """
    directory = tempfile.mkdtemp(prefix="flask-diag-debugger-")
    path = os.path.join(directory, "pin")
    _write_new_private(path, pin + "\n")
    return path


def _write_new_private(path: str, text: str) -> None:
    # O_EXCL: a file (or a planted symlink) already there is an error, and
    # the mode is 0600 from the first moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)  # ours: created just now
        raise


def _replace_private(path: str, text: str) -> None:
    """Atomically replace ``path`` with a 0600 file holding ``text``: a new
    file created exclusively beside it, then renamed over it."""
    fresh = f"{path}.{secrets.token_hex(8)}"
    _write_new_private(fresh, text)
    try:
        os.replace(fresh, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(fresh)
        raise


def _read_private(path: str, limit: int) -> bytes | None:
    """At most ``limit`` bytes of ``path`` when it is a regular file of this
    user that no one else can read or write (not followed if a symlink);
    ``None`` otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid != os.getuid()
            or info.st_mode & 0o077
        ):
            return None
        return f.read(limit)


def replace_pin_file(path: str, pin: str) -> None:
    """Atomically replace the PIN in ``path`` (a file made by
    :func:`write_pin_file`), in its private directory."""
    _replace_private(path, pin + "\n")


class PinLock:
    """The PIN of one activation, with its lockout and cookie."""

    def __init__(
        self,
        pin: str,
        *,
        ttl: float,
        pin_file: str | None,
        max_failures: int = MAX_FAILURES,
        lockout: float = LOCKOUT,
        started_wall: float | None = None,
    ) -> None:
        self._pin = _normalise(pin)
        # Second guard behind the settings' own check: "--------" would
        # otherwise compare equal to an empty PIN. The message never holds it.
        if len(self._pin) < MIN_PIN_LENGTH:
            raise ValueError(
                f"the debugger's PIN must have at least {MIN_PIN_LENGTH} letters"
                " or digits ('-' between them does not count)"
            )
        #: Where the PIN was written, or ``None`` (the operator chose it).
        self.pin_file = pin_file
        now = time.time()
        #: When the activation started (earlier than now for a worker that
        #: took over the activation of the server, see :func:`server_key`).
        self.started_wall = now if started_wall is None else min(started_wall, now)
        #: The expiry as a Unix time, for messages.
        self.expires_wall = self.started_wall + ttl
        self.expires = time.monotonic() + (self.expires_wall - now)
        self.max_failures = max_failures
        self.lockout = lockout
        # Binds the cookie to this activation: an unlock cookie of an earlier
        # activation (same operator PIN, other nonce) never matches.
        nonce = secrets.token_hex(16)
        self._cookie_hash = hashlib.sha256(
            nonce.encode() + b"|" + self._pin
        ).hexdigest()[:24]
        #: The cookie's name: werkzeug's ``__wzd`` prefix, random per activation.
        self.cookie_name = "__wzd" + secrets.token_hex(10)
        self._lock = threading.Lock()
        self._failures = 0
        self._lockouts = 0
        self._locked_until = 0.0
        #: The server's shared record (:func:`server_key`), or ``None``.
        self.record: str | None = None
        self._activated_by = ""
        self._ttl = ttl

    @classmethod
    def activate(
        cls, pin: str | None, *, ttl: float, server: str | None = None
    ) -> PinLock:
        """An activation: the operator's ``pin``, or a fresh random one
        written to a 0600 file.

        With ``server`` (:func:`server_key`), the activation of that server
        when one of its processes made one already: its start, PIN file,
        failed attempts and lockout; else a new one, recorded for the
        server's next processes.
        """
        record_path = _record_path(server) if server is not None else None
        shared = _read_record(record_path) if record_path is not None else None
        if shared is not None and shared.get("process") == _this_process():
            # Made by another gate of this very process (two apps, a test
            # suite): each gate of a process has an activation of its own.
            shared = None
        started = shared.get("started") if shared is not None else None
        if shared is not None and (
            not isinstance(started, (int, float)) or started > time.time()
        ):
            started = 0.0  # unreadable, or a clock set back: over, not anew
        pin_file = shared.get("pin_file") if shared is not None else None
        adopted = None
        if pin is None and isinstance(pin_file, str):
            # The random PIN of the server's activation (an operator's PIN
            # never takes over a file).
            pin = adopted = _read_pin(pin_file)
        if pin is None:
            pin = random_pin()
            lock = cls(pin, ttl=ttl, pin_file=None, started_wall=started)
            if not lock.expired():  # no PIN file for an activation that is over
                lock.pin_file = write_pin_file(pin)  # checked before written
        else:
            lock = cls(pin, ttl=ttl, pin_file=None, started_wall=started)
            if adopted is not None:
                lock.pin_file = pin_file
        if record_path is not None:
            lock.record = record_path
            lock._ttl = ttl
            lock._activated_by = _this_process()
            if shared is not None:
                lock._restore(shared)
                process = shared.get("process")
                if isinstance(process, str):
                    lock._activated_by = process
            lock._save()
            _shared_locks.add(lock)
        return lock

    # -- the server's shared record --------------------------------------------

    def _state(self) -> dict[str, object]:
        return {
            "process": self._activated_by,
            "started": self.started_wall,
            "ttl": self._ttl,
            "pin_file": self.pin_file,
            "failures": self._failures,
            "lockouts": self._lockouts,
            # Monotonic clocks differ between processes: stored as Unix time.
            "locked_until": time.time() + (self._locked_until - time.monotonic())
            if self._locked_until
            else 0.0,
        }

    def _restore(self, shared: dict[str, t.Any]) -> None:
        failures = shared.get("failures")
        lockouts = shared.get("lockouts")
        until = shared.get("locked_until")
        if isinstance(failures, int) and failures >= 0:
            self._failures = failures
        if isinstance(lockouts, int) and lockouts >= 0:
            self._lockouts = lockouts
        if isinstance(until, (int, float)) and until > time.time():
            self._locked_until = time.monotonic() + (until - time.time())

    def _save(self) -> None:
        if self.record is not None:
            with contextlib.suppress(OSError):
                _write_record(self.record, self._state())

    def _reload(self) -> None:
        """In a process forked from the one that activated (gunicorn
        ``--preload``): take the record's state and the PIN file's current
        PIN, which earlier workers may have changed."""
        if self.record is None:
            return
        shared = _read_record(self.record)
        if shared is not None:
            self._restore(shared)
        if self.pin_file is not None:
            pin = _read_pin(self.pin_file)
            if pin is not None:
                self._pin = _normalise(pin)

    def expired(self) -> bool:
        """Whether the activation is over."""
        return time.monotonic() >= self.expires

    def remaining(self) -> float:
        """Seconds until expiry (0 once expired)."""
        return max(0.0, self.expires - time.monotonic())

    def attempt(self, entered: str) -> Attempt:
        """Check one entered PIN. Never sleeps.

        While locked out, every attempt is refused without comparing; after
        :attr:`max_failures` wrong PINs in a row the lock closes for
        :attr:`lockout` seconds, doubled at each further lockout.
        """
        now = time.monotonic()
        with self._lock:
            if now < self._locked_until:
                return Attempt(False, True, self._failures, self._locked_until)
            if hmac.compare_digest(_normalise(entered), self._pin):
                self._failures = 0
                self._rotate()
                self._save()
                return Attempt(True, False, 0, 0.0)
            self._failures += 1
            failures = self._failures
            if failures >= self.max_failures:
                self._locked_until = now + self.lockout * (2**self._lockouts)
                self._lockouts += 1
                self._failures = 0
                self._save()
                return Attempt(False, True, failures, self._locked_until)
            self._save()
            return Attempt(False, False, failures, 0.0)

    def _rotate(self) -> None:
        # A random PIN is single-use: once accepted, a fresh one replaces it
        # in the same file, so a copy of the old one (a terminal's
        # scrollback, a chat, a log that should not have had it) opens
        # nothing. Cookies already given stay valid (their hash is bound to
        # the activation, not to the PIN). The operator's own PIN
        # (``pin_file`` is None) cannot be rotated.
        if self.pin_file is None:
            return
        pin = random_pin()
        try:
            replace_pin_file(self.pin_file, pin)
        except OSError:
            return  # keep the old PIN rather than lock the operator out
        self._pin = _normalise(pin)

    def locked(self) -> bool:
        """Whether PIN attempts are refused right now."""
        return time.monotonic() < self._locked_until

    def cookie_value(self) -> str:
        """An unlock cookie in werkzeug's ``"{ts}|{hash}"`` format."""
        return f"{int(time.time())}|{self._cookie_hash}"

    def cookie_valid(self, value: str | None) -> bool:
        """Whether ``value`` unlocks this activation, now."""
        if not value or "|" not in value or self.expired():
            return False
        ts_text, _, digest = value.partition("|")
        try:
            ts = int(ts_text)
        except ValueError:
            return False
        if not hmac.compare_digest(digest.encode(), self._cookie_hash.encode()):
            return False
        # Issued during this activation (a second of slack for int()).
        return self.started_wall - 1 <= ts <= time.time() + 1

    def remove_file(self) -> None:
        """Delete the PIN file and its private directory, if any. The
        server's record stays: its later processes must see the activation
        over."""
        if self.pin_file is not None:
            shutil.rmtree(os.path.dirname(self.pin_file), ignore_errors=True)
        if self.record is not None:
            # The PIN file is gone: a later process of the server must not
            # read it, nor make a new one for an activation that is over.
            state = self._state()
            state["pin_file"] = None
            with contextlib.suppress(OSError):
                _write_record(self.record, state)


# -- one activation per server ------------------------------------------------

_RECORDS_PREFIX = "flask-diag-debugger-records-"
_shared_locks: weakref.WeakSet[PinLock] = weakref.WeakSet()


def server_key(master_pid: int | None) -> str | None:
    """An id of the server whose master process (gunicorn's arbiter, uWSGI's
    master: :attr:`ServerProfile.master_pid
    <flask_diag.server.ServerProfile.master_pid>`) starts and replaces this
    worker: its pid and start time, the same for all its workers and unique
    to that process. ``None`` without a master (nothing replaces this
    process's activation) or where ``/proc`` cannot tell the start time.
    """
    if master_pid is None:
        return None
    started = _start_ticks(master_pid)
    return None if started is None else f"{master_pid}-{started}"


def _this_process() -> str:
    """This process, as the record names it: pid and start time (a pid may
    come again, for another worker)."""
    pid = os.getpid()
    return f"{pid}-{_start_ticks(pid)}"


class SharingError(OSError):
    """The activation cannot be shared between the server's workers (its
    records directory is missing, not ours or not writable): the debugger
    must stay off rather than let each new worker start afresh."""


def _proc_read(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    text = _proc_read(pid, "stat")
    if text is None:
        return None
    # The command name, in parentheses, may hold spaces: fields after it.
    fields = text.rpartition(b")")[2].split()
    try:
        return int(fields[19])  # field 22, starttime
    except (IndexError, ValueError):
        return None


def _records_dir() -> str:
    """This user's private directory of server records (mode 0700, owned by
    this user, not a symlink), made if missing: in ``$XDG_RUNTIME_DIR``
    (private to the user) when set, else in the temporary directory.

    :raises SharingError: when it cannot be made or trusted.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    try:
        base = runtime if runtime and os.path.isdir(runtime) else tempfile.gettempdir()
        path = os.path.join(base, f"{_RECORDS_PREFIX}{os.getuid()}")
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        info = os.lstat(path)
    except (OSError, RuntimeError) as exc:
        raise SharingError(f"no records directory: {exc}") from None
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or info.st_mode & 0o077
    ):
        raise SharingError(
            f"{path} is not a private directory of this user (mode 0700)"
        )
    return path


def _record_path(key: str) -> str:
    directory = _records_dir()
    _forget_spent_pin_files(directory)
    return os.path.join(directory, f"{key}.json")


def _read_record(path: str) -> dict[str, t.Any] | None:
    data = _read_private(path, 65536)
    try:
        value = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _write_record(path: str, state: dict[str, object]) -> None:
    _replace_private(path, json.dumps(state))


def _read_pin(path: str) -> str | None:
    """The PIN in a file :func:`write_pin_file` made, or ``None``."""
    data = _read_private(path, 200)
    pin = data.decode("ascii", "replace").strip() if data is not None else ""
    return pin or None


def _forget_spent_pin_files(directory: str) -> None:
    """Delete the PIN files of activations that are over. The records stay:
    a server may still run (in another PID namespace, say) and a worker it
    starts must find its activation over, not start a new one; a record is a
    few bytes, and the directory goes with the user's runtime directory or
    the temporary one."""
    now = time.time()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if not name.endswith(".json"):
                continue
            shared = _read_record(os.path.join(directory, name))
            if shared is None:
                continue
            started, ttl = shared.get("started"), shared.get("ttl")
            if not isinstance(started, (int, float)) or not isinstance(
                ttl, (int, float)
            ):
                continue
            if started + ttl > now:
                continue  # still on
            pin_file = shared.get("pin_file")
            pin_dir = os.path.dirname(pin_file) if isinstance(pin_file, str) else ""
            name = os.path.basename(pin_dir)
            if (
                name.startswith("flask-diag-debugger-")
                and not name.startswith(_RECORDS_PREFIX)
                and os.path.dirname(pin_dir) == tempfile.gettempdir()
            ):
                shutil.rmtree(pin_dir, ignore_errors=True)


def _reload_after_fork() -> None:
    for lock in list(_shared_locks):
        with contextlib.suppress(Exception):
            lock._reload()


os.register_at_fork(after_in_child=_reload_after_fork)
