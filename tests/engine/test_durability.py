"""Durability with real django-q2 cluster processes on the configured database and broker."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from orchestration import dispatch, transitions
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.status import ErrorClass, EventKind, RunStatus, StepStatus
from tests.support import WorkerCluster, load_workflow, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

AGENTS = """
agents:
  - {name: blocker, kind: python, config: {callable: "tests.agents.durable:block_on_first_attempt"}, retry: {attempts: 3, backoff: 0s}}
  - {name: whoami, kind: python, config: {callable: "tests.agents.durable:who_am_i"}}
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
"""


def finished(run: Run) -> Run | None:
    run.refresh_from_db()
    return run if run.is_final else None


def test_a_workflow_runs_to_the_end_on_real_workers() -> None:
    load_workflow(
        AGENTS
        + """
workflow:
  key: e2e
  name: End to end
  steps:
    - {key: a, agent: whoami}
    - {key: b, agent: whoami}
    - {key: fan, agent: echo, after: [a, b], for_each: "[1, 2, 3, 4, 5, 6]", concurrency: 3}
    - {key: join, agent: echo, after: [fan], input: "{{ steps.fan.output | sum }}"}
"""
    )
    with WorkerCluster(workers=2) as cluster:
        run = transitions.start_run(workflow="e2e")
        run = wait_for(lambda: finished(run), timeout=60, message=f"run to finish\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.output == {"join": 21}


@pytest.mark.loses_messages
def test_a_worker_killed_mid_step_loses_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "victim.pid"
    load_workflow(
        AGENTS
        + f"""
workflow:
  key: victim
  name: Victim
  steps:
    - {{key: slow, agent: blocker, input: {{marker: "{marker}"}}}}
    - {{key: after, agent: whoami, after: [slow]}}
"""
    )
    with WorkerCluster(workers=2) as cluster:
        run = transitions.start_run(workflow="victim")
        victim = int(wait_for(lambda: marker.exists() and marker.read_text(), timeout=30, message="attempt 1 to start"))
        assert victim in cluster.worker_pids()
        os.kill(victim, signal.SIGKILL)
        run = wait_for(lambda: finished(run), timeout=60, message=f"recovery\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    slow = StepRun.objects.get(run=run, step_key="slow")
    assert slow.attempts == 2
    first, second = Attempt.objects.filter(step_run=slow).order_by("number")
    assert first.error_class == ErrorClass.LOST
    assert first.worker.endswith(f":{victim}")
    assert not second.worker.endswith(f":{victim}"), "the retry ran on another worker process"
    assert slow.output["pid"] != victim


@pytest.mark.loses_messages
def test_a_redo_round_whose_worker_is_killed_resumes_and_runs_only_the_named_item_again(tmp_path: Path) -> None:
    marker = tmp_path / "victim.pid"
    load_workflow(
        AGENTS
        + f"""
  - {{name: reworker, kind: python, config: {{callable: "tests.agents.durable:block_in_round_two"}}, retry: {{attempts: 3, backoff: 0s}}}}
workflow:
  key: redo-victim
  name: Redo victim
  steps:
    - {{key: work, agent: reworker, for_each: "[0, 1, 2]", input: {{marker: "{marker}"}}}}
    - key: review
      agent: echo
      after: [work]
      input: {{ok: "{{{{ iteration >= 2 }}}}"}}
      loop: {{back_to: work, until: steps.review.output.ok, redo: "[1]", max_iterations: 2}}
"""
    )
    with WorkerCluster(workers=2) as cluster:
        run = transitions.start_run(workflow="redo-victim")
        victim = int(wait_for(lambda: marker.exists() and marker.read_text(), timeout=30, message="round 2 to start"))
        assert victim in cluster.worker_pids()
        os.kill(victim, signal.SIGKILL)
        run = wait_for(lambda: finished(run), timeout=60, message=f"recovery\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    again = StepRun.objects.get(run=run, step_key="work", iteration=2, map_index=1)
    assert again.attempts == 2 and again.output["round"] == 2
    first = Attempt.objects.get(step_run=again, number=1)
    assert first.error_class == ErrorClass.LOST and first.worker.endswith(f":{victim}")
    kept = StepRun.objects.filter(run=run, step_key="work", iteration=2, map_index__in=[0, 2])
    assert [(row.status, row.attempts, row.output["round"]) for row in kept.order_by("map_index")] == [
        (StepStatus.SUCCEEDED, 0, 1),
        (StepStatus.SUCCEEDED, 0, 1),
    ]
    assert Attempt.objects.filter(step_run__run=run, agent_name="reworker").count() == 5  # 3 + the killed one + its retry


@pytest.mark.loses_messages
def test_a_task_message_lost_by_the_broker_is_sent_again() -> None:
    load_workflow(AGENTS + "workflow: {key: lost, name: Lost, steps: [{key: a, agent: whoami}, {key: b, agent: whoami, after: [a]}]}")
    broker = dispatch.broker()
    broker.purge_queue()
    run = transitions.start_run(workflow="lost")  # no worker is running: the message waits
    wait_for(lambda: broker.queue_size() >= 1, timeout=10, message="the message to reach the broker")
    broker.purge_queue()  # ... and is lost, as a Redis broker loses a message in flight
    assert broker.queue_size() == 0
    # Lost on purpose: a short requeue time, whatever the default for test clusters.
    with WorkerCluster(workers=1, env={"BATON_REQUEUE_AFTER_SECONDS": "1"}) as cluster:
        run = wait_for(lambda: finished(run), timeout=60, message=f"the ticker to re-send\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert RunEvent.objects.filter(run=run, kind=EventKind.MESSAGE_RESENT).exists()
    assert StepRun.objects.get(run=run, step_key="a").attempts == 1


def test_a_duplicate_message_runs_the_step_once(settings: Any) -> None:
    load_workflow(AGENTS + "workflow: {key: dup, name: Dup, steps: [{key: a, agent: whoami}]}")
    run = transitions.start_run(workflow="dup")
    step = StepRun.objects.get(run=run, step_key="a")
    dispatch.send_steps([step.pk, step.pk, step.pk])  # the same message three times
    with WorkerCluster(workers=2) as cluster:
        run = wait_for(lambda: finished(run), timeout=60, message=f"the run\n{cluster.log()}")
        wait_for(lambda: dispatch.broker().queue_size() == 0, timeout=30, message="the duplicates to be consumed")
    step.refresh_from_db()
    assert step.status == StepStatus.SUCCEEDED
    assert step.attempts == 1
    assert Attempt.objects.filter(step_run=step).count() == 1


FAN = """
  - {name: nap, kind: python, config: {callable: "tests.agents.durable:nap"}}
