"""Who may see and who may decide an inbox item.

Views, the API and approvals.transitions all ask here; templates only mirror the answers.
Rules:
- An item is decided by its assignees (users named on it, or members of its groups) and by
  superusers. An exception item is also decided by the workflow's owner.
- The person who started the run never decides its approvals or gates, unless the workflow
  allows self-approval (superusers included: the rule is about the person, not the role).
- An item is seen by whoever may decide it, its assignees, superusers, the workflow's owner
  and the run's starter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404

from approvals.models import Item, ItemKind, ItemStatus
from orchestration.status import StepStatus

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

    Person = User | AnonymousUser
else:
    Person = Any

# Kinds where "you cannot approve your own run" applies; manual tasks and exceptions are work,
# not consent.
SELF_APPROVAL_KINDS = frozenset({ItemKind.APPROVAL, ItemKind.GATE})


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


def is_self_approval(user: Person, item: Item) -> bool:
    """True when this user started the run and the workflow does not let them approve it."""
    return (
        item.kind in SELF_APPROVAL_KINDS
        and not item.allow_self_approval
        and item.requested_by_id is not None
        and item.requested_by_id == _pk(user)
    )


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


def can_view(user: Person, item: Item) -> bool:
    if not _active(user):
        return False
    if user.is_superuser or _owns_workflow(user, item):
        return True
    if _pk(user) in (item.requested_by_id, item.run.started_by_id, item.decided_by_id):
        return True
    return is_assigned(user, item)


def decidable_items(user: Person) -> QuerySet[Item]:
    """Pending items this user may decide now ("Waiting for me"), soonest deadline first."""
    if not _active(user):
        return Item.objects.none()
    items = Item.objects.filter(status=ItemStatus.PENDING, step_run__status=StepStatus.WAITING)
    if not user.is_superuser:
        items = items.filter(_assigned_q(user) | Q(kind=ItemKind.EXCEPTION, run__workflow__owner=_pk(user)))
    return items.exclude(
        kind__in=list(SELF_APPROVAL_KINDS), allow_self_approval=False, requested_by=_pk(user)
    ).order_by("deadline", "id")


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
        raise PermissionDenied("This item is not assigned to you.")
    return item
