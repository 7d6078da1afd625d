"""The operations console's rows of `manage.py bench` (alone with `--only console`): how long
the pages an operations lead opens take to draw on a database that has been in use for a while.

The fixture, built once per bench database and reused while its runs are all there: 20
workflows of eleven steps (an approval in the middle) and 100,000 runs of them spread over 60
days, about 1,000,000 step runs with their attempts and events, and two runs of their own: one
of a 1,000-step workflow, one whose for_each has 1,000 items. Its mix: one workflow takes three
runs in ten (the rest share the others, fewer the further down the list); of the runs older than
a day about nine in ten succeeded, the others failed or were cancelled; of the last day's, some
still run; of the last week's, a few wait at the approval. One step in ten took a retry, one run
in twenty sent a step back for a second round. The rows are written by COPY, never through the
engine (as orchestration/rollouts/history.py writes its history), in one transaction: a bench
stopped half-way leaves nothing behind, and the next one builds the whole again.

Each row: a page requested through Django's test client by a signed-in operator (a member of
the workflows' operator group, not a superuser, so access is checked as for anyone), after
warm-up requests; the median and the 95th percentile of the server's time, and the number of
SQL statements one request sends. The filtered runs list's page 50 is reached by following the
Older links from the first page, and only the request for page 50 itself is timed.
"""

from __future__ import annotations

import gc
import html
import json
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import CommandError
from django.db import connection, models, transaction
from django.db.models import Max
from django.test import Client
from django.test.utils import override_settings
from django.urls import reverse
from django.utils import timezone

from orchestration.management.benchkit import AGENT, Row, Target, bench_agent, install, percentile, row
from orchestration.models import Attempt, Run, RunEvent, StepKind, StepRun, Workflow
from orchestration.status import AttemptStatus, ErrorClass, EventKind, RunStatus, StepStatus, WaitingFor

TRIGGER = "bench-console"
WORKFLOWS = 20
RUNS = 100_000
DAYS = 60
CHAIN = 11  # steps of each of the 20 workflows; the sixth is an approval
APPROVAL_AT = 5
LONG_LANES, LONG_STAGES = 50, 20  # the 1,000-step workflow: 50 lanes of 20 steps
MAP_ITEMS = 1_000
CHUNK = 5_000  # runs per COPY round: keeps the rows in memory few
GROUP = "bench-console-operators"
OPERATOR = "bench-console-operator"
REQUESTS = 20  # timed requests per row, after WARM_UP untimed ones
WARM_UP = 3
PAGE = 50  # the filtered runs list's page that is timed
# The runs list's Older link (its query string, as the template escapes it).
OLDER = re.compile(r'rel="next" href="\?([^"]+)"')

# The targets (server time, p95), on PostgreSQL; SQLite builds no fixture.
LIST_TARGET = Target(150.0, at_most=True)
# The overview (issue 15): its last day and week of the fixture's runs, the latest runs.
OVERVIEW_TARGET = Target(150.0, at_most=True)
RUN_TARGET = Target(300.0, at_most=True)


def key_of(index: int) -> str:
    return f"bench-console-{index:02d}"


LONG_KEY = "bench-console-long"
MAP_KEY = "bench-console-map"


def chain_document(index: int) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for position in range(CHAIN):
        key = "review" if position == APPROVAL_AT else f"s{position + 1:02d}"
        step: dict[str, Any] = {"key": key}
        if position == APPROVAL_AT:
            step["approval"] = {"title": "Review the draft"}
        else:
            step["agent"] = AGENT
        if steps:
            step["after"] = [steps[-1]["key"]]
        steps.append(step)
    return {
        "agents": [bench_agent()],
        "workflow": {
            "key": key_of(index),
            "name": f"Bench console {index:02d}",
            "description": "Created by manage.py bench --only console: a workflow with a long history.",
            "access": {"operators": [GROUP]},
            "steps": steps,
        },
    }


def long_document() -> dict[str, Any]:
    steps = [
        {"key": f"l{lane:02d}s{stage:02d}", "agent": AGENT}
        | ({"after": [f"l{lane:02d}s{stage - 1:02d}"]} if stage else {})
        for stage in range(LONG_STAGES)
        for lane in range(LONG_LANES)
    ]
    return {
        "agents": [bench_agent()],
        "workflow": {
            "key": LONG_KEY,
            "name": "Bench console: 1,000 steps",
            "description": "Created by manage.py bench --only console: 50 lanes of 20 steps.",
            "access": {"operators": [GROUP]},
            "steps": steps,
        },
    }


