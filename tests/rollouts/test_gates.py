"""Gates, drift and the version split, on generated runs whose every figure is known."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from orchestration.models import Agent, AgentVersion, Workflow
from orchestration.rollouts import gates
from orchestration.rollouts.history import RunPlan
from orchestration.rollouts.models import Criterion, Rollout
from tests.rollouts.plans import HOUR, generate

pytestmark = pytest.mark.django_db

UTC = ZoneInfo("UTC")
NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


@pytest.fixture
def rollout(workflow: Workflow, ops: Any) -> Rollout:
    rollout = Rollout.objects.create(workflow=workflow, owner=ops, started_on=date(2026, 3, 1))
    for position, (metric, comparison, target, days) in enumerate(
        [
            ("success_rate", "gte", 0.95, 7),
            ("p95_duration", "lte", 900, 7),
            ("runs", "gte", 20, 7),
            ("approval_wait", "lte", 14400, 7),
            ("cost_per_run", "lte", 0.5, 3),
        ]
    ):
        Criterion.objects.create(
            rollout=rollout, position=position, metric=metric, comparison=comparison, target=target, window_days=days
        )
    return rollout


def week_of_runs() -> dict[date, list[RunPlan]]:
    """20 runs in the last 7 days (one failed, one slow), 4 of them in the last 3 days at a
    cost of 1.00 each; and 10 failed runs 8 days ago, outside every window."""
    plans: dict[date, list[RunPlan]] = {date(2026, 3, 23): [RunPlan(start=HOUR, status="failed") for _ in range(10)]}
    for day in range(25, 29):  # 4 days x 4 runs, 2026-03-25 .. 28
        plans[date(2026, 3, day)] = [RunPlan(start=HOUR * (i + 1), duration=100) for i in range(4)]
    plans[date(2026, 3, 25)][0] = RunPlan(start=HOUR, status="failed", duration=100)
    plans[date(2026, 3, 26)][0] = RunPlan(start=HOUR, duration=1000)
    plans[date(2026, 3, 30)] = [RunPlan(start=HOUR * (i + 1), duration=100, cost=1.0) for i in range(4)]
    return plans


def test_each_criterion_is_judged_over_the_runs_started_in_its_own_window(workflow: Workflow, rollout: Rollout) -> None:
    generate(workflow, week_of_runs(), now=NOW)
    gate = gates.evaluate(rollout, now=NOW)
    got = {v.metric: (v.actual, v.passed, v.runs, v.since, v.until) for v in gate.verdicts}
    week, three = NOW - timedelta(days=7), NOW - timedelta(days=3)
    assert got == {
        "success_rate": (0.95, True, 20, week, NOW),  # 19 of 20
        "p95_duration": (100.0, True, 20, week, NOW),  # the 19th of 20: the one slow run is the 20th
        "runs": (20.0, True, 20, week, NOW),
        "approval_wait": (None, False, 20, week, NOW),  # no approval decided: strict, fails
        "cost_per_run": (1.0, False, 4, three, NOW),  # the last 3 days: 4 runs at 1.00
    }
    assert gate.passed is False
    assert [v.metric for v in gate.failing] == ["approval_wait", "cost_per_run"]
    assert gate.as_data()[0] == {
        "metric": "success_rate", "label": "Success rate", "comparison": "gte", "target": 0.95, "actual": 0.95,
        "passed": True, "runs": 20, "since": week.isoformat(), "until": NOW.isoformat(),
    }


def test_the_gate_passes_once_the_failing_criteria_are_disabled(workflow: Workflow, rollout: Rollout) -> None:
    generate(workflow, week_of_runs(), now=NOW)
    rollout.criteria.filter(metric__in=["approval_wait", "cost_per_run"]).update(enabled=False)
    gate = gates.evaluate(rollout, now=NOW)
    assert gate.passed is True and len(gate.verdicts) == 3


def test_a_gate_with_no_criterion_passes_and_one_without_runs_fails(workflow: Workflow, rollout: Rollout) -> None:
    assert gates.evaluate(rollout, now=NOW).passed is False  # no runs: every figure is None or 0
    rollout.criteria.all().delete()
    assert gates.evaluate(rollout, now=NOW) == gates.Gate(verdicts=[], passed=True, checked_at=NOW)


def two_weeks(recent: list[RunPlan], previous: list[RunPlan]) -> dict[date, list[RunPlan]]:
    return {date(2026, 3, 20): previous, date(2026, 3, 28): recent}


def test_drift_compares_the_last_seven_days_with_the_seven_before(workflow: Workflow, rollout: Rollout) -> None:
    previous = [RunPlan(start=HOUR * (i + 1), duration=100, cost=0.1) for i in range(10)]
    recent = [RunPlan(start=HOUR * (i + 1), duration=100, cost=0.1, status="failed" if i < 3 else "succeeded") for i in range(10)]
    recent[9] = RunPlan(start=10 * HOUR, duration=100, cost=0.1, retries=1)
    generate(workflow, two_weeks(recent, previous), now=NOW)
    findings = {f.metric: f for f in gates.drift(rollout, now=NOW)}
    assert "runs" not in findings
    success = findings["success_rate"]
    # 1.0 -> 0.7: worse by 0.3, more than 0.2 x 1.0.
    assert (success.recent, success.previous, success.recent_runs, success.previous_runs, success.drifting) == (0.7, 1.0, 10, 10, True)
    # 0 -> 0.1 retries per run: worse by 0.1, more than 0.2 x max(0, the floor 0.1).
    assert findings["retries_per_run"].drifting is True
    assert findings["cost_per_run"].drifting is False  # unchanged
    assert findings["p95_duration"].drifting is False
    assert findings["approval_wait"].drifting is False  # no figure on either side


def test_drift_says_nothing_with_fewer_than_five_runs_in_a_window(workflow: Workflow, rollout: Rollout) -> None:
    previous = [RunPlan(start=HOUR * (i + 1)) for i in range(4)]
    recent = [RunPlan(start=HOUR * (i + 1), status="failed") for i in range(10)]
    generate(workflow, two_weeks(recent, previous), now=NOW)
    assert not any(f.drifting for f in gates.drift(rollout, now=NOW))


def test_a_small_change_under_the_floor_is_not_drift(workflow: Workflow, rollout: Rollout) -> None:
    previous = [RunPlan(start=HOUR * (i + 1), duration=10) for i in range(10)]
    recent = [RunPlan(start=HOUR * (i + 1), duration=20) for i in range(10)]  # doubled, but only 10 s
    generate(workflow, two_weeks(recent, previous), now=NOW)
    p95 = next(f for f in gates.drift(rollout, now=NOW) if f.metric == "p95_duration")
    assert (p95.recent, p95.previous, p95.drifting) == (20.0, 10.0, False)  # 10 s < 0.2 x max(10, 60)


def test_compare_versions_puts_each_version_beside_the_others_with_its_runs(workflow: Workflow, rollout: Rollout) -> None:
    drafter = Agent.objects.get(name="drafter")
    stable = AgentVersion.objects.create(agent=drafter, label="stable", weight=3)
    candidate = AgentVersion.objects.create(agent=drafter, label="candidate", weight=1)
    plans = {
        date(2026, 3, 25): [
            RunPlan(start=HOUR, duration=100, cost=0.2, approval="approved", approval_wait=60, versions={"drafter": "stable"}),
            RunPlan(start=2 * HOUR, duration=300, cost=0.4, approval="rejected", approval_wait=60, versions={"drafter": "stable"}),
            RunPlan(start=3 * HOUR, duration=50, status="failed", versions={"drafter": "stable"}),
            RunPlan(start=4 * HOUR, duration=80, loops=2, cost=1.0, approval="rejected", approval_wait=5, versions={"drafter": "candidate"}),
        ],
        # Outside the 14 days.
        date(2026, 3, 10): [RunPlan(start=HOUR, status="failed", versions={"drafter": "candidate"})],
    }
    generate(workflow, plans, now=NOW)
    figures = {f.version.label: f for f in gates.compare_versions(rollout, now=NOW)}
    assert list(figures) == ["candidate", "stable"]  # the checker has no versions: not listed
    s, c = figures["stable"], figures["candidate"]
    assert (s.share, s.runs, s.success_rate, s.approvals_decided, s.rejection_rate) == (0.75, 3, 2 / 3, 2, 0.5)
    assert (s.loops_per_run, s.attempts, s.latency_p50, s.latency_p95) == (0.0, 3, 100.0, 300.0)
    assert s.cost_per_run == pytest.approx(0.2)
    assert (c.share, c.runs, c.success_rate, c.approvals_decided, c.rejection_rate) == (0.25, 1, 1.0, 1, 1.0)
    # Three rounds of the draft (two sent back), one attempt each.
    assert (c.loops_per_run, c.attempts, c.latency_p95, c.cost_per_run) == (2.0, 3, 80.0, 1.0)
    assert {stable.pk, candidate.pk} == {f.version.pk for f in figures.values()}
