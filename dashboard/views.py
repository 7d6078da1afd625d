"""Read-mostly pages for operations leads: runs, workflows, agents, one run.

Each live part of a page is one partial (`_runs_table.html`, `_run_live.html`, `_agents.html`): the full page
includes it, an htmx poll or action returns it alone, and the websocket push will render it.
Every change goes through orchestration.transitions; nothing here writes a row itself. Who
sees and operates what is orchestration.access's call: every query of workflows and runs here
starts from its querysets, and every run or workflow a URL names is looked up through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, F, Max, OuterRef, Q, Subquery, Sum
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from dashboard import agent_status, graph, inputs
from orchestration import access, transitions
from orchestration.models import (
    Agent,
    AgentKind,
    Attempt,
    Run,
    RunEvent,
    StepKind,
    StepRun,
    Workflow,
    WorkflowVersion,
)
from orchestration.status import STEP_FINAL, RunStatus
from orchestration.usage import run_usage


class HtmxHttpRequest(HttpRequest):
    """A request after django-htmx's middleware, as its docs suggest for type checking."""

    htmx: HtmxDetails


RUNS_PER_PAGE = 50
# A for_each over thousands of items writes thousands of events; the page shows the latest.
TIMELINE_LIMIT = 200


def _partial_or_page(request: HtmxHttpRequest, page: str, partial: str, context: dict[str, Any]) -> HttpResponse:
    """The whole page, or only its live partial when htmx asks (a poll or an action)."""
    response = render(request, partial if request.htmx else page, context)
    # The same URL answers with two bodies; caches must not hand one to the other.
    patch_vary_headers(response, ("HX-Request",))
    return response


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class RunRow:
    run: Run
    done: int
    total: int
    # Whether the run that called this sub-workflow run may be shown (and linked to).
    parent_visible: bool = False

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


def progress_for(runs: list[Run]) -> dict[int, int]:
    """Finished steps per run, in one aggregate query over the runs' head rows.

    A step counts as finished when every head row it has is final: with a loop, a step sent
    back for round 2 has a final round-1 row and an open round-2 row, and is not done.
    """
    rows = (
        StepRun.objects.filter(run__in=[r.pk for r in runs], map_index__isnull=True)
        .order_by()
        .values("run_id")
        .annotate(
            steps=Count("step_key", distinct=True),
            open=Count("step_key", distinct=True, filter=~Q(status__in=STEP_FINAL)),
        )
    )
    return {row["run_id"]: row["steps"] - row["open"] for row in rows}


