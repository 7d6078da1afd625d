"""Every write to a rollout: start, promote (gate or written override), pause, resume, roll
back, restart, windows, checklist, notes, criteria, agent-version weights, and the daily
pass's gate check and drift signals.

Each function is keyword-only, locks the rollout row, checks the state it starts from, runs in
one transaction and appends a RolloutEvent (who, from, to, why, the gate's verdicts).
Views, the API and the daily pass call these for every change that has a history. The brief's
own words (owner, success metric, rollback conditions, drift margin) are plain edits in the
admin, which keeps no event for them.
"""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestration import access, definitions
from orchestration.models import Agent, Run, Workflow
from orchestration.rollouts import gates
from orchestration.rollouts.gates import DriftFinding, Gate
from orchestration.rollouts.models import (
    ACTIVE_STAGES,
    NEXT_STAGE,
    ChecklistItem,
    Comparison,
    Criterion,
    Drift,
    Metric,
    Note,
    NoteKind,
    Rollout,
    RolloutEvent,
    RolloutEventKind,
    Stage,
    Window,
)

logger = logging.getLogger("baton.rollouts")

MAX_TEXT = 2000  # reasons, notes
MAX_NOTE_RUNS = 50
MAX_WINDOW_DAYS = 90


class RolloutError(Exception):
    """A refused change; the message says why, in words for the person who asked."""


class NotAllowed(RolloutError):
    pass


class GateFailed(RolloutError):
    """Promotion refused: a criterion fails and no override reason was given."""

    def __init__(self, message: str, gate: Gate):
        super().__init__(message)
        self.gate = gate


# --- the playbook's defaults ----------------------------------------------------------------

# (first day, last day, role, focus, expected output)
DEFAULT_WINDOWS = [
    (1, 3, "Automation Lead", "Define the workflow boundary and success metric",
     "Pilot brief with trigger, reviewer, and rollback conditions"),
    (4, 10, "Workflow Owner", "Run the first implementation and inspect the planner",
     "Initial runbook, issue log, and reviewer notes"),
    (11, 20, "Ops Lead", "Standardize reviews, prompts, and executors",
     "Repeatable checklist plus weekly metrics view"),
    (21, 30, "Engineering Lead", "Plan expansion with clear handoffs and approval logic",
     "Approved plan for the next workflow or team"),
]  # fmt: skip
DEFAULT_CHECKLIST = [
    "Trigger, inputs and output are documented.",
    "One owner for implementation and one reviewer are named.",
    "Human approvals are kept for risky or irreversible actions.",
    "Metrics and failure cases are reviewed every week.",
    "Expand only after the first workflow survives real operating conditions.",
]
# (metric, comparison, target, window days)
DEFAULT_CRITERIA = [
    (Metric.SUCCESS_RATE, Comparison.AT_LEAST, 0.95, 7),
    (Metric.P95_DURATION, Comparison.AT_MOST, 900.0, 7),
    (Metric.INTERVENTION_RATE, Comparison.AT_MOST, 0.25, 7),
    (Metric.APPROVAL_WAIT, Comparison.AT_MOST, 14400.0, 7),
    (Metric.RETRIES_PER_RUN, Comparison.AT_MOST, 0.5, 7),
    (Metric.LOOPS_PER_RUN, Comparison.AT_MOST, 1.5, 7),
    (Metric.COST_PER_RUN, Comparison.AT_MOST, 0.50, 7),
    (Metric.RUNS, Comparison.AT_LEAST, 20.0, 7),
]


# --- who --------------------------------------------------------------------------------------


