"""What the rollout pages show: the list, one rollout, its weekly review and its CSV.

Like dashboard.read_models, each function computes a page's context from (object, user, now)
without a request, so the full page, the htmx action that returns the partial and a test all
see the same thing. Nothing here writes; the figures come from orchestration.rollouts (the
gate, drift and version comparison from gates, the daily points from the snapshots metrics
keeps), and who may do what from transitions.may_decide / may_contribute.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from django.db.models import Prefetch, Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from dashboard import charts
from orchestration import access
from orchestration.models import Agent, AgentVersionEvent, Run, StepRun, Workflow, WorkflowVersion
from orchestration.rollouts import gates, metrics, transitions
from orchestration.rollouts.models import (
    FIGURE_FIELDS,
    NEXT_STAGE,
    DailySnapshot,
    Drift,
    Metric,
    Rollout,
    RolloutEvent,
    RolloutEventKind,
    Stage,
    Window,
)
from orchestration.status import RunStatus

CHART_DAYS = 30
PLAN_DAYS = 30
HISTORY_LIMIT = 100
# The trigger of the runs `load_demo --history` generates: the pages say they are demo data.
DEMO_TRIGGER = "history"

# A stage by shape as well as by colour and word (like the run graph's glyphs).
STAGE_GLYPHS: dict[str, str] = {
    Stage.PILOT: "◔",
    Stage.STANDARDIZE: "◑",
    Stage.EXPAND: "◕",
    Stage.SCALED: "●",
    Stage.PAUSED: "‖",
    Stage.ROLLED_BACK: "↶",
}

STAGE_CHANGES = frozenset(
    {
        RolloutEventKind.CREATED,
        RolloutEventKind.PROMOTED,
        RolloutEventKind.OVERRIDDEN,
        RolloutEventKind.PAUSED,
        RolloutEventKind.RESUMED,
        RolloutEventKind.ROLLED_BACK,
        RolloutEventKind.RESTARTED,
    }
)
DECISIONS = STAGE_CHANGES | {
    RolloutEventKind.PROMOTION_REFUSED,
    RolloutEventKind.CRITERION_CHANGED,
    RolloutEventKind.WEIGHTS_CHANGED,
    RolloutEventKind.ISSUE_RESOLVED,
}


def stage_glyph(stage: str) -> str:
    return STAGE_GLYPHS.get(stage, "•")


def due_words(due_on: date | None, today: date) -> str:
    """"due in 3 days", "due today", "due tomorrow", "overdue by 2 days"."""
    if due_on is None:
        return ""
    days = (due_on - today).days
    if days == 0:
        return "due today"
    if days == 1:
        return "due tomorrow"
    if days > 1:
        return f"due in {days} days"
    late = -days
    return f"overdue by {late} day{'s' if late != 1 else ''}"


def may_start(user: Any, workflow: Workflow) -> bool:
    """Who may start a workflow's rollout: its owner and superusers (they then decide it)."""
    return bool(user.is_active and (user.is_superuser or (workflow.owner_id is not None and workflow.owner_id == user.pk)))


# How a criterion's target is written, by its metric's unit.
CRITERION_HINTS = {"rate": "a share: 0.95 is 95%", "seconds": "seconds: 900 is 15 min", "money": "per run, in the cost's currency"}


CRITERION_FIELDS = ["target", "window_days", "enabled"]


def criterion_change_words(event: RolloutEvent) -> str:
    """A criterion_changed event in words: "Success rate: target 0.95 → 0.9, on → off"."""
    data = event.data or {}
    metric = str(data.get("metric", ""))
    label = Metric(metric).label if metric in Metric.values else metric
    before, after = data.get("before") or {}, data.get("after") or {}
    parts = []
    # jsonb keeps keys in its own order (PostgreSQL): say them in the form's.
    for name in sorted(after, key=lambda n: (CRITERION_FIELDS.index(n) if n in CRITERION_FIELDS else 99, n)):
        value, old = after[name], before.get(name)
        if name == "enabled":
            parts.append(f"{'on' if old else 'off'} → {'on' if value else 'off'}")
        elif isinstance(value, (int, float)) and isinstance(old, (int, float)):
            parts.append(f"{name.replace('_', ' ')} {old:g} → {value:g}")
        else:
            parts.append(f"{name.replace('_', ' ')} {old} → {value}")
    return f"{label}: {', '.join(parts)}" if parts else label


