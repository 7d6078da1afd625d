"""What the approvals app adds to the rollout metrics and to the history generator.

orchestration never imports this app: ApprovalsConfig.ready registers `figures` with
orchestration.rollouts.metrics and `people` with orchestration.rollouts.history.

Counted from the inbox items of the runs: approvals (kind approval and gate) requested,
approved, rejected, expired, and the wait of the decided ones (request to decision); manual
tasks; exceptions (steps that failed for good and went to the workflow owner).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from django.db.models import Count, Q

from approvals.models import Decision, Item, ItemKind, ItemStatus
from orchestration.rollouts.history import PersonWork, backdated, insert
from orchestration.rollouts.metrics import ALL, percentile_aggregates, prefixed, samples

APPROVAL_KINDS = (ItemKind.APPROVAL, ItemKind.GATE)
DECIDED = (ItemStatus.APPROVED, ItemStatus.REJECTED)


def figures(runs: Q, *, by: str | None = None) -> Mapping[Any, Mapping[str, Any]]:
    """The counts by conditional aggregation, and the decided approvals' waits."""
    items = Item.objects.filter(prefixed(runs, "run__")).order_by()
    path = None if by is None else f"run__{by}"
    approval = Q(kind__in=APPROVAL_KINDS)
    counts = {
        "approvals_requested": Count("id", filter=approval),
        "approvals_approved": Count("id", filter=approval & Q(status=ItemStatus.APPROVED)),
        "approvals_rejected": Count("id", filter=approval & Q(status=ItemStatus.REJECTED)),
        "approvals_expired": Count("id", filter=approval & Q(status=ItemStatus.EXPIRED)),
        "manual_tasks": Count("id", filter=Q(kind=ItemKind.MANUAL)),
        "exceptions": Count("id", filter=Q(kind=ItemKind.EXCEPTION)),
    }
    decided = Q(kind__in=APPROVAL_KINDS, status__in=DECIDED, decided_at__isnull=False)
    # PostgreSQL ranks the waits in the same query; elsewhere they are fetched by a second one.
    ranked = percentile_aggregates("approval_wait", end="decided_at", start="created_at", only=decided)
    out: dict[Any, dict[str, Any]] = defaultdict(dict)
    if path is None:
        out[ALL].update(items.aggregate(**counts, **(ranked or {})))
    else:
        for row in items.values(path).annotate(**counts, **(ranked or {})):
            out[row.pop(path)].update(row)
    if ranked is None:
        found = samples(items.filter(decided), path, name="approval_wait", end="decided_at", start="created_at")
        for group, waits in found.items():
            out[group].update(waits)
    return out


# What a generated item's status means as a decision.
_DECISION = {
    ItemStatus.APPROVED: Decision.APPROVE,
    ItemStatus.REJECTED: Decision.REJECT,
    ItemStatus.EXPIRED: Decision.TIMEOUT,
    ItemStatus.SUBMITTED: Decision.SUBMIT,
    ItemStatus.RESOLVED: Decision.RETRY,
}


def people(work: list[PersonWork]) -> int:
    """The inbox items of generated runs, as rows (history.make_history calls this)."""
    rows = [
        Item(
            kind=w.kind,
            status=w.status,
            step_run_id=w.step_run_id,
            run_id=w.run_id,
            title=f"{w.kind} of step {w.step_key} (generated history)",
            decision=_DECISION.get(ItemStatus(w.status), ""),
            decided_at=w.decided_at,
            created_at=w.created_at,
        )
        for w in work
    ]
    with backdated(Item):
        insert(Item, rows)
    return len(rows)
