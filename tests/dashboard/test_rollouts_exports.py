"""The CSV of a rollout's daily metrics, the runs list's window of start times, and the
weekly review page."""

from __future__ import annotations

import csv
import io
import random
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dashboard import rollout_reads
from orchestration.models import Run, StepRun, WorkflowVersion
from orchestration.rollouts import history, metrics
from orchestration.rollouts.models import DailySnapshot, Rollout
from orchestration.status import RunStatus
from tests.dashboard.rollout_support import passing_history, start_rollout

pytestmark = pytest.mark.django_db

CSV = reverse("dashboard:rollout_csv", kwargs={"key": "digest"})
REVIEW = reverse("dashboard:rollout_review", kwargs={"key": "digest"})


@pytest.fixture
def rollout(digest: WorkflowVersion, ops: Any) -> Rollout:
    return start_rollout(ops)


def read_csv(response: Any) -> list[list[str]]:
    return list(csv.reader(io.StringIO(response.content.decode())))


# ---------------------------------------------------------------------------------------------
# CSV


def test_the_csv_has_a_header_and_a_row_per_day_and_scope_workflow_first(
    ops_client: Client, ops: Any, rollout: Rollout
) -> None:
    passing_history(rollout, ops, days=3, per_day=2)
    response = ops_client.get(CSV)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="digest-metrics-')
    header, *rows = read_csv(response)
    assert header[:4] == ["day", "workflow", "scope", "runs_started"] and "cost" in header and "approval_wait_p95" in header
    snapshots = DailySnapshot.objects.filter(workflow=rollout.workflow)
    assert len(rows) == snapshots.count()
    days = sorted({row[0] for row in rows})
    for day in days:
        scopes = [row[2] for row in rows if row[0] == day]
        assert scopes[0] == "workflow" and scopes[1:] == ["v1"]
    whole = next(row for row in rows if row[2] == "workflow" and row[0] == days[-1])
    snapshot = snapshots.get(day=date.fromisoformat(days[-1]), version__isnull=True)
    assert int(whole[header.index("runs_succeeded")]) == snapshot.runs_succeeded


def test_the_csv_defaults_to_the_last_30_days(ops_client: Client, rollout: Rollout) -> None:
    since, until = rollout_reads.parse_csv_range("", "", date(2026, 11, 30))
    assert (since, until) == (date(2026, 11, 1), date(2026, 11, 30))
    assert ops_client.get(CSV).status_code == 200


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("since=2026-11-30&until=2026-11-01", "since"),
        ("since=2025-01-01&until=2026-11-30", "since: at most 366 days"),
        ("since=" + "9" * 5000, "since"),
    ],
)
def test_bad_dates_are_400_with_a_message_naming_the_parameter(
    ops_client: Client, rollout: Rollout, query: str, named: str
) -> None:
    response = ops_client.get(f"{CSV}?{query}")
    assert response.status_code == 400
    assert response.content.decode().startswith(named)


def test_cells_a_spreadsheet_would_run_as_formulas_get_a_quote() -> None:
    assert [rollout_reads.csv_cell(v) for v in ("=SUM(A1)", "+1", "-2", "@x", "plain", 3, None)] == [
        "'=SUM(A1)",
        "'+1",
        "'-2",
        "'@x",
        "plain",
        "3",
        "",
    ]


def test_366_days_is_the_longest_range(ops_client: Client, rollout: Rollout) -> None:
    assert ops_client.get(f"{CSV}?since=2025-12-01&until=2026-12-01").status_code == 200


# ---------------------------------------------------------------------------------------------
# The runs list's window


def test_the_runs_list_keeps_only_runs_started_in_the_window(ops_client: Client, ops: Any, rollout: Rollout) -> None:
    passing_history(rollout, ops, days=3, per_day=2)
    today = timezone.localdate()
    since, until = metrics.day_bounds(today - timedelta(days=1))
    inside = set(Run.objects.filter(created_at__gte=since, created_at__lt=until).values_list("pk", flat=True))
    assert len(inside) == 2
    page = ops_client.get(rollout_reads.runs_url("digest", since, until)).content.decode()
    shown = {int(pk) for pk in re.findall(r'<tr data-run="(\d+)">', page)}
    assert shown == inside
    assert "Started from" in page


