"""Pitfall 1 in the source: where an app's module sets its secret key only
under ``if __name__ == "__main__":``.

Shared by the error envelope's hint and the teardown checks' start-up
finding; the module is parsed once (``ast``, nothing runs)::

    site = secret_key_site(flask_app)  # ("app.py", 49), or None
"""

from __future__ import annotations

import ast
import functools
import os
import sys

__all__ = [
    "is_no_secret_key",
    "main_only_secret_key",
    "secret_key_hint",
    "secret_key_site",
]


def secret_key_site(flask_app: object | None) -> tuple[str, int] | None:
    """:func:`main_only_secret_key` for the module of ``flask_app``."""
    module = sys.modules.get(getattr(flask_app, "import_name", None) or "")
    path = getattr(module, "__file__", None)
    return main_only_secret_key(path) if isinstance(path, str) else None


_CONFIG_LOADERS = frozenset(
    {"from_object", "from_pyfile", "from_envvar", "from_file", "from_prefixed_env"}
)


@functools.lru_cache(maxsize=64)
def main_only_secret_key(path: str) -> tuple[str, int] | None:
    """``(file, line)`` where the module at ``path`` sets the secret key
    under ``if __name__ == "__main__":``, when it sets (or may set, through
    a config loader) none anywhere else; otherwise ``None``.

    Parsed once per file (cached), on the first error that needs it.
    """
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    under_main: list[int] = []
    elsewhere: list[int] = []

    def visit(node: ast.AST, in_main: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_main_test(child.test):
                for stmt in child.body:
                    _check(stmt, True)
                    visit(stmt, True)
                for stmt in child.orelse:
                    _check(stmt, in_main)
                    visit(stmt, in_main)
                continue
            _check(child, in_main)
            visit(child, in_main)

    def _check(node: ast.AST, in_main: bool) -> None:
        kind = _sets_secret_key(node)
        if kind == "sets":
            (under_main if in_main else elsewhere).append(getattr(node, "lineno", 0))
        elif kind == "may" and not in_main:
            elsewhere.append(getattr(node, "lineno", 0))

    visit(tree, False)
    if not under_main or elsewhere:
        return None
    try:
        where = os.path.relpath(path)
    except ValueError:
        where = os.path.basename(path)
    if where.startswith(".."):
        where = os.path.basename(path)
    return where, min(under_main)


def is_main_test(test: ast.expr) -> bool:
    """Whether ``test`` is ``__name__ == "__main__"`` (either way round)."""
    if not isinstance(test, ast.Compare) or len(test.ops) != 1:
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    mains = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(mains) == 1


def _is_secret_key_target(target: ast.expr) -> bool:
    if isinstance(target, ast.Attribute):
        return target.attr == "secret_key"
    if isinstance(target, ast.Subscript):
        key = target.slice
        return isinstance(key, ast.Constant) and key.value == "SECRET_KEY"
    if isinstance(target, (ast.Tuple, ast.List)):
        return any(_is_secret_key_target(e) for e in target.elts)
    return False


def _sets_secret_key(node: ast.AST) -> str | None:
    """``"sets"`` when ``node`` sets the key, ``"may"`` when it loads config
    that could, else ``None``."""
    if isinstance(node, ast.Assign):
        if any(_is_secret_key_target(target) for target in node.targets):
            return "sets"
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        if _is_secret_key_target(node.target):
            return "sets"
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        name = node.func.attr
        if name in _CONFIG_LOADERS:
            return "may"
        if name in ("update", "from_mapping", "setdefault"):
            if any(k.arg == "SECRET_KEY" or k.arg is None for k in node.keywords):
                return "sets"
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and arg.value == "SECRET_KEY":
                    return "sets"
                if isinstance(arg, ast.Dict) and any(
                    isinstance(k, ast.Constant) and k.value == "SECRET_KEY"
                    for k in arg.keys
                ):
                    return "sets"
    return None


_NO_SECRET_KEY = "session is unavailable because no secret key was set"


def is_no_secret_key(exc: object) -> bool:
    """Whether ``exc`` is Flask's "The session is unavailable because no
    secret key was set" (its wording wrapped or not)."""
    return isinstance(exc, RuntimeError) and _NO_SECRET_KEY in " ".join(
        str(exc).split()
    )


def secret_key_hint(flask_app: object | None) -> str:
    """Pitfall 1: what to say about that error, naming the file and line when
    the app's module sets the key only under ``if __name__ == "__main__":``
    (the error envelope's ``hint``, the teardown check's finding)."""
    site = secret_key_site(flask_app)
    if site is not None:
        where, line = site
        return (
            f"The secret key is set only under 'if __name__ == \"__main__\":' "
            f"({where}, line {line}). A WSGI server such as gunicorn imports the"
            " module without running that block, so the app has no secret key"
            " and flask.session fails. Set it when the module is imported, e.g."
            ' app.secret_key = os.environ["SECRET_KEY"].'
        )
    return (
        "No secret key is set, and flask.session needs one. Set app.secret_key"
        " (or SECRET_KEY in app.config) when the module is imported, e.g. from"
        " an environment variable; code under 'if __name__ == \"__main__\":' does"
        " not run under gunicorn or uWSGI."
    )
