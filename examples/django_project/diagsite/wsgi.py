"""WSGI entry point: Django's application wrapped in the flask_diag stack.

Run it from ``examples/django_project``::

    gunicorn -b 127.0.0.1:8000 diagsite.wsgi:application
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

import flask_diag.logging
from flask_diag import wrap

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "diagsite.settings")
flask_diag.logging.configure()  # JSON lines on stderr

application = wrap(get_wsgi_application())
