"""The Agents page: circuits, load against max_concurrency, fallbacks, recent circuit changes and
what the language models cost, for every agent."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from orchestration import transitions
from orchestration.models import Agent, AgentEvent, AgentHealth, Attempt, Run, StepRun, WorkflowVersion
from orchestration.status import StepStatus

pytestmark = pytest.mark.django_db

AGENTS = reverse("dashboard:agents")
LLM_CONFIG = {"model": "gpt-4o-mini", "api_key_env": "OPENAI_API_KEY", "prices": {"prompt": 0.15, "completion": 0.6}}


def row_of(page: str, name: str) -> str:
    match = re.search(rf'<tr id="agent-{name}"[^>]*>(.*?)</tr>', page, re.DOTALL)
    assert match, f"no row for agent {name}"
    return match.group(0)


def cell(row: str, label: str) -> str:
    match = re.search(rf'<td data-label="{label}"[^>]*>(.*?)</td>', row, re.DOTALL)
    assert match, f"no {label} cell"
    return " ".join(match.group(1).split())


def llm_box(row: str) -> str:
    match = re.search(r'<div class="agent-llm">(.*?)</div>', row, re.DOTALL)
    assert match, "no language model box"
    return " ".join(match.group(1).split())


def page_of(client: Client) -> str:
    return client.get(AGENTS).content.decode()


@pytest.fixture
def run(digest: WorkflowVersion) -> Run:
    return transitions.start_run(workflow="digest", input={"topic": "tides"})


def steps_of(run: Run, agent: str, status: str, count: int, *, claimed: bool = True) -> None:
    for index in range(count):
        StepRun.objects.create(
            run=run,
            step_key=f"{agent}-{status}-{'claimed' if claimed else 'unclaimed'}-{index}",
            agent_name=agent,
            status=status,
            claim_token="c0ffee" if claimed and status == StepStatus.RUNNING else "",
        )


def test_the_nav_links_to_the_agents_page_and_marks_it_current(ops_client: Client, digest: WorkflowVersion) -> None:
    page = page_of(ops_client)
    assert f'<a href="{AGENTS}" aria-current="page">Agents</a>' in page
    assert "<h1>Agents</h1>" in page


def test_each_agent_shows_its_kind_fallback_timeout_and_retry(ops_client: Client) -> None:
    Agent.objects.create(
        name="summariser",
        kind="python",
        config={"callable": "tests.agents.basic:echo"},
        timeout_seconds=90,
        retry={"attempts": 5, "backoff": 2.0, "max_backoff": 30.0, "jitter": True},
        fallback="stand-in",
    )
    Agent.objects.create(name="stand-in", kind="simulated", config={"output": "x"})
    page = page_of(ops_client)

    summariser = row_of(page, "summariser")
    assert '<span class="tag">Python callable</span>' in summariser
    policy = cell(summariser, "Policy")
    assert "<dt>Timeout</dt><dd>1 min 30 s</dd>" in policy
    assert "<dt>Retry</dt><dd>5 attempts, backoff 2 s</dd>" in policy
    assert '<dt>Fallback</dt><dd><a href="#agent-stand-in">stand-in</a></dd>' in policy

    stand_in = row_of(page, "stand-in")
    assert '<span class="tag tag--sim">simulated</span>' in stand_in
    assert "<dt>Timeout</dt><dd><span class=\"muted\">none</span></dd>" in cell(stand_in, "Policy")
    assert "<dt>Retry</dt><dd>3 attempts, backoff 1 s</dd>" in cell(stand_in, "Policy"), "the default policy"
    assert "<dt>Fallback</dt><dd><span class=\"muted\">none</span></dd>" in cell(stand_in, "Policy")


def test_in_flight_counts_claimed_steps_against_max_concurrency_and_shows_throttled_ones(
    ops_client: Client, run: Run
) -> None:
    Agent.objects.create(name="narrow", kind="python", config={}, max_concurrency=2)
    Agent.objects.create(name="wide", kind="python", config={})
    steps_of(run, "narrow", StepStatus.RUNNING, 2)
    steps_of(run, "narrow", StepStatus.THROTTLED, 3)
    # A for_each head is "running" with no claim: it holds no slot.
    steps_of(run, "narrow", StepStatus.RUNNING, 1, claimed=False)
    steps_of(run, "narrow", StepStatus.SUCCEEDED, 4)
    steps_of(run, "wide", StepStatus.RUNNING, 1)
    page = page_of(ops_client)

    narrow = cell(row_of(page, "narrow"), "In flight")
    assert "<strong>2</strong> of 2" in narrow
    assert 'aria-valuenow="2"' in narrow and "progress--full" in narrow
    assert '<span class="badge badge--throttled">3 waiting for a slot</span>' in narrow
    wide = cell(row_of(page, "wide"), "In flight")
    assert "<strong>1</strong> <span class=\"muted small\">no limit</span>" in wide
    assert "waiting for a slot" not in wide
    assert re.search(r'<span class="summary-strip__value">3</span> calls in flight', page)
    assert re.search(r'<span class="summary-strip__value">3</span> steps waiting for a slot', page)


def test_a_closed_circuit_is_green_and_an_agent_without_a_breaker_says_so(ops_client: Client) -> None:
    Agent.objects.create(name="guarded", kind="python", config={}, circuit={"failures": 3, "window": 60.0, "cooldown": 30.0})
    Agent.objects.create(name="plain", kind="python", config={})
    page = page_of(ops_client)

    guarded = cell(row_of(page, "guarded"), "Circuit")
    assert 'class="badge badge--circuit-closed" data-circuit-state="closed">closed</span>' in guarded
    assert "opens after 3 failures in 1 min, cooldown 30 s" in guarded
    assert '<span class="muted">no breaker</span>' in cell(row_of(page, "plain"), "Circuit")


def test_an_open_circuit_is_red_and_says_when_it_reopens(ops_client: Client) -> None:
    agent = Agent.objects.create(name="flaky", kind="http", config={}, circuit={"failures": 3, "window": 60.0, "cooldown": 120.0})
    now = timezone.now()
    AgentHealth.objects.create(agent=agent, circuit_state="open", opened_at=now, reopens_at=now + timedelta(seconds=95))
    with time_machine.travel(now, tick=False):
        page = page_of(ops_client)
    row = row_of(page, "flaky")
    assert 'data-circuit="open"' in row
    circuit = cell(row, "Circuit")
    assert 'class="badge badge--circuit-open" data-circuit-state="open">open</span>' in circuit
    assert "reopens in 1 min 35 s" in circuit
    assert re.search(r'<li class="summary-strip--alert"><span class="summary-strip__value">1</span> circuit not closed', page)

    with time_machine.travel(now + timedelta(seconds=100), tick=False):
        page = page_of(ops_client)
    assert "cooldown over: next call is a trial" in cell(row_of(page, "flaky"), "Circuit")


def test_a_half_open_circuit_is_amber_and_links_its_trial_run(ops_client: Client, run: Run) -> None:
    agent = Agent.objects.create(name="recovering", kind="http", config={}, circuit={"failures": 3, "window": 60.0, "cooldown": 30.0})
    trial = StepRun.objects.create(run=run, step_key="probe", agent_name="recovering", status=StepStatus.RUNNING, claim_token="t")
    AgentHealth.objects.create(agent=agent, circuit_state="half_open", trial_step=trial)
    circuit = cell(row_of(page_of(ops_client), "recovering"), "Circuit")
    assert 'class="badge badge--circuit-half_open" data-circuit-state="half_open">half-open</span>' in circuit
    assert f'one trial call (<a href="{reverse("dashboard:run", args=[run.pk])}">run #{run.pk}</a>)' in circuit


def test_the_last_three_circuit_changes_show_newest_first_and_escaped(ops_client: Client) -> None:
    agent = Agent.objects.create(name="flaky", kind="python", config={}, circuit={"failures": 1, "window": 60.0, "cooldown": 30.0})
    for before, after, why in [
        ("closed", "open", "first opening"),
        ("open", "half_open", "cooldown over: one trial call"),
        ("half_open", "open", "the trial call failed"),
        ("open", "half_open", "<img src=x onerror=alert(1)>"),
    ]:
        AgentEvent.objects.create(agent=agent, from_state=before, to_state=after, message=why)
    events = cell(row_of(page_of(ops_client), "flaky"), "Recent circuit changes")

    assert events.count("<li>") == 3
    assert "first opening" not in events
    assert events.index("&lt;img src=x onerror=alert(1)&gt;") < events.index("the trial call failed")
    assert "<img" not in events
    assert '<span class="dot dot--half_open"></span>open → half-open' in events


def test_an_llm_agent_says_what_is_missing_without_a_server(ops_client: Client, no_llm_server: None) -> None:
    Agent.objects.create(name="writer", kind="llm", config=LLM_CONFIG)
    model = llm_box(row_of(page_of(ops_client), "writer"))
    assert '<code class="agent-llm__model">gpt-4o-mini</code>' in model
    assert "not configured: no base_url and OPENAI_BASE_URL is not set" in model


def test_an_llm_agent_with_its_server_and_key_is_configured(
    ops_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    Agent.objects.create(name="writer", kind="llm", config=LLM_CONFIG)
    Agent.objects.create(name="keyless", kind="llm", config={**LLM_CONFIG, "api_key_env": "KEYLESS_TOKEN"})
    page = page_of(ops_client)
    assert '<span class="tag tag--ok">configured</span>' in llm_box(row_of(page, "writer"))
    assert "not configured: environment variable KEYLESS_TOKEN is not set" in llm_box(row_of(page, "keyless"))


def test_an_llm_agent_sums_its_tokens_and_cost_over_the_last_24_hours(ops_client: Client, run: Run) -> None:
    Agent.objects.create(name="writer", kind="llm", config=LLM_CONFIG)
    Agent.objects.create(name="echo-llm", kind="llm", config=LLM_CONFIG)
    step = StepRun.objects.create(run=run, step_key="write", agent_name="writer", status=StepStatus.SUCCEEDED)
    now = timezone.now()
    usage = {"prompt_tokens": 1000, "completion_tokens": 234, "total_tokens": 1234, "latency_ms": 812.5, "cost": 0.0042, "model": "gpt-4o-mini"}
    Attempt.objects.create(step_run=step, number=1, agent_name="writer", status="failed", usage={}, started_at=now - timedelta(hours=1))
    Attempt.objects.create(step_run=step, number=2, agent_name="writer", status="succeeded", usage=usage, started_at=now - timedelta(minutes=5))
    Attempt.objects.create(step_run=step, number=3, agent_name="writer", status="succeeded", usage=usage, started_at=now - timedelta(minutes=1))
    # Older than a day, and another agent's: neither counts.
    Attempt.objects.create(step_run=step, number=4, agent_name="writer", status="succeeded", usage=usage, started_at=now - timedelta(hours=25))
    Attempt.objects.create(step_run=step, number=5, agent_name="stand-in", status="succeeded", usage=usage, started_at=now)
    page = page_of(ops_client)

    assert '<span class="muted">last 24 h</span> 3 calls · 2,468 tokens · <strong>$0.0084</strong>' in llm_box(row_of(page, "writer"))
    assert '<span class="muted">last 24 h</span> 0 calls · 0 tokens · <strong>$0</strong>' in llm_box(row_of(page, "echo-llm"))


def test_agent_descriptions_are_escaped(ops_client: Client) -> None:
    Agent.objects.create(name="sneaky", kind="python", config={}, description="<script>alert('hi')</script>")
    page = page_of(ops_client)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;hi&#x27;)&lt;/script&gt;" in page


def test_twenty_agents_take_as_few_queries_as_two(
    ops_client: Client, run: Run, django_assert_max_num_queries: Any
) -> None:
    for index in range(20):
        agent = Agent.objects.create(
            name=f"agent-{index}",
            kind="llm" if index % 2 else "python",
            config=LLM_CONFIG,
            max_concurrency=3,
            circuit={"failures": 3, "window": 60.0, "cooldown": 30.0},
        )
        AgentHealth.objects.create(agent=agent, circuit_state="open", reopens_at=timezone.now() + timedelta(minutes=1))
        for state in ("open", "half_open", "closed", "open"):
            AgentEvent.objects.create(agent=agent, from_state="closed", to_state=state)
        steps_of(run, agent.name, StepStatus.RUNNING, 2)
        step = StepRun.objects.filter(run=run, agent_name=agent.name).first()
        assert step is not None
        Attempt.objects.create(step_run=step, number=1, agent_name=agent.name, usage={"total_tokens": 10, "cost": 0.001}, started_at=timezone.now())
    # session, user, the workflows ops sees (for the runs counted), agents with their health
    # and trial step, load, recent events, usage, the workers' slots in use.
    with django_assert_max_num_queries(8):
        response = ops_client.get(AGENTS)
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count('<tr id="agent-agent-') == 20
    assert page.count("<strong>2</strong> of 3") == 20


def test_an_htmx_refresh_returns_only_the_live_part(ops_client: Client) -> None:
    Agent.objects.create(name="plain", kind="python", config={})
    response = ops_client.get(AGENTS, HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert "<html" not in page and "<h1>" not in page
    assert re.search(r'<div id="agents-live" data-live="agents" hx-get="/agents/" hx-trigger="baton:refresh"', page)
    assert 'id="agent-plain"' in page
    assert "HX-Request" in response["Vary"]


def test_without_agents_the_page_says_where_they_come_from(ops_client: Client) -> None:
    assert "No agents yet." in page_of(ops_client)


def test_agents_that_are_not_language_models_have_no_model_box(ops_client: Client) -> None:
    Agent.objects.create(name="plain", kind="python", config={})
    assert 'class="agent-llm"' not in row_of(page_of(ops_client), "plain")


def test_the_page_shows_the_slots_each_worker_process_has_in_use(ops_client: Client, run: Run) -> None:
    steps_of(run, "summariser", StepStatus.RUNNING, 3)
    for number, step in enumerate(StepRun.objects.filter(run=run, agent_name="summariser", claim_token="c0ffee")):
        StepRun.objects.filter(pk=step.pk).update(attempts=1)
        worker = "host-a:101" if number < 2 else "host-b:202"
        Attempt.objects.create(step_run=step, number=1, agent_name="summariser", worker=worker, started_at=timezone.now())
    page = page_of(ops_client)
    rows = dict(re.findall(r'<tr data-worker="([^"]+)">(.*?)</tr>', page, re.DOTALL))
    assert set(rows) == {"host-a:101", "host-b:202"}
    assert "<strong>2</strong> of 100" in rows["host-a:101"]
    assert "<strong>1</strong> of 100" in rows["host-b:202"]


def test_a_worker_holding_only_runs_the_reader_may_not_see_is_not_shown(client: Client, outsider: Any, run: Run) -> None:
    steps_of(run, "summariser", StepStatus.RUNNING, 1)
    step = StepRun.objects.get(run=run, agent_name="summariser", claim_token="c0ffee")
    StepRun.objects.filter(pk=step.pk).update(attempts=1)
    Attempt.objects.create(step_run=step, number=1, agent_name="summariser", worker="host-a:101", started_at=timezone.now())
    client.force_login(outsider)
    page = page_of(client)
    assert "host-a:101" not in page
    assert "No worker holds a call right now." in page
