"""The metrics store: every figure of a day, counted from the raw rows, kept in daily snapshots."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone

from approvals.models import Item
from orchestration.models import Agent, AgentVersion, Attempt, Run, RunEvent, Workflow
from orchestration.rollouts import history, metrics
from orchestration.rollouts.history import RunPlan
from orchestration.rollouts.models import AgentVersionSnapshot, DailySnapshot
from tests.rollouts import plans as plans_module
from tests.rollouts.plans import HOUR

pytestmark = pytest.mark.django_db

UTC = ZoneInfo("UTC")
NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)

# Two days with every kind of outcome, and what each figure of them must be.
PLANS = {
    date(2026, 3, 10): [
        RunPlan(start=1 * HOUR, duration=100, retries=1, tokens=1000, cost=0.01, approval="approved", approval_wait=600),
        RunPlan(start=2 * HOUR, duration=300, loops=2, tokens=2000, cost=0.02, approval="rejected", approval_wait=1200),
        RunPlan(start=3 * HOUR, status="failed", duration=50, tokens=500, cost=0.005, approval="expired", exception=True),
        RunPlan(start=4 * HOUR, status="cancelled", duration=20, manual=True, approval="pending"),
        RunPlan(start=5 * HOUR, status="running"),
    ],
    date(2026, 3, 11): [
        RunPlan(start=10 * HOUR, duration=d, tokens=100, cost=0.25, approval="approved", approval_wait=w)
        for d, w in [(10, 60), (20, 30), (30, 90), (40, 120), (50, 10)]
    ],
}
EXPECTED = {
    date(2026, 3, 10): {
        "runs_started": 5,
        "runs_succeeded": 2,
        "runs_failed": 1,
        "runs_cancelled": 1,
        "duration_p50": 50.0,  # of 20, 50, 100, 300: the 2nd
        "duration_p95": 300.0,  # the 4th (ceil(0.95 * 4) = 4)
        "approvals_requested": 4,
        "approvals_approved": 1,
        "approvals_rejected": 1,
        "approvals_expired": 1,
        "approval_wait_p50": 600.0,
        "approval_wait_p95": 1200.0,
        "manual_tasks": 1,
        "exceptions": 1,
        "retries": 1,
        "loop_iterations": 2,
        "tokens": 3500,
        "cost": 0.035,
    },
    date(2026, 3, 11): {
        "runs_started": 5,
        "runs_succeeded": 5,
        "runs_failed": 0,
        "runs_cancelled": 0,
        "duration_p50": 30.0,
        "duration_p95": 50.0,
        "approvals_requested": 5,
        "approvals_approved": 5,
        "approvals_rejected": 0,
        "approvals_expired": 0,
        "approval_wait_p50": 60.0,  # of 10, 30, 60, 90, 120: the 3rd
        "approval_wait_p95": 120.0,
        "manual_tasks": 0,
        "exceptions": 0,
        "retries": 0,
        "loop_iterations": 0,
        "tokens": 500,
        "cost": 1.25,
    },
}
FIGURES = list(EXPECTED[date(2026, 3, 10)])


def generate(workflow: Workflow, plans: dict[date, list[RunPlan]], *, now: datetime = NOW) -> None:
    plans_module.generate(workflow, plans, now=now)


def figures_of(row: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in FIGURES}


def test_every_figure_of_a_day_counts_the_runs_started_that_day(workflow: Workflow) -> None:
    generate(workflow, PLANS)
    for day, expected in EXPECTED.items():
        assert figures_of(metrics.measure(metrics.runs_of_day(day))) == pytest.approx(expected), day


def test_the_daily_snapshot_holds_the_same_figures_per_version_and_for_the_workflow(workflow: Workflow) -> None:
    generate(workflow, PLANS)
    written = metrics.rollup(date(2026, 3, 9), date(2026, 3, 12), now=NOW)
    assert written == 4  # a version row and a workflow row on each of the two days with runs
    for day, expected in EXPECTED.items():
        rows = DailySnapshot.objects.filter(workflow=workflow, day=day)
        assert sorted(r.version_id is None for r in rows) == [False, True]
        for row in rows:
            assert figures_of(row) == pytest.approx(expected), (day, row.version_id)
            assert row.computed_at == NOW
    assert not DailySnapshot.objects.filter(day__in=[date(2026, 3, 9), date(2026, 3, 12)]).exists()


def test_a_runs_percentiles_are_nearest_rank() -> None:
    assert metrics.percentile([], 50) is None
    assert metrics.percentile([7.0], 95) == 7.0
    values = [float(v) for v in range(1, 21)]
    assert metrics.percentile(values, 95) == 19.0  # ceil(0.95 * 20) = 19, exactly
    assert metrics.percentile(values, 50) == 10.0
    assert metrics.percentile([1.0, 2.0, 3.0], 50) == 2.0


def test_each_criterion_metric_is_computed_from_the_figures() -> None:
    m = metrics.Measures(
        runs_started=10, runs_succeeded=6, runs_failed=2, runs_cancelled=0, duration_p95=42.0,
        approvals_rejected=1, manual_tasks=2, exceptions=1, approval_wait_p50=300.0, retries=5,
        loop_iterations=3, cost=2.5,
    )
    assert m.value("success_rate") == 0.75
    assert m.value("p95_duration") == 42.0
    assert m.value("intervention_rate") == 0.4
    assert m.value("approval_wait") == 300.0
    assert m.value("retries_per_run") == 0.5
    assert m.value("loops_per_run") == 0.3
    assert m.value("cost_per_run") == 0.25
    assert m.value("runs") == 8.0
    empty = metrics.Measures()
    assert [empty.value(metric) for metric in ("success_rate", "intervention_rate", "cost_per_run", "runs")] == [None, None, None, 0.0]
    with pytest.raises(ValueError, match="metric: 'speed'"):
        m.value("speed")


def test_measure_takes_a_fixed_number_of_queries_whatever_the_number_of_runs(
    workflow: Workflow, django_assert_num_queries: Any
) -> None:
    # Runs, attempts, loops, approvals; PostgreSQL ranks the percentiles in those queries,
    # elsewhere the durations and the waits are fetched by one more query each.
    queries = 4 if connection.vendor == "postgresql" else 6
    history.make_history(workflow=workflow, days=1, runs_per_day=5, now=NOW, seed=3)
    with django_assert_num_queries(queries):
        metrics.measure(Run.objects.all())
    history.make_history(workflow=workflow, days=3, runs_per_day=60, now=NOW, seed=4)
    with django_assert_num_queries(queries):
        metrics.measure(Run.objects.all())


def test_a_run_at_half_past_eleven_at_night_counts_for_its_own_local_day(workflow: Workflow, settings: Any) -> None:
    settings.TIME_ZONE = "Europe/Paris"
    paris = ZoneInfo("Europe/Paris")
    now = datetime(2026, 6, 20, 12, 0, tzinfo=paris)
    generate(workflow, {date(2026, 6, 15): [RunPlan(start=23.5 * HOUR, duration=10)]}, now=now)
    run = Run.objects.get()
    assert run.created_at == datetime(2026, 6, 15, 23, 30, tzinfo=paris)  # 21:30 UTC
    assert metrics.day_bounds(date(2026, 6, 15)) == (
        datetime(2026, 6, 15, tzinfo=paris),
        datetime(2026, 6, 16, tzinfo=paris),
    )
    metrics.rollup(date(2026, 6, 14), date(2026, 6, 16), now=now)
    assert list(DailySnapshot.objects.filter(version=None).values_list("day", "runs_started")) == [(date(2026, 6, 15), 1)]


def test_a_rebuilt_day_drops_the_rows_of_a_version_without_runs_any_more(workflow: Workflow) -> None:
    generate(workflow, PLANS)
    metrics.snapshot_day(date(2026, 3, 11), now=NOW)
    assert DailySnapshot.objects.filter(day=date(2026, 3, 11)).count() == 2
    Run.objects.filter(created_at__date=date(2026, 3, 11)).delete()
    assert metrics.snapshot_day(date(2026, 3, 11), now=NOW) == 0
    assert not DailySnapshot.objects.filter(day=date(2026, 3, 11)).exists()


def test_an_agent_versions_snapshot_counts_the_runs_that_chose_it_and_its_own_attempts(workflow: Workflow) -> None:
    drafter = Agent.objects.get(name="drafter")
    v1 = AgentVersion.objects.create(agent=drafter, label="v1", weight=1)
    v2 = AgentVersion.objects.create(agent=drafter, label="v2", weight=1)
    day = date(2026, 3, 20)
    plans = {
        day: [
            RunPlan(start=HOUR, duration=100, retries=2, tokens=300, cost=0.03, versions={"drafter": "v1"}),
            RunPlan(start=2 * HOUR, duration=200, status="failed", versions={"drafter": "v1"}, approval="rejected", approval_wait=5),
            RunPlan(start=3 * HOUR, duration=60, loops=1, versions={"drafter": "v2"}, approval="approved", approval_wait=7),
        ]
    }
    generate(workflow, plans)
    metrics.snapshot_day(day, now=NOW)
    first = AgentVersionSnapshot.objects.get(agent_version=v1, day=day)
    # v1: run 1's draft took three attempts, run 2's one; both finished as their run did.
    assert (first.runs_started, first.runs_succeeded, first.runs_failed) == (2, 1, 1)
    assert (first.attempts, first.latency_p50, first.latency_p95) == (4, 100.0, 200.0)
    assert (first.retries, first.tokens, first.cost) == (2, 300, 0.03)
    assert (first.approvals_rejected, first.approvals_approved) == (1, 0)
    second = AgentVersionSnapshot.objects.get(agent_version=v2, day=day)
    # v2: one run, its draft in two rounds (one sent back), one attempt each.
    assert (second.runs_started, second.attempts, second.loop_iterations, second.latency_p95) == (1, 2, 1, 60.0)
    assert (second.approvals_approved, second.approval_wait_p50) == (1, 7.0)


# --- a recount from the raw rows, the long way round --------------------------------------


def recount(runs: list[Run]) -> dict[str, Any]:
    """Every figure of these runs, counted one row at a time in Python."""
    ids = {r.pk for r in runs}
    finished = sorted((r.finished_at - r.created_at).total_seconds() for r in runs if r.finished_at and r.is_final)
    attempts = list(Attempt.objects.filter(step_run__run_id__in=ids))
    items = list(Item.objects.filter(run_id__in=ids))
    approvals = [i for i in items if i.kind in ("approval", "gate")]
    waits = sorted(
        (i.decided_at - i.created_at).total_seconds()
        for i in approvals
        if i.status in ("approved", "rejected") and i.decided_at
    )
    return {
        "runs_started": len(runs),
        "runs_succeeded": sum(r.status == "succeeded" for r in runs),
        "runs_failed": sum(r.status == "failed" for r in runs),
        "runs_cancelled": sum(r.status == "cancelled" for r in runs),
        "duration_p50": metrics.percentile(finished, 50),
        "duration_p95": metrics.percentile(finished, 95),
        "approvals_requested": len(approvals),
        "approvals_approved": sum(i.status == "approved" for i in approvals),
        "approvals_rejected": sum(i.status == "rejected" for i in approvals),
        "approvals_expired": sum(i.status == "expired" for i in approvals),
        "approval_wait_p50": metrics.percentile(waits, 50),
        "approval_wait_p95": metrics.percentile(waits, 95),
        "manual_tasks": sum(i.kind == "manual" for i in items),
        "exceptions": sum(i.kind == "exception" for i in items),
        "retries": len(attempts) - len({a.step_run_id for a in attempts}),
        "loop_iterations": RunEvent.objects.filter(run_id__in=ids, kind="step.looped").count(),
        "tokens": sum(a.total_tokens for a in attempts),
        "cost": round(sum(a.cost for a in attempts), 6),
    }


def test_every_snapshot_equals_a_recount_from_the_raw_rows_of_generated_history(workflow: Workflow) -> None:
    drafter = Agent.objects.get(name="drafter")
    AgentVersion.objects.create(agent=drafter, label="v1", weight=3)
    AgentVersion.objects.create(agent=drafter, label="v2", weight=1)
    report = history.make_history(workflow=workflow, days=10, runs_per_day=lambda d: 20 + d.day % 7, now=NOW, seed=7)
    assert report.runs > 200 and report.items > 0
    metrics.rollup(date(2026, 3, 22), now=NOW)
    runs = list(Run.objects.all())
    assert {r.trigger for r in runs} == {"history"}
    days = {timezone.localdate(r.created_at) for r in runs}
    assert DailySnapshot.objects.filter(version=None).count() == len(days) == 10
    for row in DailySnapshot.objects.all():
        cohort = [r for r in runs if timezone.localdate(r.created_at) == row.day]
        assert figures_of(row) == pytest.approx(recount(cohort)), row.day
    for row in AgentVersionSnapshot.objects.all():
        chose = set(row.agent_version.choices.values_list("run_id", flat=True))
        cohort = [r for r in runs if timezone.localdate(r.created_at) == row.day and r.pk in chose]
        assert figures_of(row) == pytest.approx(recount(cohort)), (row.day, row.agent_version.label)
        own = Attempt.objects.filter(agent_version=row.agent_version, step_run__run__in=[r.pk for r in cohort])
        assert row.attempts == own.count()


def test_the_sweep_rewrites_only_the_days_with_runs_started_or_finished_since_its_last_pass(workflow: Workflow) -> None:
    generate(workflow, PLANS)
    # No snapshot yet: today and yesterday.
    assert metrics.changed_days(NOW) == [date(2026, 3, 30), date(2026, 3, 31)]
    metrics.rollup(date(2026, 3, 10), date(2026, 3, 11), now=NOW - timedelta(days=1))
    # Every generated run started or finished before the last pass: nothing to do.
    assert metrics.changed_days(NOW) == []
    running = Run.objects.get(status="running")
    Run.objects.filter(pk=running.pk).update(status="succeeded", finished_at=NOW - timedelta(minutes=5))
    assert metrics.changed_days(NOW) == [date(2026, 3, 10)]
    assert metrics.sweep(NOW) == 2
    assert DailySnapshot.objects.get(day=date(2026, 3, 10), version=None).runs_succeeded == 3


def test_the_rollup_command_rebuilds_a_range_and_says_what_it_wrote(workflow: Workflow) -> None:
    from io import StringIO

    from django.core.management import call_command

    generate(workflow, PLANS)
    out = StringIO()
    call_command("rollup", "--since", "2026-03-09", "--until", "2026-03-11", stdout=out)
    assert out.getvalue().splitlines() == [
        "2026-03-10: 2 snapshot rows",
        "2026-03-11: 2 snapshot rows",
        "rebuilt 3 days from 2026-03-09 to 2026-03-11: 4 rows",
    ]
    assert figures_of(DailySnapshot.objects.get(day=date(2026, 3, 10), version=None)) == pytest.approx(EXPECTED[date(2026, 3, 10)])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since: 'yesterday' is not a date"),
        (["--since", "2026-03-10", "--until", "2026-02-30"], "--until: '2026-02-30' is not a date"),
        (["--since", "2026-03-10", "--until", "2026-03-01"], "--until: 2026-03-01 is before --since 2026-03-10"),
        (["--since", "1990-01-01", "--until", "2026-01-01"], "--since: 13,150 days is more than 3,660"),
    ],
)
def test_the_rollup_command_names_the_option_of_a_bad_date(args: list[str], message: str) -> None:
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=message):
        call_command("rollup", *args)


def test_a_workflow_with_two_versions_on_one_day_is_measured_over_both(workflow: Workflow) -> None:
    from tests.rollouts.conftest import REVIEW
    from tests.support import load_workflow

    day = date(2026, 3, 20)
    generate(workflow, {day: [RunPlan(start=HOUR, duration=10), RunPlan(start=2 * HOUR, duration=20, approval="approved", approval_wait=30)]})
    load_workflow(REVIEW.replace("name: Review", "name: Review, second edition"))
    assert workflow.versions.count() == 2
    generate(workflow, {day: [RunPlan(start=3 * HOUR, duration=30, retries=1), RunPlan(start=4 * HOUR, status="failed", duration=40, approval="approved", approval_wait=90)]})
    metrics.snapshot_day(day, now=NOW)
    rows = {row.version.number if row.version else None: row for row in DailySnapshot.objects.filter(day=day)}
    assert sorted(rows, key=str) == [1, 2, None]
    assert (rows[1].runs_started, rows[1].duration_p95, rows[1].approval_wait_p50) == (2, 20.0, 30.0)
    assert (rows[2].runs_started, rows[2].runs_failed, rows[2].retries, rows[2].duration_p50) == (2, 1, 1, 30.0)
    whole = rows[None]
    # Ranked over all four runs, not added up from the versions' percentiles.
    assert (whole.runs_started, whole.runs_failed, whole.retries, whole.approvals_approved) == (4, 1, 1, 2)
    assert (whole.duration_p50, whole.duration_p95, whole.approval_wait_p50, whole.approval_wait_p95) == (20.0, 40.0, 30.0, 90.0)


def month_plan(day: date, index: int, rng: random.Random) -> RunPlan:
    """A month in which day n has 4 + n % 3 runs and run i of it does the same things every day."""
    n, failed = day.day, index == 0 and day.day % 2 == 0
    return RunPlan(
        status="failed" if failed else "succeeded",
        duration=60 * (index + 1) + n,
        retries=int(index == 1),
        loops=n % 4 if index == 0 else 0,
        tokens=100 * (index + 1),
        cost=0.01 * (index + 1),
        approval="approved" if index % 2 == 0 else "rejected",
        approval_wait=10 * (index + 1) + n,
        manual=index == 2,
        exception=failed,
    )


def month_expected(n: int) -> dict[str, Any]:
    k = 4 + n % 3
    failed = int(n % 2 == 0)
    middle = -(-k // 2)  # the nearest rank of p50; p95's is k for these few runs
    return {
        "runs_started": k, "runs_succeeded": k - failed, "runs_failed": failed, "runs_cancelled": 0,
        "duration_p50": float(60 * middle + n), "duration_p95": float(60 * k + n),
        "approvals_requested": k, "approvals_approved": middle, "approvals_rejected": k // 2, "approvals_expired": 0,
        "approval_wait_p50": float(10 * middle + n), "approval_wait_p95": float(10 * k + n),
        "manual_tasks": 1, "exceptions": failed, "retries": 1, "loop_iterations": n % 4,
        "tokens": 100 * k * (k + 1) // 2, "cost": 0.01 * k * (k + 1) / 2,
    }  # fmt: skip


def test_a_month_of_runs_with_known_outcomes_gives_every_figure_of_its_days(workflow: Workflow) -> None:
    now = datetime(2026, 3, 31, 0, 30, tzinfo=UTC)
    report = history.make_history(
        workflow=workflow,
        days=31,
        runs_per_day=lambda d: 4 + d.day % 3 if d.day <= 30 else 0,
        now=now,
        seed=11,
        outcomes=month_plan,
    )
    assert report.runs == sum(4 + n % 3 for n in range(1, 31))
    metrics.rollup(date(2026, 3, 1), now=now)
    assert DailySnapshot.objects.filter(version=None).count() == 30
    for n in (1, 2, 14, 29, 30):
        row = DailySnapshot.objects.get(day=date(2026, 3, n), version=None)
        assert figures_of(row) == pytest.approx(month_expected(n)), n


def test_a_days_snapshot_takes_as_many_queries_for_sixty_runs_as_for_three(workflow: Workflow) -> None:
    from django.db import connection as conn
    from django.test.utils import CaptureQueriesContext

    drafter = Agent.objects.get(name="drafter")
    AgentVersion.objects.create(agent=drafter, label="v1", weight=1)
    AgentVersion.objects.create(agent=drafter, label="v2", weight=1)
    counted = []
    for day, runs in ((date(2026, 3, 29), 3), (date(2026, 3, 30), 60)):
        history.make_history(workflow=workflow, days=1, runs_per_day=runs, now=metrics.day_bounds(day)[1] - timedelta(seconds=1), seed=runs)
        with CaptureQueriesContext(conn) as queries:
            metrics.snapshot_day(day, now=NOW)
        counted.append(len(queries))
    assert counted[0] == counted[1]
    assert DailySnapshot.objects.get(day=date(2026, 3, 30), version=None).runs_started == 60
    assert AgentVersionSnapshot.objects.filter(day=date(2026, 3, 30)).count() == 2


def test_a_trial_of_the_draft_counts_in_no_figure_and_no_snapshot(workflow: Workflow) -> None:
    generate(workflow, PLANS)
    # The same day's runs, one of them now a trial of the draft: the day counts one run less.
    trial = Run.objects.filter(created_at__date=date(2026, 3, 11)).first()
    assert trial is not None
    Run.objects.filter(pk=trial.pk).update(trigger="trial")
    assert metrics.measure(metrics.runs_of_day(date(2026, 3, 11))).runs_started == 4
    metrics.rollup(date(2026, 3, 11), date(2026, 3, 11), now=NOW)
    assert {row.runs_started for row in DailySnapshot.objects.filter(day=date(2026, 3, 11))} == {4}
