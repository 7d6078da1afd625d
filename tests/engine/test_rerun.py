"""Rerun: a new run of the same version (or the latest), with the same or edited input, linked."""

from __future__ import annotations

from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import RunEvent
from orchestration.status import EventKind, RunStatus
from tests.engine.test_retry_run import flow
from tests.support import drive

pytestmark = pytest.mark.django_db

STEPS = "    - {key: a, agent: echo, input: {n: '{{ input.n }}', v: %d}}"
INPUTS = "  inputs: {n: {type: integer, required: true}}\n  output: '{{ steps.a.output }}'"


def test_a_rerun_is_a_new_run_of_the_same_version_with_the_same_input_linked_to_the_original(ops: Any) -> None:
    flow(STEPS % 1, extra=INPUTS)
    original = drive(transitions.start_run(workflow="wf", input={"n": 5}))
    flow(STEPS % 2, extra=INPUTS)  # a newer version is published meanwhile
    again = drive(transitions.rerun(run_id=original.pk, actor=ops))
    assert again.pk != original.pk and again.rerun_of == original and list(original.reruns.all()) == [again]
    assert (again.version, again.input, again.output) == (original.version, {"n": 5}, {"n": 5, "v": 1})
    assert (again.trigger, again.started_by) == ("rerun", ops)
    event = RunEvent.objects.get(run=original, kind=EventKind.RUN_RERUN)
    assert event.actor == ops and event.message == f"rerun as run {again.pk} (version 1)"


def test_a_rerun_may_take_the_latest_version_and_an_edited_input() -> None:
    flow(STEPS % 1, extra=INPUTS)
    original = drive(transitions.start_run(workflow="wf", input={"n": 5}))
    flow(STEPS % 2, extra=INPUTS)
    again = drive(transitions.rerun(run_id=original.pk, input={"n": 7}, latest=True))
    assert again.status == RunStatus.SUCCEEDED and again.output == {"n": 7, "v": 2}


def test_an_edited_input_is_checked_against_the_versions_inputs_and_nothing_is_started() -> None:
    flow(STEPS % 1, extra=INPUTS)
    original = drive(transitions.start_run(workflow="wf", input={"n": 5}))
    with pytest.raises(ValueError, match="input `n`: required"):
        transitions.rerun(run_id=original.pk, input={"other": 1})
    assert not original.reruns.exists()


def test_a_sub_workflow_run_is_rerun_through_the_run_that_called_it() -> None:
    flow("    - {key: w, agent: echo, input: 1}", key="worker")
    flow("    - {key: sub, workflow: worker}", key="manager")
    run = drive(transitions.start_run(workflow="manager"))
    child = run.steps.get(step_key="sub").child_runs.get()
    with pytest.raises(transitions.InvalidTransition, match=f"rerun run {run.pk}"):
        transitions.rerun(run_id=child.pk)
