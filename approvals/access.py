"""Who may see and who may decide an inbox item.

Views, the API and approvals.transitions all ask here; templates only mirror the answers.
Rules:
- An item is decided by its assignees (users named on it, or members of its groups) and by
  superusers. An exception item is also decided by the workflow's owner.
- The person who started the run never decides its approvals, gates or exception items,
  unless the workflow allows self-approval (superusers included: the rule is about the person,
  not the role). Nor does whoever retried a gated step from its exception item approve the gate
  that retry reopened: someone else approves the input they chose.
- An item is seen by whoever may decide it, its assignees, superusers, the workflow's owner,
  the run's starter, and everyone who acted on it (voted, reassigned it, resolved it): a
  person who handed an item on still sees it and its history.
- An item may be reassigned only to someone eligible for it: its assignees (named or through
  its groups, now or when it was opened), its escalation targets, or a superuser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.shortcuts import get_object_or_404

from approvals.models import Decision, Item, ItemEvent, ItemEventKind, ItemKind, ItemStatus
from orchestration.status import StepStatus

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    Person = User | AnonymousUser
else:
    Person = Any

# Kinds where "you cannot approve your own run" applies. Manual tasks are work, not consent;
# an exception's retry, skip or abort decides what the run does next (a retry may rerun a risky
# action, a skip invents the output later steps trust), so it is consent like an approval.
SELF_APPROVAL_KINDS = frozenset({ItemKind.APPROVAL, ItemKind.GATE, ItemKind.EXCEPTION})


def _active(user: Person) -> bool:
    return bool(user.is_authenticated and user.is_active)


def _pk(user: Person) -> int:
    return int(user.pk or 0)


def _assigned_q(user: Person) -> Q:
    # Subqueries rather than joins: no duplicate rows, so callers may annotate and count freely.
    direct = Item.users.through.objects.filter(user_id=_pk(user)).values("item_id")
    via_groups = Item.groups.through.objects.filter(group__user=_pk(user)).values("item_id")
    return Q(pk__in=direct) | Q(pk__in=via_groups)


def is_assigned(user: Person, item: Item) -> bool:
    """Named on the item directly or through one of their groups."""
    if not _active(user):
        return False
    if item.users.filter(pk=_pk(user)).exists():
        return True
    return item.groups.filter(user=_pk(user)).exists()


def _retries_of_step(user_id: Any, step_run_id: Any) -> QuerySet[Item]:
    """Exception items of this step that this user resolved with a retry."""
    return Item.objects.filter(
        step_run_id=step_run_id, kind=ItemKind.EXCEPTION, decision=Decision.RETRY, decided_by_id=user_id
    )


def self_approval_reason(user: Person, item: Item) -> str:
    """Why this person may not decide this item by the self-approval rule ("" when it does not apply)."""
    if item.kind not in SELF_APPROVAL_KINDS or item.allow_self_approval or not _pk(user):
        return ""
    if item.requested_by_id is not None and item.requested_by_id == _pk(user):
        return "You started this run; the workflow does not allow deciding on your own run."
    if item.kind == ItemKind.GATE and _retries_of_step(_pk(user), item.step_run_id).exists():
        return "You retried this step; someone else must approve the action it now asks to run."
    return ""


def is_self_approval(user: Person, item: Item) -> bool:
    """True when the self-approval rule keeps this user from deciding the item."""
    return bool(self_approval_reason(user, item))


def _owns_workflow(user: Person, item: Item) -> bool:
    return _pk(user) != 0 and item.run.workflow.owner_id == _pk(user)


def can_decide(user: Person, item: Item) -> bool:
    """Whether this user may decide this item (who, not when: check item.is_open as well)."""
    if not _active(user) or is_self_approval(user, item):
        return False
    if user.is_superuser:
        return True
    if item.kind == ItemKind.EXCEPTION and _owns_workflow(user, item):
        return True
    return is_assigned(user, item)


def _acted_on(user: Person, item: Item) -> bool:
    return ItemEvent.objects.filter(item=item, actor_id=_pk(user)).exists()


def can_view(user: Person, item: Item) -> bool:
    if not _active(user):
        return False
    if user.is_superuser or _owns_workflow(user, item):
        return True
    if _pk(user) in (item.requested_by_id, item.run.started_by_id, item.decided_by_id):
        return True
    return is_assigned(user, item) or _acted_on(user, item)


def refusal(user: Person, item: Item) -> str:
    """A sentence saying why this person may not act on (or see) this item."""
    reason = self_approval_reason(user, item)
    if reason:
        return reason
    events = list(
        ItemEvent.objects.filter(
            item=item, kind__in=[ItemEventKind.CREATED, ItemEventKind.REASSIGNED, ItemEventKind.ESCALATED]
        )
        .select_related("actor")
        .order_by("-id")
    )
    handed_on = next((e for e in events if e.kind != ItemEventKind.CREATED), None)
    # Who had it before: those it was opened for and everyone it was handed away from.
    before = [e.data if e.kind == ItemEventKind.CREATED else e.data.get("from") or {} for e in events]
    if handed_on is not None and any(_was_assigned(user, people) for people in before):
        to = handed_on.data.get("to")
        if isinstance(to, dict):
            to = ", ".join([*(to.get("users") or []), *(f"group {g}" for g in to.get("groups") or [])])
        if handed_on.kind == ItemEventKind.REASSIGNED:
            by = handed_on.actor.get_username() if handed_on.actor else "someone"
            return f"This item was reassigned to {to} by {by}; it is no longer yours to decide."
        return f"This item was escalated to {to}; it is no longer yours to decide."
    return "This item is not assigned to you."


def _was_assigned(user: Person, people: dict[str, Any]) -> bool:
    if not _active(user):
        return False
    if user.get_username() in (people.get("users") or []):
        return True
    return user.groups.filter(name__in=people.get("groups") or []).exists()


def eligible_assignees(item: Item) -> QuerySet[Any]:
    """Everyone an item may be reassigned to: its assignees (now, or when it was opened, named or
    through a group), its escalation targets, and superusers. Active users only."""
    usernames: set[str] = set()
    groups: set[str] = set()
    for people in [
        item.escalate_to or {},
        *(e.data for e in item.events.filter(kind=ItemEventKind.CREATED)),
    ]:
        usernames.update(str(u) for u in people.get("users") or [])
        groups.update(str(g) for g in people.get("groups") or [])
    User = get_user_model()
    return User.objects.filter(
        Q(pk__in=item.users.values("pk"))
        | Q(groups__in=item.groups.values("pk"))
        | Q(username__in=usernames)
        | Q(groups__name__in=groups)
        | Q(is_superuser=True),
        is_active=True,
    ).distinct()


def decidable_items(user: Person) -> QuerySet[Item]:
    """Pending items this user may decide now ("Waiting for me"), soonest deadline first."""
    if not _active(user):
        return Item.objects.none()
    items = Item.objects.filter(status=ItemStatus.PENDING, step_run__status=StepStatus.WAITING)
    if not user.is_superuser:
        items = items.filter(_assigned_q(user) | Q(kind=ItemKind.EXCEPTION, run__workflow__owner=_pk(user)))
    retried = _retries_of_step(_pk(user), OuterRef("step_run_id"))
    return (
        items.exclude(kind__in=list(SELF_APPROVAL_KINDS), allow_self_approval=False, requested_by=_pk(user))
        .exclude(Q(kind=ItemKind.GATE, allow_self_approval=False) & Exists(retried))
        .order_by("deadline", "id")
    )


def visible_items(user: Person) -> QuerySet[Item]:
    """Every item this user may look at, in any status (the "Decided" history, the API)."""
    if not _active(user):
        return Item.objects.none()
    if user.is_superuser:
        return Item.objects.all()
    return Item.objects.filter(
        _assigned_q(user)
        | Q(run__workflow__owner=_pk(user))
        | Q(requested_by=_pk(user))
        | Q(run__started_by=_pk(user))
        | Q(decided_by=_pk(user))
        | Q(pk__in=ItemEvent.objects.filter(actor_id=_pk(user)).values("item_id"))
    )


def items_waiting_count(user: Person) -> int:
    """The number in the navigation."""
    return decidable_items(user).count()


def get_item_for_user(user: Person, pk: int) -> Item:
    """The item, or 404 if there is none, or PermissionDenied if it is not this user's to see."""
    item = get_object_or_404(
        Item.objects.select_related("run__workflow__owner", "step_run", "requested_by", "decided_by"), pk=pk
    )
    if not can_view(user, item):
        raise PermissionDenied(refusal(user, item))
    return item
