"""The run page's Gantt timeline (dashboard/gantt.py): what each step's time was spent on, drawn
from the real transitions' events and attempts, in a fixed number of queries."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries

from dashboard import gantt
from dashboard.read_models import attempts_by_step
from orchestration import transitions
from orchestration.models import Attempt, Run, StepRun
from orchestration.reads import head_rows
from orchestration.status import RunStatus
from tests.dashboard.big_runs import big_run, big_workflow
from tests.dashboard.conftest import AGENTS
from tests.dashboard.gantt_demo import Launch, head, launch_run
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.get_fixed_timezone(0))


def kinds(row: gantt.Row) -> list[str]:
    return [segment.kind + (f":{segment.outcome}" if segment.outcome else "") for segment in row.segments]


def row_of(chart: gantt.Gantt, key: str) -> gantt.Row:
    found = [row for row in chart.rows if row.key == key]
    assert len(found) == 1, f"{len(found)} rows for {key}"
    return found[0]


def spans(row: gantt.Row) -> list[tuple[float, float]]:
    return [(round(segment.start, 1), round(segment.end, 1)) for segment in row.segments]


def gantt_html(page: str) -> str:
    match = re.search(r'<section class="card gantt-card" id="gantt">(.*?)</section>', page, re.DOTALL)
    assert match, "no timeline on the page"
    return match.group(1)


def test_a_failed_attempt_its_backoff_and_the_retry_are_segments_of_their_own(
    ops: Any, approver: Any
) -> None:
    run = launch_run(ops, approver, start=START)
    draft = row_of(gantt.for_run(run), "draft")

    assert kinds(draft) == ["queued", "attempt:failed", "backoff", "queued", "attempt:succeeded"]
    # Seconds from the run's start: research took 2 + 4 s, draft waited 1.5 s for a worker.
    assert spans(draft) == [(6.0, 7.5), (7.5, 13.9), (13.9, 33.9), (33.9, 34.7), (34.7, 41.9)]
    failed, backoff, succeeded = draft.segments[1], draft.segments[2], draft.segments[4]
    assert (
        failed.label
        == "attempt 1 of agent writer on worker w1, 6.4 s, failed: TimeoutError: the model took longer than 6s"
    )
    assert backoff.label.startswith("retry backoff, 20 s (")
    assert succeeded.label == "attempt 2 of agent writer on worker w2, 7.2 s, succeeded"
    assert (draft.status, draft.end_at, draft.end_glyph) == ("succeeded", 41.9, "✓")
    assert "2 attempts, 1 failed" in draft.summary


def test_an_approval_wait_is_hatched_and_runs_to_now_while_the_run_waits(ops: Any, approver: Any) -> None:
    run = launch_run(ops, approver, start=START, to_the_end=False)
    assert run.status == RunStatus.RUNNING
    now = START + timedelta(minutes=5)
    chart = gantt.for_run(run, now=now)

    legal = row_of(chart, "legal_review")
    assert kinds(legal) == ["waiting"]
    waiting = legal.segments[0]
    assert (round(waiting.start, 1), waiting.end, waiting.open) == (41.9, 300.0, True)
    assert waiting.label == "waiting for a person (approval), 4 min 18 s so far"
    assert legal.end_at is None and legal.end_glyph == ""
    assert chart.now_x is not None and chart.now_x == pytest.approx(waiting.right, abs=0.2)
    # The steps after it have not started: empty rows, so the chart shows what is still ahead.
    ahead = [row for row in chart.rows if row.step is None]
    assert [row.key for row in ahead] == ["translate_fr", "translate_de", "sections"]
    assert all(not row.segments and row.status_words == "not started" for row in ahead)


def test_a_step_behind_its_agents_limit_waits_for_a_slot_until_the_first_one_finishes(
    ops: Any, approver: Any
) -> None:
    chart = gantt.for_run(launch_run(ops, approver, start=START))

    de, fr = row_of(chart, "translate_de"), row_of(chart, "translate_fr")
    assert kinds(fr) == ["queued", "attempt:succeeded"]
    assert kinds(de) == ["queued", "throttled", "queued", "attempt:succeeded"]
    throttled = de.segments[1]
    assert throttled.seconds == pytest.approx(9.0)
    assert throttled.label == (
        "waiting for a slot, 9 s: agent translator is at its limit of 1 in flight; waiting for a slot"
    )
    # It got the slot when translate_fr's attempt ended.
    assert throttled.end == pytest.approx(fr.segments[-1].end)


def test_a_map_step_is_one_row_with_its_items_counted(ops: Any, approver: Any) -> None:
    chart = gantt.for_run(launch_run(ops, approver, start=START))

    sections = row_of(chart, "sections")
    assert kinds(sections) == ["span"]
    assert sections.items == "3 items: 3 succeeded; 3 attempts"
    assert sections.segments[0].label == "running, 13 s: 3 items: 3 succeeded; 3 attempts"
    assert len(chart.rows) == 6


def test_a_map_of_three_hundred_items_is_still_one_row(ops: Any) -> None:
    run = big_run(big_workflow(2), steps=2, items=300)
    chart = gantt.for_run(run)

    assert [row.key for row in chart.rows] == ["s1", "s2", "fan"]
    assert (
        row_of(chart, "fan").items
        == "300 items: 30 pending, 30 running, 216 succeeded, 24 failed; 300 attempts"
    )


def test_a_running_attempt_runs_to_now_and_the_axis_follows(ops: Any, approver: Any) -> None:
    with time_machine.travel(START, tick=False) as clock:
        launch = Launch(clock, ops, approver)
        launch.wait(3)
        claim = transitions.claim_step(step_run_id=head(launch.run, "research").pk, worker="w7")
        assert claim is not None
    chart = gantt.for_run(launch.run, now=START + timedelta(seconds=45))

    research = row_of(chart, "research")
    assert kinds(research) == ["queued", "attempt:running"]
    running = research.segments[1]
    assert (running.start, running.end, running.open) == (3.0, 45.0, True)
    assert running.label == "attempt 1 of agent echo on worker w7, 42 s, running"
    assert [tick.label for tick in chart.ticks] == ["0 s", "10 s", "20 s", "30 s", "40 s"]


def test_the_axis_reads_in_seconds_minutes_or_hours_with_a_few_round_ticks() -> None:
    assert [tick.label for tick in gantt.axis(2.5)] == ["0 s", "500 ms", "1 s", "1.5 s", "2 s", "2.5 s"]
    assert [tick.label for tick in gantt.axis(600)] == ["0 s", "2 min", "4 min", "6 min", "8 min", "10 min"]
    assert [tick.label for tick in gantt.axis(5 * 3600)] == ["0 s", "1 h", "2 h", "3 h", "4 h", "5 h"]
    for span in (0.3, 7, 95, 4000, 9 * 86400):
        ticks = gantt.axis(span)
        assert 2 <= len(ticks) <= gantt.MAX_TICKS + 1, span
        assert ticks[-1].x <= gantt.TRACK_WIDTH


def test_more_than_fifty_steps_are_counted_rather_than_drawn(ops: Any) -> None:
    run = big_run(big_workflow(60), steps=60, attempts=1, items=10)
    chart = gantt.for_run(run)

    assert len(chart.rows) == gantt.MAX_ROWS
    assert chart.more == 11  # s51 … s60 and the map


def test_the_timeline_takes_one_query_however_many_steps_attempts_and_items(
    ops: Any, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    small = big_run(big_workflow(2), steps=2, attempts=1, events=5)
    large = big_run(big_workflow(50), steps=50, attempts=3, items=300, events=450)
    for run in (small, large):
        heads = head_rows(run)
        attempts = attempts_by_step(
            Attempt.objects.filter(step_run__run=run, step_run__map_index__isnull=True)
        )
        items = gantt.item_counts(run)
        # The steps' status events; the items' counts come with the page's own query.
        with django_assert_num_queries(1):
            chart = gantt.build(run, heads, attempts, spec_keys=["s1"], items=items)
        # ... and read here when not given: one more.
        with django_assert_num_queries(2):
            gantt.build(run, heads, attempts)
    assert sum(len(row.segments) for row in chart.rows) >= 150


def test_the_run_page_and_its_live_refresh_draw_the_same_timeline(
    ops_client: Client, ops: Any, approver: Any
) -> None:
    run = launch_run(ops, approver, start=timezone.now() - timedelta(minutes=5))
    url = reverse("dashboard:run", args=[run.pk])
    page = ops_client.get(url).content.decode()
    refresh = ops_client.get(url, headers={"HX-Request": "true"}).content.decode()

    assert page.count('id="gantt"') == 1
    drawn = gantt_html(page)
    assert drawn == gantt_html(refresh)
    assert drawn.count('class="gantt__row ') == 6
    assert '<g class="seg seg--attempt seg--failed" data-kind="attempt" data-outcome="failed">' in drawn
    assert "<title>draft: attempt 1 of agent writer on worker w1, 6.4 s, failed: TimeoutError" in drawn
    assert 'fill="url(#gantt-hatch)"' in drawn and 'fill="url(#gantt-dots)"' in drawn
    # The numbers as text too: a table with a line per segment and per end.
    assert drawn.count('<tr data-step="draft" data-kind=') == 6
    assert "The timeline as a table" in drawn


def test_names_and_errors_on_the_timeline_are_escaped(ops_client: Client, ops: Any) -> None:
    load_workflow(
        'agents: [{name: "x-agent", kind: python, config: {callable: "tests.agents.basic:echo"}, retry: {attempts: 1}}]\n'
        "workflow: {key: xss, name: XSS, owner: ops, steps: [{key: a, agent: x-agent}]}"
    )
    run = transitions.start_run(workflow="xss", started_by=ops)
    step = StepRun.objects.get(run=run, step_key="a")
    claim = transitions.claim_step(step_run_id=step.pk, worker='w"><script>alert(1)</script>')
    assert claim is not None
    transitions.record_failure(claim=claim, error_class="permanent", message="<img src=x onerror=alert(2)>")

    drawn = gantt_html(ops_client.get(reverse("dashboard:run", args=[run.pk])).content.decode())
    assert "<script>" not in drawn and "<img" not in drawn
    assert "on worker w&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in drawn
    assert "failed: &lt;img src=x onerror=alert(2)&gt;" in drawn
    assert Run.objects.get(pk=run.pk).status == RunStatus.FAILED
    assert 'class="gantt__end gantt__end--failed"' in drawn


def test_each_round_of_a_loop_is_a_row_of_its_own(ops: Any) -> None:
    load_workflow(
        AGENTS
        + """
