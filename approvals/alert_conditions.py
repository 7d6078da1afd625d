"""The approvals app's alert condition: inbox items that are overdue.

orchestration never imports this app: ApprovalsConfig.ready registers `overdue` with
orchestration.alerts.conditions. An open item is overdue when it was escalated for missing its
deadline (it waits on the people it was escalated to), when its deadline passed more than a
minute ago and nothing acted on it (the ticker normally expires it at once, which closes it:
a decision by timeout is not an open problem), or, if the rule has a threshold, when it has waited longer than
that. The alert resolves when the item is decided, resolved, expired or cancelled.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Q
from django.urls import reverse

from approvals.models import Item, ItemStatus
from orchestration.alerts.conditions import LIMIT, Finding
from orchestration.alerts.models import AlertRule
from orchestration.durations import human_duration

# The deadline sweep acts within a tick of the deadline; an item still open this long after it
# was not acted on (no one to escalate to is not a reason: the timeout action applies then).
MISSED_BY = timedelta(seconds=60)


def overdue(rule: AlertRule, now: datetime) -> list[Finding]:
    late = Q(deadline__lte=now - MISSED_BY) | Q(escalations__gt=0)
    if rule.threshold_seconds:
        late |= Q(created_at__lte=now - timedelta(seconds=rule.threshold_seconds))
    items = Item.objects.filter(late, status=ItemStatus.PENDING)
    if rule.workflow_id:
        items = items.filter(run__workflow_id=rule.workflow_id)
    rows = items.order_by("created_at").values_list(
        "pk", "kind", "title", "run_id", "run__workflow_id", "run__workflow__name", "deadline", "escalations", "created_at"
    )[:LIMIT]
    findings = []
    for pk, kind, title, run_id, workflow_id, name, deadline, escalations, created in rows:
        if escalations:
            why = f"escalated {escalations} time(s) for missing its deadline"
        elif deadline is not None and deadline <= now:
            why = f"its deadline {deadline:%Y-%m-%d %H:%M} UTC has passed"
        else:
            why = f"waiting for {human_duration((now - created).total_seconds())}"
        findings.append(
            Finding(
                subject=f"item:{pk}",
                title=f"Overdue {kind} in {name}: {title}"[:300],
                detail=why,
                workflow_id=workflow_id,
                run_id=run_id,
                link=reverse("approvals:item", args=[pk]),
                data={"deadline": deadline.isoformat() if deadline else None, "escalations": escalations},
            )
        )
    return findings
