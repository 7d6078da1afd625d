"""Start a run of a workflow's latest published version; optionally wait for it to finish."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TypedDict

from django.core.management.base import BaseCommand, CommandError

from orchestration import limits, reads, transitions
from orchestration.models import Run, StepRun
from orchestration.status import RunStatus

POLL_SECONDS = 0.1
EXIT_FAILED = 1
EXIT_TIMED_OUT = 2


class StepSummary(TypedDict):
    status: str
    output: Any
    attempts: int


class RunSummary(TypedDict):
    id: int
    status: str
    output: Any
    error: str
    steps: dict[str, StepSummary]


def summarise(run: Run) -> RunSummary:
    """The run and the latest iteration of each of its steps that has started."""
    heads = reads.latest_heads(reads.head_rows(run))
    # A for_each head does no work itself; the attempts are its items'.
    item_attempts: dict[int, int] = {}
    for parent_id, attempts in StepRun.objects.filter(
        parent_id__in=[h.pk for h in heads.values() if h.items_total]
    ).values_list("parent_id", "attempts"):
        item_attempts[parent_id] = item_attempts.get(parent_id, 0) + attempts
    order = [step["key"] for step in run.version.spec["steps"]]
    steps: dict[str, StepSummary] = {}
    for key in sorted(heads, key=lambda k: order.index(k) if k in order else len(order)):
        head = heads[key]
        steps[key] = {
            "status": head.status,
            "output": head.output,
            "attempts": item_attempts.get(head.pk, head.attempts),
        }
    return {"id": run.pk, "status": run.status, "output": run.output, "error": run.error, "steps": steps}


class Command(BaseCommand):
    help = (
        "Starts a run of a workflow's latest published version and prints its id. With --wait, "
        "waits for it to finish (a worker must be running: manage.py baton_worker), prints it as "
        "JSON and exits 0 if it succeeded, 1 if it failed or was cancelled, 2 on timeout."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("key", help="The workflow's key.")
        parser.add_argument("--input", default="{}", metavar="JSON", help="The run's input, a JSON object.")
        parser.add_argument("--wait", action="store_true", help="Wait for the run to finish.")
        parser.add_argument(
            "--timeout", type=float, default=300.0, metavar="S", help="With --wait: give up after S seconds."
        )

    def handle(self, *args: Any, key: str, input: str, wait: bool, timeout: float, **options: Any) -> None:
        try:
            values = limits.load_json(input, field="--input")
        except json.JSONDecodeError as exc:
            raise CommandError(f"--input is not valid JSON: {exc}") from None
        except ValueError as exc:  # nested too deep to read
            raise CommandError(str(exc)) from None
        try:
            run = transitions.start_run(workflow=key, input=values, trigger="command")
        except (ValueError, LookupError) as exc:
            raise CommandError(str(exc)) from None
        if not wait:
            self.stdout.write(str(run.pk))
            return
        finished = self._wait(run, timeout)
        self.stdout.write(json.dumps(summarise(run), indent=2, default=str))
        if not finished:
            self.stdout.flush()
            sys.exit(EXIT_TIMED_OUT)
        if run.status != RunStatus.SUCCEEDED:
            self.stdout.flush()
            sys.exit(EXIT_FAILED)

    def _wait(self, run: Run, timeout: float) -> bool:
        # The database is the truth: workers in other processes move the run along, and we
        # only read it until it is final or the deadline passes.
        deadline = time.monotonic() + timeout
        while True:
            run.refresh_from_db()
            if run.is_final:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
