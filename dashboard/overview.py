"""What the overview (the home page) shows: what is happening now, how the last day and week
went, and the latest runs, counted over the runs the reader may see.

One function, `overview_page(user)`, computes the page's context for the full page, its htmx
refresh and the live push alike, in a fixed number of queries whatever the number of runs
(tests/dashboard/test_overview.py counts them):

1. the workflows the reader sees (access.visible_runs reads their ids; none for superusers)
2. runs finished in the last 7 days, counted by hour, outcome and demo-or-not (grouped in SQL:
   at most 168 x 3 x 2 rows cross the wire)
3. their p50 and p95 duration per day, 4. and over the 7 days (ranked by PostgreSQL's
   PERCENTILE_DISC, in Python elsewhere: orchestration.rollouts.metrics.samples)
5. the last 24 hours' failures grouped by cause (the run's error, first line)
6. runs in flight now
7. steps waiting on people, and the oldest of those waits
8. tokens and cost of attempts that finished today
9. approvals overdue and decided in 24 h (the approvals app's rows, through a registered lookup)
10. circuits not closed
11. the latest runs

"The last 24 hours" is the current hour and the 23 before it, so the tiles add up to the bars
of the hourly chart; "today" is since midnight in TIME_ZONE. A run counts where it finished.
Runs the demo generated (trigger `history`, orchestration/rollouts/history.py) are counted like
any other, and the page says how many of the figures' runs they are.

Nothing here writes; the caller has checked that the user is signed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import (
    BooleanField,
    Case,
    Count,
    Min,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Substr, TruncDate, TruncHour
from django.urls import reverse
from django.utils import timezone

from dashboard.overview_charts import DayDurations, DurationChart, HourCounts, HourlyChart, durations, hourly
from dashboard.waiting_words import PEOPLE
from orchestration import access
from orchestration.durations import human_duration
from orchestration.models import AgentHealth, Attempt, CircuitState, Run, StepRun
from orchestration.rollouts import metrics
from orchestration.rollouts.history import TRIGGER as DEMO_TRIGGER
from orchestration.status import RUN_FINAL, RunStatus, StepStatus

LATEST_RUNS = 10
CAUSES_SHOWN = 5
CAUSE_CHARS = 120
HOURS = 24
DAYS = 7
IN_FLIGHT = (RunStatus.RUNNING, RunStatus.COMPENSATING)


# ---------------------------------------------------------------------------------------------
# Other apps' figures: the approvals app's inbox items (dashboard never imports approvals; it
# registers its lookup in ApprovalsConfig.ready, as for dashboard/waiting_words.py).


@dataclass(frozen=True)
class PeopleFigures:
    overdue: int = 0
    decided: int = 0  # in the last 24 hours


# (the runs the reader sees, or None for every run; now; the start of the 24 hours) -> figures
PeopleLookup = Callable[[QuerySet[Run] | None, datetime, datetime], PeopleFigures]
_people: list[PeopleLookup] = []


def register_people(lookup: PeopleLookup) -> None:
    if lookup not in _people:
        _people.append(lookup)


def firing_alerts(user: Any) -> int:
    """How many alerts are firing that this user may see.

    TODO(merge, issue 15): return orchestration.alerts.reads.firing_count(user), which the
    alerts branch provides; until then nothing fires.
    """
    return 0


# ---------------------------------------------------------------------------------------------
# The page


@dataclass(frozen=True)
class Tile:
    key: str  # data-tile, for tests and the stylesheet
    label: str
    value: str
    detail: str = ""
    url: str = ""
    # "bad" (something to act on), "warn", or "" (nothing wrong).
    tone: str = ""


@dataclass(frozen=True)
class Cause:
    text: str
    runs: int


@dataclass
class Overview:
    now: datetime
    tiles: list[Tile]
    hourly: HourlyChart
    durations: DurationChart
    causes: list[Cause]
    latest: list[Run]
    # How many of the runs behind the last-24-hours and 7-day figures the demo generated.
    demo_runs: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


def _percent(part: int, whole: int) -> str:
    if not whole:
        return "no runs"
    share = 100 * part / whole
    return f"{share:.1f}%".replace(".0%", "%")


def _runs_url(**query: str) -> str:
    return reverse("dashboard:runs") + ("?" + urlencode(query) if query else "")


def overview_page(user: Any, *, now: datetime | None = None) -> dict[str, Any]:
    """The overview's context: {"overview": Overview}."""
    now = now or timezone.now()
    # Superusers see every run: no filter at all, rather than a subquery that keeps everything.
    runs = None if user.is_superuser else access.visible_runs(user)
    all_runs: QuerySet[Run] = Run.objects.all() if runs is None else runs

    def of_runs(qs: QuerySet[Any], path: str) -> QuerySet[Any]:
        return qs if runs is None else qs.filter(**{f"{path}__in": runs})

    hour_start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    today = timezone.localdate(now)
    today_start, _ = metrics.day_bounds(today)
    # The 7 days are today and the six before it, from midnight: the duration chart's days.
    first_day = today - timedelta(days=DAYS - 1)
    days = [first_day + timedelta(days=n) for n in range(DAYS)]
    week_start = min(metrics.day_bounds(first_day)[0], hour_start)

    finished = all_runs.filter(status__in=RUN_FINAL, finished_at__gte=week_start)
    # 2. Counts by hour, outcome and whether the demo made the run.
    demo = Case(When(trigger=DEMO_TRIGGER, then=Value(True)), default=Value(False), output_field=BooleanField())
    by_hour: dict[datetime, dict[str, int]] = {}
    week = {status: 0 for status in RUN_FINAL}
    demo_runs = 0
    day_counts = {status: 0 for status in RUN_FINAL}
    for row in (
        finished.order_by()
        .annotate(hour=TruncHour("finished_at"), demo=demo)
        .values("hour", "status", "demo")
        .annotate(n=Count("id"))
    ):
        hour, status, n = row["hour"], row["status"], row["n"]
        if hour >= metrics.day_bounds(first_day)[0]:
            week[status] += n
        if hour >= hour_start:
            counts = by_hour.setdefault(hour, {})
            counts[status] = counts.get(status, 0) + n
            day_counts[status] += n
        if row["demo"]:
            demo_runs += n
    hours = [hour_start + timedelta(hours=n) for n in range(HOURS)]
    hour_rows = [
        HourCounts(
            hour=timezone.localtime(h),
            succeeded=by_hour.get(h, {}).get(RunStatus.SUCCEEDED, 0),
            failed=by_hour.get(h, {}).get(RunStatus.FAILED, 0),
            cancelled=by_hour.get(h, {}).get(RunStatus.CANCELLED, 0),
        )
        for h in hours
    ]
    # Runs finished before the 7 days' first midnight belong to no day of the chart.
    in_days = finished.filter(finished_at__gte=metrics.day_bounds(first_day)[0])
    # 3. and 4. Durations: per day, and over the whole week.
    per_day = _durations(in_days.annotate(day=TruncDate("finished_at")), "day")
    overall = _durations(in_days, None).get(metrics.ALL, {})
    day_rows = [DayDurations(day=d, runs=0, p50=None, p95=None) for d in days]
    for index, day in enumerate(days):
        figures = per_day.get(day)
        if figures:
            p50, p95, n = _ranked(figures)
            day_rows[index] = DayDurations(day=day, runs=n, p50=p50, p95=p95)
    week_p50, week_p95, _ = _ranked(overall) if overall else (None, None, 0)

    # 5. What the last 24 hours' failures failed of: grouped by the error's start in SQL, then
    # by its first line here (a traceback after it differs from run to run).
    by_cause: dict[str, int] = {}
    for row in (
        all_runs.filter(status=RunStatus.FAILED, finished_at__gte=hour_start)
        .order_by()
        .annotate(cause=Substr("error", 1, CAUSE_CHARS))
        .values("cause")
        .annotate(n=Count("id"))
        .order_by("-n", "cause")[: CAUSES_SHOWN * 4]
    ):
        text = _first_line(row["cause"])
        by_cause[text] = by_cause.get(text, 0) + row["n"]
    causes = [Cause(text, n) for text, n in sorted(by_cause.items(), key=lambda c: (-c[1], c[0]))[:CAUSES_SHOWN]]

    # 6. In flight now (the status index; few rows are running at any time).
    running = all_runs.filter(status__in=IN_FLIGHT).count()
    # 7. Waiting on people: the partial index on waiting rows.
    waiting = of_runs(
        StepRun.objects.filter(status=StepStatus.WAITING, waiting_for__in=PEOPLE, run__status=RunStatus.RUNNING), "run"
    ).aggregate(runs=Count("run", distinct=True), oldest=Min("created_at"))
    # 8. Tokens and cost of today's attempts.
    usage = of_runs(Attempt.objects.filter(finished_at__gte=today_start), "step_run__run").aggregate(
        tokens=Sum("total_tokens"), cost=Sum("cost")
    )
    # 9. Inbox items.
    people = PeopleFigures()
    for lookup in _people:
        found = lookup(runs, now, hour_start)
        people = PeopleFigures(people.overdue + found.overdue, people.decided + found.decided)
    # 10. Circuits are the agents', shown to everyone (as on the Agents page).
    circuits = AgentHealth.objects.exclude(circuit_state=CircuitState.CLOSED).count()
    # 11. The latest runs.
    latest = list(all_runs.select_related("workflow", "version").order_by("-created_at", "-id")[:LATEST_RUNS])

    alerts = firing_alerts(user)
    succeeded, failed, cancelled = (day_counts[s] for s in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED))
    week_finished = sum(week.values())
    oldest = waiting["oldest"]
    tiles = [
        Tile("running", "Running now", str(running), "runs in flight", _runs_url(status=RunStatus.RUNNING)),
        Tile(
            "waiting",
            "Waiting on people",
            str(waiting["runs"]),
            f"oldest waiting {human_duration((now - oldest).total_seconds())}" if oldest else "nobody is holding a run",
            _runs_url(status="waiting"),
            "warn" if waiting["runs"] else "",
        ),
        Tile(
            "succeeded",
            "Succeeded, 24 h",
            str(succeeded),
            f"{cancelled} cancelled" if cancelled else "finished in the last 24 hours",
            _runs_url(status=RunStatus.SUCCEEDED),
        ),
        Tile(
            "failed",
            "Failed, 24 h",
            str(failed),
            f"{causes[0].runs} of {causes[0].text}" if causes else "no failures",
            _runs_url(status=RunStatus.FAILED),
            "bad" if failed else "",
        ),
        Tile(
            "success_rate",
            "Success rate, 7 days",
            _percent(week[RunStatus.SUCCEEDED], week_finished),
            f"{week[RunStatus.SUCCEEDED]} of {week_finished} finished runs",
        ),
        Tile(
            "duration",
            "Run duration, 7 days",
            f"p50 {human_duration(week_p50)}" if week_p50 is not None else "no runs",
            f"p95 {human_duration(week_p95)}" if week_p95 is not None else "",
        ),
        Tile(
            "usage",
            "Tokens and cost today",
            f"{usage['tokens'] or 0:,} tokens",
            _money(usage["cost"] or 0.0),
        ),
        Tile(
            "overdue",
            "Overdue approvals",
            str(people.overdue),
            f"{people.decided} decided in 24 h",
            reverse("approvals:inbox"),
            "bad" if people.overdue else "",
        ),
        Tile(
            "circuits",
            "Open circuits",
            str(circuits),
            "agents refusing calls" if circuits else "every agent's circuit is closed",
            reverse("dashboard:agents"),
            "bad" if circuits else "",
        ),
        # Filled in by the alerts branch at merge (firing_alerts above).
        Tile("alerts", "Firing alerts", str(alerts), "firing now" if alerts else "none firing", "", "bad" if alerts else ""),
    ]
    return {
        "overview": Overview(
            now=now,
            tiles=tiles,
            hourly=hourly(hour_rows),
            durations=durations(day_rows),
            causes=causes,
            latest=latest,
            demo_runs=demo_runs,
            figures={
                "running": running,
                "waiting": waiting["runs"],
                "oldest_wait": oldest,
                "succeeded_24h": succeeded,
                "failed_24h": failed,
                "cancelled_24h": cancelled,
                "succeeded_7d": week[RunStatus.SUCCEEDED],
                "finished_7d": week_finished,
                "p50_7d": week_p50,
                "p95_7d": week_p95,
                "tokens_today": usage["tokens"] or 0,
                "cost_today": usage["cost"] or 0.0,
                "overdue": people.overdue,
                "decided_24h": people.decided,
                "circuits": circuits,
                "alerts": alerts,
            },
        ),
    }