@pytest.mark.parametrize("value", ["tuesday", "2026-02-30", "x" * 300, "2026-11-30T25:00"])
def test_a_bad_window_value_is_said_in_words_and_filters_nothing(ops_client: Client, digest: WorkflowVersion, value: str) -> None:
    response = ops_client.get(reverse("dashboard:runs"), {"started_after": value, "started_before": "2026-11-30"})
    assert response.status_code == 200
    assert "started_after: " in response.content.decode() and "is not a date or time" in response.content.decode()


def test_a_window_given_as_days_is_read_in_the_servers_time_zone(ops_client: Client, digest: WorkflowVersion) -> None:
    from dashboard.runs_list import started_window

    window, problems = started_window({"started_after": "2026-11-30", "started_before": "2026-12-01T08:30:00+01:00"})  # type: ignore[arg-type]
    assert problems == []
    assert window["started_after"] == timezone.make_aware(datetime(2026, 11, 30))
    assert window["started_before"].utcoffset() == timedelta(hours=1)


# ---------------------------------------------------------------------------------------------
# The weekly review


def failing_plan(day: date, index: int, rng: random.Random) -> history.RunPlan:
    status = RunStatus.FAILED if index < 3 else RunStatus.SUCCEEDED
    return history.RunPlan(status=status, start=600.0 * index, duration=30.0)


def test_failures_of_the_week_are_grouped_by_failing_step_and_first_line_of_the_error(
    ops_client: Client, ops: Any, rollout: Rollout
) -> None:
    with time_machine.travel(datetime(2026, 11, 27, 12, 0, tzinfo=timezone.get_current_timezone()), tick=False):
        history.make_history(workflow=rollout.workflow, days=3, runs_per_day=4, outcomes=failing_plan)
    failed = list(Run.objects.filter(status=RunStatus.FAILED).order_by("pk"))
    assert len(failed) == 9
    causes = ["Timeout\nTraceback ...", "Timeout\nother", "HTTP 503"]
    for n, run in enumerate(failed):
        StepRun.objects.filter(run=run, status="failed").update(error=causes[n % 3])
    page = ops_client.get(REVIEW, {"week": "2026-W48"}).content.decode()
    assert "week 2026-W48" in page
    groups = rollout_reads.failures_by_cause(Run.objects.filter(workflow=rollout.workflow))
    assert [(g.step, g.cause, g.count) for g in groups] == [("publish", "Timeout", 6), ("publish", "HTTP 503", 3)]
    assert "Timeout" in page and "HTTP 503" in page and f'href="/runs/{failed[0].pk}/"' in page


def test_the_review_defaults_to_this_week_and_links_to_the_previous_one(ops_client: Client, rollout: Rollout) -> None:
    monday = timezone.localdate() - timedelta(days=timezone.localdate().weekday())
    page = ops_client.get(REVIEW).content.decode()
    assert rollout_reads.week_label(monday) in page
    assert f"?week={rollout_reads.week_label(monday - timedelta(days=7))}" in page
    assert "Rollout started" in page


def test_a_week_that_is_not_an_iso_week_is_said_and_this_week_shown(ops_client: Client, rollout: Rollout) -> None:
    response = ops_client.get(REVIEW, {"week": "2026-W99"})
    assert response.status_code == 400
    assert "is not an ISO week" in response.content.decode()


def test_the_review_prints_without_navigation_on_a4(ops_client: Client, rollout: Rollout) -> None:
    css = (Path(__file__).resolve().parents[2] / "static" / "css" / "rollouts.css").read_text()
    assert "@page { size: A4; margin: 15mm; }" in css
    assert 'class="crumbs no-print"' in ops_client.get(REVIEW).content.decode()
