"""Gates, drift and the agent-version comparison: what the figures say about a rollout."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from orchestration.models import AgentVersion
from orchestration.rollouts.models import Criterion, Rollout


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


@dataclass(frozen=True)
class Gate:
    verdicts: list[Verdict]
    passed: bool  # every enabled criterion passed (a gate with no criterion passes)
    checked_at: datetime


def evaluate(rollout: Rollout, *, now: datetime | None = None) -> Gate:
    raise NotImplementedError


@dataclass(frozen=True)
class DriftFinding:
    metric: str
    label: str
    recent: float | None  # the last 7 days
    previous: float | None  # the 7 days before
    recent_runs: int
    previous_runs: int
    drifting: bool  # recent is worse than previous by more than the rollout's margin


def drift(rollout: Rollout, *, now: datetime | None = None) -> list[DriftFinding]:
    raise NotImplementedError


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


def compare_versions(rollout: Rollout, *, now: datetime | None = None, days: int = 14) -> list[VersionFigures]:
    """Every version of every agent the workflow's latest version uses, side by side."""
    raise NotImplementedError
