"""Approval items follow their own access rule (approvals/access.py); what they show of the run
must not reach further than the item, and the inbox must not list workflows one cannot see."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from approvals import transitions as decisions
from approvals.auth import create_api_token
from orchestration import access
from tests.approvals.conftest import flow, item_for, start

pytestmark = pytest.mark.django_db

REVIEW = (
    "    - key: review\n"
    "      input: {topic: '{{ input.topic }}'}\n"
    "      approval: {title: \"Publish '{{ input.topic }}'?\", approvers: {groups: [legal]}}\n"
    "    - {key: publish, agent: echo, after: [review]}"
)
INPUTS = "  inputs: {topic: {type: string, default: tides}, email: {type: string, default: ada@example.com}}"


def test_the_decided_filter_names_only_workflows_of_items_i_see(client: Client, people: dict[str, Any]) -> None:
    flow(REVIEW, key="wf", extra=INPUTS)
    flow("    - {key: a, agent: echo}", key="secret-merger")
    item = item_for(start("wf", by=people["ops"]), "review")
    decisions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    client.force_login(people["approver"])
    page = client.get(reverse("approvals:decided")).content.decode()
    assert 'value="wf"' in page
    assert "secret-merger" not in page


def test_an_assignee_who_cannot_see_the_run_gets_the_item_and_nothing_more_of_the_run(
    client: Client, people: dict[str, Any]
) -> None:
    flow(REVIEW, key="wf", extra=INPUTS)
    run = start("wf", by=people["ops"])
    item = item_for(run, "review")
    carol = people["carol"]  # in legal: the item is hers; the workflow names no group of hers
    assert not access.can_view_run(carol, run)
    _, token = create_api_token(user=carol, name="test")
    response = client.get(f"/api/approvals/{item.pk}", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json()["title"] == "Publish 'tides'?"
    assert response.json()["action"] == {"topic": "tides"}  # what the step was given, by design
    assert "ada@example.com" not in response.content.decode()  # the rest of the run's input is not
    client.force_login(carol)
    assert client.get(reverse("dashboard:run", args=[run.pk])).status_code == 403
    outsider = create_api_token(user=people["outsider"], name="test")[1]
    denied = client.get(f"/api/approvals/{item.pk}", headers={"Authorization": f"Bearer {outsider}"})
    assert denied.status_code == 404 and "ada@example.com" not in denied.content.decode()


SIDE_STEPS = (
    "    - {key: audit, agent: echo, input: {ledger: ledger-42}}\n"
    "    - {key: draft, agent: echo, input: {text: draft-text}}\n"
    "    - key: review\n"
    "      after: [draft]\n"
    "      approval: {title: 'Publish it?', approvers: {groups: [legal]}}\n"
    "    - {key: publish, agent: echo, after: [review]}"
)


def _run_link(run: Any) -> str:
    return f'href="{reverse("dashboard:run", args=[run.pk])}"'


def test_an_assignee_who_cannot_see_the_run_gets_no_run_link_and_only_the_steps_that_led_here(
    client: Client, people: dict[str, Any]
) -> None:
    flow(SIDE_STEPS, key="wf")
    run = start("wf", by=people["ops"])
    item = item_for(run, "review")
    carol = people["carol"]
    assert not access.can_view_run(carol, run)
    client.force_login(carol)
    page = client.get(reverse("approvals:item", args=[item.pk])).content.decode()
    assert "Publish it?" in page and "draft-text" in page  # the item and the outputs that led to it
    assert 'data-step="draft"' in page and 'data-step="review"' in page
    assert 'data-step="audit"' not in page and "ledger-42" not in page  # a step that did not lead here
    assert 'data-step="publish"' not in page  # nor what comes after
    assert _run_link(run) not in page and f"Run #{run.pk}" in page
    inbox = client.get(reverse("approvals:inbox")).content.decode()
    assert "Publish it?" in inbox and _run_link(run) not in inbox and f"run #{run.pk}" in inbox
    decisions.vote(item_id=item.pk, user=carol, decision="approve")
    decided = client.get(reverse("approvals:decided")).content.decode()
    assert "Publish it?" in decided and _run_link(run) not in decided
    # The row a decision in the inbox answers with has no link either.
    second = item_for(start("wf", by=people["ops"]), "review")
    row = client.post(
        reverse("approvals:decide", args=[second.pk]),
        {"decision": "approve", "place": "row"},
        headers={"HX-Request": "true"},
    )
    assert row.status_code == 200 and 'href="/runs/' not in row.content.decode()


def test_someone_who_sees_the_run_gets_its_link_and_its_whole_graph(client: Client, people: dict[str, Any]) -> None:
    flow(SIDE_STEPS, key="wf")
    run = start("wf", by=people["approver"])  # approver starts; ops owns the workflow and sees it
    item = item_for(run, "review")
    client.force_login(people["ops"])
    page = client.get(reverse("approvals:item", args=[item.pk])).content.decode()
    assert _run_link(run) in page
    assert 'data-step="audit"' in page and 'data-step="publish"' in page
    decisions.vote(item_id=item.pk, user=people["carol"], decision="approve")
    decided = client.get(reverse("approvals:decided")).content.decode()
    assert _run_link(run) in decided
