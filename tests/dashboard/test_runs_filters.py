"""The runs list's filters (workflow, status with "waiting", starter, trigger, start window, id or
input text), its keyset pages, and what it says about values that mean nothing."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestration import transitions
from orchestration.models import Run, WorkflowVersion
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

REVIEWED = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: reviewed
  name: Reviewed
  owner: ops
  inputs: {topic: {type: string, required: true}}
  steps:
    - {key: draft, agent: echo, input: {text: "{{ input.topic }}"}}
    - key: review
      after: [draft]
      approval: {title: "Publish {{ input.topic }}?", approvers: {users: [approver]}}
    - {key: publish, agent: echo, after: [review]}
"""


def start(ops: Any, topic: str = "tides", trigger: str = "dashboard") -> Run:
    return transitions.start_run(workflow="digest", input={"topic": topic}, started_by=ops, trigger=trigger)


def listed(client: Client, **query: Any) -> set[int]:
    page = client.get(reverse("dashboard:runs"), query)
    assert page.status_code == 200
    return {int(pk) for pk in re.findall(r'<tr data-run="(\d+)"', page.content.decode())}


def test_waiting_lists_only_running_runs_whose_every_live_step_waits(
    ops_client: Client, ops: Any, approver: Any, digest: WorkflowVersion
) -> None:
    load_workflow(REVIEWED)
    waiting = drive(transitions.start_run(workflow="reviewed", input={"topic": "tides"}))
    moving = start(ops)  # its first step is queued: a worker will take it
    finished = drive(start(ops))
    assert waiting.status == "running"

    assert listed(ops_client, status="waiting") == {waiting.pk}
    assert listed(ops_client, status="running") == {waiting.pk, moving.pk}
    assert finished.pk in listed(ops_client, status="succeeded")


def test_a_waiting_run_says_what_it_waits_for(ops_client: Client, ops: Any, approver: Any) -> None:
    load_workflow(REVIEWED)
    run = drive(transitions.start_run(workflow="reviewed", input={"topic": "tides"}))
    page = ops_client.get(reverse("dashboard:runs")).content.decode()
    row = re.search(rf'<tr data-run="{run.pk}">(.*?)</tr>', page, re.DOTALL)
    assert row
    assert 'data-status="waiting"' in row.group(1)
    waiting = re.search(r"data-waiting>(.*?)</div>", row.group(1), re.DOTALL)
    assert waiting, row.group(1)
    # Who it waits for, linked to the inbox item (dashboard/waiting_words.py).
    assert waiting.group(1) == f'<a href="/approvals/{run.inbox_items.get().pk}/">waiting: approval by approver</a>'


def test_it_filters_by_starter_and_by_trigger(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    by_ops = start(ops)
    by_api = start(ops, trigger="api")
    nobody = transitions.start_run(workflow="digest", input={"topic": "x"}, trigger="schedule")

    assert listed(ops_client, starter="ops") == {by_ops.pk, by_api.pk}
    assert listed(ops_client, trigger="api") == {by_api.pk}
    assert listed(ops_client, trigger="schedule") == {nobody.pk}
    assert listed(ops_client, starter="someone-else") == set()


def test_it_filters_by_a_start_window_in_the_names_the_rollouts_pages_link_with(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    old, new = start(ops), start(ops)
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    yesterday = (timezone.localtime() - timedelta(days=1)).date().isoformat()

    assert listed(ops_client, started_after=yesterday) == {new.pk}
    assert listed(ops_client, started_before=yesterday) == {old.pk}
    page = ops_client.get(reverse("dashboard:runs"), {"started_after": yesterday}).content.decode()
    assert f'name="started_after" value="{yesterday}T00:00:00"' in page


def test_it_finds_a_run_by_its_id_or_by_text_in_its_input(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    tides, moons = start(ops, topic="Spring Tides"), start(ops, topic="moons")

    assert listed(ops_client, q=f"#{tides.pk}") == {tides.pk}
    assert listed(ops_client, q=str(moons.pk)) == {moons.pk}
    assert listed(ops_client, q="spring tid") == {tides.pk}
    assert listed(ops_client, q="nothing like it") == set()


def test_filters_combine(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    wanted = start(ops, topic="tides", trigger="api")
    start(ops, topic="tides")
    drive(start(ops, topic="tides", trigger="api"))
    assert listed(ops_client, workflow="digest", status="running", trigger="api", q="tides", starter="ops") == {wanted.pk}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"status": "sleeping"}, "status: &#x27;sleeping&#x27; is not a status"),
        ({"workflow": "nope"}, "there is no workflow &#x27;nope&#x27; that you can see"),
        ({"started_after": "yesterday"}, "started_after: &#x27;yesterday&#x27; is not a date or time"),
        ({"q": "x" * 101}, "search: at most 100 characters"),
        ({"trigger": "x" * 151}, "trigger: at most 150 characters"),
        ({"after": "not-a-cursor"}, "is not a page of this list; showing the newest runs"),
        ({"before": "2026-01-01T00:00:00~x"}, "is not a page of this list"),
        ({"q": "a\x00b%_'\";--", "starter": "\x00"}, "No runs match these filters."),
    ],
)
def test_a_value_that_means_nothing_is_explained_and_filters_nothing(
    ops_client: Client, ops: Any, digest: WorkflowVersion, query: dict[str, str], message: str
) -> None:
    run = start(ops)
    response = ops_client.get(reverse("dashboard:runs"), query)
    assert response.status_code == 200
    page = response.content.decode()
    assert message in page
    if "No runs match" not in message:
        assert f'data-run="{run.pk}"' in page


