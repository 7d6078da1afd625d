"""The metrics store: figures measured from the raw rows, and the daily snapshots kept of them.

One function, `measure`, turns a set of runs into figures; the daily snapshots, the gates, the
drift signals and the agent-version comparison all call it, so a number on screen always equals
a recount from the raw rows. Other apps add the figures only they can count (the approvals app:
approvals, manual tasks, exceptions) with `register_figures`, so this module never imports them.

Percentiles are nearest-rank (the smallest value with at least p % of the values at or below
it), the same on SQLite and PostgreSQL. A day is a calendar day in TIME_ZONE, and every figure
of a day is about the runs *started* that day.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.db.models import QuerySet

from orchestration.models import Run
from orchestration.rollouts.models import Metric


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

    def value(self, metric: str) -> float | None:
        """The figure a success criterion compares (None: nothing to compute it from)."""
        raise NotImplementedError


FiguresSource = Callable[[QuerySet[Run]], dict[str, Any]]


def register_figures(source: FiguresSource) -> None:
    """Add figures counted by another app: `source(runs)` returns Measures fields by name."""
    raise NotImplementedError


def measure(runs: QuerySet[Run]) -> Measures:
    """The figures of `runs`, from the raw rows, in a fixed number of queries."""
    raise NotImplementedError


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """The first instant of `day` in TIME_ZONE and the first instant of the next day."""
    raise NotImplementedError


def snapshot_day(day: date) -> int:
    """(Re)write the DailySnapshot of every workflow version and the AgentVersionSnapshot of
    every agent version with runs started on `day`; returns how many rows were written."""
    raise NotImplementedError


def rollup(since: date, until: date | None = None) -> int:
    """Rebuild the snapshots of every day from `since` to `until` (default today)."""
    raise NotImplementedError


def sweep(now: datetime) -> int:
    """The ticker's pass: keep today's and yesterday's snapshots (and the start days of runs
    that finished since the last pass) current, and evaluate each rollout's gate and drift
    once a day."""
    raise NotImplementedError


__all__ = ["Measures", "Metric", "day_bounds", "measure", "register_figures", "rollup", "snapshot_day", "sweep"]
