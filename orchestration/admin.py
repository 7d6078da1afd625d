"""The Django admin: edit agents and workflow drafts, publish versions, inspect runs.

Definitions are editable here; everything a run produces (versions, runs, steps, attempts,
events) is read-only, because it is history. The two writes that are not plain form saves,
publishing a draft and cancelling a run, go through orchestration.definitions and
orchestration.transitions like every other caller.

Staff who are not superusers see only the workflows and runs orchestration.access lets them
see, everywhere here (lists, filters, change pages, choices); Django's permissions say what they
may do to those, and changing a workflow or cancelling a run also needs operator rights on it.
Who has access to a workflow is changed by superusers only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

import yaml
from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.forms.fields import InvalidJSONInput
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from orchestration import access, definitions, transitions
from orchestration.agents import registry as agent_registry
from orchestration.agents import secrets as agent_secrets
from orchestration.durations import human_duration
from orchestration.models import (
    Agent,
    AgentEvent,
    AgentHealth,
    AgentVersion,
    AgentVersionEvent,
    Attempt,
    CircuitState,
    DraftStep,
    Run,
    RunEvent,
    StepRun,
    Workflow,
    WorkflowVersion,
)
from orchestration.spec import (
    MAX_VERSION_WEIGHT,
    Problems,
    SpecError,
    normalise_circuit,
    normalise_retry,
    version_config_problems,
    workflow_to_file,
)

# The model a shared base class administers, or the model of an inline and of its parent.
M = TypeVar("M", bound=models.Model)
P = TypeVar("P", bound=models.Model)

# The colours of coloured_status live in static/css/admin.css (baton-status--<status>): the
# Content-Security-Policy refuses style attributes.


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
    return format_html('<strong class="baton-status baton-status--{}">{}</strong>', status, label)


def pretty_json(value: Any) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


def seconds_label(seconds: float | None) -> str:
    # The same text as the dashboard's (orchestration.durations); a dash for "not finished".
    return human_duration(seconds) or "—"


class ReadOnlyAdmin(admin.ModelAdmin[M]):
    """History is looked at, never edited: no add, change or delete, whoever asks."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class SuperusersOnly(admin.ModelAdmin[M]):
    """For what is a secret or reaches outside (API tokens, alert rules with webhook URLs):
    superusers only, whatever model permissions a staff user was given."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)


class ReadOnlyInline(admin.TabularInline[M, P]):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class VisibleOnly(admin.ModelAdmin[M]):
    """Limits the changelist, change pages and actions to what orchestration.access shows.

    `workflow_path` or `run_path` names the way from this model to the workflow or the run
    whose visibility decides ("" when the model is that one). An object outside the queryset
    is "not found" to Django's admin, so a guessed URL reveals nothing either.
    """

    workflow_path: str | None = None
    run_path: str | None = None

    def get_queryset(self, request: HttpRequest) -> QuerySet[M]:
        queryset = super().get_queryset(request)
        user = request.user
        if user.is_superuser:
            return queryset
        if self.run_path is not None:
            visible: QuerySet[Any] = access.visible_runs(user)
            path = self.run_path
        else:
            assert self.workflow_path is not None, f"{type(self).__name__} names no path to check"
            visible = access.visible_workflows(user)
            path = self.workflow_path
        return queryset.filter(**{f"{path}__in" if path else "pk__in": visible.values("pk")})


def _operable_workflow_choices(request: HttpRequest, db_field: Any, kwargs: dict[str, Any]) -> None:
    # A draft step may only belong to a workflow one operates and call one one sees.
    if request.user.is_superuser:
        return
    if db_field.name == "workflow":
        kwargs["queryset"] = access.operable_workflows(request.user)
    elif db_field.name == "sub_workflow":
        # Also the ones their workflows already call, or saving a draft would drop the call.
        operable = access.operable_workflows(request.user).values("pk")
        called = DraftStep.objects.filter(workflow__in=operable).values("sub_workflow")
        kwargs["queryset"] = Workflow.objects.filter(
            Q(pk__in=access.visible_workflows(request.user).values("pk")) | Q(pk__in=called)
        )


# ---------------------------------------------------------------------------------------------
# Definitions


class AgentHealthInline(ReadOnlyInline[AgentHealth, Agent]):
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


class AgentLimitsForm(forms.ModelForm[Agent]):
    """The checks a workflow file's agent gets, as field errors (a `null` circuit was a 500)."""

    class Meta:
        model = Agent
        fields = ("name", "kind", "description", "config", "timeout_seconds", "retry", "fallback", "circuit", "max_concurrency", "risk")

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


