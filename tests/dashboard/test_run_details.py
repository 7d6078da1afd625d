"""The run page shows everything about each step: its input, output and every attempt; a map's
progress and its items, filtered and paginated; the whole event history, a page at a time."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from pytest_django import DjangoAssertNumQueries

from dashboard.read_models import run_page, step_items
from orchestration.models import Agent, AgentVersion, Attempt, RunEvent, StepRun
from orchestration.status import AttemptStatus, ErrorClass, EventKind
from tests.dashboard.big_runs import big_run, big_workflow

pytestmark = pytest.mark.django_db


def page_of(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def items_url(run: Any, key: str = "fan", **query: Any) -> str:
    url = reverse("dashboard:step_items", args=[run.pk, key])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def detail_row(page: str, step_key: str) -> str:
    """A step's detail row on the run page: from its opening to the next step's row (or the table's end)."""
    start = page.index(f'<tr class="step-detail" data-step="{step_key}">')
    ends = [i for i in (page.find('<tr id="step-', start), page.find("</section>", start)) if i != -1]
    return page[start : min(ends)]


def detail_of(client: Client, page: str, step_key: str) -> str:
    """What opening a step on the run page shows: the part its fold names, fetched as the page's
    script fetches it."""
    found = re.search(r'data-step-detail="([^"]+)"', detail_row(page, step_key))
    assert found, f"step {step_key} names no detail to open"
    response = client.get(found.group(1), headers={"HX-Request": "true"})
    assert response.status_code == 200
    return response.content.decode()


# --- one step, all of it ---------------------------------------------------------------------


def test_a_step_shows_its_input_output_and_every_attempt(ops_client: Client, ops: Any) -> None:
    version = big_workflow(3)
    run = big_run(version, steps=3, attempts=3)
    page = page_of(ops_client, reverse("dashboard:run", args=[run.pk]))
    assert "Input, output and 3 attempts of <strong>s2</strong>" in detail_row(page, "s2")
    detail = detail_of(ops_client, page, "s2")
    assert "<dt>text</dt><dd><pre class=\"json\">step 2</pre>" in detail
    assert '<details class="fold"' in detail  # the long "note" input value is folded
    assert detail.count('<tr class="attempt attempt--') == 3
    assert detail.count("attempt--failed") == 2 and detail.count("attempt--succeeded") == 1
    assert "worker-1@host" in detail and "worker-3@host" in detail
    assert 'data-error-class="transient"' in detail
    assert "TimeoutError: upstream took too long" in detail
    assert detail.count('<details class="fold traceback"') == 2  # tracebacks folded, one per failed attempt
    assert ">360<" in detail and ">$0.006<" in detail  # attempt 3: 360 tokens, $0.006


def test_an_attempt_names_its_agent_version_and_the_fallback_it_was(ops_client: Client, ops: Any) -> None:
    version = big_workflow(1)
    run = big_run(version, steps=1, attempts=2)
    head = StepRun.objects.get(run=run, step_key="s1")
    StepRun.objects.filter(pk=head.pk).update(fallback_from="primary")
    canary = AgentVersion.objects.create(agent=Agent.objects.get(name="echo"), label="canary", weight=1)
    Attempt.objects.filter(step_run=head, number=1).update(agent_name="primary")
    Attempt.objects.filter(step_run=head, number=2).update(agent_version=canary)
    detail = detail_of(ops_client, page_of(ops_client, reverse("dashboard:run", args=[run.pk])), "s1")
    assert "primary" in detail
    assert 'echo <span class="agent-cell__version">· version canary</span> <span class="small attempt-fallback">fallback for primary</span>' in detail


def test_outputs_errors_and_tracebacks_are_shown_as_text(ops_client: Client, ops: Any) -> None:
    version = big_workflow(1)
    run = big_run(version, steps=1, attempts=1)
    attack = "<script>alert('x')</script>"
    head = StepRun.objects.get(run=run, step_key="s1")
    StepRun.objects.filter(pk=head.pk).update(input={"text": attack}, output={"html": attack})
    Attempt.objects.filter(step_run=head).update(status=AttemptStatus.FAILED, error=attack, traceback=attack, error_class=ErrorClass.PERMANENT)
    page = page_of(ops_client, reverse("dashboard:run", args=[run.pk]))
    detail = detail_of(ops_client, page, "s1")
    assert "<script>alert" not in page and "<script>alert" not in detail
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert page.count(escaped) >= 2  # output, error
    assert detail.count(escaped) >= 4  # input, output, error, traceback


def test_step_keys_agent_names_errors_and_messages_in_the_rows_drawn_in_python_are_escaped(ops_client: Client) -> None:
    # The steps table, the Gantt rows, the timeline's table and the event timeline are built
    # in Python (dashboard/templatetags/run_page.py), not by the template's autoescaping.
    version = big_workflow(1)
    run = big_run(version, steps=1, attempts=2)
    attack = "\"><script>alert('x')</script>"
    head = StepRun.objects.get(run=run, step_key="s1")
    StepRun.objects.filter(pk=head.pk).update(
        step_key=attack, agent_name=attack, fallback_from=attack, status="failed", error=attack, error_class=ErrorClass.PERMANENT
    )
    Attempt.objects.filter(step_run=head).update(agent_name=attack, worker=attack, error=attack)
    RunEvent.objects.create(run=run, step_run=head, kind=EventKind.STEP_FAILED, to_status="failed", message=attack)
    page = page_of(ops_client, reverse("dashboard:run", args=[run.pk]))

    assert "<script>alert" not in page
    escaped = "&quot;&gt;&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert f'<tr id="step-{escaped}" class="">' in page  # the step's row, its key in an attribute
    assert f'<span class="strong">{escaped}</span>' in page
    assert f'<span class="agent-cell__name">{escaped}</span>' in page  # the agent
    assert f"(primary <strong>{escaped}</strong> failed)" in page  # whose place the fallback took
    assert f'<p class="step-error">{escaped}</p>' in page  # the error
    assert f'<div class="gantt__row gantt__row--failed" data-step="{escaped}"' in page  # the Gantt's row
    assert f"on worker {escaped}" in page  # an attempt's words on the timeline
    assert f'<tr data-step="{escaped}" data-kind="attempt">' in page  # the timeline as a table
    assert f'<p class="timeline__message">{escaped}</p>' in page  # the event
    assert f'<code class="timeline__step">{escaped}</code>' in page


def test_a_map_step_says_how_many_items_are_done_and_links_to_them(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(2), steps=2, items=300)
    page = page_of(ops_client, reverse("dashboard:run", args=[run.pk]))
    row = re.search(r'<tr id="step-fan"[^>]*>(.*?)</tr>', page, re.DOTALL)
    assert row and "240 / 300 items" in row.group(1)
    assert f'href="{items_url(run)}"' in row.group(1)
    assert "Browse the 300 items and their attempts" in detail_of(ops_client, page, "fan")


def test_the_run_page_takes_the_same_queries_for_two_steps_as_for_fifty_steps_of_three_attempts_and_300_items(
    ops_client: Client, ops: Any, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    small = big_run(big_workflow(2), steps=2, attempts=1, events=5)
    large = big_run(big_workflow(50), steps=50, attempts=3, items=300, events=450)
    # session, user, run, may ops see it, may ops cancel it, head rows, simulated agents, item
    # attempts, agent versions, the shown rows' outputs, head attempts, child runs, event count,
    # event page, usage (2), the run's reruns (the actions' links), the steps' status events
    # (the Gantt timeline).
    for run in (small, large):
        with django_assert_num_queries(18):
            response = ops_client.get(reverse("dashboard:run", args=[run.pk]))
        assert response.status_code == 200
    page = response.content.decode()
    assert page.count("data-step-detail=") == 51  # every step opens (the fan too)
    assert '<tr class="attempt attempt--' not in page  # attempts are read when a step is opened
    assert "Showing 351–450 of 450 events" in page


def test_an_opened_step_takes_the_same_queries_for_one_attempt_as_for_fifty(
    ops_client: Client, ops: Any, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    few = big_run(big_workflow(1), steps=1, attempts=1)
    many = big_run(big_workflow(1), steps=1, attempts=50)
    for run in (few, many):
        head = StepRun.objects.get(run=run, step_key="s1")
        # session, user, run, may ops see it, the step, its attempts (with their versions).
        with django_assert_num_queries(6):
            response = ops_client.get(reverse("dashboard:step_detail", args=[run.pk, head.pk]))
        assert response.status_code == 200
    assert response.content.decode().count('<tr class="attempt attempt--') == 50


def test_an_opened_step_is_a_page_of_its_own_without_javascript(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(2), steps=2, attempts=2)
    head = StepRun.objects.get(run=run, step_key="s2")
    url = reverse("dashboard:step_detail", args=[run.pk, head.pk])
    page = page_of(ops_client, url)
    assert "<title>s2 · Run #" in page and 'href="/runs/' in page
    assert page.count('<tr class="attempt attempt--') == 2
    assert f'<a href="{url}">Open the input, output, attempts' in page_of(ops_client, reverse("dashboard:run", args=[run.pk]))


def test_a_step_of_another_run_or_an_item_is_not_found_and_an_outsider_sees_none(
    client: Client, ops: Any, outsider: Any
) -> None:
    run = big_run(big_workflow(2), steps=2, items=3)
    other = big_run(big_workflow(1), steps=1)
    head = StepRun.objects.get(run=run, step_key="s1")
    item = StepRun.objects.filter(run=run, map_index__isnull=False).first()
    assert item is not None
    client.force_login(ops)
    assert client.get(reverse("dashboard:step_detail", args=[other.pk, head.pk])).status_code == 404
    assert client.get(reverse("dashboard:step_detail", args=[run.pk, item.pk])).status_code == 404
    client.force_login(outsider)
    assert client.get(reverse("dashboard:step_detail", args=[run.pk, head.pk])).status_code == 403


def test_the_read_model_takes_the_same_queries_however_large_the_run(
    ops: Any, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    small = big_run(big_workflow(2), steps=2, attempts=1, events=5)
    large = big_run(big_workflow(50), steps=50, attempts=3, items=300, events=450)
    # As the page's, less the session, user, run and "may ops see it".
    for run in (small, large):
        with django_assert_num_queries(13):
            context = run_page(run, ops)
    assert len(context["steps"]) == 51


# --- a map's items ---------------------------------------------------------------------------


def test_the_items_list_shows_a_page_of_items_with_their_attempts(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, items=300)
    page = page_of(ops_client, items_url(run))
    assert "<strong>240 / 300 items</strong>" in page
    assert "Showing 1–50 of 300 items" in page
    assert page.count('class="item-row"') == 50
    assert 'id="item-0"' in page and 'id="item-49"' in page and 'id="item-50"' not in page
    assert "Page 1 of 6" in page
    assert re.search(r'All <span class="count">300</span>', page)


def test_the_items_list_filters_failed_running_and_waiting_items(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, items=300)
    failed = page_of(ops_client, items_url(run, status="failed"))
    assert "Showing 1–24 of 24 failed items" in failed
    assert 'id="item-9"' in failed and 'id="item-8"' not in failed
    assert "ValueError: item refused" in failed and '<details class="fold traceback"' in failed
    assert 'aria-current="page">Failed <span class="count">24</span>' in failed
    assert "Showing 1–30 of 30 running items" in page_of(ops_client, items_url(run, status="running"))
    waiting = page_of(ops_client, items_url(run, status="waiting"))
    assert "Showing 1–30 of 30 waiting items" in waiting and "No attempt yet." in waiting


def test_the_items_list_pages_keep_the_filter(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, items=300)
    second = page_of(ops_client, items_url(run, status="all", page=2))
    assert "Showing 51–100 of 300 items" in second
    assert 'href="?status=all&amp;page=3"' in second and 'href="?status=all&amp;page=1"' in second


@pytest.mark.parametrize("query", ["status=bogus", "page=nine", "page=99999", "page=-1", "status=" + "x" * 5000, "round=abc"])
def test_an_odd_items_query_shows_a_page_not_an_error(ops_client: Client, ops: Any, query: str) -> None:
    run = big_run(big_workflow(1), steps=1, items=60)
    response = ops_client.get(items_url(run) + "?" + query)
    assert response.status_code == 200


def test_a_step_without_items_has_no_items_list(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, items=10)
    assert ops_client.get(items_url(run, key="s1")).status_code == 404
    assert ops_client.get(items_url(run, key="nope")).status_code == 404
    assert ops_client.get(items_url(run, key="x" * 500)).status_code == 404


def test_whoever_sees_the_run_sees_its_items_and_no_one_else(client: Client, ops: Any, viewer: Any, outsider: Any) -> None:
    run = big_run(big_workflow(1), steps=1, items=10)
    run.workflow.viewer_groups.add(*viewer.groups.all()) if hasattr(run.workflow, "viewer_groups") else None
    client.force_login(outsider)
    assert client.get(items_url(run)).status_code == 403
    client.force_login(ops)
    assert client.get(items_url(run)).status_code == 200
    client.logout()
    assert client.get(items_url(run)).status_code == 302


def test_the_items_list_takes_the_same_queries_for_ten_items_as_for_300(
    ops_client: Client, ops: Any, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    for items in (20, 300):
        run = big_run(big_workflow(1), steps=1, items=items)
        # session, user, run, may ops see it, the head, filter counts, page count, page, attempts.
        with django_assert_num_queries(9):
            assert ops_client.get(items_url(run, status="failed")).status_code == 200


def test_the_items_read_model_gives_each_item_its_attempts(ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, items=20)
    head = StepRun.objects.get(run=run, step_key="fan", map_index__isnull=True)
    context = step_items(run, head, status="failed")
    assert [row.item.map_index for row in context["rows"]] == [9]
    assert [a.number for a in context["rows"][0].attempt_list] == [1]


def test_the_items_list_follows_the_run_live(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, items=10)
    page = page_of(ops_client, items_url(run, status="failed"))
    assert re.search(rf'<div id="step-items" data-live="run:{run.pk}" hx-get="[^"]*status=failed"', page)


# --- the whole history -----------------------------------------------------------------------


def test_the_history_pages_through_every_event_oldest_first(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, events=250)
    url = reverse("dashboard:run_events", args=[run.pk])
    first = page_of(ops_client, url)
    assert "Showing 1–100 of 250 events, oldest first" in first
    assert first.index("event 1<") < first.index("event 100<") and "event 101<" not in first
    second = page_of(ops_client, url + "?order=oldest&page=2")
    assert "Showing 101–200 of 250 events" in second and "event 150<" in second


def test_the_history_can_be_read_newest_first(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, events=250)
    page = page_of(ops_client, reverse("dashboard:run_events", args=[run.pk]) + "?order=newest")
    assert "Showing 1–100 of 250 events, newest first" in page
    assert page.index("event 250<") < page.index("event 151<") and "event 150<" not in page
    assert 'href="?order=newest&amp;page=2"' in page


def test_the_run_page_shows_the_latest_page_of_the_history_and_links_to_the_rest(ops_client: Client, ops: Any) -> None:
    run = big_run(big_workflow(1), steps=1, events=1234)
    page = page_of(ops_client, reverse("dashboard:run", args=[run.pk]))
    assert "Showing 1,135–1,234 of 1,234 events" in page
    assert "event 1234<" in page and "event 1135<" in page and "event 1134<" not in page
    assert f'href="{reverse("dashboard:run_events", args=[run.pk])}?order=newest">whole history</a>' in page


@pytest.mark.parametrize("query", ["page=x", "page=0", "page=10000", "order=sideways", "page=" + "9" * 4000])
def test_an_odd_history_query_shows_a_page_not_an_error(ops_client: Client, ops: Any, query: str) -> None:
    run = big_run(big_workflow(1), steps=1, events=5)
    assert ops_client.get(reverse("dashboard:run_events", args=[run.pk]) + "?" + query).status_code == 200


def test_an_outsider_cannot_read_the_history(client: Client, ops: Any, outsider: Any) -> None:
    run = big_run(big_workflow(1), steps=1, events=5)
    client.force_login(outsider)
    assert client.get(reverse("dashboard:run_events", args=[run.pk])).status_code == 403