def _durations(qs: QuerySet[Run], key: str | None) -> dict[Any, dict[str, Any]]:
    """p50 and p95 of the runs' durations and how many runs, per value of `key` (or over all,
    key metrics.ALL): ranked by PostgreSQL in the one query, or the values fetched for Python
    to rank (orchestration.rollouts.metrics.samples, the rollout figures' own way)."""
    aggregates = metrics.percentile_aggregates("took", end="finished_at", start="created_at")
    if aggregates is None:
        return metrics.samples(qs, key, name="took", end="finished_at", start="created_at")
    qs = qs.order_by()
    if key is None:
        return {metrics.ALL: qs.aggregate(n=Count("id"), **aggregates)}
    return {row.pop(key): row for row in qs.values(key).annotate(n=Count("id"), **aggregates)}


def _ranked(figures: dict[str, Any]) -> tuple[float | None, float | None, int]:
    """p50, p95 and the number of runs from one group of metrics.samples' answer."""
    if "took" in figures:  # values to rank here (SQLite)
        values = sorted(figures["took"])
        return metrics.percentile(values, 50), metrics.percentile(values, 95), len(values)
    return figures.get("took_p50"), figures.get("took_p95"), int(figures.get("n", 0))


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "no error recorded"


def _money(amount: float) -> str:
    if amount == 0:
        return "$0"
    if amount < 0.01:
        return f"${amount:.4f}".rstrip("0")
    return f"${amount:,.2f}"

