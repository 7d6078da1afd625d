"""The approvals app's part of the overview (dashboard/overview.py) and of /metrics
(orchestration/observability/metrics.py): open, overdue and recently decided inbox items.
Registered in ApprovalsConfig.ready (neither dashboard nor orchestration imports this app)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.db.models import Count, Q
from prometheus_client.core import GaugeMetricFamily, Metric

from approvals.models import Item, ItemKind, ItemStatus
from dashboard.overview import PeopleFigures


def overview_figures(seen: Q | None, now: datetime, since: datetime) -> PeopleFigures:
    """Items of the runs matching `seen` (a condition through `run__`; None: every run) past
    their deadline and still open, and those decided since `since`; one query (open items are
    found through the (status, deadline) index, and joined to their runs)."""
    items = Item.objects.all() if seen is None else Item.objects.filter(seen)
    figures = items.filter(Q(status=ItemStatus.PENDING, deadline__lt=now) | Q(decided_at__gte=since)).aggregate(
        overdue=Count("id", filter=Q(status=ItemStatus.PENDING, deadline__lt=now)),
        decided=Count("id", filter=Q(decided_at__gte=since)),
    )
    return PeopleFigures(overdue=figures["overdue"], decided=figures["decided"])


def metric_families(now: datetime) -> Iterator[Metric]:
    pending = GaugeMetricFamily("baton_approvals_pending", "Open inbox items, by kind.", labels=["kind"])
    overdue = GaugeMetricFamily("baton_approvals_overdue", "Open inbox items past their deadline, by kind.", labels=["kind"])
    counts: dict[str, dict[str, int]] = {
        row["kind"]: {"n": row["n"], "late": row["late"]}
        for row in Item.objects.filter(status=ItemStatus.PENDING)
        .order_by()
        .values("kind")
        .annotate(n=Count("id"), late=Count("id", filter=Q(deadline__lt=now)))
    }
    # Every kind, with zeros: a series that disappears is harder to alert on than a 0.
    for kind in ItemKind.values:
        row: dict[str, int] = counts.get(kind, {})
        pending.add_metric([kind], row.get("n", 0))
        overdue.add_metric([kind], row.get("late", 0))
    yield pending
    yield overdue
