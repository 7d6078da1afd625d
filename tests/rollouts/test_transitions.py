"""Every write to a rollout, its audit row, and who may make it.

ops owns the workflow (and so decides), approver operates it (and so contributes), outsider is
nobody's."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection

from orchestration.models import Agent, AgentVersion, AgentVersionEvent, Run, Workflow
from orchestration.rollouts import transitions
from orchestration.rollouts.history import RunPlan
from orchestration.rollouts.models import Drift, Rollout, RolloutEvent
from orchestration.rollouts.transitions import GateFailed, NotAllowed, RolloutError
from tests.rollouts.plans import HOUR, generate

pytestmark = pytest.mark.django_db

UTC = ZoneInfo("UTC")
NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


@pytest.fixture
def rollout(workflow: Workflow, ops: Any) -> Rollout:
    return transitions.start_rollout(workflow=workflow, owner=ops, actor=ops, started_on=date(2026, 3, 2), now=NOW)


def audit(rollout: Rollout) -> list[tuple[str, str, str]]:
    return list(rollout.events.order_by("id").values_list("kind", "from_stage", "to_stage"))


def good_week() -> dict[date, list[RunPlan]]:
    """20 runs in the last 7 days that meet every default criterion."""
    plan = RunPlan(duration=120, tokens=100, cost=0.05, approval="approved", approval_wait=300)
    return {
        date(2026, 3, 26 + d): [RunPlan(**{**plan.__dict__, "start": HOUR * (i + 1)}) for i in range(5)]
        for d in range(4)
    }


def test_a_rollout_starts_in_pilot_with_the_playbooks_windows_checklist_and_criteria(rollout: Rollout, ops: Any) -> None:
    assert rollout.stage == "pilot" and rollout.owner == ops
    windows = list(rollout.windows.values_list("first_day", "last_day", "role", "due_on"))
    assert windows == [
        (1, 3, "Automation Lead", date(2026, 3, 4)),
        (4, 10, "Workflow Owner", date(2026, 3, 11)),
        (11, 20, "Ops Lead", date(2026, 3, 21)),
        (21, 30, "Engineering Lead", date(2026, 3, 31)),
    ]
    assert rollout.windows.first().expected_output == "Pilot brief with trigger, reviewer, and rollback conditions"  # type: ignore[union-attr]
    assert rollout.checklist.count() == 5
    assert list(rollout.criteria.values_list("metric", "comparison", "target", "window_days")) == [
        ("success_rate", "gte", 0.95, 7),
        ("p95_duration", "lte", 900.0, 7),
        ("intervention_rate", "lte", 0.25, 7),
        ("approval_wait", "lte", 14400.0, 7),
        ("retries_per_run", "lte", 0.5, 7),
        ("loops_per_run", "lte", 1.5, 7),
        ("cost_per_run", "lte", 0.5, 7),
        ("runs", "gte", 20.0, 7),
    ]
    assert audit(rollout) == [("created", "", "pilot")]


def test_only_the_workflows_owner_starts_its_one_rollout(workflow: Workflow, rollout: Rollout, outsider: Any, ops: Any) -> None:
    with pytest.raises(NotAllowed):
        transitions.start_rollout(workflow=workflow, owner=outsider, actor=outsider)
    with pytest.raises(RolloutError, match="already has a rollout"):
        transitions.start_rollout(workflow=workflow, owner=ops, actor=ops)


def test_promotion_is_refused_while_a_criterion_fails_and_the_refusal_is_recorded(rollout: Rollout, ops: Any) -> None:
    with pytest.raises(GateFailed, match="success rate") as refused:
        transitions.promote(rollout=rollout, actor=ops, now=NOW)
    assert refused.value.gate.passed is False
    rollout.refresh_from_db()
    assert rollout.stage == "pilot"
    event = rollout.events.latest("id")
    assert (event.kind, event.from_stage, event.to_stage, event.actor) == ("promotion_refused", "pilot", "standardize", ops)
    assert len(event.data["gate"]) == 8 and event.data["gate"][0]["metric"] == "success_rate"
    assert "runs" in event.data["failing"]


def test_an_owner_may_promote_over_failing_criteria_with_a_written_reason(rollout: Rollout, ops: Any) -> None:
    promoted = transitions.promote(rollout=rollout, actor=ops, override_reason="  Pilot done by hand; numbers next week. ", now=NOW)
    assert promoted.stage == "standardize"
    event = rollout.events.latest("id")
    assert (event.kind, event.from_stage, event.to_stage) == ("overridden", "pilot", "standardize")
    assert event.reason == "Pilot done by hand; numbers next week."
    assert set(event.data["failing"]) == {v["metric"] for v in event.data["gate"] if not v["passed"]}
    assert event.data["failing"]


def test_promotion_goes_on_when_every_criterion_passes(workflow: Workflow, rollout: Rollout, ops: Any) -> None:
    generate(workflow, good_week(), now=NOW)
    assert transitions.promote(rollout=rollout, actor=ops, from_stage="pilot", now=NOW).stage == "standardize"
    event = rollout.events.latest("id")
    assert event.kind == "promoted" and all(v["passed"] for v in event.data["gate"])
    assert event.data["gate"][0]["actual"] == 1.0 and event.data["gate"][0]["runs"] == 20
    with pytest.raises(RolloutError, match="in standardize now"):
        transitions.promote(rollout=rollout, actor=ops, from_stage="pilot", now=NOW)


def test_pause_resume_roll_back_and_restart_each_leave_an_audit_row(rollout: Rollout, ops: Any) -> None:
    transitions.promote(rollout=rollout, actor=ops, override_reason="go", now=NOW)
    transitions.pause(rollout=rollout, actor=ops, reason="holiday")
    assert Rollout.objects.get().paused_from == "standardize"
    with pytest.raises(RolloutError, match="cannot be paused"):
        transitions.pause(rollout=rollout, actor=ops)
    with pytest.raises(RolloutError, match="cannot be promoted"):
        transitions.promote(rollout=rollout, actor=ops, override_reason="go", now=NOW)
    assert transitions.resume(rollout=rollout, actor=ops).stage == "standardize"
    with pytest.raises(RolloutError, match="reason: is required"):
        transitions.roll_back(rollout=rollout, actor=ops, reason="  ")
    transitions.roll_back(rollout=rollout, actor=ops, reason="Refunds went out twice.")
    with pytest.raises(RolloutError, match="already rolled back"):
        transitions.roll_back(rollout=rollout, actor=ops, reason="again")
    assert transitions.restart_pilot(rollout=rollout, actor=ops).stage == "pilot"
    assert audit(rollout) == [
        ("created", "", "pilot"),
        ("overridden", "pilot", "standardize"),
        ("paused", "standardize", "paused"),
        ("resumed", "paused", "standardize"),
        ("rolled_back", "standardize", "rolled_back"),
        ("restarted", "rolled_back", "pilot"),
    ]
    assert rollout.events.get(kind="rolled_back").reason == "Refunds went out twice."


def test_an_outsider_may_decide_nothing_and_contribute_nothing(rollout: Rollout, outsider: Any) -> None:
    for change in (
        lambda: transitions.promote(rollout=rollout, actor=outsider, override_reason="x"),
        lambda: transitions.pause(rollout=rollout, actor=outsider),
        lambda: transitions.roll_back(rollout=rollout, actor=outsider, reason="x"),
        lambda: transitions.add_note(rollout=rollout, kind="issue", text="x", actor=outsider),
        lambda: transitions.set_window_done(window=rollout.windows.all()[0], done=True, actor=outsider),
    ):
        with pytest.raises(NotAllowed):
            change()
    assert audit(rollout) == [("created", "", "pilot")]


def test_an_operator_contributes_notes_and_checks_but_does_not_decide(rollout: Rollout, approver: Any, admin_user: Any) -> None:
    assert transitions.may_contribute(approver, rollout) and not transitions.may_decide(approver, rollout)
    assert transitions.may_decide(admin_user, rollout)
    with pytest.raises(NotAllowed):
        transitions.pause(rollout=rollout, actor=approver)
    item = rollout.checklist.all()[0]
    transitions.set_checklist_done(item=item, done=True, actor=approver, now=NOW)
    transitions.set_checklist_done(item=item, done=True, actor=approver, now=NOW)  # no change, no row
    window = rollout.windows.all()[0]
    done = transitions.set_window_done(window=window, done=True, actor=approver, now=NOW)
    assert (done.done, done.done_at, done.done_by) == (True, NOW, approver)
    reopened = transitions.set_window_done(window=window, done=False, actor=approver, now=NOW)
    assert (reopened.done, reopened.done_at, reopened.done_by) == (False, None, None)
    assert [k for k, _, _ in audit(rollout)] == ["created", "checklist_done", "window_done", "window_reopened"]


def test_notes_link_runs_of_the_workflow_only_and_issues_get_resolved(workflow: Workflow, rollout: Rollout, approver: Any) -> None:
    generate(workflow, {date(2026, 3, 30): [RunPlan(start=HOUR)]}, now=NOW)
    run = Run.objects.get()
    note = transitions.add_note(rollout=rollout, kind="issue", text="Sign-off waits too long", actor=approver, runs=[run])
    assert list(note.runs.all()) == [run] and note.author == approver
    resolved = transitions.resolve_issue(note=note, actor=approver, now=NOW)
    assert resolved.resolved_at == NOW
    with pytest.raises(RolloutError, match="already resolved"):
        transitions.resolve_issue(note=note, actor=approver)
    review = transitions.add_note(rollout=rollout, kind="review", text="Prompts read well.", actor=approver)
    with pytest.raises(RolloutError, match="Only an issue"):
        transitions.resolve_issue(note=review, actor=approver)
    with pytest.raises(RolloutError, match="kind: must be one of"):
        transitions.add_note(rollout=rollout, kind="rant", text="x", actor=approver)
    with pytest.raises(RolloutError, match="text: at most 2,000 characters"):
        transitions.add_note(rollout=rollout, kind="issue", text="x" * 2001, actor=approver)
    other = Run(pk=run.pk, workflow_id=run.workflow_id + 1)
    with pytest.raises(RolloutError, match=f"runs: run {run.pk} is not a run of this workflow"):
        transitions.add_note(rollout=rollout, kind="issue", text="x", actor=approver, runs=[other])
    assert [k for k, _, _ in audit(rollout)] == ["created", "note_added", "issue_resolved", "note_added"]


def test_a_criterion_change_is_checked_and_recorded_with_before_and_after(rollout: Rollout, ops: Any) -> None:
    criterion = rollout.criteria.get(metric="cost_per_run")
    for bad, message in [
        ({"target": float("nan")}, "target: must be a finite number"),
        ({"target": "cheap"}, "target: must be a finite number"),
        ({"target": True}, "target: must be a finite number"),
        ({"window_days": 0}, "window_days: must be a whole number from 1 to 90"),
        ({"window_days": 91}, "window_days"),
    ]:
        with pytest.raises(RolloutError, match=message):
            transitions.change_criterion(criterion=criterion, actor=ops, **bad)
    transitions.change_criterion(criterion=criterion, actor=ops, target=0.8, window_days=14, enabled=False)
    transitions.change_criterion(criterion=criterion, actor=ops, target=0.8)  # unchanged: no row
    event = rollout.events.latest("id")
    assert event.kind == "criterion_changed"
    assert event.data == {
        "metric": "cost_per_run",
        "before": {"target": 0.5, "window_days": 7, "enabled": True},
        "after": {"target": 0.8, "window_days": 14, "enabled": False},
    }
    assert rollout.events.filter(kind="criterion_changed").count() == 1


def test_shifting_version_weights_writes_both_histories(rollout: Rollout, ops: Any, approver: Any) -> None:
    drafter = Agent.objects.get(name="drafter")
    AgentVersion.objects.create(agent=drafter, label="stable", weight=9)
    AgentVersion.objects.create(agent=drafter, label="candidate", weight=1)
    with pytest.raises(NotAllowed):
        transitions.shift_weights(rollout=rollout, agent=drafter, weights={"candidate": 5}, actor=approver)
    with pytest.raises(RolloutError, match="'beta' is not a version"):
        transitions.shift_weights(rollout=rollout, agent=drafter, weights={"beta": 5}, actor=ops)
    transitions.shift_weights(rollout=rollout, agent=drafter, weights={"stable": 5, "candidate": 5}, actor=ops, reason="canary is fine")
    assert AgentVersionEvent.objects.get().weights_after == {"stable": 5, "candidate": 5}
    event = rollout.events.latest("id")
    assert (event.kind, event.reason) == ("weights_changed", "canary is fine")
    assert event.data == {"agent": "drafter", "before": {"stable": 9, "candidate": 1}, "after": {"stable": 5, "candidate": 5}}
    stranger = Agent.objects.create(name="stranger", kind="python")
    with pytest.raises(RolloutError, match="'stranger' is not used by this workflow"):
        transitions.shift_weights(rollout=rollout, agent=stranger, weights={}, actor=ops)


def test_the_daily_check_records_the_gate_only_when_its_verdict_changes(workflow: Workflow, rollout: Rollout) -> None:
    transitions.check_rollout(rollout=rollout, now=NOW - timedelta(days=2))
    transitions.check_rollout(rollout=rollout, now=NOW - timedelta(days=1))
    generate(workflow, good_week(), now=NOW)
    transitions.check_rollout(rollout=rollout, now=NOW)
    rollout.refresh_from_db()
    assert (rollout.gate_checked_at, rollout.gate_passed) == (NOW, True)
    checks = list(rollout.events.filter(kind="gate_checked").order_by("id").values_list("data__passed", flat=True))
    assert checks == [False, True]


def test_drift_opens_with_its_figures_and_clears_when_it_stops(workflow: Workflow, rollout: Rollout) -> None:
    previous = [RunPlan(start=HOUR * (i + 1), duration=100) for i in range(10)]
    recent = [RunPlan(start=HOUR * (i + 1), duration=100, status="failed" if i < 4 else "succeeded") for i in range(10)]
    generate(workflow, {date(2026, 3, 20): previous, date(2026, 3, 28): recent}, now=NOW)
    transitions.check_rollout(rollout=rollout, now=NOW)
    drift = Drift.objects.get(cleared_at=None)
    assert (drift.metric, drift.recent, drift.previous, drift.recent_runs, drift.previous_runs) == ("success_rate", 0.6, 1.0, 10, 10)
    detected = rollout.events.get(kind="drift_detected")
    assert detected.data["metric"] == "success_rate" and detected.data["recent"] == 0.6
    transitions.check_rollout(rollout=rollout, now=NOW + timedelta(hours=1))  # still drifting: nothing new
    assert Drift.objects.count() == 1
    # A week later the bad week is the "previous" one and the recent has too few runs.
    transitions.check_rollout(rollout=rollout, now=NOW + timedelta(days=7))
    drift.refresh_from_db()
    assert drift.cleared_at == NOW + timedelta(days=7)
    assert rollout.events.filter(kind="drift_cleared").count() == 1


def test_the_ticker_pass_runs_once_per_interval_and_checks_each_active_rollout_once_a_day(
    workflow: Workflow, rollout: Rollout, settings: Any, monkeypatch: Any
) -> None:
    from orchestration import ticker
    from orchestration.rollouts import daily
    from orchestration.rollouts.models import DailySnapshot

    assert daily.sweep in ticker.SWEEPS
    settings.BATON_ROLLUP_SECONDS = 300
    generate(workflow, {date(2026, 3, 31): [RunPlan(start=HOUR)]}, now=NOW)
    assert daily.sweep(NOW) == 2 + 1  # today's two snapshot rows, one rollout checked
    assert daily.sweep(NOW + timedelta(seconds=299)) == 0  # too soon
    assert daily.sweep(NOW + timedelta(seconds=300)) == 0  # nothing changed, checked today
    assert DailySnapshot.objects.filter(day=date(2026, 3, 31)).count() == 2
    # The next day: checked again; one rollout failing does not stop the pass.
    calls = []
    real = transitions.check_rollout

    def flaky(*, rollout: Rollout, now: datetime | None = None) -> Any:
        calls.append(rollout.pk)
        raise RuntimeError("boom")

    monkeypatch.setattr(transitions, "check_rollout", flaky)
    assert daily.sweep(NOW + timedelta(days=1)) == 0
    assert calls == [rollout.pk]
    monkeypatch.setattr(transitions, "check_rollout", real)
    assert daily.sweep(NOW + timedelta(days=1, minutes=5)) == 1
    assert Rollout.objects.get().gate_checked_at == NOW + timedelta(days=1, minutes=5)


@pytest.mark.django_db(transaction=True)
def test_two_people_promoting_at_once_promote_once(workflow: Workflow, ops: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks are a PostgreSQL matter: SQLite has one writer at a time")
    rollout = transitions.start_rollout(workflow=workflow, owner=ops, actor=ops, now=NOW)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def press() -> None:
        try:
            barrier.wait()
            transitions.promote(rollout=rollout, actor=ops, override_reason="ship it", from_stage="pilot", now=NOW)
            outcomes.append("promoted")
        except RolloutError as exc:
            outcomes.append(str(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=press) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["The rollout is in standardize now; nothing was changed.", "promoted"]
    assert RolloutEvent.objects.filter(kind="overridden").count() == 1
    assert Rollout.objects.get().stage == "standardize"
