"""One run: its header, graph, steps, timeline, live refresh and the cancel button."""

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
from orchestration.models import Agent, AgentVersion, Run, StepRun, WorkflowVersion
from orchestration.specs import forget_agents
from orchestration.status import RunStatus
from orchestration.tasks import execute_step
from tests.dashboard.conftest import AGENTS
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db


def page_of(client: Client, run: Run, **headers: Any) -> str:
    return client.get(reverse("dashboard:run", args=[run.pk]), **headers).content.decode()


def node(page: str, key: str) -> str:
    match = re.search(rf'<a class="node node--(\w+)" href="#step-{key}" data-step="{key}"[^>]*>(.*?)</a>', page, re.DOTALL)
    assert match, f"no graph node for {key}"
    return match.group(0)


def step_row(page: str, key: str) -> str:
    match = re.search(rf'<tr id="step-{key}"[^>]*>(.*?)</tr>', page, re.DOTALL)
    assert match, f"no step row for {key}"
    return match.group(1)


def test_a_finished_run_shows_its_header_output_and_a_node_per_step_in_its_colour(
    ops_client: Client, ops: Any, digest: WorkflowVersion
) -> None:
    run = drive(transitions.start_run(workflow="digest", input={"topic": "tides"}, started_by=ops))
    page = page_of(ops_client, run)

    assert "<h1>Daily digest" in page
    assert "v1" in page
    assert "started by <strong>ops</strong>" in page
    assert 'data-status="succeeded"' in page
    assert page.count('<svg class="graph"') == 1
    assert page.count('class="node node--') == 3
    for key in ("research", "summarise", "publish"):
        assert 'class="node node--succeeded"' in node(page, key)
    assert "×2" in node(page, "summarise")
    assert page.count('<path class="edge"') == 2
    assert "Output" in page and "TIDES" not in page  # upper() ran on the section names
    assert "NEWS" in page and "WEATHER" in page


def test_a_running_run_colours_each_step_by_its_latest_state_and_follows_the_run(
    ops_client: Client, digest: WorkflowVersion
) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"})
    execute_step(StepRun.objects.get(run=run, step_key="research").pk)
    page = page_of(ops_client, run)

    assert 'class="node node--succeeded"' in node(page, "research")
    assert 'class="node node--running"' in node(page, "summarise")
    assert 'class="node node--notstarted"' in node(page, "publish")
    assert "0 / 2 items" in step_row(page, "summarise")
    assert re.search(rf'<div id="run-live"[^>]*data-live="run:{run.pk}"[^>]*hx-trigger="baton:refresh"', page)
    assert "every 2s" not in page
    assert "Cancel run" in page


def test_a_final_run_still_follows_pushes_but_offers_no_cancel(ops_client: Client, digest: WorkflowVersion) -> None:
    run = drive(transitions.start_run(workflow="digest", input={"topic": "tides"}))
    page = page_of(ops_client, run)
    live = re.search(r'<div id="run-live"[^>]*>', page)
    # Pushes cost nothing while nothing changes, and a final run can still change (a retry).
    assert live and f'data-live="run:{run.pk}"' in live.group(0)
    assert "every" not in live.group(0)
    assert "Cancel run" not in page