def map_document() -> dict[str, Any]:
    return {
        "agents": [bench_agent()],
        "workflow": {
            "key": MAP_KEY,
            "name": "Bench console: a 1,000-item map",
            "description": "Created by manage.py bench --only console.",
            "access": {"operators": [GROUP]},
            "steps": [
                {"key": "prepare", "agent": AGENT},
                {
                    "key": "fan",
                    "agent": AGENT,
                    "after": ["prepare"],
                    "for_each": "{{ input.items }}",
                    "input": {"n": "{{ item }}"},
                },
                {"key": "wrap", "agent": AGENT, "after": ["fan"]},
            ],
        },
    }


# ---------------------------------------------------------------------------------------------
# Writing rows by COPY


class Table:
    """A model's columns in order and a row of their defaults, to COPY tuples without building
    model instances (a million of them would be most of the fixture's time)."""

    def __init__(self, model: type[models.Model]):
        self.model = model
        fields = list(model._meta.concrete_fields)
        self.columns = [str(f.column) for f in fields]
        self.position = {f.attname: i for i, f in enumerate(fields)}
        self.json = {f.attname for f in fields if isinstance(f, models.JSONField)}
        template: list[Any] = []
        for f in fields:
            default = None if f.primary_key else f.get_default()
            template.append(
                json.dumps(default) if f.attname in self.json and default is not None else default
            )
        self.template = template
        self.rows: list[list[Any]] = []

    def add(self, pk: int, **values: Any) -> None:
        line = self.template.copy()
        line[self.position["id"]] = pk
        for name, value in values.items():
            line[self.position[name]] = (
                json.dumps(value) if name in self.json and value is not None else value
            )
        self.rows.append(line)

    def flush(self) -> int:
        written = len(self.rows)
        if written:
            quote = connection.ops.quote_name
            columns = ", ".join(quote(c) for c in self.columns)
            statement = f"COPY {quote(self.model._meta.db_table)} ({columns}) FROM STDIN"
            with connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
                for line in self.rows:
                    copy.write_row(line)
        self.rows = []
        return written


class Ids:
    """Ids taken from a table's own sequence, as many at a time as a chunk needs (the way
    history.insert takes them), so rows written later by the app never collide."""

    def __init__(self, model: type[models.Model]):
        self.table = model._meta.db_table
        self.free: Iterator[int] = iter(())

    def reserve(self, count: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                [self.table, count],
            )
            self.free = iter([pk for (pk,) in cursor.fetchall()])

    def __next__(self) -> int:
        return next(self.free)


@dataclass
class Counts:
    runs: int = 0
    steps: int = 0
    attempts: int = 0
    events: int = 0

    def __str__(self) -> str:
        return f"{self.runs:,} runs, {self.steps:,} step runs, {self.attempts:,} attempts, {self.events:,} events"


class Writer:
    """Rows of the four runtime tables, COPYed a chunk at a time."""

    def __init__(self) -> None:
        self.runs, self.steps, self.attempts, self.events = (
            Table(m) for m in (Run, StepRun, Attempt, RunEvent)
        )
        self.ids = {m: Ids(m) for m in (Run, StepRun, Attempt, RunEvent)}
        self.counts = Counts()

    def reserve(self, runs: int, steps: int, attempts: int, events: int) -> None:
        for model, count in ((Run, runs), (StepRun, steps), (Attempt, attempts), (RunEvent, events)):
            self.ids[model].reserve(count)

    def run(self, **values: Any) -> int:
        pk = next(self.ids[Run])
        self.runs.add(pk, trigger=TRIGGER, **values)
        return pk

    def step(self, **values: Any) -> int:
        pk = next(self.ids[StepRun])
        self.steps.add(pk, **values)
        return pk

    def attempt(self, **values: Any) -> None:
        self.attempts.add(next(self.ids[Attempt]), **values)

    def event(self, **values: Any) -> None:
        self.events.add(next(self.ids[RunEvent]), **values)

    def flush(self) -> None:
        # Parents before children: the foreign keys are checked row by row.
        self.counts.runs += self.runs.flush()
        self.counts.steps += self.steps.flush()
        self.counts.attempts += self.attempts.flush()
        self.counts.events += self.events.flush()


# ---------------------------------------------------------------------------------------------
# The fixture


