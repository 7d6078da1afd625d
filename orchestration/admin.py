"""The Django admin: edit agents and workflow drafts, publish versions, inspect runs.

Definitions are editable here; everything a run produces (versions, runs, steps, attempts,
events) is read-only, because it is history. The two writes that are not plain form saves,
publishing a draft and cancelling a run, go through orchestration.definitions and
orchestration.transitions like every other caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml
from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.forms.fields import InvalidJSONInput
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from orchestration import definitions, transitions
from orchestration.models import (
    Agent,
    AgentEvent,
    AgentHealth,
    Attempt,
    CircuitState,
    DraftStep,
    Run,
    RunEvent,
    StepRun,
    Workflow,
    WorkflowVersion,
)
from orchestration.spec import Problems, SpecError, normalise_circuit, normalise_retry, workflow_to_file
from orchestration.status import AttemptStatus, RunStatus, StepStatus

STATUS_COLOURS: dict[str, str] = {
    RunStatus.RUNNING: "#1f6fb2",
    RunStatus.SUCCEEDED: "#2e7d32",
    RunStatus.FAILED: "#c62828",
    RunStatus.CANCELLED: "#6d6d6d",
    StepStatus.PENDING: "#6d6d6d",
    StepStatus.QUEUED: "#8a6d00",
    StepStatus.RETRYING: "#e65100",
    StepStatus.THROTTLED: "#b54708",
    RunStatus.COMPENSATING: "#5925dc",
    StepStatus.WAITING: "#6a1b9a",
    StepStatus.SKIPPED: "#6d6d6d",
    AttemptStatus.RUNNING: "#1f6fb2",
    CircuitState.CLOSED: "#2e7d32",
    CircuitState.OPEN: "#c62828",
    CircuitState.HALF_OPEN: "#b54708",
}


class PrettyJSONField(forms.JSONField):
    """Shows JSON indented, so a step's input or an agent's config is readable when edited."""

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)


JSON_FORM_FIELD: Mapping[type[models.Field[Any, Any]], Mapping[str, Any]] = {
    models.JSONField: {
        "form_class": PrettyJSONField,
        "widget": forms.Textarea(attrs={"rows": 4, "cols": 70, "class": "vLargeTextField"}),
    }
}


def coloured_status(status: str, label: str) -> SafeString:
    colour = STATUS_COLOURS.get(status, "inherit")
    return format_html('<strong style="color: {}">{}</strong>', colour, label)


def pretty_json(value: Any) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


def seconds_label(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ReadOnlyAdmin(admin.ModelAdmin):
    """History is looked at, never edited: no add, change or delete, whoever asks."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# ---------------------------------------------------------------------------------------------
# Definitions


class AgentHealthInline(ReadOnlyInline):
    """The agent's circuit breaker as the engine last left it (no row yet: closed)."""

    model = AgentHealth
    fields = ("circuit_label", "counting_since", "opened_at", "reopens_at", "trial_step", "updated_at")
    readonly_fields = fields
    show_change_link = False
    # One row at most, so the admin titles the inline with the singular name.
    verbose_name = "health (circuit breaker)"

    @admin.display(description="Circuit")
    def circuit_label(self, obj: AgentHealth) -> SafeString:
        return coloured_status(obj.circuit_state, obj.get_circuit_state_display())


