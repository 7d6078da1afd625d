"""Read-mostly pages for operations leads: runs, workflows, agents, one run.

Each live part of a page is one partial (`_runs_table.html`, `_run_live.html`, `_agents.html`,
`_workflow_cards.html`): the full page includes it, an htmx action returns it alone, and when
the live push (dashboard/live) says it changed, the page fetches it here again. What
the run and agents partials show comes from dashboard.read_models, which those three callers share;
the views only look up, check access and answer.
Every change goes through orchestration.transitions; nothing here writes a row itself. Who
sees and operates what is orchestration.access's call: every query of workflows and runs here
starts from its querysets, and every run or workflow a URL names is looked up through it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Max, OuterRef, Subquery
from django.http import Http404, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from dashboard import agent_status, inputs, overview, read_models, runs_list, workflow_page
from dashboard.web import HtmxHttpRequest, partial_or_page, wants_partial
from orchestration import access, definitions, limits, transitions
from orchestration.models import Run, StepRun, Workflow, WorkflowVersion
from orchestration.status import RunStatus
from orchestration.triggers import transitions as trigger_transitions

# ---------------------------------------------------------------------------------------------
# The overview (the home page)


@require_GET
@login_required
def overview_page(request: HtmxHttpRequest) -> HttpResponse:
    return partial_or_page(
        request, "dashboard/overview.html", "dashboard/_overview.html", overview.overview_page(request.user)
    )


# ---------------------------------------------------------------------------------------------
# Runs


@require_GET
@login_required
def runs(request: HtmxHttpRequest) -> HttpResponse:
    context = runs_list.runs_page(request.user, request.GET)
    # Bulk cancel / retry: the boxes are offered to whoever may operate some workflow.
    context["can_bulk"] = request.user.is_superuser or access.operable_workflows(request.user).exists()
    return partial_or_page(request, "dashboard/runs.html", "dashboard/_runs_table.html", context)


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
    latest = WorkflowVersion.objects.filter(workflow=OuterRef("pk"), trial=False).order_by("-number").values("pk")[:1]
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
    return partial_or_page(
        request, "dashboard/workflows.html", "dashboard/_workflow_cards.html", {"cards": _workflow_cards(request)}
    )


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
    if wants_partial(request):
        context = {"workflow": workflow, "version": version, "form": form}
        return render(request, "dashboard/_start_form.html", context, status=422)
    # Without JavaScript the whole page comes back, this workflow's form showing the problem.
    return render(request, "dashboard/workflows.html", {"cards": _workflow_cards(request, {workflow.pk: form})}, status=422)


@require_GET
@login_required
def workflow_detail(request: HtmxHttpRequest, key: str) -> HttpResponse:
    workflow = access.get_workflow_for_user(request.user, key)
    context = workflow_page.workflow_page(workflow, request.user, request.GET)
    return partial_or_page(request, "dashboard/workflow.html", "dashboard/_version_diff.html", context)


@require_POST
@login_required
def roll_back(request: HtmxHttpRequest, key: str) -> HttpResponse:
    workflow = access.get_workflow_for_user(request.user, key)
    if not access.can_change(request.user, workflow):
        raise PermissionDenied("Only the workflow's owner (or an admin) may roll it back.")
    text = request.POST.get("number", "")
    try:
        if not text.isdigit() or len(text) > 9:
            raise definitions.RollBackRefused(f"{text[:20]!r} is not a version number.")
        version = definitions.roll_back_to(workflow=workflow, number=int(text), actor=request.user)
    except definitions.RollBackRefused as exc:
        messages.warning(request, str(exc))
    else:
        messages.success(request, f"Published v{version.number}: {version.note}.")
    return redirect("dashboard:workflow", key=workflow.key)


@require_POST
@login_required
def pause_triggers(request: HtmxHttpRequest, key: str) -> HttpResponse:
    """Pause or resume every trigger of the workflow (`paused`: "yes" or "no")."""
    workflow = access.get_workflow_for_user(request.user, key)
    if not access.can_change(request.user, workflow):
        raise PermissionDenied("Only the workflow's owner (or an admin) may pause or resume its triggers.")
    paused = request.POST.get("paused") == "yes"
    changed = trigger_transitions.set_workflow_paused(workflow=workflow, paused=paused, actor=request.user)
    word = "paused" if paused else "resumed"
    messages.success(request, f"{changed} trigger{'' if changed == 1 else 's'} {word}." if changed else f"Nothing to do: its triggers were {word} already.")
    return redirect("dashboard:workflow", key=workflow.key)


# ---------------------------------------------------------------------------------------------
# Agents


@require_GET
@login_required
def agents(request: HtmxHttpRequest) -> HttpResponse:
    context = read_models.agents_page(request.user)
    return partial_or_page(request, "dashboard/agents.html", "dashboard/_agents.html", context)


# ---------------------------------------------------------------------------------------------
# One run


@require_GET
@login_required
def run_detail(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id)
    # A big run's table shows its first hundred rows (the open ones first) unless asked for all.
    context = read_models.run_page(run, request.user, all_steps=request.GET.get("steps") == "all")
    return partial_or_page(request, "dashboard/run.html", "dashboard/_run_live.html", context)


@require_POST
@login_required
def cancel_run(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    run = access.get_run_for_user(request.user, run_id, operate=True)
    try:
        transitions.cancel_run(run_id=run.pk, actor=request.user, reason=request.POST.get("reason", "").strip())
    except transitions.InvalidTransition:
        # Someone (or the run itself) got there first; the page shows what happened.
        return _after_action(request, run, f"Run {run.pk} is already {Run.objects.get(pk=run.pk).status}.", 409)
    except ValueError as exc:
        return _after_action(request, run, f"Not cancelled: {exc}", 422)
    return _after_action(request, run, f"Run {run.pk} cancelled.", 200)


@require_POST
@login_required
def retry_run(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    """Retry from failure; the form may give one failed step's edited input as JSON."""
    run = access.get_run_for_user(request.user, run_id, operate=True)
    try:
        step = request.POST.get("step", "").strip()
        edited = _json_field(request.POST.get("input", ""), field="input")
        given = {step: edited} if step and edited is not _BLANK else None
        transitions.retry_run(run_id=run.pk, actor=request.user, reason=request.POST.get("reason", "").strip(), inputs=given)
    except transitions.InvalidTransition as exc:
        return _after_action(request, run, f"Not retried: {exc}.", 409)
    except ValueError as exc:
        return _after_action(request, run, f"Not retried: {exc}", 422)
    return _after_action(request, run, f"Run {run.pk} retried from its failure.", 200)


