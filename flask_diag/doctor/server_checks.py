"""Server checks: the command line or configuration the app will run under.

:func:`parse` reads what ``--server`` names, without starting anything:

- a command line: ``gunicorn -w 4 --timeout 30 app:app`` (options parsed
  like gunicorn does, ``-c FILE`` read too), ``uwsgi --ini uwsgi.ini`` or
  ``uwsgi --processes 2 --harakiri 30 ...``, ``waitress-serve --threads=4
  app:app``, and the development server (``flask run``, ``python app.py``);
- a gunicorn configuration file (``gunicorn.conf.py``): **read with**
  :mod:`ast`, **never executed**. gunicorn execs it, but the doctor runs in
  CI and on laptops and must not run deployment code (a config file may
  bind sockets or read secrets). Only module-level assignments of literals
  are understood (``workers = 4``); a computed value (``workers =
  multiprocessing.cpu_count() * 2 + 1``) counts as unknown, and checks that
  need it stay silent;
- a uWSGI ``.ini`` file (:mod:`configparser`, section ``[uwsgi]``).

:func:`check` turns the parsed :class:`ServerSpec` into findings, using the
facts of the runtime and static checks::

    spec = parse("gunicorn -w 4 --timeout 30 app:app")
    spec.profile.capacity    # 4
"""

from __future__ import annotations

import ast
import configparser
import dataclasses
import os
import re
import shlex
from pathlib import Path

from ..server import ServerProfile
from ..worker_timeout import parse_gunicorn_args
from .findings import Finding
from .runtime_checks import RuntimeResult
from .static_checks import StaticResult

__all__ = ["DEBUG_TIMEOUT", "ServerSpec", "ServerSpecError", "check", "parse"]

#: A worker timeout shorter than this kills a debugging session.
DEBUG_TIMEOUT = 600.0


class ServerSpecError(ValueError):
    """``--server`` cannot be understood; the message says why."""


@dataclasses.dataclass
class ServerSpec:
    """The server model a command line or configuration describes."""

    #: ``gunicorn``, ``uwsgi``, ``waitress`` or ``werkzeug``.
    server: str
    workers: int | None = 1
    threads: int | None = 1
    worker_class: str | None = None
    #: gunicorn ``--timeout`` / uWSGI ``harakiri``; ``0`` for none.
    timeout: float | None = None
    #: uWSGI: Python threads can run (``enable-threads`` or ``threads``).
    enable_threads: bool | None = None
    https: bool = False
    #: The configuration file read, if any, and the line of each option.
    file: str | None = None
    lines: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def profile(self) -> ServerProfile:
        """The server model as a :class:`~flask_diag.server.ServerProfile`
        (its ``capacity``, ``describe()``)."""
        return ServerProfile(
            self.server,
            worker_class=self.worker_class,
            workers=self.workers,
            threads=self.threads,
        )


def _gunicorn_file(path: Path, spec: ServerSpec) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = {"workers", "worker_class", "threads", "timeout", "certfile"}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if isinstance(target, ast.Name) and target.id in names:
                spec.lines[target.id] = node.lineno
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    value = None  # computed: unknown
                _set_gunicorn(spec, target.id, value, unknown=value is None)


def _set_gunicorn(spec: ServerSpec, name: str, value: object, *, unknown: bool) -> None:
    if name == "workers":
        spec.workers = None if unknown else int(str(value))
    elif name == "threads":
        spec.threads = None if unknown else int(str(value))
    elif name == "worker_class":
        spec.worker_class = None if unknown else str(value)
    elif name == "timeout":
        spec.timeout = None if unknown else float(str(value))
    elif name == "certfile":
        spec.https = spec.https or unknown or bool(value)


