"""Settings
========

One typed, frozen :class:`Settings` object configures every middleware.
Values come from four sources, strongest last:

1. the defaults below,
2. keyword arguments (``Diag(app, worker_headers=False)``, ``wrap(app, ...)``),
3. Flask config keys ``DIAG_<NAME>`` (only with the Flask extension),
4. environment variables ``FLASK_DIAG_<NAME>``.

The environment wins so that a deployed server can be switched without a code
change. ``FLASK_DIAG=off`` turns the whole stack off: the app is returned
unwrapped.

Parsing is strict. An unknown value, or an unknown ``FLASK_DIAG_*`` variable
(a typo that would otherwise silently do nothing), raises
:class:`~flask_diag.exceptions.DiagConfigError` at start-up, naming the
variable, the value and what is accepted::

    >>> Settings.load(environ={"FLASK_DIAG_WORKER_HEADERS": "maybe"})
    Traceback (most recent call last):
      ...
    flask_diag.exceptions.DiagConfigError: FLASK_DIAG_WORKER_HEADERS='maybe' is \
not valid: accepted values are on, off (or 1/0, true/false, yes/no).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing as t
from collections.abc import Mapping

from .exceptions import DiagConfigError

__all__ = ["Settings", "OPTIONS", "Option"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_BOOL_ACCEPTED = "on, off (or 1/0, true/false, yes/no)"


class Option(t.NamedTuple):
    """Metadata of one setting: where it is read from and how it is parsed."""

    name: str
    env: str
    config: str
    accepted: str
    doc: str
    #: A secret (the debugger's PIN): never shown in messages, ``repr()`` or
    #: ``flask diag settings``.
    secret: bool = False


def _parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        # ``app.config.from_prefixed_env()`` turns "1" into the integer 1.
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError


def _choice(*choices: str) -> t.Callable[[object], str]:
    def parse(value: object) -> str:
        if isinstance(value, bool):
            # ``True``/``False`` from Python code mean on/off where those exist.
            value = "on" if value else "off"
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError

    return parse


def _seconds(maximum: float) -> t.Callable[[object], float]:
    """A duration: more than 0 and at most ``maximum`` seconds."""

    def parse(value: object) -> float:
        if isinstance(value, str):
            value = float(value.strip())  # ValueError for anything else
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if 0 < value <= maximum and value != float("inf"):
                return float(value)
        raise ValueError

    return parse


def _seconds_or_off(on: float, maximum: float) -> t.Callable[[object], float | None]:
    """A duration (see :func:`_seconds`); ``off`` (or 0) for none; ``on``
    (or ``True``) for ``on`` seconds."""
    seconds = _seconds(maximum)

    def parse(value: object) -> float | None:
        if isinstance(value, bool):
            return on if value else None
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _FALSE:
                return None
            if text in _TRUE - {"1"}:  # "1" is one second
                return on
        elif value == 0:
            return None
        return seconds(value)

    return parse


def _int_in(low: int, high: int | None = None) -> t.Callable[[object], int]:
    """An integer from ``low`` to ``high`` (no upper bound when ``None``)."""

    def parse(value: object) -> int:
        if isinstance(value, str):
            value = int(value.strip())  # ValueError for anything else
        if isinstance(value, int) and not isinstance(value, bool) and value >= low:
            if high is None or value <= high:
                return value
        raise ValueError

    return parse


def _parse_ip(value: object) -> str:
    # An IP address or ``localhost``, never a name to resolve: whether the
    # address is loopback must be certain.
    import ipaddress

    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "localhost":
            return "localhost"
        return str(ipaddress.ip_address(text))  # ValueError for anything else
    raise ValueError


def _items(value: object) -> list[str]:
    # A list setting: comma- or space-separated text, or a list/tuple of texts.
    if isinstance(value, str):
        return [p for p in re.split(r"[,\s]+", value.strip()) if p]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value]
    raise ValueError


def _parse_networks(value: object) -> tuple[str, ...]:
    # CIDRs (or single addresses), normalised; ``none`` (or an empty text)
    # for no network at all.
    import ipaddress

    if isinstance(value, str) and value.strip().lower() == "none":
        return ()
    return tuple(str(ipaddress.ip_network(i, strict=False)) for i in _items(value))


def _parse_proxy_networks(value: object) -> tuple[str, ...]:
    # As _parse_networks, but a network so large that it holds (nearly)
    # every client is refused: trusting its X-Forwarded-For would let any
    # client name itself 127.0.0.1 to the debugger.
    import ipaddress

    networks = _parse_networks(value)
    for text in networks:
        network = ipaddress.ip_network(text)
        if network.prefixlen < (8 if network.version == 4 else 32):
            raise ValueError
    return networks


_HOST = re.compile(r"^(\*\.)?[A-Za-z0-9.-]{1,253}$|^\[?[0-9A-Fa-f:.]+\]?$")


def _parse_hosts(value: object) -> tuple[str, ...]:
    # Host names (``*.example.com`` for a domain and its subdomains) or
    # addresses, without ports; empty for the defaults.
    hosts = _items(value)
    if not all(_HOST.match(host) for host in hosts):
        raise ValueError
    return tuple(host.lower() for host in hosts)


#: The fewest letters and digits a debugger PIN may have (dashes not counted).
PIN_MIN_LENGTH = 8


def _parse_pin(value: object) -> str | None:
    # An operator-chosen PIN. Never "off": werkzeug's PIN-less mode is
    # exactly what must not be possible. Short PINs are refused too.
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        # Dashes are only separators (werkzeug drops them before comparing):
        # the length that counts is the one without them.
        if len(text.replace("-", "")) >= PIN_MIN_LENGTH and text.lower() not in _FALSE:
            if re.fullmatch(r"[A-Za-z0-9-]+", text):
                return text
    raise ValueError


_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def _parse_header_name(value: object) -> str:
    if isinstance(value, str) and _HEADER_NAME.match(value.strip()):
        return value.strip()
    raise ValueError


def _setting(
    default: t.Any,
    parse: t.Callable[[object], t.Any],
    accepted: str,
    doc: str,
    *,
    env: str | None = None,
    config: str | None = None,
    secret: bool = False,
) -> t.Any:
    return dataclasses.field(
        default=default,
        repr=not secret,
        metadata={
            "parse": parse,
            "accepted": accepted,
            "doc": doc,
            "env": env,
            "config": config,
            "secret": secret,
        },
    )


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective settings of one wrapped app.

    Build it with :meth:`load`; the attributes are read-only.
    """

    enabled: bool = _setting(
        True,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Master switch. ``off`` returns the app unwrapped: no middleware runs.",
        env="FLASK_DIAG",
        config="DIAG_ENABLED",
    )
    tagging: bool = _setting(
        True,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Per-request tagging: request id, worker pid and thread in the response "
        "headers, the structlog context and the Sentry scope.",
    )
    worker_headers: bool = _setting(
        True,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Send ``X-Diag-PID`` and ``X-Diag-Thread`` response headers. Switch off "
        "when the process layout of a server must not be visible to clients.",
    )
    server_timing: bool = _setting(
        True,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Send a ``Server-Timing: app;dur=<ms>`` header with the time the app "
        "took until it started the response.",
    )
    request_id_header: str = _setting(
        "X-Request-ID",
        _parse_header_name,
        "a header name (letters, digits and '-', at most 64)",
        "The header an incoming request id is read from and the response "
        "carries it in.",
    )
    trust_request_id: bool = _setting(
        True,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Reuse an incoming request id when it is safe (at most 128 characters "
        "of ``A-Z a-z 0-9 . _ : -``). ``off`` always generates a new one.",
    )
    access_log: bool = _setting(
        False,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Write one structlog line per finished request (status, duration). Off "
        "by default: most servers already write an access log.",
    )
    errors: str = _setting(
        "json",
        _choice("json", "negotiate", "off"),
        "json, negotiate, off",
        "Error envelopes: ``json`` answers every error with "
        "``application/problem+json``; ``negotiate`` gives browsers a small "
        "HTML page with the same fields; ``off`` leaves errors alone.",
    )
    debug_errors: bool = _setting(
        False,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Put the exception type, message and traceback into error envelopes. "
        "Never on a server the public can reach.",
    )
    sentry_confirm: float | None = _setting(
        2.0,
        _seconds_or_off(2.0, 30.0),
        "a number of seconds up to 30 (e.g. 2, 0.5), on (2 seconds) or off",
        "Put a 5xx's Sentry ``event_id`` into the error body only once Sentry "
        "accepted the event: wait at most this long for its answer (an error "
        "response waits, a success never). After a failure, errors do not "
        "wait until Sentry accepts an event again. ``off``: quote the id as "
        "soon as sentry-sdk queued the event.",
    )
    loopback: str = _setting(
        "raise",
        _choice("raise", "strict", "warn", "off"),
        "raise, strict, warn, off",
        "Loopback deadlock detection, on servers that serve one request at a "
        "time: ``raise`` fails a request's direct call to its own server with "
        "``LoopbackDeadlockError`` and warns when a URL of this server is handed "
        "to another service; ``strict`` also fails those hand-overs and breaks "
        "an outbound wait while a callback is stuck in the queue; ``warn`` only "
        "logs; ``off`` removes the check.",
    )
    watchdog: float | None = _setting(
        30.0,
        _seconds_or_off(30.0, float("inf")),
        "a number of seconds (e.g. 30, 2.5), on (30 seconds) or off (or 0)",
        "Log the stack of a request still running after this many seconds, "
        "once, with a ``request_stuck`` signal and a Sentry message. ``off`` "
        "removes the watchdog.",
    )
    pdb: bool = _setting(
        False,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Remote pdb: ``on`` makes ``flask_diag.set_trace()`` (and "
        "``breakpoint()`` with ``PYTHONBREAKPOINT=flask_diag.set_trace``) wait "
        "for a debugger client. ``off``: a breakpoint logs a warning and the "
        "code continues. Read from the environment at each breakpoint.",
    )
    pdb_host: str = _setting(
        "127.0.0.1",
        _parse_ip,
        "an IP address, or localhost",
        "The address the remote pdb listens on. Anything but loopback is "
        "logged at critical level: whoever reaches it runs code in the worker.",
    )
    pdb_port: int = _setting(
        4444,
        _int_in(0, 65535),
        "a port number (0 for any free port)",
        "The remote pdb's port; when it is taken, the next free one (the log "
        "line names it).",
    )
    pdb_wait: float = _setting(
        120.0,
        _seconds(86400),
        "a number of seconds (e.g. 120, 0.5), at most 86400",
        "How long a breakpoint waits for a client before the code continues; "
        "shortened to end before the server's worker timeout.",
    )
    pdb_quit: str = _setting(
        "continue",
        _choice("continue", "raise"),
        "continue, raise",
        "What ``quit`` does in a remote pdb session: ``continue`` detaches and "
        "the request goes on; ``raise`` raises ``BdbQuit`` like plain pdb.",
    )
    pdb_busy: str = _setting(
        "wait",
        _choice("wait", "skip"),
        "wait, skip",
        "A breakpoint hit while another thread of the process has a remote pdb "
        "session open: ``wait`` (up to ``pdb_wait`` seconds, then skip) or "
        "``skip`` at once. Both are logged.",
    )

    debugger: bool = _setting(
        False,
        _parse_bool,
        _BOOL_ACCEPTED,
        "The PIN-gated werkzeug debugger (live tracebacks and a Python "
        "console in the browser): remote code execution by design. ``on`` "
        "for one deployment at a time, one worker process, allowed clients "
        "only; it switches itself off after ``debugger_ttl`` seconds.",
    )
    debugger_pin: str | None = _setting(
        None,
        _parse_pin,
        f"a PIN of at least {PIN_MIN_LENGTH} letters or digits, '-' between them "
        "allowed (unset: a fresh random PIN for each activation)",
        "The debugger's PIN. Unset, a new random one is made at each start "
        "and written to a file only the server's user can read (its path is "
        "logged, the PIN never is). There is no way to switch the PIN off.",
        secret=True,
    )
    debugger_ttl: float = _setting(
        3600.0,
        _seconds(86400),
        "a number of seconds (e.g. 3600), at most 86400",
        "The debugger switches itself off this many seconds after start-up.",
    )
    debugger_allow: tuple[str, ...] = _setting(
        ("127.0.0.0/8", "::1/128"),
        _parse_networks,
        "networks in CIDR notation, comma-separated (e.g. 10.0.0.0/8, ::1)",
        "Clients (``REMOTE_ADDR``) that may reach the debugger. Loopback "
        "only by default; everybody else sees the ordinary error envelope.",
    )
    debugger_trusted_proxies: tuple[str, ...] = _setting(
        (),
        _parse_proxy_networks,
        "the proxies' own networks in CIDR notation (at most a /8, or a /32 "
        "for IPv6: not 'everyone'), comma-separated, or none",
        "Reverse proxies whose ``X-Forwarded-For`` is believed, for the "
        "debugger's client check only: the address after the last trusted "
        "hop counts. None by default: ``X-Forwarded-For`` is ignored.",
    )
    debugger_hosts: tuple[str, ...] = _setting(
        (),
        _parse_hosts,
        "host names or addresses, comma-separated (``*.example.com`` for a "
        "domain); empty for the defaults",
        "``Host`` headers the debugger answers (against DNS rebinding), "
        "besides the defaults: localhost names and the server's own address.",
    )
    debugger_console: bool = _setting(
        False,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Also serve werkzeug's stand-alone console at ``/console`` (still "
        "behind the PIN and every other guard).",
    )
    debugger_frames: int = _setting(
        20,
        _int_in(1),
        "a whole number of tracebacks (e.g. 20)",
        "How many tracebacks the debugger keeps in memory; the oldest are "
        "dropped (werkzeug alone never frees them).",
    )
    debugger_in_production: bool = _setting(
        False,
        _parse_bool,
        _BOOL_ACCEPTED,
        "The second, explicit override needed to switch the debugger on "
        "where ``env`` is ``production``.",
    )
    env: str = _setting(
        "unknown",
        _choice("development", "staging", "production", "unknown"),
        "development, staging, production, unknown",
        "What this deployment is. ``production`` refuses the debugger unless "
        "``debugger_in_production`` is also on.",
    )
    teardown: str = _setting(
        "warn",
        _choice("warn", "raise", "off"),
        "warn, raise, off",
        "Session-teardown checks: database connections, transactions and "
        "sessions that outlive their request. ``warn`` logs each finding; "
        "``raise`` also answers the request with a ``teardown_leak`` 500 (for "
        "tests and CI); ``off`` removes the check.",
    )

    speedups: bool = _setting(
        True,
        _parse_bool,
        _BOOL_ACCEPTED,
        "Run the request path's compiled modules, built from their Python "
        "sources when flask_diag was installed with a C compiler at hand. "
        "``off`` runs the Python sources instead (to step through flask_diag "
        "with a debugger, or to rule the compiled code out). Read once, from "
        "the environment, when flask_diag is first imported.",
    )

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, object] | None = None,
        *,
        config: Mapping[str, object] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Merge the sources and validate every value.

        :param overrides: keyword arguments given in code.
        :param config: a Flask ``app.config`` (keys ``DIAG_*``), if any.
        :param environ: the process environment; defaults to ``os.environ``.
        :raises DiagConfigError: on an unknown name or an invalid value.
        :raises TypeError: on an unknown keyword argument.
        """
        if environ is None:
            environ = os.environ
        values: dict[str, object] = {}
        if overrides:
            unknown = set(overrides) - set(OPTIONS)
            if unknown:
                raise TypeError(
                    f"unknown flask_diag setting(s): {', '.join(sorted(unknown))}; "
                    f"known settings are: {', '.join(OPTIONS)}"
                )
            for name, value in overrides.items():
                values[name] = _parse(OPTIONS[name], value, f"{name}=")
        if config is not None:
            for key in config:
                if key == "DIAG_ENABLED" or key.startswith("DIAG_"):
                    option = _BY_CONFIG.get(key)
                    if option is None:
                        raise DiagConfigError(_unknown(key, _BY_CONFIG))
                    values[option.name] = _parse(option, config[key], f"{key}=")
        for key, raw in environ.items():
            if key == "FLASK_DIAG" or key.startswith("FLASK_DIAG_"):
                option = _BY_ENV.get(key)
                if option is None:
                    raise DiagConfigError(_unknown(key, _BY_ENV))
                values[option.name] = _parse(option, raw, f"{key}=")
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def for_middleware(
        cls, settings: Settings | None, overrides: Mapping[str, object]
    ) -> Settings:
        """What a middleware's ``settings=`` and ``**overrides`` amount to:
        the environment's settings with the overrides, or ``settings`` with
        them (validated like keyword arguments).
        """
        if settings is None:
            return cls.load(overrides)
        if overrides:
            return settings.replace(**overrides)
        return settings

    @property
    def request_id_environ_key(self) -> str:
        """The WSGI environ key of :attr:`request_id_header`, e.g.
        ``HTTP_X_REQUEST_ID``."""
        return "HTTP_" + self.request_id_header.upper().replace("-", "_")

    def replace(self, **changes: object) -> Settings:
        """A copy with some values changed (validated like keyword arguments)."""
        parsed = {n: _parse(OPTIONS[n], v, f"{n}=") for n, v in changes.items()}
        return dataclasses.replace(self, **parsed)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        """The settings as a plain ``dict``, by attribute name."""
        return dataclasses.asdict(self)


def _parse(option: Option, value: object, source: str) -> object:
    field = _FIELDS[option.name]
    try:
        return field.metadata["parse"](value)
    except (ValueError, TypeError):
        shown = (
            f"<a value of {len(str(value))} characters, not shown>"
            if option.secret
            else repr(value)
        )
        raise DiagConfigError(
            f"{source}{shown} is not valid: accepted values are {option.accepted}."
        ) from None


def _unknown(key: str, known: Mapping[str, Option]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    return f"{key} is not a flask_diag setting.{hint} Known names: {', '.join(known)}."


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}

#: Every setting, by attribute name, in declaration order.
OPTIONS: dict[str, Option] = {
    f.name: Option(
        name=f.name,
        env=f.metadata["env"] or f"FLASK_DIAG_{f.name.upper()}",
        config=f.metadata["config"] or f"DIAG_{f.name.upper()}",
        accepted=f.metadata["accepted"],
        doc=f.metadata["doc"],
        secret=f.metadata["secret"],
    )
    for f in dataclasses.fields(Settings)
}
_BY_ENV = {o.env: o for o in OPTIONS.values()}
_BY_CONFIG = {o.config: o for o in OPTIONS.values()}
