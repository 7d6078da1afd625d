"""Timeouts, fallbacks, circuit breakers, concurrency limits and compensation."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import time_machine
from django.utils import timezone

from orchestration import transitions
from orchestration.models import AgentEvent, AgentHealth, Attempt, Run, RunEvent, StepRun
from orchestration.status import ErrorClass, EventKind, RunStatus, StepStatus
from orchestration.tasks import execute_step
from tests.servers import Reply, ScriptedServer
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: down, kind: python, config: {callable: "tests.agents.basic:always_down"}, retry: {attempts: 2, backoff: 1s, jitter: false}, fallback: echo}
  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}}
  - {name: slow, kind: python, config: {callable: "tests.agents.basic:slow"}, retry: {attempts: 2, backoff: 1s, jitter: false}}
  - {name: undo, kind: python, config: {callable: "tests.agents.basic:undo"}}
  - {name: broken-undo, kind: python, config: {callable: "tests.agents.basic:broken_undo"}}
"""


def flow(steps: str, *, key: str = "wf", agents: str = AGENTS, extra: str = "") -> None:
    load_workflow(agents + f"workflow:\n  key: {key}\n  name: {key}\n{extra}\n  steps:\n{steps}\n")


def head(run: Run, key: str) -> StepRun:
    return StepRun.objects.filter(run=run, step_key=key, map_index__isnull=True).order_by("-iteration").first()  # type: ignore[return-value]


# --- timeouts ----------------------------------------------------------------------------------


def test_a_step_past_its_timeout_is_stopped_and_retried_as_a_timeout() -> None:
    flow("    - {key: a, agent: slow, input: {seconds: 5}, timeout: 200ms}")
    with time_machine.travel(timezone.now(), tick=True) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.FAILED
    attempts = list(Attempt.objects.filter(step_run=head(run, "a")).order_by("number"))
    assert [a.error_class for a in attempts] == [ErrorClass.TIMEOUT, ErrorClass.TIMEOUT]
    assert "ran past its timeout of 200ms" in attempts[0].error
    assert all((a.finished_at - a.started_at).total_seconds() < 2 for a in attempts)
    assert RunEvent.objects.filter(run=run, kind=EventKind.STEP_RETRYING, message__startswith="timeout").exists()


# --- fallback ----------------------------------------------------------------------------------


def test_the_fallback_takes_over_after_the_primarys_last_attempt() -> None:
    flow("    - {key: a, agent: down, input: hello}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.SUCCEEDED
    step = head(run, "a")
    assert step.output == "hello"
    assert (step.agent_name, step.fallback_from) == ("echo", "down")
    assert list(Attempt.objects.filter(step_run=step).order_by("number").values_list("agent_name", "status")) == [
        ("down", "failed"),
        ("down", "failed"),
        ("echo", "succeeded"),
    ]
    fallback = RunEvent.objects.get(run=run, kind=EventKind.STEP_FALLBACK)
    assert "fallback agent echo takes over" in fallback.message


def test_the_fallback_continues_the_steps_attempt_count_and_its_backoff() -> None:
    agents = AGENTS + (
        '  - {name: down-then-flaky, kind: python, config: {callable: "tests.agents.basic:always_down"}, fallback: flaky-fallback}\n'
        '  - {name: flaky-fallback, kind: python, config: {callable: "tests.agents.basic:flaky"}}\n'
    )
    flow(
        "    - {key: a, agent: down-then-flaky, input: {succeed_on: 5}, retry: {attempts: 2, backoff: 1s, jitter: false}}",
        agents=agents,
    )
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.FAILED  # the fallback's two tries are attempts 3 and 4
    step = head(run, "a")
    assert list(Attempt.objects.filter(step_run=step).order_by("number").values_list("number", "agent_name")) == [
        (1, "down-then-flaky"),
        (2, "down-then-flaky"),
        (3, "flaky-fallback"),
        (4, "flaky-fallback"),
    ]
    assert "temporary outage on attempt 3" in Attempt.objects.get(step_run=step, number=3).error
    delays = [e.data["delay"] for e in RunEvent.objects.filter(run=run, kind=EventKind.STEP_RETRYING).order_by("id")]
    assert delays == [1.0, 4.0], "the backoff goes on from the step's attempt count"


def test_a_step_fallback_overrides_the_agents_and_a_permanent_error_goes_to_it_at_once() -> None:
    flow("    - {key: a, agent: refuse, fallback: echo, input: 42}")
    run = drive(transitions.start_run(workflow="wf"))
    step = head(run, "a")
    assert run.status == RunStatus.SUCCEEDED and step.output == 42
    assert Attempt.objects.filter(step_run=step, agent_name="refuse").count() == 1


def test_when_the_fallback_fails_too_the_step_fails_naming_it() -> None:
    flow("    - {key: a, agent: down, fallback: refuse}")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = drive(transitions.start_run(workflow="wf"), clock=clock)
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Step 'a' (agent refuse) failed: PermanentError")


# --- circuit breaker ---------------------------------------------------------------------------


def test_a_circuit_opens_after_n_failures_sends_steps_to_the_fallback_and_closes_after_a_trial(settings: Any) -> None:
    settings.BATON_HTTP_ALLOWED_HOSTS = "127.0.0.1"
    with ScriptedServer() as server:
        server.script("/primary", Reply(503, {"error": "overloaded"}))
        agents = AGENTS + f"""  - name: primary
    kind: http
    config: {{url: "{server.url}/primary"}}
    retry: {{attempts: 1}}
    circuit: {{failures: 3, window: 1m, cooldown: 30s}}
    fallback: echo
"""
        flow("    - {key: call, agent: primary, input: {n: 1}}", agents=agents)
        with time_machine.travel(timezone.now(), tick=False) as clock:
            for _ in range(3):
                run = drive(transitions.start_run(workflow="wf"), clock=clock)
                assert head(run, "call").agent_name == "echo", "each failed call went to the fallback"
            assert len(server.seen("/primary")) == 3
            assert AgentHealth.objects.get(agent__name="primary").circuit_state == "open"

            run = drive(transitions.start_run(workflow="wf"), clock=clock)
            assert run.status == RunStatus.SUCCEEDED
            assert len(server.seen("/primary")) == 3, "an open circuit does not call the primary"
            assert not Attempt.objects.filter(step_run=head(run, "call"), agent_name="primary").exists()
            assert head(run, "call").fallback_from == "primary"

            clock.shift(31)
            server.script("/primary", Reply(200, {"ok": True}))
            run = drive(transitions.start_run(workflow="wf"), clock=clock)
            assert head(run, "call").agent_name == "primary" and head(run, "call").output == {"ok": True}
    assert AgentHealth.objects.get(agent__name="primary").circuit_state == "closed"
    assert list(AgentEvent.objects.filter(agent__name="primary").values_list("from_state", "to_state")) == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]


