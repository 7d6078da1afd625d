"""One unit of work per state change: the engine picks the step a worker continues with, every
step's status change is in the run's timeline, and effects reach the world only after commit."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from django.utils import timezone

from orchestration import dispatch, transitions
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.status import AttemptStatus, EventKind, RunStatus, StepStatus
from orchestration.tasks import execute_step
from orchestration.ticker import tick
from orchestration.work import Work
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: limited, kind: python, config: {callable: "tests.agents.basic:echo"}, max_concurrency: 1}
  - {name: flaky, kind: python, config: {callable: "tests.agents.basic:flaky"}, retry: {attempts: 3, backoff: 1s, jitter: false}}
"""


def flow(steps: str, *, key: str = "wf") -> None:
    load_workflow(AGENTS + f"workflow:\n  key: {key}\n  name: {key}\n  steps:\n{steps}\n")


def head(run: Run, key: str) -> StepRun:
    return StepRun.objects.get(run=run, step_key=key, map_index__isnull=True)


@pytest.fixture
def empty_broker() -> Iterator[Any]:
    broker = dispatch.broker()
    broker.purge_queue()
    yield broker
    broker.purge_queue()


@pytest.mark.django_db(transaction=True)
def test_the_worker_that_finishes_a_step_continues_with_its_own_run_and_a_freed_slot_goes_to_the_broker(
    empty_broker: Any,
) -> None:
    flow("    - {key: a, agent: limited, input: 1}\n    - {key: b, agent: echo, after: [a], input: 2}")
    first, second = transitions.start_run(workflow="wf"), transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(first, "a").pk, worker="w1")
    assert claim is not None
    assert transitions.claim_step(step_run_id=head(second, "a").pk, worker="w2") is None
    assert head(second, "a").status == StepStatus.THROTTLED, "run 2's `a` waits for the one slot"
    empty_broker.purge_queue()

    taken = transitions.record_success_and_take_next(claim=claim, output=1, worker="w1")

    assert taken is not None and taken.step_run_id == head(first, "b").pk, "w1 goes on with run 1's `b`"
    assert head(first, "b").status == StepStatus.RUNNING
    assert head(second, "a").status == StepStatus.QUEUED, "the freed slot went to run 2's `a`"
    assert dispatch.queued_step_ids() == {head(second, "a").pk}, "... whose message is in the broker"


@pytest.mark.django_db(transaction=True)
def test_a_worker_continues_with_nothing_when_its_run_queues_several_steps(empty_broker: Any) -> None:
    flow(
        "    - {key: a, agent: echo, input: 1}\n"
        "    - {key: b, agent: echo, after: [a], input: 2}\n"
        "    - {key: c, agent: echo, after: [a], input: 3}"
    )
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    assert claim is not None
    empty_broker.purge_queue()
    assert transitions.record_success_and_take_next(claim=claim, output=1, worker="w1") is None
    assert dispatch.queued_step_ids() == {head(run, "b").pk, head(run, "c").pk}, "a fan-out is for every worker"


def test_the_step_a_worker_continues_with_is_inserted_claimed_as_a_claim_would_leave_it(settings: Any) -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, after: [a], input: {n: '{{ (1, 2) }}'}}")
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    assert claim is not None
    before = timezone.now()

    taken = transitions.record_success_and_take_next(claim=claim, output=1, worker="w1")

    b = head(run, "b")
    assert taken is not None and taken.step_run_id == b.pk
    assert (b.status, b.attempts, b.claim_token) == (StepStatus.RUNNING, 1, taken.token)
    assert b.started_at is not None and b.lease_expires_at is not None
    assert b.lease_expires_at >= before + timedelta(seconds=settings.BATON_LEASE_SECONDS), "it has a lease"
    attempts = list(Attempt.objects.filter(step_run=b).values_list("number", "worker", "status"))
    assert attempts == [(1, "w1", AttemptStatus.RUNNING)], "and its attempt, as a claim would"
    assert taken.attempt == 1
    assert taken.input == b.input == {"n": [1, 2]}, "the worker gets the input as the database stored it"
    events = RunEvent.objects.filter(run=run, step_run=b).order_by("id")
    assert list(events.values_list("kind", "from_status", "to_status", "message")) == [
        (EventKind.STEP_QUEUED, "", StepStatus.QUEUED, ""),
        (EventKind.STEP_STARTED, StepStatus.QUEUED, StepStatus.RUNNING, "attempt 1 on w1"),
    ]