@dataclass
class Plan:
    """What one generated run of a chain workflow did."""

    workflow: int
    created: datetime
    status: str  # a RunStatus, or "waiting" (running, held at the approval)
    reached: int  # how many steps of the chain it got to (the last one is where it stopped)
    loop: bool
    retries: frozenset[int]  # positions whose first attempt failed


def workflow_weights() -> list[float]:
    # Three runs in ten are the first workflow's; the others share the rest, 1/n each.
    rest = [1 / n for n in range(1, WORKFLOWS)]
    return [0.3] + [0.7 * w / sum(rest) for w in rest]


def plans(now: datetime, rng: random.Random, runs: int = RUNS) -> list[Plan]:
    span = DAYS * 86_400
    moments = sorted(now - timedelta(seconds=rng.random() * span) for _ in range(runs))
    chosen = rng.choices(range(WORKFLOWS), weights=workflow_weights(), k=runs)
    out = []
    for created, workflow in zip(moments, chosen, strict=True):
        age = (now - created).total_seconds()
        roll = rng.random()
        if age < 86_400 and roll < 0.25:
            status, reached = RunStatus.RUNNING.value, rng.randint(1, CHAIN)
            if reached == APPROVAL_AT + 1:
                reached -= 1  # an approval is waiting, not running
        elif age < 7 * 86_400 and roll < 0.31:
            status, reached = "waiting", APPROVAL_AT + 1
        else:
            pick = rng.random()
            failures = 0.10 if workflow == 0 else 0.07
            if pick < 1 - failures - 0.02:
                status, reached = RunStatus.SUCCEEDED.value, CHAIN
            elif pick < 0.98:
                # Failures happen at agent steps, never at the approval.
                status, reached = (
                    RunStatus.FAILED.value,
                    rng.choice([p for p in range(1, CHAIN + 1) if p != APPROVAL_AT + 1]),
                )
            else:
                status, reached = RunStatus.CANCELLED.value, rng.randint(1, CHAIN)
        retries = frozenset(p for p in range(reached) if p != APPROVAL_AT and rng.random() < 0.1)
        out.append(
            Plan(
                workflow, created, status, reached, loop=reached > 3 and rng.random() < 0.05, retries=retries
            )
        )
    return out


def chain_keys() -> list[str]:
    return [str(s["key"]) for s in chain_document(0)["workflow"]["steps"]]


