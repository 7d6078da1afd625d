"""The demo's people-in-the-loop workflows, loaded by load_demo and driven with the demo logins."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from approvals import transitions
from approvals.models import Item
from orchestration import transitions as runs
from orchestration.models import Agent, Run
from orchestration.status import RunStatus
from tests.support import drive

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(no_llm: None) -> dict[str, Any]:
    call_command("load_demo", quiet=True, stdout=StringIO())
    for agent in Agent.objects.filter(kind="simulated"):
        agent.config = {**agent.config, "delay": 0, "failure_rate": 0}
        agent.save(update_fields=["config"])
    return {u.username: u for u in get_user_model().objects.all()}


@pytest.fixture
def no_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def waiting_item(run: Run) -> Item:
    return Item.objects.get(run=run, status="pending")


def test_the_article_release_waits_for_legal_then_for_an_editor(demo: dict[str, Any]) -> None:
    run = drive(runs.start_run(workflow="approval-article-release", started_by=demo["ops"]))
    review = waiting_item(run)
    assert (
        review.kind == "approval"
        and review.title == "Publish 'Our new refund policy: what changes for customers'?"
    )
    assert review.deadline and review.remind_at and review.on_timeout == "escalate"
    transitions.vote(item_id=review.pk, user=demo["approver"], decision="approve", comment="claims checked")
    run = drive(run)
    gate = waiting_item(run)
    assert gate.kind == "gate" and gate.action["approved_by"] == "approver"
    transitions.vote(item_id=gate.pk, user=demo["approver"], decision="approve")
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output["legal"] == "approve by approver"


def test_the_refund_is_gated_as_a_high_risk_action(demo: dict[str, Any]) -> None:
    run = drive(runs.start_run(workflow="approval-refund", started_by=demo["ops"]))
    gate = waiting_item(run)
    assert (gate.kind, gate.risk) == ("gate", "high")
    assert gate.title == "Refund 129.5 EUR on order A-1042?"
    assert gate.action == {"order": "A-1042", "amount": 129.5, "currency": "EUR"}
    transitions.vote(item_id=gate.pk, user=demo["approver"], decision="reject", comment="duplicate request")
    run = drive(run)
    assert run.status == RunStatus.FAILED and "duplicate request" in run.error


def test_the_address_correction_is_a_manual_task_for_support(demo: dict[str, Any]) -> None:
    run = drive(runs.start_run(workflow="approval-address-correction", started_by=demo["ops"]))
    task = waiting_item(run)
    assert task.kind == "manual" and [g.name for g in task.groups.all()] == ["support"]
    assert "Postcode 1011 AB belongs to Amsterdam" in task.details
    transitions.submit_manual(
        item_id=task.pk,
        user=demo["approver"],
        data={"street": "Damrak 1", "postcode": "1011 AB", "city": "Amsterdam", "verified": "on"},
    )
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == {"address": "Damrak 1, 1011 AB Amsterdam"}
