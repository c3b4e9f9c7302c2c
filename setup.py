"""Build flask_diag, with its optional compiled speedups.

The modules every request runs through (``closing``, ``context``,
``errors``, ``sentry``, ``tagging``) are compiled by Cython from their Python
sources (and the ``.pxd`` declarations beside some of them), as MarkupSafe
ships its C speedups: the same code, without the interpreter's cost per
instruction. The package is complete without them. A
build that cannot compile them (no C compiler, no Python headers) installs
the pure-Python package and says so; ``FLASK_DIAG_SPEEDUPS=off`` skips
them on purpose (the same variable makes an installed flask_diag import its
Python sources).

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


def _warn(message: str) -> None:
    print(f"flask_diag: {message}; installing the pure-Python package", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """``build_ext`` whose failures leave the pure-Python modules in place."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all
            _warn(f"the speedups were not compiled ({exc})")

    def build_extension(self, ext: t.Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # this one failed: its .py stays in use
            _warn(f"{ext.name} was not compiled ({exc})")


def extensions() -> list[Extension]:
    if os.environ.get("FLASK_DIAG_SPEEDUPS", "on").strip().lower() in _OFF:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _warn("Cython is not available")
        return []
    modules = [
        Extension(f"flask_diag.{name}", [f"flask_diag/{name}.py"])
        for name in COMPILED_MODULES
    ]
    return list(
        cythonize(
            modules,
            build_dir="build/cython",
            quiet=True,
            compiler_directives={
                "language_level": 3,
                # Annotations are for mypy: Cython must not turn them into
                # run-time type checks (the compiled code behaves as the
                # source does).
                "annotation_typing": False,
                "binding": True,
            },
        )
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