def write_chain_runs(
    writer: Writer, batch: list[Plan], versions: dict[int, tuple[int, int]], now: datetime
) -> None:
    keys = chain_keys()
    # Upper bounds of the rows the chunk writes, for the ids it takes from the sequences.
    writer.reserve(
        len(batch), len(batch) * (CHAIN + 1), len(batch) * (CHAIN + 1) * 2, len(batch) * (CHAIN + 5)
    )
    for plan in batch:
        workflow_id, version_id = versions[plan.workflow]
        final = plan.status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
        took = timedelta(seconds=30 + 20 * plan.reached)
        end = plan.created + took if final else None
        run_status = RunStatus.RUNNING.value if plan.status == "waiting" else plan.status
        run_id = writer.run(
            workflow_id=workflow_id,
            version_id=version_id,
            status=run_status,
            input={"topic": f"t{plan.created.microsecond}"},
            created_at=plan.created,
            finished_at=end,
            error="s: failed for good" if plan.status == RunStatus.FAILED else "",
        )
        writer.event(
            run_id=run_id, kind=EventKind.RUN_STARTED, to_status=RunStatus.RUNNING, created_at=plan.created
        )
        for position in range(plan.reached):
            key = keys[position]
            last = position == plan.reached - 1
            approval = position == APPROVAL_AT
            started = plan.created + timedelta(seconds=20 * position)
            finished = started + timedelta(seconds=15)
            status = StepStatus.SUCCEEDED.value
            if last:
                status = {
                    RunStatus.SUCCEEDED: StepStatus.SUCCEEDED,
                    RunStatus.FAILED: StepStatus.FAILED,
                    RunStatus.CANCELLED: StepStatus.CANCELLED,
                    RunStatus.RUNNING: StepStatus.RUNNING,
                    "waiting": StepStatus.WAITING,
                }[plan.status].value
            rounds = 2 if plan.loop and position == 2 else 1
            for iteration in range(1, rounds + 1):
                done = (
                    status in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED)
                    or iteration < rounds
                )
                here = status if iteration == rounds else StepStatus.SUCCEEDED.value
                attempts = 0 if approval else 1 + (position in plan.retries)
                step_id = writer.step(
                    run_id=run_id,
                    step_key=key,
                    iteration=iteration,
                    kind=StepKind.APPROVAL if approval else StepKind.AGENT,
                    status=here,
                    agent_name="" if approval else AGENT,
                    attempts=attempts,
                    waiting_for=WaitingFor.APPROVAL if here == StepStatus.WAITING else "",
                    input={"n": position},
                    output={"n": position} if here == StepStatus.SUCCEEDED else None,
                    error="ValueError: refused" if here == StepStatus.FAILED else "",
                    error_class=ErrorClass.PERMANENT if here == StepStatus.FAILED else "",
                    created_at=started,
                    started_at=started,
                    finished_at=finished if done else None,
                )
                for number in range(1, attempts + 1):
                    retry = number < attempts
                    outcome = {
                        StepStatus.SUCCEEDED: AttemptStatus.SUCCEEDED,
                        StepStatus.RUNNING: AttemptStatus.RUNNING,
                    }.get(StepStatus(here), AttemptStatus.FAILED)
                    writer.attempt(
                        step_run_id=step_id,
                        number=number,
                        agent_name=AGENT,
                        worker="bench@host",
                        status=AttemptStatus.FAILED if retry else outcome,
                        error_class=ErrorClass.TRANSIENT
                        if retry
                        else ErrorClass.CANCELLED
                        if here == StepStatus.CANCELLED
                        else ErrorClass.PERMANENT
                        if outcome == AttemptStatus.FAILED
                        else "",
                        total_tokens=800,
                        cost=0.012,
                        usage={"total_tokens": 800, "cost": 0.012},
                        started_at=started,
                        finished_at=finished if retry or done else None,
                    )
                    if retry:
                        writer.event(
                            run_id=run_id,
                            step_run_id=step_id,
                            kind=EventKind.STEP_RETRYING,
                            created_at=started,
                        )
                if iteration < rounds:
                    writer.event(
                        run_id=run_id,
                        step_run_id=step_id,
                        kind=EventKind.STEP_LOOPED,
                        message="sent back",
                        created_at=finished,
                    )
                elif here == StepStatus.WAITING:
                    writer.event(
                        run_id=run_id,
                        step_run_id=step_id,
                        kind=EventKind.STEP_WAITING,
                        to_status=here,
                        created_at=started,
                    )
                elif done:
                    kind = {
                        StepStatus.SUCCEEDED: EventKind.STEP_SUCCEEDED,
                        StepStatus.FAILED: EventKind.STEP_FAILED,
                    }.get(StepStatus(here), EventKind.STEP_CANCELLED)
                    writer.event(
                        run_id=run_id, step_run_id=step_id, kind=kind, to_status=here, created_at=finished
                    )
        if final:
            final_kind = {
                RunStatus.SUCCEEDED: EventKind.RUN_SUCCEEDED,
                RunStatus.FAILED: EventKind.RUN_FAILED,
            }.get(RunStatus(run_status), EventKind.RUN_CANCELLED)
            writer.event(run_id=run_id, kind=final_kind, to_status=run_status, created_at=end)
    writer.flush()


def write_long_run(writer: Writer, workflow: Workflow, now: datetime) -> None:
    """A running run of the 1,000-step workflow: every step but the last stage's succeeded (one
    in ten after a retry), the last stage running."""
    version = workflow.latest_version
    assert version is not None
    keys = [str(s["key"]) for s in version.spec["steps"]]
    writer.reserve(1, len(keys), 2 * len(keys), 2 * len(keys) + 1)
    created = now - timedelta(hours=2)
    run_id = writer.run(
        workflow_id=workflow.pk, version_id=version.pk, status=RunStatus.RUNNING, input={}, created_at=created
    )
    writer.event(run_id=run_id, kind=EventKind.RUN_STARTED, to_status=RunStatus.RUNNING, created_at=created)
    for index, key in enumerate(keys):
        running = index >= len(keys) - LONG_LANES
        started = created + timedelta(seconds=index)
        attempts = 1 + (index % 10 == 3)
        status = StepStatus.RUNNING if running else StepStatus.SUCCEEDED
        step_id = writer.step(
            run_id=run_id,
            step_key=key,
            status=status,
            agent_name=AGENT,
            attempts=attempts,
            input={"n": index},
            output=None if running else {"n": index},
            created_at=started,
            started_at=started,
            finished_at=None if running else started + timedelta(seconds=5),
        )
        for number in range(1, attempts + 1):
            retry = number < attempts
            writer.attempt(
                step_run_id=step_id,
                number=number,
                agent_name=AGENT,
                worker="bench@host",
                status=AttemptStatus.FAILED
                if retry
                else AttemptStatus.RUNNING
                if running
                else AttemptStatus.SUCCEEDED,
                error_class=ErrorClass.TRANSIENT if retry else "",
                started_at=started,
                finished_at=None if running and not retry else started + timedelta(seconds=2),
            )
        writer.event(
            run_id=run_id,
            step_run_id=step_id,
            kind=EventKind.STEP_STARTED,
            to_status="running",
            created_at=started,
        )
        if not running:
            writer.event(
                run_id=run_id,
                step_run_id=step_id,
                kind=EventKind.STEP_SUCCEEDED,
                to_status="succeeded",
                created_at=started,
            )
    writer.flush()