@pytest.mark.django_db(transaction=True)
def test_a_next_step_of_a_guarded_agent_is_claimed_under_its_guard(empty_broker: Any) -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: limited, after: [a], input: 2}")
    first, second = transitions.start_run(workflow="wf"), transitions.start_run(workflow="wf")
    claims = [transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1") for run in (first, second)]
    assert claims[0] is not None and claims[1] is not None

    taken = transitions.record_success_and_take_next(claim=claims[0], output=1, worker="w1")
    assert taken is not None and head(first, "b").status == StepStatus.RUNNING, "`limited` had its one slot free"

    assert transitions.record_success_and_take_next(claim=claims[1], output=1, worker="w1") is None
    assert head(second, "b").status == StepStatus.THROTTLED, "the slot is taken: the guard held it back"
    assert not Attempt.objects.filter(step_run=head(second, "b")).exists()


def status_paths(run: Run) -> dict[int, list[str]]:
    """Each step's statuses as its events tell them, from the status it was created in."""
    paths: dict[int, list[str]] = {}
    for event in RunEvent.objects.filter(run=run, step_run__isnull=False).order_by("id"):
        if not event.to_status:
            continue
        path = paths.setdefault(event.step_run_id, [event.from_status] if event.from_status else [])
        assert not event.from_status or not path or path[-1] == event.from_status, (
            f"{event.kind} of step {event.step_run_id} starts from {event.from_status}, but its "
            f"last recorded status is {path[-1]}: a move in between has no event"
        )
        path.append(event.to_status)
    return paths


def test_every_status_change_of_every_step_is_in_the_timeline() -> None:
    flow(
        "    - {key: shaky, agent: flaky, input: {succeed_on: 2}}\n"
        "    - {key: fan, agent: limited, after: [shaky], for_each: '[1, 2, 3, 4]', concurrency: 2}"
    )
    with time_machine.travel(timezone.now(), tick=False) as clock:
        run = transitions.start_run(workflow="wf")
        execute_step(head(run, "shaky").pk)  # its first attempt fails: it retries in 1 s
        clock.shift(2)
        tick()
        execute_step(head(run, "shaky").pk)  # the retry succeeds: the map starts, two at a time
        first, second = StepRun.objects.filter(run=run, status=StepStatus.QUEUED).order_by("map_index")
        claim = transitions.claim_step(step_run_id=first.pk, worker="w1")
        assert claim is not None
        assert transitions.claim_step(step_run_id=second.pk, worker="w2") is None, "`limited` has one slot"
        transitions.record_success(claim=claim, output=1)
        run = drive(run, clock=clock)
    assert run.status == RunStatus.SUCCEEDED, run.error

    paths = status_paths(run)
    steps = list(StepRun.objects.filter(run=run))
    for step in steps:
        assert paths[step.pk][-1] == step.status, f"step {step.step_key}[{step.map_index}] ends {step.status}"
    assert paths[head(run, "shaky").pk] == ["queued", "running", "retrying", "queued", "running", "succeeded"]
    items = [s for s in steps if s.map_index is not None]
    moves = {tuple(paths[item.pk][i : i + 2]) for item in items for i in range(len(paths[item.pk]) - 1)}
    assert ("pending", "queued") in moves, "items held back by `concurrency` are let in with an event"
    assert ("running", "throttled") in moves and ("throttled", "queued") in moves, "the one slot throttled an item"


def test_a_cancelled_run_records_the_cancel_of_each_of_its_unfinished_steps() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, input: 2}")
    run = transitions.start_run(workflow="wf")
    transitions.cancel_run(run_id=run.pk, reason="not needed")
    cancelled = RunEvent.objects.filter(run=run, kind=EventKind.STEP_CANCELLED)
    assert sorted(cancelled.values_list("step_run__step_key", "from_status", "to_status")) == [
        ("a", "queued", "cancelled"),
        ("b", "queued", "cancelled"),
    ]


def test_nothing_is_sent_for_a_change_that_rolls_back(django_capture_on_commit_callbacks: Any) -> None:
    flow("    - {key: a, agent: echo, input: 1}")
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(RuntimeError), transaction.atomic():
        transitions.start_run(workflow="wf")
        raise RuntimeError("the caller's transaction fails after the run was started")
    assert callbacks == []
    assert not Run.objects.exists()