def test_an_open_circuit_without_a_fallback_makes_steps_wait_for_the_cooldown() -> None:
    agents = AGENTS + '  - {name: fragile, kind: python, config: {callable: "tests.agents.basic:always_down"}, retry: {attempts: 1}, circuit: {failures: 1, window: 1m, cooldown: 30s}}\n'
    flow("    - {key: a, agent: fragile}", agents=agents)
    with time_machine.travel(timezone.now(), tick=False):
        first = drive(transitions.start_run(workflow="wf"))
        assert first.status == RunStatus.FAILED
        second = drive(transitions.start_run(workflow="wf"))
        step = head(second, "a")
        assert step.status == StepStatus.RETRYING and step.error_class == ErrorClass.CIRCUIT_OPEN
        assert step.attempts == 0, "a step held back by an open circuit used no attempt"
        health = AgentHealth.objects.get(agent__name="fragile")
        assert step.next_attempt_at == health.reopens_at


# --- concurrency limits ------------------------------------------------------------------------


def test_an_agent_at_its_limit_throttles_further_claims_and_a_finished_step_frees_a_slot() -> None:
    agents = AGENTS + '  - {name: limited, kind: python, config: {callable: "tests.agents.basic:echo"}, max_concurrency: 2}\n'
    flow("    - {key: m, agent: limited, for_each: '[1, 2, 3, 4]'}", agents=agents)
    run = transitions.start_run(workflow="wf")
    items = list(StepRun.objects.filter(run=run, map_index__isnull=False).order_by("map_index"))
    claims = [transitions.claim_step(step_run_id=i.pk, worker="w") for i in items]
    assert [c is not None for c in claims] == [True, True, False, False]
    assert list(StepRun.objects.filter(run=run, map_index__isnull=False).order_by("map_index").values_list("status", "attempts")) == [
        ("running", 1),
        ("running", 1),
        ("throttled", 0),
        ("throttled", 0),
    ]
    first = claims[0]
    assert first is not None
    transitions.record_success(claim=first, output=1)
    assert StepRun.objects.get(pk=items[2].pk).status == StepStatus.QUEUED, "the oldest waiting step gets the slot"
    assert StepRun.objects.get(pk=items[3].pk).status == StepStatus.THROTTLED


# --- compensation ------------------------------------------------------------------------------


SAGA = (
    "    - {key: reserve, agent: echo, input: room-12, compensate: {agent: undo, input: 'release {{ step.output }}'}}\n"
    "    - {key: charge, agent: echo, after: [reserve], input: 50, compensate: {agent: %s, input: {refund: '{{ steps.charge.output }}'}}}\n"
    "    - {key: notify, agent: echo, after: [charge], input: sent}\n"
    "    - {key: confirm, agent: refuse, after: [notify]}"
)


