"""The deployment doctor: ``flask diag check`` and ``python -m flask_diag check``.

It imports the app the way gunicorn does and runs three kinds of checks,
each finding with a stable id (``DIAG001``...), a level, ``file:line`` and
the fix (every id is listed on the docs page ``doctor``):

- runtime checks on the imported app (:mod:`.runtime_checks`),
- static checks on the app's own source, with :mod:`ast` (:mod:`.static_checks`,
  :mod:`.deploy_files`),
- server checks on a given command line or configuration (:mod:`.server_checks`).

.. code-block:: python

    from flask_diag.doctor import check_import

    report = check_import("app:app", server="gunicorn -w 4 app:app")
    report.exit_code      # 1 when any error was found
    print(report.as_json())
"""

from __future__ import annotations

import importlib.util
import os
import sys
import typing as t
from collections.abc import Iterable
from pathlib import Path

from ..exceptions import DiagConfigError
from . import deploy_files
from . import runtime_checks
from . import server_checks
from . import static_checks
from .findings import CHECKS
from .findings import Finding
from .loader import find_flask
from .loader import load
from .loader import LoadError
from .loader import own_files
from .report import Report
from .server_checks import ServerSpecError

__all__ = [
    "CHECKS",
    "Finding",
    "LoadError",
    "Report",
    "ServerSpecError",
    "check_app",
    "check_import",
]


def _display(path: Path) -> str:
    """A path relative to the working directory when inside it."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def _finish(
    target: str,
    findings: list[Finding],
    ignore: Iterable[str],
) -> Report:
    # As given on the command line: repeated, or comma-separated.
    ignored = {
        part.strip().upper() for value in ignore for part in value.split(",")
    } - {""}
    unknown = ignored - set(CHECKS)
    if unknown:
        raise ValueError(
            f"unknown check id(s) to ignore: {', '.join(sorted(unknown))}; "
            f"known: DIAG001-{max(CHECKS)}"
        )
    kept = [f for f in findings if f.id not in ignored]
    return Report(target, kept, ignored=len(findings) - len(kept))


def _check(
    target: str,
    wsgi: t.Any,
    flask_app: t.Any,
    root: Path,
    files: list[Path],
    *,
    server: str | None,
    https: bool,
    ignore: Iterable[str],
    extra: list[Finding] | None = None,
) -> Report:
    spec = server_checks.parse(server) if server else None
    static = static_checks.scan(files, _display)
    findings = list(extra or [])
    findings += static.findings
    findings += deploy_files.scan({root, Path.cwd()}, _display)
    runtime = runtime_checks.RuntimeResult()
    if wsgi is not None:
        runtime = runtime_checks.check(
            wsgi, flask_app, static, https=https or bool(spec and spec.https)
        )
        findings += runtime.findings
    if spec is not None:
        findings += server_checks.check(spec, runtime, static)
    return _finish(target, findings, ignore)


def check_import(
    spec: str,
    *,
    chdir: str | os.PathLike[str] | None = None,
    server: str | None = None,
    https: bool = False,
    ignore: Iterable[str] = (),
) -> Report:
    """Import ``MODULE:APP`` like gunicorn and check it.

    :raises LoadError: the app cannot be found or imported.
    :raises ServerSpecError: ``server`` cannot be understood.
    :raises ValueError: an unknown id in ``ignore`` (ids, each item may be
        comma-separated: ``["DIAG001,DIAG011"]``).
    """
    try:
        loaded = load(spec, chdir=chdir)
    except DiagConfigError as exc:
        # Diag(app) at import refused the settings: that is the finding; the
        # source is still checked.
        finding = Finding.of("DIAG006", f"flask_diag refuses to start: {exc}")
        module_spec = importlib.util.find_spec(spec.partition(":")[0])
        files = [Path(module_spec.origin)] if module_spec and module_spec.origin else []
        root = files[0].parent if files else Path.cwd()
        return _check(
            spec,
            None,
            None,
            root,
            files,
            server=server,
            https=https,
            ignore=ignore,
            extra=[finding],
        )
    return _check(
        spec,
        loaded.wsgi,
        loaded.flask_app,
        loaded.root,
        loaded.files,
        server=server,
        https=https,
        ignore=ignore,
    )


def check_app(
    app: t.Any,
    *,
    server: str | None = None,
    https: bool = False,
    ignore: Iterable[str] = (),
) -> Report:
    """Check an app that is already imported (``flask diag check``)."""
    flask_app = find_flask(app)
    import_name = flask_app.import_name if flask_app is not None else app.__module__
    module = sys.modules.get(import_name)
    if module is None:
        raise LoadError(f"the app's module {import_name!r} is not imported")
    root, files = own_files(module)
    return _check(
        import_name,
        app,
        flask_app,
        root,
        files,
        server=server,
        https=https,
        ignore=ignore,
    )
