"""POST /hooks/<workflow key>: a webhook delivery starts a run when its signature holds.

No session, no CSRF token: the HMAC signature is the credential (docs/triggers.md). The body
is read only up to BATON_WEBHOOK_MAX_BYTES; answers are JSON in the API's error shape.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from orchestration.triggers import transitions


def _error(status: int, error: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": error, "detail": detail, "fields": {}}, status=status)


@csrf_exempt
@require_POST
def webhook(request: HttpRequest, key: str) -> JsonResponse:
    limit = settings.BATON_WEBHOOK_MAX_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _error(413, "too_large", f"the body is {declared:,} bytes; at most {limit:,} are accepted")
    body = request.read(limit + 1)
    if len(body) > limit:
        return _error(413, "too_large", f"the body is over {limit:,} bytes")
    delivery = transitions.accept_webhook(
        key=key,
        body=body,
        signature=request.headers.get("X-Baton-Signature", "")[:200],
        timestamp=request.headers.get("X-Baton-Timestamp", "")[:40],
    )
    if delivery.run is None:
        return _error(delivery.status, delivery.error, delivery.detail)
    return JsonResponse(
        {"run": delivery.run.pk, "status": delivery.run.status, "workflow": key}, status=delivery.status
    )
