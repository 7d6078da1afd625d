"""Past runs of a published workflow, fabricated as rows: for the demo, the bench and the tests.

`make_history` writes Run, StepRun, Attempt (with total_tokens and cost), RunEvent (step.looped
among them) and AgentVersionChoice rows with bulk inserts, never through the engine: a month of
runs takes seconds, 100,000 runs about a minute on PostgreSQL. What each run does is a `RunPlan`
returned by `outcomes(day, index, rng)`, so a test that passes its own knows every figure
exactly; the default is a realistic mix drawn from the seeded generator.

The people's part of a run (approvals, gates, manual tasks, exceptions) are the approvals app's
rows, which orchestration never imports: that app registers a writer with `register_people`.

Generated runs have `trigger = "history"`, so a page can say they are demo data.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.db import connection, models, transaction
from django.utils import timezone

from orchestration.models import AgentVersion, AgentVersionChoice, Attempt, Run, RunEvent, StepRun, Workflow
from orchestration.rollouts.metrics import day_bounds
from orchestration.status import AttemptStatus, ErrorClass, EventKind, RunStatus, StepStatus

TRIGGER = "history"
CHUNK = 5000  # runs per transaction: keeps memory flat and each transaction short


@dataclass
class RunPlan:
    """What one generated run did."""

    status: str = RunStatus.SUCCEEDED  # succeeded, failed, cancelled or running
    start: float | None = None  # seconds after the day's first instant; None: spread over the day
    duration: float = 120.0  # seconds from start to finish (finished runs)
    retries: int = 0  # attempts beyond the first, on the first agent step
    loops: int = 0  # rounds sent back (a step.looped event and a new round of the first agent step each)
    tokens: int = 0  # on the first agent step's last attempt
    cost: float = 0.0
    approval: str | None = None  # the approval's status: approved, rejected, expired, pending
    approval_kind: str = "approval"  # or "gate"
    approval_wait: float = 0.0  # seconds from request to decision
    manual: bool = False  # a manual task (submitted)
    exception: bool = False  # an exception item (resolved) on the step that failed
    versions: dict[str, str] = field(default_factory=dict)  # agent name -> version label; else by weight


@dataclass(frozen=True)
class PersonWork:
    """An inbox item the approvals app writes for a generated run."""

    run_id: int
    step_run_id: int
    step_key: str
    kind: str  # approval, gate, manual, exception
    status: str  # approved, rejected, expired, pending, submitted, resolved
    created_at: datetime
    decided_at: datetime | None


Outcomes = Callable[[date, int, random.Random], RunPlan]
PeopleWriter = Callable[[list[PersonWork]], int]

_PEOPLE: list[PeopleWriter] = []


def register_people(writer: PeopleWriter) -> None:
    if writer not in _PEOPLE:
        _PEOPLE.append(writer)


@contextmanager
def backdated(*model_classes: type[models.Model]) -> Iterator[None]:
    """Let bulk inserts keep the created_at they are given (auto_now_add would overwrite it
    with the present). Only for generators like this one; restored on the way out."""
    switched = []
    for model in model_classes:
        for f in model._meta.concrete_fields:
            if isinstance(f, models.DateTimeField) and f.auto_now_add:
                f.auto_now_add = False
                switched.append(f)
    try:
        yield
    finally:
        for f in switched:
            f.auto_now_add = True


def insert(model: type[models.Model], objs: list[Any]) -> None:
    """Write many new rows of `model`, setting their ids.

    On PostgreSQL the ids are taken from the table's sequence and the rows go in by COPY,
    values read straight off the instances (a generated day of 100,000 runs is a million rows,
    and bulk_create's per-value preparation would be most of the time). Elsewhere,
    bulk_create. Only for rows built here: no save(), no signals, created_at as given.
    """
    if not objs:
        return
    if connection.vendor != "postgresql":
        model._default_manager.bulk_create(objs, batch_size=2000)
        return
    table = model._meta.db_table
    fields = list(model._meta.concrete_fields)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)", [table, len(objs)]
        )
        for obj, (pk,) in zip(objs, cursor.fetchall(), strict=True):
            obj.pk = pk
        json_fields = {f.attname for f in fields if isinstance(f, models.JSONField)}
        columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
        with cursor.cursor.copy(f"COPY {connection.ops.quote_name(table)} ({columns}) FROM STDIN") as copy:
            for obj in objs:
                row = [getattr(obj, f.attname) for f in fields]
                # A JSON value as text; None stays SQL NULL, as the ORM writes it.
                copy.write_row(
                    [json.dumps(v) if f.attname in json_fields and v is not None else v for f, v in zip(fields, row, strict=True)]
                )


def realistic(*, approvals: bool, manual: bool) -> Outcomes:
    """A plausible mix: nine in ten runs succeed, a few retry or loop, approvals wait minutes
    to hours, a failed run sometimes goes to the owner as an exception."""

    def plan(day: date, index: int, rng: random.Random) -> RunPlan:
        roll = rng.random()
        status = RunStatus.SUCCEEDED if roll < 0.9 else RunStatus.FAILED if roll < 0.97 else RunStatus.CANCELLED
        tokens = rng.randint(400, 4000)
        approval = None
        if approvals:
            pick = rng.random()
            approval = "approved" if pick < 0.86 else "rejected" if pick < 0.96 else "expired"
        return RunPlan(
            status=status,
            duration=round(rng.lognormvariate(math.log(180), 0.7), 3),
            retries=(rng.random() < 0.12) + (rng.random() < 0.03),
            loops=int(rng.random() < 0.2),
            tokens=tokens,
            cost=round(tokens * 0.000015, 6),
            approval=approval,
            approval_wait=round(rng.expovariate(1 / 1800), 3),
            manual=manual and rng.random() < 0.1,
            exception=status == RunStatus.FAILED and rng.random() < 0.3,
        )

    return plan


@dataclass
class HistoryReport:
    runs: int = 0
    steps: int = 0
    attempts: int = 0
    events: int = 0
    items: int = 0


_FINAL_EVENT = {
    RunStatus.SUCCEEDED: EventKind.RUN_SUCCEEDED,
    RunStatus.FAILED: EventKind.RUN_FAILED,
    RunStatus.CANCELLED: EventKind.RUN_CANCELLED,
}


def make_history(
    *,
    workflow: Workflow,
    days: int,
    runs_per_day: int | Callable[[date], int],
    now: datetime | None = None,
    seed: int = 0,
    outcomes: Outcomes | None = None,
) -> HistoryReport:
    """Runs of `workflow`'s latest published version over the `days` days ending today (in
    TIME_ZONE; today's runs start before `now`). A run whose finish would fall after `now`
    is written as still running."""
    now = now or timezone.now()
    version = workflow.latest_version
    if version is None:
        raise ValueError(f"workflow: '{workflow.key}' has no published version")
    if days < 1:
        raise ValueError("days: must be at least 1")
    steps = [s for s in version.spec["steps"]]
    if not steps:
        raise ValueError(f"workflow: '{workflow.key}' has no steps")
    agent_steps = [s for s in steps if s["kind"] == "agent"]
    approval_step = next((s for s in steps if s["kind"] == "approval"), steps[0])
    manual_step = next((s for s in steps if s["kind"] == "manual"), steps[0])
    agent_names = sorted({s["agent"] for s in agent_steps})
    versions: dict[str, list[AgentVersion]] = {}
    for v in AgentVersion.objects.filter(agent__name__in=agent_names).select_related("agent").order_by("pk"):
        versions.setdefault(v.agent.name, []).append(v)
    plan_of = outcomes or realistic(approvals=approval_step["kind"] == "approval", manual=manual_step["kind"] == "manual")
    rng = random.Random(seed)
    today = timezone.localdate(now)
    report = HistoryReport()
    pending: list[tuple[datetime, RunPlan]] = []
    for back in range(days - 1, -1, -1):
        day = today - timedelta(days=back)
        start_of_day, end_of_day = day_bounds(day)
        span = (min(end_of_day, now) - start_of_day).total_seconds()
        count = runs_per_day(day) if callable(runs_per_day) else runs_per_day
        for index in range(count):
            plan = plan_of(day, index, rng)
            offset = plan.start if plan.start is not None else (index + rng.random()) * span / max(count, 1)
            created = start_of_day + timedelta(seconds=offset)
            if created >= now:
                continue
            pending.append((created, plan))
            if len(pending) >= CHUNK:
                _write(workflow, version, steps, versions, pending, now, rng, report, approval_step, manual_step)
                pending = []
    if pending:
        _write(workflow, version, steps, versions, pending, now, rng, report, approval_step, manual_step)
    return report


def _pick(choices: list[AgentVersion], label: str | None, rng: random.Random) -> AgentVersion | None:
    if label:
        return next((v for v in choices if v.label == label), None)
    live = [v for v in choices if v.weight > 0]
    if not live:
        return None
    return rng.choices(live, weights=[v.weight for v in live])[0]


def _last_round(rows: list[StepRun], key: str) -> StepRun:
    return next(s for s in reversed(rows) if s.step_key == key)


def _write(
    workflow: Workflow,
    version: Any,
    steps: list[dict[str, Any]],
    versions: dict[str, list[AgentVersion]],
    plans: list[tuple[datetime, RunPlan]],
    now: datetime,
    rng: random.Random,
    report: HistoryReport,
    approval_step: dict[str, Any],
    manual_step: dict[str, Any],
) -> None:
    with transaction.atomic(), backdated(Run, StepRun, RunEvent, AgentVersionChoice):
        runs = []
        for created, plan in plans:
            finished = created + timedelta(seconds=plan.duration)
            if plan.status == RunStatus.RUNNING or finished > now:
                plan.status, finished_at = RunStatus.RUNNING, None
            else:
                finished_at = finished
            runs.append(
                Run(
                    workflow=workflow,
                    version=version,
                    status=plan.status,
                    trigger=TRIGGER,
                    input={},
                    created_at=created,
                    finished_at=finished_at,
                )
            )
        insert(Run, runs)

        step_rows: list[StepRun] = []
        # Per run: its step rows, in order (the last one is where a failure or cancel happened).
        per_run: list[list[StepRun]] = []
        chosen: list[AgentVersionChoice] = []
        picks: list[dict[str, AgentVersion]] = []
        for run, (created, plan) in zip(runs, plans, strict=True):
            pick: dict[str, AgentVersion] = {}
            for name, choices in versions.items():
                v = _pick(choices, plan.versions.get(name), rng)
                if v is not None:
                    pick[name] = v
                    chosen.append(AgentVersionChoice(run=run, agent_name=name, version=v, created_at=created))
            picks.append(pick)
            end = run.finished_at or now
            rows = []
            first_agent = True
            for position, spec in enumerate(steps):
                last = position == len(steps) - 1
                status = StepStatus.SUCCEEDED
                if last and run.status != RunStatus.SUCCEEDED:
                    status = {
                        RunStatus.FAILED: StepStatus.FAILED,
                        RunStatus.CANCELLED: StepStatus.CANCELLED,
                    }.get(RunStatus(run.status), StepStatus.RUNNING)
                rounds = 1 + plan.loops if spec["kind"] == "agent" and first_agent else 1
                for iteration in range(1, rounds + 1):
                    final = iteration == rounds
                    step = StepRun(
                        run=run,
                        step_key=spec["key"],
                        iteration=iteration,
                        kind=spec["kind"],
                        status=status if final else StepStatus.SUCCEEDED,
                        agent_name=spec.get("agent", ""),
                        created_at=created,
                        started_at=created,
                        finished_at=end if status != StepStatus.RUNNING or not final else None,
                    )
                    rows.append(step)
                if spec["kind"] == "agent":
                    first_agent = False
            per_run.append(rows)
            step_rows.extend(rows)
        insert(StepRun, step_rows)
        insert(AgentVersionChoice, chosen)

        attempts: list[Attempt] = []
        events: list[RunEvent] = []
        work: list[PersonWork] = []
        for run, (created, plan), rows, pick in zip(runs, plans, per_run, picks, strict=True):
            end = run.finished_at or now
            first = next((s for s in rows if s.kind == "agent"), None)
            for step in rows:
                if step.kind != "agent":
                    continue
                count = 1 + plan.retries if step is first else 1
                for number in range(1, count + 1):
                    ok = number == count and step.status != StepStatus.FAILED
                    tokens, cost = (plan.tokens, plan.cost) if step is first and number == count else (0, 0.0)
                    attempts.append(
                        Attempt(
                            step_run=step,
                            number=number,
                            status=AttemptStatus.SUCCEEDED if ok else AttemptStatus.FAILED,
                            agent_name=step.agent_name,
                            error_class="" if ok else ErrorClass.TRANSIENT,
                            agent_version=pick.get(step.agent_name),
                            usage={"total_tokens": tokens, "cost": cost} if tokens or cost else {},
                            total_tokens=tokens,
                            cost=cost,
                            started_at=created,
                            finished_at=end if step.finished_at is not None or number < count else None,
                        )
                    )
            events.append(RunEvent(run=run, kind=EventKind.RUN_STARTED, to_status=RunStatus.RUNNING, created_at=created))
            looped = [s for s in rows if s.kind == "agent" and s.iteration > 1]
            for step in looped:
                events.append(
                    RunEvent(run=run, step_run=step, kind=EventKind.STEP_LOOPED, message="sent back", created_at=created)
                )
            if run.status in _FINAL_EVENT:
                events.append(
                    RunEvent(run=run, kind=_FINAL_EVENT[RunStatus(run.status)], to_status=run.status, created_at=end)
                )

            if plan.approval:
                target = _last_round(rows, approval_step["key"])
                decided = plan.approval in ("approved", "rejected", "expired")
                work.append(
                    PersonWork(
                        run_id=run.pk,
                        step_run_id=target.pk,
                        step_key=target.step_key,
                        kind=plan.approval_kind,
                        status=plan.approval,
                        created_at=created,
                        decided_at=created + timedelta(seconds=plan.approval_wait) if decided else None,
                    )
                )
            if plan.manual:
                target = _last_round(rows, manual_step["key"])
                work.append(
                    PersonWork(run.pk, target.pk, target.step_key, "manual", "submitted", created, end)
                )
            if plan.exception:
                target = rows[-1]
                work.append(PersonWork(run.pk, target.pk, target.step_key, "exception", "resolved", created, end))
        insert(Attempt, attempts)
        insert(RunEvent, events)
        for writer in _PEOPLE:
            report.items += writer(work)
    report.runs += len(runs)
    report.steps += len(step_rows)
    report.attempts += len(attempts)
    report.events += len(events)
