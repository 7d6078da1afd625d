"""The run page and a step's items page for steps that choose at run time: which agent each
item used, the child runs of a map over a sub-workflow with their status, the items a redo
round kept, a route's branch."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from orchestration import transitions
from orchestration.models import Run
from orchestration.status import RunStatus
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: accounting, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: crm, kind: python, config: {callable: "tests.agents.basic:echo"}}
"""


def workflow(key: str, steps: str) -> None:
    load_workflow(
        AGENTS + f"workflow:\n  key: {key}\n  name: {key}\n  owner: ops\n  access: {{operators: [operations]}}\n  steps:\n{steps}\n"
    )


def page(client: Client, name: str, *args: Any, query: str = "") -> str:
    response = client.get(reverse(name, args=args) + query)
    assert response.status_code == 200
    return response.content.decode()


def step_row(text: str, key: str) -> str:
    match = re.search(rf'<tr id="step-{key}"[^>]*>(.*?)</tr>', text, re.DOTALL)
    assert match, f"no step row for {key}"
    return match.group(1)


def test_the_items_page_shows_the_agent_each_item_used_and_the_items_a_redo_round_kept(
    ops_client: Client, ops: Any
) -> None:
    workflow(
        "plan",
        "    - key: work\n"
        "      agent: '{{ item }}'\n"
        "      agents: [accounting, crm]\n"
        "      for_each: '[\"accounting\", \"crm\", \"accounting\"]'\n"
        "    - key: review\n"
        "      agent: echo\n"
        "      after: [work]\n"
        "      input: {ok: '{{ iteration >= 2 }}'}\n"
        "      loop: {back_to: work, until: steps.review.output.ok, redo: '[1]', max_iterations: 2}",
    )
    run = drive(transitions.start_run(workflow="plan", started_by=ops))
    assert run.status == RunStatus.SUCCEEDED, run.error
    row = step_row(page(ops_client, "dashboard:run", run.pk), "work")
    assert "chosen per item from accounting, crm" in row
    first = page(ops_client, "dashboard:step_items", run.pk, "work")
    agents = re.findall(r'<span class="agent-cell__name">(\w+)', first)
    assert agents == ["accounting", "crm", "accounting"]
    second = page(ops_client, "dashboard:step_items", run.pk, "work", query="?round=2")
    assert second.count("kept from round 1") == 2


def test_the_run_page_lists_the_child_runs_of_a_map_over_a_sub_workflow_with_their_status(
    ops_client: Client, ops: Any
) -> None:
    workflow("child", "    - {key: go, agent: echo}")
    workflow("parent", "    - {key: parts, workflow: child, for_each: '[1, 2]', input: {n: '{{ item }}'}}")
    run = drive(transitions.start_run(workflow="parent", started_by=ops))
    assert run.status == RunStatus.SUCCEEDED, run.error
    children = list(Run.objects.filter(parent_step__run=run).order_by("parent_step__map_index"))
    row = step_row(page(ops_client, "dashboard:run", run.pk), "parts")
    for index, child in enumerate(children):
        assert re.search(
            rf'item {index}: <a href="/runs/{child.pk}/">run #{child.pk}</a> child <span class="badge badge--succeeded"', row
        ), row
    items = page(ops_client, "dashboard:step_items", run.pk, "parts")
    assert "Child run" in items and f'href="/runs/{children[1].pk}/"' in items


def test_a_route_shows_the_branch_it_took_and_the_others_skipped(ops_client: Client, ops: Any) -> None:
    workflow(
        "routed",
        "    - key: pick\n"
        "      route: {by: \"'b'\", cases: {a: a, b: b}, default: a}\n"
        "    - {key: a, agent: echo, after: [pick], input: 1}\n"
        "    - {key: b, agent: echo, after: [pick], input: 2}",
    )
    run = drive(transitions.start_run(workflow="routed", started_by=ops))
    text = page(ops_client, "dashboard:run", run.pk)
    assert "route" in step_row(text, "pick") and "&quot;branch&quot;: &quot;b&quot;" in step_row(text, "pick")
    assert 'data-status="skipped"' in step_row(text, "a")
    assert 'data-status="succeeded"' in step_row(text, "b")
