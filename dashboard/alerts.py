"""The alerts pages: the list (`/alerts/`), one alert (`/alerts/<id>/`), and acknowledging one
from either or from the banner every page shows (templates/alerts/_banner.html).

Which alerts a person sees, and who may acknowledge, is orchestration.alerts.reads' call; every
change goes through orchestration.alerts.transitions. Every page fetches the banner partial
after it has loaded (`banner`, with the context processor's `alerts_banner`), like the
navigation's inbox count, so no page pays its queries; the acknowledge view returns the same
partial when the banner asked (`part=banner`), so a banner acknowledged on any page redraws
itself in place.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from dashboard.web import HtmxHttpRequest, partial_or_page, wants_partial
from orchestration.alerts import reads, transitions
from orchestration.alerts.models import Alert, AlertStatus, Delivery

RESOLVED_SHOWN = 50


def _with_deliveries(alerts: Any) -> Any:
    return alerts.select_related("rule", "acknowledged_by").prefetch_related(
        Prefetch("deliveries", queryset=Delivery.objects.order_by("pk"))
    )


def list_context(user: Any) -> dict[str, Any]:
    """What the list page and its htmx refresh show, in a fixed number of queries."""
    visible = reads.visible(user)
    open_ = list(_with_deliveries(reads.firing(user)))
    resolved = list(
        _with_deliveries(visible.filter(status=AlertStatus.RESOLVED)).order_by("-resolved_at", "-id")[:RESOLVED_SHOWN]
    )
    reads.mark_acknowledgeable(user, open_ + resolved)
    return {"open_alerts": open_, "resolved_alerts": resolved}


def _alert_for(user: Any, alert_id: int) -> Alert:
    alert = _with_deliveries(reads.visible(user)).filter(pk=alert_id).first()
    if alert is None:
        if Alert.objects.filter(pk=alert_id).exists():
            raise PermissionDenied("You may not see this alert: it is about a workflow you do not see.")
        raise Http404("No such alert.")
    reads.mark_acknowledgeable(user, [alert])
    return alert  # type: ignore[no-any-return]


@require_GET
@login_required
def alerts(request: HtmxHttpRequest) -> HttpResponse:
    return partial_or_page(request, "alerts/alerts.html", "alerts/_list.html", list_context(request.user))


@require_GET
@login_required
def alert_detail(request: HtmxHttpRequest, alert_id: int) -> HttpResponse:
    alert = _alert_for(request.user, alert_id)
    context = {"alert": alert, "events": list(alert.events.select_related("actor").order_by("id"))}
    return partial_or_page(request, "alerts/alert.html", "alerts/_alert.html", context)


@require_GET
@login_required
def banner(request: HtmxHttpRequest) -> HttpResponse:
    # `alerts_banner` comes from the context processor (dashboard.context_processors.alerts).
    return render(request, "alerts/_banner.html")


@require_POST
@login_required
def acknowledge(request: HtmxHttpRequest, alert_id: int) -> HttpResponse:
    part = request.POST.get("part", "")
    refused = None
    try:
        transitions.acknowledge(alert_id=alert_id, user=request.user, note=request.POST.get("note", ""))
    except transitions.AlertRefused as exc:
        if exc.status == 404:
            raise Http404(exc.message) from None
        if exc.status == 403:
            raise PermissionDenied(exc.message) from None
        refused = exc
    status = refused.status if refused else 200
    notice = refused.message if refused else "Alert acknowledged."
    if not wants_partial(request):
        (messages.error if refused else messages.success)(request, notice)
        back = request.POST.get("next", "")
        if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
            back = ""
        return redirect(back or "dashboard:alert", *([] if back else [alert_id]))
    if part == "banner":
        context: dict[str, Any] = {"alerts_banner": reads.unacknowledged(request.user), "banner_notice": notice}
        return render(request, "alerts/_banner.html", context, status=status)
    if part == "list":
        context = {**list_context(request.user), "list_notice": notice}
        return render(request, "alerts/_list.html", context, status=status)
    alert = _alert_for(request.user, alert_id)
    context = {"alert": alert, "events": list(alert.events.select_related("actor").order_by("id")), "notice": notice}
    return render(request, "alerts/_alert.html", context, status=status)
