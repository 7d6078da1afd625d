"""The count of items waiting for the signed-in person, for the navigation bar."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from approvals import access


def _count(request: HttpRequest) -> int:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return 0
    return access.items_waiting_count(user)


def inbox(request: HttpRequest) -> dict[str, Any]:
    # Lazy: only a template that shows the count (the full page's navigation) pays its query,
    # not the partials that htmx polls every couple of seconds.
    return {"approvals_waiting": SimpleLazyObject(lambda: _count(request))}
