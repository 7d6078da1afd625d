"""The approvals app's part of dashboard.waiting_words: who a waiting step waits on, by when,
and where its inbox item is. Registered in ApprovalsConfig.ready (dashboard never imports this app).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from django.urls import reverse

from approvals.models import Item, ItemKind, ItemStatus
from dashboard.waiting_words import PersonWait

WHAT: dict[str, str] = {
    ItemKind.APPROVAL: "approval by {who}",
    ItemKind.GATE: "approval of its action by {who}",
    ItemKind.MANUAL: "manual task for {who}",
    ItemKind.EXCEPTION: "a decision by {who}",
}


def open_items(step_ids: Sequence[int]) -> dict[int, PersonWait]:
    """The open item of each of these steps, in one query: one row per (item, assignee), the
    assignee a user or a group (an item has a handful; the join stays small)."""
    found: dict[int, tuple[int, str, datetime | None, set[str], set[str]]] = {}
    rows = (
        Item.objects.filter(step_run_id__in=list(step_ids), status=ItemStatus.PENDING)
        .order_by("id")
        .values_list("id", "step_run_id", "kind", "deadline", "users__username", "groups__name")
    )
    for item_id, step_id, kind, deadline, username, group in rows:
        _, _, _, users, groups = found.setdefault(step_id, (item_id, kind, deadline, set(), set()))
        if username:
            users.add(username)
        if group:
            groups.add(group)
    waits = {}
    for step_id, (item_id, kind, deadline, users, groups) in found.items():
        names = sorted(groups) + sorted(users)
        who = " or ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "") if names else "an admin"
        waits[step_id] = PersonWait(
            what=WHAT.get(kind, "{who}").format(who=who),
            deadline=deadline,
            url=reverse("approvals:item", args=[item_id]),
        )
    return waits