class AgentForm(AgentLimitsForm):
    """An agent's config is code and secrets on the workers: only what the deployment allows.

    A python agent's function is chosen from BATON_PYTHON_AGENTS (a posted value that is not
    one of the choices is refused, and the choice replaces any `callable` typed into the
    config), and the variables its config reads must be allowed by BATON_AGENT_SECRETS.
    """

    callable = forms.ChoiceField(
        required=False,
        label="Python callable",
        help_text="For python agents: the function to call, from the deployment's BATON_PYTHON_AGENTS.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["callable"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", "—"), *((path, path) for path in agent_registry.choices())]
        current = (self.instance.config or {}).get("callable") if isinstance(self.instance.config, dict) else None
        if isinstance(current, str):
            self.initial.setdefault("callable", current)

    def clean_callable(self) -> str:
        path: str = self.cleaned_data.get("callable") or ""
        # The choices come from the registry already; this holds if the registry changed since.
        reason = agent_registry.problem(path) if path else None
        if reason is not None:
            raise forms.ValidationError(reason)
        return path

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        kind, config = cleaned.get("kind"), cleaned.get("config")
        if not isinstance(config, dict):
            return cleaned
        if kind == "python":
            path = cleaned.get("callable")
            if path:
                cleaned["config"] = config = {**config, "callable": path}
            elif "callable" not in self.errors:
                self.add_error("callable", "A python agent needs a callable; choose one.")
        for problem in agent_secrets.problems(str(kind), config):
            self.add_error("config", problem)
        return cleaned


