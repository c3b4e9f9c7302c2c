"""Exceptions and warnings raised by flask_diag.

Problems found in *your* app are reported as subclasses of :class:`DiagWarning`,
so a test suite can turn them into errors::

    # pyproject.toml
    [tool.pytest.ini_options]
    filterwarnings = ["error::flask_diag.DiagWarning"]
"""

from __future__ import annotations

__all__ = ["DiagConfigError", "DiagWarning"]


class DiagConfigError(ValueError):
    """An invalid flask_diag setting, raised at start-up.

    The message names the variable (or config key, or keyword argument), the
    value that was given and the values that are accepted.
    """


class DiagWarning(Warning):
    """Base class of every problem flask_diag finds in the wrapped app."""
