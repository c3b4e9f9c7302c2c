"""Views that fail in every way a Django app does."""

from __future__ import annotations

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import PermissionDenied
from django.core.exceptions import SuspiciousOperation
from django.http import HttpRequest
from django.http import HttpResponse
from django.http import JsonResponse
from django.views.decorators.http import require_GET


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n", content_type="text/plain")


def crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("db password=hunter2 at /srv/app/settings.py")


def missing_object(request: HttpRequest) -> HttpResponse:
    raise ObjectDoesNotExist("Car matching query does not exist.")


def forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied("no")


def suspicious(request: HttpRequest) -> HttpResponse:
    raise SuspiciousOperation("odd")


@require_GET
def get_only(request: HttpRequest) -> HttpResponse:
    return HttpResponse("got\n", content_type="text/plain")


def own_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"error": "invalid car", "field": "name"}, status=422)


def upload(request: HttpRequest) -> HttpResponse:
    # Reading a body over DATA_UPLOAD_MAX_MEMORY_SIZE raises RequestDataTooBig.
    return HttpResponse(f"{len(request.body)}\n", content_type="text/plain")
