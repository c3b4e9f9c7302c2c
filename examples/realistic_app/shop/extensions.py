"""The extensions, created unbound and set up in the factory."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy

from flask_diag import Diag

db = SQLAlchemy()
diag = Diag()
diag.map_exception(LookupError, 404, code="not_found")
