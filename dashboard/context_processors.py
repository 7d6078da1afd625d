"""What base.html needs on every page for the live push."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def live(request: HttpRequest) -> dict[str, Any]:
    # static/js/live.js polls this often while its socket is down ("0": never).
    return {"live_poll_seconds": f"{settings.BATON_LIVE_POLL_SECONDS:g}"}
