"""The runs page: recent runs with status, progress and timing, filters, pages, and its poll."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from orchestration import transitions
from orchestration.models import Run, StepRun, WorkflowVersion
from orchestration.status import RunStatus
from orchestration.tasks import execute_step
from tests.dashboard.conftest import AGENTS
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

REFUSING = (
    AGENTS
    + """
workflow:
  key: refusing
  name: Refusing flow
  owner: ops
  steps:
    - {key: ask, agent: refuse}
"""
)


def start(ops: Any, topic: str = "tides") -> Run:
    return transitions.start_run(workflow="digest", input={"topic": topic}, started_by=ops, trigger="dashboard")


def row_for(page: str, run: Run) -> str:
    match = re.search(rf'<tr data-run="{run.pk}">(.*?)</tr>', page, re.DOTALL)
    assert match, f"no row for run {run.pk}"
    return match.group(1)


def test_it_lists_runs_with_their_status_progress_and_who_started_them(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    done = drive(start(ops))
    going = start(ops)
    cancelled = transitions.cancel_run(run_id=start(ops).pk, actor=ops)
    load_workflow(REFUSING)
    failed = drive(transitions.start_run(workflow="refusing"))

    page = ops_client.get(reverse("dashboard:runs")).content.decode()

    assert 'data-status="succeeded"' in row_for(page, done)
    assert "3/3" in row_for(page, done)
    assert 'data-status="running"' in row_for(page, going)
    assert "0/3" in row_for(page, going)
    assert 'data-status="cancelled"' in row_for(page, cancelled)
    assert 'data-status="failed"' in row_for(page, failed)
    assert "1/1" in row_for(page, failed)
    assert "ops" in row_for(page, going)
    assert "dashboard" in row_for(page, going)
    assert "Daily digest" in row_for(page, going)
    assert f'href="/runs/{going.pk}/"' in row_for(page, going)


def test_it_shows_the_start_time_relatively_with_the_exact_time_in_the_title(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    run = start(ops)
    Run.objects.filter(pk=run.pk).update(created_at=run.created_at.replace(year=2020))
    row = row_for(ops_client.get(reverse("dashboard:runs")).content.decode(), run)
    assert "years" in row and "ago" in row
    assert re.search(r'title="2020-\d\d-\d\d \d\d:\d\d:\d\d UTC"', row)


def test_thirty_runs_take_as_few_queries_as_three(
    ops_client: Client, ops: Any, digest: WorkflowVersion, django_assert_max_num_queries: Any
) -> None:
    for index in range(30):
        run = start(ops, topic=f"topic {index}")
        if index % 3:
            drive(run)
    # session, user, the workflows ops sees, count, the page of runs with their
    # workflow/version/starter, one aggregate for progress, the workflow filter, whether ops may
    # operate any workflow (the bulk boxes): nothing per run.
    with django_assert_max_num_queries(8):
        response = ops_client.get(reverse("dashboard:runs"))
    assert response.status_code == 200
    assert response.content.count(b"<tr data-run=") == 30


def test_progress_counts_a_step_sent_back_by_a_loop_as_unfinished(ops_client: Client, ops: Any, settings: Any) -> None:
    settings.BATON_CONTINUE_SECONDS = 0  # step one worker task at a time
    load_workflow(
        AGENTS
        + """
workflow:
  key: drafting
  name: Drafting
  owner: ops
  steps:
    - {key: write, agent: echo}
    - {key: review, agent: editor, after: [write], input: {approve_on: 5}, loop: {back_to: write, until: "{{ steps.review.output.ok }}", max_iterations: 5}}
"""
    )
    run = transitions.start_run(workflow="drafting")
    for _ in range(2):  # write, then review sends it back to round 2
        for pk in StepRun.objects.filter(run=run, status="queued").values_list("pk", flat=True):
            execute_step(pk)
    assert StepRun.objects.filter(run=run, iteration=2).exists()
    row = row_for(ops_client.get(reverse("dashboard:runs")).content.decode(), run)
    assert "0/2" in row


def test_it_filters_by_status_and_by_workflow(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    done = drive(start(ops))
    going = start(ops)
    load_workflow(REFUSING)
    other = drive(transitions.start_run(workflow="refusing"))

    succeeded = ops_client.get(reverse("dashboard:runs"), {"status": "succeeded"}).content.decode()
    assert f'data-run="{done.pk}"' in succeeded
    assert f'data-run="{going.pk}"' not in succeeded

    refusing = ops_client.get(reverse("dashboard:runs"), {"workflow": "refusing"}).content.decode()
    assert f'data-run="{other.pk}"' in refusing
    assert f'data-run="{done.pk}"' not in refusing

    nothing = ops_client.get(reverse("dashboard:runs"), {"workflow": "refusing", "status": "running"})
    assert b"No runs match these filters." in nothing.content


def test_it_shows_fifty_runs_a_page_and_keeps_the_filters_in_the_page_links(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    runs = [start(ops) for _ in range(51)]
    first = ops_client.get(reverse("dashboard:runs"), {"status": "running"}).content.decode()
    assert first.count("<tr data-run=") == 50
    assert f'data-run="{runs[0].pk}"' not in first  # the oldest is on page 2
    older = re.search(r'rel="next" href="\?([^"]+)"', first)
    assert older and older.group(1).startswith("status=running&amp;after=")
    assert "← Newer" not in first
    second = ops_client.get("/runs/?" + older.group(1).replace("&amp;", "&")).content.decode()
    assert second.count("<tr data-run=") == 1
    assert f'data-run="{runs[0].pk}"' in second
    assert "Older →" not in second and "← Newer" in second


def test_an_htmx_refresh_gets_only_the_table_which_keeps_its_filters_and_follows_pushes(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    run = start(ops)
    response = ops_client.get(reverse("dashboard:runs") + "?status=running", HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert "<html" not in page
    assert page.strip().startswith('<section id="runs-table"')
    assert 'hx-get="/runs/?status=running"' in page
    assert 'data-live="runs"' in page and 'hx-trigger="baton:refresh"' in page
    assert f'data-run="{run.pk}"' in page
    assert "HX-Request" in response["Vary"]


def test_the_full_page_includes_the_live_table_and_the_live_scripts(ops_client: Client) -> None:
    page = ops_client.get(reverse("dashboard:runs")).content.decode()
    assert '<section id="runs-table"' in page
    assert 'data-live="runs"' in page and "every 2s" not in page
    assert "/static/vendor/idiomorph-ext.min.js" in page and "/static/js/live.js" in page
    assert 'hx-ext="morph"' in page and 'data-live-poll="5"' in page
    assert "No runs yet." in page
    assert "/static/vendor/htmx.min.js" in page


def test_a_sub_workflow_run_links_to_its_parent(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    load_workflow(
        """
workflow:
  key: wrapper
  name: Wrapper
  owner: ops
  steps:
    - {key: inner, workflow: digest, input: {topic: nested}}
"""
    )
    parent = transitions.start_run(workflow="wrapper")
    child = Run.objects.get(parent_step__run=parent)
    row = row_for(ops_client.get(reverse("dashboard:runs")).content.decode(), child)
    assert f'sub-run of <a href="/runs/{parent.pk}/">#{parent.pk}</a>' in row
    assert child.status == RunStatus.RUNNING