def missing_words(metric: str) -> str:
    """What a verdict without a figure means, in words."""
    return "no approvals decided" if metric == Metric.APPROVAL_WAIT else "no runs in window"


# ---------------------------------------------------------------------------------------------
# The list


@dataclass(frozen=True)
class Mark:
    metric: str
    label: str
    passed: bool


@dataclass
class ListRow:
    workflow: Workflow
    rollout: Rollout | None
    can_start: bool = False
    marks: list[Mark] = field(default_factory=list)
    checked_at: datetime | None = None
    next_window: Window | None = None
    next_due: str = ""
    drifts: list[Drift] = field(default_factory=list)

    @property
    def glyph(self) -> str:
        return stage_glyph(self.rollout.stage) if self.rollout else ""


def rollouts_list(user: Any, *, now: datetime | None = None) -> dict[str, Any]:
    """Every workflow the user sees, with its rollout, in a fixed number of queries.

    The gate marks are those of the latest gate check (the daily pass records the verdicts on
    the rollout): evaluating every gate here would cost a measurement per rollout per visit.
    """
    now = now or timezone.now()
    today = timezone.localdate(now)
    workflows = list(
        access.visible_workflows(user)
        .select_related("owner", "rollout", "rollout__owner")
        .prefetch_related(
            Prefetch("rollout__windows", queryset=Window.objects.filter(done=False).order_by("due_on", "position")),
            Prefetch("rollout__drifts", queryset=Drift.objects.filter(cleared_at__isnull=True)),
        )
        .order_by("name")
    )
    rows = []
    for workflow in workflows:
        rollout = _rollout_of(workflow)
        row = ListRow(workflow=workflow, rollout=rollout, can_start=rollout is None and may_start(user, workflow))
        if rollout is not None:
            row.marks = [
                Mark(metric=str(v.get("metric", "")), label=str(v.get("label", v.get("metric", ""))), passed=bool(v.get("passed")))
                for v in rollout.gate_verdicts or []
                if isinstance(v, dict)
            ]
            row.checked_at = rollout.gate_checked_at
            windows = list(rollout.windows.all())
            row.next_window = windows[0] if windows else None
            row.next_due = due_words(row.next_window.due_on, today) if row.next_window else ""
            row.drifts = list(rollout.drifts.all())
        rows.append(row)
    return {"rows": rows, "now": now, "started": sum(1 for r in rows if r.rollout is not None)}


def _rollout_of(workflow: Workflow) -> Rollout | None:
    try:
        return workflow.rollout
    except Rollout.DoesNotExist:
        return None


# ---------------------------------------------------------------------------------------------
# One rollout


def runs_url(workflow_key: str, since: datetime, until: datetime) -> str:
    """The runs list filtered to a workflow and a window (the runs a figure came from)."""
    query = {
        "workflow": workflow_key,
        "started_after": timezone.localtime(since).isoformat(timespec="seconds"),
        "started_before": timezone.localtime(until).isoformat(timespec="seconds"),
    }
    return reverse("dashboard:runs") + "?" + urlencode(query)


@dataclass(frozen=True)
class VerdictRow:
    verdict: gates.Verdict
    target_text: str
    actual_text: str
    runs_url: str
    enabled: bool = True

    @property
    def comparison_word(self) -> str:
        return "at least" if self.verdict.comparison == "gte" else "at most"