class AgentLimitsForm(forms.ModelForm):
    """The checks a workflow file's agent gets, as field errors (a `null` circuit was a 500)."""

    class Meta:
        model = Agent
        fields = ("name", "kind", "description", "config", "timeout_seconds", "retry", "fallback", "circuit", "max_concurrency")

    def _mapping(self, name: str, shape: str) -> dict[str, Any]:
        value = self.cleaned_data.get(name)
        if not isinstance(value, dict):
            raise forms.ValidationError(f"must be a mapping ({shape}); {{}} for none")
        return value

    def _checked(self, name: str, normalise: Any, shape: str) -> dict[str, Any]:
        value = self._mapping(name, shape)
        if not value:
            return {}  # no circuit breaker, no retry policy of its own
        problems = Problems()
        normalised = normalise(value, "agent", problems)
        if problems.items:
            raise forms.ValidationError([p.removeprefix("agent: ") for p in problems.items])
        return normalised or {}

    def clean_circuit(self) -> dict[str, Any]:
        return self._checked("circuit", normalise_circuit, "failures, window, cooldown")

    def clean_retry(self) -> dict[str, Any]:
        return self._checked("retry", normalise_retry, "attempts, backoff, max_backoff, jitter")

    def clean_config(self) -> dict[str, Any]:
        return self._mapping("config", "the settings of the agent's kind")

    def clean_fallback(self) -> str:
        fallback = self.cleaned_data.get("fallback") or ""
        if fallback and fallback == self.cleaned_data.get("name", self.instance.name):
            raise forms.ValidationError("must name another agent, not this one")
        if fallback and not Agent.objects.filter(name=fallback).exists():
            raise forms.ValidationError(f"unknown agent {fallback!r}")
        return fallback


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    form = AgentLimitsForm
    list_display = (
        "name",
        "kind",
        "simulated",
        "fallback",
        "timeout_seconds",
        "max_concurrency",
        "circuit_label",
        "updated_at",
    )
    list_filter = ("kind",)
    # The reverse one-to-one joins in the same query, so the circuit column costs nothing per row.
    list_select_related = ("health",)
    search_fields = ("name", "description")
    formfield_overrides = JSON_FORM_FIELD
    fields = (
        "name",
        "kind",
        "description",
        "config",
        "timeout_seconds",
        "retry",
        "fallback",
        "circuit",
        "max_concurrency",
        "events_link",
    )
    readonly_fields = ("events_link",)
    inlines = (AgentHealthInline,)

    @admin.display(description="Simulated", boolean=True, ordering="kind")
    def simulated(self, obj: Agent) -> bool:
        return obj.is_simulated

    @admin.display(description="Circuit", ordering="health__circuit_state")
    def circuit_label(self, obj: Agent) -> SafeString:
        if not obj.circuit:
            return format_html('<span style="color: {}">{}</span>', "#6d6d6d", "no breaker")
        health = getattr(obj, "health", None)
        state = health.circuit_state if health is not None else CircuitState.CLOSED
        return coloured_status(state, CircuitState(state).label)

    @admin.display(description="Circuit changes")
    def events_link(self, obj: Agent) -> SafeString:
        if obj.pk is None:
            return format_html("{}", "—")
        url = reverse("admin:orchestration_agentevent_changelist") + f"?agent__id__exact={obj.pk}"
        return format_html('<a href="{}">{} events</a>', url, obj.events.count())


class DraftStepInline(admin.StackedInline):
    model = DraftStep
    # DraftStep has two keys to Workflow (its own workflow and a sub-workflow it calls).
    fk_name = "workflow"
    extra = 0
    ordering = ("position", "id")
    formfield_overrides = JSON_FORM_FIELD
    fieldsets = (
        (None, {"fields": (("position", "key", "kind"), ("agent", "sub_workflow"), "after")}),
        (
            "Input, conditions and repetition",
            {"fields": ("input", "when", "for_each", "concurrency", "loop", "options")},
        ),
    )


