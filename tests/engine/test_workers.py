"""What real worker processes do between steps: hand-offs, and stopping a map in time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from orchestration import transitions
from orchestration.models import Run, StepRun
from orchestration.status import RunStatus, StepStatus
from tests.agents.counting import calls
from tests.support import WorkerCluster, load_workflow, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.django_db(transaction=True)]

AGENTS = """
agents:
  - {name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}
  - {name: counted, kind: python, config: {callable: "tests.agents.counting:counted"}, retry: {attempts: 1}}
"""
# Beats as slow as in production (5 s), so a worker that only notices a cancel at its next
# beat shows; the lease stays well above the beat.
SLOW_HEARTBEAT = {"BATON_HEARTBEAT_SECONDS": "5", "BATON_LEASE_SECONDS": "30"}


def finished(run: Run) -> Run | None:
    run.refresh_from_db()
    return run if run.is_final else None


def quiet(log: Path, *, for_seconds: float = 1.0, timeout: float = 30.0) -> list[tuple[int, float]]:
    """The calls in the log once no new one has been noted for `for_seconds`."""
    deadline = time.monotonic() + timeout
    seen, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = len(calls(str(log)))
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since >= for_seconds:
            return calls(str(log))
        time.sleep(0.05)
    raise AssertionError(f"the agent was still being called after {timeout}s")


def test_the_step_after_a_sub_workflow_starts_at_once_not_when_the_ticker_resends_it() -> None:
    load_workflow(AGENTS + "workflow: {key: child, name: Child, steps: [{key: only, agent: echo}]}")
    load_workflow(
        """
workflow:
  key: parent
  name: Parent
  steps:
    - {key: kid, workflow: child}
    - {key: next, agent: echo, after: [kid]}
"""
    )
    # A lost message would be re-sent only after two minutes: the run must not need that.
    with WorkerCluster(workers=1, env={"BATON_REQUEUE_AFTER_SECONDS": "120"}) as cluster:
        started = time.monotonic()
        run = transitions.start_run(workflow="parent")
        run = wait_for(lambda: finished(run), timeout=20, message=f"the parent run to finish\n{cluster.log()}")
        took = time.monotonic() - started
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert took < 15, f"the parent took {took:.1f}s"
    assert StepRun.objects.get(run=run, step_key="next").status == StepStatus.SUCCEEDED


def test_no_item_of_a_map_starts_after_one_item_failed_for_good(tmp_path: Path, settings: Any) -> None:
    settings.WORKERS = 1  # this process sizes the chunks: large ones (15 items) show the fault
    log = tmp_path / "calls.log"
    load_workflow(
        AGENTS
        + f"""
workflow:
  key: doomed-map
  name: Doomed map
  steps:
    - key: each
      agent: counted
      for_each: "range(120) | list"
      input: {{log: "{log}", fail_first: true, seconds: 0.2}}
"""
    )
    workers = 2
    with WorkerCluster(workers=workers, env=SLOW_HEARTBEAT) as cluster:
        run = transitions.start_run(workflow="doomed-map")
        run = wait_for(lambda: finished(run), timeout=30, message=f"the run to fail\n{cluster.log()}")
        noted = quiet(log)
    assert run.status == RunStatus.FAILED
    assert "item 0 failed" in run.error
    assert run.finished_at is not None
    # The run failed in the transaction that recorded item 0's failure. After it, the worker
    # that failed item 0 starts nothing; another may start one item whose check passed just
    # before that transaction committed.
    failed_at = run.finished_at.timestamp()
    late = sorted(index for index, at in noted if at > failed_at)
    assert len(late) <= workers - 1, f"{len(late)} items started after the map failed: {late}"
    items = StepRun.objects.filter(run=run, map_index__isnull=False)
    assert items.filter(status=StepStatus.CANCELLED).count() >= 120 - workers


def test_no_item_of_a_map_starts_after_its_run_is_cancelled(tmp_path: Path, settings: Any) -> None:
    settings.WORKERS = 1  # chunks of 25 items
    log = tmp_path / "calls.log"
    load_workflow(
        AGENTS
        + f"""
workflow:
  key: long-map
  name: Long map
  steps:
    - key: each
      agent: counted
      for_each: "range(200) | list"
      input: {{log: "{log}", seconds: 0.05}}
"""
    )
    workers = 2
    with WorkerCluster(workers=workers, env=SLOW_HEARTBEAT) as cluster:
        run = transitions.start_run(workflow="long-map")
        wait_for(lambda: len(calls(str(log))) >= 10, timeout=30, message=f"items to run\n{cluster.log()}")
        transitions.cancel_run(run_id=run.pk)
        at_cancel = len(calls(str(log)))
        noted = quiet(log)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    # Each worker may have passed its check for the next item just before the cancel committed.
    late = len(noted) - at_cancel
    assert late <= workers, f"{late} items started after the cancel"