def write_map_run(writer: Writer, workflow: Workflow, now: datetime) -> None:
    """A running run whose for_each is 800 of 1,000 items done (one in ten of those failed),
    100 running, 100 held back."""
    version = workflow.latest_version
    assert version is not None
    writer.reserve(1, MAP_ITEMS + 2, MAP_ITEMS + 1, MAP_ITEMS + 4)
    created = now - timedelta(minutes=30)
    run_id = writer.run(
        workflow_id=workflow.pk,
        version_id=version.pk,
        status=RunStatus.RUNNING,
        input={"items": list(range(MAP_ITEMS))},
        created_at=created,
    )
    writer.event(run_id=run_id, kind=EventKind.RUN_STARTED, to_status=RunStatus.RUNNING, created_at=created)
    prepare = writer.step(
        run_id=run_id,
        step_key="prepare",
        status=StepStatus.SUCCEEDED,
        agent_name=AGENT,
        attempts=1,
        created_at=created,
        started_at=created,
        finished_at=created + timedelta(seconds=3),
    )
    writer.attempt(
        step_run_id=prepare,
        number=1,
        agent_name=AGENT,
        status=AttemptStatus.SUCCEEDED,
        started_at=created,
        finished_at=created,
    )
    writer.event(
        run_id=run_id,
        step_run_id=prepare,
        kind=EventKind.STEP_SUCCEEDED,
        to_status="succeeded",
        created_at=created,
    )
    done = MAP_ITEMS * 4 // 5
    started = created + timedelta(seconds=5)
    fan = writer.step(
        run_id=run_id,
        step_key="fan",
        status=StepStatus.RUNNING,
        agent_name=AGENT,
        items_total=MAP_ITEMS,
        items_done=done,
        created_at=started,
        started_at=started,
    )
    for index in range(MAP_ITEMS):
        if index < done:
            status = StepStatus.FAILED if index % 10 == 9 else StepStatus.SUCCEEDED
        else:
            status = StepStatus.RUNNING if index < done + (MAP_ITEMS - done) // 2 else StepStatus.PENDING
        began = status != StepStatus.PENDING
        item_id = writer.step(
            run_id=run_id,
            step_key="fan",
            parent_id=fan,
            map_index=index,
            item=index,
            status=status,
            agent_name=AGENT,
            attempts=int(began),
            input={"n": index},
            output={"n": index} if status == StepStatus.SUCCEEDED else None,
            error="ValueError: item refused" if status == StepStatus.FAILED else "",
            error_class=ErrorClass.PERMANENT if status == StepStatus.FAILED else "",
            created_at=started,
            started_at=started if began else None,
            finished_at=started + timedelta(seconds=index) if index < done else None,
        )
        if began:
            writer.attempt(
                step_run_id=item_id,
                number=1,
                agent_name=AGENT,
                worker="bench@host",
                started_at=started,
                status={
                    StepStatus.FAILED: AttemptStatus.FAILED,
                    StepStatus.RUNNING: AttemptStatus.RUNNING,
                }.get(status, AttemptStatus.SUCCEEDED),
                error="ValueError: item refused" if status == StepStatus.FAILED else "",
                finished_at=started + timedelta(seconds=index) if index < done else None,
            )
    writer.flush()


@dataclass
class Fixture:
    workflows: list[Workflow]
    long_run: int
    map_run: int
    user: Any
    built: bool
    seconds: float
    counts: Counts


