"""Exception items: the workflow owner retries, skips or aborts a step that failed for good."""

from __future__ import annotations

from typing import Any

import pytest

from approvals import transitions
from approvals.models import Item, ItemStatus
from orchestration.models import StepRun
from orchestration.status import RunStatus, StepStatus
from tests.approvals.conftest import flow, history, item_for, start
from tests.support import drive

pytestmark = pytest.mark.django_db

PICKY = (
    "    - {key: check, agent: picky, input: {ok: '{{ input.ok }}', order: A-1}}\n"
    "    - {key: after, agent: echo, after: [check], input: '{{ steps.check.output }}'}"
)
ESCALATE = "  on_failure: escalate\n  inputs: {ok: {type: boolean, default: false}}"


def failed_check(people: dict[str, Any]) -> tuple[Any, Item]:
    flow(PICKY, extra=ESCALATE)
    run = start(by=people["approver"])
    assert run.status == RunStatus.RUNNING
    return run, item_for(run, "check", kind="exception")


def test_a_retry_runs_the_step_again(people: dict[str, Any]) -> None:
    flow("    - {key: shaky, agent: flaky, input: {succeed_on: 2}}", extra="  on_failure: escalate")
    run = start(by=people["approver"])
    item = item_for(run, "shaky")
    transitions.resolve_exception(item_id=item.pk, user=people["ops"], action="retry")
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="shaky").output == {"attempt": 2}
    item.refresh_from_db()
    assert (item.status, item.decision, item.decided_by) == (ItemStatus.RESOLVED, "retry", people["ops"])
    assert history(item) == ["created", "resolved"]


def test_a_retry_that_fails_again_opens_a_new_exception(people: dict[str, Any]) -> None:
    run, item = failed_check(people)
    transitions.resolve_exception(item_id=item.pk, user=people["ops"], action="retry")
    run = drive(run)
    assert run.status == RunStatus.RUNNING
    again = item_for(run, "check", kind="exception")
    assert again.pk != item.pk and again.status == ItemStatus.PENDING


def test_a_retry_with_edited_input_runs_with_the_new_input(people: dict[str, Any]) -> None:
    run, item = failed_check(people)
    transitions.resolve_exception(
        item_id=item.pk, user=people["ops"], action="retry", input={"ok": True, "order": "A-2"}
    )
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="after").output == {"done": {"ok": True, "order": "A-2"}}
    assert item.events.get(kind="resolved").data == {"action": "retry", "edited_input": True}


def test_a_skip_supplies_the_output_later_steps_see(people: dict[str, Any]) -> None:
    run, item = failed_check(people)
    transitions.resolve_exception(
        item_id=item.pk, user=people["ops"], action="skip", output={"done": "by hand"}
    )
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="check").status == StepStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="after").output == {"done": "by hand"}


def test_an_abort_fails_the_run_with_the_owners_reason(people: dict[str, Any]) -> None:
    run, item = failed_check(people)
    transitions.resolve_exception(
        item_id=item.pk, user=people["ops"], action="abort", comment="order was withdrawn"
    )
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and run.error == "order was withdrawn"
    item.refresh_from_db()
    assert item.status == ItemStatus.RESOLVED and item.decision == "abort", (
        "resolved, not cancelled by the abort"
    )
    assert history(item) == ["created", "resolved"]


def test_only_the_owner_or_an_admin_handles_an_exception(people: dict[str, Any], admin_user: Any) -> None:
    run, item = failed_check(people)
    for someone in (people["approver"], people["outsider"]):
        with pytest.raises(transitions.NotAllowed):
            transitions.resolve_exception(item_id=item.pk, user=someone, action="skip", output={})
    transitions.resolve_exception(item_id=item.pk, user=admin_user, action="skip", output={})
    assert drive(run).status == RunStatus.SUCCEEDED


def test_an_exception_is_handled_once(people: dict[str, Any]) -> None:
    run, item = failed_check(people)
    transitions.resolve_exception(item_id=item.pk, user=people["ops"], action="skip", output={})
    with pytest.raises(transitions.AlreadyDecided, match="already resolved \\(skip\\) by ops"):
        transitions.resolve_exception(item_id=item.pk, user=people["ops"], action="abort")


def test_an_unknown_action_is_refused(people: dict[str, Any]) -> None:
    run, item = failed_check(people)
    with pytest.raises(transitions.InvalidInput) as refused:
        transitions.resolve_exception(item_id=item.pk, user=people["ops"], action="ignore")
    assert set(refused.value.errors) == {"action"}