def test_a_failed_run_undoes_its_completed_steps_in_reverse_order() -> None:
    flow(SAGA % "undo")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    undone = list(StepRun.objects.filter(run=run, kind="compensation").order_by("finished_at"))
    assert [(s.step_key, s.status) for s in undone] == [("charge.undo", "succeeded"), ("reserve.undo", "succeeded")]
    assert undone[0].output == {"undone": {"refund": 50}}
    assert undone[1].output == {"undone": "release room-12"}
    assert run.error.startswith("Step 'confirm' (agent refuse) failed")
    assert run.error.endswith("Compensations: charge.undo succeeded; reserve.undo succeeded.")
    kinds = list(RunEvent.objects.filter(run=run).values_list("kind", flat=True))
    assert kinds.index("run.compensating") < kinds.index("run.failed")


def test_a_failing_compensation_is_reported_loudly_and_the_others_still_run(caplog: Any) -> None:
    flow(SAGA % "broken-undo")
    with caplog.at_level(logging.ERROR, logger="baton.engine"):
        run = drive(transitions.start_run(workflow="wf"))
    assert run.status == RunStatus.FAILED
    assert "charge.undo FAILED (PermanentError: cannot undo: the record is gone" in run.error
    assert "reserve.undo succeeded" in run.error
    assert RunEvent.objects.filter(run=run, kind=EventKind.COMPENSATION_FAILED).count() == 1
    assert any("compensation 'charge.undo' failed" in r.getMessage() for r in caplog.records)


def test_a_cancelled_run_compensates_only_when_its_workflow_asks(settings: Any) -> None:
    settings.BATON_CONTINUE_SECONDS = 0  # step one worker task at a time
    flow(SAGA % "undo", extra="  on_cancel: compensate")
    run = transitions.start_run(workflow="wf")
    execute_step(head(run, "reserve").pk)
    transitions.cancel_run(run_id=run.pk)
    run = drive(run)
    assert run.status == RunStatus.CANCELLED
    assert list(StepRun.objects.filter(run=run, kind="compensation").values_list("step_key", "status")) == [
        ("reserve.undo", "succeeded")
    ]

    flow(SAGA % "undo", key="plain")
    run = transitions.start_run(workflow="plain")
    execute_step(head(run, "reserve").pk)
    transitions.cancel_run(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert not StepRun.objects.filter(run=run, kind="compensation").exists()


def test_cancelling_marks_attempts_in_flight_as_cancelled() -> None:
    flow("    - {key: a, agent: slow}")
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w")
    assert claim is not None
    transitions.cancel_run(run_id=run.pk)
    attempt = Attempt.objects.get(step_run_id=claim.step_run_id)
    assert (attempt.status, attempt.error_class) == ("failed", ErrorClass.CANCELLED)


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_twenty_parallel_steps_never_exceed_the_agents_limit_on_real_workers() -> None:
    from tests.support import WorkerCluster, wait_for

    with ScriptedServer() as server:
        server.script("/work", Reply(200, {"done": True}, delay=0.15))
        agents = AGENTS + f"""  - name: provider
    kind: http
    config: {{url: "{server.url}/work"}}
    max_concurrency: 3
"""
        flow("    - {key: fan, agent: provider, for_each: 'range(20) | list', input: {n: '{{ item }}'}}", agents=agents)
        with WorkerCluster(workers=4, env={"BATON_HTTP_ALLOWED_HOSTS": "127.0.0.1"}) as cluster:
            run = transitions.start_run(workflow="wf")

            def finished() -> bool:
                run.refresh_from_db()
                return run.is_final

            wait_for(finished, timeout=90, message=f"the fan-out\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    calls = server.seen("/work")
    retried = list(Attempt.objects.filter(step_run__run=run).exclude(error_class="").values_list("step_run__map_index", "number", "error_class", "error"))
    assert len({c.headers["idempotency-key"] for c in calls}) == 20, retried
    assert len(calls) == 20, f"a call was repeated: {retried}"
    assert server.max_in_flight <= 3
    assert server.max_in_flight == 3, "the limit is used, not just respected"
    assert RunEvent.objects.filter(run=run, kind=EventKind.STEP_THROTTLED).exists()


@pytest.mark.cluster
@pytest.mark.django_db(transaction=True)
def test_cancelling_stops_a_running_step_at_its_next_check_and_frees_the_worker() -> None:
    from tests.support import WorkerCluster, wait_for

    flow("    - {key: long, agent: slow, input: {seconds: 60}}", key="long")
    flow("    - {key: quick, agent: echo, input: 1}", key="quick")
    with WorkerCluster(workers=1) as cluster:
        long_run = transitions.start_run(workflow="long")
        wait_for(lambda: head(long_run, "long").status == StepStatus.RUNNING, timeout=30, message="the long step to start")
        transitions.cancel_run(run_id=long_run.pk)
        quick = transitions.start_run(workflow="quick")

        def finished() -> bool:
            quick.refresh_from_db()
            return quick.is_final

        # The only worker is free again long before the 60 s step would have ended.
        wait_for(finished, timeout=20, message=f"the next run on the freed worker\n{cluster.log()}")
    assert quick.status == RunStatus.SUCCEEDED
    long_run.refresh_from_db()
    assert long_run.status == RunStatus.CANCELLED
    assert head(long_run, "long").status == StepStatus.CANCELLED
