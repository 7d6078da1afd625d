"""The rollout pages: the list, one rollout with its gate and charts, the weekly review, the CSV.

Thin views: they look the workflow up through orchestration.access (404 when there is none,
403 when it is not the user's to see), ask transitions.may_decide / may_contribute before a
write (403 otherwise), call one function of orchestration.rollouts.transitions, and answer
with `_rollout.html`, the one partial the page includes and every htmx action returns. A
refusal (RolloutError) is shown on the page: in the partial for htmx, as a message after the
redirect for a plain form. What the pages show comes from dashboard.rollout_reads.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from io import StringIO

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from dashboard import rollout_reads
from dashboard.web import HtmxHttpRequest, partial_or_page, wants_partial
from orchestration import access
from orchestration.models import Agent, Run
from orchestration.rollouts import transitions
from orchestration.rollouts.models import ChecklistItem, Criterion, Note, NoteKind, Rollout, Window
from orchestration.rollouts.transitions import GateFailed, NotAllowed, RolloutError

MAX_TEXT = 2000
MAX_LINKED_RUNS = 20
MAX_WEIGHT = 1000
_RUN_IDS = re.compile(r"^[\s,#0-9]*$")
_FIELD_REFUSAL = re.compile(r"^[a-z_][a-z0-9_-]*: ")
# ASCII digits only ("²".isdigit() is true, and int() refuses it), and few of them.
_WHOLE = re.compile(r"[0-9]{1,6}")

DECIDE_REFUSED = "Only the rollout's owner, the workflow's owner or an admin may decide this rollout."
CONTRIBUTE_REFUSED = "Only the workflow's operators and those who decide the rollout may change its plan and notes."


def _rollout_for(request: HtmxHttpRequest, key: str) -> Rollout:
    """The workflow's rollout if the user sees the workflow (404 without one, 403 if hidden)."""
    workflow = access.get_workflow_for_user(request.user, key)
    return get_object_or_404(Rollout.objects.select_related("workflow", "workflow__owner", "owner"), workflow=workflow)


def _text(request: HtmxHttpRequest, name: str, *, required: bool = False) -> str:
    text = request.POST.get(name, "").strip()
    if len(text) > MAX_TEXT:
        raise RolloutError(f"{name}: at most {MAX_TEXT:,} characters (this one has {len(text):,})")
    if required and not text:
        raise RolloutError(f"{name}: write why")
    return text


@require_GET
@login_required
def index(request: HtmxHttpRequest) -> HttpResponse:
    context = rollout_reads.rollouts_list(request.user)
    return partial_or_page(request, "dashboard/rollouts/index.html", "dashboard/rollouts/_table.html", context)


@require_POST
@login_required
def start(request: HtmxHttpRequest, key: str) -> HttpResponse:
    workflow = access.get_workflow_for_user(request.user, key)
    if not rollout_reads.may_start(request.user, workflow):
        raise PermissionDenied("Only the workflow's owner or an admin may start its rollout.")
    try:
        transitions.start_rollout(workflow=workflow, owner=request.user, actor=request.user)
    except RolloutError as exc:
        messages.error(request, str(exc))
        return redirect("dashboard:rollouts")
    messages.success(request, f"Rollout of {workflow.name} started: pilot, day 1.")
    return redirect("dashboard:rollout", key=workflow.key)


@require_GET
@login_required
def detail(request: HtmxHttpRequest, key: str) -> HttpResponse:
    rollout = _rollout_for(request, key)
    context = rollout_reads.rollout_page(rollout, request.user)
    return partial_or_page(request, "dashboard/rollouts/rollout.html", "dashboard/rollouts/_rollout.html", context)


def _act(request: HtmxHttpRequest, key: str, *, decide: bool, change: Callable[[Rollout], str]) -> HttpResponse:
    """Check who asks, make the change, and answer with the page part or a redirect."""
    rollout = _rollout_for(request, key)
    if decide and not transitions.may_decide(request.user, rollout):
        raise PermissionDenied(DECIDE_REFUSED)
    if not decide and not transitions.may_contribute(request.user, rollout):
        raise PermissionDenied(CONTRIBUTE_REFUSED)
    notice = error = ""
    status = 200
    try:
        notice = change(rollout)
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
    except GateFailed as exc:
        error, status = str(exc), 409
    except RolloutError as exc:
        # "reason: required" is about what was typed (422); anything else about the state the
        # rollout is in now, which someone else may have changed (409).
        error, status = str(exc), 422 if _FIELD_REFUSAL.match(str(exc)) else 409
    rollout.refresh_from_db()
    if wants_partial(request):
        context = rollout_reads.rollout_page(rollout, request.user, notice=notice, error=error)
        return render(request, "dashboard/rollouts/_rollout.html", context, status=status)
    if error:
        messages.error(request, error)
    else:
        messages.success(request, notice)
    return redirect("dashboard:rollout", key=rollout.workflow.key)