class AgentVersionForm(forms.ModelForm[AgentVersion]):
    class Meta:
        model = AgentVersion
        fields = ("label", "weight", "config", "note")

    def clean_config(self) -> dict[str, Any]:
        value = self.cleaned_data.get("config")
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a mapping (laid over the agent's config); {} for none")
        return value

    def clean_weight(self) -> int:
        weight = self.cleaned_data.get("weight")
        if not isinstance(weight, int) or not 0 <= weight <= MAX_VERSION_WEIGHT:
            raise forms.ValidationError(f"must be a whole number from 0 to {MAX_VERSION_WEIGHT}")
        return weight


class AgentVersionFormSet(BaseInlineFormSet[AgentVersion, Agent, forms.ModelForm[AgentVersion]]):
    def clean(self) -> None:
        super().clean()
        # The agent as its own form has just cleaned it (kind, config, the chosen callable):
        # a version's config, laid over that, must pass what a workflow file's would.
        agent = self.instance
        for form in self.forms:
            cleaned = getattr(form, "cleaned_data", {})
            config = cleaned.get("config")
            if not isinstance(config, dict) or cleaned.get("DELETE"):
                continue
            agent_config = agent.config if isinstance(agent.config, dict) else {}
            for problem in version_config_problems(str(agent.kind), agent_config, config):
                form.add_error("config", problem)


class AgentVersionInline(admin.StackedInline[AgentVersion, Agent]):
    """The agent's versions; their weights are saved through definitions.set_version_weights,
    so every change of traffic is in the weights history below."""

    model = AgentVersion
    form = AgentVersionForm
    formset = AgentVersionFormSet
    extra = 0
    fields = (("label", "weight"), "config", "note")
    formfield_overrides = JSON_FORM_FIELD
    verbose_name = "version"
    verbose_name_plural = "versions (configs laid over the agent's, sharing its traffic by weight)"


class AgentVersionEventInline(ReadOnlyInline[AgentVersionEvent, Agent]):
    model = AgentVersionEvent
    fields = ("created_at", "actor", "weights_before", "weights_after", "reason")
    readonly_fields = fields
    ordering = ("-id",)
    show_change_link = False
    verbose_name_plural = "weights history"

    def get_queryset(self, request: HttpRequest) -> QuerySet[AgentVersionEvent]:
        return super().get_queryset(request).select_related("actor")


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin[Agent]):
    form = AgentForm
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
        "callable",
        "description",
        "config",
        "secret_variables",
        "timeout_seconds",
        "retry",
        "fallback",
        "circuit",
        "max_concurrency",
        "events_link",
    )
    readonly_fields = ("secret_variables", "events_link")
    inlines = (AgentHealthInline, AgentVersionInline, AgentVersionEventInline)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        if formset.model is not AgentVersion:
            super().save_formset(request, form, formset, change)
            return
        agent = form.instance
        # Labels, configs and notes are saved by the form; weights only through
        # set_version_weights, which records who changed them (new versions start at 0).
        before = dict(AgentVersion.objects.filter(agent=agent).values_list("pk", "weight"))
        wanted: list[tuple[AgentVersion, int]] = []
        for version in formset.save(commit=False):
            wanted.append((version, version.weight))
            version.weight = before.get(version.pk, 0)
            version.save()
        for version in formset.deleted_objects:
            version.delete()
        definitions.set_version_weights(
            agent=agent,
            weights={version.label: weight for version, weight in wanted},
            actor=request.user,
            reason="changed in admin",
        )

    @admin.display(description="Secret variables")
    def secret_variables(self, obj: Agent) -> SafeString:
        # Whether each variable the config (or a version's, laid over it) reads is set for
        # this server; never its value.
        rows = agent_secrets.availability(obj.kind, obj.config) if obj.pk else []
        if obj.pk:
            base = obj.config if isinstance(obj.config, dict) else {}
            for config in obj.versions.values_list("config", flat=True):
                overlay = config if isinstance(config, dict) else {}
                rows += [row for row in agent_secrets.availability(obj.kind, {**base, **overlay}) if row not in rows]
        if not rows:
            return format_html("{}", "none")
        return format_html_join(mark_safe("<br>"), "<code>{}</code>: {}", rows)

    @admin.display(description="Simulated", boolean=True, ordering="kind")
    def simulated(self, obj: Agent) -> bool:
        return obj.is_simulated

    @admin.display(description="Circuit", ordering="health__circuit_state")
    def circuit_label(self, obj: Agent) -> SafeString:
        if not obj.circuit:
            return format_html('<span class="baton-status baton-status--none">{}</span>', "no breaker")
        health = getattr(obj, "health", None)
        state = health.circuit_state if health is not None else CircuitState.CLOSED
        return coloured_status(state, CircuitState(state).label)

    @admin.display(description="Circuit changes")
    def events_link(self, obj: Agent) -> SafeString:
        if obj.pk is None:
            return format_html("{}", "—")
        url = reverse("admin:orchestration_agentevent_changelist") + f"?agent__id__exact={obj.pk}"
        return format_html('<a href="{}">{} events</a>', url, obj.events.count())


class DraftStepInline(admin.StackedInline[DraftStep, Workflow]):
    model = DraftStep
    # DraftStep has two keys to Workflow (its own workflow and a sub-workflow it calls).
    fk_name = "workflow"
    extra = 0
    ordering = ("position", "id")
    formfield_overrides = JSON_FORM_FIELD

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        _operable_workflow_choices(request, db_field, kwargs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
    fieldsets = (
        (None, {"fields": (("position", "key", "kind"), ("agent", "sub_workflow"), "after")}),
        (
            "Input, conditions and repetition",
            {"fields": ("input", "when", "for_each", "concurrency", "loop", "options")},
        ),
    )


class VersionInline(ReadOnlyInline[WorkflowVersion, Workflow]):
    model = WorkflowVersion
    fields = ("number", "published_at", "published_by", "note")
    readonly_fields = fields
    ordering = ("-number",)
    verbose_name_plural = "published versions"

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowVersion]:
        # Trials of the draft are listed with the versions (WorkflowVersionAdmin), not here.
        return super().get_queryset(request).filter(trial=False)