def verdict_rows(workflow: Workflow, gate: gates.Gate) -> list[VerdictRow]:
    """A gate's verdicts as the rollout page and the weekly review show them."""
    return [
        VerdictRow(
            verdict=v,
            target_text=charts.format_value(v.metric, v.target),
            actual_text=charts.format_value(v.metric, v.actual) if v.actual is not None else missing_words(v.metric),
            runs_url=runs_url(workflow.key, v.since, v.until),
        )
        for v in gate.verdicts
    ]


@dataclass
class AgentVersions:
    agent_name: str
    versions: list[gates.VersionFigures]

    @property
    def labels(self) -> list[str]:
        return [v.version.label for v in self.versions]


def _measures(snapshot: DailySnapshot) -> metrics.Measures:
    return metrics.Measures(**{name: getattr(snapshot, name) for name in FIGURE_FIELDS})


def _daily(workflow_id: int, today: date) -> tuple[list[date], list[tuple[date, int, metrics.Measures]]]:
    """The last CHART_DAYS days, and the workflow's figures on those that have a snapshot (one query)."""
    days = [today - timedelta(days=CHART_DAYS - 1 - i) for i in range(CHART_DAYS)]
    snapshots = DailySnapshot.objects.filter(
        workflow_id=workflow_id, version__isnull=True, day__gte=days[0], day__lte=days[-1]
    ).order_by("day")
    return days, [(s.day, s.runs_started, _measures(s)) for s in snapshots]


# What a workflow's page charts over time, without a rollout's targets.
WORKFLOW_TRENDS = (Metric.SUCCESS_RATE, Metric.P95_DURATION)


def workflow_trends(workflow_id: int, today: date) -> list[charts.Chart]:
    """The workflow's success rate and p95 duration, day by day over CHART_DAYS days (one query)."""
    days, measured = _daily(workflow_id, today)
    return [
        charts.build(
            metric=metric,
            title=metric.label,
            days=days,
            figures=[charts.DayFigure(day=day, value=m.value(metric), runs=runs) for day, runs, m in measured],
            target=None,
        )
        for metric in WORKFLOW_TRENDS
    ]


def trend_charts(rollout: Rollout, criteria: list[Any], today: date) -> list[charts.Chart]:
    """A chart per criterion's metric over the last CHART_DAYS days (one query)."""
    days, measured = _daily(rollout.workflow_id, today)
    built = []
    for criterion in criteria:
        target, note = criterion.target, f" over {criterion.window_days} days"
        if criterion.metric == Metric.RUNS:
            # The target counts runs over the window; a day's point is one day's runs.
            target = round(criterion.target / max(criterion.window_days, 1), 1)
            note = f" a day ({criterion.target:g} over {criterion.window_days} days)"
        figures = [charts.DayFigure(day=day, value=m.value(criterion.metric), runs=runs) for day, runs, m in measured]
        built.append(
            charts.build(
                metric=criterion.metric,
                title=criterion.get_metric_display(),
                days=days,
                figures=figures,
                target=target,
                comparison=criterion.comparison,
                target_note=note,
            )
        )
    return built


