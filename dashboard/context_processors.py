"""What base.html needs on every page: the live push's settings and the alerts banner."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from orchestration.alerts import reads


def live(request: HttpRequest) -> dict[str, Any]:
    # static/js/live.js polls this often while its socket is down ("0": never).
    return {"live_poll_seconds": f"{settings.BATON_LIVE_POLL_SECONDS:g}"}


def alerts(request: HttpRequest) -> dict[str, Any]:
    """The banner's firing alerts (templates/alerts/_banner.html), for signed-in users only.

    Lazy: only the banner partial, which base.html fetches after a page has loaded
    (dashboard/alerts.py `banner`), pays its queries; pages and their live partials pay none.
    """
    user = getattr(request, "user", None)

    def firing() -> list[Any]:
        if user is None or not user.is_authenticated:
            return []
        return reads.unacknowledged(user)

    return {"alerts_banner": SimpleLazyObject(firing)}
