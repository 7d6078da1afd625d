"""What each kind of rule finds right now: one `Finding` per subject whose condition holds.

Nothing here writes. orchestration/alerts/transitions.py compares the findings with the rule's
open alerts: a new subject fires, a subject no longer found resolves. So "resolves when the
condition clears" is the same question asked again, and an alert can never be left open by a
missed event.

Each condition is a few grouped queries bounded by LIMIT (a flood of failing runs makes at most
that many alerts per rule and pass; the next pass sees the rest). Approval items belong to the
approvals app, which the orchestration package never imports: it registers its condition with
`register` in ApprovalsConfig.ready.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Exists, OuterRef, Q
from django.urls import reverse

from orchestration.alerts.models import DEFAULT_GRACE_SECONDS, AlertRule, RuleKind
from orchestration.durations import human_duration
from orchestration.models import Agent, AgentHealth, Attempt, CircuitState, Run, Workflow
from orchestration.rollouts.models import Drift
from orchestration.status import RUN_FINAL, AttemptStatus, RunStatus
from orchestration.triggers.models import Firing, FiringOutcome, Trigger, TriggerKind

# At most this many subjects per rule and pass.
LIMIT = 200


@dataclass(frozen=True)
class Finding:
    subject: str
    title: str
    detail: str = ""
    workflow_id: int | None = None
    run_id: int | None = None
    agent_id: int | None = None
    link: str = ""
    data: dict[str, Any] = field(default_factory=dict)


Condition = Callable[[AlertRule, datetime], list[Finding]]
_registered: dict[str, Condition] = {}


def register(kind: str, condition: Condition) -> None:
    """For conditions of apps this package does not import (the approvals app's overdue items)."""
    _registered[kind] = condition


def _runs(rule: AlertRule) -> Any:
    # Top-level runs only (a failing sub-workflow run fails its caller, which says so once),
    # and never trials of a draft: they are someone trying something out.
    runs = Run.objects.filter(parent_step__isnull=True, version__trial=False)
    return runs.filter(workflow_id=rule.workflow_id) if rule.workflow_id else runs


def _run_link(run_id: int) -> str:
    return reverse("dashboard:run", args=[run_id])


def run_duration(rule: AlertRule, now: datetime) -> list[Finding]:
    assert rule.threshold_seconds
    limit = timedelta(seconds=rule.threshold_seconds)
    rows = (
        _runs(rule)
        .exclude(status__in=RUN_FINAL)
        .filter(created_at__lte=now - limit)
        .order_by("created_at")
        .values_list("pk", "workflow_id", "workflow__name", "created_at")[:LIMIT]
    )
    return [
        Finding(
            subject=f"run:{pk}",
            title=f"Run {pk} of {name} has run for more than {human_duration(rule.threshold_seconds)}",
            detail=f"started {created:%Y-%m-%d %H:%M} UTC, still running",
            workflow_id=workflow_id,
            run_id=pk,
            link=_run_link(pk),
            data={"started": created.isoformat(), "threshold_seconds": rule.threshold_seconds},
        )
        for pk, workflow_id, name, created in rows
    ]


def run_failed(rule: AlertRule, now: datetime) -> list[Finding]:
    """Runs that failed in the window, until a later run of their workflow succeeds or they are
    retried (a retried run is running again, then succeeds or fails anew)."""
    since = now - timedelta(seconds=rule.window)
    recovered = Run.objects.filter(
        workflow_id=OuterRef("workflow_id"),
        parent_step__isnull=True,
        status=RunStatus.SUCCEEDED,
        pk__gt=OuterRef("pk"),  # started later (ids grow with time, and never tie)
    )
    rows = (
        _runs(rule)
        .filter(status=RunStatus.FAILED, finished_at__gte=since)
        .filter(~Exists(recovered))
        .order_by("-finished_at")
        .values_list("pk", "workflow_id", "workflow__name", "error", "finished_at")[:LIMIT]
    )
    return [
        Finding(
            subject=f"run:{pk}",
            title=f"Run {pk} of {name} failed",
            detail=(error or "")[:1000],
            workflow_id=workflow_id,
            run_id=pk,
            link=_run_link(pk),
            data={"finished": finished.isoformat() if finished else None},
        )
        for pk, workflow_id, name, error, finished in rows
    ]


def _over(rule: AlertRule, failed: int, total: int) -> bool:
    assert rule.failure_percent is not None
    return total >= rule.min_count and total > 0 and 100.0 * failed / total > rule.failure_percent


def _rate_words(failed: int, total: int, rule: AlertRule) -> str:
    return (
        f"{failed} of {total} failed ({100.0 * failed / total:.0f} %) in the last "
        f"{human_duration(rule.window)}; the rule fires above {rule.failure_percent:g} %"
    )


def failure_rate(rule: AlertRule, now: datetime) -> list[Finding]:
    since = now - timedelta(seconds=rule.window)
    if rule.agent_id is not None:
        agent = Agent.objects.get(pk=rule.agent_id)
        counts = Attempt.objects.filter(
            agent_name=agent.name, finished_at__gte=since, status__in=[AttemptStatus.SUCCEEDED, AttemptStatus.FAILED]
        ).aggregate(total=Count("id"), failed=Count("id", filter=Q(status=AttemptStatus.FAILED)))
        total, failed = counts["total"], counts["failed"]
        if not _over(rule, failed, total):
            return []
        return [
            Finding(
                subject=f"agent:{agent.pk}",
                title=f"Agent {agent.name}: {100.0 * failed / total:.0f} % of its attempts failed",
                detail="attempts: " + _rate_words(failed, total, rule),
                agent_id=agent.pk,
                link=reverse("dashboard:agents"),
                data={"failed": failed, "total": total},
            )
        ]
    rows = (
        _runs(rule)
        .filter(finished_at__gte=since, status__in=[RunStatus.SUCCEEDED, RunStatus.FAILED])
        .order_by()
        .values("workflow_id")
        .annotate(total=Count("id"), failed=Count("id", filter=Q(status=RunStatus.FAILED)))
    )
    over = {row["workflow_id"]: row for row in rows if _over(rule, row["failed"], row["total"])}
    names = dict(Workflow.objects.filter(pk__in=over).values_list("pk", "name"))
    keys = dict(Workflow.objects.filter(pk__in=over).values_list("pk", "key"))
    return [
        Finding(
            subject=f"workflow:{pk}",
            title=f"{names[pk]}: {100.0 * row['failed'] / row['total']:.0f} % of its runs failed",
            detail="runs: " + _rate_words(row["failed"], row["total"], rule),
            workflow_id=pk,
            link=reverse("dashboard:workflow", args=[keys[pk]]),
            data={"failed": row["failed"], "total": row["total"]},
        )
        for pk, row in sorted(over.items())[:LIMIT]
    ]


def circuit_open(rule: AlertRule, now: datetime) -> list[Finding]:
    # Half-open is still not healthy (one trial call at a time): the alert stays until it closes.
    health = AgentHealth.objects.filter(circuit_state__in=[CircuitState.OPEN, CircuitState.HALF_OPEN])
    if rule.agent_id is not None:
        health = health.filter(agent_id=rule.agent_id)
    rows = health.order_by("agent__name").values_list("agent_id", "agent__name", "opened_at", "reopens_at")[:LIMIT]
    return [
        Finding(
            subject=f"agent:{agent_id}",
            title=f"The circuit of agent {name} is open",
            detail=(f"opened {opened:%Y-%m-%d %H:%M} UTC" if opened else "open")
            + (f"; next trial call at {reopens:%H:%M:%S} UTC" if reopens else ""),
            agent_id=agent_id,
            link=reverse("dashboard:agents"),
            data={"opened": opened.isoformat() if opened else None},
        )
        for agent_id, name, opened, reopens in rows
    ]


def schedule_missed(rule: AlertRule, now: datetime) -> list[Finding]:
    """A schedule whose due slot was not fired in time (the ticker could not), or whose latest
    slot did not start a run (it could not start, or slots were skipped while Baton was down);
    cleared when a later slot starts its run."""
    grace = timedelta(seconds=rule.threshold_seconds or DEFAULT_GRACE_SECONDS)
    triggers = Trigger.objects.filter(kind=TriggerKind.CRON, paused=False).select_related("workflow")
    if rule.workflow_id:
        triggers = triggers.filter(workflow_id=rule.workflow_id)
    findings = []
    for trigger in triggers.order_by("pk")[:LIMIT]:
        last = (
            Firing.objects.filter(trigger=trigger, kind=TriggerKind.CRON)
            .order_by("-at", "-id")
            .values_list("outcome", "detail", "at")
            .first()
        )
        late = trigger.next_fire_at is not None and trigger.next_fire_at <= now - grace
        failed = last is not None and last[0] != FiringOutcome.STARTED
        if not (late or failed):
            continue
        if late:
            assert trigger.next_fire_at is not None
            why = f"its slot of {trigger.next_fire_at:%Y-%m-%d %H:%M} UTC has not been fired"
        else:
            assert last is not None
            why = f"its last slot did not start a run ({FiringOutcome(last[0]).label.lower()}: {last[1]})"
        findings.append(
            Finding(
                subject=f"trigger:{trigger.pk}",
                title=f"Schedule {trigger.cron} of {trigger.workflow.name} did not start a run",
                detail=why[:1000],
                workflow_id=trigger.workflow_id,
                link=reverse("dashboard:workflow", args=[trigger.workflow.key]),
                data={"late": late, "outcome": last[0] if last else None},
            )
        )
    return findings


def rollout_drift(rule: AlertRule, now: datetime) -> list[Finding]:
    drifts = Drift.objects.filter(cleared_at__isnull=True).select_related("rollout__workflow")
    if rule.workflow_id:
        drifts = drifts.filter(rollout__workflow_id=rule.workflow_id)
    findings = []
    for drift in drifts.order_by("pk")[:LIMIT]:
        workflow = drift.rollout.workflow
        findings.append(
            Finding(
                subject=f"drift:{drift.pk}",
                title=f"{workflow.name} drifts: {drift.get_metric_display()} worse this week",
                detail=(
                    f"{drift.get_metric_display()}: {drift.recent:g} over the last 7 days "
                    f"({drift.recent_runs} runs) against {drift.previous:g} over the 7 before "
                    f"({drift.previous_runs} runs)"
                ),
                workflow_id=workflow.pk,
                link=reverse("dashboard:rollout", args=[workflow.key]),
                data={"metric": drift.metric, "recent": drift.recent, "previous": drift.previous},
            )
        )
    return findings


CONDITIONS: dict[str, Condition] = {
    RuleKind.RUN_DURATION: run_duration,
    RuleKind.RUN_FAILED: run_failed,
    RuleKind.FAILURE_RATE: failure_rate,
    RuleKind.CIRCUIT_OPEN: circuit_open,
    RuleKind.SCHEDULE_MISSED: schedule_missed,
    RuleKind.ROLLOUT_DRIFT: rollout_drift,
}


def findings(rule: AlertRule, now: datetime) -> list[Finding] | None:
    """What the rule finds now; None when nobody provides its kind (the approvals app is not
    installed): then its open alerts are left as they are rather than resolved."""
    condition = CONDITIONS.get(rule.kind) or _registered.get(rule.kind)
    return None if condition is None else condition(rule, now)