def rollout_page(rollout: Rollout, user: Any, *, now: datetime | None = None, notice: str = "", error: str = "") -> dict[str, Any]:
    """What the rollout page (`_rollout.html`) shows `user`, who may see its workflow."""
    now = now or timezone.now()
    today = timezone.localdate(now)
    workflow = rollout.workflow
    criteria = list(rollout.criteria.all())
    gate = gates.evaluate(rollout, now=now)
    verdicts = verdict_rows(workflow, gate)
    disabled = [c for c in criteria if not c.enabled]
    compared = gates.compare_versions(rollout, now=now)
    # One query for the agents' names, however many versions (version.agent would be one each).
    names = dict(Agent.objects.filter(pk__in={f.version.agent_id for f in compared}).values_list("pk", "name"))
    by_agent: OrderedDict[str, list[gates.VersionFigures]] = OrderedDict()
    for figures in compared:
        by_agent.setdefault(names[figures.version.agent_id], []).append(figures)
    events = list(rollout.events.select_related("actor").order_by("-id")[:HISTORY_LIMIT])
    notes = list(rollout.notes.select_related("author").prefetch_related("runs").order_by("-created_at", "-id"))
    may_decide = transitions.may_decide(user, rollout)
    return {
        "rollout": rollout,
        "workflow": workflow,
        "glyph": stage_glyph(rollout.stage),
        "day": (today - rollout.started_on).days + 1,
        "plan_days": PLAN_DAYS,
        "gate": gate,
        "verdicts": verdicts,
        "failing": [row for row in verdicts if not row.verdict.passed],
        "disabled": disabled,
        "criteria": [(c, charts.UNITS[charts.unit_of(c.metric)], CRITERION_HINTS.get(charts.unit_of(c.metric), "")) for c in criteria],
        "next_stage": NEXT_STAGE.get(rollout.stage),  # type: ignore[call-overload]
        "drifts": list(rollout.drifts.filter(cleared_at__isnull=True)),
        "charts": trend_charts(rollout, [c for c in criteria if c.enabled], today),
        "windows": [(w, due_words(w.due_on, today)) for w in rollout.windows.select_related("owner", "done_by")],
        "checklist": list(rollout.checklist.select_related("done_by")),
        "agents": [AgentVersions(agent_name=name, versions=versions) for name, versions in by_agent.items()],
        "issues": [n for n in notes if n.kind == "issue"],
        "reviews": [n for n in notes if n.kind == "review"],
        "events": events,
        "demo_runs": Run.objects.filter(workflow=workflow, trigger=DEMO_TRIGGER).exists(),
        "may_decide": may_decide,
        "may_contribute": may_decide or transitions.may_contribute(user, rollout),
        "stages": Stage,
        "notice": notice,
        "error": error,
        "now": now,
    }


# ---------------------------------------------------------------------------------------------
# The weekly review


def parse_week(text: str, today: date) -> date:
    """The Monday of ISO week "YYYY-Www" (ValueError naming the parameter when it is not one)."""
    if not text:
        return today - timedelta(days=today.weekday())
    try:
        year, week = text.upper().split("-W")
        if len(year) != 4 or len(week) != 2:
            raise ValueError
        return date.fromisocalendar(int(year), int(week), 1)
    except ValueError:
        raise ValueError(f"week: {text[:20]!r} is not an ISO week; write it like 2026-W05") from None


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class FailureGroup:
    step: str
    cause: str
    runs: list[int]

    @property
    def count(self) -> int:
        return len(self.runs)


def first_line(text: str) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:200]
    return "no error recorded"


def failures_by_cause(runs: QuerySet[Run]) -> list[FailureGroup]:
    """Failed runs grouped by the step that failed first and the first line of its error."""
    failed = list(runs.filter(status=RunStatus.FAILED).order_by("pk").values_list("pk", "error"))
    steps: dict[int, tuple[str, str]] = {}
    for run_id, key, error in (
        StepRun.objects.filter(run__in=[pk for pk, _ in failed], status="failed")
        .order_by("run_id", "finished_at", "pk")
        .values_list("run_id", "step_key", "error")
    ):
        steps.setdefault(run_id, (key, error))
    groups: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
    for run_id, error in failed:
        key, step_error = steps.get(run_id, ("", error))
        groups.setdefault((key or "(run)", first_line(step_error or error)), []).append(run_id)
    return sorted(
        (FailureGroup(step=step, cause=cause, runs=ids) for (step, cause), ids in groups.items()),
        key=lambda g: (-g.count, g.step, g.cause),
    )