def test_a_workflow_one_cannot_see_is_not_a_filter_that_reveals_it(
    client: Client, outsider: Any, ops: Any, digest: WorkflowVersion
) -> None:
    start(ops)
    client.force_login(outsider)
    assert listed(client, workflow="digest") == set()
    assert listed(client) == set()


def pages(client: Client, **query: Any) -> list[list[int]]:
    """Every page, following the Older links from the first."""
    found: list[list[int]] = []
    url = reverse("dashboard:runs") + "?" + "&".join(f"{k}={v}" for k, v in query.items())
    while url:
        page = client.get(url).content.decode()
        found.append([int(pk) for pk in re.findall(r'<tr data-run="(\d+)"', page)])
        older = re.search(r'rel="next" href="\?([^"]+)"', page)
        url = "/runs/?" + older.group(1).replace("&amp;", "&") if older else ""
    return found


def test_runs_started_between_page_loads_neither_repeat_nor_vanish(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    first_runs = [start(ops) for _ in range(120)]
    # Same-instant starts: the id breaks the tie.
    Run.objects.filter(pk__in=[r.pk for r in first_runs[:60]]).update(created_at=timezone.now() - timedelta(hours=1))
    first = ops_client.get(reverse("dashboard:runs")).content.decode()
    older = re.search(r'rel="next" href="\?([^"]+)"', first)
    assert older
    seen = [int(pk) for pk in re.findall(r'<tr data-run="(\d+)"', first)]
    for _ in range(7):
        start(ops)  # newer than anything shown: must not push a row onto the next page
    url: str | None = "/runs/?" + older.group(1).replace("&amp;", "&")
    while url:
        page = ops_client.get(url).content.decode()
        seen += [int(pk) for pk in re.findall(r'<tr data-run="(\d+)"', page)]
        match = re.search(r'rel="next" href="\?([^"]+)"', page)
        url = "/runs/?" + match.group(1).replace("&amp;", "&") if match else None
    assert sorted(seen) == sorted(r.pk for r in first_runs)
    assert len(seen) == len(set(seen))


def test_newer_goes_back_to_exactly_the_page_before(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    for _ in range(110):
        start(ops)
    first = ops_client.get(reverse("dashboard:runs"), {"workflow": "digest"}).content.decode()
    second_url = "/runs/?" + re.search(r'rel="next" href="\?([^"]+)"', first).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    second = ops_client.get(second_url).content.decode()
    newer = re.search(r'rel="prev" href="\?([^"]+)"', second)
    assert newer and "workflow=digest" in newer.group(1)
    back = ops_client.get("/runs/?" + newer.group(1).replace("&amp;", "&")).content.decode()
    ids = re.compile(r'<tr data-run="(\d+)"')
    assert ids.findall(back) == ids.findall(first)
    assert [len(p) for p in pages(ops_client, workflow="digest")] == [50, 50, 10]


def test_a_filtered_later_page_takes_as_few_queries_as_the_first(
    ops_client: Client, ops: Any, approver: Any, digest: WorkflowVersion, django_assert_num_queries: Any
) -> None:
    load_workflow(REVIEWED)
    for index in range(60):
        drive(transitions.start_run(workflow="reviewed", input={"topic": f"t{index}"}))
        start(ops)
    first = ops_client.get(reverse("dashboard:runs"), {"status": "running"}).content.decode()
    later = "/runs/?" + re.search(r'rel="next" href="\?([^"]+)"', first).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    # session, user, the workflows one sees (for the filter, then the ids access.visible_runs
    # reads), the page with its waiting mark, progress, for_each progress, what the waiting
    # runs wait for (their waiting steps, then who and by when), whether ops may tick runs for
    # bulk actions: nothing per row, and no COUNT.
    with django_assert_num_queries(10):
        response = ops_client.get(later)
    assert response.content.count(b"<tr data-run=") == 50
    with django_assert_num_queries(10):
        ops_client.get(reverse("dashboard:runs"), {"status": "waiting", "q": "t"})


def test_a_for_each_shows_its_items_done_out_of_all(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    from orchestration.models import StepRun
    from orchestration.tasks import execute_step

    run = start(ops)
    execute_step(StepRun.objects.get(run=run, step_key="research").pk)
    head = StepRun.objects.get(run=run, step_key="summarise", map_index__isnull=True)
    execute_step(StepRun.objects.filter(parent=head).order_by("map_index").first().pk)  # type: ignore[union-attr]
    page = ops_client.get(reverse("dashboard:runs")).content.decode()
    assert "summarise: 1 / 2 items" in page


def test_a_filter_changed_through_htmx_gets_its_explanation_in_the_table(
    ops_client: Client, digest: WorkflowVersion
) -> None:
    response = ops_client.get(reverse("dashboard:runs"), {"status": "sleeping"}, HTTP_HX_REQUEST="true")
    partial = response.content.decode()
    assert partial.strip().startswith('<section id="runs-table"')
    assert "status: &#x27;sleeping&#x27; is not a status" in partial