class VersionInline(ReadOnlyInline):
    model = WorkflowVersion
    fields = ("number", "published_at", "published_by", "note")
    readonly_fields = fields
    ordering = ("-number",)
    verbose_name_plural = "published versions"


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "owner", "latest_version_number", "runs_count", "updated_at")
    list_select_related = ("owner",)
    search_fields = ("key", "name", "description")
    formfield_overrides = JSON_FORM_FIELD
    fields = ("key", "name", "description", "owner", "inputs", "output")
    inlines = (DraftStepInline, VersionInline)
    actions = ("publish_selected",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        # Subqueries rather than Max()/Count() over two joins: joining versions and runs at
        # once would multiply rows (versions x runs per workflow) before aggregating.
        latest = (
            WorkflowVersion.objects.filter(workflow=OuterRef("pk")).order_by("-number").values("number")[:1]
        )
        runs = (
            Run.objects.filter(workflow=OuterRef("pk"))
            .order_by()
            .values("workflow")
            .annotate(n=Count("pk"))
            .values("n")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                latest_number=Subquery(latest, output_field=IntegerField()),
                runs_total=Coalesce(Subquery(runs, output_field=IntegerField()), 0),
            )
        )

    @admin.display(description="Latest version", ordering="latest_number")
    def latest_version_number(self, obj: Any) -> str:
        return f"v{obj.latest_number}" if obj.latest_number else "not published"

    @admin.display(description="Runs", ordering="runs_total")
    def runs_count(self, obj: Any) -> int:
        return obj.runs_total

    @admin.action(description="Publish the drafts of the selected workflows", permissions=["change"])
    def publish_selected(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        for workflow in queryset:
            self._publish(request, workflow)

    def response_change(self, request: HttpRequest, obj: Workflow) -> HttpResponse:
        # The "Save and publish draft" button: the form and the step inlines are saved by
        # now, so what gets published is exactly what the user sees.
        if "_publish" in request.POST:
            if not self._publish(request, obj):
                self.message_user(
                    request,
                    "The draft was saved but not published; fix it and publish again.",
                    messages.WARNING,
                )
            return HttpResponseRedirect(request.get_full_path())
        return super().response_change(request, obj)

    def _publish(self, request: HttpRequest, workflow: Workflow) -> bool:
        previous = workflow.latest_version
        try:
            version = definitions.publish_draft(workflow, user=request.user)
        except SpecError as exc:
            for problem in exc.problems:
                self.message_user(request, problem, messages.ERROR)
            return False
        if previous is not None and version.pk == previous.pk:
            self.message_user(
                request, f"Nothing to publish: the draft of {workflow.key} is the same as version {version.number}.", messages.INFO
            )
            return True
        self.message_user(request, f"Published version {version.number} of {workflow.key}.", messages.SUCCESS)
        return True


@admin.register(DraftStep)
class DraftStepAdmin(admin.ModelAdmin):
    """Steps are normally edited inline on their workflow; this list helps find them."""

    list_display = ("key", "workflow", "position", "kind", "agent", "sub_workflow", "after")
    list_filter = ("kind",)
    list_select_related = ("workflow", "agent", "sub_workflow")
    search_fields = ("key", "workflow__key")
    ordering = ("workflow__key", "position", "id")
    formfield_overrides = JSON_FORM_FIELD


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "workflow", "number", "published_by", "published_at", "note")
    list_select_related = ("workflow", "published_by")
    list_filter = ("workflow",)
    fields = ("workflow", "number", "published_by", "published_at", "note", "spec_as_file")
    readonly_fields = fields

    @admin.display(description="Spec (as it would be exported)")
    def spec_as_file(self, obj: WorkflowVersion) -> SafeString:
        text = yaml.safe_dump(workflow_to_file(obj.spec), sort_keys=False, allow_unicode=True, width=100)
        return format_html("<pre>{}</pre>", text)


# ---------------------------------------------------------------------------------------------
# Runtime


class ExecutionDisplays:
    """Columns shared by runs and step runs: coloured status, duration, input and output."""

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj: Run | StepRun) -> SafeString:
        return coloured_status(obj.status, obj.get_status_display())

    @admin.display(description="Duration")
    def duration(self, obj: Run | StepRun) -> str:
        return seconds_label(obj.duration_seconds)

    @admin.display(description="Input")
    def input_json(self, obj: Run | StepRun) -> SafeString:
        return pretty_json(obj.input)

    @admin.display(description="Output")
    def output_json(self, obj: Run | StepRun) -> SafeString:
        return pretty_json(obj.output)


class StepRunInline(ReadOnlyInline):
    model = StepRun
    fk_name = "run"
    fields = (
        "step_key",
        "iteration",
        "map_index",
        "kind",
        "status_label",
        "agent_name",
        "attempts",
        "started_at",
        "finished_at",
        "error",
    )
    readonly_fields = fields
    ordering = ("id",)

    @admin.display(description="Status")
    def status_label(self, obj: StepRun) -> SafeString:
        return coloured_status(obj.status, obj.get_status_display())


@admin.register(Run)
class RunAdmin(ExecutionDisplays, ReadOnlyAdmin):
    list_display = (
        "id",
        "status_label",
        "workflow",
        "version_number",
        "started_by",
        "trigger",
        "created_at",
        "duration",
    )
    list_display_links = ("id",)
    list_filter = ("status", "trigger", "workflow")
    list_select_related = ("workflow", "version", "started_by")
    search_fields = ("id", "workflow__key", "error")
    date_hierarchy = "created_at"
    fields = (
        "workflow",
        "version",
        "status_label",
        "trigger",
        "started_by",
        "parent_step",
        "created_at",
        "finished_at",
        "duration",
        "input_json",
        "output_json",
        "error",
        "events",
    )
    readonly_fields = fields
    inlines = (StepRunInline,)
    actions = ("cancel_selected",)

    @admin.display(description="Version", ordering="version__number")
    def version_number(self, obj: Run) -> str:
        return f"v{obj.version.number}"

    @admin.display(description="Events")
    def events(self, obj: Run) -> SafeString:
        url = reverse("admin:orchestration_runevent_changelist") + f"?run__id__exact={obj.pk}"
        return format_html('<a href="{}">{} events</a>', url, obj.events.count())

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        # The admin shows runs read-only, so cancelling needs its own check: the model's
        # change permission is what "may alter a run" means.
        return request.user.has_perm("orchestration.change_run")

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        cancelled = 0
        for run_id in queryset.values_list("pk", flat=True):
            try:
                transitions.cancel_run(run_id=run_id, actor=request.user)
            except transitions.InvalidTransition as exc:
                # Finished already, possibly between the page loading and this click.
                self.message_user(request, f"Not cancelled: {exc}.", messages.WARNING)
            else:
                cancelled += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} run(s).", messages.SUCCESS)


