"""The project's application in the flask_diag stack, for gunicorn:
``gunicorn django_errors.wsgi:application`` from ``tests/apps``."""

from __future__ import annotations

import os

from django.core.exceptions import ObjectDoesNotExist
from django.core.wsgi import get_wsgi_application

from flask_diag import wrap
from flask_diag.errors import map_exception

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_errors.settings")

application = wrap(get_wsgi_application())
map_exception(application, ObjectDoesNotExist, 404, code="not_found")
