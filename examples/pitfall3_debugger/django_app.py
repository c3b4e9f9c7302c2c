"""Pitfall 3 for Django: the same failing view, behind the flask_diag gate.

Django turns every exception into its own 500 page before any WSGI
middleware sees it; ``DEBUG_PROPAGATE_EXCEPTIONS = True`` lets it through to
the debugger (with ``DEBUG = False``: Django's own technical 500 page stays
off). Requests the gate does not admit still get an answer: the flask_diag
error envelope around it catches the exception. Run it::

    FLASK_DIAG_DEBUGGER=on gunicorn --worker-class sync --workers 1 \\
        --timeout 3600 -b 127.0.0.1:8000 django_app:application

and open http://127.0.0.1:8000/orders/42/total.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest
from django.http import JsonResponse
from django.urls import path

import flask_diag.logging
from flask_diag import wrap

settings.configure(
    DEBUG=False,
    # The one line the debugger needs in a Django project's settings.
    DEBUG_PROPAGATE_EXCEPTIONS=True,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "dev-only-not-secret-example"),
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
)

ORDERS = {
    41: [("coffee", 2, 3.5), ("cake", 1, 4.0)],
    42: [("coffee", 1, 3.5), ("voucher", 1, None)],  # the bad one
}


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"orders": sorted(ORDERS)})


def order_total(request: HttpRequest, order_id: int) -> JsonResponse:
    total = 0.0
    for _name, quantity, price in ORDERS[order_id]:
        total += quantity * price  # TypeError for the voucher: price is None
    return JsonResponse({"order": order_id, "total": total})


urlpatterns = [
    path("", index),
    path("orders/<int:order_id>/total", order_total),
]

flask_diag.logging.configure()  # JSON lines on stderr
application = wrap(get_wsgi_application())
