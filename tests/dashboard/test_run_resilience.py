"""A run page when things go wrong gracefully: a fallback answered, a step waits for a slot or a
retry, the run undoes its work. The states are built as rows, as the engine would leave them."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestration import transitions
from orchestration.models import Attempt, CircuitState, Run, StepKind, StepRun, WorkflowVersion
from orchestration.status import ErrorClass, RunStatus, StepStatus
from tests.dashboard.test_run_page import node, page_of, step_row
from tests.support import drive

pytestmark = pytest.mark.django_db

CSS = Path(__file__).resolve().parents[2] / "static" / "css" / "baton.css"
LLM_USAGE = {"prompt_tokens": 1000, "completion_tokens": 234, "total_tokens": 1234, "latency_ms": 640.0, "cost": 0.0042, "model": "gpt-4o-mini"}


@pytest.fixture
def finished(digest: WorkflowVersion) -> Run:
    run = drive(transitions.start_run(workflow="digest", input={"topic": "tides"}))
    assert run.status == RunStatus.SUCCEEDED
    return run


@pytest.fixture
def running(digest: WorkflowVersion) -> Run:
    """Started, its first step queued and nothing executed."""
    return transitions.start_run(workflow="digest", input={"topic": "tides"})


def head(run: Run, key: str) -> StepRun:
    return StepRun.objects.get(run=run, step_key=key, map_index__isnull=True)


def took_over(run: Run, key: str, *, primary: str, primary_attempts: int) -> StepRun:
    """The step as the engine leaves it after `primary` gave up and echo answered instead."""
    step = head(run, key)
    StepRun.objects.filter(pk=step.pk).update(agent_name="echo", fallback_from=primary)
    for number in range(primary_attempts):
        Attempt.objects.create(
            step_run=step,
            number=10 + number,
            agent_name=primary,
            status="failed",
            error_class=ErrorClass.TRANSIENT,
            started_at=timezone.now(),
        )
    return step


def squash(html: str) -> str:
    return " ".join(html.split())


# --- fallback ----------------------------------------------------------------------------------


def test_a_step_answered_by_a_fallback_names_both_agents(ops_client: Client, finished: Run) -> None:
    took_over(finished, "research", primary="writer-llm", primary_attempts=3)
    page = page_of(ops_client, finished)
    row = squash(step_row(page, "research"))
    assert '<span class="agent-cell__name">echo</span>' in row
    assert '<div class="small fallback-note">via fallback <strong>echo</strong> (primary <strong>writer-llm</strong> failed)</div>' in row
    assert "↪ echo" in node(page, "research")
    assert "fallback-note" not in step_row(page, "publish")


def test_a_fallback_taken_because_the_circuit_was_open_says_the_primary_was_not_called(
    ops_client: Client, finished: Run
) -> None:
    took_over(finished, "research", primary="writer-llm", primary_attempts=0)
    row = squash(step_row(page_of(ops_client, finished), "research"))
    assert "via fallback <strong>echo</strong> (primary <strong>writer-llm</strong> not called: circuit open)" in row


def test_fallbacks_cost_one_query_for_the_whole_run(
    ops_client: Client, finished: Run, django_assert_max_num_queries: Any
) -> None:
    for key in ("research", "summarise", "publish"):
        took_over(finished, key, primary="writer-llm", primary_attempts=1)
    # The run page's eighteen (its rows' outputs and attempts, its reruns' links, the Gantt's
    # status events): which primaries were called comes with the agent versions' query.
    with django_assert_max_num_queries(18):
        response = ops_client.get(reverse("dashboard:run", args=[finished.pk]))
    assert response.status_code == 200
    assert response.content.decode().count("fallback-note") == 3


# --- tokens and cost ---------------------------------------------------------------------------


def test_the_header_sums_the_runs_tokens_and_cost(ops_client: Client, finished: Run) -> None:
    step = head(finished, "research")
    Attempt.objects.create(step_run=step, number=2, agent_name="writer-llm", usage=LLM_USAGE, started_at=timezone.now())
    Attempt.objects.create(step_run=step, number=3, agent_name="writer-llm", usage=LLM_USAGE, started_at=timezone.now())
    page = squash(page_of(ops_client, finished))
    assert '<dt>Tokens</dt><dd title="2,000 prompt + 468 completion">2,468</dd>' in page
    assert "<dt>Cost</dt><dd>$0.0084</dd>" in page


def test_a_run_without_usage_shows_no_tokens_or_cost(ops_client: Client, finished: Run) -> None:
    page = page_of(ops_client, finished)
    assert "<dt>Tokens</dt>" not in page and "<dt>Cost</dt>" not in page


# --- throttled, retrying, failed ---------------------------------------------------------------


def test_a_throttled_step_has_its_own_colour_in_the_table_and_the_graph(ops_client: Client, running: Run) -> None:
    StepRun.objects.filter(pk=head(running, "research").pk).update(status=StepStatus.THROTTLED)
    page = page_of(ops_client, running)
    assert '<span class="badge badge--throttled" data-status="throttled">throttled</span>' in step_row(page, "research")
    assert 'class="node node--throttled"' in node(page, "research")


def test_a_retrying_step_shows_why_and_when_it_goes_again(ops_client: Client, running: Run) -> None:
    now = timezone.now()
    StepRun.objects.filter(pk=head(running, "research").pk).update(
        status=StepStatus.RETRYING,
        error_class=ErrorClass.TIMEOUT,
        error="ran past its timeout of 30s",
        next_attempt_at=now + timedelta(seconds=42),
    )
    with time_machine.travel(now, tick=False):
        row = squash(step_row(page_of(ops_client, running), "research"))
    assert '<span class="badge badge--retrying" data-status="retrying">retrying</span>' in row
    assert '<span class="tag tag--error tag--error-timeout" data-error-class="timeout">timeout</span>' in row
    assert "next attempt in 42 s</time>" in row
    with time_machine.travel(now + timedelta(seconds=50), tick=False):
        assert "next attempt due now" in step_row(page_of(ops_client, running), "research")


def test_a_step_held_back_by_an_open_circuit_says_so(ops_client: Client, running: Run) -> None:
    StepRun.objects.filter(pk=head(running, "research").pk).update(
        status=StepStatus.RETRYING,
        error_class=ErrorClass.CIRCUIT_OPEN,
        error="circuit of agent echo is open",
        next_attempt_at=timezone.now() + timedelta(seconds=20),
    )
    row = step_row(page_of(ops_client, running), "research")
    assert 'data-error-class="circuit_open">circuit open</span>' in row


def test_a_failed_step_shows_its_error_class_and_a_succeeded_one_none(ops_client: Client, finished: Run) -> None:
    StepRun.objects.filter(pk=head(finished, "publish").pk).update(
        status=StepStatus.FAILED, error_class=ErrorClass.PERMANENT, error="<b>refused</b>"
    )
    page = page_of(ops_client, finished)
    publish = step_row(page, "publish")
    assert 'data-error-class="permanent">permanent</span>' in publish
    assert "&lt;b&gt;refused&lt;/b&gt;" in publish and "<b>refused" not in publish
    assert "data-error-class" not in step_row(page, "research")


# --- compensation ------------------------------------------------------------------------------


def compensating(run: Run) -> list[StepRun]:
    """The run failed at publish and is undoing research (done) then summarise (running)."""
    Run.objects.filter(pk=run.pk).update(
        status=RunStatus.COMPENSATING, ends_as=RunStatus.FAILED, error="Step 'publish' failed: the CMS said no", finished_at=None
    )
    now = timezone.now()
    return [
        StepRun.objects.create(
            run=run,
            step_key="summarise.undo",
            kind=StepKind.COMPENSATION,
            agent_name="echo",
            status=StepStatus.SUCCEEDED,
            attempts=1,
            output={"deleted": "<b>4 summaries</b>"},
            started_at=now - timedelta(seconds=3),
            finished_at=now - timedelta(seconds=1),
        ),
        StepRun.objects.create(
            run=run, step_key="research.undo", kind=StepKind.COMPENSATION, agent_name="echo", status=StepStatus.RUNNING, attempts=1
        ),
    ]


def compensation_section(page: str) -> str:
    match = re.search(r'<section class="card card--flush compensation" id="compensation">(.*?)</section>', page, re.DOTALL)
    assert match, "no compensation section"
    return match.group(1)


def test_a_compensating_run_lists_its_undo_steps_apart_newest_first(ops_client: Client, finished: Run) -> None:
    undo_summarise, undo_research = compensating(finished)
    page = page_of(ops_client, finished)
    section = compensation_section(page)

    assert "The run is undoing its completed steps, newest first." in section
    assert section.index("summarise.undo") < section.index("research.undo")
    first = squash(section[section.index(f'id="compensation-{undo_summarise.pk}"') :])
    assert 'undoes <a href="#step-summarise">summarise</a>' in first
    assert "&lt;b&gt;4 summaries&lt;/b&gt;" in first and "<b>4 summaries" not in page
    assert '<span class="badge badge--running" data-status="running">running</span>' in section
    # They are not steps of the workflow: not in the steps table, not in the graph.
    assert 'id="step-summarise.undo"' not in page
    assert page.count('class="node node--') == 3


def test_a_compensating_run_has_its_own_colour_follows_pushes_and_cannot_be_cancelled(
    ops_client: Client, finished: Run
) -> None:
    compensating(finished)
    page = squash(page_of(ops_client, finished))
    assert '<span class="badge badge--compensating badge--large" data-status="compensating">compensating</span>' in page
    assert re.search(r'<div id="run-live"[^>]*hx-trigger="baton:refresh"', page)
    assert "Cancel run" not in page
    assert "the run ends as <strong>failed</strong> when they finish" in page
    assert "<strong>Undoing because:</strong> Step &#x27;publish&#x27; failed: the CMS said no" in page


def test_a_finished_compensation_reports_each_outcome(ops_client: Client, finished: Run) -> None:
    undo_summarise, undo_research = compensating(finished)
    StepRun.objects.filter(pk=undo_research.pk).update(
        status=StepStatus.FAILED, error_class=ErrorClass.PERMANENT, error="the research notes are already gone"
    )
    Run.objects.filter(pk=finished.pk).update(status=RunStatus.FAILED, finished_at=timezone.now())
    section = compensation_section(page_of(ops_client, finished))
    assert "The run undid its completed steps, newest first." in section
    assert 'data-error-class="permanent">permanent</span>' in section
    assert "the research notes are already gone" in section
    assert '<span class="badge badge--succeeded" data-status="succeeded">succeeded</span>' in section


def test_a_run_without_compensation_has_no_such_section(ops_client: Client, finished: Run) -> None:
    assert 'id="compensation"' not in page_of(ops_client, finished)


# --- colours -----------------------------------------------------------------------------------


def test_every_run_step_and_circuit_state_has_its_own_badge_colour() -> None:
    css = CSS.read_text()
    for status in {*RunStatus.values, *StepStatus.values}:
        assert f".badge--{status}" in css, status
    for state in CircuitState.values:
        assert f".badge--circuit-{state}" in css, state
    assert ".node--throttled" in css
    assert ".progress--compensating" in css
    assert ".timeline__item--compensating" in css