@require_POST
@login_required
def rerun_run(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    """A new run of the same (or latest) version, same or edited input: its page opens."""
    run = access.get_run_for_user(request.user, run_id, operate=True)
    try:
        edited = _json_field(request.POST.get("input", ""), field="input")
        again = transitions.rerun(
            run_id=run.pk,
            actor=request.user,
            input=None if edited is _BLANK else edited,
            latest=request.POST.get("latest") == "on",
        )
    except transitions.InvalidTransition as exc:
        return _after_action(request, run, f"Not rerun: {exc}.", 409)
    except ValueError as exc:
        return _after_action(request, run, f"Not rerun: {exc}", 422)
    url = reverse("dashboard:run", args=[again.pk])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


_BLANK = object()


def _json_field(text: str, *, field: str) -> Any:
    """A JSON textarea: _BLANK when left empty; ValueError naming the field when too long or not JSON."""
    if not text.strip():
        return _BLANK
    limit = limits.max_input_bytes()
    if len(text) > limit:
        raise ValueError(f"{field}: {len(text):,} characters; at most {limit:,} are allowed")
    try:
        return limits.load_json(text, field=field)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{field}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def _after_action(request: HtmxHttpRequest, run: Run, notice: str, status: int) -> HttpResponse:
    """An operator action's answer: htmx gets the run's live partial with the notice; a plain
    form post, the run page after a redirect, the notice as a message."""
    run.refresh_from_db()
    if wants_partial(request):
        # A page showing every step row (?steps=all) keeps showing them all after the action.
        all_steps = "steps=all" in (request.htmx.current_url or "")
        context = read_models.run_page(run, request.user, notice, all_steps=all_steps)
        return render(request, "dashboard/_run_live.html", context, status=status)
    messages.add_message(request, messages.SUCCESS if status == 200 else messages.WARNING, notice)
    return redirect("dashboard:run", run_id=run.pk)


def _page_number(request: HtmxHttpRequest) -> str | None:
    # Paginator.get_page turns anything that is not a page number into the first or last page.
    return request.GET.get("page", "")[:12] or None


@require_GET
@login_required
def step_items(request: HtmxHttpRequest, run_id: int, key: str) -> HttpResponse:
    """A for_each step's items, filtered and paginated; seen by whoever sees the run."""
    run = access.get_run_for_user(request.user, run_id)
    heads = StepRun.objects.filter(run=run, step_key=key[:100], map_index__isnull=True, items_total__isnull=False)
    round_text = request.GET.get("round", "")[:6]
    if round_text.isdigit():
        heads = heads.filter(iteration=int(round_text))
    head = heads.order_by("-iteration").first()
    if head is None:
        raise Http404("This run has no for_each step by that name.")
    context = read_models.step_items(run, head, status=request.GET.get("status", "all")[:20], page=_page_number(request))
    return partial_or_page(request, "dashboard/step_items.html", "dashboard/_step_items.html", context)


@require_GET
@login_required
def step_detail(request: HtmxHttpRequest, run_id: int, step_id: int) -> HttpResponse:
    """One step row's input, output and attempts: what the run page shows when a step is
    opened, and a page of its own for a link or a browser without JavaScript."""
    run = access.get_run_for_user(request.user, run_id)
    step = StepRun.objects.filter(run=run, pk=step_id, map_index__isnull=True).first()
    if step is None:
        raise Http404("This run has no such step.")
    context = read_models.step_detail(run, step)
    return partial_or_page(request, "dashboard/step_detail.html", "dashboard/_step_detail.html", context)


@require_GET
@login_required
def run_events(request: HtmxHttpRequest, run_id: int) -> HttpResponse:
    """The run's whole event history, a hundred events a page, oldest or newest first."""
    run = access.get_run_for_user(request.user, run_id)
    newest_first = request.GET.get("order") == "newest"
    context = {
        "run": run,
        "events": read_models.event_page(run, page=_page_number(request) or 1, newest_first=newest_first),
        "order": "newest" if newest_first else "oldest",
    }
    return partial_or_page(request, "dashboard/run_events.html", "dashboard/_run_events.html", context)


# ---------------------------------------------------------------------------------------------
# Bulk actions from the runs list

MAX_BULK_RUNS = 500
BULK_ACTIONS = {
    # action: (what the confirmation and result call it, the states a run must be in)
    "cancel": ("Cancel", "cancelled", "running"),
    "retry": ("Retry", "retried", "failed or cancelled"),
}


@require_POST
@login_required
def bulk_runs(request: HtmxHttpRequest) -> HttpResponse:
    """Cancel or retry the runs ticked on the runs list: first a page that says how many runs
    it will change (and why the others will not change), then, confirmed, each run on its own
    transition; the list says how many were done and why the others were not."""
    action = request.POST.get("action", "")
    if action not in BULK_ACTIONS:
        return render(request, "dashboard/runs_bulk.html", {"problem": "Choose Cancel or Retry."}, status=422)
    texts = request.POST.getlist("run")
    if len(texts) > MAX_BULK_RUNS:
        problem = f"{len(texts):,} runs ticked; at most {MAX_BULK_RUNS} at a time."
        return render(request, "dashboard/runs_bulk.html", {"problem": problem}, status=422)
    ids = sorted({int(text) for text in texts if text.isdigit() and len(text) < 12})
    if not ids:
        return render(request, "dashboard/runs_bulk.html", {"problem": "Tick the runs first."}, status=422)
    reason = request.POST.get("reason", "").strip()
    back = _runs_list_url(request.POST.get("back", ""))
    found = {run.pk: run for run in access.visible_runs(request.user).select_related("workflow", "parent_step").filter(pk__in=ids)}
    allowed, refused = [], {"you may not see": 0, "you may not change": 0, "not in a state for it": 0}
    for pk in ids:
        run = found.get(pk)
        if run is None:
            refused["you may not see"] += 1
        elif not access.can_operate_run(request.user, run):
            refused["you may not change"] += 1
        elif not _bulk_applies(action, run):
            refused["not in a state for it"] += 1
        else:
            allowed.append(run)
    if request.POST.get("confirmed") != "yes":
        verb, _, states = BULK_ACTIONS[action]
        context = {
            "action": action,
            "question": f"{verb} {len(allowed)} {states} run{'' if len(allowed) == 1 else 's'}?",
            "allowed": allowed,
            "refused": {why: count for why, count in refused.items() if count},
            "reason": reason,
            "back": back,
            "back_query": back.partition("?")[2],
        }
        return render(request, "dashboard/runs_bulk.html", context, status=200 if allowed else 409)
    done, failed_again = 0, []
    for run in allowed:
        try:
            if action == "cancel":
                transitions.cancel_run(run_id=run.pk, actor=request.user, reason=reason)
            else:
                transitions.retry_run(run_id=run.pk, actor=request.user, reason=reason)
            done += 1
        except (transitions.InvalidTransition, ValueError) as exc:
            # Changed since the confirmation (it ended, someone else retried it): say so.
            failed_again.append(f"#{run.pk}: {exc}")
    _, past, _ = BULK_ACTIONS[action]
    notice = f"{done} run{'' if done == 1 else 's'} {past}."
    others = [f"{count} {why}" for why, count in refused.items() if count] + failed_again
    if others:
        notice += " Not " + past + ": " + "; ".join(others[:20]) + ("; …" if len(others) > 20 else "") + "."
    messages.add_message(request, messages.SUCCESS if done and not others else messages.WARNING, notice)
    return redirect(back)


def _bulk_applies(action: str, run: Run) -> bool:
    if action == "cancel":
        return run.status == RunStatus.RUNNING
    # A sub-workflow's run is retried through its caller (transitions.retry_run says so).
    return run.status in (RunStatus.FAILED, RunStatus.CANCELLED) and run.parent_step_id is None


def _runs_list_url(query: str) -> str:
    """The runs list with the filters it was ticked under: only a query string is taken back."""
    filters = QueryDict(query[:2000].lstrip("?"))
    return reverse("dashboard:runs") + ("?" + filters.urlencode() if filters else "")
