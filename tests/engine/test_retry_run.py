"""Retry from failure: a failed or cancelled run resumes where it stopped, on every pattern."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.status import EventKind, RunStatus, StepStatus
from orchestration.tasks import execute_step
from tests.support import drive, load_workflow

pytestmark = pytest.mark.django_db

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: refuse, kind: python, config: {callable: "tests.agents.basic:refuse"}}
  - {name: fails-first, kind: python, config: {callable: "tests.agents.basic:fails_first"}, retry: {attempts: 1}}
  - {name: editor, kind: python, config: {callable: "tests.agents.basic:editor"}}
  - {name: picky, kind: python, config: {callable: "tests.approvals.conftest:picky"}, retry: {attempts: 1}}
  - {name: undo, kind: python, config: {callable: "tests.agents.basic:echo"}}
"""


def flow(steps: str, *, key: str = "wf", extra: str = "") -> None:
    load_workflow(AGENTS + f"workflow:\n  key: {key}\n  name: {key}\n{extra}\n  steps:\n{steps}\n")


def head(run: Run, key: str, iteration: int | None = None) -> StepRun:
    rows = StepRun.objects.filter(run=run, step_key=key, map_index__isnull=True)
    if iteration is not None:
        return rows.get(iteration=iteration)
    return rows.order_by("-iteration").first()  # type: ignore[return-value]


def failed(workflow: str = "wf", **start: Any) -> Run:
    run = drive(transitions.start_run(workflow=workflow, **start))
    assert run.status == RunStatus.FAILED, run.error
    return run


def retried(run: Run, **given: Any) -> Run:
    transitions.retry_run(run_id=run.pk, **given)
    return drive(run)


def test_a_failed_step_runs_again_and_the_steps_after_it_run_for_the_first_time(ops: Any) -> None:
    flow(
        "    - {key: a, agent: echo, input: {n: 1}}\n"
        "    - {key: b, agent: fails-first, after: [a], input: '{{ steps.a.output }}'}\n"
        "    - {key: c, agent: echo, after: [b], input: '{{ steps.b.output }}'}"
    )
    run = failed()
    a_finished = head(run, "a").finished_at
    run = retried(run, actor=ops, reason="the service is back")
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "a").finished_at == a_finished and head(run, "a").attempts == 1, "a is not run again"
    assert head(run, "b").attempts == 2 and head(run, "c").output == {"n": 1, "attempt": 2}
    event = RunEvent.objects.get(run=run, kind=EventKind.RUN_RETRIED)
    assert (event.actor, event.from_status, event.to_status) == (ops, RunStatus.FAILED, RunStatus.RUNNING)
    assert event.message == "retried by ops: the service is back"


def test_only_the_failed_map_item_runs_again_and_the_others_keep_their_outputs() -> None:
    flow(
        "    - {key: m, agent: fails-first, for_each: '[0, 1, 2]', input: {i: '{{ item }}', only: 1}}",
        extra="  output: '{{ steps.m.output }}'",
    )
    run = failed()
    items = {row.map_index: row for row in StepRun.objects.filter(run=run, map_index__isnull=False)}
    assert items[1].status == StepStatus.FAILED
    run = retried(run)
    assert run.status == RunStatus.SUCCEEDED
    attempts = dict(StepRun.objects.filter(run=run, map_index__isnull=False).values_list("map_index", "attempts"))
    assert attempts[1] == 2, "the failed item got a new attempt, counted after its first"
    assert run.output[1] == {"i": 1, "only": 1, "attempt": 2}
    kept = StepRun.objects.get(pk=items[0].pk)
    assert items[0].status == StepStatus.SUCCEEDED
    assert (kept.attempts, kept.output, kept.finished_at) == (1, items[0].output, items[0].finished_at), "not run again"
    assert items[2].status == StepStatus.CANCELLED and attempts[2] == 1, "cancelled with the map, it ran once now"
    assert Attempt.objects.filter(step_run=items[1]).count() == 2


def test_a_map_with_concurrency_runs_its_failed_items_again_held_to_its_slots(settings: Any) -> None:
    settings.BATON_CONTINUE_SECONDS = 0
    flow(
        "    - {key: m, agent: fails-first, for_each: '[0, 1, 2, 3]', concurrency: 1, input: {i: '{{ item }}', only: 1}}",
        extra="  output: '{{ steps.m.output }}'",
    )
    run = failed()
    items = dict(StepRun.objects.filter(run=run, map_index__isnull=False).values_list("map_index", "status"))
    assert items == {0: "succeeded", 1: "failed", 2: "cancelled", 3: "cancelled"}
    transitions.retry_run(run_id=run.pk)
    queued = list(StepRun.objects.filter(run=run, status=StepStatus.QUEUED).values_list("map_index", flat=True))
    assert queued == [1], "one slot: the others wait their turn"
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED and [o["i"] for o in run.output] == [0, 1, 2, 3]