@require_POST
@login_required
def promote(request: HtmxHttpRequest, key: str) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        reason = _text(request, "override_reason", required="override" in request.POST)
        before = rollout.get_stage_display()
        # The stage the person saw: if someone promoted meanwhile, this one changes nothing.
        seen = request.POST.get("from_stage", "")[:20]
        rollout = transitions.promote(rollout=rollout, actor=request.user, override_reason=reason, from_stage=seen)
        how = " by override" if reason else ""
        return f"Promoted{how} from {before} to {rollout.get_stage_display()}."

    return _act(request, key, decide=True, change=change)


@require_POST
@login_required
def pause(request: HtmxHttpRequest, key: str) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        transitions.pause(rollout=rollout, actor=request.user, reason=_text(request, "reason"))
        return "Rollout paused."

    return _act(request, key, decide=True, change=change)


@require_POST
@login_required
def resume(request: HtmxHttpRequest, key: str) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        rollout = transitions.resume(rollout=rollout, actor=request.user, reason=_text(request, "reason"))
        return f"Rollout resumed in {rollout.get_stage_display()}."

    return _act(request, key, decide=True, change=change)


@require_POST
@login_required
def roll_back(request: HtmxHttpRequest, key: str) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        transitions.roll_back(rollout=rollout, actor=request.user, reason=_text(request, "reason", required=True))
        return "Rollout rolled back."

    return _act(request, key, decide=True, change=change)


@require_POST
@login_required
def restart(request: HtmxHttpRequest, key: str) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        transitions.restart_pilot(rollout=rollout, actor=request.user, reason=_text(request, "reason"))
        return "Pilot restarted."

    return _act(request, key, decide=True, change=change)


@require_POST
@login_required
def criterion(request: HtmxHttpRequest, key: str, criterion_id: int) -> HttpResponse:
    """Edit one success criterion: its target, its window in days, on or off."""

    def change(rollout: Rollout) -> str:
        row = get_object_or_404(Criterion, pk=criterion_id, rollout=rollout)
        raw_target = request.POST.get("target", "").strip()[:40]
        raw_days = request.POST.get("window_days", "").strip()[:10]
        try:
            target = float(raw_target)
        except ValueError:
            raise RolloutError("target: a number, like 0.95 for 95% or 900 for 15 minutes") from None
        if not _WHOLE.fullmatch(raw_days):
            raise RolloutError("window_days: a whole number of days, from 1 to 90")
        enabled = request.POST.get("enabled", "") in ("1", "on", "true")
        row = transitions.change_criterion(
            criterion=row, actor=request.user, target=target, window_days=int(raw_days), enabled=enabled
        )
        return f"{row.get_metric_display()}: {row.get_comparison_display()} {row.target:g} over {row.window_days} days, {'on' if row.enabled else 'off'}."

    return _act(request, key, decide=True, change=change)


def _done(request: HtmxHttpRequest) -> bool:
    return request.POST.get("done", "") in ("1", "true", "on")


@require_POST
@login_required
def window_done(request: HtmxHttpRequest, key: str, window_id: int) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        window = get_object_or_404(Window, pk=window_id, rollout=rollout)
        window = transitions.set_window_done(window=window, done=_done(request), actor=request.user)
        return f"Days {window.first_day}–{window.last_day} marked {'done' if window.done else 'not done'}."

    return _act(request, key, decide=False, change=change)


@require_POST
@login_required
def checklist_done(request: HtmxHttpRequest, key: str, item_id: int) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        item = get_object_or_404(ChecklistItem, pk=item_id, rollout=rollout)
        item = transitions.set_checklist_done(item=item, done=_done(request), actor=request.user)
        return f"Checklist point marked {'done' if item.done else 'not done'}."

    return _act(request, key, decide=False, change=change)