def weekly_review(rollout: Rollout, user: Any, monday: date, *, now: datetime | None = None) -> dict[str, Any]:
    now = now or timezone.now()
    since, _ = metrics.day_bounds(monday)
    until, _ = metrics.day_bounds(monday + timedelta(days=7))
    # A week still going is judged as of now; a past week as of its end.
    verdict_time = min(until, now)
    workflow = rollout.workflow
    in_week = Q(created_at__gte=since, created_at__lt=until)
    events = list(rollout.events.filter(in_week).select_related("actor").order_by("created_at", "id"))
    agent_names: list[str] = sorted(
        {
            str(step["agent"])
            for version in WorkflowVersion.objects.filter(workflow=workflow)
            for step in version.spec.get("steps", [])
            if isinstance(step, dict) and isinstance(step.get("agent"), str)
        }
    )
    gate = gates.evaluate(rollout, now=verdict_time)
    runs = Run.objects.filter(workflow=workflow).filter(in_week)
    return {
        "rollout": rollout,
        "workflow": workflow,
        "glyph": stage_glyph(rollout.stage),
        "week": week_label(monday),
        "monday": monday,
        "sunday": monday + timedelta(days=6),
        "previous_week": week_label(monday - timedelta(days=7)),
        "next_week": week_label(monday + timedelta(days=7)) if until <= now else "",
        "published": list(
            WorkflowVersion.objects.filter(workflow=workflow, trial=False, published_at__gte=since, published_at__lt=until)
            .select_related("published_by")
            .order_by("number")
        ),
        "weight_changes": list(
            AgentVersionEvent.objects.filter(agent__name__in=agent_names).filter(in_week).select_related("agent", "actor").order_by("created_at")
        ),
        "stage_changes": [e for e in events if e.kind in STAGE_CHANGES],
        "criteria_changes": [
            (e, criterion_change_words(e)) for e in events if e.kind == RolloutEventKind.CRITERION_CHANGED
        ],
        "gate": gate,
        "verdicts": verdict_rows(workflow, gate),
        "verdict_time": verdict_time,
        "runs_started": runs.count(),
        "runs_failed": runs.filter(status=RunStatus.FAILED).count(),
        "failures": failures_by_cause(runs),
        "week_runs_url": runs_url(workflow.key, since, until),
        "decisions": [e for e in events if e.kind in DECISIONS],
        "notes": list(rollout.notes.filter(in_week).select_related("author").order_by("created_at")),
        "demo_runs": runs.filter(trigger=DEMO_TRIGGER).exists(),
    }


# ---------------------------------------------------------------------------------------------
# CSV


MAX_CSV_DAYS = 366
CSV_DEFAULT_DAYS = 30
CSV_DANGER = ("=", "+", "-", "@")


def csv_cell(value: Any) -> str:
    """A cell a spreadsheet will not run as a formula (CSV injection): = + - @ get a quote."""
    text = "" if value is None else (value.isoformat() if isinstance(value, (date, datetime)) else str(value))
    return "'" + text if text.startswith(CSV_DANGER) else text


def parse_csv_range(since_text: str, until_text: str, today: date) -> tuple[date, date]:
    """The days asked for (ValueError naming the parameter): default the last 30, at most 366."""
    until = metrics.parse_day("until", until_text) or today
    since = metrics.parse_day("since", since_text) or until - timedelta(days=CSV_DEFAULT_DAYS - 1)
    if since > until:
        raise ValueError("since: must be on or before until")
    if (until - since).days + 1 > MAX_CSV_DAYS:
        raise ValueError(f"since: at most {MAX_CSV_DAYS} days at a time (since to until)")
    return since, until


CSV_HEADER = ["day", "workflow", "scope", *FIGURE_FIELDS, "computed_at"]


def csv_rows(workflow: Workflow, since: date, until: date) -> list[list[str]]:
    """One row per day and scope: the workflow first, then each version that had runs."""
    snapshots = (
        DailySnapshot.objects.filter(workflow=workflow, day__gte=since, day__lte=until)
        .select_related("version")
        .order_by("day", "version__number")
    )
    rows = []
    for snapshot in sorted(snapshots, key=lambda s: (s.day, s.version is not None, s.version.number if s.version else 0)):
        scope = "workflow" if snapshot.version is None else f"v{snapshot.version.number}"
        rows.append(
            [csv_cell(v) for v in (snapshot.day, workflow.key, scope, *(getattr(snapshot, f) for f in FIGURE_FIELDS), snapshot.computed_at)]
        )
    return rows
