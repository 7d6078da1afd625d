"""Deciding approvals and gates, submitting manual tasks, reassigning: approvals.transitions."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail

from approvals import transitions
from approvals.models import ItemStatus, Vote
from orchestration.models import StepRun
from orchestration.status import RunStatus, StepStatus
from tests.approvals.conftest import flow, history, item_for, start
from tests.support import drive

pytestmark = pytest.mark.django_db

REVIEW = (
    "    - key: review\n"
    "      approval: {title: \"Publish '{{ input.topic }}'?\", approvers: {users: [approver], groups: [legal]}%s}\n"
    "    - {key: publish, agent: echo, after: [review], input: '{{ steps.review.output }}'}"
)
TOPIC = "  inputs: {topic: {type: string, default: tides}}"


def review(options: str = "", extra: str = TOPIC) -> None:
    flow(REVIEW % options, extra=extra)


# --- approving and rejecting -------------------------------------------------------------------


def test_an_approval_resumes_the_run_with_the_decision_as_output(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["ops"])
    item = item_for(run, "review")
    transitions.vote(item_id=item.pk, user=people["approver"], decision="approve", comment="fine by legal")
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    output = StepRun.objects.get(run=run, step_key="publish").output
    assert output["decision"] == "approve"
    assert output["decided_by"] == "approver"
    assert output["comment"] == "fine by legal"
    assert output["decided_at"]
    item.refresh_from_db()
    assert item.status == ItemStatus.APPROVED and item.decided_by == people["approver"]
    assert history(item) == ["created", "voted", "decided"]


def test_a_group_member_may_decide(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["ops"])
    transitions.vote(item_id=item_for(run, "review").pk, user=people["carol"], decision="approve")
    assert drive(run).status == RunStatus.SUCCEEDED


def test_rejecting_needs_a_comment(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["ops"])
    item = item_for(run, "review")
    with pytest.raises(transitions.InvalidInput) as refused:
        transitions.vote(item_id=item.pk, user=people["approver"], decision="reject", comment="  ")
    assert set(refused.value.errors) == {"comment"}
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING and not Vote.objects.exists()


def test_a_decision_must_be_approve_or_reject(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["ops"])
    with pytest.raises(transitions.InvalidInput) as refused:
        transitions.vote(item_id=item_for(run, "review").pk, user=people["approver"], decision="maybe")
    assert set(refused.value.errors) == {"decision"}


def test_a_rejection_fails_the_run_naming_who_and_why(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["ops"])
    transitions.vote(
        item_id=item_for(run, "review").pk, user=people["approver"], decision="reject", comment="not yet"
    )
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "rejected by approver: not yet" in run.error


def test_a_rejection_with_on_reject_continue_lets_later_steps_branch(people: dict[str, Any]) -> None:
    review(", on_reject: continue")
    run = start(by=people["ops"])
    transitions.vote(
        item_id=item_for(run, "review").pk, user=people["approver"], decision="reject", comment="no"
    )
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="publish").output["decision"] == "reject"


def test_the_outcome_is_emailed_after_commit(
    people: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    review()
    run = start(by=people["ops"])
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        transitions.vote(item_id=item_for(run, "review").pk, user=people["approver"], decision="approve")
    (message,) = mail.outbox
    assert message.subject == "[Baton] Approved: Publish 'tides'?"
    assert "ops@example.com" in message.to and "approver@example.com" not in message.to
    assert "/approvals/" in message.body


# --- who may decide ----------------------------------------------------------------------------


def test_an_outsider_may_not_decide(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["ops"])
    item = item_for(run, "review")
    with pytest.raises(transitions.NotAllowed):
        transitions.vote(item_id=item.pk, user=people["outsider"], decision="approve")
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING and not Vote.objects.exists()


def test_an_admin_may_decide_anything(people: dict[str, Any], admin_user: Any) -> None:
    review()
    run = start(by=people["ops"])
    transitions.vote(item_id=item_for(run, "review").pk, user=admin_user, decision="approve")
    assert drive(run).status == RunStatus.SUCCEEDED


def test_the_person_who_started_the_run_cannot_approve_it(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["approver"])
    item = item_for(run, "review")
    with pytest.raises(transitions.NotAllowed, match="started this run"):
        transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING


def test_self_approval_is_allowed_when_the_workflow_says_so(people: dict[str, Any]) -> None:
    review(extra=TOPIC + "\n  allow_self_approval: true")
    run = start(by=people["approver"])
    transitions.vote(item_id=item_for(run, "review").pk, user=people["approver"], decision="approve")
    assert drive(run).status == RunStatus.SUCCEEDED


def test_without_approvers_the_workflow_owner_decides(people: dict[str, Any]) -> None:
    flow("    - {key: ok, approval: {title: 'Go?'}}")
    run = start(by=people["approver"])
    item = item_for(run, "ok")
    assert list(item.users.all()) == [people["ops"]]
    with pytest.raises(transitions.NotAllowed):
        transitions.vote(item_id=item.pk, user=people["carol"], decision="approve")
    transitions.vote(item_id=item.pk, user=people["ops"], decision="approve")


# --- N of M ------------------------------------------------------------------------------------


def test_n_of_m_needs_that_many_distinct_approvers(people: dict[str, Any]) -> None:
    review(", required: 2")
    run = start(by=people["ops"])
    item = item_for(run, "review")
    transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    again = transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    assert again.status == ItemStatus.PENDING, "the same person twice counts once"
    assert Vote.objects.filter(item=item).count() == 1
    assert StepRun.objects.get(run=run, step_key="review").status == StepStatus.WAITING
    transitions.vote(item_id=item.pk, user=people["carol"], decision="approve")
    item.refresh_from_db()
    assert item.status == ItemStatus.APPROVED
    assert drive(run).status == RunStatus.SUCCEEDED
    assert history(item) == ["created", "voted", "voted", "decided"]


def test_a_vote_cannot_be_changed(people: dict[str, Any]) -> None:
    review(", required: 2")
    run = start(by=people["ops"])
    item = item_for(run, "review")
    transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    with pytest.raises(transitions.AlreadyDecided, match="already voted to approve"):
        transitions.vote(
            item_id=item.pk, user=people["approver"], decision="reject", comment="changed my mind"
        )
    assert Vote.objects.get(item=item).decision == "approve"


def test_one_rejection_decides_an_n_of_m_item(people: dict[str, Any]) -> None:
    review(", required: 2")
    run = start(by=people["ops"])
    item = item_for(run, "review")
    transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    transitions.vote(item_id=item.pk, user=people["carol"], decision="reject", comment="missing citation")
    item.refresh_from_db()
    assert item.status == ItemStatus.REJECTED and item.decided_by == people["carol"]


# --- stale clicks ------------------------------------------------------------------------------


def test_a_second_decision_is_told_who_decided_and_when(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["ops"])
    item = item_for(run, "review")
    transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    with pytest.raises(transitions.AlreadyDecided) as late:
        transitions.vote(item_id=item.pk, user=people["carol"], decision="reject", comment="too late?")
    assert late.value.status == ItemStatus.APPROVED
    assert late.value.decided_by == people["approver"]
    assert str(late.value).startswith("already approved by approver at ")
    assert Vote.objects.filter(item=item).count() == 1


def test_a_click_on_an_item_of_a_cancelled_run_changes_nothing(people: dict[str, Any]) -> None:
    from orchestration import transitions as runs

    review()
    run = start(by=people["ops"])
    item = item_for(run, "review")
    runs.cancel_run(run_id=run.pk, actor=people["ops"], reason="wrong topic")
    item.refresh_from_db()
    assert item.status == ItemStatus.CANCELLED
    assert history(item) == ["created", "cancelled"]
    with pytest.raises(transitions.AlreadyDecided, match="cancelled: wrong topic"):
        transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    assert not Vote.objects.exists()


def test_an_item_whose_step_was_resolved_elsewhere_cannot_be_decided(people: dict[str, Any]) -> None:
    from orchestration import transitions as runs

    review()
    run = start(by=people["ops"])
    item = item_for(run, "review")
    runs.resolve_waiting_step(step_run_id=item.step_run_id, output={"decision": "approve"})
    with pytest.raises(transitions.AlreadyDecided, match="no longer waits"):
        transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")


# --- gates -------------------------------------------------------------------------------------

GATED = (
    "    - {key: assess, agent: echo, input: {order: '{{ input.order }}', amount: 40}}\n"
    "    - key: refund\n"
    "      agent: echo\n"
    "      after: [assess]\n"
    "      input: {order: '{{ steps.assess.output.order }}', amount: '{{ steps.assess.output.amount }}'}\n"
    "      gate: {approvers: {groups: [editors]}}"
)
ORDER = "  inputs: {order: {type: string, default: A-17}}"


def test_an_approved_gate_lets_the_action_run(people: dict[str, Any]) -> None:
    flow(GATED, extra=ORDER)
    run = start(by=people["ops"])
    item = item_for(run, "refund")
    assert item.kind == "gate"
    transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="refund").output == {"order": "A-17", "amount": 40}


def test_a_rejected_gate_never_runs_the_action(people: dict[str, Any]) -> None:
    flow(GATED, extra=ORDER + "\n  on_failure: escalate")
    run = start(by=people["ops"])
    transitions.vote(
        item_id=item_for(run, "refund").pk, user=people["approver"], decision="reject", comment="fraud"
    )
    run = drive(run)
    refund = StepRun.objects.get(run=run, step_key="refund")
    assert refund.status == StepStatus.FAILED and refund.attempts == 0
    assert run.status == RunStatus.FAILED, "a refused action is a decision, not an exception to escalate"
    assert "rejected by approver: fraud" in run.error


# --- manual tasks ------------------------------------------------------------------------------

MANUAL = (
    "    - key: fix_address\n"
    "      manual:\n"
    '        title: "Correct the address of {{ input.customer }}"\n'
    "        instructions: Call the customer.\n"
    "        assignees: {groups: [support]}\n"
    "        form:\n"
    "          street: {type: string, required: true}\n"
    "          floor: {type: integer}\n"
    "          verified: {type: boolean}\n"
    "          country: {type: string, default: NL, enum: [NL, BE]}\n"
    "    - {key: confirm, agent: echo, after: [fix_address], input: '{{ steps.fix_address.output }}'}"
)
CUSTOMER = "  inputs: {customer: {type: string, default: Ada}}"


def test_a_submitted_form_is_the_steps_output(people: dict[str, Any]) -> None:
    flow(MANUAL, extra=CUSTOMER)
    run = start(by=people["ops"])
    item = item_for(run, "fix_address")
    assert item.title == "Correct the address of Ada" and item.details == "Call the customer."
    transitions.submit_manual(
        item_id=item.pk,
        user=people["approver"],
        data={"street": " Main St 1 ", "floor": "3", "verified": "on", "csrfmiddlewaretoken": "x"},
    )
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    expected = {"street": "Main St 1", "floor": 3, "verified": True, "country": "NL"}
    assert StepRun.objects.get(run=run, step_key="confirm").output == expected
    item.refresh_from_db()
    assert item.status == ItemStatus.SUBMITTED and item.submitted == expected
    assert history(item) == ["created", "submitted"]


def test_a_form_is_validated_on_the_server_field_by_field(people: dict[str, Any]) -> None:
    flow(MANUAL, extra=CUSTOMER)
    run = start(by=people["ops"])
    item = item_for(run, "fix_address")
    with pytest.raises(transitions.InvalidInput) as refused:
        transitions.submit_manual(
            item_id=item.pk, user=people["approver"], data={"floor": "third", "country": "DE"}
        )
    assert refused.value.errors == {
        "street": "required",
        "floor": "expected integer",
        "country": "'DE' is not one of ['NL', 'BE']",
    }
    item.refresh_from_db()
    assert item.status == ItemStatus.PENDING


def test_unticked_boxes_are_false_and_missing_optional_fields_none(people: dict[str, Any]) -> None:
    flow(MANUAL, extra=CUSTOMER)
    run = start(by=people["ops"])
    item = transitions.submit_manual(
        item_id=item_for(run, "fix_address").pk, user=people["approver"], data={"street": "Elm 2"}
    )
    assert item.submitted == {"street": "Elm 2", "floor": None, "verified": False, "country": "NL"}


def test_a_manual_task_is_not_voted_on(people: dict[str, Any]) -> None:
    flow(MANUAL, extra=CUSTOMER)
    run = start(by=people["ops"])
    with pytest.raises(transitions.InvalidInput):
        transitions.vote(item_id=item_for(run, "fix_address").pk, user=people["approver"], decision="approve")


def test_an_outsider_may_not_submit_a_task(people: dict[str, Any]) -> None:
    flow(MANUAL, extra=CUSTOMER)
    run = start(by=people["ops"])
    with pytest.raises(transitions.NotAllowed):
        transitions.submit_manual(
            item_id=item_for(run, "fix_address").pk, user=people["outsider"], data={"street": "x"}
        )


# --- reassigning -------------------------------------------------------------------------------


def test_an_approver_may_hand_an_item_to_someone_else_with_a_note(
    people: dict[str, Any], django_capture_on_commit_callbacks: Any
) -> None:
    review()
    run = start(by=people["ops"])
    item = item_for(run, "review")
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        transitions.reassign(
            item_id=item.pk, user=people["approver"], to_user="carol", note="carol knows this client"
        )
    assert list(item.users.all()) == [people["carol"]] and not item.groups.exists()
    event = item.events.get(kind="reassigned")
    assert event.actor == people["approver"] and "carol knows this client" in event.note
    assert event.data["from"] == {"users": ["approver"], "groups": ["legal"]}
    (message,) = mail.outbox
    assert message.to == ["carol@example.com"] and "carol knows this client" in message.body
    with pytest.raises(transitions.NotAllowed):
        transitions.vote(item_id=item.pk, user=people["approver"], decision="approve")
    transitions.vote(item_id=item.pk, user=people["carol"], decision="approve")
    assert drive(run).status == RunStatus.SUCCEEDED


def test_an_item_is_not_handed_to_the_runs_starter_or_without_a_note(people: dict[str, Any]) -> None:
    review()
    run = start(by=people["ops"])
    item = item_for(run, "review")
    with pytest.raises(transitions.InvalidInput) as refused:
        transitions.reassign(item_id=item.pk, user=people["approver"], to_user=people["ops"], note="")
    assert set(refused.value.errors) == {"to_user", "note"}
    with pytest.raises(transitions.InvalidInput) as unknown:
        transitions.reassign(item_id=item.pk, user=people["approver"], to_user="nobody-here", note="x")
    assert set(unknown.value.errors) == {"to_user"}
    with pytest.raises(transitions.NotAllowed):
        transitions.reassign(item_id=item.pk, user=people["outsider"], to_user="dave", note="mine now")
    assert not item.events.filter(kind="reassigned").exists()