class AttemptInline(ReadOnlyInline):
    model = Attempt
    fields = ("number", "status", "worker", "agent_name", "error_class", "error", "started_at", "finished_at")
    readonly_fields = fields
    ordering = ("number",)


@admin.register(StepRun)
class StepRunAdmin(ExecutionDisplays, ReadOnlyAdmin):
    list_display = (
        "id",
        "run",
        "step_key",
        "iteration",
        "map_index",
        "kind",
        "status_label",
        "agent_name",
        "attempts",
        "duration",
    )
    list_filter = ("status", "kind")
    list_select_related = ("run__workflow",)
    search_fields = ("step_key", "agent_name", "run__id")
    fields = (
        "run",
        "step_key",
        "iteration",
        "map_index",
        "parent",
        "kind",
        "status_label",
        "agent_name",
        "fallback_from",
        "attempts",
        "items_total",
        "items_done",
        "input_json",
        "output_json",
        "error_class",
        "error",
        "usage",
        "created_at",
        "queued_at",
        "started_at",
        "finished_at",
        "next_attempt_at",
        "lease_expires_at",
        "wake_at",
    )
    readonly_fields = fields
    inlines = (AttemptInline,)



@admin.register(Attempt)
class AttemptAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "step_run",
        "number",
        "status",
        "worker",
        "error_class",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "error_class")
    list_select_related = ("step_run",)
    search_fields = ("worker", "agent_name", "error")
    fields = (
        "step_run",
        "number",
        "status",
        "worker",
        "agent_name",
        "error_class",
        "error",
        "traceback_text",
        "usage",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields

    @admin.display(description="Traceback")
    def traceback_text(self, obj: Attempt) -> SafeString:
        return format_html("<pre>{}</pre>", obj.traceback)


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyAdmin):
    """The append-only log: nobody, not even a superuser, may change or delete a row here."""

    list_display = ("created_at", "run", "step_run", "kind", "transition", "actor", "message")
    list_filter = ("kind",)
    list_select_related = ("run__workflow", "step_run", "actor")
    search_fields = ("message", "run__id")
    fields = ("run", "step_run", "kind", "from_status", "to_status", "message", "data", "actor", "created_at")
    readonly_fields = fields

    @admin.display(description="From → to")
    def transition(self, obj: RunEvent) -> str:
        if not obj.from_status and not obj.to_status:
            return ""
        return f"{obj.from_status or '·'} → {obj.to_status or '·'}"


# ---------------------------------------------------------------------------------------------
# Agent health (written by the engine; looked at here)


@admin.register(AgentHealth)
class AgentHealthAdmin(ReadOnlyAdmin):
    list_display = ("agent", "circuit_label", "opened_at", "reopens_at", "trial_step", "updated_at")
    list_filter = ("circuit_state",)
    list_select_related = ("agent", "trial_step")
    search_fields = ("agent__name",)
    fields = ("agent", "circuit_label", "counting_since", "opened_at", "reopens_at", "trial_step", "updated_at")
    readonly_fields = fields

    @admin.display(description="Circuit", ordering="circuit_state")
    def circuit_label(self, obj: AgentHealth) -> SafeString:
        return coloured_status(obj.circuit_state, obj.get_circuit_state_display())


@admin.register(AgentEvent)
class AgentEventAdmin(ReadOnlyAdmin):
    """Append-only, like run events: nobody may change or delete a row here."""

    list_display = ("created_at", "agent", "transition", "message")
    list_filter = ("to_state", "agent")
    list_select_related = ("agent",)
    search_fields = ("agent__name", "message")
    fields = ("agent", "from_state", "to_state", "message", "created_at")
    readonly_fields = fields

    @admin.display(description="From → to")
    def transition(self, obj: AgentEvent) -> str:
        return f"{obj.from_state or '·'} → {obj.to_state or '·'}"