def test_a_failed_step_inside_a_loop_runs_again_in_the_round_it_failed_in() -> None:
    flow(
        "    - {key: write, agent: echo, input: {round: '{{ iteration }}'}}\n"
        "    - key: edit\n"
        "      agent: editor\n"
        "      after: [write]\n"
        "      input: {approve_on: 2}\n"
        "      loop: {back_to: write, until: steps.edit.output.ok, max_iterations: 3}\n"
        "    - {key: check, agent: fails-first, after: [edit], input: {fail: '{{ iteration == 1 }}'}}\n"
        "    - {key: publish, agent: echo, after: [check], input: '{{ steps.write.output }}'}"
    )
    run = failed()
    assert head(run, "check").status == StepStatus.FAILED
    rounds = list(StepRun.objects.filter(run=run, step_key="write").values_list("iteration", "finished_at"))
    run = retried(run)
    assert run.status == RunStatus.SUCCEEDED
    assert list(StepRun.objects.filter(run=run, step_key="write").values_list("iteration", "finished_at")) == rounds
    assert head(run, "publish").output == {"round": 2}


def test_a_failed_step_in_a_loop_round_runs_again_in_that_round() -> None:
    flow(
        "    - {key: write, agent: fails-first, input: {round: '{{ iteration }}', fail: '{{ iteration == 2 }}'}}\n"
        "    - key: edit\n"
        "      agent: editor\n"
        "      after: [write]\n"
        "      input: {approve_on: 2}\n"
        "      loop: {back_to: write, until: steps.edit.output.ok, max_iterations: 3}"
    )
    run = failed()
    assert head(run, "write").iteration == 2 and head(run, "write").status == StepStatus.FAILED
    assert head(run, "edit").iteration == 2 and head(run, "edit").status == StepStatus.CANCELLED
    run = retried(run)
    assert run.status == RunStatus.SUCCEEDED
    assert list(StepRun.objects.filter(run=run, step_key="write").values_list("iteration", "attempts")) == [(1, 1), (2, 2)]
    assert head(run, "edit", 2).output == {"ok": True, "round": 2}


WORKER = (
    "    - {key: prep, agent: echo, input: {part: '{{ input.part }}'}}\n"
    "    - {key: w, agent: fails-first, after: [prep], input: '{{ steps.prep.output }}'}"
)


def test_a_failed_sub_workflow_step_resumes_its_child_run_from_the_childs_failure() -> None:
    flow(WORKER, key="worker", extra="  inputs: {part: {type: string, default: x}}\n  output: '{{ steps.w.output.part }} done'")
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: sub, workflow: worker, after: [a], input: {part: intro}}", key="manager", extra="  output: '{{ steps.sub.output }}'")
    run = failed("manager")
    child = Run.objects.get(parent_step__run=run)
    assert child.status == RunStatus.FAILED
    run = retried(run)
    assert run.status == RunStatus.SUCCEEDED and run.output == "intro done"
    child.refresh_from_db()
    assert child.status == RunStatus.SUCCEEDED and Run.objects.filter(parent_step__run=run).count() == 1
    assert [head(child, key).attempts for key in ("prep", "w")] == [1, 2], "the child's finished step is kept"


def test_a_sub_workflow_step_retried_with_edited_input_starts_a_new_child_run() -> None:
    flow("    - {key: w, agent: fails-first, input: {part: '{{ input.part }}', fail: '{{ input.fail }}'}}", key="worker", extra="  inputs: {part: {type: string, default: x}, fail: {type: boolean, default: true}}\n  output: '{{ steps.w.output.part }} done'")
    flow("    - {key: sub, workflow: worker, input: {part: intro}}", key="manager", extra="  output: '{{ steps.sub.output }}'")
    run = failed("manager")
    run = retried(run, inputs={"sub": {"part": "outro", "fail": False}})
    assert run.status == RunStatus.SUCCEEDED and run.output == "outro done"
    children = list(Run.objects.filter(parent_step__run=run).order_by("id").values_list("status", flat=True))
    assert children == [RunStatus.FAILED, RunStatus.SUCCEEDED], "the failed child stays as the record"


def test_a_sub_workflow_run_itself_is_retried_through_its_parent() -> None:
    flow("    - {key: w, agent: refuse}", key="worker")
    flow("    - {key: sub, workflow: worker}", key="manager")
    run = failed("manager")
    child = Run.objects.get(parent_step__run=run)
    with pytest.raises(transitions.InvalidTransition, match=f"retry run {run.pk}"):
        transitions.retry_run(run_id=child.pk)


