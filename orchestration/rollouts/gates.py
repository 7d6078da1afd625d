"""Gates, drift and the agent-version comparison: what the figures say about a rollout.

Every figure here comes from `metrics.measure` over the runs of the workflow (every run of it,
sub-workflow runs included: they are runs of that workflow) started in a window [since, until)
ending now, so a verdict can be checked by listing those runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict

from django.db.models import Q
from django.utils import timezone

from orchestration.models import Agent, AgentVersion
from orchestration.rollouts import metrics
from orchestration.rollouts.models import Comparison, Criterion, Metric, Rollout

DRIFT_DAYS = 7
# Drift needs this many runs in both windows before it says anything.
DRIFT_MIN_RUNS = 5
# Below these, a change is noise whatever the margin: a rate moving from 0 to 0.01, a p95
# from 2 s to 3 s (a margin times zero is zero).
DRIFT_FLOOR = {
    Metric.SUCCESS_RATE: 0.05,
    Metric.INTERVENTION_RATE: 0.05,
    Metric.P95_DURATION: 60.0,
    Metric.APPROVAL_WAIT: 60.0,
    Metric.RETRIES_PER_RUN: 0.1,
    Metric.LOOPS_PER_RUN: 0.1,
    Metric.COST_PER_RUN: 0.01,
}
HIGHER_IS_BETTER = frozenset({Metric.SUCCESS_RATE})


def window_runs(rollout: Rollout, since: datetime, until: datetime) -> Q:
    """The runs a window is about, as a condition on Run (also the runs list's filter)."""
    # A trial of the draft is no run of the rolled-out workflow.
    return Q(workflow_id=rollout.workflow_id, created_at__gte=since, created_at__lt=until) & ~Q(trigger="trial")


class VerdictData(TypedDict):
    """A verdict as stored in a RolloutEvent's data (JSON)."""

    metric: str
    label: str
    comparison: str
    target: float
    actual: float | None
    passed: bool
    runs: int
    since: str
    until: str


@dataclass(frozen=True)
class Verdict:
    """One criterion of a gate: its target, the actual figure, and the runs it came from."""

    criterion: Criterion
    metric: str  # Metric value
    label: str  # "Success rate"
    comparison: str  # Comparison value
    target: float
    actual: float | None  # None: no run to compute it from (a failed verdict)
    passed: bool
    runs: int  # how many runs the figure was computed from
    since: datetime  # the window: runs of the workflow started in [since, until)
    until: datetime

    def as_data(self) -> VerdictData:
        return VerdictData(
            metric=self.metric,
            label=self.label,
            comparison=self.comparison,
            target=self.target,
            actual=self.actual,
            passed=self.passed,
            runs=self.runs,
            since=self.since.isoformat(),
            until=self.until.isoformat(),
        )


@dataclass(frozen=True)
class Gate:
    verdicts: list[Verdict]
    passed: bool  # every enabled criterion passed (a gate with no criterion passes)
    checked_at: datetime

    @property
    def failing(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.passed]

    def as_data(self) -> list[VerdictData]:
        return [v.as_data() for v in self.verdicts]


def meets(comparison: str, actual: float | None, target: float) -> bool:
    """Strict: no figure (no runs, no decided approval) never passes."""
    if actual is None:
        return False
    return actual >= target if comparison == Comparison.AT_LEAST else actual <= target


def evaluate(rollout: Rollout, *, now: datetime | None = None) -> Gate:
    """Each enabled criterion over its own window ending now; one measure per window length."""
    now = now or timezone.now()
    measured: dict[int, metrics.Measures] = {}
    verdicts = []
    for criterion in rollout.criteria.filter(enabled=True).order_by("position", "id"):
        since = now - timedelta(days=criterion.window_days)
        if criterion.window_days not in measured:
            measured[criterion.window_days] = metrics.measure(window_runs(rollout, since, now))
        m = measured[criterion.window_days]
        actual = m.value(criterion.metric)
        verdicts.append(
            Verdict(
                criterion=criterion,
                metric=criterion.metric,
                label=Metric(criterion.metric).label,
                comparison=criterion.comparison,
                target=criterion.target,
                actual=actual,
                passed=meets(criterion.comparison, actual, criterion.target),
                runs=m.runs_behind(criterion.metric),
                since=since,
                until=now,
            )
        )
    return Gate(verdicts=verdicts, passed=all(v.passed for v in verdicts), checked_at=now)


@dataclass(frozen=True)
class DriftFinding:
    metric: str
    label: str
    recent: float | None  # the last 7 days
    previous: float | None  # the 7 days before
    recent_runs: int
    previous_runs: int
    drifting: bool  # recent is worse than previous by more than the rollout's margin

    def as_data(self) -> dict[str, Any]:
        return asdict(self)


def worse_by(metric: str, recent: float, previous: float) -> float:
    """How much worse recent is than previous, in the metric's direction (negative: better)."""
    return previous - recent if metric in HIGHER_IS_BETTER else recent - previous


def drift(rollout: Rollout, *, now: datetime | None = None) -> list[DriftFinding]:
    """Every metric but `runs`: the last 7 days against the 7 before, by run start."""
    now = now or timezone.now()
    week = timedelta(days=DRIFT_DAYS)
    recent = metrics.measure(window_runs(rollout, now - week, now))
    previous = metrics.measure(window_runs(rollout, now - 2 * week, now - week))
    findings = []
    for metric, floor in DRIFT_FLOOR.items():
        r, p = recent.value(metric), previous.value(metric)
        enough = recent.runs_started >= DRIFT_MIN_RUNS and previous.runs_started >= DRIFT_MIN_RUNS
        drifting = (
            enough
            and r is not None
            and p is not None
            and worse_by(metric, r, p) > rollout.drift_margin * max(abs(p), floor)
        )
        findings.append(
            DriftFinding(
                metric=metric,
                label=Metric(metric).label,
                recent=r,
                previous=p,
                recent_runs=recent.runs_started,
                previous_runs=previous.runs_started,
                drifting=bool(drifting),
            )
        )
    return findings


@dataclass(frozen=True)
class VersionFigures:
    """One agent version over a window, with the number of runs behind each figure."""

    version: AgentVersion
    share: float  # weight / sum of the agent's weights (0..1)
    runs: int
    success_rate: float | None
    approvals_decided: int
    rejection_rate: float | None  # approvals rejected / decided, in runs that used the version
    loops_per_run: float | None
    attempts: int
    latency_p50: float | None
    latency_p95: float | None
    cost_per_run: float | None


def workflow_agents(rollout: Rollout) -> list[Agent]:
    """The agents the workflow's latest published version calls: its steps' agents and their
    fallbacks (a step's own, or the agent's), in the order the steps name them."""
    version = rollout.workflow.latest_version
    if version is None:
        return []
    names: list[str] = []
    for step in version.spec.get("steps", []):
        for name in (step.get("agent"), step.get("fallback")):
            if name and name not in names:
                names.append(name)
    agents = {a.name: a for a in Agent.objects.filter(name__in=names)}
    for agent in list(agents.values()):
        if agent.fallback and agent.fallback not in names:
            names.append(agent.fallback)
    agents.update({a.name: a for a in Agent.objects.filter(name__in=[n for n in names if n not in agents])})
    return [agents[n] for n in names if n in agents]


def compare_versions(rollout: Rollout, *, now: datetime | None = None, days: int = 14) -> list[VersionFigures]:
    """Every version of every agent the workflow's latest version uses, side by side: per
    version, the workflow's runs started in the last `days` days that chose it."""
    now = now or timezone.now()
    since = now - timedelta(days=days)
    out = []
    for agent in workflow_agents(rollout):
        versions = list(AgentVersion.objects.filter(agent=agent).order_by("label"))
        total = sum(v.weight for v in versions)
        for version in versions:
            runs = window_runs(rollout, since, now) & Q(agent_versions__version=version)
            m = metrics.measure(runs, agent_version=version)
            decided = m.approvals_decided
            out.append(
                VersionFigures(
                    version=version,
                    share=version.weight / total if total else 0.0,
                    runs=m.runs_started,
                    success_rate=m.value(Metric.SUCCESS_RATE),
                    approvals_decided=decided,
                    rejection_rate=m.approvals_rejected / decided if decided else None,
                    loops_per_run=m.value(Metric.LOOPS_PER_RUN),
                    attempts=m.attempts,
                    latency_p50=m.latency_p50,
                    latency_p95=m.latency_p95,
                    cost_per_run=m.value(Metric.COST_PER_RUN),
                )
            )
    return out
