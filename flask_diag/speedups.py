"""Which modules run compiled, and the switch that turns them off.

The modules every request runs through are compiled to C by Cython when
flask_diag is installed with a C compiler at hand, from their Python
sources (as MarkupSafe ships its C speedups): the same code, without the
interpreter's cost per instruction. A ``.pxd`` file next to a module declares,
for the compiler only, the fields of its per-request classes, which compiled
are extension types with their fields in a C struct. Without a compiler the
install keeps the pure-Python package, which behaves the same, only slower.

Which modules run compiled here::

    >>> import flask_diag.speedups
    >>> flask_diag.speedups.compiled_modules()
    ('closing', 'context', 'errors', 'sentry', 'tagging')

``FLASK_DIAG_SPEEDUPS=off`` in the environment makes a process import the
Python sources instead, e.g. to step through flask_diag with a debugger (a
compiled function has no Python frame to step into)::

    $ FLASK_DIAG_SPEEDUPS=off gunicorn app:app

The switch is read once, when ``flask_diag`` is first imported, and an
invalid value fails then, naming the variable and the accepted values.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import typing as t
from collections.abc import Mapping
from collections.abc import Sequence

from .settings import OPTIONS
from .settings import Settings

if t.TYPE_CHECKING:
    from types import ModuleType

__all__ = ["COMPILED_MODULES", "compiled_modules", "enabled", "python_defaults"]

#: The modules ``setup.py`` compiles: those on every request's path. Not the
#: ones that find themselves by walking stack frames (``loopback``,
#: ``teardown``, ``server``): a compiled function makes no Python frame.
COMPILED_MODULES = ("closing", "context", "errors", "sentry", "tagging")

_PACKAGE = __name__.rpartition(".")[0]


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """The ``speedups`` setting as the environment gives it.

    :raises ~flask_diag.exceptions.DiagConfigError: when
        ``FLASK_DIAG_SPEEDUPS`` is neither on nor off.
    """
    env = os.environ if environ is None else environ
    option = OPTIONS["speedups"]
    raw = env.get(option.env)
    if raw is None:
        return True
    return bool(Settings.load(environ={option.env: raw}).speedups)


def compiled_modules() -> tuple[str, ...]:
    """The modules of :data:`COMPILED_MODULES` this process runs compiled
    (imported from an extension module, not from their ``.py`` source)."""
    found = []
    for name in COMPILED_MODULES:
        module: ModuleType | None = sys.modules.get(f"{_PACKAGE}.{name}")
        origin = getattr(module, "__file__", None) or ""
        if module is not None and not origin.endswith(".py"):
            found.append(name)
    return tuple(found)


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a class statement


def python_defaults(cls: type, **defaults: object) -> None:
    """Give ``cls`` class-level defaults when it runs from its Python source.

    A per-request object whose rarely used fields are class attributes costs
    nothing for them on the common request. Compiled, such a class is an
    extension type whose fields (declared in its module's ``.pxd``) start as
    ``None`` and ``False`` by themselves, and a class attribute of the same
    name would not compile: hence defaults set after the class, here, and
    only for a class of the Python source::

        class _TaggedResponse(RequestInfo):
            status: str | None

        python_defaults(_TaggedResponse, status=None)
    """
    if cls.__flags__ & _HEAP_TYPE:
        for name, value in defaults.items():
            setattr(cls, name, value)


class _PythonSources(importlib.abc.MetaPathFinder):
    """Finds flask_diag's modules as ``.py`` sources, never their compiled
    extension modules (which Python's own finder prefers)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != _PACKAGE or name not in COMPILED_MODULES or not path:
            return None
        for entry in path:
            source = os.path.join(entry, f"{name}.py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def install_switch(environ: Mapping[str, str] | None = None) -> None:
    """Called by ``flask_diag/__init__.py`` before anything else is imported:
    with ``FLASK_DIAG_SPEEDUPS=off``, the Python sources are imported."""
    if not enabled(environ) and not any(
        isinstance(finder, _PythonSources) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _PythonSources())
