"""Admin: API tokens (created here, shown once), and inbox items and their history, read-only.

Items are decided in the inbox or through the API, which go through approvals.transitions;
the admin only looks, so it can never skip a lock or an audit row.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest

from approvals.auth import set_new_key
from approvals.models import ApiToken, Item, ItemEvent, Vote
from orchestration.admin import ReadOnlyAdmin, ReadOnlyInline


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Add a token to see it once; delete it to revoke it. The key itself is never stored."""

    list_display = ("prefix_shown", "user", "name", "created_at", "last_used_at")
    list_filter = ("user",)
    search_fields = ("user__username", "name", "prefix")
    readonly_fields = ("prefix_shown", "created_at", "last_used_at")

    @admin.display(description="Token starts with")
    def prefix_shown(self, obj: ApiToken) -> str:
        return f"{obj.prefix}…" if obj.prefix else "(shown once, after saving)"

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ["user", "name"]
        return ["user", "name", "prefix_shown", "created_at", "last_used_at"]

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


class VoteInline(ReadOnlyInline):
    model = Vote
    fields = ("user", "decision", "comment", "created_at")
    readonly_fields = fields
    show_change_link = False


class ItemEventInline(ReadOnlyInline):
    model = ItemEvent
    fields = ("created_at", "kind", "actor", "note")
    readonly_fields = fields
    show_change_link = False


@admin.register(Item)
class ItemAdmin(ReadOnlyAdmin):
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
class ItemEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "item", "kind", "actor", "note")
    list_filter = ("kind",)
    list_select_related = ("item", "actor")
    fields = ("item", "kind", "actor", "note", "data", "created_at")
    readonly_fields = fields
