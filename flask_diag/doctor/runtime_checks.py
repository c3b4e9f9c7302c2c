"""Runtime checks: the imported app object, as the server would serve it.

Nothing is served and no request is made: the checks read the app's
configuration, walk its chain of WSGI wrappers and load flask_diag's
settings the way :class:`~flask_diag.Diag` would::

    result = check(loaded.wsgi, loaded.flask_app, static, https=True)
    result.findings     # DIAG001-DIAG010
    result.debugging    # a debugger or remote pdb is on (for server checks)
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

from ..debugger import check_startup
from ..exceptions import DiagConfigError
from ..secret_key import secret_key_site
from ..settings import Settings
from .findings import Finding
from .loader import chain
from .static_checks import StaticResult

__all__ = ["RuntimeResult", "check"]

_PLACEHOLDERS = frozenset(
    {
        "dev",
        "development",
        "secret",
        "secret-key",
        "secret_key",
        "secretkey",
        "changeme",
        "change-me",
        "change_me",
        "your-secret-key",
        "default",
        "test",
        "testing",
        "password",
        "key",
    }
)
#: Shorter keys are weak: ``secrets.token_hex()`` gives 64 characters.
MIN_SECRET_LENGTH = 24


@dataclasses.dataclass
class RuntimeResult:
    """What :func:`check` found."""

    findings: list[Finding] = dataclasses.field(default_factory=list)
    #: A debugger (werkzeug's or flask_diag's) is reachable.
    debugger: bool = False
    #: flask_diag's remote pdb is on.
    pdb: bool = False


def _where(lines: list[tuple[str, int]]) -> tuple[str | None, int | None]:
    return lines[0] if lines else (None, None)


def weak_secret(key: str | bytes) -> str | None:
    """Why ``key`` is weak, or ``None``. The key itself is never shown."""
    text = key.decode("latin-1") if isinstance(key, bytes) else str(key)
    if text.strip().lower() in _PLACEHOLDERS or text.lower().startswith(
        ("dev-", "dev_", "change", "your-")
    ):
        return "it is a placeholder"
    if len(set(text)) < 5:
        return "it has fewer than 5 different characters"
    if len(text) < MIN_SECRET_LENGTH:
        return f"it is {len(text)} characters long (use at least {MIN_SECRET_LENGTH})"
    return None


def _debugged_application(wsgi: t.Any) -> bool:
    """A bare werkzeug debugger is in the chain. flask_diag's gated debugger
    is not one: the gate keeps it in ``.debugger``, which the walk does not
    follow (it is reported as DIAG005)."""
    from werkzeug.debug import DebuggedApplication

    return any(isinstance(obj, DebuggedApplication) for obj in chain(wsgi))


def _settings(flask_app: t.Any) -> Settings:
    diag = flask_app.extensions.get("diag") if flask_app is not None else None
    if diag is not None and hasattr(diag, "settings_for"):
        settings: Settings = diag.settings_for(flask_app)
        return settings
    config = flask_app.config if flask_app is not None else None
    return Settings.load(environ=os.environ, config=config)


def check(
    wsgi: t.Any,
    flask_app: t.Any,
    static: StaticResult,
    *,
    https: bool = False,
) -> RuntimeResult:
    """The runtime checks of one app (``flask_app`` ``None`` for non-Flask)."""
    result = RuntimeResult()
    add = result.findings.append
    file, line = _where(static.flask_lines)

    if _debugged_application(wsgi):
        result.debugger = True
        dfile, dline = _where(static.debugger_lines)
        add(
            Finding.of(
                "DIAG004",
                "the WSGI app is wrapped in werkzeug's DebuggedApplication: "
                "whoever reaches it runs Python code in the worker",
                file=dfile or file,
                line=dline if dfile else line,
            )
        )
    if os.environ.get("WERKZEUG_DEBUG_PIN", "").strip().lower() == "off":
        add(
            Finding.of(
                "DIAG004",
                "WERKZEUG_DEBUG_PIN=off: werkzeug's debugger console needs no PIN",
            )
        )

    try:
        settings = _settings(flask_app)
    except DiagConfigError as exc:
        add(Finding.of("DIAG006", f"flask_diag refuses to start: {exc}"))
    else:
        if settings.enabled and settings.debugger:
            result.debugger = True
            try:
                check_startup(settings)  # the gate's own refusals
            except DiagConfigError as exc:
                add(Finding.of("DIAG006", f"flask_diag refuses to start: {exc}"))
            else:
                add(
                    Finding.of(
                        "DIAG005",
                        "FLASK_DIAG_DEBUGGER is on: a PIN-gated Python console "
                        f"for {settings.debugger_ttl:g} seconds after start-up",
                    )
                )
        result.pdb = settings.enabled and settings.pdb

    if flask_app is None:
        return result

    secret = flask_app.secret_key
    needs_secret = static.uses_session or any(
        name in flask_app.extensions for name in ("login_manager", "csrf")
    )
    if not secret and needs_secret:
        # The same analysis as the error envelope's hint for the 500 itself.
        site = secret_key_site(flask_app)
        sfile, sline = site if site is not None else (file, line)
        add(
            Finding.of(
                "DIAG001",
                "the app has no secret key once imported, and it uses the "
                "session: every request that writes it fails with a 500"
                + (" (the key is set only under __main__)" if site else ""),
                file=sfile,
                line=sline,
            )
        )
    elif secret:
        why = weak_secret(secret)
        if why:
            add(
                Finding.of(
                    "DIAG002",
                    f"the secret key is weak: {why}",
                    file=file,
                    line=line,
                )
            )
    if flask_app.debug:
        add(
            Finding.of(
                "DIAG003",
                "app.debug is on once imported: tracebacks (and with the "
                "development server, the debugger) for everybody",
                file=file,
                line=line,
            )
        )
    config = flask_app.config
    if config.get("TESTING"):
        add(
            Finding.of(
                "DIAG010",
                "TESTING is on: exceptions propagate instead of answering 500",
                file=file,
                line=line,
            )
        )
    https = https or config.get("PREFERRED_URL_SCHEME") == "https"
    if https and not config.get("SESSION_COOKIE_SECURE"):
        add(
            Finding.of(
                "DIAG007",
                "HTTPS deployment, but SESSION_COOKIE_SECURE is off: the "
                "session cookie is also sent over plain HTTP",
                file=file,
                line=line,
            )
        )
    if not config.get("SESSION_COOKIE_HTTPONLY", True):
        add(
            Finding.of(
                "DIAG008",
                "SESSION_COOKIE_HTTPONLY is off: scripts on the page can read "
                "the session cookie",
                file=file,
                line=line,
            )
        )
    if https and not config.get("SESSION_COOKIE_SAMESITE"):
        add(
            Finding.of(
                "DIAG009",
                "HTTPS deployment, but SESSION_COOKIE_SAMESITE is unset: "
                "other sites' forms send the session cookie along",
                file=file,
                line=line,
            )
        )
    return result