def test_after_a_parallel_branch_only_the_failed_step_runs_again() -> None:
    flow(
        "    - {key: left, agent: echo, input: L}\n"
        "    - {key: right, agent: echo, input: R}\n"
        "    - {key: join, agent: fails-first, after: [left, right]}"
    )
    run = failed()
    branches = {key: head(run, key).finished_at for key in ("left", "right")}
    run = retried(run)
    assert run.status == RunStatus.SUCCEEDED
    assert {key: head(run, key).finished_at for key in ("left", "right")} == branches
    assert [head(run, key).attempts for key in ("left", "right", "join")] == [1, 1, 2]


def test_a_parallel_branch_cancelled_when_the_other_failed_runs_again_and_the_finished_one_does_not() -> None:
    flow(
        "    - {key: done, agent: echo, input: 1}\n"
        "    - {key: bad, agent: fails-first}\n"
        "    - {key: slow, agent: echo, input: 2}\n"
        "    - {key: join, agent: echo, after: [done, bad, slow]}"
    )
    run = transitions.start_run(workflow="wf")
    execute_step(head(run, "done").pk)
    execute_step(head(run, "bad").pk)  # fails the run while `slow` is still queued
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED and head(run, "slow").status == StepStatus.CANCELLED
    run = retried(run)
    assert run.status == RunStatus.SUCCEEDED
    assert [head(run, key).attempts for key in ("done", "bad", "slow")] == [1, 2, 1]


def test_a_cancelled_run_resumes_with_what_was_unfinished() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: gate, wait: {event: go}, after: [a]}\n    - {key: b, agent: echo, after: [gate], input: 2}")
    run = drive(transitions.start_run(workflow="wf"))
    transitions.cancel_run(run_id=run.pk, reason="wrong day")
    run = retried(run)
    assert run.status == RunStatus.RUNNING and head(run, "gate").status == StepStatus.WAITING
    assert transitions.signal_event(run_id=run.pk, event_name="go") == 1
    run = drive(run)
    assert run.status == RunStatus.SUCCEEDED and head(run, "a").attempts == 1


def test_a_retry_with_edited_input_runs_the_failed_step_with_it() -> None:
    flow("    - {key: a, agent: picky, input: {ok: false}}\n    - {key: b, agent: echo, after: [a]}")
    run = failed()
    with pytest.raises(transitions.InvalidTransition, match="only the input of a failed"):
        transitions.retry_run(run_id=run.pk, inputs={"b": 1})  # b never ran: it has no input to edit
    run = retried(run, inputs={"a": {"ok": True}})
    assert run.status == RunStatus.SUCCEEDED
    assert head(run, "a").input == {"ok": True} and head(run, "b").output == {"a": {"done": {"ok": True}}}
    assert RunEvent.objects.get(run=run, kind=EventKind.RUN_RETRIED).data["edited_input"] == ["a"]


def test_an_edited_input_is_checked_like_any_input(settings: Any) -> None:
    settings.BATON_MAX_INPUT_BYTES = 100
    flow("    - {key: a, agent: refuse}")
    run = failed()
    with pytest.raises(ValueError, match="input of step 'a'"):
        transitions.retry_run(run_id=run.pk, inputs={"a": "x" * 200})
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED


@pytest.mark.parametrize("ending", ["running", "succeeded"])
def test_a_run_that_is_not_failed_or_cancelled_is_refused_with_the_reason(ending: str) -> None:
    flow("    - {key: a, wait: {event: go}}" if ending == "running" else "    - {key: a, agent: echo, input: 1}")
    run = drive(transitions.start_run(workflow="wf"))
    assert run.status == ending
    with pytest.raises(transitions.InvalidTransition, match=f"run {run.pk} is {ending}: only a failed or cancelled run can be retried"):
        transitions.retry_run(run_id=run.pk)
    assert not RunEvent.objects.filter(run=run, kind=EventKind.RUN_RETRIED).exists()


def test_a_compensated_run_is_refused_because_its_work_was_undone() -> None:
    flow(
        "    - {key: a, agent: echo, input: 1, compensate: {agent: undo}}\n"
        "    - {key: b, agent: refuse, after: [a]}"
    )
    run = failed()
    assert StepRun.objects.filter(run=run, step_key="a.undo", status=StepStatus.SUCCEEDED).exists()
    with pytest.raises(transitions.InvalidTransition, match="compensations ran"):
        transitions.retry_run(run_id=run.pk)
