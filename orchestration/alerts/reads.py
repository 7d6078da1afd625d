"""Read-only questions about alerts: which ones a person may see, the firing ones, counts.

The rule follows the workflows' (orchestration/access.py): an alert about a workflow, its runs,
its schedules, its inbox items or its rollout is seen by whoever sees that workflow; an alert
about an agent alone (its circuit, its failure rate) by superusers and the rule's recipients
(its users and the members of its groups), the people an administrator chose to tell. Inactive
and anonymous users see none. Acknowledging needs operator rights on the workflow (viewers
change nothing), or, for an agent's alert, being able to see it.

The overview page, /metrics and the banner call `firing` and `firing_count`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import Group
from django.db.models import Count, Q, QuerySet

from orchestration import access
from orchestration.alerts.models import OPEN_Q, Alert, AlertRule, AlertStatus, Severity

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    Person = User | AnonymousUser
else:
    Person = Any

BANNER_LIMIT = 3


def _recipient_rules(user: Person) -> QuerySet[AlertRule]:
    via_groups = Group.objects.filter(user=user.pk).values("pk")
    return AlertRule.objects.filter(Q(users=user.pk) | Q(groups__in=via_groups)).values("pk")  # type: ignore[return-value]


def visible(user: Person | None) -> QuerySet[Alert]:
    """Every alert this user may see (None: every alert, for machines such as /metrics)."""
    alerts = Alert.objects.all()
    if user is None or (user.is_active and user.is_superuser):
        return alerts
    if not (user.is_authenticated and user.is_active):
        return alerts.none()
    workflows = access.visible_workflows(user).values("pk")
    return alerts.filter(
        Q(workflow__in=workflows) | Q(workflow__isnull=True, rule__in=_recipient_rules(user))
    )


def firing(user: Person | None = None) -> QuerySet[Alert]:
    """Open alerts (firing, acknowledged or not) this user may see, newest first."""
    return visible(user).filter(OPEN_Q).select_related("rule", "acknowledged_by").order_by("-fired_at", "-id")


def firing_count(user: Person | None = None) -> int:
    return firing(user).count()


def firing_by_severity(user: Person | None = None) -> dict[str, int]:
    """Open alerts per severity (every severity named, zeros included)."""
    counts = dict(visible(user).filter(OPEN_Q).order_by().values_list("severity").annotate(n=Count("id")))
    return {severity.value: int(counts.get(severity.value, 0)) for severity in Severity}


def unacknowledged(user: Person) -> list[Alert]:
    """What the banner shows: firing alerts nobody has acknowledged, newest first (a few), each
    saying whether this user may acknowledge it (`can_acknowledge`)."""
    shown = list(firing(user).filter(status=AlertStatus.FIRING)[:BANNER_LIMIT])
    mark_acknowledgeable(user, shown)
    return shown


def mark_acknowledgeable(user: Person, alerts: list[Alert]) -> None:
    """Set `can_acknowledge` on alerts this user sees (may_acknowledge's rule), in one query."""
    operable: set[int] = set()
    if not user.is_superuser and any(alert.workflow_id is not None for alert in alerts):
        operable = set(access.operable_workflows(user).values_list("pk", flat=True))
    for alert in alerts:
        alert.can_acknowledge = alert.status == AlertStatus.FIRING and (  # type: ignore[attr-defined]
            bool(user.is_superuser) or alert.workflow_id is None or alert.workflow_id in operable
        )


def may_see(user: Person, alert: Alert) -> bool:
    return visible(user).filter(pk=alert.pk).exists()


def may_acknowledge(user: Person, alert: Alert) -> bool:
    if not (user.is_authenticated and user.is_active):
        return False
    if user.is_superuser:
        return True
    if alert.workflow_id is not None:
        return access.operable_workflows(user).filter(pk=alert.workflow_id).exists()
    return may_see(user, alert)