def fixture(say: Callable[[str], None], runs: int = RUNS) -> Fixture:
    """The fixture: reused when every run of it is there (`runs` of the 20 workflows and the
    two big runs), else (re)built from nothing."""
    group = Group.objects.get_or_create(name=GROUP)[0]
    user, _ = get_user_model().objects.get_or_create(username=OPERATOR, defaults={"is_active": True})
    user.groups.add(group)
    workflows = [Workflow.objects.get(key=install(chain_document(i))) for i in range(WORKFLOWS)]
    long_workflow = Workflow.objects.get(key=install(long_document()))
    map_workflow = Workflow.objects.get(key=install(map_document()))
    ours = Run.objects.filter(trigger=TRIGGER)
    started = time.monotonic()
    built = False
    if ours.count() != runs + 2:
        say(
            f"console: building the fixture ({runs:,} runs over {DAYS} days, about {runs * 10:,} step runs) ..."
        )
        built = True
        with transaction.atomic():
            # A fixture from an older or interrupted bench goes first, children before parents
            # (the ORM's cascade would collect a million rows one table at a time).
            stale = list(ours.values_list("pk", flat=True))
            if stale:
                with connection.cursor() as cursor:
                    for statement in (
                        "DELETE FROM orchestration_runevent WHERE run_id = ANY(%s)",
                        "DELETE FROM orchestration_attempt WHERE step_run_id IN "
                        "(SELECT id FROM orchestration_steprun WHERE run_id = ANY(%s))",
                        "DELETE FROM orchestration_steprun WHERE run_id = ANY(%s)",
                        "DELETE FROM orchestration_run WHERE id = ANY(%s)",
                    ):
                        cursor.execute(statement, [stale])
            writer = Writer()
            now = timezone.now()
            versions = {}
            for index, workflow in enumerate(workflows):
                version = workflow.latest_version
                assert version is not None
                versions[index] = (workflow.pk, version.pk)
            everything = plans(now, random.Random(11), runs)
            for start in range(0, len(everything), CHUNK):
                write_chain_runs(writer, everything[start : start + CHUNK], versions, now)
                if start and start % 25_000 == 0:
                    say(f"console: {start:,} runs written ({time.monotonic() - started:.0f} s)")
            write_long_run(writer, long_workflow, now)
            write_map_run(writer, map_workflow, now)
        with connection.cursor() as cursor:
            # Fresh rows have no planner statistics, visibility map or hint bits yet; a database
            # in use would have them, and autovacuum would otherwise set them while the pages
            # are timed (the first timings after a build came out half as fast again).
            for model in (Run, StepRun, Attempt, RunEvent):
                cursor.execute(f"VACUUM (ANALYZE) {connection.ops.quote_name(model._meta.db_table)}")
        counts = writer.counts
    else:
        counts = Counts(
            runs=runs + 2,
            steps=StepRun.objects.filter(run__trigger=TRIGGER).count(),
            attempts=Attempt.objects.filter(step_run__run__trigger=TRIGGER).count(),
            events=RunEvent.objects.filter(run__trigger=TRIGGER).count(),
        )
    long_run = ours.filter(workflow=long_workflow).aggregate(pk=Max("pk"))["pk"]
    map_run = ours.filter(workflow=map_workflow).aggregate(pk=Max("pk"))["pk"]
    return Fixture(workflows, long_run, map_run, user, built, time.monotonic() - started, counts)


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Timing:
    median: float
    p95: float
    queries: int


