from __future__ import annotations

import structlog
from django.http import HttpRequest
from django.http import HttpResponse
from django.http import JsonResponse

log = structlog.get_logger()


def hello(request: HttpRequest) -> HttpResponse:
    log.info("hello from django", seen_request_id=request.headers.get("X-Request-ID"))
    return HttpResponse("hello\n", content_type="text/plain")


def status(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"ok": True, "seen_request_id": request.headers.get("X-Request-ID")}
    )
