"""What the engine's hand-off creates: one inbox item per waiting step, saying what will happen."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from approvals.models import Item, ItemStatus
from orchestration.models import StepRun
from orchestration.status import StepStatus
from tests.approvals.conftest import flow, history, item_for, start

pytestmark = pytest.mark.django_db


def test_an_approval_item_renders_its_title_and_details_from_the_run(people: dict[str, Any]) -> None:
    flow(
        "    - {key: edit, agent: echo, input: {summary: 'A short piece on {{ input.topic }}'}}\n"
        "    - key: legal_review\n"
        "      after: [edit]\n"
        "      approval:\n"
        "        title: \"Publish '{{ input.topic }}'?\"\n"
        "        details: '{{ steps.edit.output.summary }}'\n"
        "        approvers: {users: [approver], groups: [legal]}\n"
        "        required: 2\n"
        "        deadline: 48h\n"
        "        remind_before: 4h\n"
        "        on_timeout: escalate\n"
        "        escalate_to: {users: [dave]}\n"
        "        on_reject: continue",
        extra="  inputs: {topic: {type: string, default: tides}}",
    )
    with time_machine.travel(timezone.now(), tick=False):
        now = timezone.now()
        run = start(by=people["ops"])
    item = item_for(run, "legal_review")
    assert (item.kind, item.status) == ("approval", ItemStatus.PENDING)
    assert item.title == "Publish 'tides'?"
    assert item.details == "A short piece on tides"
    assert item.action == {"edit": {"summary": "A short piece on tides"}}, "the step's input"
    assert [u.username for u in item.users.all()] == ["approver"]
    assert [g.name for g in item.groups.all()] == ["legal"]
    assert item.required == 2
    assert item.deadline == now + timedelta(hours=48)
    assert item.remind_at == now + timedelta(hours=44)
    assert (item.on_timeout, item.escalate_to, item.on_reject) == (
        "escalate",
        {"users": ["dave"]},
        "continue",
    )
    assert item.requested_by == people["ops"] and not item.allow_self_approval
    assert history(item) == ["created"]
    assert "assigned to approver, group legal" in item.events.get().note


def test_assignees_are_emailed_with_a_link_once_the_item_is_committed(
    people: dict[str, Any], django_capture_on_commit_callbacks: Any, settings: Any
) -> None:
    settings.BATON_BASE_URL = "https://baton.example.com/"
    flow("    - {key: ok, approval: {title: 'Go?', approvers: {groups: [legal]}}}")
    with django_capture_on_commit_callbacks(execute=True):
        run = start(by=people["ops"])
    item = item_for(run, "ok")
    (message,) = mail.outbox
    assert message.subject == "[Baton] Waiting for you: Go?"
    assert sorted(message.to) == ["approver@example.com", "carol@example.com"]
    assert f"https://baton.example.com/approvals/{item.pk}/" in message.body
    assert item.events.filter(kind="notified").exists()


def test_a_gate_shows_the_exact_rendered_action(people: dict[str, Any]) -> None:
    flow(
        "    - {key: assess, agent: echo, input: {order: '{{ input.order }}'}}\n"
        "    - key: refund\n"
        "      agent: echo\n"
        "      after: [assess]\n"
        "      input: {order: '{{ steps.assess.output.order }}', amount: 40, reason: 'damaged in transit'}\n"
        "      gate: {approvers: {groups: [editors]}, deadline: 24h}",
        extra="  inputs: {order: {type: string, default: A-17}}",
    )
    run = start(by=people["ops"])
    item = item_for(run, "refund")
    assert item.kind == "gate"
    assert item.title == "Run echo for step 'refund'?"
    assert item.action == {"order": "A-17", "amount": 40, "reason": "damaged in transit"}
    assert [g.name for g in item.groups.all()] == ["editors"]
    step = StepRun.objects.get(run=run, step_key="refund")
    assert (step.status, step.waiting_for, step.attempts) == (StepStatus.WAITING, "gate", 0)


def test_a_high_risk_agent_is_gated_without_a_gate_and_its_owner_decides(people: dict[str, Any]) -> None:
    flow("    - {key: pay_back, agent: refund, input: {order: B-2, amount: 15}}")
    run = start(by=people["approver"])
    item = item_for(run, "pay_back")
    assert (item.kind, item.risk) == ("gate", "high")
    assert item.action == {"order": "B-2", "amount": 15}
    assert [u.username for u in item.users.all()] == ["ops"], "no approvers given: the workflow owner"
    assert "high risk" in item.details


def test_a_gate_title_may_be_a_template(people: dict[str, Any]) -> None:
    flow(
        "    - {key: pay_back, agent: refund, input: {amount: 15}, gate: {title: 'Refund {{ input.who }}?'}}",
        extra="  inputs: {who: {type: string, default: Ada}}",
    )
    run = start(by=people["ops"])
    assert item_for(run, "pay_back").title == "Refund Ada?"


def test_a_text_that_cannot_be_rendered_still_opens_the_item_and_says_so(people: dict[str, Any]) -> None:
    flow(
        "    - {key: edit, agent: echo, input: {}}\n"
        "    - {key: ok, after: [edit], approval: {title: 'Go?', details: '{{ steps.edit.output.summary }}'}}"
    )
    run = start(by=people["ops"])
    item = item_for(run, "ok")
    assert item.status == ItemStatus.PENDING
    assert "could not fill in" in item.details and "summary" in item.details


def test_a_manual_task_carries_its_form(people: dict[str, Any]) -> None:
    flow(
        "    - key: fix\n"
        "      manual:\n"
        "        title: Fix it\n"
        "        assignees: {groups: [support]}\n"
        "        form: {street: {type: string, required: true}}\n"
        "        deadline: 8h\n"
        "        escalate_to: {users: [dave]}"
    )
    run = start(by=people["ops"])
    item = item_for(run, "fix")
    assert item.kind == "manual"
    assert item.form == {"street": {"type": "string", "required": True}}
    assert item.on_timeout == "escalate", "escalate_to given: a manual task escalates by default"


def test_a_step_that_fails_for_good_opens_an_exception_for_the_owner(people: dict[str, Any]) -> None:
    flow("    - {key: check, agent: picky, input: {ok: false}}", extra="  on_failure: escalate")
    run = start(by=people["approver"])
    item = item_for(run, "check")
    assert item.kind == "exception"
    assert item.title == "Step 'check' failed: PermanentError: the input is not ok"
    assert item.action == {"input": {"ok": False}, "error": "PermanentError: the input is not ok"}
    assert [u.username for u in item.users.all()] == ["ops"]


def test_a_run_that_stops_cancels_its_open_items(people: dict[str, Any]) -> None:
    flow(
        "    - {key: a, approval: {title: A}}\n"
        "    - {key: b, approval: {title: B}}\n"
        "    - {key: boom, agent: picky, input: {}}"
    )
    run = start(by=people["ops"])
    run.refresh_from_db()
    assert run.status == "failed"
    for item in Item.objects.filter(run=run):
        assert item.status == ItemStatus.CANCELLED
        assert "the input is not ok" in item.comment
        assert history(item) == ["created", "cancelled"]
