"""Each console page sends as many queries for a few rows as for many (issue 11).

The pages' speed at 100,000 runs is `manage.py bench --only console`'s to measure; here each
page is drawn over a small and a larger set of rows, and the count must not move. The rows
are written straight into the tables, as tests/dashboard/big_runs.py does for the run page.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from dashboard.read_models import STEP_ROWS_SHOWN, rows_shown
from orchestration.models import Run, StepRun, WorkflowVersion
from orchestration.status import RunStatus, StepStatus, WaitingFor
from tests.dashboard.big_runs import big_run, big_workflow
from tests.dashboard.conftest import DIGEST
from tests.support import load_workflow

pytestmark = pytest.mark.django_db

STATUSES = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.RUNNING]


def add_runs(version: WorkflowVersion, count: int) -> None:
    """`count` runs of every final status and running, and one more that waits for an approval."""
    statuses = [STATUSES[n % len(STATUSES)] for n in range(count)]
    Run.objects.bulk_create(
        Run(
            workflow=version.workflow,
            version=version,
            status=status,
            input={"topic": f"t{n}"},
            finished_at=None if status == RunStatus.RUNNING else timezone.now(),
        )
        for n, status in enumerate(statuses)
    )
    waiting = Run.objects.create(
        workflow=version.workflow, version=version, status=RunStatus.RUNNING, input={}
    )
    StepRun.objects.create(
        run=waiting,
        step_key="research",
        status=StepStatus.WAITING,
        waiting_for=WaitingFor.APPROVAL,
        agent_name="echo",
    )


def publish(times: int) -> None:
    """`times` new versions of digest, each with a name of its own."""
    for _ in range(times):
        load_workflow(DIGEST.replace("Daily digest", f"Daily digest {WorkflowVersion.objects.count()}"))


def queries_of(client: Client, url: str, django_assert_num_queries: Any, expected: int) -> str:
    with django_assert_num_queries(expected):
        response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def test_the_runs_list_and_its_filtered_later_pages_take_the_same_queries_for_60_runs_as_for_400(
    ops_client: Client, digest: WorkflowVersion, django_assert_num_queries: Any
) -> None:
    # session, user, the workflows one sees (for the filter, then the ids access.visible_runs
    # reads), the page with its waiting mark, progress, for_each progress, the waiting runs'
    # waiting steps and who they wait for, whether ops may tick runs for bulk actions. A page
    # with no waiting run skips the two waiting queries.
    for more in (59, 340):
        add_runs(digest, more)
        first = queries_of(
            ops_client, reverse("dashboard:runs") + "?workflow=digest", django_assert_num_queries, 10
        )
        older = re.search(r'rel="next" href="\?([^"]+)"', first)
        assert older is not None
        later = reverse("dashboard:runs") + "?" + older.group(1).replace("&amp;", "&") + "&status=failed"
        assert queries_of(ops_client, later, django_assert_num_queries, 8).count("<tr data-run=") > 0


def test_the_workflow_page_takes_the_same_queries_for_two_versions_and_runs_as_for_thirty(
    ops_client: Client, digest: WorkflowVersion, django_assert_num_queries: Any
) -> None:
    url = reverse("dashboard:workflow", args=["digest"])
    # session, user, the workflow, may see it, versions, recent runs, their progress and
    # for_each progress, the waiting runs' steps and who they wait for, the 30 days' counts
    # and median, may start, may change, its triggers, its daily figures: none per run or per
    # version.
    publish(1)
    add_runs(digest, 1)
    small = queries_of(ops_client, url, django_assert_num_queries, 16)
    publish(28)
    add_runs(digest, 29)
    large = queries_of(ops_client, url, django_assert_num_queries, 16)
    assert small.count("data-version=") == 2 and large.count("data-version=") == 30
    assert small.count("<tr data-run=") == 2 and large.count("<tr data-run=") == 10


def test_a_run_of_150_steps_takes_the_run_pages_usual_queries_and_draws_its_first_hundred_rows(
    ops_client: Client, ops: Any, django_assert_num_queries: Any
) -> None:
    run = big_run(big_workflow(150), steps=150, attempts=2, events=300)
    # Two of them still open: they are drawn whatever their place in the spec.
    StepRun.objects.filter(run=run, step_key__in=["s140", "s150"]).update(
        status=StepStatus.RUNNING, finished_at=None
    )
    url = reverse("dashboard:run", args=[run.pk])
    # As tests/dashboard/test_run_details.py counts for 2 and 50 steps (the timeline's one
    # query and the shown rows' outputs included).
    page = queries_of(ops_client, url, django_assert_num_queries, 18)
    rows = re.findall(r'<tr id="step-(s\d+)"', page)
    assert len(rows) == STEP_ROWS_SHOWN
    assert rows[:98] == [f"s{n}" for n in range(1, 99)] and rows[98:] == ["s140", "s150"]
    assert "Showing 100 of 150 step rows: the open and failed ones first" in page
    assert page.count('class="node node--') == 151  # the graph has every step, and the map
    everything = queries_of(ops_client, url + "?steps=all", django_assert_num_queries, 18)
    assert len(re.findall(r'<tr id="step-s\d+"', everything)) == 150
    assert "step rows: the open" not in everything
    # Its live refresh asks for every row again.
    assert f'hx-get="{url}?steps=all"' in everything


def test_the_rows_the_table_leaves_out_are_read_light_and_cost_no_query_of_their_own(
    ops_client: Client, ops: Any, django_assert_num_queries: Any
) -> None:
    # Every head row is read with a few columns only (read_models.HEAD_COLUMNS), the shown ones
    # whole: the graph, the finished count and the waiting words must need nothing more of
    # the others, whatever they wait for or whichever agent took over.
    run = big_run(big_workflow(150), steps=150, attempts=1, events=10)
    StepRun.objects.filter(run=run, step_key__in=[f"s{n}" for n in range(1, 121)]).update(
        status=StepStatus.WAITING, waiting_for=WaitingFor.TIMER, wake_at=timezone.now() + timedelta(hours=2), finished_at=None
    )
    StepRun.objects.filter(run=run, step_key__in=[f"s{n}" for n in range(121, 131)]).update(
        status=StepStatus.FAILED, agent_name="echo", fallback_from="primary"
    )
    page = queries_of(ops_client, reverse("dashboard:run", args=[run.pk]), django_assert_num_queries, 18)
    assert len(re.findall(r'<tr id="step-(s\d+)"', page)) == STEP_ROWS_SHOWN
    assert re.search(r"waiting: a timer, wakes in [^<]+ \(and 119 more\)", page)  # the run's words count the hidden ones
    assert page.count('class="node node--waiting"') == 120 and page.count('class="node node--failed"') == 10
    assert page.count("↪ echo") == 10  # the graph names the fallback of rows the table leaves out
    assert "<dd>30 of 151</dd>" in page  # finished: 20 succeeded and 10 failed, of every step and the map


def test_the_open_and_failed_rows_come_first_and_the_rest_keep_their_order() -> None:
    rows = [StepRun(pk=n, step_key=f"s{n}", status=StepStatus.SUCCEEDED) for n in range(1, 8)]
    rows[5].status = StepStatus.FAILED
    rows[6].status = StepStatus.WAITING
    assert [r.step_key for r in rows_shown(rows, 4)] == ["s1", "s2", "s6", "s7"]
    assert rows_shown(rows, 7) == rows


def test_an_action_on_a_page_showing_every_step_row_answers_with_every_row(
    ops_client: Client, ops: Any
) -> None:
    run = big_run(big_workflow(120), steps=120, attempts=1)
    page = reverse("dashboard:run", args=[run.pk])
    response = ops_client.post(
        reverse("dashboard:cancel", args=[run.pk]),
        {"reason": "enough"},
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL=f"http://testserver{page}?steps=all",
    )
    assert response.status_code == 200
    assert len(re.findall(r'<tr id="step-s\d+"', response.content.decode())) == 120
