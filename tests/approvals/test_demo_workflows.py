"""The demo's people-in-the-loop workflows, loaded by load_demo and driven with the demo logins."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from approvals import access, transitions
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


def test_a_refund_that_fails_for_good_is_resolved_by_the_workflows_owner_not_its_starter(
    demo: dict[str, Any],
) -> None:
    issuer = Agent.objects.get(name="refund-issuer")
    issuer.config = {**issuer.config, "failure_rate": 1}
    issuer.retry = {"attempts": 1}
    issuer.save(update_fields=["config", "retry"])
    run = drive(runs.start_run(workflow="approval-refund", started_by=demo["ops"]))
    transitions.vote(item_id=waiting_item(run).pk, user=demo["approver"], decision="approve")
    run = drive(run)
    exception = waiting_item(run)
    assert exception.kind == "exception"
    # ops started the run, so may not resolve it; a demo login other than admin can.
    assert not access.can_decide(demo["ops"], exception)
    deciders = [u for name, u in demo.items() if name != "admin" and access.can_decide(u, exception)]
    assert deciders == [demo["finance"]]
    assert exception in access.decidable_items(demo["finance"])
    # Paid by hand: the owner skips the step with the output later steps need.
    paid = {"refund_id": "RF-MANUAL-1", "order": "A-1042", "amount": 129.5, "currency": "EUR", "status": "paid"}
    transitions.resolve_exception(item_id=exception.pk, user=demo["finance"], action="skip", output=paid)
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output["refund_id"] == "RF-MANUAL-1"


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
