"""The metrics store: figures measured from the raw rows, and the daily snapshots kept of them.

One function, `measure`, turns a set of runs into figures; the daily snapshots, the gates, the
drift signals and the agent-version comparison all call it (or its grouped form), so a number
on screen always equals a recount from the raw rows. Other apps add the figures only they can
count (the approvals app: approvals, manual tasks, exceptions) with `register_figures`, so this
module never imports them.

Percentiles are nearest-rank (the smallest value with at least p % of the values at or below
it), the same on SQLite and PostgreSQL: the values are fetched and ranked here. A day is a
calendar day in TIME_ZONE, and every figure of a day is about the runs *started* that day.

How a set of runs is counted: a fixed number of queries whatever its size, each grouped by a
key (a workflow version, an agent version) when many groups are wanted at once, so a day's
snapshot of every version costs the same queries as one `measure`.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    Max,
    Q,
    QuerySet,
    Sum,
)
from django.db.models.functions import Cast, TruncDate
from django.utils import timezone

from orchestration.models import AgentVersionChoice, Attempt, Run, RunEvent, StepRun, WorkflowVersion
from orchestration.rollouts.models import AgentVersionSnapshot, DailySnapshot, Metric
from orchestration.status import RUN_FINAL, EventKind, RunStatus

logger = logging.getLogger("baton.rollouts")

# A registered source's key for "all the runs" when the figures are not grouped.
ALL = "all"
# Runs of a draft's trial (orchestration.definitions.try_draft) are no runs of the workflow.
TRIAL = "trial"


@dataclass
class Measures:
    """The figures of a set of runs (a day's cohort, a gate's window, a version's runs)."""

    runs_started: int = 0
    runs_succeeded: int = 0
    runs_failed: int = 0
    runs_cancelled: int = 0
    duration_p50: float | None = None  # seconds, finished runs
    duration_p95: float | None = None
    approvals_requested: int = 0
    approvals_approved: int = 0
    approvals_rejected: int = 0
    approvals_expired: int = 0
    approval_wait_p50: float | None = None  # seconds, decided approvals
    approval_wait_p95: float | None = None
    manual_tasks: int = 0
    exceptions: int = 0
    retries: int = 0
    loop_iterations: int = 0
    tokens: int = 0
    cost: float = 0.0
    # Agent versions only: that version's attempts and their latency (seconds).
    attempts: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None
    # The run ids behind the figures are not kept: a window is described by its bounds.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def runs_finished(self) -> int:
        return self.runs_succeeded + self.runs_failed + self.runs_cancelled

    @property
    def approvals_decided(self) -> int:
        return self.approvals_approved + self.approvals_rejected

    def value(self, metric: str) -> float | None:
        """The figure a success criterion compares (None: nothing to compute it from)."""
        started = self.runs_started
        if metric == Metric.SUCCESS_RATE:
            return self.runs_succeeded / self.runs_finished if self.runs_finished else None
        if metric == Metric.P95_DURATION:
            return self.duration_p95
        if metric == Metric.APPROVAL_WAIT:
            return self.approval_wait_p50
        if metric == Metric.RUNS:
            return float(self.runs_finished)
        per_run = {
            Metric.INTERVENTION_RATE: self.approvals_rejected + self.manual_tasks + self.exceptions,
            Metric.RETRIES_PER_RUN: self.retries,
            Metric.LOOPS_PER_RUN: self.loop_iterations,
            Metric.COST_PER_RUN: self.cost,
        }
        if metric not in per_run:
            raise ValueError(f"metric: '{metric}' is not one of {', '.join(Metric.values)}")
        return per_run[Metric(metric)] / started if started else None

    def runs_behind(self, metric: str) -> int:
        """How many runs `value(metric)` was computed from: finished runs for the figures of
        finished runs, every run started for the per-run rates."""
        if metric in (Metric.SUCCESS_RATE, Metric.P95_DURATION, Metric.RUNS):
            return self.runs_finished
        return self.runs_started


# Measures fields that are counts (they add up); the percentiles do not, they are ranked from
# their samples or by the database (see _Tally).
COUNTS = tuple(
    f.name for f in fields(Measures) if f.name != "extra" and not f.name.endswith(("_p50", "_p95"))
)
# A sample list named X gives the fields X_p50 and X_p95.
SAMPLES = ("duration", "approval_wait", "latency")


class FiguresSource(Protocol):
    """Figures another app counts: `source(runs, by=None)` gets the runs as a Q over Run (use
    `prefixed` to filter a related table) and returns, per group key (the value of the Run
    field path `by`, or ALL when `by` is None), Measures count fields by name and the samples
    `samples()` gives (sample lists, or percentiles already computed by the database)."""

    def __call__(self, runs: Q, *, by: str | None = None) -> Mapping[Any, Mapping[str, Any]]: ...


_SOURCES: list[FiguresSource] = []


def register_figures(source: FiguresSource) -> None:
    """Add figures counted by another app (called from its AppConfig.ready)."""
    if source not in _SOURCES:
        _SOURCES.append(source)


def percentile(ordered: list[float], pct: int) -> float | None:
    """Nearest rank of already sorted values: the smallest with pct % at or below it."""
    if not ordered:
        return None
    rank = -(-pct * len(ordered) // 100)  # ceil in integers: 0.95 * 20 must be 19, not 19.000...01
    return ordered[max(rank, 1) - 1]


def prefixed(q: Q, prefix: str) -> Q:
    """The same condition on Run, seen from a table that reaches Run through `prefix`
    ("run__", "step_run__run__"): a join, not a subquery, so one pass groups and filters."""
    out = Q()
    out.connector, out.negated = q.connector, q.negated
    children: list[Any] = []
    for child in q.children:
        if isinstance(child, Q):
            children.append(prefixed(child, prefix))
        else:
            lookup, value = child  # type: ignore[misc]
            children.append((prefix + lookup, value))
    out.children = children
    return out


class _PercentileDisc(Aggregate):
    """PostgreSQL's PERCENTILE_DISC is nearest rank: the value at row ceil(fraction * n)."""

    function = "PERCENTILE_DISC"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()


def _seconds_expression(end: str, start: str) -> Any:
    difference = ExpressionWrapper(F(end) - F(start), output_field=DurationField())
    if connection.vendor == "postgresql":
        return Cast(Func(difference, template="EXTRACT(EPOCH FROM %(expressions)s)"), FloatField())
    return difference  # a timedelta, turned into seconds here (exactly: microseconds / 10**6)


def percentile_aggregates(name: str, *, end: str, start: str, only: Q | None = None) -> dict[str, Any] | None:
    """On PostgreSQL: aggregates giving the nearest-rank p50 and p95 of (end - start) in
    seconds (PERCENTILE_DISC ranks them in the database, so nothing but two numbers per group
    crosses the wire and they ride in the same query as the counts). None elsewhere: there
    `samples` fetches the values and they are ranked in Python. The answers are the same."""
    if connection.vendor != "postgresql":
        return None
    seconds = _seconds_expression(end, start)
    return {
        f"{name}_p50": _PercentileDisc(seconds, fraction=0.5, filter=only),
        f"{name}_p95": _PercentileDisc(seconds, fraction=0.95, filter=only),
    }


def samples(qs: QuerySet[Any], key: str | None, *, name: str, end: str, start: str) -> dict[Any, dict[str, Any]]:
    """Nearest-rank p50 and p95 of (end - start) in seconds over `qs`, per value of `key`:
    ranked by PostgreSQL, or the values fetched for Python to rank (see percentile_aggregates)."""
    qs = qs.order_by()
    aggregates = percentile_aggregates(name, end=end, start=start)
    if aggregates is not None:
        return _rows(qs, key, aggregates)
    out: dict[Any, dict[str, Any]] = defaultdict(lambda: {name: []})
    values = qs.values_list(*([key] if key else []), _seconds_expression(end, start))
    for row in values:
        group, difference = (ALL, row[0]) if key is None else row
        out[group][name].append(difference.total_seconds())
    return out


@dataclass
class _Tally:
    """What measuring a group collects: counts, and for each percentile either the raw values
    (ranked here) or the figure the database ranked."""

    counts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ranked: dict[str, float] = field(default_factory=dict)

    def take(self, figures: Mapping[str, Any]) -> None:
        for name, value in figures.items():
            if isinstance(value, list):
                self.samples[name].extend(value)
            elif name.endswith(("_p50", "_p95")):
                self.ranked[name] = value
            else:
                self.counts[name] += value or 0

    def measures(self) -> Measures:
        m = Measures()
        for name in COUNTS:
            value = self.counts.get(name, 0)
            setattr(m, name, float(value) if name == "cost" else int(value))
        m.cost = round(m.cost, 6)
        for name in SAMPLES:
            ordered = sorted(self.samples.get(name, ()))
            for pct in (50, 95):
                field_name = f"{name}_p{pct}"
                setattr(m, field_name, self.ranked[field_name] if field_name in self.ranked else percentile(ordered, pct))
        return m


def _rows(qs: QuerySet[Any], key: str | None, aggregates: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """One aggregate query: per value of `key`, or over everything (key ALL)."""
    if key is None:
        return {ALL: qs.order_by().aggregate(**aggregates)}
    return {row.pop(key): row for row in qs.order_by().values(key).annotate(**aggregates)}


def _tallies(runs: Q, by: str | None) -> dict[Any, _Tally]:
    """Counts and samples of the runs matching `runs`, per value of the Run field path `by`."""
    tallies: dict[Any, _Tally] = defaultdict(_Tally)

    def via(prefix: str) -> str | None:
        return None if by is None else f"{prefix}{by}"

    def take(found: Mapping[Any, Mapping[str, Any]]) -> None:
        for group, figures in found.items():
            tallies[group].take(figures)

    # 1. Runs by status, conditional aggregation in one pass; durations of the finished ones
    #    (ranked in the same query on PostgreSQL).
    of_runs = Run.objects.filter(runs)
    finished = Q(status__in=RUN_FINAL, finished_at__isnull=False)
    statuses = {
        "runs_started": Count("id"),
        "runs_succeeded": Count("id", filter=Q(status=RunStatus.SUCCEEDED)),
        "runs_failed": Count("id", filter=Q(status=RunStatus.FAILED)),
        "runs_cancelled": Count("id", filter=Q(status=RunStatus.CANCELLED)),
    }
    ranked = percentile_aggregates("duration", end="finished_at", start="created_at", only=finished)
    take(_rows(of_runs, by, {**statuses, **(ranked or {})}))
    if ranked is None:
        take(samples(of_runs.filter(finished), by, name="duration", end="finished_at", start="created_at"))
    # 2. The runs' own attempts: retries (attempts beyond the first of each step run), usage.
    #    Attempts are numbered from 1 on every step run (transitions number them by the step's
    #    attempts counter, which never goes back), so "step runs with an attempt" are the
    #    attempts numbered 1: no COUNT(DISTINCT), which would sort every attempt of the day.
    attempts = Attempt.objects.filter(prefixed(runs, "step_run__run__"))
    usage = {
        "attempt_rows": Count("id"),
        "first_attempts": Count("id", filter=Q(number=1)),
        "tokens": Sum("total_tokens"),
        "cost": Sum("cost"),
    }
    for group, row in _rows(attempts, via("step_run__run__"), usage).items():
        tallies[group].take(
            {"retries": (row["attempt_rows"] or 0) - (row["first_attempts"] or 0), "tokens": row["tokens"], "cost": row["cost"]}
        )
    # 3. Loop iterations: one step.looped event per round sent back.
    loops = RunEvent.objects.filter(prefixed(runs, "run__"), kind=EventKind.STEP_LOOPED)
    take(_rows(loops, via("run__"), {"loop_iterations": Count("id")}))
    # 4. What other apps count.
    for source in _SOURCES:
        take(source(runs, by=by))
    return tallies


def _own_attempts(runs: Q, versions: Iterable[int] | None = None) -> dict[Any, _Tally]:
    """Per agent version: its own attempts in these runs, and their latency (finished ones)."""
    tallies: dict[Any, _Tally] = defaultdict(_Tally)
    attempts = Attempt.objects.filter(prefixed(runs, "step_run__run__"), agent_version__isnull=False)
    if versions is not None:
        attempts = attempts.filter(agent_version__in=list(versions))
    done = Q(finished_at__isnull=False)
    ranked = percentile_aggregates("latency", end="finished_at", start="started_at", only=done)
    for group, row in _rows(attempts, "agent_version_id", {"attempts": Count("id"), **(ranked or {})}).items():
        tallies[group].take(row)
    if ranked is None:
        found = samples(attempts.filter(done), "agent_version_id", name="latency", end="finished_at", start="started_at")
        for group, figures in found.items():
            tallies[group].take(figures)
    return tallies


def _as_q(runs: QuerySet[Run] | Q) -> Q:
    return runs if isinstance(runs, Q) else Q(pk__in=runs.order_by().values("pk"))


def measure(runs: QuerySet[Run] | Q, *, agent_version: Any = None) -> Measures:
    """The figures of `runs` (a queryset, or a Q over Run), from the raw rows, in a fixed
    number of queries whatever their number: runs, attempts, loops and the approvals app's
    figures (four on PostgreSQL, which ranks percentiles in those queries; six elsewhere, where
    the durations and the waits are fetched to be ranked), and for `agent_version` its own
    attempts (one more; two elsewhere)."""
    q = _as_q(runs)
    tally = _tallies(q, None)[ALL]
    if agent_version is not None:
        own = _own_attempts(q, [agent_version.pk]).get(agent_version.pk)
        for figures in (own.counts, own.ranked, dict(own.samples)) if own else ():
            tally.take(figures)
    return tally.measures()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The first instant of `day` in TIME_ZONE and the first instant of the next day."""
    zone = timezone.get_default_timezone()
    start = timezone.make_aware(datetime.combine(day, time.min), zone)
    end = timezone.make_aware(datetime.combine(day + timedelta(days=1), time.min), zone)
    return start, end


def parse_day(name: str, text: str) -> date | None:
    """A date typed as YYYY-MM-DD (a page's or the API's parameter `name`); None if empty."""
    if not text:
        return None
    try:
        if len(text) != 10:
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name}: {text[:20]!r} is not a date; write it like 2026-11-30") from None


def runs_of_day(day: date) -> QuerySet[Run]:
    since, until = day_bounds(day)
    return Run.objects.filter(created_at__gte=since, created_at__lt=until).exclude(trigger=TRIAL)


_FIGURE_FIELDS = [*(n for n in COUNTS if n != "attempts"), *(f"{s}_{p}" for s in ("duration", "approval_wait") for p in ("p50", "p95"))]


def _figures(m: Measures) -> dict[str, Any]:
    return {name: getattr(m, name) for name in _FIGURE_FIELDS}


# A day's figures of every workflow version and agent version on PostgreSQL, in one statement:
# the day's attempts are joined to their runs once (the costly part: a day of 100,000 runs has
# about 250,000 attempts), kept, and rolled up per run, then per workflow version and per agent
# version (through the runs' choices), beside each agent version's own attempts. The ORM path
# (_tallies) needs that join once per grouping. Both give the same figures; the tests recount
# them from the raw rows on both databases.
_DAY_SQL = """
WITH day_runs AS MATERIALIZED (
    SELECT id, version_id, status,
           CASE WHEN status = ANY(%(final)s) AND finished_at IS NOT NULL
                THEN EXTRACT(EPOCH FROM finished_at - created_at)::float8 END AS duration
    FROM {run} WHERE created_at >= %(since)s AND created_at < %(until)s AND trigger <> %(trial)s
),
day_attempts AS MATERIALIZED (
    SELECT s.run_id, a.number, a.total_tokens, a.cost, a.agent_version_id,
           CASE WHEN a.finished_at IS NOT NULL
                THEN EXTRACT(EPOCH FROM a.finished_at - a.started_at)::float8 END AS latency
    FROM {attempt} a JOIN {steprun} s ON s.id = a.step_run_id JOIN day_runs r ON r.id = s.run_id
),
per_run AS MATERIALIZED (
    SELECT r.id, r.version_id, r.status, r.duration,
           COALESCE(a.retries, 0) AS retries, COALESCE(a.tokens, 0) AS tokens,
           COALESCE(a.cost, 0) AS cost, COALESCE(l.loops, 0) AS loops
    FROM day_runs r
    LEFT JOIN (
        -- Attempts are numbered from 1 on every step run: the others are its retries.
        SELECT run_id, count(*) FILTER (WHERE number > 1) AS retries,
               sum(total_tokens) AS tokens, sum(cost) AS cost
        FROM day_attempts GROUP BY run_id
    ) a ON a.run_id = r.id
    LEFT JOIN (
        SELECT e.run_id, count(*) AS loops FROM {runevent} e JOIN day_runs r ON r.id = e.run_id
        WHERE e.kind = %(looped)s GROUP BY e.run_id
    ) l ON l.run_id = r.id
)
SELECT 'version' AS grouping, version_id AS key, {figures}, NULL::bigint, NULL::float8, NULL::float8 FROM per_run GROUP BY version_id
UNION ALL
SELECT 'agent_version', c.version_id, {figures}, NULL::bigint, NULL::float8, NULL::float8
FROM per_run JOIN {choice} c ON c.run_id = per_run.id GROUP BY c.version_id
UNION ALL
SELECT 'own', agent_version_id, {nothing}, count(*),
       PERCENTILE_DISC(0.5) WITHIN GROUP (ORDER BY latency), PERCENTILE_DISC(0.95) WITHIN GROUP (ORDER BY latency)
FROM day_attempts WHERE agent_version_id IS NOT NULL GROUP BY agent_version_id
"""
_DAY_FIGURES = [
    ("runs_started", "count(*)"),
    ("runs_succeeded", "count(*) FILTER (WHERE status = %(succeeded)s)"),
    ("runs_failed", "count(*) FILTER (WHERE status = %(failed)s)"),
    ("runs_cancelled", "count(*) FILTER (WHERE status = %(cancelled)s)"),
    # PERCENTILE_DISC skips NULLs (unfinished runs) and is nearest rank.
    ("duration_p50", "PERCENTILE_DISC(0.5) WITHIN GROUP (ORDER BY duration)"),
    ("duration_p95", "PERCENTILE_DISC(0.95) WITHIN GROUP (ORDER BY duration)"),
    # sum() of integers is numeric in PostgreSQL (a Decimal here): back to integers.
    ("retries", "sum(retries)::bigint"),
    ("loop_iterations", "sum(loops)::bigint"),
    ("tokens", "sum(tokens)::bigint"),
    ("cost", "sum(cost)"),
]


def _day_tallies_postgresql(since: datetime, until: datetime) -> tuple[dict[Any, _Tally], dict[Any, _Tally]]:
    """The orchestration figures of the day's runs per workflow version and per agent version
    (approvals and other registered figures are not in them)."""
    tables = {
        name: model._meta.db_table
        for name, model in (("run", Run), ("attempt", Attempt), ("steprun", StepRun), ("runevent", RunEvent), ("choice", AgentVersionChoice))
    }
    sql = _DAY_SQL.format(
        figures=", ".join(expression for _, expression in _DAY_FIGURES),
        nothing=", ".join("NULL" for _ in _DAY_FIGURES),
        **tables,
    )
    params: dict[str, Any] = {
        "since": since,
        "until": until,
        "final": list(RUN_FINAL),
        "trial": TRIAL,
        "looped": EventKind.STEP_LOOPED,
        "succeeded": RunStatus.SUCCEEDED,
        "failed": RunStatus.FAILED,
        "cancelled": RunStatus.CANCELLED,
    }
    by_version: dict[Any, _Tally] = defaultdict(_Tally)
    by_agent_version: dict[Any, _Tally] = defaultdict(_Tally)
    names = [name for name, _ in _DAY_FIGURES]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for grouping, key, *values in cursor.fetchall():
            figures, own = dict(zip(names, values[: len(names)], strict=True)), values[len(names) :]
            if grouping == "own":
                by_agent_version[key].take({"attempts": own[0], "latency_p50": own[1], "latency_p95": own[2]})
            else:
                (by_version if grouping == "version" else by_agent_version)[key].take(figures)
    return by_version, by_agent_version


def _lock_day(day: date) -> None:
    """Two passes rewriting the same day's rows (two tickers) take turns: on PostgreSQL a
    transaction-scoped advisory lock per day; SQLite has one writer at a time anyway."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [0x5A17, day.toordinal()])


def snapshot_day(day: date, *, now: datetime | None = None) -> int:
    """(Re)write the DailySnapshot of every workflow version and the AgentVersionSnapshot of
    every agent version with runs started on `day`; returns how many rows were written.

    Rows of that day whose version has no run any more are deleted, so a rebuilt day holds
    exactly what a recount gives.
    """
    now = now or timezone.now()
    if connection.vendor != "postgresql":
        # SQLite: counted outside the write transaction, whose lock stops every other writer.
        daily, agents = _day_rows(day, now)
        with transaction.atomic():
            _replace_day(day, daily, agents)
        return len(daily) + len(agents)
    with transaction.atomic():
        # PostgreSQL: counted under the day's lock, so a slower pass that counted earlier
        # never overwrites a later one's figures.
        _lock_day(day)
        with connection.cursor() as cursor:
            # These statements' row estimates are far off (the CTEs hide the day's size), which
            # makes the planner JIT-compile them: a second of compiling for a second of work.
            cursor.execute("SET LOCAL jit = off")
        daily, agents = _day_rows(day, now)
        _replace_day(day, daily, agents)
    return len(daily) + len(agents)


def _replace_day(day: date, daily: list[DailySnapshot], agents: list[AgentVersionSnapshot]) -> None:
    # The day's rows whole: the versions with runs may differ from the last pass's.
    DailySnapshot.objects.filter(day=day).delete()
    AgentVersionSnapshot.objects.filter(day=day).delete()
    DailySnapshot.objects.bulk_create(daily)
    AgentVersionSnapshot.objects.bulk_create(agents)


def _day_rows(day: date, now: datetime) -> tuple[list[DailySnapshot], list[AgentVersionSnapshot]]:
    since, until = day_bounds(day)
    runs = Q(created_at__gte=since, created_at__lt=until) & ~Q(trigger=TRIAL)
    if connection.vendor == "postgresql":
        by_version, by_agent_version = _day_tallies_postgresql(since, until)
        for source in _SOURCES:
            for path, tallies in (("version_id", by_version), ("agent_versions__version_id", by_agent_version)):
                for group, figures in source(runs, by=path).items():
                    tallies[group].take(figures)
    else:
        by_version = _tallies(runs, "version_id")
        by_agent_version = _tallies(runs, "agent_versions__version_id")
        for version_id, own in _own_attempts(runs).items():
            by_agent_version[version_id].take({**own.counts, **own.ranked, **own.samples})
    by_version.pop(None, None)
    by_agent_version.pop(None, None)
    workflow_of = dict(WorkflowVersion.objects.filter(pk__in=list(by_version)).values_list("pk", "workflow_id"))
    # The workflow's own row is measured, not summed (percentiles of versions do not add up);
    # a workflow whose runs that day were all of one version has that version's figures.
    versions_of: dict[int, list[int]] = defaultdict(list)
    for version_id, workflow_id in workflow_of.items():
        versions_of[workflow_id].append(version_id)
    by_workflow = {w: by_version[vs[0]] for w, vs in versions_of.items() if len(vs) == 1}
    several = [w for w, vs in versions_of.items() if len(vs) > 1]
    if several:
        by_workflow.update(_tallies(runs & Q(workflow_id__in=several), "workflow_id"))

    daily = [
        DailySnapshot(day=day, workflow_id=workflow_of[v], version_id=v, computed_at=now, **_figures(t.measures()))
        for v, t in sorted(by_version.items())
    ] + [
        DailySnapshot(day=day, workflow_id=w, version=None, computed_at=now, **_figures(t.measures()))
        for w, t in sorted(by_workflow.items())
    ]
    agents = []
    for v, t in sorted(by_agent_version.items()):
        m = t.measures()
        agents.append(
            AgentVersionSnapshot(
                day=day,
                agent_version_id=v,
                computed_at=now,
                attempts=m.attempts,
                latency_p50=m.latency_p50,
                latency_p95=m.latency_p95,
                **_figures(m),
            )
        )
    return daily, agents


def days_between(since: date, until: date) -> list[date]:
    return [since + timedelta(days=n) for n in range((until - since).days + 1)]


def rollup(since: date, until: date | None = None, *, now: datetime | None = None) -> int:
    """Rebuild the snapshots of every day from `since` to `until` (default today)."""
    now = now or timezone.now()
    until = until or timezone.localdate(now)
    if until < since:
        raise ValueError("until: must not be before since")
    return sum(snapshot_day(day, now=now) for day in days_between(since, until))


def changed_days(now: datetime) -> list[date]:
    """The days whose snapshots are out of date: the start days of the runs started or
    finished since the last pass wrote a snapshot (today and yesterday when there is none)."""
    today = timezone.localdate(now)
    last = DailySnapshot.objects.aggregate(last=Max("computed_at"))["last"]
    if last is None:
        return [today - timedelta(days=1), today]
    # A run that finished while the last pass was counting (its row committed just after the
    # pass read) is caught by looking back a little before that pass's time.
    since = last - timedelta(seconds=60)
    started = (
        Run.objects.filter(Q(created_at__gte=since) | Q(finished_at__gte=since))
        .annotate(day=TruncDate("created_at", tzinfo=timezone.get_default_timezone()))
        .order_by()
        .values_list("day", flat=True)
        .distinct()
    )
    return sorted(set(started))


_last_pass: datetime | None = None


def due(now: datetime) -> bool:
    """At most one pass per BATON_ROLLUP_SECONDS in this process (read late, so tests and
    deployments can change it)."""
    global _last_pass
    interval = float(settings.BATON_ROLLUP_SECONDS)
    if _last_pass is not None and _last_pass <= now < _last_pass + timedelta(seconds=interval):
        return False
    _last_pass = now
    return True


def forget_last_pass() -> None:
    global _last_pass
    _last_pass = None


def sweep(now: datetime) -> int:
    """Keep the snapshots current: rewrite the days with runs started or finished since the
    last pass. Returns how many snapshot rows were written. (The daily gate and drift checks
    run beside it, in orchestration/rollouts/daily.py, which calls this.)"""
    written = 0
    for day in changed_days(now):
        try:
            written += snapshot_day(day, now=now)
        except Exception:
            logger.exception("rollup: the snapshot of %s failed", day)
    return written


__all__ = [
    "ALL",
    "FiguresSource",
    "Measures",
    "Metric",
    "day_bounds",
    "measure",
    "percentile",
    "register_figures",
    "rollup",
    "runs_of_day",
    "snapshot_day",
    "sweep",
]
