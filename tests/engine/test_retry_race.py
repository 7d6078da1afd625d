"""Two operators retrying one failed run at the same moment: real concurrent transactions.

Meant for PostgreSQL, where the run's row lock decides; on SQLite the IMMEDIATE transactions
serialise the two, so the outcome (one retry, the other told why) is still checked.
"""

from __future__ import annotations

from functools import partial

import pytest

from orchestration import transitions
from orchestration.models import Attempt, Run, RunEvent, StepRun
from orchestration.status import EventKind, RunStatus, StepStatus
from tests.approvals.test_race import at_once
from tests.engine.test_retry_run import flow
from tests.support import drive

pytestmark = pytest.mark.django_db(transaction=True)


def test_two_concurrent_retries_of_one_run_make_one_retry() -> None:
    flow("    - {key: a, agent: echo, input: 1}\n    - {key: b, agent: fails-first, after: [a]}")
    for _ in range(5):
        run = drive(transitions.start_run(workflow="wf"))
        assert run.status == RunStatus.FAILED
        results = at_once(
            partial(transitions.retry_run, run_id=run.pk, reason="first"),
            partial(transitions.retry_run, run_id=run.pk, reason="second"),
        )
        won = [r for r in results if isinstance(r, Run)]
        lost = [r for r in results if isinstance(r, transitions.InvalidTransition)]
        assert len(won) == 1 and len(lost) == 1, results
        assert str(lost[0]) == f"run {run.pk} is running: only a failed or cancelled run can be retried"
        assert RunEvent.objects.filter(run=run, kind=EventKind.RUN_RETRIED).count() == 1
        b = StepRun.objects.get(run=run, step_key="b")
        assert b.status == StepStatus.QUEUED
        assert drive(run).status == RunStatus.SUCCEEDED
        assert Attempt.objects.filter(step_run=b).count() == 2
