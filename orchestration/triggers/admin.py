"""Triggers in Django admin. What a trigger does is written in the workflow (its `triggers`
field, published with each version), so the rows here are read-only except for pausing, which
goes through orchestration.triggers.transitions (a resumed schedule fires at its next slot, not
the ones it slept through). Firings are history: read-only. Staff who are not superusers see
only the triggers of workflows orchestration.access lets them operate or see.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from orchestration import access
from orchestration.admin import ReadOnlyAdmin, VisibleOnly
from orchestration.triggers import transitions
from orchestration.triggers.models import Firing, Trigger


@admin.register(Trigger)
class TriggerAdmin(VisibleOnly[Trigger]):
    workflow_path = "workflow"
    list_display = ("workflow", "position", "kind", "describe", "paused", "next_fire_at", "last_fired_at")
    list_filter = ("kind", "paused")
    list_select_related = ("workflow",)
    search_fields = ("workflow__key", "event_name", "cron")
    actions = ("pause", "resume")
    readonly_fields = (
        "workflow",
        "version",
        "position",
        "kind",
        "cron",
        "timezone",
        "catch_up",
        "event_name",
        "secret_env",
        "input",
        "paused",
        "next_fire_at",
        "last_fired_at",
    )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # triggers come from the workflow's published version

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _operable(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> list[Trigger]:
        return [
            row
            for row in queryset.select_related("workflow")
            if access.can_operate(request.user, row.workflow)
        ]

    @admin.action(description="Pause the selected triggers")
    def pause(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        rows = self._operable(request, queryset)
        for row in rows:
            transitions.set_paused(trigger=row, paused=True, actor=request.user)
        self.message_user(request, f"{len(rows)} trigger(s) paused.", messages.SUCCESS)

    @admin.action(description="Resume the selected triggers (schedules fire at their next slot)")
    def resume(self, request: HttpRequest, queryset: QuerySet[Trigger]) -> None:
        rows = self._operable(request, queryset)
        for row in rows:
            transitions.set_paused(trigger=row, paused=False, actor=request.user)
        self.message_user(request, f"{len(rows)} trigger(s) resumed.", messages.SUCCESS)


@admin.register(Firing)
class FiringAdmin(VisibleOnly[Firing], ReadOnlyAdmin[Firing]):
    workflow_path = "workflow"
    list_display = ("at", "workflow", "kind", "outcome", "slot", "run", "detail")
    list_filter = ("kind", "outcome")
    list_select_related = ("workflow", "run")
    search_fields = ("workflow__key", "detail")
