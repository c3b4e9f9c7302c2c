"""Settings of the smallest Django project flask_diag runs under: no
database, no apps, two views."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "dev-only-not-secret-flask-diag-example"
)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "diagsite.urls"
WSGI_APPLICATION = "diagsite.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
