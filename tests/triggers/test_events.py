"""Events: `POST /api/events {"name", "key", "payload"}` resumes the steps waiting for that name
and key (their output is the payload), keeps an event nobody waits for yet for the first step that
comes to wait for it, starts the workflows subscribed to it, and touches only what the sender may
operate; a wait that times out fails the step or, with `on_timeout: continue`, lets the run go on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.utils import timezone

from approvals.auth import create_api_token
from orchestration import transitions
from orchestration.models import Event, Run, StepRun
from orchestration.spec import SpecError
from orchestration.status import RunStatus, StepStatus
from orchestration.triggers.models import Firing, FiringOutcome
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

ORDERS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: orders
  name: Orders
  owner: ops
  inputs: {order_id: {type: string, required: true}}
  steps:
    - {key: invoice, agent: echo, input: {order: "{{ input.order_id }}"}}
    - key: payment
      after: [invoice]
      wait: {event: payment.received, match: "{{ input.order_id }}", timeout: 7d, on_timeout: ON_TIMEOUT}
    - {key: ship, agent: echo, after: [payment], input: {paid: "{{ steps.payment.output }}"}}
"""

SUBSCRIBER = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: fulfil
  name: Fulfil
  owner: ops
  inputs: {order: {type: string, required: true}}
  triggers:
    - event: order.placed
      input: {order: "{{ event.payload.id }}"}
  steps:
    - {key: pack, agent: echo, input: {order: "{{ input.order }}"}}
