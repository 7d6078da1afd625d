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


class MethodNotAllowedPageMiddleware:
    """A page's address opened with the wrong method (a bookmarked or typed action URL such as
    /runs/1/cancel/, which only takes a form's POST) gets a page that says so instead of the
    blank body of Django's require_POST. The API and the webhooks answer for themselves."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code != 405 or response.content or request.path.startswith(("/api/", "/hooks/")):
            return response
        from django.template.loader import render_to_string

        page = HttpResponse(render_to_string("405.html", {"method": request.method[:10] if request.method else ""}), status=405)
        if response.has_header("Allow"):
            page["Allow"] = response["Allow"]
        return page
