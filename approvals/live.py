"""The approvals app's part of the live push: items' pages and the inboxes that list them.

Registered with dashboard.live in ApprovalsConfig.ready (dashboard never imports this app).

- `item:<id>` follows one item's page and its row in a list; granted to whoever may view the
  item (access.can_view), as the page itself is.
- `inbox` and `nav` (the inbox tabs and the navigation count) follow every item that could be
  the user's: groups `inbox.u.<user id>`, `inbox.g.<group id>` for each of their groups, and
  `inbox.admins` for superusers, who may decide everything.

An item that changes is heard of by its own group and by the inboxes of everyone it concerns:
assignees (directly or through a group), the workflow's owner, the run's starter, whoever
requested, decided or acted on it, and whoever it was reassigned away from (their count drops).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.http import Http404

from approvals import access
from approvals.models import Item, ItemEvent, ItemEventKind
from dashboard.live import changes, topics
from dashboard.live.changes import Changes, EventLog

ADMINS = "inbox.admins"


def _item(user: Any, item_id: int | None) -> set[str] | None:
    if item_id is None:
        return None
    try:
        access.get_item_for_user(user, item_id)  # the item page's own lookup and check
    except (Http404, PermissionDenied):
        return None
    return {f"item.{item_id}"}


def _inbox(user: Any, item_id: int | None) -> set[str] | None:
    if item_id is not None:
        return None
    groups = {f"inbox.u.{user.pk}"} | {f"inbox.g.{pk}" for pk in user.groups.values_list("pk", flat=True)}
    if user.is_superuser:
        groups.add(ADMINS)
    return groups


def item_groups(change: Changes) -> set[str]:
    """The groups that hear of these items' changes (five queries, none without items)."""
    ids = change.items
    if not ids:
        return set()
    users: set[int] = set(Item.users.through.objects.filter(item_id__in=ids).values_list("user_id", flat=True))
    groups: set[int] = set(Item.groups.through.objects.filter(item_id__in=ids).values_list("group_id", flat=True))
    for row in Item.objects.filter(pk__in=ids).values_list(
        "run__workflow__owner_id", "requested_by_id", "run__started_by_id", "decided_by_id"
    ):
        users.update(pk for pk in row if pk is not None)
    events = ItemEvent.objects.filter(item_id__in=ids)
    users.update(pk for pk in events.exclude(actor=None).values_list("actor_id", flat=True).distinct())
    # Reassigned away: the people and groups it was taken from no longer see it as theirs.
    names: set[str] = set()
    group_names: set[str] = set()
    for data in events.filter(kind=ItemEventKind.REASSIGNED).values_list("data", flat=True):
        before = (data or {}).get("from") or {}
        names.update(str(name) for name in before.get("users") or [])
        group_names.update(str(name) for name in before.get("groups") or [])
    if names:
        users.update(get_user_model().objects.filter(username__in=names).values_list("pk", flat=True))
    if group_names:
        groups.update(Group.objects.filter(name__in=group_names).values_list("pk", flat=True))
    return (
        {f"item.{pk}" for pk in ids}
        | {f"inbox.u.{pk}" for pk in users}
        | {f"inbox.g.{pk}" for pk in groups}
        | {ADMINS}
    )


def _latest_item_event() -> int:
    return ItemEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _item_event_rows(after: int, limit: int) -> list[tuple[int, int]]:
    return list(ItemEvent.objects.filter(id__gt=after).order_by("id").values_list("id", "item_id")[:limit])


def _item_event_rows_with_ids(ids: set[int]) -> list[tuple[int, int]]:
    return list(ItemEvent.objects.filter(id__in=ids).values_list("id", "item_id"))


def register() -> None:
    topics.register("item", _item)
    topics.register("inbox", _inbox)
    topics.register("nav", _inbox)
    changes.register_group_source(item_groups)
    changes.register_event_log(
        EventLog(
            "item events",
            _latest_item_event,
            _item_event_rows,
            _item_event_rows_with_ids,
            lambda items: Changes(items=set(items)),
        )
    )
