"""Admin: API tokens (created here, shown once), and inbox items and their history, read-only.

Items are decided in the inbox or through the API, which go through approvals.transitions;
the admin only looks, so it can never skip a lock or an audit row. Staff who are not
superusers see in the admin only the items approvals.access lets them see anywhere else, and
no tokens at all: a token acts as its user, so whoever may add one for another user (or read
who holds which) could act as them; superusers manage tokens (or `manage.py create_api_token`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib import admin, messages
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from approvals import access
from approvals.auth import set_new_key
from approvals.models import ApiToken, Item, ItemEvent, Vote
from orchestration.admin import ReadOnlyAdmin, ReadOnlyInline, SuperusersOnly

M = TypeVar("M", bound=Model)


@admin.register(ApiToken)
class ApiTokenAdmin(SuperusersOnly[ApiToken]):
    """Add a token to see it once; delete it to revoke it. The key itself is never stored."""

    list_display = ("prefix_shown", "user", "name", "created_at", "last_used_at", "expires_at")
    list_filter = ("user",)
    search_fields = ("user__username", "name", "prefix")
    readonly_fields = ("prefix_shown", "created_at", "last_used_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        queryset = super().get_queryset(request)
        return queryset if self.has_module_permission(request) else queryset.none()

    @admin.display(description="Token starts with")
    def prefix_shown(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…" if obj.prefix else "(shown once, after saving)"

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ["user", "name", "expires_at"]
        return ["user", "name", "prefix_shown", "created_at", "last_used_at", "expires_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return []
        return ["user", "prefix_shown", "created_at", "last_used_at"]

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        token = set_new_key(obj)
        super().save_model(request, obj, form, change)
        messages.warning(
            request,
            f"The new token for {obj.user} is {token} — copy it now: it is not stored and will not be shown again.",
        )


class VoteInline(ReadOnlyInline[Vote, Item]):
    model = Vote
    fields = ("user", "decision", "comment", "created_at")
    readonly_fields = fields
    show_change_link = False


class ItemEventInline(ReadOnlyInline[ItemEvent, Item]):
    model = ItemEvent
    fields = ("created_at", "kind", "actor", "note")
    readonly_fields = fields
    show_change_link = False


class VisibleItemsOnly(admin.ModelAdmin[M]):
    """Limits the changelist and change pages to the items approvals.access shows this user.

    `item_path` is the way from this model to the item ("" for Item itself). An object outside
    the queryset is "not found" to Django's admin, so a guessed URL reveals nothing either.
    """

    item_path = ""

    def get_queryset(self, request: HttpRequest) -> QuerySet[M]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        lookup = f"{self.item_path}__in" if self.item_path else "pk__in"
        return queryset.filter(**{lookup: access.visible_items(request.user).values("pk")})


@admin.register(Item)
class ItemAdmin(ReadOnlyAdmin[Item], VisibleItemsOnly[Item]):
    list_display = ("id", "kind", "status", "title", "run", "deadline", "decided_by", "decided_at")
    list_filter = ("kind", "status", "risk")
    search_fields = ("title", "run__workflow__key")
    list_select_related = ("run__workflow", "decided_by")
    fields = (
        "kind",
        "status",
        "title",
        "details",
        "action",
        "error",
        "form",
        "submitted",
        "run",
        "step_run",
        "users",
        "groups",
        "required",
        "requested_by",
        "allow_self_approval",
        "risk",
        "deadline",
        "remind_at",
        "reminded_at",
        "on_timeout",
        "escalate_to",
        "escalations",
        "on_reject",
        "decision",
        "decided_by",
        "decided_at",
        "comment",
        "created_at",
    )
    readonly_fields = fields
    inlines = [VoteInline, ItemEventInline]


@admin.register(ItemEvent)
class ItemEventAdmin(ReadOnlyAdmin[ItemEvent], VisibleItemsOnly[ItemEvent]):
    item_path = "item"
    list_display = ("created_at", "item", "kind", "actor", "note")
    list_filter = ("kind",)
    list_select_related = ("item", "actor")
    fields = ("item", "kind", "actor", "note", "data", "created_at")
    readonly_fields = fields
