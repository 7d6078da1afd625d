"""Rollouts in the JSON API: read them, and promote, pause, resume or roll back with a token.

A django-ninja Router that approvals/api.py mounts at /api/rollouts/ (that module owns the
NinjaAPI, its authentication and its error handlers, which answer this router's refusals too:
NotAllowed 403, GateFailed 409 with the failing verdicts, another RolloutError 409 or 422).
A workflow the caller may not see is 404, exactly like one that does not exist, as for
approval items. Every write goes through orchestration.rollouts.transitions, as on the pages.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, Literal

from django.http import HttpRequest
from django.utils import timezone
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from orchestration import access
from orchestration.api_errors import ErrorOut, responses
from orchestration.models import Agent
from orchestration.rollouts import gates, metrics, transitions
from orchestration.rollouts.models import DailySnapshot, Rollout

router = Router(tags=["rollouts"])

StageName = Literal["pilot", "standardize", "expand", "scaled", "paused", "rolled_back"]
MetricName = Literal[
    "success_rate",
    "p95_duration",
    "intervention_rate",
    "approval_wait",
    "retries_per_run",
    "loops_per_run",
    "cost_per_run",
    "runs",
]
MAX_SNAPSHOT_DAYS = 366


class VerdictOut(Schema):
    metric: MetricName
    label: str
    comparison: Literal["gte", "lte"]
    target: float
    actual: float | None
    passed: bool
    runs: int
    since: datetime
    until: datetime


class GateOut(Schema):
    passed: bool
    checked_at: datetime
    verdicts: list[VerdictOut]


class WindowOut(Schema):
    id: int
    first_day: int
    last_day: int
    role: str
    owner: str | None
    focus: str
    expected_output: str
    due_on: date
    done: bool


class ChecklistOut(Schema):
    id: int
    text: str
    done: bool


class DriftOut(Schema):
    metric: MetricName
    recent: float
    previous: float
    recent_runs: int
    previous_runs: int
    detected_at: datetime


class VersionOut(Schema):
    agent: str
    label: str
    share: float
    runs: int
    success_rate: float | None
    approvals_decided: int
    rejection_rate: float | None
    loops_per_run: float | None
    attempts: int
    latency_p50: float | None
    latency_p95: float | None
    cost_per_run: float | None


class RolloutSummaryOut(Schema):
    workflow: str
    name: str
    stage: StageName
    paused_from: StageName | None
    owner: str | None
    started_on: date
    gate_passed: bool | None
    gate_checked_at: datetime | None
    url: str


class RolloutOut(RolloutSummaryOut):
    success_metric: str
    rollback_conditions: str
    gate: GateOut
    windows: list[WindowOut]
    checklist: list[ChecklistOut]
    open_drift: list[DriftOut]
    versions: list[VersionOut]


class SnapshotOut(Schema):
    day: date
    scope: str  # "workflow", or the version: "v3"
    runs_started: int
    runs_succeeded: int
    runs_failed: int
    runs_cancelled: int
    duration_p50: float | None
    duration_p95: float | None
    approvals_requested: int
    approvals_approved: int
    approvals_rejected: int
    approvals_expired: int
    approval_wait_p50: float | None
    approval_wait_p95: float | None
    manual_tasks: int
    exceptions: int
    retries: int
    loop_iterations: int
    tokens: int
    cost: float
    computed_at: datetime


class PromoteIn(Schema):
    override_reason: str = ""
    # The stage the caller last saw: if the rollout has moved on since, nothing changes (409).
    from_stage: StageName | Literal[""] = ""


class ReasonIn(Schema):
    reason: str = ""


class RefusedOut(ErrorOut):
    verdicts: list[VerdictOut] = []


def _username(user: Any) -> str | None:
    return user.get_username() if user is not None else None


def _rollout(request: HttpRequest, key: str) -> Rollout:
    """The rollout of a workflow the caller sees; 404 otherwise (nothing says it exists)."""
    rollout = Rollout.objects.select_related("workflow", "owner").filter(workflow__key=key).first()
    if rollout is None or not access.can_view(request.auth, rollout.workflow):  # type: ignore[attr-defined]
        raise HttpError(404, f"No rollout of a workflow {key!r} you can see.")
    return rollout


def _decided(request: HttpRequest, key: str) -> Rollout:
    """The rollout, if the caller may decide it (NotAllowed, answered 403, if they only see it)."""
    rollout = _rollout(request, key)
    if not transitions.may_decide(request.auth, rollout):  # type: ignore[attr-defined]
        raise transitions.NotAllowed("Only the rollout's owner, the workflow's owner or an admin may decide this rollout.")
    return rollout


def _url(rollout: Rollout) -> str:
    return f"/rollouts/{rollout.workflow.key}/"


def verdict_payload(verdict: gates.Verdict) -> dict[str, Any]:
    return {
        "metric": verdict.metric,
        "label": verdict.label,
        "comparison": verdict.comparison,
        "target": verdict.target,
        "actual": verdict.actual,
        "passed": verdict.passed,
        "runs": verdict.runs,
        "since": verdict.since,
        "until": verdict.until,
    }


def summary_payload(rollout: Rollout) -> dict[str, Any]:
    return {
        "workflow": rollout.workflow.key,
        "name": rollout.workflow.name,
        "stage": rollout.stage,
        "paused_from": rollout.paused_from or None,
        "owner": _username(rollout.owner),
        "started_on": rollout.started_on,
        "gate_passed": rollout.gate_passed,
        "gate_checked_at": rollout.gate_checked_at,
        "url": _url(rollout),
    }


def rollout_payload(rollout: Rollout, *, now: datetime | None = None) -> dict[str, Any]:
    gate = gates.evaluate(rollout, now=now)
    compared = gates.compare_versions(rollout, now=now)
    names = dict(Agent.objects.filter(pk__in={v.version.agent_id for v in compared}).values_list("pk", "name"))
    return {
        **summary_payload(rollout),
        "success_metric": rollout.success_metric,
        "rollback_conditions": rollout.rollback_conditions,
        "gate": {"passed": gate.passed, "checked_at": gate.checked_at, "verdicts": [verdict_payload(v) for v in gate.verdicts]},
        "windows": [
            {
                "id": w.pk,
                "first_day": w.first_day,
                "last_day": w.last_day,
                "role": w.role,
                "owner": _username(w.owner),
                "focus": w.focus,
                "expected_output": w.expected_output,
                "due_on": w.due_on,
                "done": w.done,
            }
            for w in rollout.windows.select_related("owner")
        ],
        "checklist": [{"id": c.pk, "text": c.text, "done": c.done} for c in rollout.checklist.all()],
        "open_drift": [
            {
                "metric": d.metric,
                "recent": d.recent,
                "previous": d.previous,
                "recent_runs": d.recent_runs,
                "previous_runs": d.previous_runs,
                "detected_at": d.detected_at,
            }
            for d in rollout.drifts.filter(cleared_at__isnull=True)
        ],
        "versions": [
            {
                "agent": names[v.version.agent_id],
                "label": v.version.label,
                "share": v.share,
                "runs": v.runs,
                "success_rate": v.success_rate,
                "approvals_decided": v.approvals_decided,
                "rejection_rate": v.rejection_rate,
                "loops_per_run": v.loops_per_run,
                "attempts": v.attempts,
                "latency_p50": v.latency_p50,
                "latency_p95": v.latency_p95,
                "cost_per_run": v.cost_per_run,
            }
            for v in compared
        ],
    }


@router.get("", response=responses({200: list[RolloutSummaryOut]}), summary="Rollouts you can see")
def list_rollouts(request: HttpRequest) -> Any:
    visible = access.visible_workflows(request.auth)  # type: ignore[attr-defined]
    rollouts = Rollout.objects.filter(workflow__in=visible.values("pk")).select_related("workflow", "owner")
    return Status(200, [summary_payload(r) for r in rollouts.order_by("workflow__name")])


@router.get("/{key}", response=responses({200: RolloutOut}, 404), summary="One rollout, its gate evaluated now")
def get_rollout(request: HttpRequest, key: str) -> Any:
    return Status(200, rollout_payload(_rollout(request, key)))


def _day(name: str, text: str | None) -> date | None:
    try:
        return metrics.parse_day(name, text or "")
    except ValueError as exc:
        raise HttpError(422, str(exc)) from None


@router.get("/{key}/snapshots", response=responses({200: list[SnapshotOut]}, 404), summary="Daily figures")
def snapshots(request: HttpRequest, key: str, since: str | None = None, until: str | None = None) -> Any:
    """One row per day and scope (the workflow, then each version with runs that day); by
    default the last 30 days, at most 366 at a time."""
    rollout = _rollout(request, key)
    last = _day("until", until) or timezone.localdate()
    first = _day("since", since) or last - timedelta(days=29)
    if first > last:
        raise HttpError(422, "since: must be on or before until")
    if (last - first).days + 1 > MAX_SNAPSHOT_DAYS:
        raise HttpError(422, f"since: at most {MAX_SNAPSHOT_DAYS} days at a time")
    rows = DailySnapshot.objects.filter(workflow=rollout.workflow, day__gte=first, day__lte=last).select_related("version")
    ordered = sorted(rows, key=lambda s: (s.day, s.version is not None, s.version.number if s.version else 0))
    fields = [f for f in SnapshotOut.model_fields if f not in ("day", "scope")]
    return Status(
        200,
        [
            {"day": s.day, "scope": "workflow" if s.version is None else f"v{s.version.number}", **{f: getattr(s, f) for f in fields}}
            for s in ordered
        ],
    )


WRITE_RESPONSES = responses({200: RolloutOut, 409: RefusedOut, 422: RefusedOut}, 403, 404)


@router.post("/{key}/promote", response=WRITE_RESPONSES, summary="Promote to the next stage")
def promote(request: HttpRequest, key: str, payload: PromoteIn) -> Any:
    """Moves pilot → standardize → expand → scaled when every criterion passes. While one
    fails it is 409 with the failing verdicts, unless `override_reason` says why to go on
    anyway (recorded with the verdicts)."""
    rollout = _decided(request, key)
    rollout = transitions.promote(
        rollout=rollout,
        actor=request.auth,  # type: ignore[attr-defined]
        override_reason=payload.override_reason,
        from_stage=payload.from_stage,
    )
    return Status(200, rollout_payload(rollout))


@router.post("/{key}/pause", response=WRITE_RESPONSES, summary="Pause")
def pause(request: HttpRequest, key: str, payload: ReasonIn) -> Any:
    rollout = transitions.pause(rollout=_decided(request, key), actor=request.auth, reason=payload.reason)  # type: ignore[attr-defined]
    return Status(200, rollout_payload(rollout))


@router.post("/{key}/resume", response=WRITE_RESPONSES, summary="Resume where it was paused")
def resume(request: HttpRequest, key: str, payload: ReasonIn) -> Any:
    rollout = transitions.resume(rollout=_decided(request, key), actor=request.auth, reason=payload.reason)  # type: ignore[attr-defined]
    return Status(200, rollout_payload(rollout))


@router.post("/{key}/roll-back", response=WRITE_RESPONSES, summary="Roll back (a reason is required)")
def roll_back(request: HttpRequest, key: str, payload: ReasonIn) -> Any:
    rollout = transitions.roll_back(rollout=_decided(request, key), actor=request.auth, reason=payload.reason)  # type: ignore[attr-defined]
    return Status(200, rollout_payload(rollout))