@require_GET
@login_required
def runs(request: HtmxHttpRequest) -> HttpResponse:
    queryset = access.visible_runs(request.user).select_related("workflow", "version", "started_by", "parent_step")
    status = request.GET.get("status", "")
    if status in RunStatus.values:
        queryset = queryset.filter(status=status)
    workflow_key = request.GET.get("workflow", "")
    if workflow_key:
        queryset = queryset.filter(workflow__key=workflow_key)
    page = Paginator(queryset, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    page_runs = list(page.object_list)
    done = progress_for(page_runs)
    parents = _visible_parents(request, page_runs)
    rows = [
        RunRow(
            run=run,
            done=done.get(run.pk, 0),
            total=len(run.version.spec.get("steps", [])),
            parent_visible=run.parent_step is not None and run.parent_step.run_id in parents,
        )
        for run in page_runs
    ]
    filters = request.GET.copy()
    filters.pop("page", None)
    context = {
        "page": page,
        "rows": rows,
        "statuses": RunStatus.choices,
        "status": status,
        "workflows": access.visible_workflows(request.user).values_list("key", "name"),
        "workflow_key": workflow_key,
        "filter_query": filters.urlencode(),
        "filtered": bool(status or workflow_key),
    }
    return _partial_or_page(request, "dashboard/runs.html", "dashboard/_runs_table.html", context)


def _visible_parents(request: HtmxHttpRequest, runs: list[Run]) -> set[int]:
    """Which of these sub-workflow runs' callers the user sees (one query, none without sub-runs).

    A sub-workflow run may be seen through its own workflow while its caller is not: then the
    page says nothing about the caller.
    """
    return access.visible_among(request.user, {run.parent_step.run_id for run in runs if run.parent_step is not None})


# ---------------------------------------------------------------------------------------------
# Workflows


@dataclass
class WorkflowCard:
    workflow: Workflow
    version: WorkflowVersion | None
    counts: dict[str, int]
    last_run_at: Any
    form: inputs.StartForm
    llm_warnings: list[agent_status.LlmWarning]
    # Viewers see the card and its runs, without a start form.
    can_start: bool = False

    @property
    def total_runs(self) -> int:
        return sum(self.counts.values())

    @property
    def status_counts(self) -> list[tuple[str, int]]:
        return [(status, self.counts[status]) for status in RunStatus.values if self.counts.get(status)]


def _schema(version: WorkflowVersion | None) -> dict[str, Any]:
    return (version.spec.get("inputs") or {}) if version is not None else {}


def _workflow_cards(request: HtmxHttpRequest, forms: dict[int, inputs.StartForm] | None = None) -> list[WorkflowCard]:
    """The workflows this user sees, with their latest version, run counts and LLM warnings,
    in six queries."""
    latest = WorkflowVersion.objects.filter(workflow=OuterRef("pk")).order_by("-number").values("pk")[:1]
    workflows = list(
        access.visible_workflows(request.user).select_related("owner").annotate(latest_id=Subquery(latest))
    )
    startable = set(access.operable_workflows(request.user).values_list("pk", flat=True))
    versions = WorkflowVersion.objects.in_bulk([w.latest_id for w in workflows if w.latest_id])
    counts: dict[int, dict[str, int]] = {}
    last_run: dict[int, Any] = {}
    # Every run of a workflow one sees is a run one sees: counting by workflow leaks nothing.
    runs = Run.objects.filter(workflow__in=[w.pk for w in workflows])
    for row in runs.order_by().values("workflow_id", "status").annotate(n=Count("id"), last=Max("created_at")):
        counts.setdefault(row["workflow_id"], {})[row["status"]] = row["n"]
        if last_run.get(row["workflow_id"]) is None or row["last"] > last_run[row["workflow_id"]]:
            last_run[row["workflow_id"]] = row["last"]
    warnings = agent_status.llm_warnings({pk: version.spec for pk, version in versions.items()})
    forms = forms or {}
    cards = []
    for workflow in workflows:
        version = versions.get(workflow.latest_id)
        cards.append(
            WorkflowCard(
                workflow=workflow,
                version=version,
                counts=counts.get(workflow.pk, {}),
                last_run_at=last_run.get(workflow.pk),
                form=forms.get(workflow.pk) or inputs.build_form(_schema(version)),
                llm_warnings=warnings.get(version.pk, []) if version is not None else [],
                can_start=workflow.pk in startable,
            )
        )
    return cards


@require_GET
@login_required
def workflows(request: HtmxHttpRequest) -> HttpResponse:
    return render(request, "dashboard/workflows.html", {"cards": _workflow_cards(request)})


@require_POST
@login_required
def start_run(request: HtmxHttpRequest, key: str) -> HttpResponse:
    workflow = access.get_workflow_for_user(request.user, key, operate=True)
    version = workflow.latest_version
    schema = _schema(version)
    values, errors = inputs.parse(schema, request.POST)
    if not errors:
        try:
            # The version whose form was parsed, even if another was published meanwhile.
            run = transitions.start_run(
                workflow=workflow, version=version, input=values, started_by=request.user, trigger="dashboard"
            )
        except ValueError as exc:
            errors = inputs.field_errors(str(exc), set(schema))
        except LookupError as exc:
            errors = {"": str(exc)}
        else:
            url = reverse("dashboard:run", args=[run.pk])
            return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    form = inputs.build_form(schema, request.POST, errors)
    if request.htmx:
        context = {"workflow": workflow, "version": version, "form": form}
        return render(request, "dashboard/_start_form.html", context, status=422)
    # Without JavaScript the whole page comes back, this workflow's form showing the problem.
    return render(request, "dashboard/workflows.html", {"cards": _workflow_cards(request, {workflow.pk: form})}, status=422)


# ---------------------------------------------------------------------------------------------
# Agents


@require_GET
@login_required
def agents(request: HtmxHttpRequest) -> HttpResponse:
    # Agents are shared, so every signed-in user sees them; what they are doing is counted
    # over the runs this user sees (superusers: all), so no figure reveals a hidden run.
    rows = agent_status.agent_rows(runs=None if request.user.is_superuser else access.visible_runs(request.user))
    context = {
        "rows": rows,
        "open_circuits": sum(1 for row in rows if row.circuit_state != "closed"),
        "in_flight": sum(row.in_flight for row in rows),
        "throttled": sum(row.throttled for row in rows),
    }
    return _partial_or_page(request, "dashboard/agents.html", "dashboard/_agents.html", context)


# ---------------------------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class StepRow:
    step: StepRun
    agent_simulated: bool
    latest: bool
    child_run_id: int | None
    attempts: int
    # With fallback_from set: whether the primary agent was called and failed, or was never
    # called because its circuit was open.
    primary_called: bool = False

    @property
    def fold_id(self) -> str:
        # Lets static/js/baton.js keep an opened output open across the 2-second refreshes.
        return f"step-output-{self.step.pk}"


def _run_context(run: Run, user: Any, notice: str = "") -> dict[str, Any]:
    """What the run page, its htmx refresh and its live push show `user`, who may see `run`."""
    spec = run.version.spec
    order = {s["key"]: i for i, s in enumerate(spec.get("steps", []))}
    rows = list(StepRun.objects.filter(run=run, map_index__isnull=True))
    # Compensations ("<key>.undo") are not steps of the spec: they get their own section.
    compensations = [row for row in rows if row.kind == StepKind.COMPENSATION]
    step_rows = sorted(
        (row for row in rows if row.kind != StepKind.COMPENSATION),
        key=lambda s: (order.get(s.step_key, len(order)), s.iteration, s.pk),
    )
    heads: dict[str, StepRun] = {}
    for row in step_rows:
        if row.step_key not in heads or row.iteration > heads[row.step_key].iteration:
            heads[row.step_key] = row
    simulated = set(
        Agent.objects.filter(
            name__in={s.agent_name for s in rows if s.agent_name}, kind=AgentKind.SIMULATED
        ).values_list("name", flat=True)
    )
    # A for_each head is never attempted itself; its items are.
    item_attempts = dict(
        StepRun.objects.filter(run=run, parent__isnull=False)
        .order_by()
        .values("parent_id")
        .annotate(total=Sum("attempts"))
        .values_list("parent_id", "total")
    )
    took_over = [row.pk for row in step_rows if row.fallback_from]
    primary_called = (
        set(
            Attempt.objects.filter(step_run__in=took_over, step_run__fallback_from=F("agent_name")).values_list(
                "step_run_id", flat=True
            )
        )
        if took_over
        else set()
    )
    children = dict(
        Run.objects.filter(parent_step__run=run).order_by("pk").values_list("parent_step_id", "pk")
    )
    events_total = run.events.count()
    events = list(
        RunEvent.objects.filter(run=run)
        .select_related("step_run", "actor")
        .order_by("-id")[:TIMELINE_LIMIT]
    )[::-1]
    usage = run_usage(run)
    return {
        "run": run,
        "graph": graph.build(spec, heads),
        "steps": [
            StepRow(
                step=row,
                agent_simulated=row.agent_name in simulated,
                latest=heads[row.step_key] is row,
                child_run_id=children.get(row.pk),
                attempts=item_attempts.get(row.pk, row.attempts),
                primary_called=row.pk in primary_called,
            )
            for row in step_rows
        ],
        # Newest first, as the engine undoes them.
        "compensations": [
            StepRow(step=row, agent_simulated=row.agent_name in simulated, latest=True, child_run_id=None, attempts=row.attempts)
            for row in sorted(compensations, key=lambda c: c.pk)
        ],
        "events": events,
        "events_hidden": max(0, events_total - len(events)),
        "steps_total": len(order),
        "steps_done": sum(1 for key in order if key in heads and heads[key].status in STEP_FINAL),
        "usage": usage if usage["total_tokens"] or usage["cost"] else None,
        "notice": notice,
        "can_operate": access.can_operate_run(user, run),
        # Seen through its own workflow, a sub-workflow run names no caller the user may not see.
        "parent_visible": run.parent_step is not None and bool(access.visible_among(user, [run.parent_step.run_id])),
    }


@require_GET
@login_required
def run_detail(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id)
    return _partial_or_page(request, "dashboard/run.html", "dashboard/_run_live.html", _run_context(run, request.user))


@require_POST
@login_required
def cancel_run(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id, operate=True)
    try:
        transitions.cancel_run(run_id=run.pk, actor=request.user)
    except transitions.InvalidTransition:
        # Someone (or the run itself) got there first; the page shows what happened.
        run.refresh_from_db()
        notice, status, level = f"Run {run.pk} is already {run.status}.", 409, messages.WARNING
    else:
        run.refresh_from_db()
        notice, status, level = f"Run {run.pk} cancelled.", 200, messages.SUCCESS
    if request.htmx:
        return render(request, "dashboard/_run_live.html", _run_context(run, request.user, notice), status=status)
    messages.add_message(request, level, notice)
    return redirect("dashboard:run", run_id=run.pk)
