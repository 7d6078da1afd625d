"""What the overview (the home page) shows: what is happening now, how the last day and week
went, and the latest runs, counted over the runs the reader may see.

One function, `overview_page(user)`, computes the page's context for the full page, its htmx
refresh and the live push alike, in a fixed number of queries whatever the number of runs
(tests/dashboard/test_overview.py counts them; superusers skip the first two):

1. the workflows the reader sees, 2. the sub-workflow runs they see that are running or
   finished in the 7 days (orchestration.access.visible_runs_q: the rule as a condition the
   other queries join through, instead of a subquery over every run)
3. the 7 days, day by day: runs finished by outcome, how many the demo made, their p50 and p95
   duration (ranked by PostgreSQL's PERCENTILE_DISC; elsewhere the values come to Python)
4. the last 24 hours, hour by hour, by outcome, with the runs in flight now in the same pass
5. the p50 and p95 duration of the last 24 hours' runs
6. the last 24 hours' failures grouped by cause (the run's error, first line)
7. steps waiting on people, and the oldest of those waits
8. tokens and cost of attempts that finished today
9. approvals overdue and decided in 24 h (the approvals app's rows, through a registered lookup)
10. circuits not closed
11. the latest runs

"The last 24 hours" is the current hour and the 23 before it, so the tiles add up to the bars
of the hourly chart; "the 7 days" are today and the six before it, from midnight in TIME_ZONE,
the duration chart's days; "today" is since midnight. A run counts where it finished. Runs the
demo generated (trigger `history`, orchestration/rollouts/history.py) are counted like any
other, and the page says how many of the week's runs they are.

Indexes: run_finished_idx (runs by finish time), run_status_time_idx (in flight),
steprun_waiting_idx (waiting steps), attempt_finished_idx (today's attempts).

Nothing here writes; the caller has checked that the user is signed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import (
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    IntegerField,
    Min,
    Q,
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
from orchestration.alerts import reads as alerts_reads
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
LATEST_FIELDS = (
    "status",
    "trigger",
    "created_at",
    "finished_at",
    "workflow__key",
    "workflow__name",
    "version__number",
    "version__trial",
)


# ---------------------------------------------------------------------------------------------
# Other apps' figures: the approvals app's inbox items (dashboard never imports approvals; it
# registers its lookup in ApprovalsConfig.ready, as for dashboard/waiting_words.py).


@dataclass(frozen=True)
class PeopleFigures:
    overdue: int = 0
    decided: int = 0  # in the last 24 hours


# (a condition on items, `run__...`, for the runs the reader sees, or None for every run; now;
# the start of the 24 hours) -> figures
PeopleLookup = Callable[[Q | None, datetime, datetime], PeopleFigures]
_people: list[PeopleLookup] = []


def register_people(lookup: PeopleLookup) -> None:
    if lookup not in _people:
        _people.append(lookup)


def firing_alerts(user: Any) -> int:
    """How many alerts are firing that this user may see (acknowledged ones too: they still hold)."""
    return alerts_reads.firing_count(user)


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
    hour_start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    today = timezone.localdate(now)
    today_start, _ = metrics.day_bounds(today)
    first_day = today - timedelta(days=DAYS - 1)
    days = [first_day + timedelta(days=n) for n in range(DAYS)]
    week_start = min(metrics.day_bounds(first_day)[0], hour_start)

    # 1. and 2. What the reader sees, as a condition to join through (None: everything).
    seen = access.visible_runs_q(user, nested_within=Q(finished_at__isnull=True) | Q(finished_at__gte=week_start))

    def runs_seen(prefix: str = "") -> Q:
        return Q() if seen is None else metrics.prefixed(seen, prefix) if prefix else seen

    runs = Run.objects.filter(runs_seen())
    final = Q(status__in=RUN_FINAL)
    took = ExpressionWrapper(F("finished_at") - F("created_at"), output_field=DurationField())
    demo = Case(When(trigger=DEMO_TRIGGER, then=Value(1)), default=Value(0), output_field=IntegerField())

    # 3. The week, day by day.
    week = runs.filter(final, finished_at__gte=metrics.day_bounds(first_day)[0]).order_by().annotate(day=TruncDate("finished_at"))
    per_day: dict[Any, dict[str, Any]] = {}
    counts = {
        "n": Count("id"),
        "succeeded": Count("id", filter=Q(status=RunStatus.SUCCEEDED)),
        "demo": Sum(demo),
    }
    percentiles = metrics.percentile_aggregates("took", end="finished_at", start="created_at")
    if percentiles is not None:
        for row in week.values("day").annotate(**counts, **percentiles):
            per_day[row["day"]] = dict(row)
    else:
        for day, status, is_demo, seconds in week.values_list("day", "status", demo, took):
            into = per_day.setdefault(day, {"n": 0, "succeeded": 0, "demo": 0, "took": []})
            into["n"] += 1
            into["succeeded"] += status == RunStatus.SUCCEEDED
            into["demo"] += is_demo
            into["took"].append(seconds.total_seconds())
    day_rows = []
    for day in days:
        figures = per_day.get(day)
        p50, p95 = _ranked(figures) if figures else (None, None)
        day_rows.append(DayDurations(day=day, runs=figures["n"] if figures else 0, p50=p50, p95=p95))
    week_finished = sum(int(f["n"]) for f in per_day.values())
    week_succeeded = sum(int(f["succeeded"]) for f in per_day.values())
    demo_runs = sum(int(f["demo"] or 0) for f in per_day.values())

    # 4. The last 24 hours by hour and outcome, and what is in flight (its hour is NULL).
    by_hour: dict[datetime, dict[str, int]] = {}
    running = 0
    for hour, status, n in (
        runs.filter((final & Q(finished_at__gte=hour_start)) | Q(status__in=IN_FLIGHT))
        .order_by()
        .annotate(hour=TruncHour("finished_at"))
        .values_list("hour", "status")
        .annotate(n=Count("id"))
    ):
        if status in IN_FLIGHT:
            running += n
        elif hour is not None:
            by_hour.setdefault(hour, {})[status] = n
    hour_rows = [
        HourCounts(
            hour=timezone.localtime(h),
            succeeded=by_hour.get(h, {}).get(RunStatus.SUCCEEDED, 0),
            failed=by_hour.get(h, {}).get(RunStatus.FAILED, 0),
            cancelled=by_hour.get(h, {}).get(RunStatus.CANCELLED, 0),
        )
        for h in (hour_start + timedelta(hours=n) for n in range(HOURS))
    ]
    succeeded, failed, cancelled = (sum(getattr(r, o) for r in hour_rows) for o in ("succeeded", "failed", "cancelled"))

    # 5. The last 24 hours' durations.
    last_day = runs.filter(final, finished_at__gte=hour_start).order_by()
    if percentiles is not None:
        day_p50, day_p95 = _ranked(last_day.aggregate(**percentiles))
    else:
        day_p50, day_p95 = _ranked({"took": [t.total_seconds() for t in last_day.values_list(took, flat=True)]})

    # 6. What the last 24 hours' failures failed of: grouped by the error's start in SQL, then
    # by its first line here (a traceback after it differs from run to run).
    by_cause: dict[str, int] = {}
    for grouped in (
        runs.filter(status=RunStatus.FAILED, finished_at__gte=hour_start)
        .order_by()
        .annotate(cause=Substr("error", 1, CAUSE_CHARS))
        .values("cause")
        .annotate(n=Count("id"))
        .order_by("-n", "cause")[: CAUSES_SHOWN * 4]
    ):
        text = _first_line(grouped["cause"])
        by_cause[text] = by_cause.get(text, 0) + grouped["n"]
    causes = [Cause(text, n) for text, n in sorted(by_cause.items(), key=lambda c: (-c[1], c[0]))[:CAUSES_SHOWN]]

    # 7. Waiting on people: the partial index on waiting rows, joined to their runs.
    waiting = StepRun.objects.filter(
        runs_seen("run__"), status=StepStatus.WAITING, waiting_for__in=PEOPLE, run__status=RunStatus.RUNNING
    ).aggregate(runs=Count("run", distinct=True), oldest=Min("created_at"))
    # 8. Tokens and cost of today's attempts.
    usage = Attempt.objects.filter(runs_seen("step_run__run__"), finished_at__gte=today_start).aggregate(
        tokens=Sum("total_tokens"), cost=Sum("cost")
    )
    # 9. Inbox items.
    people = PeopleFigures()
    for lookup in _people:
        found = lookup(runs_seen("run__") if seen is not None else None, now, hour_start)
        people = PeopleFigures(people.overdue + found.overdue, people.decided + found.decided)
    # 10. Circuits are the agents', shown to everyone (as on the Agents page).
    circuits = AgentHealth.objects.exclude(circuit_state=CircuitState.CLOSED).count()
    # 11. The latest runs (the created_at index, newest first). Through the narrowed rule: a
    # sub-workflow run that finished before the 7 days is left out, which shows only to a
    # reader with fewer than LATEST_RUNS newer runs, who would see an older one in its place.
    # Only what a row shows: a run's input and its version's spec can be large.
    latest = list(
        runs.select_related("workflow", "version")
        .only(*LATEST_FIELDS)
        .order_by("-created_at", "-id")[:LATEST_RUNS]
    )

    alerts = firing_alerts(user)
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
            f"most: {causes[0].runs} × {causes[0].text}" if causes else "no failures",
            _runs_url(status=RunStatus.FAILED),
            "bad" if failed else "",
        ),
        Tile(
            "success_rate",
            "Success rate, 7 days",
            _percent(week_succeeded, week_finished),
            f"{week_succeeded} of {week_finished} finished runs",
        ),
        Tile(
            "duration",
            "Run duration, 24 h",
            f"p50 {human_duration(day_p50)}" if day_p50 is not None else "no runs",
            f"p95 {human_duration(day_p95)}" if day_p95 is not None else "",
        ),
        Tile("usage", "Tokens and cost today", f"{usage['tokens'] or 0:,} tokens", _money(usage["cost"] or 0.0)),
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
        Tile("alerts", "Firing alerts", str(alerts), "firing now" if alerts else "none firing", reverse("dashboard:alerts"), "bad" if alerts else ""),
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
                "p50_24h": day_p50,
                "p95_24h": day_p95,
                "succeeded_7d": week_succeeded,
                "finished_7d": week_finished,
                "tokens_today": usage["tokens"] or 0,
                "cost_today": usage["cost"] or 0.0,
                "overdue": people.overdue,
                "decided_24h": people.decided,
                "circuits": circuits,
                "alerts": alerts,
            },
        ),
    }


def _ranked(figures: dict[str, Any]) -> tuple[float | None, float | None]:
    """p50 and p95 from a group's figures: ranked by the database, or values to rank here."""
    if "took" in figures:
        values = sorted(figures["took"])
        return metrics.percentile(values, 50), metrics.percentile(values, 95)
    return figures.get("took_p50"), figures.get("took_p95")


def _first_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else "no error recorded"


def _money(amount: float) -> str:
    if amount == 0:
        return "$0"
    if amount < 0.01:
        return f"${amount:.4f}".rstrip("0")
    return f"${amount:,.2f}"