def _finish_gunicorn(spec: ServerSpec) -> ServerSpec:
    kind = (spec.worker_class or "sync").rsplit(".", 1)[-1].lower()
    threads = spec.threads
    if kind in ("sync", "syncworker"):
        # gunicorn quietly runs gthread for -k sync --threads N (N > 1).
        kind = "gthread" if threads is not None and threads > 1 else "sync"
    elif kind in ("gthread", "threadworker"):
        kind = "gthread"
    spec.worker_class = kind
    if kind == "sync":
        # threads computed in a config file: sync or gthread, unknown.
        unknown = threads is None and "threads" in spec.lines
        spec.threads = None if unknown else 1
    elif kind != "gthread":
        spec.threads = None  # async workers: many connections each
    if spec.timeout is None and "timeout" not in spec.lines:
        spec.timeout = 30.0  # gunicorn's default
    return spec


def _uwsgi_options(spec: ServerSpec, options: dict[str, str]) -> None:
    def number(key: str) -> int | None:
        raw = options.get(key)
        return int(raw) if raw is not None and raw.strip().isdigit() else None

    workers = number("processes") or number("workers")
    if workers is not None:
        spec.workers = workers
    threads = number("threads")
    if threads is not None:
        spec.threads = threads
    if "enable-threads" in options:
        spec.enable_threads = options["enable-threads"].strip().lower() not in (
            "0",
            "false",
            "no",
            "off",
        )
    harakiri = number("harakiri")
    if harakiri is not None:
        spec.timeout = float(harakiri)
    if "https" in options or "https-socket" in options:
        spec.https = True


def _uwsgi_ini(path: Path, spec: ServerSpec) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    text = path.read_text(encoding="utf-8")
    parser.read_string(text, str(path))
    if not parser.has_section("uwsgi"):
        raise ServerSpecError(f"{path}: no [uwsgi] section")
    options = dict(parser.items("uwsgi"))
    for number, line in enumerate(text.splitlines(), 1):
        match = re.match(r"\s*([A-Za-z0-9_-]+)\s*[=:]", line)
        if match:
            spec.lines.setdefault(match.group(1).lower(), number)
    return options


def _finish_uwsgi(spec: ServerSpec, options: dict[str, str]) -> ServerSpec:
    _uwsgi_options(spec, options)
    if spec.threads is not None and spec.threads > 1:
        spec.enable_threads = True  # --threads implies --enable-threads
    if spec.timeout is None:
        spec.timeout = 0.0  # uWSGI has no harakiri unless asked
    return spec


def _uwsgi_command(args: list[str], spec: ServerSpec, cwd: Path) -> ServerSpec:
    options: dict[str, str] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-"):
            continue
        key, sep, value = arg.lstrip("-").partition("=")
        if not sep:
            if index < len(args) and not args[index].startswith("-"):
                value = args[index]
                index += 1
            else:
                value = "true"
        if key == "ini":
            path = cwd / value
            spec.file = str(value)
            options.update(_uwsgi_ini(path, spec))
        else:
            options[key] = value
    return _finish_uwsgi(spec, options)