def test_an_htmx_poll_returns_only_the_live_part(ops_client: Client, digest: WorkflowVersion) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"})
    response = ops_client.get(reverse("dashboard:run", args=[run.pk]), HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert "<html" not in page
    assert "<h1>" not in page
    assert '<div id="run-live"' in page
    assert "<svg" in page and "Timeline" in page
    assert "HX-Request" in response["Vary"]


def test_the_steps_table_shows_items_attempts_agents_and_timings(
    ops_client: Client, digest: WorkflowVersion
) -> None:
    run = drive(transitions.start_run(workflow="digest", input={"topic": "tides", "sections": ["a", "b", "c"]}))
    page = page_of(ops_client, run)
    summarise = step_row(page, "summarise")
    assert "3 / 3 items" in summarise
    assert '<td class="num" data-label="Attempts">3</td>' in summarise  # its items' attempts
    assert "upper" in summarise
    assert 'data-status="succeeded"' in summarise
    research = step_row(page, "research")
    assert '<td class="num" data-label="Attempts">1</td>' in research
    assert re.search(r"\d+(\.\d)? m?s</td>", research)  # a duration (orchestration.durations)


def test_a_step_whose_agent_ran_a_version_names_the_version(ops_client: Client, digest: WorkflowVersion) -> None:
    AgentVersion.objects.create(agent=Agent.objects.get(name="upper"), label="canary", weight=1)
    forget_agents()
    run = drive(transitions.start_run(workflow="digest", input={"topic": "tides", "sections": ["a", "b"]}))
    page = page_of(ops_client, run)
    # A for_each head shows the version its items ran; an agent without versions shows none.
    assert 'upper <span class="agent-cell__version">· version canary</span>' in step_row(page, "summarise")
    assert "version" not in step_row(page, "research")


def test_a_simulated_agent_is_labelled_simulated(ops_client: Client) -> None:
    load_workflow(AGENTS + "workflow:\n  key: story\n  name: Story\n  owner: ops\n  steps:\n    - {key: tell, agent: storyteller}\n")
    run = drive(transitions.start_run(workflow="story", input={"topic": "owls"}))
    assert '<span class="agent-cell__name">storyteller <span class="tag tag--sim">simulated</span></span>' in step_row(page_of(ops_client, run), "tell")


def test_a_failed_run_says_which_step_failed_and_why(ops_client: Client) -> None:
    load_workflow(
        AGENTS
        + "workflow:\n  key: refusing\n  name: Refusing\n  owner: ops\n  steps:\n    - {key: ask, agent: refuse}\n    - {key: then, agent: echo, after: [ask]}\n"
    )
    run = drive(transitions.start_run(workflow="refusing"))
    page = page_of(ops_client, run)
    assert "<strong>Failed:</strong> Step &#x27;ask&#x27; (agent refuse) failed: PermanentError: the input is not acceptable" in page
    assert 'class="node node--failed"' in node(page, "ask")
    assert 'class="node node--cancelled"' in node(page, "then") or 'node--notstarted' in node(page, "then")
    assert "the input is not acceptable" in step_row(page, "ask")


def test_a_loop_draws_a_dashed_arrow_back_and_shows_the_round(ops_client: Client) -> None:
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
    assert run.status == RunStatus.SUCCEEDED
    page = page_of(ops_client, run)
    assert page.count('<path class="edge edge--loop"') == 1
    assert "round 2" in node(page, "review")
    assert "round 2" in node(page, "write")
    assert len(re.findall(r'<td class="step-name">\s*<span class="strong">review</span>', page)) == 2  # both rounds


def test_a_sub_workflow_step_shows_its_key_and_links_both_ways(ops_client: Client, digest: WorkflowVersion) -> None:
    load_workflow("workflow:\n  key: wrapper\n  name: Wrapper\n  owner: ops\n  steps:\n    - {key: inner, workflow: digest, input: {topic: nested}}\n")
    parent = drive(transitions.start_run(workflow="wrapper"))
    child = Run.objects.get(parent_step__run=parent)
    page = page_of(ops_client, parent)
    assert "↳ digest" in node(page, "inner")
    assert f'href="/runs/{child.pk}/">run #{child.pk} →</a>' in step_row(page, "inner")
    child_page = page_of(ops_client, child)
    assert f'sub-run of <a href="/runs/{parent.pk}/">run #{parent.pk}</a>' in child_page


def test_the_timeline_lists_events_oldest_first(ops_client: Client, digest: WorkflowVersion) -> None:
    run = drive(transitions.start_run(workflow="digest", input={"topic": "tides"}))
    with time_machine.travel(timezone.now() + timedelta(minutes=3)):
        page = page_of(ops_client, run)
    timeline = page[page.index('<ol class="timeline">') :]
    assert timeline.index("Run started") < timeline.index("Step queued") < timeline.index("Run succeeded")
    assert "3\xa0minutes ago" in timeline


def test_agent_output_is_escaped_everywhere(ops_client: Client) -> None:
    load_workflow(AGENTS + "workflow:\n  key: echoing\n  name: Echoing\n  owner: ops\n  steps:\n    - {key: say, agent: echo}\n")
    attack = "<script>alert('x')</script>"
    run = drive(transitions.start_run(workflow="echoing", input={"text": attack}))
    page = page_of(ops_client, run)
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page


def test_a_long_output_is_folded(ops_client: Client) -> None:
    load_workflow(AGENTS + "workflow:\n  key: echoing\n  name: Echoing\n  owner: ops\n  steps:\n    - {key: say, agent: echo}\n")
    run = drive(transitions.start_run(workflow="echoing", input={"text": "word " * 200, "short": "hi"}))
    page = page_of(ops_client, run)
    assert '<details class="fold" id="run-output-say">' in page or '<details class="fold" id="step-output-' in page
    assert re.search(r"<dt>short</dt><dd><pre class=\"json\">hi</pre>", page)


# --- cancel --------------------------------------------------------------------------------------


def test_cancelling_stops_the_run_and_says_so(ops_client: Client, ops: Any, digest: WorkflowVersion) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"})
    response = ops_client.post(reverse("dashboard:cancel", args=[run.pk]), follow=True)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.error == "cancelled by ops"
    page = response.content.decode()
    assert f"Run {run.pk} cancelled." in page
    assert "<strong>Cancelled:</strong> cancelled by ops" in page
    assert "Cancel run" not in page


def test_a_second_cancel_says_the_run_is_already_cancelled(ops_client: Client, digest: WorkflowVersion) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"})
    ops_client.post(reverse("dashboard:cancel", args=[run.pk]))
    response = ops_client.post(reverse("dashboard:cancel", args=[run.pk]), follow=True)
    assert f"Run {run.pk} is already cancelled." in response.content.decode()


def test_over_htmx_cancel_returns_the_live_part(ops_client: Client, digest: WorkflowVersion) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"})
    url = reverse("dashboard:cancel", args=[run.pk])
    first = ops_client.post(url, HTTP_HX_REQUEST="true")
    assert first.status_code == 200
    assert first.content.decode().count('<div id="run-live"') == 1
    assert f"Run {run.pk} cancelled." in first.content.decode()
    second = ops_client.post(url, HTTP_HX_REQUEST="true")
    assert second.status_code == 409
    assert f"Run {run.pk} is already cancelled." in second.content.decode()


def test_the_cancel_button_posts_over_htmx_with_a_confirmation(ops_client: Client, digest: WorkflowVersion) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"})
    page = page_of(ops_client, run)
    url = reverse("dashboard:cancel", args=[run.pk])
    assert f'action="{url}" hx-post="{url}" hx-target="#run-live"' in page
    assert f'hx-confirm="Cancel run #{run.pk}?' in page


def test_cancelling_needs_a_post(ops_client: Client, digest: WorkflowVersion) -> None:
    run = transitions.start_run(workflow="digest", input={"topic": "tides"})
    assert ops_client.get(reverse("dashboard:cancel", args=[run.pk])).status_code == 405


def test_an_unknown_run_is_not_found(ops_client: Client) -> None:
    assert ops_client.get(reverse("dashboard:run", args=[999])).status_code == 404


def test_the_run_page_takes_a_fixed_number_of_queries(
    ops_client: Client, digest: WorkflowVersion, django_assert_max_num_queries: Any
) -> None:
    run = drive(transitions.start_run(workflow="digest", input={"topic": "t", "sections": list("abcdefghij")}))
    # session, user, run, may ops see it, may ops cancel it, head rows, simulated agents, item
    # attempts, the agent versions attempts ran (and which fallbacks' primaries were called),
    # the shown rows' outputs, their attempts, child runs, event count, events, for usage the
    # run's sub-runs and attempts, the reruns of this run (the actions' links), and the steps'
    # status events (the Gantt timeline): ten items or a thousand.
    with django_assert_max_num_queries(18):
        response = ops_client.get(reverse("dashboard:run", args=[run.pk]))
    assert response.status_code == 200
    page = response.content.decode()
    assert f"Run #{run.pk}" in page
    assert page.count('class="node ') == len(run.version.spec["steps"])


def test_a_long_run_output_is_folded_on_the_run_page(client, ops) -> None:  # type: ignore[no-untyped-def]
    from orchestration import transitions
    from tests.support import drive, load_workflow

    load_workflow(
        'agents: [{name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}]\n'
        "workflow: {key: long, name: Long, owner: ops, steps: [{key: a, agent: echo, input: '{{ range(60) | list }}'}]}"
    )
    run = drive(transitions.start_run(workflow="long"))
    client.force_login(ops)
    page = client.get(f"/runs/{run.pk}/").content.decode()
    # the step's cell and the run's own output are both folded
    assert page.count('<details class="fold"') >= 2
