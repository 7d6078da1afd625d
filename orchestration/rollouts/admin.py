"""Rollouts in Django admin: looked at here, decided on the rollout page or through the API.

A rollout's stage, its windows' and checklist's done marks, its criteria and its notes change
only through orchestration.rollouts.transitions (each change appends a RolloutEvent), so here
they are read-only; the change page links to the rollout page where they are changed. Only the
words of the brief (success metric, rollback conditions), the owner and the drift margin are
edited here. Snapshots and events are history: read-only. Staff who are not superusers see
only the rollouts of workflows orchestration.access shows them (orchestration/admin.py's
VisibleOnly).
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from orchestration.admin import ReadOnlyAdmin, ReadOnlyInline, VisibleOnly
from orchestration.rollouts.models import (
    FIGURE_FIELDS,
    AgentVersionSnapshot,
    ChecklistItem,
    Criterion,
    DailySnapshot,
    Note,
    Rollout,
    RolloutEvent,
    Window,
)

FIGURES: tuple[str, ...] = (*FIGURE_FIELDS, "computed_at")


class WindowInline(ReadOnlyInline[Window, Rollout]):
    model = Window
    fields = ("first_day", "last_day", "role", "owner", "focus", "expected_output", "due_on", "done", "done_by")
    readonly_fields = fields
    show_change_link = False


class ChecklistInline(ReadOnlyInline[ChecklistItem, Rollout]):
    model = ChecklistItem
    fields = ("text", "done", "done_at", "done_by")
    readonly_fields = fields
    show_change_link = False


class CriterionInline(ReadOnlyInline[Criterion, Rollout]):
    model = Criterion
    fields = ("metric", "comparison", "target", "window_days", "enabled")
    readonly_fields = fields
    show_change_link = False


class NoteInline(ReadOnlyInline[Note, Rollout]):
    model = Note
    fields = ("kind", "author", "text", "created_at", "resolved_at")
    readonly_fields = fields
    show_change_link = False


class EventInline(ReadOnlyInline[RolloutEvent, Rollout]):
    model = RolloutEvent
    fields = ("created_at", "kind", "from_stage", "to_stage", "actor", "reason")
    readonly_fields = fields
    show_change_link = False
    ordering = ("-id",)
    max_num = 0


@admin.register(Rollout)
class RolloutAdmin(VisibleOnly[Rollout]):
    workflow_path = "workflow"
    list_display = ("workflow", "stage", "owner", "started_on", "gate_passed", "gate_checked_at")
    list_filter = ("stage", "gate_passed")
    search_fields = ("workflow__key", "workflow__name")
    list_select_related = ("workflow", "owner")
    fields = (
        "workflow",
        "page",
        "stage",
        "paused_from",
        "owner",
        "started_on",
        "success_metric",
        "rollback_conditions",
        "drift_margin",
        "gate_checked_at",
        "gate_passed",
    )
    # The stage (and what it hangs on) changes through transitions only, each change recorded.
    readonly_fields = ("workflow", "page", "stage", "paused_from", "started_on", "gate_checked_at", "gate_passed")
    inlines = [CriterionInline, WindowInline, ChecklistInline, NoteInline, EventInline]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A rollout starts with its playbook windows, checklist and criteria: from the page.
        return False

    @admin.display(description="Rollout page")
    def page(self, obj: Rollout) -> SafeString:
        url = reverse("dashboard:rollout", kwargs={"key": obj.workflow.key})
        return format_html('<a href="{}">Promote, pause, roll back, plan and notes on the rollout page</a>', url)


@admin.register(DailySnapshot)
class DailySnapshotAdmin(ReadOnlyAdmin[DailySnapshot], VisibleOnly[DailySnapshot]):
    workflow_path = "workflow"
    list_display = ("day", "workflow", "scope", "runs_started", "runs_succeeded", "runs_failed", "duration_p95", "cost")
    list_filter = ("workflow", "day")
    date_hierarchy = "day"
    list_select_related = ("workflow", "version")
    fields: ClassVar[tuple[str, ...]] = ("workflow", "version", "day", *FIGURES)
    readonly_fields = fields

    @admin.display(description="Scope")
    def scope(self, obj: DailySnapshot) -> str:
        return "whole workflow" if obj.version is None else f"v{obj.version.number}"


@admin.register(AgentVersionSnapshot)
class AgentVersionSnapshotAdmin(ReadOnlyAdmin[AgentVersionSnapshot]):
    # Agents are shared by every workflow (as on the agents page), so are their versions' days.
    list_display = ("day", "agent_version", "runs_started", "attempts", "latency_p50", "latency_p95", "cost")
    list_filter = ("agent_version__agent", "day")
    date_hierarchy = "day"
    list_select_related = ("agent_version__agent",)
    fields: ClassVar[tuple[str, ...]] = ("agent_version", "day", "attempts", "latency_p50", "latency_p95", *FIGURES)
    readonly_fields = fields


@admin.register(RolloutEvent)
class RolloutEventAdmin(ReadOnlyAdmin[RolloutEvent], VisibleOnly[RolloutEvent]):
    workflow_path = "rollout__workflow"
    list_display = ("created_at", "rollout", "kind", "from_stage", "to_stage", "actor")
    list_filter = ("kind", "rollout__workflow")
    list_select_related = ("rollout__workflow", "actor")
    fields = ("rollout", "kind", "from_stage", "to_stage", "actor", "reason", "data", "created_at")
    readonly_fields = fields