@admin.register(Workflow)
class WorkflowAdmin(VisibleOnly[Workflow]):
    list_display = ("key", "name", "owner", "latest_version_number", "runs_count", "updated_at")
    list_select_related = ("owner",)
    search_fields = ("key", "name", "description")
    formfield_overrides = JSON_FORM_FIELD
    fields = ("key", "name", "description", "owner", "viewer_groups", "operator_groups", "inputs", "output", "triggers")
    filter_horizontal = ("viewer_groups", "operator_groups")
    inlines = (DraftStepInline, VersionInline)
    actions = ("publish_selected",)
    workflow_path = ""
    # Who may see and operate a workflow: granting it is for superusers, or any operator
    # could hand the workflow (and its runs' data) to whomever they like.
    ACCESS_FIELDS = ("owner", "viewer_groups", "operator_groups")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if request.user.is_superuser else fields + self.ACCESS_FIELDS

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or access.can_operate(request.user, obj))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or access.can_operate(request.user, obj))

    def save_model(self, request: HttpRequest, obj: Workflow, form: Any, change: bool) -> None:
        # Staff who may add workflows but not grant access own what they add; otherwise the
        # workflow would vanish from their sight the moment it is saved.
        if not change and not request.user.is_superuser:
            obj.owner = request.user  # type: ignore[assignment]
        super().save_model(request, obj, form, change)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        # Subqueries rather than Max()/Count() over two joins: joining versions and runs at
        # once would multiply rows (versions x runs per workflow) before aggregating.
        latest = (
            WorkflowVersion.objects.filter(workflow=OuterRef("pk"), trial=False).order_by("-number").values("number")[:1]
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
        return int(obj.runs_total)

    @admin.action(description="Publish the drafts of the selected workflows", permissions=["change"])
    def publish_selected(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        for workflow in queryset:
            if not access.can_operate(request.user, workflow):
                self.message_user(request, f"Not published: you do not operate {workflow.key}.", messages.WARNING)
                continue
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
        # "Save and try the draft": the sample input is typed on the workflow's page, whose
        # form starts the trial (dashboard/try_draft.py), for those who may change it.
        if "_try" in request.POST:
            if not access.can_change(request.user, obj):
                self.message_user(
                    request, "The draft was saved; only its owner (or an admin) may try it.", messages.WARNING
                )
                return HttpResponseRedirect(request.get_full_path())
            self.message_user(request, f"The draft of {obj.key} was saved: try it with a sample input below.", messages.INFO)
            return HttpResponseRedirect(reverse("dashboard:workflow", args=[obj.key]) + "#try-title")
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
class DraftStepAdmin(VisibleOnly[DraftStep]):
    """Steps are normally edited inline on their workflow; this list helps find them."""

    list_display = ("key", "workflow", "position", "kind", "agent", "sub_workflow", "after")
    list_filter = ("kind",)
    list_select_related = ("workflow", "agent", "sub_workflow")
    search_fields = ("key", "workflow__key")
    ordering = ("workflow__key", "position", "id")
    formfield_overrides = JSON_FORM_FIELD
    workflow_path = "workflow"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or access.can_operate(request.user, obj.workflow))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or access.can_operate(request.user, obj.workflow))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        _operable_workflow_choices(request, db_field, kwargs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(ReadOnlyAdmin[WorkflowVersion], VisibleOnly[WorkflowVersion]):
    list_display = ("__str__", "workflow", "number", "trial", "published_by", "published_at", "note")
    list_select_related = ("workflow", "published_by")
    # Only workflows the reader sees: the plain filter would list every workflow's name.
    list_filter = (("workflow", admin.RelatedOnlyFieldListFilter), "trial")
    workflow_path = "workflow"
    fields = ("workflow", "number", "trial", "published_by", "published_at", "note", "spec_as_file")
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


class StepRunInline(ReadOnlyInline[StepRun, Run]):
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
class RunAdmin(ExecutionDisplays, ReadOnlyAdmin[Run], VisibleOnly[Run]):
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
    list_filter = ("status", "trigger", ("workflow", admin.RelatedOnlyFieldListFilter))
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
    run_path = ""

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
        operable = access.operable_runs(request.user).filter(pk__in=queryset.values("pk"))
        allowed = set(operable.values_list("pk", flat=True))
        for run_id in queryset.values_list("pk", flat=True):
            if run_id not in allowed:
                # Seen (a viewer's run) but not theirs to stop.
                self.message_user(request, f"Not cancelled: you may not cancel run {run_id}.", messages.WARNING)
                continue
            try:
                transitions.cancel_run(run_id=run_id, actor=request.user)
            except transitions.InvalidTransition as exc:
                # Finished already, possibly between the page loading and this click.
                self.message_user(request, f"Not cancelled: {exc}.", messages.WARNING)
            else:
                cancelled += 1
        if cancelled:
            self.message_user(request, f"Cancelled {cancelled} run(s).", messages.SUCCESS)


class VersionLabel:
    @admin.display(description="Agent version")
    def version_label(self, obj: Attempt) -> str:
        # The label only (selected with the attempt): the version's str() would read its
        # agent, a query per attempt.
        return obj.agent_version.label if obj.agent_version_id and obj.agent_version else "—"


class AttemptInline(VersionLabel, ReadOnlyInline[Attempt, StepRun]):
    model = Attempt
    fields = ("number", "status", "worker", "agent_name", "version_label", "error_class", "error", "started_at", "finished_at")
    readonly_fields = fields
    ordering = ("number",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Attempt]:
        return super().get_queryset(request).select_related("agent_version")


@admin.register(StepRun)
class StepRunAdmin(ExecutionDisplays, ReadOnlyAdmin[StepRun], VisibleOnly[StepRun]):
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
    run_path = "run"



@admin.register(Attempt)
class AttemptAdmin(VersionLabel, ReadOnlyAdmin[Attempt], VisibleOnly[Attempt]):
    list_display = (
        "id",
        "step_run",
        "number",
        "status",
        "worker",
        "version_label",
        "error_class",
        "started_at",
        "finished_at",
    )
    list_filter = ("status", "error_class")
    list_select_related = ("step_run", "agent_version")
    search_fields = ("worker", "agent_name", "error")
    fields = (
        "step_run",
        "number",
        "status",
        "worker",
        "agent_name",
        "agent_version",
        "error_class",
        "error",
        "traceback_text",
        "log_text",
        "usage",
        "total_tokens",
        "cost",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
    run_path = "step_run__run"

    @admin.display(description="Traceback")
    def traceback_text(self, obj: Attempt) -> SafeString:
        return format_html("<pre>{}</pre>", obj.traceback)

    @admin.display(description="Log lines")
    def log_text(self, obj: Attempt) -> SafeString:
        # Agent text, escaped line by line like the traceback.
        lines = format_html_join(
            "\n", "{} {} {}: {}", ((e["at"] or "", e["level"], e["source"], e["text"]) for e in obj.log_entries)
        )
        return format_html("<pre>{}</pre>", lines) if obj.log else format_html("{}", "—")


@admin.register(RunEvent)
class RunEventAdmin(ReadOnlyAdmin[RunEvent], VisibleOnly[RunEvent]):
    """The append-only log: nobody, not even a superuser, may change or delete a row here."""

    list_display = ("created_at", "run", "step_run", "kind", "transition", "actor", "message")
    list_filter = ("kind",)
    list_select_related = ("run__workflow", "step_run", "actor")
    search_fields = ("message", "run__id")
    fields = ("run", "step_run", "kind", "from_status", "to_status", "message", "data", "actor", "created_at")
    readonly_fields = fields
    run_path = "run"

    @admin.display(description="From → to")
    def transition(self, obj: RunEvent) -> str:
        if not obj.from_status and not obj.to_status:
            return ""
        return f"{obj.from_status or '·'} → {obj.to_status or '·'}"


# ---------------------------------------------------------------------------------------------
# Agent health (written by the engine; looked at here)


@admin.register(AgentHealth)
class AgentHealthAdmin(ReadOnlyAdmin[AgentHealth]):
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
class AgentEventAdmin(ReadOnlyAdmin[AgentEvent]):
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
