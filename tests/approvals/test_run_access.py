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
    assert denied.status_code == 403 and "ada@example.com" not in denied.content.decode()