class ConsoleBench:
    def __init__(
        self,
        *,
        database: str,
        say: Callable[[str], None],
        runs: int = RUNS,
        requests: int = REQUESTS,
        only_overview: bool = False,
    ):
        self.database = database
        self.runs = runs
        self.say = say
        self.requests = requests
        # `--only overview`: the home page and a /metrics scrape, on the same fixture.
        self.only_overview = only_overview
        self.notes: list[str] = []

    def run(self) -> list[Row]:
        if self.database != "postgresql":
            self.notes.append(
                "Console rows: not run on SQLite (the fixture is written by PostgreSQL's COPY)."
            )
            return []
        found = fixture(self.say, self.runs)
        how = (
            f"built in {found.seconds:.0f} s and vacuumed" if found.built else "reused from an earlier bench"
        )
        self.notes.append(
            f"Console: {found.counts} ({how}, not timed); each row is {self.requests} requests by a signed-in "
            f"operator after {WARM_UP} warm-up requests, through Django's test client; the query count is one request's."
        )
        self.notes.append(
            "Console: the fixture stays in this database for the next --only console; give it a database of "
            "its own (a full bench's rollup row would count its runs of yesterday)."
        )
        client = Client()
        client.force_login(found.user)
        # As the web process does once it has started (orchestration/config/asgi.py): what
        # exists now lives on, and the collector's full passes need not walk it again.
        gc.collect()
        gc.freeze()
        self.notes.append(
            "Console: the objects that exist before the first timed request are frozen out of the "
            "garbage collector's passes (gc.freeze), as the web process does after start-up."
        )
        rows: list[Row] = []
        overview = [("overview (home page)", reverse("dashboard:overview"), OVERVIEW_TARGET)]
        if self.only_overview:
            for label, url, target in overview:
                rows += self.timed(client, label, url, target)
            rows += self.scrape_rows()
            return rows
        biggest = found.workflows[0].key
        first = reverse("dashboard:runs")
        reached, later = self.page_url(client, {"workflow": biggest, "status": RunStatus.FAILED})
        pages = [
            ("runs list, first page", first, LIST_TARGET),
            (f"runs list, {biggest} + failed, page {reached}", later, LIST_TARGET),
            (f"workflow page ({biggest})", reverse("dashboard:workflow", args=[biggest]), LIST_TARGET),
            ("run page, 1,000 steps", reverse("dashboard:run", args=[found.long_run]), RUN_TARGET),
            ("run page, 1,000-item map", reverse("dashboard:run", args=[found.map_run]), RUN_TARGET),
            (
                "map items page (failed)",
                reverse("dashboard:step_items", args=[found.map_run, "fan"]) + "?status=failed",
                LIST_TARGET,
            ),
        ]
        for label, url, target in pages:
            rows += self.timed(client, label, url, target)
        return rows

    def timed(self, client: Client, label: str, url: str, target: Target | None, **headers: str) -> list[Row]:
        self.say(f"console: {label}")
        timing = self.measure(client, url, **headers)
        return [
            row(label, f"server time, median of {self.requests}", timing.median, "ms"),
            row(label, f"server time, p95 of {self.requests}", timing.p95, "ms", target),
            row(label, "SQL queries per request", timing.queries, "queries"),
        ]

    def scrape_rows(self) -> list[Row]:
        """A Prometheus scrape of /metrics over the same database (no target: it reads every
        attempt for the duration histogram; a scrape comes every 15 to 60 s, not per person)."""
        token = "bench-console-metrics"
        with override_settings(BATON_METRICS_TOKEN=token):
            return self.timed(Client(), "/metrics scrape", reverse("metrics"), None, HTTP_AUTHORIZATION=f"Bearer {token}")

    def page_url(self, client: Client, filters: dict[str, str]) -> tuple[int, str]:
        """Page PAGE of the filtered runs list (or its last, in a smaller fixture) and its URL,
        found by following the Older links from the first page."""
        url = reverse("dashboard:runs") + "?" + urlencode(filters)
        number = 1
        with self.allowed():
            while number < PAGE:
                older = OLDER.search(client.get(url).content.decode())
                if older is None:
                    break
                url = reverse("dashboard:runs") + "?" + html.unescape(older.group(1))
                number += 1
        return number, url

    def measure(self, client: Client, url: str, **headers: str) -> Timing:
        samples = []
        with self.allowed():
            # Counted apart from the timed requests. Not with CaptureQueriesContext: each request
            # starts by emptying the connection's query log.
            statements: list[str] = []

            def counted(execute: Any, sql: str, *args: Any) -> Any:
                statements.append(sql)
                return execute(sql, *args)

            with connection.execute_wrapper(counted):
                self.get(client, url, **headers)
            for number in range(WARM_UP + self.requests):
                tick = time.perf_counter()
                self.get(client, url, **headers)
                if number >= WARM_UP:
                    samples.append((time.perf_counter() - tick) * 1000)
        return Timing(statistics.median(samples), percentile(samples, 95), len(statements))

    def get(self, client: Client, url: str, **headers: str) -> None:
        response = client.get(url, **headers)  # type: ignore[arg-type]
        if response.status_code != 200:
            raise CommandError(f"console: {url} answered {response.status_code}")

    def allowed(self) -> Any:
        # The test client's requests name the host "testserver".
        return override_settings(ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"])
