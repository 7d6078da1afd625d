"""Deadlines, reminders and escalation, enforced by the ticker's sweep with time frozen."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from approvals import transitions
from approvals.models import ItemStatus, Vote
from orchestration import ticker
from orchestration.models import StepRun
from orchestration.status import RunStatus, StepStatus
from tests.approvals.conftest import flow, history, item_for, start
from tests.support import drive

pytestmark = pytest.mark.django_db

MINUTE = 60


@pytest.fixture
def clock() -> Any:
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        yield traveller


def subjects() -> list[str]:
    found = [m.subject for m in mail.outbox]
    mail.outbox.clear()
    return found


def test_the_sweep_runs_on_every_tick() -> None:
    assert transitions.sweep_deadlines in ticker.SWEEPS


def test_a_deadline_reminds_then_escalates_then_times_out(
    people: dict[str, Any], clock: Any, django_capture_on_commit_callbacks: Any
) -> None:
    flow(
        "    - key: review\n"
        "      approval:\n"
        "        title: Publish?\n"
        "        approvers: {groups: [legal]}\n"
        "        deadline: 1h\n"
        "        remind_before: 15m\n"
        "        on_timeout: escalate\n"
        "        escalate_to: {users: [dave]}\n"
        "    - {key: publish, agent: echo, after: [review], input: 1}"
    )
    with django_capture_on_commit_callbacks(execute=True):
        run = start(by=people["ops"])
    item = item_for(run, "review")
    assert subjects() == ["[Baton] Waiting for you: Publish?"]

    clock.shift(44 * MINUTE)
    with django_capture_on_commit_callbacks(execute=True):
        drive(run)
    assert history(item) == ["created"], "not yet time for the reminder"

    clock.shift(2 * MINUTE)
    with django_capture_on_commit_callbacks(execute=True):
        drive(run)
        drive(run)
    assert history(item) == ["created", "reminded"], "reminded once, however many ticks"
    (reminder,) = mail.outbox
    assert reminder.subject.startswith("[Baton] Reminder: Publish?")
    assert sorted(reminder.to) == ["approver@example.com", "carol@example.com"]
    mail.outbox.clear()

    clock.shift(15 * MINUTE)
    with django_capture_on_commit_callbacks(execute=True):
        drive(run)
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING and item.escalations == 1
    assert [u.username for u in item.users.all()] == ["dave"] and not item.groups.exists()
    assert item.deadline == timezone.now() + timedelta(hours=1), "a fresh deadline of the same length"
    (escalation,) = mail.outbox
    assert escalation.subject == "[Baton] Escalated to you: Publish?" and escalation.to == [
        "dave@example.com"
    ]
    mail.outbox.clear()
    with pytest.raises(transitions.NotAllowed):
        transitions.vote(item_id=item.pk, user=people["carol"], decision="approve")

    clock.shift(46 * MINUTE)
    with django_capture_on_commit_callbacks(execute=True):
        drive(run)
    assert subjects() == [
        "[Baton] Reminder: Publish? (due " + f"{timezone.localtime(item.deadline):%Y-%m-%d %H:%M %Z})"
    ]

    clock.shift(15 * MINUTE)
    with django_capture_on_commit_callbacks(execute=True):
        run = drive(run)
    item.refresh_from_db()
    assert (item.status, item.decision, item.decided_by) == (ItemStatus.EXPIRED, "timeout", None)
    assert history(item) == ["created", "reminded", "escalated", "reminded", "expired", "decided"]
    assert item.events.get(kind="decided").data == {"decision": "reject", "timeout": True}
    assert run.status == RunStatus.FAILED, "a second timeout after escalation rejects"
    assert "rejected on timeout" in run.error
    (outcome,) = mail.outbox
    assert outcome.subject == "[Baton] Expired: Publish?" and "ops@example.com" in outcome.to


def test_on_timeout_approve_lets_the_run_go_on(people: dict[str, Any], clock: Any) -> None:
    flow(
        "    - {key: ok, approval: {title: 'Go?', deadline: 2h, on_timeout: approve}}\n"
        "    - {key: go, agent: echo, after: [ok], input: '{{ steps.ok.output }}'}"
    )
    run = start(by=people["ops"])
    clock.shift(2 * 3600)
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    output = StepRun.objects.get(run=run, step_key="go").output
    assert output["decision"] == "approve" and output["decided_by"] is None
    assert "approved on timeout" in output["comment"]


def test_a_gate_that_times_out_never_runs_its_action(people: dict[str, Any], clock: Any) -> None:
    flow("    - {key: pay_back, agent: refund, input: {amount: 15}, gate: {deadline: 30m}}")
    run = start(by=people["ops"])
    clock.shift(31 * MINUTE)
    run = drive(run)
    step = StepRun.objects.get(run=run, step_key="pay_back")
    assert step.status == StepStatus.FAILED and step.attempts == 0
    assert run.status == RunStatus.FAILED


def test_a_manual_task_not_done_in_time_fails_its_step(people: dict[str, Any], clock: Any) -> None:
    flow("    - {key: fix, manual: {title: Fix it, assignees: {groups: [support]}, deadline: 8h}}")
    run = start(by=people["ops"])
    clock.shift(8 * 3600)
    run = drive(run)
    assert run.status == RunStatus.FAILED
    assert "not done before its deadline" in run.error
    assert history(item_for(run, "fix")) == ["created", "expired", "decided"]


def test_a_manual_task_escalates_once_then_fails(people: dict[str, Any], clock: Any) -> None:
    flow(
        "    - {key: fix, manual: {title: Fix it, assignees: {groups: [support]}, deadline: 8h, escalate_to: {users: [dave]}}}"
    )
    run = start(by=people["ops"])
    clock.shift(8 * 3600)
    run = drive(run)
    assert run.status == RunStatus.RUNNING
    item = item_for(run, "fix")
    assert [u.username for u in item.users.all()] == ["dave"]
    clock.shift(8 * 3600)
    run = drive(run)
    assert run.status == RunStatus.FAILED
    assert history(item) == ["created", "escalated", "expired", "decided"]


def test_a_stale_click_after_expiry_is_refused_and_changes_nothing(
    people: dict[str, Any], clock: Any
) -> None:
    flow("    - {key: ok, approval: {title: 'Go?', approvers: {users: [approver]}, deadline: 1h}}")
    run = start(by=people["ops"])
    item = item_for(run, "ok")
    clock.shift(3600)
    run = drive(run)
    events = history(item)
    with pytest.raises(transitions.AlreadyDecided, match="expired at .*rejected on timeout") as stale:
        transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    assert stale.value.status == ItemStatus.EXPIRED
    item.refresh_from_db()
    assert item.status == ItemStatus.EXPIRED and history(item) == events
    assert not Vote.objects.exists()
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED


def test_a_decision_in_time_stops_the_clock(people: dict[str, Any], clock: Any) -> None:
    flow(
        "    - {key: ok, approval: {title: 'Go?', approvers: {users: [approver]}, deadline: 1h, remind_before: 30m}}\n"
        "    - {key: go, agent: echo, after: [ok], input: 1}"
    )
    run = start(by=people["ops"])
    item = item_for(run, "ok")
    transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    clock.shift(2 * 3600)
    assert transitions.sweep_deadlines(timezone.now()) == 0
    assert drive(run).status == RunStatus.SUCCEEDED
    assert history(item) == ["created", "voted", "decided"]


def test_an_overdue_item_is_not_reminded_first(people: dict[str, Any], clock: Any) -> None:
    flow("    - {key: ok, approval: {title: 'Go?', deadline: 1h, remind_before: 10m}}")
    run = start(by=people["ops"])
    clock.shift(2 * 3600)  # the ticker was down for the whole window
    drive(run)
    assert history(item_for(run, "ok")) == ["created", "expired", "decided"]
