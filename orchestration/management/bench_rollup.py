"""The rollout metrics row of `manage.py bench` (alone with `--only rollup`): a day's snapshot.

On the bench's database (the README: a scratch one) it writes 100,000 runs started on one day (yesterday) with the history
generator — a review workflow with an approval between two agent steps, one agent with two
versions sharing the traffic 9:1 — then times `metrics.snapshot_day` of that day: every
workflow version's, workflow's and agent version's figures, as the ticker computes them. The
generation is said in a note, outside the timed part. The runs go afterwards (`--keep` keeps
them).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from orchestration.management.benchkit import Row, Target, bench_agent, install, row
from orchestration.models import Agent, AgentVersion, Run, Workflow
from orchestration.rollouts import history, metrics
from orchestration.rollouts.models import AgentVersionSnapshot, DailySnapshot

KEY = "bench-rollup"
CANARY = "bench-canary"
RUNS = 100_000
PASSES = 3
# The target, on PostgreSQL; SQLite has none (it is the embedded, small deployment).
TARGETS = {"postgresql": Target(2.0, at_most=True)}


def rollup_document() -> dict[str, Any]:
    canary = {**bench_agent(), "name": CANARY, "description": "Does nothing, in two versions; used by manage.py bench."}
    return {
        "agents": [bench_agent(), canary],
        "workflow": {
            "key": KEY,
            "name": "Bench: a reviewed workflow's history",
            "steps": [
                {"key": "draft", "agent": CANARY},
                {"key": "sign_off", "approval": {"title": "Sign off"}, "after": ["draft"]},
                {"key": "publish", "agent": bench_agent()["name"], "after": ["sign_off"]},
            ],
        },
    }


class RollupBench:
    def __init__(self, *, database: str, say: Callable[[str], None], runs: int = RUNS, keep: bool = False):
        self.database = database
        self.say = say
        self.runs = runs
        self.keep = keep
        self.notes: list[str] = []

    def run(self) -> list[Row]:
        workflow = Workflow.objects.get(key=install(rollup_document()))
        canary = Agent.objects.get(name=CANARY)
        for label, weight in (("stable", 9), ("candidate", 1)):
            AgentVersion.objects.get_or_create(agent=canary, label=label, defaults={"weight": weight})
        day = timezone.localdate() - timedelta(days=1)
        # The generator's "today" is the bench's day: its runs start in that day, before its end.
        end = metrics.day_bounds(day)[1] - timedelta(seconds=1)
        self.say(f"rollup: writing {self.runs:,} runs of {day} ...")
        started = time.monotonic()
        report = history.make_history(workflow=workflow, days=1, runs_per_day=self.runs, now=end, seed=10)
        generated = time.monotonic() - started
        # Rows bulk-inserted a moment ago have no planner statistics yet; a real day's rows
        # would have them (autovacuum analyses a table after that many inserts).
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        self.notes.append(
            f"Rollup: {report.runs:,} runs ({report.steps:,} steps, {report.attempts:,} attempts, "
            f"{report.events:,} events, {report.items:,} inbox items) generated in {generated:.1f} s "
            "and analysed, not timed; the row is the median of "
            f"{PASSES} passes of snapshot_day (every workflow version, workflow and agent version of the day)."
        )
        try:
            timings = []
            for _ in range(PASSES):
                tick = time.perf_counter()
                written = metrics.snapshot_day(day)
                timings.append(time.perf_counter() - tick)
            self.say(f"rollup: {written} snapshot rows, {', '.join(f'{t:.2f} s' for t in timings)}")
        finally:
            if not self.keep:
                self.clean_up(workflow, day)
        label = f"a day's snapshot over {report.runs:,} runs"
        return [row(label, f"snapshot_day, median of {PASSES} passes", statistics.median(timings), "s", TARGETS.get(self.database))]

    def clean_up(self, workflow: Workflow, day: Any) -> None:
        self.say("rollup: deleting the generated runs ...")
        ids = list(Run.objects.filter(workflow=workflow, trigger=history.TRIGGER).values_list("pk", flat=True))
        # In slices: a delete collects the rows below each run, and 100,000 at once is a lot.
        for start in range(0, len(ids), 5000):
            with transaction.atomic():
                Run.objects.filter(pk__in=ids[start : start + 5000]).delete()
        DailySnapshot.objects.filter(workflow=workflow).delete()
        AgentVersionSnapshot.objects.filter(agent_version__agent__name=CANARY).delete()
        metrics.snapshot_day(day)  # the day's other workflows keep their true figures
