"""Sphinx configuration of the flask_diag documentation.

Build (warnings are errors, as in ``scripts/test.sh``)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The build needs no network: intersphinx has no inventories to fetch.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# The local extension (``diag_settings``) and the checkout's own package, so
# autodoc documents the code next to these pages.
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

project = "flask_diag"
author = "the flask_diag authors"
copyright = "the flask_diag authors"
try:
    release = importlib.metadata.version("flask-diag")
except importlib.metadata.PackageNotFoundError:  # built from a bare checkout
    release = ""
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "diag_settings",
    "diag_checks",
]

root_doc = "index"
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- MyST (Markdown pages) ---------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc -----------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# -- intersphinx -------------------------------------------------------------
# Deliberately empty: the build must work offline (CI machines have no
# network), and an inventory that cannot be fetched is a warning, which -W
# turns into a failure.
intersphinx_mapping: dict[str, tuple[str, str | None]] = {}

# -- HTML --------------------------------------------------------------------
html_theme = "furo"
html_title = f"flask_diag {release}".strip()