def test_a_change_that_joins_another_writes_nothing_until_the_outer_one_ends(
    django_capture_on_commit_callbacks: Any,
) -> None:
    flow("    - {key: a, agent: echo, input: 1}")
    run = transitions.start_run(workflow="wf")
    before = RunEvent.objects.filter(run=run).count()
    with django_capture_on_commit_callbacks() as callbacks, transitions.change() as outer:
        outer.event(run, EventKind.STEP_LOOPED, message="outer")
        with transitions.change(outer) as inner:
            assert inner is outer
            inner.event(run, EventKind.STEP_LOOPED, message="inner")
        assert RunEvent.objects.filter(run=run).count() == before, "events are written once, at the end"
    assert RunEvent.objects.filter(run=run).count() == before + 2
    applied = [c for c in callbacks if getattr(c, "func", None) is transitions.apply]
    assert len(applied) == 1 and isinstance(applied[0].args[0], Work)


@pytest.mark.django_db(transaction=True)
def test_a_result_that_waited_for_its_runs_lock_while_the_run_was_cancelled_is_refused() -> None:
    """The hand-off locks the run and records the result in one statement on PostgreSQL: it
    must still wait for the run's lock before it touches the step, and then see the cancel."""
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: echo, after: [a], input: 2}")
    run = transitions.start_run(workflow="wf")
    claim = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    assert claim is not None
    cancelled, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def cancel() -> None:
        try:
            with transaction.atomic():  # holds the run's lock until released
                transitions.cancel_run(run_id=run.pk, reason="not needed")
                cancelled.set()
                release.wait(timeout=10)
        finally:
            connection.close()

    def record() -> None:
        try:
            results["taken"] = transitions.record_success_and_take_next(claim=claim, output=1, worker="w1")
        except Exception as exc:
            results["taken"] = exc
        finally:
            connection.close()

    canceller = threading.Thread(target=cancel)
    canceller.start()
    assert cancelled.wait(timeout=10)
    recorder = threading.Thread(target=record)
    recorder.start()
    recorder.join(timeout=0.5)
    assert recorder.is_alive(), "the result waits for the run's lock"
    release.set()
    canceller.join(timeout=10)
    recorder.join(timeout=10)
    assert not canceller.is_alive() and not recorder.is_alive(), "a lock-order deadlock?"

    assert results["taken"] is None, results
    a = head(run, "a")
    assert a.status == StepStatus.CANCELLED and a.output is None, "the late result did not count"
    assert list(Attempt.objects.filter(step_run=a).values_list("status", flat=True)) == [AttemptStatus.FAILED]
    assert not StepRun.objects.filter(run=run, step_key="b").exists()


@pytest.mark.django_db(transaction=True)
def test_the_last_of_two_parallel_steps_to_finish_starts_their_join_even_if_it_waited_for_the_other() -> None:
    """On PostgreSQL the hand-off reads the heads in the round trip that takes the run's lock:
    that read must see what the transition it waited for committed, or the join never starts."""
    flow(
        "    - {key: a, agent: echo, input: 1}\n"
        "    - {key: b, agent: echo, input: 2}\n"
        "    - {key: c, agent: echo, after: [a, b], input: 3}"
    )
    run = transitions.start_run(workflow="wf")
    claim_a = transitions.claim_step(step_run_id=head(run, "a").pk, worker="w1")
    claim_b = transitions.claim_step(step_run_id=head(run, "b").pk, worker="w2")
    assert claim_a is not None and claim_b is not None
    recorded, release = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def first() -> None:
        try:
            with transaction.atomic():  # holds the run's lock until released
                results["a"] = transitions.record_success_and_take_next(claim=claim_a, output=1, worker="w1")
                recorded.set()
                release.wait(timeout=10)
        finally:
            connection.close()

    def second() -> None:
        try:
            results["b"] = transitions.record_success_and_take_next(claim=claim_b, output=2, worker="w2")
        except Exception as exc:
            results["b"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert recorded.wait(timeout=10)
    threads[1].start()
    threads[1].join(timeout=0.5)
    assert threads[1].is_alive(), "b's result waits for the run's lock"
    release.set()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive(), "a lock-order deadlock?"

    assert results["a"] is None, "a finished first: c still waited for b"
    c = head(run, "c")
    assert results["b"] is not None and results["b"].step_run_id == c.pk, "b's worker goes on with c"
    assert c.status == StepStatus.RUNNING
    assert StepRun.objects.filter(run=run, step_key="c").count() == 1
