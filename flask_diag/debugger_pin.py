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
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import tempfile
import threading
import time
import typing as t

from .settings import PIN_MIN_LENGTH

__all__ = [
    "PinLock",
    "Attempt",
    "MAX_FAILURES",
    "LOCKOUT",
    "MIN_PIN_LENGTH",
    "random_pin",
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
    _write_new_private(path, pin)
    return path


def _write_new_private(path: str, pin: str) -> None:
    # O_EXCL: a file (or a planted symlink) already there is an error, and
    # the mode is 0600 from the first moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(pin + "\n")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)  # ours: created just now
        raise


def replace_pin_file(path: str, pin: str) -> None:
    """Atomically replace the PIN in ``path`` (a file made by
    :func:`write_pin_file`): a new 0600 file created exclusively in the same
    private directory, then renamed over the old one."""
    directory = os.path.dirname(path)
    fresh = os.path.join(directory, f"pin.{secrets.token_hex(8)}")
    _write_new_private(fresh, pin)
    try:
        os.replace(fresh, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(fresh)
        raise


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
        self.started_wall = time.time()
        self.expires = time.monotonic() + ttl
        #: The expiry as a Unix time, for messages.
        self.expires_wall = self.started_wall + ttl
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

    @classmethod
    def activate(cls, pin: str | None, *, ttl: float) -> PinLock:
        """A new activation: the operator's ``pin``, or a fresh random one
        written to a 0600 file."""
        if pin is None:
            pin = random_pin()
            lock = cls(pin, ttl=ttl, pin_file=None)  # checked before written
            lock.pin_file = write_pin_file(pin)
            return lock
        return cls(pin, ttl=ttl, pin_file=None)

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
                return Attempt(True, False, 0, 0.0)
            self._failures += 1
            failures = self._failures
            if failures >= self.max_failures:
                self._locked_until = now + self.lockout * (2**self._lockouts)
                self._lockouts += 1
                self._failures = 0
                return Attempt(False, True, failures, self._locked_until)
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
        """Delete the PIN file and its private directory, if any."""
        if self.pin_file is not None:
            shutil.rmtree(os.path.dirname(self.pin_file), ignore_errors=True)
