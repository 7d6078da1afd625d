"""orchestration.reads: the latest round of each step, whatever order its rows come in."""

from __future__ import annotations

import pytest

from orchestration import transitions
from orchestration.models import StepKind, StepRun
from orchestration.reads import head_rows, latest_heads
from tests.support import drive, load_workflow


def test_the_latest_round_of_each_step_wins_in_any_order() -> None:
    first = StepRun(step_key="write", iteration=1)
    second = StepRun(step_key="write", iteration=2)
    review = StepRun(step_key="review", iteration=1)
    for rows in ([first, second, review], [second, review, first]):
        assert latest_heads(rows) == {"write": second, "review": review}


def test_a_compensation_is_a_step_of_its_own() -> None:
    step = StepRun(step_key="pay", iteration=1)
    undo = StepRun(step_key="pay.undo", iteration=1, kind=StepKind.COMPENSATION)
    assert latest_heads([step, undo]) == {"pay": step, "pay.undo": undo}


MAPPED = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
workflow:
  key: mapped
  name: Mapped
  steps:
    - {key: research, agent: echo}
    - {key: summarise, agent: echo, after: [research], for_each: "{{ ['news', 'weather'] }}", input: {text: "{{ item }}"}}
"""


@pytest.mark.django_db
def test_head_rows_leave_out_the_items_of_a_for_each() -> None:
    load_workflow(MAPPED)
    run = drive(transitions.start_run(workflow="mapped", input={}))
    assert [row.step_key for row in head_rows(run)] == ["research", "summarise"]
    assert StepRun.objects.filter(run=run, map_index__isnull=False).count() == 2