def _active(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def may_decide(user: Any, rollout: Rollout) -> bool:
    """Promote, override, pause, resume, roll back, restart, edit criteria: the rollout's
    owner, the workflow's owner, superusers."""
    if not _active(user):
        return False
    return bool(user.is_superuser) or user.pk in (rollout.owner_id, rollout.workflow.owner_id)


def may_contribute(user: Any, rollout: Rollout) -> bool:
    """Notes, windows and checklist: those who may decide, and the workflow's operators."""
    return may_decide(user, rollout) or (_active(user) and access.can_operate(user, rollout.workflow))


def _must_decide(actor: Any, rollout: Rollout) -> None:
    if not may_decide(actor, rollout):
        raise NotAllowed("Only the rollout's owner, the workflow's owner or an administrator may do this.")


def _must_contribute(actor: Any, rollout: Rollout) -> None:
    if not may_contribute(actor, rollout):
        raise NotAllowed("Only the rollout's deciders and the workflow's operators may do this.")


# --- input ------------------------------------------------------------------------------------


def _text(value: Any, name: str, *, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RolloutError(f"{name}: must be text")
    text: str = value.strip()
    if required and not text:
        raise RolloutError(f"{name}: is required")
    if len(text) > MAX_TEXT:
        raise RolloutError(f"{name}: at most {MAX_TEXT:,} characters (this one has {len(text):,})")
    return text


def _person(actor: Any) -> Any:
    """The user to record (the daily pass and commands act as nobody)."""
    return actor if _active(actor) else None


# --- the row lock and the audit row -----------------------------------------------------------


def _locked(rollout: Rollout) -> Rollout:
    """The rollout row, locked until the transaction ends: two people promoting at once take
    turns, and the second sees the stage the first left (select_for_update; SQLite has a
    single writer anyway)."""
    return Rollout.objects.select_for_update().select_related("workflow").get(pk=rollout.pk)


def _event(
    rollout: Rollout,
    kind: str,
    actor: Any,
    *,
    from_stage: str = "",
    to_stage: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> RolloutEvent:
    return RolloutEvent.objects.create(
        rollout=rollout,
        kind=kind,
        from_stage=from_stage,
        to_stage=to_stage,
        actor=_person(actor),
        reason=reason,
        data=data or {},
    )


def _move(rollout: Rollout, *, to: str, kind: str, actor: Any, reason: str, data: dict[str, Any] | None = None, **fields: Any) -> Rollout:
    before = rollout.stage
    rollout.stage = to
    for name, value in fields.items():
        setattr(rollout, name, value)
    rollout.save(update_fields=["stage", *fields, "updated_at"])
    _event(rollout, kind, actor, from_stage=before, to_stage=to, reason=reason, data=data)
    return rollout


def _stage_label(stage: str) -> str:
    return str(Stage(stage).label).lower()


# --- stages -----------------------------------------------------------------------------------


def start_rollout(
    *, workflow: Workflow, owner: Any, actor: Any, started_on: date | None = None, now: datetime | None = None
) -> Rollout:
    """A rollout in pilot with the playbook's windows, checklist and default criteria."""
    now = now or timezone.now()
    if not _active(actor) or not (actor.is_superuser or actor.pk == workflow.owner_id):
        raise NotAllowed("Only the workflow's owner or an administrator may start its rollout.")
    if owner is not None and not _active(owner):
        raise RolloutError("owner: must be an active user")
    started_on = started_on or timezone.localdate(now)
    try:
        with transaction.atomic():
            rollout = Rollout.objects.create(workflow=workflow, owner=owner, started_on=started_on)
            Window.objects.bulk_create(
                Window(
                    rollout=rollout,
                    position=position,
                    first_day=first,
                    last_day=last,
                    role=role,
                    focus=focus,
                    expected_output=output,
                    due_on=started_on + timedelta(days=last - 1),
                )
                for position, (first, last, role, focus, output) in enumerate(DEFAULT_WINDOWS)
            )
            ChecklistItem.objects.bulk_create(
                ChecklistItem(rollout=rollout, position=position, text=text)
                for position, text in enumerate(DEFAULT_CHECKLIST)
            )
            Criterion.objects.bulk_create(
                Criterion(rollout=rollout, position=position, metric=m, comparison=c, target=t, window_days=d)
                for position, (m, c, t, d) in enumerate(DEFAULT_CRITERIA)
            )
            _event(rollout, RolloutEventKind.CREATED, actor, to_stage=Stage.PILOT, data={"started_on": started_on.isoformat()})
    except IntegrityError:
        # The OneToOne on workflow: someone started it a moment ago.
        raise RolloutError(f"The workflow '{workflow.key}' already has a rollout.") from None
    return rollout


def promote(
    *, rollout: Rollout, actor: Any, override_reason: str = "", from_stage: str = "", now: datetime | None = None
) -> Rollout:
    """To the next stage when every criterion passes, or with a written override reason.

    A refusal is recorded too (a `promotion_refused` event, in its own transaction after the
    attempt's has ended, so raising GateFailed does not take the record with it). The verdicts
    go in the event; gate_checked_at is the daily check's (check_rollout), so a promotion
    never makes the daily pass skip a day's drift check.

    `from_stage`: the stage the person saw. Two people pressing "Promote" at once would
    otherwise promote twice; with it, the second hears that the rollout has moved on.
    """
    now = now or timezone.now()
    _must_decide(actor, rollout)
    reason = _text(override_reason, "override_reason")
    with transaction.atomic():
        locked = _locked(rollout)
        if from_stage and locked.stage != from_stage:
            raise RolloutError(f"The rollout is in {_stage_label(locked.stage)} now; nothing was changed.")
        if locked.stage not in NEXT_STAGE:
            raise RolloutError(f"A rollout in {_stage_label(locked.stage)} cannot be promoted.")
        gate = gates.evaluate(locked, now=now)
        data: dict[str, Any] = {"gate": gate.as_data()}
        to = NEXT_STAGE[Stage(locked.stage)]
        if gate.passed:
            return _move(locked, to=to, kind=RolloutEventKind.PROMOTED, actor=actor, reason=reason, data=data)
        if reason:
            data["failing"] = [v.metric for v in gate.failing]
            return _move(locked, to=to, kind=RolloutEventKind.OVERRIDDEN, actor=actor, reason=reason, data=data)
    failing = ", ".join(v.label.lower() for v in gate.failing)
    with transaction.atomic():
        locked = _locked(rollout)
        _event(
            locked,
            RolloutEventKind.PROMOTION_REFUSED,
            actor,
            from_stage=locked.stage,
            to_stage=to,
            data={**data, "failing": [v.metric for v in gate.failing]},
        )
    raise GateFailed(f"Not promoted: {failing} {'fails' if len(gate.failing) == 1 else 'fail'}. Give a reason to override.", gate)


def pause(*, rollout: Rollout, actor: Any, reason: str = "") -> Rollout:
    _must_decide(actor, rollout)
    reason = _text(reason, "reason")
    with transaction.atomic():
        locked = _locked(rollout)
        if locked.stage not in ACTIVE_STAGES:
            raise RolloutError(f"A rollout in {_stage_label(locked.stage)} cannot be paused.")
        return _move(locked, to=Stage.PAUSED, kind=RolloutEventKind.PAUSED, actor=actor, reason=reason, paused_from=locked.stage)


def resume(*, rollout: Rollout, actor: Any, reason: str = "") -> Rollout:
    _must_decide(actor, rollout)
    reason = _text(reason, "reason")
    with transaction.atomic():
        locked = _locked(rollout)
        if locked.stage != Stage.PAUSED:
            raise RolloutError(f"A rollout in {_stage_label(locked.stage)} is not paused.")
        to = locked.paused_from or Stage.PILOT
        return _move(locked, to=to, kind=RolloutEventKind.RESUMED, actor=actor, reason=reason, paused_from="")


def roll_back(*, rollout: Rollout, actor: Any, reason: str) -> Rollout:
    _must_decide(actor, rollout)
    reason = _text(reason, "reason", required=True)
    with transaction.atomic():
        locked = _locked(rollout)
        if locked.stage == Stage.ROLLED_BACK:
            raise RolloutError("The rollout is already rolled back.")
        return _move(locked, to=Stage.ROLLED_BACK, kind=RolloutEventKind.ROLLED_BACK, actor=actor, reason=reason, paused_from="")


def restart_pilot(*, rollout: Rollout, actor: Any, reason: str = "") -> Rollout:
    _must_decide(actor, rollout)
    reason = _text(reason, "reason")
    with transaction.atomic():
        locked = _locked(rollout)
        if locked.stage != Stage.ROLLED_BACK:
            raise RolloutError("Only a rolled back rollout can restart its pilot.")
        return _move(locked, to=Stage.PILOT, kind=RolloutEventKind.RESTARTED, actor=actor, reason=reason)


# --- the plan: windows, checklist, notes ------------------------------------------------------


def set_window_done(*, window: Window, done: bool, actor: Any, now: datetime | None = None) -> Window:
    now = now or timezone.now()
    _must_contribute(actor, window.rollout)
    with transaction.atomic():
        locked = _locked(window.rollout)
        row = Window.objects.get(pk=window.pk)
        if row.done == bool(done):
            return row
        row.done, row.done_at, row.done_by = bool(done), now if done else None, _person(actor) if done else None
        row.save(update_fields=["done", "done_at", "done_by"])
        kind = RolloutEventKind.WINDOW_DONE if done else RolloutEventKind.WINDOW_REOPENED
        _event(locked, kind, actor, data={"window": row.pk, "days": f"{row.first_day}-{row.last_day}", "role": row.role})
        return row


def set_checklist_done(*, item: ChecklistItem, done: bool, actor: Any, now: datetime | None = None) -> ChecklistItem:
    now = now or timezone.now()
    _must_contribute(actor, item.rollout)
    with transaction.atomic():
        locked = _locked(item.rollout)
        row = ChecklistItem.objects.get(pk=item.pk)
        if row.done == bool(done):
            return row
        row.done, row.done_at, row.done_by = bool(done), now if done else None, _person(actor) if done else None
        row.save(update_fields=["done", "done_at", "done_by"])
        kind = RolloutEventKind.CHECKLIST_DONE if done else RolloutEventKind.CHECKLIST_REOPENED
        _event(locked, kind, actor, data={"item": row.pk, "text": row.text})
        return row


def add_note(*, rollout: Rollout, kind: str, text: str, actor: Any, runs: list[Run] | None = None) -> Note:
    _must_contribute(actor, rollout)
    if kind not in NoteKind.values:
        raise RolloutError(f"kind: must be one of {', '.join(NoteKind.values)}")
    text = _text(text, "text", required=True)
    runs = list(runs or [])
    if len(runs) > MAX_NOTE_RUNS:
        raise RolloutError(f"runs: at most {MAX_NOTE_RUNS} runs per note")
    for run in runs:
        if run.workflow_id != rollout.workflow_id:
            raise RolloutError(f"runs: run {run.pk} is not a run of this workflow")
    with transaction.atomic():
        locked = _locked(rollout)
        note = Note.objects.create(rollout=locked, kind=kind, author=_person(actor), text=text)
        note.runs.set(runs)
        _event(locked, RolloutEventKind.NOTE_ADDED, actor, data={"note": note.pk, "kind": kind, "runs": [r.pk for r in runs]})
        return note


def resolve_issue(*, note: Note, actor: Any, now: datetime | None = None) -> Note:
    now = now or timezone.now()
    _must_contribute(actor, note.rollout)
    with transaction.atomic():
        locked = _locked(note.rollout)
        row = Note.objects.get(pk=note.pk)
        if row.kind != NoteKind.ISSUE:
            raise RolloutError("Only an issue can be resolved.")
        if row.resolved_at is not None:
            raise RolloutError("This issue is already resolved.")
        row.resolved_at = now
        row.save(update_fields=["resolved_at"])
        _event(locked, RolloutEventKind.ISSUE_RESOLVED, actor, data={"note": row.pk})
        return row


# --- what the gate asks, and the traffic of agent versions ------------------------------------


def _target(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RolloutError("target: must be a finite number")
    if abs(value) > 1e12:
        raise RolloutError("target: out of range")
    return float(value)


def _window_days(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WINDOW_DAYS:
        raise RolloutError(f"window_days: must be a whole number from 1 to {MAX_WINDOW_DAYS}")
    return value


def change_criterion(
    *,
    criterion: Criterion,
    actor: Any,
    target: float | None = None,
    window_days: int | None = None,
    enabled: bool | None = None,
) -> Criterion:
    _must_decide(actor, criterion.rollout)
    changes: dict[str, Any] = {}
    if target is not None:
        changes["target"] = _target(target)
    if window_days is not None:
        changes["window_days"] = _window_days(window_days)
    if enabled is not None:
        if not isinstance(enabled, bool):
            raise RolloutError("enabled: must be true or false")
        changes["enabled"] = enabled
    with transaction.atomic():
        locked = _locked(criterion.rollout)
        row = Criterion.objects.get(pk=criterion.pk)
        before = {name: getattr(row, name) for name in changes}
        after = {name: value for name, value in changes.items() if before[name] != value}
        if not after:
            return row
        for name, value in after.items():
            setattr(row, name, value)
        row.save(update_fields=list(after))
        _event(
            locked,
            RolloutEventKind.CRITERION_CHANGED,
            actor,
            data={"metric": row.metric, "before": {n: before[n] for n in after}, "after": after},
        )
        return row


def shift_weights(*, rollout: Rollout, agent: Agent, weights: dict[str, int], actor: Any, reason: str = "") -> None:
    """Set an agent's version weights from a rollout page (orchestration.definitions does the
    write and its AgentVersionEvent); the rollout records it too. A version "rolled back" is
    one given weight 0: runs that chose it keep it, new runs do not pick it."""
    _must_decide(actor, rollout)
    reason = _text(reason, "reason")
    if agent.pk not in {a.pk for a in gates.workflow_agents(rollout)}:
        raise RolloutError(f"agent: '{agent.name}' is not used by this workflow")
    with transaction.atomic():
        locked = _locked(rollout)
        try:
            changed = definitions.set_version_weights(agent=agent, weights=weights, actor=_person(actor), reason=reason)
        except ValueError as exc:
            raise RolloutError(str(exc)) from None
        if changed is not None:
            _event(
                locked,
                RolloutEventKind.WEIGHTS_CHANGED,
                actor,
                reason=reason,
                data={"agent": agent.name, "before": changed.weights_before, "after": changed.weights_after},
            )


# --- the daily pass ---------------------------------------------------------------------------


def check_rollout(*, rollout: Rollout, now: datetime | None = None) -> Gate:
    """Evaluate the gate and the drift and record them: gate_checked_at, gate_passed and the
    verdicts, a `gate_checked` event only when the verdict changed, Drift rows opened and
    cleared."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _locked(rollout)
        gate = gates.evaluate(locked, now=now)
        changed = locked.gate_passed != gate.passed
        locked.gate_checked_at, locked.gate_passed, locked.gate_verdicts = now, gate.passed, gate.as_data()
        locked.save(update_fields=["gate_checked_at", "gate_passed", "gate_verdicts", "updated_at"])
        if changed:
            _event(locked, RolloutEventKind.GATE_CHECKED, None, data={"gate": gate.as_data(), "passed": gate.passed})
        _record_drift(locked, gates.drift(locked, now=now), now)
    return gate


def _record_drift(rollout: Rollout, findings: list[DriftFinding], now: datetime) -> None:
    open_ = {d.metric: d for d in Drift.objects.filter(rollout=rollout, cleared_at__isnull=True)}
    for finding in findings:
        current = open_.get(finding.metric)
        if finding.drifting and current is None:
            assert finding.recent is not None and finding.previous is not None  # drifting needs both
            Drift.objects.create(
                rollout=rollout,
                metric=finding.metric,
                recent=finding.recent,
                previous=finding.previous,
                recent_runs=finding.recent_runs,
                previous_runs=finding.previous_runs,
                detected_at=now,
            )
            _event(rollout, RolloutEventKind.DRIFT_DETECTED, None, data=finding.as_data())
        elif not finding.drifting and current is not None:
            current.cleared_at = now
            current.save(update_fields=["cleared_at"])
            _event(rollout, RolloutEventKind.DRIFT_CLEARED, None, data=finding.as_data())


def check_rollouts(now: datetime) -> int:
    """Once a day (in TIME_ZONE) per active rollout: the gate and the drift. One rollout's
    failure is logged and does not stop the others."""
    today = timezone.localdate(now)
    done = 0
    for rollout in Rollout.objects.filter(stage__in=ACTIVE_STAGES).select_related("workflow"):
        if rollout.gate_checked_at is not None and timezone.localdate(rollout.gate_checked_at) >= today:
            continue
        try:
            check_rollout(rollout=rollout, now=now)
            done += 1
        except Exception:
            logger.exception("rollouts: the daily check of %s failed", rollout)
    return done
