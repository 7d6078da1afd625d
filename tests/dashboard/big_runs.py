"""A large run written straight into the tables, for query counts and for looking at the page.

Driving 60 steps and a 300-item map through the engine would take seconds per test and say
nothing more about the page: the page reads rows, so the rows are written here as the engine
would leave them (3 attempts a step, the last one succeeding; the map 240 items done, some
failed, some running, some waiting).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from orchestration.models import Attempt, Run, RunEvent, StepKind, StepRun, WorkflowVersion
from orchestration.status import AttemptStatus, ErrorClass, EventKind, RunStatus, StepStatus
from tests.support import load_workflow

TRACEBACK = 'Traceback (most recent call last):\n  File "tests/agents/basic.py", line 9, in flaky\n    raise TimeoutError("upstream took too long")\nTimeoutError: upstream took too long'


def big_workflow(steps: int) -> WorkflowVersion:
    """`steps` agent steps in a chain (s1 … sN), then a for_each `fan` over the input's items."""
    chain = ", ".join(
        f"{{key: s{i}, agent: echo" + (f", after: [s{i - 1}]" if i > 1 else "") + "}" for i in range(1, steps + 1)
    )
    version = load_workflow(
        'agents: [{name: echo, kind: python, config: {callable: "tests.agents.basic:echo"}}]\n'
        "workflow: {key: big, name: Big run, owner: ops, steps: ["
        + chain
        + f", {{key: fan, agent: echo, after: [s{steps}], for_each: '{{{{ input.items }}}}', input: {{n: '{{{{ item }}}}'}}}}]}}"
    )
    assert version is not None
    return version


def big_run(version: WorkflowVersion, *, steps: int, attempts: int = 3, items: int = 0, events: int = 0) -> Run:
    """A running run of `big_workflow`: every chain step succeeded after `attempts` attempts (the
    earlier ones failing transiently), and `items` map items, 80 % done."""
    now = timezone.now()
    start = now - timedelta(hours=1)
    run = Run.objects.create(
        workflow=version.workflow, version=version, status=RunStatus.RUNNING, input={"items": list(range(items))}
    )
    heads = StepRun.objects.bulk_create(
        StepRun(
            run=run, step_key=f"s{i}", status=StepStatus.SUCCEEDED, agent_name="echo", attempts=attempts,
            input={"text": f"step {i}", "note": "word " * 60}, output={"text": f"step {i}", "n": i},
            started_at=start + timedelta(seconds=10 * i), finished_at=start + timedelta(seconds=10 * i + 4),
        )
        for i in range(1, steps + 1)
    )
    Attempt.objects.bulk_create(
        Attempt(
            step_run=head, number=n, worker=f"worker-{n}@host", agent_name="echo",
            status=AttemptStatus.SUCCEEDED if n == attempts else AttemptStatus.FAILED,
            error_class="" if n == attempts else ErrorClass.TRANSIENT,
            error="" if n == attempts else "TimeoutError: upstream took too long",
            traceback="" if n == attempts else TRACEBACK,
            total_tokens=120 * n, cost=0.002 * n,
            started_at=head.started_at + timedelta(seconds=n), finished_at=head.started_at + timedelta(seconds=n, milliseconds=800),  # type: ignore[operator]
        )
        for head in heads
        for n in range(1, attempts + 1)
    )
    if items:
        done = items * 4 // 5
        fan = StepRun.objects.create(
            run=run, step_key="fan", kind=StepKind.AGENT, status=StepStatus.RUNNING, agent_name="echo",
            items_total=items, items_done=done, started_at=now - timedelta(minutes=5),
        )
        StepRun.objects.bulk_create(
            StepRun(
                run=run, step_key="fan", parent=fan, map_index=index, item=index, agent_name="echo", attempts=1,
                input={"n": index}, status=_item_status(index, items, done),
                output={"n": index} if index < done else None,
                error="ValueError: item refused" if _item_status(index, items, done) == StepStatus.FAILED else "",
                error_class=ErrorClass.PERMANENT if _item_status(index, items, done) == StepStatus.FAILED else "",
                started_at=now - timedelta(minutes=4), finished_at=now - timedelta(minutes=3) if index < done else None,
            )
            for index in range(items)
        )
        Attempt.objects.bulk_create(
            Attempt(
                step_run=item, number=1, worker="worker-1@host", agent_name="echo", started_at=now - timedelta(minutes=4),
                status=AttemptStatus.FAILED if item.status == StepStatus.FAILED else AttemptStatus.SUCCEEDED,
                error=item.error, traceback=TRACEBACK if item.status == StepStatus.FAILED else "",
                finished_at=item.finished_at,
            )
            for item in StepRun.objects.filter(parent=fan).exclude(status__in=[StepStatus.PENDING, StepStatus.WAITING])
        )
    RunEvent.objects.bulk_create(
        RunEvent(run=run, kind=EventKind.STEP_SUCCEEDED, to_status="succeeded", message=f"event {n}") for n in range(1, events + 1)
    )
    return run


def _item_status(index: int, items: int, done: int) -> str:
    if index < done:
        # Every tenth finished item failed for good; the rest succeeded.
        return StepStatus.FAILED if index % 10 == 9 else StepStatus.SUCCEEDED
    return StepStatus.RUNNING if index < done + (items - done) // 2 else StepStatus.PENDING


def attempts_of(run: Run) -> Any:
    return Attempt.objects.filter(step_run__run=run)
