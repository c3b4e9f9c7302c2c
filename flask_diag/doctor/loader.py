"""Import a WSGI app the way gunicorn does.

``MODULE:APP`` (the string gunicorn and uWSGI take): the module is imported
with :func:`importlib.import_module`, never run as ``__main__``, with the
working directory (or ``--chdir``) first on ``sys.path``. ``APP`` is an
attribute name, or a call of a factory with literal arguments
(``create_app()``, ``create_app('prod')``), as gunicorn resolves it; without
``:APP`` the names ``app`` and ``application`` are tried, then the
factories ``create_app`` and ``make_app`` (Flask's CLI does the same)::

    loaded = load("myproject.wsgi:app", chdir="/srv/myproject")
    loaded.flask_app   # the Flask app found in the WSGI chain, if any
    loaded.files       # the app's own source files, for the static checks
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
import sys
import sysconfig
import types
import typing as t
from pathlib import Path

__all__ = ["LoadError", "LoadedApp", "chain", "find_flask", "load", "own_files"]

_DEFAULT_NAMES = ("app", "application")
_FACTORIES = ("create_app", "make_app")


class LoadError(Exception):
    """The app cannot be imported or found; the message says why."""


@dataclasses.dataclass
class LoadedApp:
    """The result of :func:`load`."""

    #: The object the server would call.
    wsgi: t.Any
    #: The Flask app in that chain (``None`` for another framework).
    flask_app: t.Any
    #: The directory the app's code lives in (its top-level package or the
    #: module's directory): where deployment files are looked for.
    root: Path
    #: The app's own Python files.
    files: list[Path]


def _resolve(module: types.ModuleType, expr: str) -> t.Any:
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise LoadError(f"{expr!r} is not an attribute name or a call") from None
    args: list[t.Any] = []
    kwargs: dict[str, t.Any] = {}
    if isinstance(node, ast.Call):
        try:
            args = [ast.literal_eval(a) for a in node.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:
            raise LoadError(
                f"{expr!r}: a factory's arguments must be literals"
            ) from None
        name_node: ast.expr = node.func
    else:
        name_node = node
    if not isinstance(name_node, ast.Name):
        raise LoadError(f"{expr!r} is not an attribute name or a call")
    try:
        target = getattr(module, name_node.id)
    except AttributeError:
        raise LoadError(
            f"module {module.__name__!r} has no attribute {name_node.id!r}"
        ) from None
    if isinstance(node, ast.Call):
        target = target(*args, **kwargs)
    return target


def _default_app(module: types.ModuleType) -> t.Any:
    for name in _DEFAULT_NAMES:
        if callable(getattr(module, name, None)):
            return getattr(module, name)
    for name in _FACTORIES:
        factory = getattr(module, name, None)
        if callable(factory):
            return factory()
    raise LoadError(
        f"module {module.__name__!r} has no 'app' or 'application' and no "
        "'create_app' factory: name it, as in MODULE:APP"
    )


def chain(wsgi: t.Any, limit: int = 30) -> t.Iterator[t.Any]:
    """``wsgi`` and the apps it wraps, outermost first (at most ``limit``,
    stopping at a cycle)."""
    seen: set[int] = set()
    obj = wsgi
    while obj is not None and id(obj) not in seen and len(seen) < limit:
        seen.add(id(obj))
        yield obj
        obj = next_in_chain(obj)


def find_flask(wsgi: t.Any) -> t.Any:
    """The Flask app in a chain of WSGI wrappers, or ``None``."""
    from flask import Flask

    return next((obj for obj in chain(wsgi) if isinstance(obj, Flask)), None)


def next_in_chain(obj: t.Any) -> t.Any:
    """The app a WSGI wrapper wraps (``.app``, ``.wsgi_app``...), if any; for
    a bound method such as ``flask_app.wsgi_app``, its app."""
    for name in (
        "wsgi_app",
        "app",
        "application",
        "wrapped",
        "__wrapped__",
        "__self__",
    ):
        inner = getattr(obj, name, None)
        if inner is not None and inner is not obj and callable(inner):
            return inner
    return None


def _excluded_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    dirs = {Path(paths[k]).resolve() for k in keys if paths.get(k)}
    dirs.add(Path(__file__).resolve().parent.parent)  # flask_diag itself
    return sorted(dirs)


def own_files(
    module: types.ModuleType, extra: t.Iterable[str] = ()
) -> tuple[Path, list[Path]]:
    """The root directory and the imported source files of the app's code.

    The root is the directory of the module's top-level package (or of the
    module itself when it is not in a package). The files are the modules
    under it that are imported now (what the server would run), never
    site-packages, the standard library or flask_diag.
    """
    top_name = module.__name__.split(".")[0]
    top = sys.modules.get(top_name, module)
    top_file = getattr(top, "__file__", None)
    if top_file is None:
        raise LoadError(f"module {module.__name__!r} has no source file")
    top_path = Path(top_file).resolve()
    root = top_path.parent
    excluded = _excluded_dirs()
    names = {module.__name__, top_name, *extra}
    files: set[Path] = set()
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None)
        if not path or not path.endswith(".py"):
            continue
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(root) and name not in names:
            continue
        if any(resolved.is_relative_to(d) for d in excluded):
            continue
        if any(part in ("site-packages", "dist-packages") for part in resolved.parts):
            continue
        files.add(resolved)
    return root, sorted(files)


def load(spec: str, *, chdir: str | os.PathLike[str] | None = None) -> LoadedApp:
    """Import ``MODULE[:APP]`` like gunicorn and find its Flask app.

    :raises LoadError: when the module or the app cannot be found. Exceptions
        raised by the app's own import code propagate (the caller reports
        them; a :class:`~flask_diag.DiagConfigError` is a finding).
    """
    directory = (Path(chdir) if chdir is not None else Path.cwd()).resolve()
    if chdir is not None:
        try:
            os.chdir(directory)
        except OSError as exc:
            raise LoadError(f"--chdir {chdir}: {exc.strerror}") from None
    path_entry = str(directory)
    if path_entry not in sys.path:
        sys.path.insert(0, path_entry)
    module_name, _, expr = spec.partition(":")
    if not module_name or module_name.endswith(".py") or "/" in module_name:
        raise LoadError(
            f"{spec!r} is not MODULE:APP (a dotted module name, as gunicorn "
            "takes it: 'app:app', 'myproject.wsgi:application')"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise LoadError(
                f"no module named {exc.name!r} (looked in {path_entry} and "
                "sys.path; use --chdir)"
            ) from None
        raise
    wsgi = _resolve(module, expr) if expr else _default_app(module)
    if not callable(wsgi):
        raise LoadError(f"{spec!r} is not a WSGI callable: {type(wsgi).__name__}")
    flask_app = find_flask(wsgi)
    extra = [flask_app.import_name] if flask_app is not None else []
    root, files = own_files(module, extra)
    return LoadedApp(wsgi, flask_app, root, files)
