"""What the inbox's partials show, computed from (item, user) without a request.

An item's page body (`_item.html`) and an inbox row (`_row.html`) are drawn by the full page,
by the htmx answer to a decision, and (next) by the websocket push after someone else's
decision: all three call the functions here, so they cannot drift. Nothing here writes; the
caller has already checked (approvals.access) that `user` may see the item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.db.models import F, Q, QuerySet

from approvals import access
from approvals.models import Decision, Item, ItemKind, ItemStatus, Vote
from dashboard import graph, inputs
from orchestration import access as run_access
from orchestration.models import StepKind
from orchestration.reads import head_rows, latest_heads
from orchestration.status import Risk

# Who a reassigned item may go to is the transition's rule (access.eligible_assignees); the
# form suggests the same people.
REASSIGN_SUGGESTIONS = 50
WAITING_ORDER = (F("deadline").asc(nulls_last=True), "id")


def pending_items(user: Any) -> QuerySet[Item]:
    """What waits for `user` to decide."""
    return access.decidable_items(user).filter(status=ItemStatus.PENDING)


@dataclass(frozen=True)
class Row:
    """One inbox row: the item, the approvals it has and whether I already voted."""

    item: Item
    approvals: int = 0
    my_vote: str = ""
    notice: str = ""
    errors: dict[str, str] | None = None
    comment: str = ""
    # Whether this person may open the run (orchestration.access): an assignee who may not
    # sees "run #N" without a link to a page that would only answer 403.
    sees_run: bool = False

    @property
    def votes(self) -> bool:
        return self.item.kind in (ItemKind.APPROVAL, ItemKind.GATE)

    @property
    def can_vote(self) -> bool:
        return self.item.is_open and self.votes and not self.my_vote

    @property
    def inline(self) -> bool:
        # Gates and high-risk items are decided on their page, where the exact action shows:
        # nobody should approve an agent's risky action from a one-line summary.
        return self.can_vote and self.item.kind == ItemKind.APPROVAL and self.item.risk != Risk.HIGH

    @property
    def remaining(self) -> int:
        return max(0, self.item.required - self.approvals)

    @property
    def pips(self) -> list[bool]:
        """One mark per approval needed, filled for those given (N-of-M at a glance)."""
        return [n < self.approvals for n in range(self.item.required)]


def rows(items: list[Item], user: Any) -> list[Row]:
    """Rows for a page of items, with their votes counted in one query."""
    approvals: dict[int, int] = {}
    mine: dict[int, str] = {}
    votes = Vote.objects.filter(item__in=[i.pk for i in items]).values_list("item_id", "user_id", "decision")
    for item_id, user_id, decision in votes:
        if decision == Decision.APPROVE:
            approvals[item_id] = approvals.get(item_id, 0) + 1
        if user_id == user.pk:
            mine[item_id] = decision
    runs = run_access.visible_among(user, (i.run_id for i in items))
    return [
        Row(item=i, approvals=approvals.get(i.pk, 0), my_vote=mine.get(i.pk, ""), sees_run=i.run_id in runs)
        for i in items
    ]


def _ancestors(steps: list[dict[str, Any]], key: str) -> set[str]:
    """Every step the given step waits on, directly or through others: the steps that led here."""
    after = {s["key"]: [d for d in s.get("after", []) if d != s["key"]] for s in steps}
    found: set[str] = set()
    frontier = list(after.get(key, []))
    while frontier:
        current = frontier.pop()
        if current in found or current not in after:
            continue
        found.add(current)
        frontier.extend(after[current])
    return found


def _only_steps(spec: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """The spec cut down to these steps, with arrows among them only (graph.build draws a
    loop only when the step it goes back to is drawn)."""
    steps = [
        {**step, "after": [d for d in step.get("after", []) if d in keys]}
        for step in spec.get("steps", [])
        if step["key"] in keys
    ]
    return {**spec, "steps": steps}


def next_waiting(user: Any, after: Item) -> Item | None:
    """The item after this one in the inbox order (nearest deadline first), else the first.

    Used once a decision is made, to move the approver on without a trip back to the list.
    """
    # The next of the same tab: exceptions after an exception, everything else otherwise.
    others = pending_items(user).exclude(pk=after.pk)
    if after.kind == ItemKind.EXCEPTION:
        others = others.filter(kind=ItemKind.EXCEPTION)
    else:
        others = others.exclude(kind=ItemKind.EXCEPTION)
    others = others.only("pk", "title", "kind", "deadline")
    if after.deadline is None:
        later = others.filter(deadline__isnull=True, pk__gt=after.pk)
    else:
        later = others.filter(
            Q(deadline__gt=after.deadline) | Q(deadline=after.deadline, pk__gt=after.pk) | Q(deadline__isnull=True)
        )
    return later.order_by(*WAITING_ORDER).first() or others.order_by(*WAITING_ORDER).first()


@dataclass
class PanelState:
    """What the action panel of an item page shows after a POST (or nothing, on a plain GET)."""

    notice: str = ""
    level: str = ""  # success | warning | error
    errors: dict[str, str] | None = None
    values: Any = None  # the submitted form data, shown again beside its errors
    form: str = ""  # which of the item's forms the errors belong to
    focus_next: bool = False


def item_page(item: Item, user: Any, state: PanelState | None = None) -> dict[str, Any]:
    """What an item's page body (`_item.html`) shows `user`, who may see `item`."""
    state = state or PanelState()
    run = item.run
    spec = run.version.spec
    steps: list[dict[str, Any]] = list(spec.get("steps", []))
    heads = latest_heads(row for row in head_rows(run) if row.kind != StepKind.COMPENSATION)
    step_key = item.step_run.step_key
    step_spec = next((s for s in steps if s["key"] == step_key), {})
    before = _ancestors(steps, step_key)
    sees_run = run_access.can_view_run(user, run)
    votes = list(item.votes.select_related("user"))
    my_vote = next((v for v in votes if v.user_id == user.pk), None)
    can_decide = item.is_open and access.can_decide(user, item)
    acts = can_decide and not (my_vote and item.kind in (ItemKind.APPROVAL, ItemKind.GATE))
    values = state.values
    manual_form = None
    if item.kind == ItemKind.MANUAL:
        data = values if state.form == "submit" else None
        # The task panel draws every list as a JSON box (no item-by-item inputs there yet).
        manual_form = inputs.build_form(
            item.form or {}, data, state.errors if state.form == "submit" else None, item_lists=False
        )
    suggestions: list[Any] = []
    if acts:
        suggestions = list(
            access.eligible_assignees(item).exclude(pk=user.pk).order_by("username")[:REASSIGN_SUGGESTIONS]
        )
    return {
        "item": item,
        "run": run,
        "step": item.step_run,
        "step_spec": step_spec,
        # An approval's or task's input is, unless the step names one, just the earlier steps'
        # outputs, which "Steps that led here" shows already.
        "shows_action": item.kind == ItemKind.GATE or "input" in step_spec,
        "sees_run": sees_run,
        # Someone who sees the item but not the run sees the steps that led here and this one,
        # not what the rest of the run did (or will do) before or after the decision.
        "graph": graph.build(spec if sees_run else _only_steps(spec, before | {step_key}), heads),
        "leading": [heads[s["key"]] for s in steps if s["key"] in before and s["key"] in heads],
        "votes": votes,
        "approvals": sum(1 for v in votes if v.decision == Decision.APPROVE),
        "my_vote": my_vote,
        "events": list(item.events.select_related("actor")),
        "assigned_users": list(item.users.all()),
        "assigned_groups": list(item.groups.all()),
        "can_decide": can_decide,
        "acts": acts,
        "manual_form": manual_form,
        "suggestions": suggestions,
        "state": state,
        "errors": state.errors or {},
        "values": values if values is not None else {},
        "failed_input": failed_input(item) if item.kind == ItemKind.EXCEPTION else None,
        "retry_text": json_text(failed_input(item)) if item.kind == ItemKind.EXCEPTION else "",
        "next_item": None if acts else next_waiting(user, item),
    }


def failed_input(item: Item) -> Any:
    """An exception item's action is {input, error}: the input the step failed on."""
    return item.action.get("input") if isinstance(item.action, dict) else item.action


def json_text(value: Any) -> str:
    return "" if value is None else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def load_item(item_id: int) -> Item:
    """The item with everything its page and row show, in one query."""
    return Item.objects.select_related(
        "run__workflow", "run__version", "run__started_by", "step_run", "requested_by", "decided_by"
    ).get(pk=item_id)
