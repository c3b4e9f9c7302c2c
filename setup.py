"""Build flask_diag, with its optional compiled speedups.

The modules every request runs through (``closing``, ``context``,
``errors``, ``sentry``, ``tagging``) are compiled by Cython from their Python
sources (and the ``.pxd`` declarations beside some of them), as MarkupSafe
ships its C speedups: the same code, without the interpreter's cost per
instruction. The package is complete without them. A build that cannot
compile all of them (no C compiler, no Python headers, a Cython that refuses
the sources) installs the pure-Python package and says so: the compiled
modules depend on each other, so it is all of them or none.
``FLASK_DIAG_SPEEDUPS=off`` skips them on purpose (the same variable makes an
installed flask_diag import its Python sources).

Everything else about the package is in ``pyproject.toml``.
"""

from __future__ import annotations

import os
import sys
import typing as t

from setuptools import Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

#: ``flask_diag.speedups.COMPILED_MODULES`` (a test keeps the two equal; the
#: package itself cannot be imported here, its dependencies are not
#: installed in the build environment).
COMPILED_MODULES = ("closing", "context", "errors", "sentry", "tagging")

_OFF = ("0", "false", "no", "off")
_HERE = os.path.dirname(os.path.abspath(__file__))


def _warn(message: str) -> None:
    print(f"flask_diag: {message}; installing the pure-Python package", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """``build_ext`` that compiles all the speedups or none.

    Cython runs here, not when ``setup.py`` is loaded: an sdist or the
    package's metadata never needs it, and a Cython error falls back like a
    compiler error does.
    """

    #: Whether an extension failed to build: then none is kept.
    failed: bool

    def finalize_options(self) -> None:
        # Before setuptools' own: it prepares the extensions it is given.
        self.failed = False
        modules = self.distribution.ext_modules or []
        if modules:
            try:
                from Cython.Build import cythonize

                modules = list(
                    cythonize(
                        modules,
                        build_dir="build/cython",
                        # These sources' declarations, not those of another
                        # flask_diag on sys.path (an editable install).
                        include_path=[_HERE],
                        quiet=True,
                        compiler_directives={
                            "language_level": 3,
                            # Annotations are for mypy: Cython must not turn
                            # them into run-time type checks (the compiled
                            # code behaves as the source does).
                            "annotation_typing": False,
                            "binding": True,
                        },
                    )
                )
            except Exception as exc:  # no Cython, or it refused a source
                _warn(f"the speedups were not translated to C ({exc!r})")
                modules = []
        self.distribution.ext_modules = modules
        super().finalize_options()

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            _warn(f"the speedups were not compiled ({exc})")
            self.failed = True
        if self.failed:
            self._remove_outputs()

    def build_extension(self, ext: t.Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            _warn(f"{ext.name} was not compiled ({exc})")
            self.failed = True

    def _remove_outputs(self) -> None:
        """One module compiled without the others would not import (they
        share declarations at the C level): remove every one."""
        for ext in self.extensions:
            for path in {self.get_ext_fullpath(ext.name), self._inplace_path(ext)}:
                if os.path.exists(path):
                    os.remove(path)
        self.extensions = []  # nothing for the wheel to collect
        print("flask_diag: all speedups left out", file=sys.stderr)

    def _inplace_path(self, ext: t.Any) -> str:
        # ``pip install -e`` builds next to the sources.
        return os.path.join(_HERE, self.get_ext_filename(ext.name))


def _switched_off() -> bool:
    return os.environ.get("FLASK_DIAG_SPEEDUPS", "on").strip().lower() in _OFF


setup(
    # Switched off, no extension at all: a pure-Python wheel.
    ext_modules=[]
    if _switched_off()
    else [
        Extension(f"flask_diag.{name}", [f"flask_diag/{name}.py"])
        for name in COMPILED_MODULES
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