def _linked_runs(request: HtmxHttpRequest, rollout: Rollout) -> list[Run]:
    """The runs a note names ("12, 15"), each one of this workflow's runs the user sees."""
    text = request.POST.get("runs", "")
    if len(text) > 500 or not _RUN_IDS.match(text):
        raise RolloutError("runs: run numbers separated by commas, like 12, 15")
    ids = sorted({int(n) for n in re.findall(r"\d+", text) if len(n) <= 12})
    if len(ids) > MAX_LINKED_RUNS:
        raise RolloutError(f"runs: at most {MAX_LINKED_RUNS} runs per note")
    seen = access.visible_among(request.user, ids)
    runs = {run.pk: run for run in Run.objects.filter(pk__in=seen)}
    unknown = [n for n in ids if n not in runs]
    if unknown:
        raise RolloutError(f"runs: no run you can see is numbered {', '.join(f'#{n}' for n in unknown)}")
    return [runs[n] for n in ids]


@require_POST
@login_required
def add_note(request: HtmxHttpRequest, key: str) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        kind = request.POST.get("kind", "")
        if kind not in NoteKind.values:
            raise RolloutError("kind: choose an issue or a reviewer note")
        text = _text(request, "text", required=False)
        if not text:
            raise RolloutError("text: write the note")
        transitions.add_note(rollout=rollout, kind=kind, text=text, actor=request.user, runs=_linked_runs(request, rollout))
        return "Issue logged." if kind == NoteKind.ISSUE else "Reviewer note added."

    return _act(request, key, decide=False, change=change)


@require_POST
@login_required
def resolve_issue(request: HtmxHttpRequest, key: str, note_id: int) -> HttpResponse:
    def change(rollout: Rollout) -> str:
        note = get_object_or_404(Note, pk=note_id, rollout=rollout, kind=NoteKind.ISSUE)
        transitions.resolve_issue(note=note, actor=request.user)
        return "Issue resolved."

    return _act(request, key, decide=False, change=change)


@require_POST
@login_required
def weights(request: HtmxHttpRequest, key: str, agent: str) -> HttpResponse:
    """The weights form (weight-<label> fields), or one click "roll back to <label>" (only=)."""

    def change(rollout: Rollout) -> str:
        row = Agent.objects.filter(name=agent).prefetch_related("versions").first()
        if row is None:
            raise Http404("No such agent.")
        labels = [v.label for v in row.versions.all()]
        only = request.POST.get("only", "")
        if only:
            if only not in labels:
                raise RolloutError(f"only: {only[:50]!r} is not a version of {agent}")
            new = {label: (100 if label == only else 0) for label in labels}
        else:
            new = {}
            for label in labels:
                raw = request.POST.get(f"weight-{label}", "").strip()
                if not _WHOLE.fullmatch(raw) or int(raw) > MAX_WEIGHT:
                    raise RolloutError(f"weight-{label}: a whole number from 0 to {MAX_WEIGHT}")
                new[label] = int(raw)
        reason = _text(request, "reason", required=False) or (f"roll back to {only}" if only else "")
        transitions.shift_weights(rollout=rollout, agent=row, weights=new, actor=request.user, reason=reason)
        if only:
            return f"All of {agent}'s traffic now goes to {only}."
        return f"Weights of {agent} set: " + ", ".join(f"{label} {weight}" for label, weight in new.items()) + "."

    return _act(request, key, decide=True, change=change)


@require_GET
@login_required
def review(request: HtmxHttpRequest, key: str) -> HttpResponse:
    rollout = _rollout_for(request, key)
    now = timezone.now()
    today = timezone.localdate(now)
    notice = ""
    try:
        monday = rollout_reads.parse_week(request.GET.get("week", "")[:20], today)
    except ValueError as exc:
        notice, monday = f"{exc}. Showing this week.", rollout_reads.parse_week("", today)
    context = rollout_reads.weekly_review(rollout, request.user, monday, now=now)
    context["notice"] = notice
    return render(request, "dashboard/rollouts/review.html", context, status=400 if notice else 200)


@require_GET
@login_required
def metrics_csv(request: HtmxHttpRequest, key: str) -> HttpResponse:
    rollout = _rollout_for(request, key)
    try:
        since, until = rollout_reads.parse_csv_range(
            request.GET.get("since", ""), request.GET.get("until", ""), timezone.localdate()
        )
    except ValueError as exc:
        return HttpResponse(f"{exc}\n", status=400, content_type="text/plain; charset=utf-8")
    out = StringIO()
    writer = csv.writer(out)
    writer.writerow(rollout_reads.CSV_HEADER)
    writer.writerows(rollout_reads.csv_rows(rollout.workflow, since, until))
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{rollout.workflow.key}-metrics-{since}-{until}.csv"'
    return response