def parse(value: str, *, cwd: str | os.PathLike[str] | None = None) -> ServerSpec:
    """The :class:`ServerSpec` of a command line or configuration file.

    :raises ServerSpecError: for a server this doctor does not know.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    path = base / value
    if path.is_file():
        if path.suffix == ".ini":
            spec = ServerSpec("uwsgi", file=value)
            return _finish_uwsgi(spec, _uwsgi_ini(path, spec))
        if path.suffix == ".py":
            spec = ServerSpec("gunicorn", file=value)
            _gunicorn_file(path, spec)
            return _finish_gunicorn(spec)
        raise ServerSpecError(
            f"{value}: expected a gunicorn config (.py) or a uWSGI .ini file"
        )
    try:
        argv = shlex.split(value)
    except ValueError as exc:
        raise ServerSpecError(f"--server {value!r}: {exc}") from None
    if not argv:
        raise ServerSpecError("--server is empty")
    program = os.path.basename(argv[0])
    rest = argv[1:]
    if re.fullmatch(r"python[0-9.]*", program):
        if len(rest) >= 2 and rest[0] == "-m":
            program, rest = rest[1], rest[2:]
        elif rest and rest[0].endswith(".py"):
            return ServerSpec("werkzeug", workers=1, threads=None)
    if program == "flask":
        if "run" in rest:
            return ServerSpec("werkzeug", workers=1, threads=None)
        raise ServerSpecError(f"--server {value!r}: not a server command")
    if program == "gunicorn":
        try:
            known = parse_gunicorn_args(rest)
        except ValueError as exc:
            raise ServerSpecError(f"--server {value!r}: {exc}") from None
        spec = ServerSpec("gunicorn")
        if known.config:
            config = base / known.config
            if not config.is_file():
                raise ServerSpecError(f"gunicorn config {known.config!r} not found")
            spec.file = known.config
            _gunicorn_file(config, spec)
        for name in ("workers", "worker_class", "threads", "timeout", "certfile"):
            given = getattr(known, name)
            if given is not None:
                spec.lines.pop(name, None)
                _set_gunicorn(spec, name, given, unknown=False)
        return _finish_gunicorn(spec)
    if program in ("uwsgi", "pyuwsgi"):
        return _uwsgi_command(rest, ServerSpec("uwsgi"), base)
    if program in ("waitress-serve", "waitress"):
        threads = 4  # waitress's default
        for index, arg in enumerate(rest):
            if arg.startswith("--threads="):
                threads = int(arg.split("=", 1)[1])
            elif arg == "--threads" and index + 1 < len(rest):
                threads = int(rest[index + 1])
        return ServerSpec("waitress", workers=1, threads=threads, timeout=0.0)
    raise ServerSpecError(
        f"--server {value!r}: gunicorn, uwsgi, waitress-serve, flask run or "
        "python FILE.py expected, or a gunicorn .py / uWSGI .ini file"
    )


def check(
    spec: ServerSpec, runtime: RuntimeResult, static: StaticResult
) -> list[Finding]:
    """The server checks (DIAG013, DIAG024-DIAG029)."""
    findings: list[Finding] = []

    def add(check_id: str, message: str, option: str | None = None) -> None:
        line = spec.lines.get(option) if option else None
        findings.append(Finding.of(check_id, message, file=spec.file, line=line))

    if spec.server == "werkzeug":
        add(
            "DIAG013",
            "the server command runs the development server: one process, "
            "not made for traffic, and app.run()'s options only apply there",
        )
        return findings
    workers_key = "processes" if spec.server == "uwsgi" else "workers"
    if runtime.debugger and (spec.workers is None or spec.workers > 1):
        count = "an unknown number of" if spec.workers is None else spec.workers
        add(
            "DIAG024",
            f"a debugger is on and the server runs {count} worker processes: "
            "its tracebacks live in one process, so the next request (another "
            "worker) cannot find them",
            workers_key,
        )
    own_calls = [f for f in static.findings if f.id in ("DIAG020", "DIAG021")]
    profile = spec.profile
    if profile.capacity == 1:
        model = profile.describe()
        if own_calls:
            places = ", ".join(f.location for f in own_calls)
            add(
                "DIAG025",
                f"{model} serves one request at a time, and the app calls back "
                f"into its own URLs ({places}): those requests deadlock",
                workers_key,
            )
        else:
            add(
                "DIAG026",
                f"{model} serves one request at a time: a request that calls "
                "back into this server waits forever",
                workers_key,
            )
    debugging = runtime.debugger or runtime.pdb or "DIAG022" in static.ids()
    timeout_key = "harakiri" if spec.server == "uwsgi" else "timeout"
    kills = spec.server == "uwsgi" or spec.worker_class == "sync"
    if (
        debugging
        and kills
        and spec.timeout is not None
        and 0 < spec.timeout < DEBUG_TIMEOUT
    ):
        add(
            "DIAG027",
            f"a debugger or breakpoint is in use and the worker timeout is "
            f"{spec.timeout:g} s: the server kills the worker in the middle of "
            "the debugging session (502/504)",
            timeout_key,
        )
    if spec.server == "uwsgi" and not spec.enable_threads:
        add(
            "DIAG028",
            "uWSGI runs without enable-threads: no Python thread the app or "
            "flask_diag starts ever runs",
            "enable-threads",
        )
    if spec.timeout == 0 and spec.server in ("uwsgi", "gunicorn"):
        add(
            "DIAG029",
            "the worker has no timeout: a stuck request holds its worker "
            "until the server is restarted",
            timeout_key,
        )
    return findings