workflow:
  key: drafting
  name: Drafting
  owner: ops
  steps:
    - {key: write, agent: echo}
    - {key: review, agent: editor, after: [write], input: {approve_on: 2}, loop: {back_to: write, until: "{{ steps.review.output.ok }}", max_iterations: 3}}
"""
    )
    run = drive(transitions.start_run(workflow="drafting"))
    chart = gantt.for_run(run)

    assert [row.label for row in chart.rows] == ["write", "write · round 2", "review", "review · round 2"]
    assert all(row.end_glyph == "✓" for row in chart.rows)


def test_a_cancelled_run_stops_its_open_segments_at_its_end_and_marks_the_steps_cancelled(
    ops: Any, approver: Any
) -> None:
    with time_machine.travel(START, tick=False) as clock:
        launch = Launch(clock, ops, approver)
        launch.wait(2)
        claim = transitions.claim_step(step_run_id=head(launch.run, "research").pk, worker="w1")
        assert claim is not None
        launch.wait(30)
        transitions.cancel_run(run_id=launch.run.pk, actor=ops, reason="wrong topic")
    launch.run.refresh_from_db()
    chart = gantt.for_run(launch.run, now=START + timedelta(hours=2))

    research = row_of(chart, "research")
    assert research.end_glyph == "⊘" and research.end_at == 32.0
    assert all(not segment.open and segment.end <= 32.0 for segment in research.segments)
    assert chart.now_x is None
    assert chart.span == 32.0


def test_on_the_run_page_an_open_wait_says_who_it_waits_for_in_the_pages_words(
    ops_client: Client, ops: Any, approver: Any
) -> None:
    run = launch_run(ops, approver, start=timezone.now() - timedelta(minutes=3), to_the_end=False)
    drawn = gantt_html(ops_client.get(reverse("dashboard:run", args=[run.pk])).content.decode())

    waiting = re.search(r'<g class="seg seg--waiting seg--open"[^>]*>\s*<title>([^<]*)</title>', drawn)
    assert waiting, "no open wait on the timeline"
    assert waiting.group(1).startswith("legal_review: waiting: approval by approver, due in ")
    assert waiting.group(1).endswith(" so far")
    assert 'class="gantt__now"' in drawn


def test_a_failed_step_retried_by_its_owner_shows_both_rounds_of_attempts_and_ends_once(ops: Any) -> None:
    load_workflow(
        'agents: [{name: picky, kind: python, config: {callable: "tests.agents.basic:fails_first"}, retry: {attempts: 1}}]\n'
        "workflow: {key: picky, name: Picky, owner: ops, steps: [{key: charge, agent: picky, input: {order: A-1}}]}"
    )
    run = drive(transitions.start_run(workflow="picky", started_by=ops))
    assert run.status == RunStatus.FAILED
    assert row_of(gantt.for_run(run), "charge").end_glyph == "✕"

    transitions.retry_run(run_id=run.pk, actor=ops, reason="the processor is back")
    run.refresh_from_db()
    charge = row_of(gantt.for_run(run), "charge")
    assert kinds(charge) == ["queued", "attempt:failed", "queued"]
    assert (charge.end_at, charge.end_glyph) == (None, "")

    run = drive(run)
    charge = row_of(gantt.for_run(run), "charge")
    assert kinds(charge) == ["queued", "attempt:failed", "queued", "attempt:succeeded"]
    assert charge.end_glyph == "✓"
