"""An approved gate covers one exact input: an exception's retry with another input goes back to
the gate, and the self-approval rule covers exception items (issue 7, point 1)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from approvals import access, transitions
from approvals.auth import create_api_token
from approvals.models import Item, ItemStatus
from orchestration.agents import PermanentError
from orchestration.models import StepRun
from orchestration.status import RunStatus, StepStatus
from tests.approvals import conftest
from tests.approvals.conftest import flow, item_for, start
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

CALLS: list[Any] = []


def pay(payload: Any, context: Any) -> Any:
    """A payment that the bank refuses for customer-1 (for good), and pays to anyone else."""
    CALLS.append(payload)
    if payload.get("to") == "customer-1":
        raise PermanentError("the bank refused the transfer")
    return {"paid": payload}


@pytest.fixture(autouse=True)
def _no_calls() -> Any:
    CALLS.clear()
    yield
    CALLS.clear()


PAYMENTS = '  - {name: payments, kind: python, risk: high, config: {callable: "tests.approvals.test_gate_retry:pay"}}\n'
APPROVED = {"amount": 10, "to": "customer-1"}
SWAPPED = {"amount": 99999, "to": "attacker-account"}
# A gated high-risk agent in a workflow that escalates failures to its owner (ops).
GATED = (
    "    - key: pay\n"
    "      agent: payments\n"
    "      input: {amount: 10, to: customer-1}\n"
    "      gate: {approvers: {groups: [legal]}}\n"
)
ESCALATE = "  on_failure: escalate"


def gated_flow(steps: str = GATED, extra: str = ESCALATE) -> None:
    load_workflow(
        conftest.AGENTS
        + PAYMENTS
        + f"workflow:\n  key: wf\n  name: wf\n  owner: ops\n{extra}\n  steps:\n{steps}\n"
    )


def failed_after_approval(people: dict[str, Any], *, by: str = "carol") -> tuple[Any, Item, Item]:
    """The gate was approved for APPROVED, the payment then failed for good: an exception for ops."""
    gated_flow()
    run = start(by=people[by])
    gate = item_for(run, "pay", kind="gate")
    assert gate.action == APPROVED
    transitions.vote(item_id=gate.pk, user=people["approver"], decision="approve")
    run = drive(run)
    assert CALLS == [APPROVED]
    return run, gate, item_for(run, "pay", kind="exception")


def test_a_retry_with_edited_input_waits_at_a_new_gate_that_shows_the_new_input(
    people: dict[str, Any],
) -> None:
    run, gate, exception = failed_after_approval(people)

    transitions.resolve_exception(item_id=exception.pk, user=people["ops"], action="retry", input=SWAPPED)
    run = drive(run)

    assert CALLS == [APPROVED], "the swapped action did not run under the old approval"
    step = StepRun.objects.get(run=run, step_key="pay")
    assert (step.status, step.waiting_for, step.input) == (StepStatus.WAITING, "gate", SWAPPED)
    gate.refresh_from_db()
    assert gate.status == ItemStatus.APPROVED and gate.action == APPROVED, (
        "the old approval still says what it covered"
    )
    again = Item.objects.get(run=run, kind="gate", status=ItemStatus.PENDING)
    assert again.pk != gate.pk and again.action == SWAPPED
    assert "ops retried it with the input shown here: no earlier approval covers it" in again.details
    assert run.status == RunStatus.RUNNING

    with pytest.raises(transitions.NotAllowed, match="You started this run"):
        transitions.vote(item_id=again.pk, user=people["carol"], decision="approve")
    transitions.vote(item_id=again.pk, user=people["approver"], decision="approve")
    run = drive(run)
    assert CALLS == [APPROVED, SWAPPED]
    assert run.status == RunStatus.SUCCEEDED


def test_a_rejected_new_gate_never_runs_the_edited_action(people: dict[str, Any]) -> None:
    run, gate, exception = failed_after_approval(people)
    transitions.resolve_exception(item_id=exception.pk, user=people["ops"], action="retry", input=SWAPPED)
    again = Item.objects.get(run=run, kind="gate", status=ItemStatus.PENDING)

    transitions.vote(item_id=again.pk, user=people["approver"], decision="reject", comment="not our customer")
    run = drive(run)

    assert CALLS == [APPROVED]
    assert run.status == RunStatus.FAILED and "not our customer" in run.error


def test_a_retry_with_the_approved_input_runs_under_that_approval(people: dict[str, Any]) -> None:
    run, gate, exception = failed_after_approval(people)

    transitions.resolve_exception(
        item_id=exception.pk, user=people["ops"], action="retry", input=dict(APPROVED)
    )
    run = drive(run)

    assert CALLS == [APPROVED, APPROVED], "the same action again, as an automatic retry would run it"
    assert Item.objects.filter(run=run, kind="gate").count() == 1
    assert item_for(run, "pay", kind="exception").pk != exception.pk, "it failed again: a new exception"


def test_a_high_risk_agent_without_a_gate_field_is_gated_again_too(
    people: dict[str, Any], admin_user: Any
) -> None:
    # No `gate:`: the agent's risk gates it, and the gate goes to the owner (ops).
    gated_flow(GATED.replace("      gate: {approvers: {groups: [legal]}}\n", ""))
    run = start(by=people["carol"])
    transitions.vote(item_id=item_for(run, "pay", kind="gate").pk, user=people["ops"], decision="approve")
    run = drive(run)
    exception = item_for(run, "pay", kind="exception")

    transitions.resolve_exception(item_id=exception.pk, user=people["ops"], action="retry", input=SWAPPED)
    run = drive(run)

    assert CALLS == [APPROVED]
    again = Item.objects.get(run=run, kind="gate", status=ItemStatus.PENDING)
    assert again.action == SWAPPED
    with pytest.raises(transitions.NotAllowed, match="You retried this step"):
        transitions.vote(item_id=again.pk, user=people["ops"], decision="approve")
    transitions.vote(item_id=again.pk, user=admin_user, decision="approve")
    assert drive(run).status == RunStatus.SUCCEEDED and CALLS == [APPROVED, SWAPPED]


def test_whoever_retried_may_not_approve_the_gate_their_retry_opened(
    people: dict[str, Any], admin_user: Any
) -> None:
    run, gate, exception = failed_after_approval(people)
    transitions.resolve_exception(item_id=exception.pk, user=admin_user, action="retry", input=SWAPPED)
    again = Item.objects.get(run=run, kind="gate", status=ItemStatus.PENDING)

    with pytest.raises(transitions.NotAllowed, match="someone else must approve"):
        transitions.vote(item_id=again.pk, user=admin_user, decision="approve")
    assert again not in access.decidable_items(admin_user)
    assert again in access.decidable_items(people["approver"])
    again.refresh_from_db()
    assert again.status == ItemStatus.PENDING and not again.votes.exists()


def test_the_runs_starter_may_not_retry_skip_or_abort_its_exception(people: dict[str, Any]) -> None:
    # ops owns the workflow and started this run himself.
    run, gate, exception = failed_after_approval(people, by="ops")

    for action, extra in (
        ("retry", {"input": SWAPPED}),
        ("skip", {"output": {"paid": "by hand"}}),
        ("abort", {}),
    ):
        with pytest.raises(transitions.NotAllowed, match="You started this run"):
            transitions.resolve_exception(item_id=exception.pk, user=people["ops"], action=action, **extra)

    exception.refresh_from_db()
    assert exception.status == ItemStatus.PENDING and not exception.events.filter(kind="resolved").exists()
    assert exception not in access.decidable_items(people["ops"])
    assert status_of(run) == RunStatus.RUNNING and CALLS == [APPROVED]


def test_a_workflow_that_allows_self_approval_lets_its_starter_resolve(people: dict[str, Any]) -> None:
    gated_flow(extra=ESCALATE + "\n  allow_self_approval: true")
    run = start(by=people["ops"])
    transitions.vote(
        item_id=item_for(run, "pay", kind="gate").pk, user=people["approver"], decision="approve"
    )
    run = drive(run)
    exception = item_for(run, "pay", kind="exception")
    transitions.resolve_exception(
        item_id=exception.pk, user=people["ops"], action="skip", output={"paid": "by hand"}
    )
    assert drive(run).status == RunStatus.SUCCEEDED


def test_a_for_each_steps_retry_cannot_edit_its_input(people: dict[str, Any]) -> None:
    flow(
        "    - {key: check, agent: picky, for_each: '{{ [1, 2] }}', input: {ok: false}}",
        extra=ESCALATE,
    )
    run = start(by=people["carol"])
    exception = item_for(run, "check", kind="exception")
    with pytest.raises(transitions.InvalidInput) as refused:
        transitions.resolve_exception(
            item_id=exception.pk, user=people["ops"], action="retry", input={"ok": True}
        )
    assert set(refused.value.errors) == {"input"}
    exception.refresh_from_db()
    assert exception.status == ItemStatus.PENDING


def status_of(run: Any) -> str:
    run.refresh_from_db()
    return str(run.status)


def test_a_failing_agent_never_falls_back_to_a_high_risk_agent_without_its_gate(
    people: dict[str, Any],
) -> None:
    gated_flow(
        "    - {key: pay, agent: picky, fallback: payments, input: {amount: 99999, to: attacker-account}}\n",
        extra="",
    )
    run = drive(start(by=people["carol"]))
    assert CALLS == [], "the high-risk agent never ran"
    step = StepRun.objects.get(run=run, step_key="pay")
    assert step.status == StepStatus.FAILED and step.agent_name == "picky"
    assert run.status == RunStatus.FAILED


def test_a_gated_step_approved_for_its_input_may_fall_back_to_a_high_risk_agent(
    people: dict[str, Any],
) -> None:
    gated_flow(
        "    - {key: pay, agent: picky, fallback: payments, input: {amount: 5, to: shop}, gate: {approvers: {groups: [legal]}}}\n",
        extra="",
    )
    run = start(by=people["carol"])
    transitions.vote(
        item_id=item_for(run, "pay", kind="gate").pk, user=people["approver"], decision="approve"
    )
    run = drive(run)
    assert CALLS == [{"amount": 5, "to": "shop"}] and run.status == RunStatus.SUCCEEDED


# --- the inbox page ----------------------------------------------------------------------------


def resolve_on_page(client: Client, item: Item, data: dict[str, str]) -> Any:
    return client.post(
        reverse("approvals:resolve", args=[item.pk]), {"place": "page", **data}, HTTP_HX_REQUEST="true"
    )


def test_the_page_retry_with_edited_input_opens_a_new_gate_showing_it(
    client: Client, people: dict[str, Any]
) -> None:
    run, gate, exception = failed_after_approval(people)
    client.force_login(people["ops"])

    response = resolve_on_page(
        client, exception, {"action": "retry", "input": '{"amount": 99999, "to": "attacker-account"}'}
    )

    assert response.status_code == 200
    assert "waits at its gate again" in response.content.decode()
    drive(run)
    assert CALLS == [APPROVED]
    again = Item.objects.get(run=run, kind="gate", status=ItemStatus.PENDING)
    client.force_login(people["approver"])
    page = client.get(reverse("approvals:item", args=[again.pk])).content.decode()
    action = page.split("The exact action about to run", 1)[1].split("Where the run is", 1)[0]
    assert "attacker-account" in action and "99999" in action
    assert 'name="decision" value="approve"' in page


def test_the_page_refuses_the_runs_starter_an_exception_decision(
    client: Client, people: dict[str, Any]
) -> None:
    run, gate, exception = failed_after_approval(people, by="ops")
    client.force_login(people["ops"])

    page = client.get(reverse("approvals:item", args=[exception.pk])).content.decode()
    assert "Retry step" not in page and "you started this run" in page

    response = resolve_on_page(client, exception, {"action": "retry", "input": '{"amount": 99999}'})
    assert response.status_code == 403
    assert "You started this run" in response.content.decode()
    exception.refresh_from_db()
    assert exception.status == ItemStatus.PENDING


# --- the JSON API -------------------------------------------------------------------------------


def bearer(user: Any) -> dict[str, str]:
    _, token = create_api_token(user=user, name="test")
    return {"Authorization": f"Bearer {token}"}


def test_the_api_retry_with_edited_input_opens_a_new_gate_the_retrier_cannot_approve(
    client: Client, people: dict[str, Any]
) -> None:
    run, gate, exception = failed_after_approval(people)
    # ops is in legal too here: an approver of the gate, who must not approve his own edit.
    people["ops"].groups.add(*people["carol"].groups.all())
    ops = bearer(people["ops"])

    response = client.post(
        f"/api/approvals/{exception.pk}/resolve",
        {"action": "retry", "input": SWAPPED},
        content_type="application/json",
        headers=ops,
    )
    assert response.status_code == 200 and response.json()["status"] == "resolved"
    drive(run)
    assert CALLS == [APPROVED]
    (pending,) = client.get("/api/approvals", headers=bearer(people["approver"])).json()
    assert pending["kind"] == "gate" and pending["action"] == SWAPPED
    assert client.get("/api/approvals", headers=ops).json() == []

    refused = client.post(
        f"/api/approvals/{pending['id']}/decision",
        {"decision": "approve"},
        content_type="application/json",
        headers=ops,
    )
    assert refused.status_code == 403 and "You retried this step" in refused.json()["detail"]
    assert CALLS == [APPROVED]


def test_the_api_refuses_the_runs_starter_an_exception_decision(
    client: Client, people: dict[str, Any]
) -> None:
    run, gate, exception = failed_after_approval(people, by="ops")
    response = client.post(
        f"/api/approvals/{exception.pk}/resolve",
        {"action": "skip", "output": {"paid": "by hand"}},
        content_type="application/json",
        headers=bearer(people["ops"]),
    )
    assert response.status_code == 403 and "You started this run" in response.json()["detail"]
    exception.refresh_from_db()
    assert exception.status == ItemStatus.PENDING