"""


def test_a_backlog_is_not_mistaken_for_lost_messages() -> None:
    # 60 items for one worker: most messages wait in the broker far longer than the requeue
    # time, and none of them is lost. The few the cluster has taken in (out of the broker, each
    # waiting for the one worker) may be away for a few items' time; the requeue time is many
    # items' time, so that a machine busy with other tests does not make them look lost.
    requeue = 4
    load_workflow(
        AGENTS
        + FAN
        + 'workflow: {key: backlog, name: Backlog, steps: [{key: fan, agent: nap, for_each: "{{ range(60) | list }}", input: {seconds: 0.1}}]}'
    )
    with WorkerCluster(workers=1, env={"BATON_REQUEUE_AFTER_SECONDS": str(requeue)}) as cluster:
        run = transitions.start_run(workflow="backlog")
        run = wait_for(lambda: finished(run), timeout=120, message=f"the backlog to drain\n{cluster.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    took = (run.finished_at - run.created_at).total_seconds()
    assert took > requeue, f"no backlog to speak of ({took:.1f} s): the test proves nothing"
    assert not RunEvent.objects.filter(run=run, kind=EventKind.MESSAGE_RESENT).exists()


def test_a_killed_steps_retry_goes_ahead_of_a_backlog(tmp_path: Path) -> None:
    if not os.environ.get("REDIS_URL"):
        pytest.skip("the ORM broker has no head of the queue to put a retry at")
    marker = tmp_path / "victim.pid"
    load_workflow(AGENTS + FAN + f'workflow: {{key: victim-first, name: Victim, steps: [{{key: slow, agent: blocker, input: {{marker: "{marker}"}}}}]}}')
    load_workflow(
        AGENTS
        + FAN
        + 'workflow: {key: big-fan, name: Big fan, steps: [{key: fan, agent: nap, for_each: "{{ range(120) | list }}", input: {seconds: 0.1}}]}'
    )
    with WorkerCluster(workers=2, env={"BATON_REQUEUE_AFTER_SECONDS": "600"}) as cluster:
        victim_run = transitions.start_run(workflow="victim-first")
        victim = int(wait_for(lambda: marker.exists() and marker.read_text(), timeout=30, message="attempt 1 to start"))
        backlog = transitions.start_run(workflow="big-fan")
        os.kill(victim, signal.SIGKILL)
        victim_run = wait_for(lambda: finished(victim_run), timeout=120, message=f"the retry\n{cluster.log()}")
        backlog = wait_for(lambda: finished(backlog), timeout=120, message=f"the backlog\n{cluster.log()}")
    assert victim_run.status == RunStatus.SUCCEEDED, victim_run.error
    assert backlog.status == RunStatus.SUCCEEDED, backlog.error
    retry = Attempt.objects.get(step_run__run=victim_run, number=2)
    fan_started = sorted(Attempt.objects.filter(step_run__run=backlog).values_list("started_at", flat=True))
    assert len(fan_started) == 120
    # The retry ran as soon as its lease had run out, not after the items queued before it.
    waited_behind = sum(1 for started in fan_started if started < retry.started_at)
    assert waited_behind < 80, f"the retry started after {waited_behind} of the 120 items queued before it"


def test_a_durable_sleep_survives_its_worker_being_killed_and_ends_on_the_next_worker() -> None:
    load_workflow(
        AGENTS
        + """
workflow:
  key: nap
  name: Nap
  steps:
    - {key: before, agent: echo, input: 1}
    - {key: sleep, after: [before], wait: {duration: 5s}}
    - {key: after, agent: echo, after: [sleep], input: 2}
"""
    )
    first = WorkerCluster(workers=1).start()
    try:
        run = transitions.start_run(workflow="nap")
        wait_for(
            lambda: StepRun.objects.filter(run=run, step_key="sleep", status=StepStatus.WAITING).exists(),
            timeout=30,
            message=f"the sleep to begin\n{first.log()}",
        )
        # Every process of the cluster, ticker included, dies at once: the wake-up time is
        # all that is left, in the database.
        assert first.process is not None
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=10)
    finally:
        first.stop()
    assert StepRun.objects.get(run=run, step_key="sleep").status == StepStatus.WAITING
    with WorkerCluster(workers=1) as second:
        run = wait_for(lambda: finished(run), timeout=60, message=f"run to finish\n{second.log()}")
    assert run.status == RunStatus.SUCCEEDED, run.error
    sleep = StepRun.objects.get(run=run, step_key="sleep")
    assert sleep.output == {"waited": "5s"}
    assert RunEvent.objects.filter(run=run, step_run=sleep, kind=EventKind.STEP_SUCCEEDED).count() == 1
