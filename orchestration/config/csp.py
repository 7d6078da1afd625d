"""The Content-Security-Policy header (Django 5.2 has none of its own).

The policy is `settings.BATON_CSP`, read per response so tests and deployments can change it.
Baton's pages use no inline script, inline style or style attribute, so the policy can refuse
all three: an injected `<script>` or `onclick=` would not run even if escaping ever failed.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

HEADER = "Content-Security-Policy"


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        policy = str(getattr(settings, "BATON_CSP", "") or "")
        if not policy or HEADER in response.headers:
            return response
        if settings.DEBUG and response.status_code >= 400:
            # Django's debug error pages are built from inline script and style; with the policy
            # they would be unreadable exactly when a developer needs them.
            return response
        response.headers[HEADER] = policy
        return response
