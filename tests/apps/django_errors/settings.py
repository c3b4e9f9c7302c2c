"""Settings of the Django project the error envelope tests run: no
database, no templates (Django's stock error pages), a few views."""

from __future__ import annotations

import os

SECRET_KEY = "test-only-not-secret-flask-diag"
DEBUG = False
# ``on`` under gunicorn for the map_exception test: unhandled exceptions then
# leave Django and reach the envelope, as the docs recommend.
DEBUG_PROPAGATE_EXCEPTIONS = os.environ.get("DJANGO_PROPAGATE", "") == "on"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "django_errors.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
# Django's stock logging writes 500s to stderr only with DEBUG; keep the
# test output for what the tests print.
LOGGING_CONFIG = None
