"""Refuse an oversized request body before anything reads it, with a message naming the limit.

Django would refuse it too (DATA_UPLOAD_MAX_MEMORY_SIZE), but only when the body is first read
(by the CSRF check, in the middle of the middleware), as a bare "400 Bad Request" page.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.html import escape


class RequestSizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            message = (
                f"the request body is {length:,} bytes; at most {limit:,} are accepted (BATON_MAX_REQUEST_BYTES)"
            )
            if request.path.startswith("/api/") or "json" in request.headers.get("Accept", ""):
                return JsonResponse({"error": "too_large", "detail": message, "fields": {"body": message}}, status=413)
            return HttpResponse(f"<p>{escape(message[0].upper() + message[1:])}.</p>", status=413)
        return self.get_response(request)