"""


@pytest.fixture
def orders(ops: Any) -> None:
    load_workflow(ORDERS.replace("ON_TIMEOUT", "fail"))


def send(user: Any, body: dict[str, Any]) -> Any:
    _, token = create_api_token(user=user, name="events")
    return Client().post(
        "/api/events", body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )


def waiting_run(ops: Any, order_id: str) -> Run:
    run = drive(transitions.start_run(workflow="orders", input={"order_id": order_id}, started_by=ops))
    assert StepRun.objects.get(run=run, step_key="payment").status == StepStatus.WAITING
    return run


def test_an_event_resumes_only_the_run_waiting_for_its_key_with_the_payload_as_output(
    orders: None, ops: Any
) -> None:
    mine, other = waiting_run(ops, "A-1"), waiting_run(ops, "B-2")
    response = send(ops, {"name": "payment.received", "key": "A-1", "payload": {"amount": 12}})
    assert response.status_code == 200, response.content
    assert response.json()["resumed"] == [{"run": mine.pk, "step": "payment", "url": f"/runs/{mine.pk}/"}]
    assert response.json()["kept"] is False
    assert drive(mine).status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=mine, step_key="payment").output == {"amount": 12}
    assert StepRun.objects.get(run=other, step_key="payment").status == StepStatus.WAITING


def test_each_event_resumes_each_waiting_step_once(orders: None, ops: Any) -> None:
    run = waiting_run(ops, "A-1")
    assert send(ops, {"name": "payment.received", "key": "A-1", "payload": 1}).json()["resumed"]
    second = send(ops, {"name": "payment.received", "key": "A-1", "payload": 2}).json()
    assert second["resumed"] == [] and second["kept"] is True
    assert StepRun.objects.get(run=run, step_key="payment").output == 1


def test_an_event_that_comes_before_the_step_waits_is_kept_and_taken_when_it_does(
    orders: None, ops: Any
) -> None:
    response = send(ops, {"name": "payment.received", "key": "A-1", "payload": {"amount": 7}})
    assert response.json()["kept"] is True and response.json()["keep_until"]
    run = drive(transitions.start_run(workflow="orders", input={"order_id": "A-1"}, started_by=ops))
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="payment").output == {"amount": 7}
    # Taken once: the next run with that key waits.
    assert waiting_run(ops, "A-1")
    assert Event.objects.get().consumed_by.run == run


def test_a_kept_event_past_its_keeping_time_is_not_taken(orders: None, ops: Any, settings: Any) -> None:
    settings.BATON_EVENT_KEEP_SECONDS = 60
    with time_machine.travel(timezone.now(), tick=False) as clock:
        send(ops, {"name": "payment.received", "key": "A-1", "payload": 1})
        clock.shift(61)
        waiting_run(ops, "A-1")


def test_a_wait_that_times_out_fails_the_step(orders: None, ops: Any) -> None:
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = waiting_run(ops, "A-1")
        clock.shift(timedelta(days=7, seconds=1))
        run = drive(run)
    assert run.status == RunStatus.FAILED
    assert "did not arrive within 7d" in StepRun.objects.get(run=run, step_key="payment").error


def test_with_on_timeout_continue_the_run_goes_on_and_says_it_timed_out(ops: Any) -> None:
    load_workflow(ORDERS.replace("ON_TIMEOUT", "continue"))
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = waiting_run(ops, "A-1")
        clock.shift(timedelta(days=7, seconds=1))
        run = drive(run)
    assert run.status == RunStatus.SUCCEEDED
    assert StepRun.objects.get(run=run, step_key="ship").input == {"paid": {"timed_out": True}}


def test_an_event_starts_the_workflows_subscribed_to_it_with_the_rendered_input(ops: Any) -> None:
    load_workflow(SUBSCRIBER)
    response = send(ops, {"name": "order.placed", "key": "O-9", "payload": {"id": "O-9"}})
    [started] = response.json()["started"]
    run = Run.objects.get(pk=started["run"])
    assert (run.workflow.key, run.trigger, run.input, run.started_by) == (
        "fulfil",
        "event",
        {"order": "O-9"},
        ops,
    )
    assert Firing.objects.get(run=run).outcome == FiringOutcome.STARTED


def test_a_payload_that_does_not_fit_the_subscriber_is_reported_and_starts_nothing(ops: Any) -> None:
    load_workflow(SUBSCRIBER)
    response = send(ops, {"name": "order.placed", "payload": {"no_id": True}})
    assert response.status_code == 200
    assert response.json()["started"] == []
    [refused] = response.json()["not_started"]
    assert refused["workflow"] == "fulfil"
    assert not Run.objects.exists()


def test_a_sender_who_may_not_operate_the_workflow_resumes_and_starts_nothing(
    orders: None, ops: Any, outsider: Any
) -> None:
    load_workflow(SUBSCRIBER)
    run = waiting_run(ops, "A-1")
    response = send(outsider, {"name": "payment.received", "key": "A-1"}).json()
    assert response["resumed"] == [] and response["started"] == []
    assert StepRun.objects.get(run=run, step_key="payment").status == StepStatus.WAITING
    assert send(outsider, {"name": "order.placed", "payload": {"id": "X"}}).json()["started"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "Bad Name"}, "name"),
        ({"name": "ok", "key": "k" * 201}, "key"),
        ({}, "name"),
    ],
)
def test_a_bad_event_is_422_naming_the_field(ops: Any, body: dict[str, Any], field: str) -> None:
    response = send(ops, body)
    assert response.status_code == 422
    assert field in str(response.json())
    assert not Event.objects.exists()


def test_without_a_token_an_event_is_401() -> None:
    assert Client().post("/api/events", {"name": "x"}, content_type="application/json").status_code == 401


def test_wait_options_are_checked_at_import(ops: Any) -> None:
    with pytest.raises(SpecError) as refused:
        load_workflow(ORDERS.replace("ON_TIMEOUT", "retry"))
    assert "field `wait.on_timeout`: 'retry' is not 'fail' or 'continue'" in str(refused.value)
    with pytest.raises(SpecError) as refused:
        load_workflow(
            ORDERS.replace("wait: {event: payment.received, match:", "wait: {for: 1d, match:").replace(
                ", timeout: 7d, on_timeout: ON_TIMEOUT", ""
            )
        )
    assert "field `wait.match` only applies to a wait for an `event`" in str(refused.value)


def test_a_wait_given_as_a_duration_sleeps_like_for(ops: Any) -> None:
    load_workflow(
        ORDERS.replace(
            'wait: {event: payment.received, match: "{{ input.order_id }}", timeout: 7d, on_timeout: ON_TIMEOUT}',
            "wait: {duration: 10m}",
        )
    )
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="orders", input={"order_id": "A-1"}))
        assert run.status == RunStatus.RUNNING
        clock.shift(601)
        assert drive(run).status == RunStatus.SUCCEEDED


def test_the_run_page_says_which_event_and_key_the_step_waits_for(orders: None, ops: Any) -> None:
    run = waiting_run(ops, "A-1")
    client = Client()
    client.force_login(ops)
    html = client.get(f"/runs/{run.pk}/").content.decode()
    assert "waiting: event payment.received with key A-1, times out in 6\xa0days" in html  # 7 days less a moment
