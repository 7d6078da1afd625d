"""The overview, the home page: what runs now, who holds what, how the last day and week went.

Runs are written straight into the tables with the times a test needs (as
tests/dashboard/test_query_counts.py does), under a frozen clock, so every figure is known.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from approvals.models import Item, ItemKind, ItemStatus
from dashboard.live import topics
from dashboard.overview import overview_page
from orchestration.models import AgentHealth, Attempt, CircuitState, Run, StepRun, WorkflowVersion
from orchestration.status import AttemptStatus, RunStatus, StepStatus, WaitingFor

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 2, 15, 30, tzinfo=timezone.get_default_timezone())


def add_run(
    version: WorkflowVersion,
    *,
    status: str,
    started: datetime,
    took: float | None = None,
    error: str = "",
    trigger: str = "manual",
) -> Run:
    run = Run.objects.create(workflow=version.workflow, version=version, status=status, input={}, error=error, trigger=trigger)
    finished = started + timedelta(seconds=took) if took is not None else None
    Run.objects.filter(pk=run.pk).update(created_at=started, finished_at=finished)
    run.refresh_from_db()
    return run


def waits_for_approval(run: Run, since: datetime) -> StepRun:
    step = StepRun.objects.create(
        run=run, step_key="research", status=StepStatus.WAITING, waiting_for=WaitingFor.APPROVAL, kind="approval"
    )
    StepRun.objects.filter(pk=step.pk).update(created_at=since)
    return step


def attempt(run: Run, *, finished: datetime, tokens: int, cost: float) -> Attempt:
    step = StepRun.objects.create(run=run, step_key=f"s{StepRun.objects.count()}", status=StepStatus.SUCCEEDED, agent_name="echo")
    return Attempt.objects.create(
        step_run=step,
        number=1,
        status=AttemptStatus.SUCCEEDED,
        agent_name="echo",
        total_tokens=tokens,
        cost=cost,
        started_at=finished - timedelta(seconds=2),
        finished_at=finished,
    )


@pytest.fixture
def day_of_runs(digest: WorkflowVersion) -> dict[str, Any]:
    """Three succeeded and two failed in the last 24 hours, one succeeded and one failed earlier
    in the week, one a month ago, one running and one waiting for an approval since an hour."""
    hour = timedelta(hours=1)
    for started, took in ((NOW - 2 * hour, 60), (NOW - 3 * hour, 120), (NOW - 20 * hour, 300)):
        add_run(digest, status=RunStatus.SUCCEEDED, started=started, took=took)
    add_run(digest, status=RunStatus.FAILED, started=NOW - 4 * hour, took=30, error="TimeoutError: the blog API did not answer\nTraceback ...")
    add_run(digest, status=RunStatus.FAILED, started=NOW - 5 * hour, took=30, error="TimeoutError: the blog API did not answer")
    add_run(digest, status=RunStatus.SUCCEEDED, started=NOW - 72 * hour, took=600)
    add_run(digest, status=RunStatus.FAILED, started=NOW - 96 * hour, took=40, error="ValueError: bad title")
    add_run(digest, status=RunStatus.SUCCEEDED, started=NOW - 30 * 24 * hour, took=60)
    running = add_run(digest, status=RunStatus.RUNNING, started=NOW - 10 * 60 * timedelta(seconds=1))
    attempt(running, finished=NOW - timedelta(minutes=5), tokens=1200, cost=0.018)
    attempt(running, finished=NOW - 30 * hour, tokens=99_000, cost=9.0)  # yesterday: not today's
    held = add_run(digest, status=RunStatus.RUNNING, started=NOW - 2 * hour)
    step = waits_for_approval(held, NOW - hour)
    item = Item.objects.create(kind=ItemKind.APPROVAL, step_run=step, run=held, title="Publish?", deadline=NOW - 10 * 60 * timedelta(seconds=1))
    Item.objects.filter(pk=item.pk).update(created_at=NOW - hour)
    return {"held": held}


def figures_for(user: Any) -> dict[str, Any]:
    with time_machine.travel(NOW, tick=False):
        return overview_page(user)["overview"].figures  # type: ignore[no-any-return]


def test_the_overview_is_the_home_page_and_the_runs_list_moved_to_runs(ops_client: Client, digest: WorkflowVersion) -> None:
    assert reverse("dashboard:overview") == "/"
    assert reverse("dashboard:runs") == "/runs/"
    home = ops_client.get("/").content.decode()
    assert 'data-live="overview"' in home and "<h1>Overview</h1>" in home
    assert 'href="/runs/"' in home  # the navigation's Runs
    runs = ops_client.get("/runs/").content.decode()
    assert 'id="runs-table"' in runs


def test_an_anonymous_visitor_is_sent_to_sign_in(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_it_counts_what_runs_now_and_how_the_last_day_and_week_went(ops: Any, day_of_runs: dict[str, Any]) -> None:
    figures = figures_for(ops)
    assert figures["running"] == 2  # the running run and the one held at the approval
    assert figures["waiting"] == 1
    assert figures["oldest_wait"] == NOW - timedelta(hours=1)
    assert (figures["succeeded_24h"], figures["failed_24h"], figures["cancelled_24h"]) == (3, 2, 0)
    assert (figures["succeeded_7d"], figures["finished_7d"]) == (4, 7)
    # Nearest rank over the last 24 hours' five durations: 30, 30, 60, 120, 300.
    assert figures["p50_24h"] == 60 and figures["p95_24h"] == 300
    assert figures["tokens_today"] == 1200 and figures["cost_today"] == pytest.approx(0.018)
    assert figures["overdue"] == 1
    assert figures["circuits"] == 0 and figures["alerts"] == 0


def test_the_page_shows_the_figures_as_words_and_the_failures_by_cause(ops_client: Client, day_of_runs: dict[str, Any]) -> None:
    with time_machine.travel(NOW, tick=False):
        page = ops_client.get("/").content.decode()
    tile = {key: text for key, text in re.findall(r'data-tile="(\w+)">(.*?)</li>', page, re.S)}
    assert ">3<" in tile["succeeded"] and ">2<" in tile["failed"]
    assert "57.1%" in tile["success_rate"] and "4 of 7 finished runs" in tile["success_rate"]
    assert "p50 1 min" in tile["duration"] and "p95 5 min" in tile["duration"]
    assert "1,200 tokens" in tile["usage"] and "$0.02" in tile["usage"]
    assert "oldest waiting 1 h" in tile["waiting"]
    assert "tile--bad" in page.split('data-tile="overdue"')[0].rsplit("<li", 1)[1]
    assert "Firing alerts" in tile["alerts"]
    # Two failures of the same cause (its first line), none of last week's.
    assert re.search(r"<span class=\"strong\">2</span> × <span class=\"mono\">TimeoutError: the blog API did not answer</span>", page)
    assert "bad title" not in page
    # The charts, and their numbers as text.
    assert 'data-chart="hourly"' in page and 'data-chart="durations"' in page
    assert "13:00–14:00: 1 succeeded" in page  # the bar's title
    assert "p50 1 min" in page


def test_it_counts_only_the_runs_the_reader_may_see(outsider: Any, ops: Any, day_of_runs: dict[str, Any]) -> None:
    figures = figures_for(outsider)
    assert (figures["running"], figures["waiting"], figures["succeeded_24h"], figures["finished_7d"]) == (0, 0, 0, 0)
    assert (figures["tokens_today"], figures["overdue"]) == (0, 0)
    with time_machine.travel(NOW, tick=False):
        assert overview_page(outsider)["overview"].latest == []
    # A superuser sees everything without any filter.
    ops.is_superuser = True
    assert figures_for(ops)["finished_7d"] == 7


def test_open_circuits_are_counted_for_everyone(ops: Any, digest: WorkflowVersion) -> None:
    from orchestration.models import Agent

    AgentHealth.objects.create(agent=Agent.objects.get(name="echo"), circuit_state=CircuitState.OPEN)
    assert figures_for(ops)["circuits"] == 1


def test_the_latest_runs_are_listed_newest_first(ops_client: Client, digest: WorkflowVersion) -> None:
    old = add_run(digest, status=RunStatus.SUCCEEDED, started=timezone.now() - timedelta(hours=3), took=5)
    new = add_run(digest, status=RunStatus.RUNNING, started=timezone.now() - timedelta(minutes=1))
    page = ops_client.get("/").content.decode()
    assert page.index(f'data-run="{new.pk}"') < page.index(f'data-run="{old.pk}"')


def test_an_htmx_refresh_gets_the_partial_alone(ops_client: Client, digest: WorkflowVersion) -> None:
    response = ops_client.get("/", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert '<section id="overview"' in body and "<html" not in body
    assert "HX-Request" in response["Vary"]


def test_the_live_push_lets_a_reader_follow_the_overview(ops: Any, outsider: Any, digest: WorkflowVersion) -> None:
    granted, refused = topics.resolve(ops, ["overview"])
    assert granted["overview"] == {f"wf.{digest.workflow_id}"} and refused == []
    granted, _ = topics.resolve(outsider, ["overview"])
    assert granted["overview"] == set()


def test_the_overview_takes_the_same_queries_for_a_few_runs_as_for_many(
    ops_client: Client, digest: WorkflowVersion, django_assert_num_queries: Any
) -> None:
    # session, user, the workflows ops sees and the sub-workflow runs among them, the week day
    # by day, the 24 hours by hour (and in flight), their durations, failures by cause, waits on
    # people, today's usage, inbox items, circuits, the firing alerts one may see, the latest runs.
    expected = 14
    for batch in (3, 120):
        for n in range(batch):
            run = add_run(
                digest,
                status=[RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.RUNNING][n % 4],
                started=timezone.now() - timedelta(hours=n % 160, minutes=5),
                took=None if n % 4 == 3 else 30 + n,
                error=f"E{n % 3}: broke",
            )
            if n % 10 == 0:
                waits_for_approval(run, timezone.now())
                attempt(run, finished=timezone.now(), tokens=10, cost=0.01)
        with django_assert_num_queries(expected):
            response = ops_client.get("/")
        assert response.status_code == 200


def test_a_superusers_overview_needs_no_list_of_workflows(
    client: Client, admin_user: Any, digest: WorkflowVersion, django_assert_num_queries: Any
) -> None:
    client.force_login(admin_user)
    with django_assert_num_queries(12):
        assert client.get("/").status_code == 200


def test_the_demo_history_fills_the_overview_and_says_it_is_demo_data(client: Client) -> None:
    call_command("load_demo", "--history", "--quiet")
    from django.contrib.auth import get_user_model

    ops = get_user_model().objects.get(username="ops")
    client.force_login(ops)
    page = client.get("/").content.decode()
    figures = overview_page(ops)["overview"].figures
    assert figures["finished_7d"] > 20 and figures["succeeded_7d"] < figures["finished_7d"]
    assert figures["succeeded_24h"] + figures["failed_24h"] > 0
    assert figures["decided_24h"] > 0 or Item.objects.filter(decided_at__isnull=False).exists()
    assert "data-demo" in page and "Demo data:" in page and "load_demo --history" in page
    assert Group.objects.exists()
    assert Item.objects.filter(status=ItemStatus.APPROVED).exists()


def test_a_demo_history_made_days_ago_gets_the_days_since_on_the_next_load(ops: Any) -> None:
    from io import StringIO

    call_command("load_demo", "--history", "--quiet")
    before = Run.objects.filter(trigger="history").count()
    later = timezone.now() + timedelta(days=3)
    with time_machine.travel(later, tick=False):
        out = StringIO()
        call_command("load_demo", "--history", stdout=out)
        assert "more runs for the 3 day(s) since it was made" in out.getvalue()
        added = Run.objects.filter(trigger="history").count() - before
        assert added > 10
        figures = overview_page(ops)["overview"].figures
        # ops sees the workflow as an operator of the demo's workflows.
        assert figures["succeeded_24h"] + figures["failed_24h"] > 0
        assert not Run.objects.filter(trigger="history", status=RunStatus.FAILED, error="").exists()
        # The same day again adds nothing.
        again = StringIO()
        call_command("load_demo", "--history", stdout=again)
        assert "kept the history" in again.getvalue() and "more runs" not in again.getvalue()
