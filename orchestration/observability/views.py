"""`/metrics` (Prometheus, behind a bearer token) and `/healthz` (no login: load balancers and
service managers ask it)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from orchestration.observability import health, metrics


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Unset BATON_METRICS_TOKEN: no such page (404). Otherwise the right bearer token or 401
    (none sent) / 403 (a wrong one), compared in constant time."""
    token = settings.BATON_METRICS_TOKEN
    if not token:
        raise Http404("metrics are off: set BATON_METRICS_TOKEN")
    sent = request.headers.get("Authorization", "")
    scheme, _, given = sent.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        response = HttpResponse("Send Authorization: Bearer <BATON_METRICS_TOKEN>.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return HttpResponse("Wrong metrics token.\n", status=403, content_type="text/plain")
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    report = health.report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
