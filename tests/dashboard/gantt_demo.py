"""A launch run played through the real transitions on a moving clock, for the Gantt timeline.

Every move is the one a worker, the ticker or an approver makes (claim, record a failure or a
success, queue a due retry, vote), so the events and attempt rows are the engine's own; only
time is the test's: time_machine moves it between moves instead of anyone sleeping. The run
has a retry after a failed attempt, an approval wait, a step throttled behind its agent's
limit of one, and a for_each over three items.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import time_machine

from approvals import transitions as approvals
from approvals.models import Item
from orchestration import transitions
from orchestration.models import Run, StepRun
from orchestration.ticker import tick
from tests.support import load_workflow

LAUNCH = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: writer, kind: python, config: {callable: "tests.agents.basic:echo"}, retry: {attempts: 3, backoff: 20s, jitter: false}}
  - {name: translator, kind: python, config: {callable: "tests.agents.basic:echo"}, max_concurrency: 1}
workflow:
  key: launch
  name: Product launch
  owner: ops
  steps:
    - {key: research, agent: echo, input: {topic: tide clocks}}
    - {key: draft, agent: writer, after: [research], input: {topic: tide clocks}}
    - key: legal_review
      after: [draft]
      approval: {title: "Publish the launch post?", approvers: {users: [approver]}, deadline: 4h}
    - {key: translate_fr, agent: translator, after: [legal_review], input: {lang: fr}}
    - {key: translate_de, agent: translator, after: [legal_review], input: {lang: de}}
    - {key: sections, agent: echo, after: [translate_fr, translate_de], for_each: "{{ ['intro', 'pricing', 'faq'] }}", input: {part: "{{ item }}"}}
"""


def head(run: Run, key: str) -> StepRun:
    return StepRun.objects.get(run=run, step_key=key, map_index__isnull=True)


class Launch:
    """The launch run, moved on step by step; `clock` is a time_machine traveller (tick=False)."""

    def __init__(self, clock: Any, ops: Any, approver: Any):
        self.clock = clock
        self.approver = approver
        if load_workflow(LAUNCH) is None:
            raise AssertionError("the launch workflow did not load")
        self.run = transitions.start_run(workflow="launch", started_by=ops)

    def wait(self, seconds: float) -> None:
        self.clock.shift(timedelta(seconds=seconds))

    def work(self, step: StepRun, *, seconds: float, worker: str = "w1", fail: str = "") -> None:
        """A worker claims the step, works `seconds`, and records a success or a failure."""
        claim = transitions.claim_step(step_run_id=step.pk, worker=worker)
        assert claim is not None, f"{step} could not be claimed"
        self.wait(seconds)
        if fail:
            transitions.record_failure(claim=claim, error_class="transient", message=fail)
        else:
            transitions.record_success(claim=claim, output={"done": step.step_key})

    def until_approval(self) -> None:
        """research, then draft failing once and succeeding after its backoff; legal waits."""
        self.wait(2)
        self.work(head(self.run, "research"), seconds=4)
        self.wait(1.5)
        self.work(head(self.run, "draft"), seconds=6.4, fail="TimeoutError: the model took longer than 6s")
        self.wait(20)
        tick()
        self.wait(0.8)
        self.work(head(self.run, "draft"), seconds=7.2, worker="w2")

    def approve(self, *, after: float) -> None:
        self.wait(after)
        item = Item.objects.get(run=self.run)
        approvals.vote(item_id=item.pk, user=self.approver, decision="approve", comment="Good to go")

    def translate_with_one_slot(self) -> None:
        """Both translations are queued; the agent takes one at a time, so the second is
        throttled until the first is done."""
        fr, de = head(self.run, "translate_fr"), head(self.run, "translate_de")
        self.wait(1)
        fr_claim = transitions.claim_step(step_run_id=fr.pk, worker="w1")
        assert fr_claim is not None
        assert transitions.claim_step(step_run_id=de.pk, worker="w2") is None, (
            "the second translation got a slot"
        )
        self.wait(9)
        transitions.record_success(claim=fr_claim, output={"lang": "fr"})
        self.wait(0.6)
        self.work(head(self.run, "translate_de"), seconds=8.5, worker="w2")

    def sections(self) -> None:
        self.wait(1)
        for index, item in enumerate(
            StepRun.objects.filter(parent=head(self.run, "sections")).order_by("map_index")
        ):
            self.work(item, seconds=3 + index, worker=f"w{index % 2 + 1}")


def launch_run(ops: Any, approver: Any, *, start: datetime, to_the_end: bool = True) -> Run:
    """The whole launch run, started by `ops` at `start` (a past moment, so the pages' real
    clock is after it) and approved by `approver`; with to_the_end false it stops while
    legal_review waits for that approval."""
    with time_machine.travel(start, tick=False) as clock:
        launch = Launch(clock, ops, approver)
        launch.until_approval()
        if to_the_end:
            launch.approve(after=95)
            launch.translate_with_one_slot()
            launch.sections()
    launch.run.refresh_from_db()
    return launch.run
